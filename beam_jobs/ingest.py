"""Ingest: raw files (CSV, JSON lines, Parquet, Avro, TFRecord) to split, GZIP'd `tf.Example`s.

    python -m beam_jobs.ingest --input=data/complaints.csv --output_dir=out/ingest \
        [--splits=train:2,eval:1] [--partition_feature=col] [--schema=schema.pbtxt]

Column types are inferred over the whole input (as TFX's CsvExampleGen does) unless `--schema`
declares them: one pass over the files infers the types, a second converts the rows, so memory does
not grow with the input. Splits are buckets of a fingerprint of the serialized example (or of the
partition feature), so every runner makes the same split. Rows that cannot be parsed or typed go to
`rejected/` with file, line and reason; rows read = rows written + rows rejected, always.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import click
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import artifacts, cli, feature_types, privacy, records, shards
from beam_jobs.records import ColumnType, RawRow

__all__ = [
    "IngestConfig",
    "IngestPlan",
    "InputFile",
    "RawRowsToExamples",
    "ReadCsvBatches",
    "ReadRawRows",
    "Split",
    "assign_split",
    "build_pipeline",
    "compression_option",
    "fingerprint",
    "input_format_option",
    "input_patterns",
    "main",
    "max_rejected_fraction_option",
    "parse_input",
    "parse_splits",
    "plan_ingest",
    "publish_if_too_many_rejected",
    "refuse_directory",
    "rejected_line",
    "run",
]

STAGE = "ingest"
DEFAULT_SPLITS = "train:2,eval:1"
REJECTED_DIR = "rejected"
EXAMPLES_FILE_PREFIX = "data"
EXAMPLES_FILE_SUFFIX = ".tfrecord.gz"
ROWS_READ = "rows_read"
SCRUBBED_PREFIX = "scrubbed_"
ROWS_REJECTED = "rows_rejected"
_COUNTS_FILE = ".counts.json"
_TYPES_FILE = ".column_types.json"
_SHARD_INPUT_BYTES = 256 << 20
_ROWS_PER_BATCH = 1024
_SPLIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPAN, _VERSION = "{SPAN}", "{VERSION}"


@dataclasses.dataclass(frozen=True)
class Split:
    """A named split and its weight among the hash buckets."""

    name: str
    weight: int


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """The ingest job's parameters, as given on the command line."""

    input: str
    output_dir: str
    input_format: str | None = None
    splits: str | None = None
    partition_feature: str | None = None
    schema: str | None = None
    max_rejected_fraction: float = 0.0
    span: int | None = None
    version: int | None = None
    num_shards: int = 0
    drop_columns: str | None = None
    scrub: str | None = None
    compression: str = records.AUTO


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file; `split` is set when the input came already split. `compression` is one of
    `records.COMPRESSIONS` (`auto`: by the file extension)."""

    index: int
    path: str
    split: str | None = None
    compression: str = records.AUTO


@dataclasses.dataclass(frozen=True)
class IngestPlan:
    """Everything resolved before the pipeline runs: files, format, splits, types, shards."""

    files: tuple[InputFile, ...]
    input_format: str
    splits: tuple[Split, ...]
    schema_types: dict[str, ColumnType]
    partition_feature: str | None
    num_shards: int
    span: int | None = None
    version: int | None = None
    policy: privacy.PrivacyPolicy = dataclasses.field(default_factory=privacy.PrivacyPolicy)


def parse_splits(text: str) -> tuple[Split, ...]:
    """Parses `train:2,eval:1` into splits with positive integer weights.

    Raises:
        click.BadParameter: a malformed, repeated or reserved split name, or a bad weight.
    """
    splits = []
    for item in cli.split_list(text):
        name, _, weight = item.partition(":")
        if not _SPLIT_NAME.fullmatch(name) or name == REJECTED_DIR:
            raise click.BadParameter(f"{name!r} is not a usable split name", param_hint="--splits")
        if not weight.isdigit() or int(weight) <= 0:
            raise click.BadParameter(
                f"split {name!r} needs a positive integer weight, as in {DEFAULT_SPLITS}",
                param_hint="--splits",
            )
        splits.append(Split(name, int(weight)))
    names = [split.name for split in splits]
    if not splits or len(set(names)) != len(names):
        raise click.BadParameter(f"need distinct split names, got {text!r}", param_hint="--splits")
    return tuple(splits)


def parse_input(text: str) -> dict[str | None, str]:
    """Parses `--input`: a pattern (key None), or `train=<pattern>,eval=<pattern>` if pre-split."""
    items = cli.split_list(text)
    named = [item.partition("=") for item in items]
    if items and all(sep and _SPLIT_NAME.fullmatch(name) for name, sep, _ in named):
        return {name: pattern for name, _, pattern in named}
    return {None: text}


def _absolute(pattern: str) -> str:
    return pattern if FileSystems.get_scheme(pattern) else os.path.abspath(pattern)


def input_patterns(config: IngestConfig) -> list[str | None]:
    """Every path pattern the job reads (spans and versions as wildcards), for output checks."""
    patterns = [
        _absolute(pattern).replace(_SPAN, "*").replace(_VERSION, "*")
        for pattern in parse_input(config.input).values()
    ]
    return [*patterns, config.schema]


def _resolve_span(
    pattern: str, span: int | None, version: int | None
) -> tuple[list[str], int | None, int | None]:
    """The files of the chosen (default: newest) span and version of a `{SPAN}` pattern."""
    if _SPAN not in pattern:
        if span is not None or version is not None or _VERSION in pattern:
            raise cli.JobError("--span and --version need {SPAN} (and {VERSION}) in --input")
        return [metadata.path for metadata in artifacts.list_files(pattern)], None, None
    regex = re.compile(
        re.escape(pattern)
        .replace(re.escape(_SPAN), r"(?P<span>\d+)")
        .replace(re.escape(_VERSION), r"(?P<version>\d+)")
        .replace(r"\*", r"[^/]*")
    )
    glob = pattern.replace(_SPAN, "*").replace(_VERSION, "*")
    found = []
    for metadata in artifacts.list_files(glob):
        match = regex.fullmatch(metadata.path)
        if match:
            found_version = int(match["version"]) if _VERSION in pattern else None
            found.append((int(match["span"]), found_version, metadata.path))
    spans = {item[0] for item in found}
    chosen_span = span if span is not None else max(spans, default=None)
    versions = {item[1] for item in found if item[0] == chosen_span}
    chosen_version = version if version is not None else max(versions - {None}, default=None)
    paths = [p for s, v, p in found if s == chosen_span and v == chosen_version]
    if found and not paths:
        raise cli.JobError(
            f"no files of span {chosen_span} version {chosen_version} match {pattern}"
        )
    return paths, chosen_span, chosen_version


def refuse_directory(
    pattern: str, paths: list[str], input_format: str | None, flag: str = "input"
) -> None:
    """Fails in one line where an input flag names a directory (a glob matches files only).

    Only local paths can be directories; object stores (gs://, s3://) list objects alone.
    """
    if any(not FileSystems.get_scheme(path) and os.path.isdir(path) for path in paths):
        example = FileSystems.join(pattern.rstrip("/"), f"*.{input_format or records.CSV}")
        raise cli.JobError(
            f"--{flag}={pattern} is a directory; pass a pattern of its files, such as {example}"
        )


def _check_csv_headers(
    files: list[InputFile], partition_feature: str | None, policy: privacy.PrivacyPolicy
) -> None:
    paths = [item.path for item in files]
    first = records.read_csv_header(paths[0], files[0].compression)
    for column in sorted(policy.drop_columns | set(policy.scrub)):
        if column not in first:
            raise cli.JobError(
                f"--drop_columns/--scrub name {column!r}, which is not a column of {paths[0]} "
                f"(columns: {', '.join(first)})"
            )
    for item in files[1:]:
        if set(records.read_csv_header(item.path, item.compression)) != set(first):
            raise cli.JobError(
                f"{item.path} has other columns than {paths[0]}; ingest them separately"
            )
    if partition_feature and partition_feature not in first:
        raise cli.JobError(
            f"--partition_feature={partition_feature} is not a column of {paths[0]} "
            f"(columns: {', '.join(first)})"
        )


def _auto_shards(paths: list[str]) -> int:
    total_bytes = sum(
        metadata.size_in_bytes for path in paths for metadata in artifacts.list_files(path)
    )
    return max(1, -(-total_bytes // _SHARD_INPUT_BYTES))


def plan_ingest(config: IngestConfig) -> IngestPlan:
    """Resolves files, format, splits and column types, failing early with one clear line.

    Raises:
        cli.JobError: no input file, an unknown format, mismatched headers, a bad schema.
        click.BadParameter: malformed `--splits`.
    """
    patterns = parse_input(config.input)
    files: list[InputFile] = []
    spans: set[tuple[int | None, int | None]] = set()
    for split, pattern in patterns.items():
        paths, span, version = _resolve_span(_absolute(pattern), config.span, config.version)
        if not paths:
            raise cli.JobError(f"--input: no file matches {pattern}")
        refuse_directory(pattern, paths, config.input_format)
        spans.add((span, version))
        files.extend(
            InputFile(len(files) + i, path, split, config.compression)
            for i, path in enumerate(paths)
        )
    if len(spans) > 1:
        raise cli.JobError(
            f"--input: the splits resolve to different spans/versions {sorted(spans)}"
        )
    paths = [item.path for item in files]
    input_format = config.input_format or records.detect_format(paths)
    records.check_compression(input_format, config.compression)
    policy = privacy.PrivacyPolicy(
        drop_columns=frozenset(cli.split_list(config.drop_columns)),
        scrub=privacy.parse_scrub(config.scrub),
    )
    if config.partition_feature and config.partition_feature in policy.drop_columns:
        raise click.UsageError("--partition_feature cannot be a column that --drop_columns drops")
    if input_format == records.CSV:
        _check_csv_headers(files, config.partition_feature, policy)
    presplit = None not in patterns
    if presplit and (config.splits or config.partition_feature):
        raise click.UsageError("--splits and --partition_feature do not apply to pre-split --input")
    splits = (
        tuple(Split(name, 1) for name in patterns)
        if presplit
        else parse_splits(config.splits or DEFAULT_SPLITS)
    )
    schema_types = records.column_types_from_schema(config.schema) if config.schema else {}
    span, version = spans.pop()
    return IngestPlan(
        files=tuple(files),
        input_format=input_format,
        splits=splits,
        schema_types=schema_types,
        partition_feature=config.partition_feature,
        num_shards=config.num_shards or _auto_shards(paths),
        span=span,
        version=version,
        policy=policy,
    )


def fingerprint(key: bytes) -> int:
    """A stable 64-bit fingerprint: the same on every machine, runner and Python process."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def assign_split(key: bytes, splits: tuple[Split, ...]) -> str:
    """The split of a record: a fingerprint of its key, bucketed by the split weights."""
    return _split_of_fingerprint(fingerprint(key), splits)


def _split_of_fingerprint(key_fingerprint: int, splits: tuple[Split, ...]) -> str:
    bucket = key_fingerprint % sum(split.weight for split in splits)
    for split in splits:
        if bucket < split.weight:
            return split.name
        bucket -= split.weight
    raise AssertionError("unreachable: buckets cover every fingerprint")


class _MergeColumnTypes(beam.CombineFn):
    """Widest type per column over all values (INT < FLOAT < BYTES)."""

    def create_accumulator(self) -> dict[str, ColumnType]:
        return {}

    def add_input(
        self, accumulator: dict[str, ColumnType], item: RawRow | records.TextBatch
    ) -> dict[str, ColumnType]:
        if isinstance(item, records.TextBatch):
            values, type_of = item.columns, records.text_column_type
        else:
            values, type_of = item.values or {}, records.value_type
        for column, value in values.items():
            if accumulator.get(column) is ColumnType.BYTES:
                continue  # Already the widest type: most columns settle here early.
            kind = type_of(value)
            if kind is not None and kind > accumulator.get(column, 0):
                accumulator[column] = kind
        return accumulator

    def merge_accumulators(
        self, accumulators: Iterable[dict[str, ColumnType]]
    ) -> dict[str, ColumnType]:
        merged: dict[str, ColumnType] = {}
        for accumulator in accumulators:
            for column, kind in accumulator.items():
                merged[column] = max(kind, merged.get(column, kind))
        return merged

    def extract_output(self, accumulator: dict[str, ColumnType]) -> dict[str, ColumnType]:
        return accumulator


def _read_csv_batches(file: tuple[str, str]) -> Iterator[records.TextBatch]:
    path, compression = file
    return records.read_csv_batches(path, compression=compression)


class ReadCsvBatches(beam.PTransform):
    """CSV files → `TextBatch`es of consecutive rows, one file per element."""

    def __init__(self, files: tuple[InputFile, ...]) -> None:
        super().__init__()
        self._files = files

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "ListFiles" >> beam.Create([(item.path, item.compression) for item in self._files])
            | "ReadFiles" >> beam.FlatMap(_read_csv_batches)
        )


