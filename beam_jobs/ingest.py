"""Ingest: raw files (CSV, JSON lines, Parquet, Avro, TFRecord, images) to split `tf.Example`s.

    python -m beam_jobs.ingest --input=data/complaints.csv --output_dir=out/ingest \
        [--splits=train:2,eval:1] [--partition_feature=col] [--schema=schema.pbtxt]
    python -m beam_jobs.ingest --format=images --input=photos/ --output_dir=out/ingest

Column types are inferred over the whole input (as TFX's CsvExampleGen does) unless `--schema`
declares them: one pass over the files infers the types, a second converts the rows, so memory does
not grow with the input. Splits are buckets of a fingerprint of the serialized example (or of the
partition feature), so every runner makes the same split. Rows that cannot be parsed or typed go to
`rejected/` with file, line and reason; rows read = rows written + rows rejected, always. Images
(`--format=images`, a folder of class sub-folders) are one example per file (`lib/images.py`),
split, sharded and counted the same way.
"""

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import click
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.lib import (
    artifacts,
    cli,
    feature_types,
    images,
    layout,
    privacy,
    records,
    shards,
    sources,
)
from beam_jobs.lib.records import ColumnType
from beam_jobs.lib.splits import (
    DEFAULT_SPLITS,
    Split,
    assign_split,
    fingerprint,
    parse_splits,
    split_of_fingerprint,
)
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "IngestConfig",
    "IngestPlan",
    "build_pipeline",
    "input_patterns",
    "main",
    "plan_ingest",
    "run",
]

STAGE = "ingest"
_TYPES_FILE = ".column_types.json"


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
class IngestPlan:
    """Everything resolved before the pipeline runs: files, format, splits, types, shards."""

    files: tuple[sources.InputFile, ...]
    input_format: str
    splits: tuple[Split, ...]
    schema_types: dict[str, ColumnType]
    partition_feature: str | None
    num_shards: int
    span: int | None = None
    version: int | None = None
    policy: privacy.PrivacyPolicy = dataclasses.field(default_factory=privacy.PrivacyPolicy)


def input_patterns(config: IngestConfig) -> list[str | None]:
    """Every path pattern the job reads (spans and versions as wildcards), for output checks."""
    patterns = [
        sources.absolute(pattern).replace(sources.SPAN, "*").replace(sources.VERSION, "*")
        for pattern in sources.parse_input(config.input).values()
    ]
    return [*patterns, config.schema]


def plan_ingest(config: IngestConfig) -> IngestPlan:
    """Resolves files, format, splits and column types, failing early with one clear line.

    Raises:
        cli.JobError: no input file, an unknown format, mismatched headers, a bad schema.
        click.BadParameter: malformed `--splits`.
    """
    source_config = sources.SourceConfig(
        input=config.input,
        input_format=config.input_format,
        compression=config.compression,
        span=config.span,
        version=config.version,
        num_shards=config.num_shards,
        partition_feature=config.partition_feature,
        drop_columns=config.drop_columns,
        scrub=config.scrub,
    )
    if config.input_format == images.IMAGES:
        if config.schema:
            raise cli.JobError("--schema does not apply to --format=images: its features are fixed")
        source = images.plan_images(source_config)
    else:
        source = sources.plan_source(source_config)
    if source.split_names and (config.splits or config.partition_feature):
        raise click.UsageError("--splits and --partition_feature do not apply to pre-split --input")
    splits = (
        tuple(Split(name, 1) for name in source.split_names)
        if source.split_names
        else parse_splits(config.splits or DEFAULT_SPLITS)
    )
    schema_types = records.column_types_from_schema(config.schema) if config.schema else {}
    return IngestPlan(
        files=source.files,
        input_format=source.input_format,
        splits=splits,
        schema_types=schema_types,
        partition_feature=config.partition_feature,
        num_shards=source.num_shards,
        span=source.span,
        version=source.version,
        policy=source.policy,
    )


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
            split = split_of_fingerprint(content, self._plan.splits)
        # The high half picks the shard: with the low half picking the split too, 3 shards of
        # a 2:1 split would leave train's third shard and eval's first two empty.
        shard = (content >> 32) % self._plan.num_shards
        yield (split, shard), (sort_key, serialized)

    def _partition_key(self, serialized: bytes) -> bytes:
        example = tf.train.Example.FromString(serialized)
        feature = example.features.feature.get(self._plan.partition_feature)
        values = records._feature_values(feature) if feature is not None else []
        return b"\x00".join(str(value).encode("utf-8") for value in values)


