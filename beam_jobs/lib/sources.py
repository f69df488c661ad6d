"""Sources: raw records (CSV, JSON lines, Parquet, Avro, TFRecord) read into typed `tf.Example`s.

The readers every job that takes raw records shares (ingest, infer, feedback): resolving `--input`
to files (spans and versions included), the Beam transforms that read them, infer column types over
the whole input and encode the rows, and the flags that choose format and compression. Rows that
cannot be parsed or typed come out as rejected lines with file, line and reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
import click
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, layout, privacy, records
from beam_jobs.lib.records import ColumnType, RawRow
from beam_jobs.lib.splits import SPLIT_NAME

__all__ = [
    "ConvertedRows",
    "InputFile",
    "RawRowsToExamples",
    "ReadCsvBatches",
    "ReadRawRows",
    "SourceConfig",
    "SourcePlan",
    "absolute",
    "compression_option",
    "input_format_option",
    "max_rejected_fraction_option",
    "parse_input",
    "plan_source",
    "publish_if_too_many_rejected",
    "refuse_directory",
    "rejected_line",
    "shards_for_bytes",
]

SCRUBBED_PREFIX = "scrubbed_"
SPAN, VERSION = "{SPAN}", "{VERSION}"
_SHARD_INPUT_BYTES = 256 << 20
_ROWS_PER_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file; `split` is set when the input came already split. `compression` is one of
    `records.COMPRESSIONS` (`auto`: by the file extension). `name` is the file's path below the
    input folder, for formats that record it (images)."""

    index: int
    path: str
    split: str | None = None
    compression: str = records.AUTO
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """The flags that say which raw records to read and how (ingest's, infer's)."""

    input: str
    input_format: str | None = None
    compression: str = records.AUTO
    span: int | None = None
    version: int | None = None
    num_shards: int = 0
    partition_feature: str | None = None
    drop_columns: str | None = None
    scrub: str | None = None


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """The raw input resolved: files (in input order), format, span, version, shards, policy.

    `split_names` holds the split names of an input given already split
    (`train=<pattern>,eval=<pattern>`), in order, and is empty otherwise.
    """

    files: tuple[InputFile, ...]
    input_format: str
    num_shards: int
    split_names: tuple[str, ...] = ()
    span: int | None = None
    version: int | None = None
    policy: privacy.PrivacyPolicy = dataclasses.field(default_factory=privacy.PrivacyPolicy)


def parse_input(text: str) -> dict[str | None, str]:
    """Parses `--input`: a pattern (key None), or `train=<pattern>,eval=<pattern>` if pre-split."""
    items = cli.split_list(text)
    named = [item.partition("=") for item in items]
    if items and all(sep and SPLIT_NAME.fullmatch(name) for name, sep, _ in named):
        return {name: pattern for name, _, pattern in named}
    return {None: text}


def absolute(pattern: str) -> str:
    """A local pattern made absolute; a URL (`gs://...`) as it is."""
    return pattern if FileSystems.get_scheme(pattern) else os.path.abspath(pattern)


def _resolve_span(
    pattern: str, span: int | None, version: int | None
) -> tuple[list[str], int | None, int | None]:
    """The files of the chosen (default: newest) span and version of a `{SPAN}` pattern."""
    if SPAN not in pattern:
        if span is not None or version is not None or VERSION in pattern:
            raise cli.JobError("--span and --version need {SPAN} (and {VERSION}) in --input")
        return [metadata.path for metadata in artifacts.list_files(pattern)], None, None
    regex = re.compile(
        re.escape(pattern)
        .replace(re.escape(SPAN), r"(?P<span>\d+)")
        .replace(re.escape(VERSION), r"(?P<version>\d+)")
        .replace(r"\*", r"[^/]*")
    )
    glob = pattern.replace(SPAN, "*").replace(VERSION, "*")
    found = []
    for metadata in artifacts.list_files(glob):
        match = regex.fullmatch(metadata.path)
        if match:
            found_version = int(match["version"]) if VERSION in pattern else None
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