def _without_columns(
    item: RawRow | records.TextBatch, drop: frozenset[str]
) -> RawRow | records.TextBatch:
    if isinstance(item, records.TextBatch):
        columns = {name: texts for name, texts in item.columns.items() if name not in drop}
        return dataclasses.replace(item, columns=columns)
    values = {name: value for name, value in (item.values or {}).items() if name not in drop}
    return dataclasses.replace(item, values=values)


def _rows_in(batch: list[RawRow] | records.TextBatch) -> int:
    """Rows read into a batch, the rejected ones included."""
    if isinstance(batch, records.TextBatch):
        return batch.num_rows + len(batch.rejected)
    return len(batch)


def _read_rows(file: tuple[str, str], input_format: str) -> Iterator[RawRow]:
    path, compression = file
    return records.read_rows(path, input_format, compression)


class ReadRawRows(beam.PTransform):
    """Input files → `RawRow`s, one file per element (quoted CSV fields span lines)."""

    def __init__(self, files: tuple[InputFile, ...], input_format: str) -> None:
        super().__init__()
        self._files = files
        self._format = input_format

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "ListFiles" >> beam.Create([(item.path, item.compression) for item in self._files])
            | "ReadFiles" >> beam.FlatMap(_read_rows, self._format)
        )


def rejected_line(file: str, line: int, reason: str, raw: Any) -> str:
    """One line of `rejected/`: the row's file, line, the reason and the row as read."""
    return json.dumps({"file": file, "line": line, "reason": reason, "row": raw}, default=repr)