def build_pipeline(pipeline: beam.Pipeline, plan: IngestPlan, staging_dir: str) -> None:
    """Adds the ingest graph to `pipeline`: examples, rejects and counts under `staging_dir`."""
    reader = (
        images.ImagesToExamples(plan.files, stage=STAGE, policy=plan.policy)
        if plan.input_format == images.IMAGES
        else sources.RawRowsToExamples(
            plan.files, plan.input_format, plan.schema_types, stage=STAGE, policy=plan.policy
        )
    )
    converted = pipeline | "ReadExamples" >> reader
    keyed_examples = converted.examples | "AssignShards" >> beam.ParDo(_AssignShard(plan))
    num_shards = plan.num_shards
    written = keyed_examples | "WriteExamples" >> shards.WriteSortedShards(
        staging_dir,
        lambda _: num_shards,
        layout.EXAMPLES_FILE,
        shards.write_tfrecord_shard,
    )
    rejected = (
        converted.rejected
        | "KeyRejected" >> beam.Map(lambda keyed: ((layout.REJECTED_DIR, 0), keyed))
        | "WriteRejected"
        >> shards.WriteSortedShards(
            staging_dir, lambda _: 1, layout.REJECTED_FILE, shards.write_jsonl_shard
        )
    )
    read_count = converted.rows_read | "KeyRowsRead" >> beam.Map(
        lambda count: (layout.ROWS_READ, count)
    )
    types_path = FileSystems.join(staging_dir, _TYPES_FILE)
    _ = converted.column_types | "WriteColumnTypes" >> beam.Map(
        lambda types: artifacts.write_json(
            types_path, {name: ColumnType(kind).name for name, kind in types.items()}
        )
    )
    _ = (
        (read_count, written, rejected, converted.scrubbed)
        | "FlattenCounts" >> beam.Flatten()
        | "Counts" >> WriteCounts(staging_dir)
    )


def _shard_sets(plan: IngestPlan) -> list[shards.ShardSet]:
    """Every shard the output names: each split's examples, and the rejected rows."""
    return [
        *(
            shards.ShardSet(split.name, layout.EXAMPLES_FILE, plan.num_shards)
            for split in plan.splits
        ),
        shards.ShardSet(layout.REJECTED_DIR, layout.REJECTED_FILE, 1, shards.write_jsonl_shard),
    ]


def _check_counts(counts: dict[str, int], plan: IngestPlan, output_dir: str) -> None:
    written = sum(counts.get(split.name, 0) for split in plan.splits)
    rejected = counts.get(layout.REJECTED_DIR, 0)
    read = counts.get(layout.ROWS_READ, 0)
    if read != written + rejected:
        raise cli.JobError(
            f"counts do not add up: {read} rows read, {written} written, "
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
        counts = run_beam_stage(
            staged, options, lambda pipeline: build_pipeline(pipeline, plan, staged.staging_dir)
        )
        types_path = staged.path(_TYPES_FILE)
        column_types = artifacts.read_json(types_path)
        FileSystems.delete([types_path])
        _check_counts(counts, plan, config.output_dir)
        shards.complete_shards(staged.staging_dir, _shard_sets(plan))
        rows_read, rejected = counts.get(layout.ROWS_READ, 0), counts.get(layout.REJECTED_DIR, 0)
        if rows_read == 0:
            raise cli.JobError(f"--input={config.input} holds no rows")
        manifest_counts = {
            layout.ROWS_READ: rows_read,
            layout.ROWS_REJECTED: rejected,
            layout.ROWS_WRITTEN: {split.name: counts.get(split.name, 0) for split in plan.splits},
        }
        if plan.policy.active:
            manifest_counts["pii_replacements"] = {
                kind: counts.get(sources.SCRUBBED_PREFIX + kind, 0)
                for kind in privacy.KINDS
                if any(kind in kinds for kinds in plan.policy.scrub.values())
            }
        sources.publish_if_too_many_rejected(
            staged, rows_read, rejected, config.max_rejected_fraction
        )
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
        manifest_counts[layout.ROWS_WRITTEN],
        rejected,
        config.output_dir,
    )
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option(
    "--input",
    "input_pattern",
    required=True,
    help="File pattern, or train=<pattern>,eval=<pattern> for data already split. "
    "{SPAN} and {VERSION} in a pattern select the newest span and version. "
    "With --format=images: a folder of class sub-folders, or a pattern of image files.",
)
@click.option(
    "--output_dir", required=True, help="Directory to write splits, rejected/ and manifest.json."
)
@sources.input_format_option(formats=(*records.FORMATS, images.IMAGES))
@sources.compression_option
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
@sources.max_rejected_fraction_option
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