def shards_for_bytes(total_bytes: int) -> int:
    """The default number of shards per split: one per 256 MB of input, at least one."""
    return max(1, -(-total_bytes // _SHARD_INPUT_BYTES))


def _auto_shards(paths: list[str]) -> int:
    return shards_for_bytes(
        sum(metadata.size_in_bytes for path in paths for metadata in artifacts.list_files(path))
    )


def _resolve_files(
    patterns: dict[str | None, str], config: SourceConfig
) -> tuple[list[InputFile], int | None, int | None]:
    files: list[InputFile] = []
    spans: set[tuple[int | None, int | None]] = set()
    for split, pattern in patterns.items():
        paths, span, version = _resolve_span(absolute(pattern), config.span, config.version)
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
    span, version = spans.pop()
    return files, span, version


def plan_source(config: SourceConfig) -> SourcePlan:
    """Resolves files, format, compression and privacy policy, failing early with one clear line.

    Raises:
        cli.JobError: no input file, an unknown format, mismatched CSV headers.
        click.UsageError: `--partition_feature` names a dropped column.
    """
    patterns = parse_input(config.input)
    files, span, version = _resolve_files(patterns, config)
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
    return SourcePlan(
        files=tuple(files),
        input_format=input_format,
        num_shards=config.num_shards or _auto_shards(paths),
        split_names=() if None in patterns else tuple(name for name in patterns if name),
        span=span,
        version=version,
        policy=policy,
    )


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


class ReadCsvBatches(beam.PTransform[beam.pvalue.PBegin, beam.PCollection]):
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


class ReadRawRows(beam.PTransform[beam.pvalue.PBegin, beam.PCollection]):
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
        self._read = beam.metrics.Metrics.counter(stage, layout.ROWS_READ)
        self._rejected = beam.metrics.Metrics.counter(stage, layout.ROWS_REJECTED)

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
        lines = batch.lines.tolist()  # Python ints once, not a numpy scalar per row.
        for index, (serialized, error) in enumerate(encoded):
            sort_key = (file_index, lines[index])
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


class ConvertedRows(NamedTuple):
    """What `RawRowsToExamples` returns; the sort key is (input file index, line)."""

    rows_read: beam.PCollection
    """One count: every row read, rejected ones included."""
    column_types: beam.PCollection
    """One dict: the type each column is encoded with."""
    examples: beam.PCollection
    """(sort key, serialized example)."""
    rejected: beam.PCollection
    """(sort key, JSON line)."""
    scrubbed: beam.PCollection
    """(`scrubbed_<kind>`, replacements), when a privacy policy drops or scrubs personal data."""


class RawRowsToExamples(beam.PTransform[beam.pvalue.PBegin, ConvertedRows]):
    """Input files → typed, serialized `tf.Example`s and rejected rows; the jobs' raw reader.

    Reads the files twice: once to infer column types over the whole input (`schema_types` take
    precedence; a CSV whose every column they type is read once), once to convert the rows.
    """

    def __init__(
        self,
        files: tuple[InputFile, ...],
        input_format: str,
        schema_types: dict[str, ColumnType],
        *,
        stage: str,
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

    def expand(self, pipeline: beam.pvalue.PBegin) -> ConvertedRows:
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
        return ConvertedRows(
            rows_read=rows_read,
            column_types=column_types,
            examples=converted.examples,
            rejected=converted[_TypeRows.REJECTED],
            scrubbed=converted[_TypeRows.SCRUBBED],
        )


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
        f"reasons in {FileSystems.join(staged.failed_dir, layout.REJECTED_DIR)}/"
    )


def input_format_option(
    what: str = "Input", formats: tuple[str, ...] = records.FORMATS
) -> Callable[[Callable[..., Any]], Any]:
    """`--format`, for the jobs that read raw records as ingest does (`formats`: the choices)."""
    return click.option(
        "--format",
        "input_format",
        type=click.Choice(formats),
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