class _TypeRows(beam.DoFn):
    """A `TextBatch` of CSV rows, or a list of other `RawRow`s → (sort key, serialized
    tf.Example) per row, or (sort key, rejected line) tagged REJECTED.

    The sort key is (input file index, line): where the row came from, in input order. Rows are
    encoded a batch at a time (`records.encode_text_columns`, `records.encode_examples`), each
    independently of its batch.
    """

    REJECTED = "rejected"
    SCRUBBED = "scrubbed"

    def __init__(
        self,
        files: tuple[InputFile, ...],
        schema_types: dict[str, ColumnType],
        stage: str,
        policy: privacy.PrivacyPolicy,
    ) -> None:
        self._file_index = {item.path: item.index for item in files}
        self._schema_types = schema_types
        self._policy = policy
        self._read = beam.metrics.Metrics.counter(stage, ROWS_READ)
        self._rejected = beam.metrics.Metrics.counter(stage, ROWS_REJECTED)

    def _reject(self, row: RawRow, sort_key: tuple[int, int], reason: str) -> Any:
        self._rejected.inc()
        raw = privacy.scrub_rejected_row(row.values, row.raw, self._policy)
        line = rejected_line(row.file, row.line, reason, raw)
        return beam.pvalue.TaggedOutput(self.REJECTED, (sort_key, line))

    def _scrubbed(self, counts: Mapping[str, int]) -> Iterator[beam.pvalue.TaggedOutput]:
        for kind, count in counts.items():
            yield beam.pvalue.TaggedOutput(self.SCRUBBED, (SCRUBBED_PREFIX + kind, count))

    def process(
        self, batch: list[RawRow] | records.TextBatch, inferred: dict[str, ColumnType]
    ) -> Iterator[Any]:
        column_types = {**inferred, **self._schema_types}
        if isinstance(batch, records.TextBatch):
            yield from self._text_batch(batch, column_types)
        else:
            yield from self._rows(batch, column_types)

    def _text_batch(
        self, batch: records.TextBatch, column_types: dict[str, ColumnType]
    ) -> Iterator[Any]:
        self._read.inc(batch.num_rows + len(batch.rejected))
        file_index = self._file_index[batch.file]
        for row in batch.rejected:
            yield self._reject(row, (file_index, row.line), row.error)
        drop, scrub = self._policy.drop_columns, self._policy.scrub
        columns = {name: texts for name, texts in batch.columns.items() if name not in drop}
        scrubbed = []
        for name in columns.keys() & scrub.keys():
            columns[name], counts = privacy.scrub_column(columns[name], scrub[name])
            scrubbed.append(counts)
        encoded = records.encode_text_columns(columns, batch.num_rows, column_types)
        for index, (serialized, error) in enumerate(encoded):
            sort_key = (file_index, int(batch.lines[index]))
            if error is not None:
                yield self._reject(batch.raw_row(index), sort_key, error)
                continue
            for counts in scrubbed:
                yield from self._scrubbed(counts.get(index, {}))
            yield sort_key, serialized

    def _rows(self, rows: list[RawRow], column_types: dict[str, ColumnType]) -> Iterator[Any]:
        self._read.inc(len(rows))
        parsed, values, scrubbed = [], [], []
        for row in rows:
            sort_key = (self._file_index[row.file], row.line)
            if row.error is not None:
                yield self._reject(row, sort_key, row.error)
                continue
            row_values, row_scrubbed = privacy.apply_policy(row.values, self._policy)
            parsed.append((row, sort_key))
            values.append(row_values)
            scrubbed.append(row_scrubbed)
        encoded = records.encode_examples(values, column_types)
        for (row, sort_key), (serialized, error), row_scrubbed in zip(
            parsed, encoded, scrubbed, strict=True
        ):
            if error is not None:
                yield self._reject(row, sort_key, error)
                continue
            yield from self._scrubbed(row_scrubbed)
            yield sort_key, serialized


class RawRowsToExamples(beam.PTransform):
    """Input files → typed, serialized `tf.Example`s and rejected rows; ingest's and infer's reader.

    Reads the files twice: once to infer column types over the whole input (`schema_types` take
    precedence; a CSV whose every column they type is read once), once to convert the rows.
    Returns a dict of PCollections: `rows_read` (one
    count: every row read, rejected ones included), `column_types` (one dict: the type each
    column is encoded with), `examples` ((sort key, serialized example)),
    `rejected` ((sort key, JSON line)), where the sort key is (input file index, line), and
    `scrubbed` ((`scrubbed_<kind>`, replacements)) when a privacy policy drops or scrubs
    personal data.
    """

    def __init__(
        self,
        files: tuple[InputFile, ...],
        input_format: str,
        schema_types: dict[str, ColumnType],
        *,
        stage: str = STAGE,
        policy: privacy.PrivacyPolicy | None = None,
    ) -> None:
        super().__init__()
        self._files = files
        self._format = input_format
        self._schema_types = schema_types
        self._stage = stage
        self._policy = policy or privacy.PrivacyPolicy()

    def _schema_types_every_column(self) -> bool:
        """Whether `--schema` types every CSV column kept, so that no pass to infer types is due."""
        if self._format != records.CSV or not self._schema_types:
            return False
        first = self._files[0]
        header = set(records.read_csv_header(first.path, first.compression))
        header -= self._policy.drop_columns
        return header <= self._schema_types.keys()

    def _read(self) -> beam.PTransform:
        # CSV comes in blocks of rows, typed and encoded a column at a time.
        if self._format == records.CSV:
            return ReadCsvBatches(self._files)
        return ReadRawRows(self._files, self._format)

    def _infer_types(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        if self._schema_types_every_column():
            return pipeline | "NoTypesToInfer" >> beam.Create([{}])
        rows = pipeline | "ReadForTypes" >> self._read()
        if self._policy.drop_columns:
            # Dropped columns take no part in anything, their types included.
            rows = rows | "DropColumnsForTypes" >> beam.Map(
                _without_columns, self._policy.drop_columns
            )
        return rows | "InferColumnTypes" >> beam.CombineGlobally(_MergeColumnTypes())

    def expand(self, pipeline: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        inferred = self._infer_types(pipeline)
        batches = pipeline | "ReadForExamples" >> self._read()
        if self._format != records.CSV:
            batches = batches | "BatchRows" >> beam.BatchElements(
                min_batch_size=_ROWS_PER_BATCH, max_batch_size=_ROWS_PER_BATCH
            )
        converted = batches | "ConvertRows" >> beam.ParDo(
            _TypeRows(self._files, self._schema_types, self._stage, self._policy),
            beam.pvalue.AsSingleton(inferred),
        ).with_outputs(_TypeRows.REJECTED, _TypeRows.SCRUBBED, main="examples")
        rows_read = (
            batches
            | "RowsPerBatch" >> beam.Map(_rows_in)
            | "CountRowsRead" >> beam.CombineGlobally(sum)
        )
        schema_types = self._schema_types
        column_types = inferred | "ColumnTypes" >> beam.Map(lambda types: {**types, **schema_types})
        return {
            "rows_read": rows_read,
            "column_types": column_types,
            "examples": converted.examples,
            "rejected": converted[_TypeRows.REJECTED],
            "scrubbed": converted[_TypeRows.SCRUBBED],
        }


class _AssignShard(beam.DoFn):
    """(sort key, serialized example) → ((split, shard), (sort key, serialized example))."""

    def __init__(self, plan: IngestPlan) -> None:
        self._plan = plan
        self._files = {item.index: item for item in plan.files}

    def process(self, keyed: tuple[tuple[int, int], bytes]) -> Iterator[Any]:
        sort_key, serialized = keyed
        content = fingerprint(serialized)
        split = self._files[sort_key[0]].split
        if split is None and self._plan.partition_feature:
            split = assign_split(self._partition_key(serialized), self._plan.splits)
        elif split is None:
            split = _split_of_fingerprint(content, self._plan.splits)
        # The high half picks the shard: with the low half picking the split too, 3 shards of
        # a 2:1 split would leave train's third shard and eval's first two empty.
        shard = (content >> 32) % self._plan.num_shards
        yield (split, shard), (sort_key, serialized)

    def _partition_key(self, serialized: bytes) -> bytes:
        example = tf.train.Example.FromString(serialized)
        feature = example.features.feature.get(self._plan.partition_feature)
        values = records._feature_values(feature) if feature is not None else []
        return b"\x00".join(str(value).encode("utf-8") for value in values)


def publish_if_too_many_rejected(
    staged: artifacts.StagedOutput,
    rows_read: int,
    rows_rejected: int,
    max_rejected_fraction: float,
) -> None:
    """Over the allowed share of rejected rows: fails with one line saying how many and where
    to read the reasons (the failed output, kept beside the output directory).

    Raises:
        cli.JobError: more than `max_rejected_fraction` of the rows were rejected.
    """
    if rows_rejected <= max_rejected_fraction * rows_read:
        return
    raise cli.JobError(
        f"{rows_rejected} of {rows_read} rows rejected ({rows_rejected / rows_read:.2%}), more "
        f"than --max_rejected_fraction={max_rejected_fraction}; nothing was published; "
        f"reasons in {FileSystems.join(staged.failed_dir, REJECTED_DIR)}/"
    )


def build_pipeline(pipeline: beam.Pipeline, plan: IngestPlan, staging_dir: str) -> None:
    """Adds the ingest graph to `pipeline`: examples, rejects and counts under `staging_dir`."""
    converted = pipeline | "ReadExamples" >> RawRowsToExamples(
        plan.files, plan.input_format, plan.schema_types, policy=plan.policy
    )
    keyed_examples = converted["examples"] | "AssignShards" >> beam.ParDo(_AssignShard(plan))
    num_shards = plan.num_shards
    written = keyed_examples | "WriteExamples" >> shards.WriteSortedShards(
        staging_dir,
        lambda _: num_shards,
        (EXAMPLES_FILE_PREFIX, EXAMPLES_FILE_SUFFIX),
        shards.write_tfrecord_shard,
    )
    rejected = (
        converted["rejected"]
        | "KeyRejected" >> beam.Map(lambda keyed: ((REJECTED_DIR, 0), keyed))
        | "WriteRejected"
        >> shards.WriteSortedShards(
            staging_dir, lambda _: 1, (REJECTED_DIR, ".jsonl"), shards.write_jsonl_shard
        )
    )
    read_count = converted["rows_read"] | "KeyRowsRead" >> beam.Map(
        lambda count: (ROWS_READ, count)
    )
    types_path = FileSystems.join(staging_dir, _TYPES_FILE)
    _ = converted["column_types"] | "WriteColumnTypes" >> beam.Map(
        lambda types: artifacts.write_json(
            types_path, {name: ColumnType(kind).name for name, kind in types.items()}
        )
    )
    counts_path = FileSystems.join(staging_dir, _COUNTS_FILE)
    _ = (
        (read_count, written, rejected, converted["scrubbed"])
        | "FlattenCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "CountsToDict" >> beam.combiners.ToDict()
        | "WriteCounts" >> beam.Map(lambda counts: artifacts.write_json(counts_path, counts))
    )


def _complete_shards(staging_dir: str, plan: IngestPlan) -> None:
    """Writes empty shard files where no row fell, so every split has all its named shards."""
    for split in plan.splits:
        shards.fill_missing_shards(
            FileSystems.join(staging_dir, split.name),
            (EXAMPLES_FILE_PREFIX, EXAMPLES_FILE_SUFFIX),
            plan.num_shards,
            shards.write_tfrecord_shard,
        )
    shards.fill_missing_shards(
        FileSystems.join(staging_dir, REJECTED_DIR),
        (REJECTED_DIR, ".jsonl"),
        1,
        shards.write_jsonl_shard,
    )


def _check_counts(counts: dict[str, int], plan: IngestPlan, output_dir: str) -> None:
    written = sum(counts.get(split.name, 0) for split in plan.splits)
    rejected = counts.get(REJECTED_DIR, 0)
    if counts.get(ROWS_READ, 0) != written + rejected:
        raise cli.JobError(
            f"counts do not add up: {counts.get(ROWS_READ, 0)} rows read, {written} written, "
            f"{rejected} rejected; nothing was published to {output_dir}"
        )


def run(config: IngestConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the ingest job and publishes its output directory.

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: bad input, no rows, or more rejected rows than `max_rejected_fraction` allows
            (what was written is kept in `<output_dir>.failed/`, nothing is published).
    """
    staged = artifacts.StagedOutput(config.output_dir, STAGE, inputs=input_patterns(config))
    plan = plan_ingest(config)
    logging.info(
        "ingest: %d %s file(s), splits %s", len(plan.files), plan.input_format, plan.splits
    )
    with staged:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, plan, staged.staging_dir)
        counts_path, types_path = staged.path(_COUNTS_FILE), staged.path(_TYPES_FILE)
        counts, column_types = artifacts.read_json(counts_path), artifacts.read_json(types_path)
        FileSystems.delete([counts_path, types_path])
        _check_counts(counts, plan, config.output_dir)
        _complete_shards(staged.staging_dir, plan)
        rows_read, rejected = counts.get(ROWS_READ, 0), counts.get(REJECTED_DIR, 0)
        if rows_read == 0:
            raise cli.JobError(f"--input={config.input} holds no rows")
        manifest_counts = {
            ROWS_READ: rows_read,
            ROWS_REJECTED: rejected,
            "rows_written": {split.name: counts.get(split.name, 0) for split in plan.splits},
        }
        if plan.policy.active:
            manifest_counts["pii_replacements"] = {
                kind: counts.get(SCRUBBED_PREFIX + kind, 0)
                for kind in privacy.KINDS
                if any(kind in kinds for kinds in plan.policy.scrub.values())
            }
        publish_if_too_many_rejected(staged, rows_read, rejected, config.max_rejected_fraction)
        manifest = staged.publish(
            inputs={"raw": [artifacts.file_fingerprint(item.path) for item in plan.files]},
            parameters={
                **dataclasses.asdict(config),
                "input_format": plan.input_format,
                "splits": {split.name: split.weight for split in plan.splits},
                "num_shards": plan.num_shards,
            },
            counts=manifest_counts,
            extra={
                "span": plan.span,
                "version": plan.version,
                "splits": [split.name for split in plan.splits],
                "presplit": plan.files[0].split is not None,
                # Each feature's tf.Example type, for later stages to check against their schema.
                feature_types.MANIFEST_KEY: {
                    name: kind
                    for name, kind in sorted(column_types.items())
                    if name not in plan.policy.drop_columns
                },
            },
        )
    logging.info(
        "ingest: %d rows read, %s written, %d rejected -> %s",
        rows_read,
        manifest_counts["rows_written"],
        rejected,
        config.output_dir,
    )
    return manifest


def input_format_option(what: str = "Input") -> Callable[[Callable[..., Any]], Any]:
    """`--format`, for the jobs that read raw records as ingest does."""
    return click.option(
        "--format",
        "input_format",
        type=click.Choice(records.FORMATS),
        default=None,
        help=f"{what} format [default: from the file extension].",
    )


compression_option = click.option(
    "--compression",
    type=click.Choice(records.COMPRESSIONS),
    default=records.AUTO,
    help="Compression of CSV and JSON lines input; auto goes by the file extension "
    "(.gz, .bz2, .deflate, .zst, .xz, .lzma).",
)


max_rejected_fraction_option = click.option(
    "--max_rejected_fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    help="Fail (exit 1) when more than this fraction of rows is rejected.",
)


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option(
    "--input",
    "input_pattern",
    required=True,
    help="File pattern, or train=<pattern>,eval=<pattern> for data already split. "
    "{SPAN} and {VERSION} in a pattern select the newest span and version.",
)
@click.option(
    "--output_dir", required=True, help="Directory to write splits, rejected/ and manifest.json."
)
@input_format_option()
@compression_option
@click.option(
    "--splits",
    default=None,
    help=f"Split names and hash-bucket weights [default: {DEFAULT_SPLITS}].",
)
@click.option(
    "--partition_feature", default=None, help="Split by this column's value, not the whole record."
)
@click.option(
    "--schema", default=None, help="TFDV schema.pbtxt giving column types instead of inference."
)
@max_rejected_fraction_option
@click.option(
    "--span", type=click.IntRange(min=0), default=None, help="Span to ingest [default: newest]."
)
@click.option(
    "--version", type=click.IntRange(min=0), default=None, help="Version [default: newest]."
)
@click.option(
    "--num_shards",
    type=click.IntRange(min=0),
    default=0,
    help="Files per split; 0 picks one per 256 MB of input.",
)
@click.option(
    "--drop_columns",
    default=None,
    help="Comma-separated columns the model must not see: absent from every output.",
)
@click.option(
    "--scrub",
    default=None,
    help="<column>:<kind>,... personal data to replace in free text; kinds: "
    f"{', '.join(privacy.KINDS)}, all. Replacements are counted in the manifest.",
)
def main(
    input_pattern: str,
    output_dir: str,
    input_format: str | None,
    compression: str,
    splits: str | None,
    partition_feature: str | None,
    schema: str | None,
    max_rejected_fraction: float,
    span: int | None,
    version: int | None,
    num_shards: int,
    drop_columns: str | None,
    scrub: str | None,
    beam_args: tuple[str, ...],
) -> None:
    config = IngestConfig(
        input=input_pattern,
        output_dir=output_dir,
        input_format=input_format,
        compression=compression,
        splits=splits,
        partition_feature=partition_feature,
        schema=schema,
        max_rejected_fraction=max_rejected_fraction,
        span=span,
        version=version,
        num_shards=num_shards,
        drop_columns=drop_columns,
        scrub=scrub,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
