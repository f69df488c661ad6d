"""Transform: TensorFlow Transform's analyze-and-transform on ingested `tf.Example`s.

    python -m beam_jobs.transform --examples_dir=out/ingest --schema=schema.pbtxt \
        --output_dir=out/transform --preprocessing_fn=my_module.py:preprocessing_fn \
        [--analyze_splits=train] [--transform_splits=train,eval]

Reads the raw examples through a `tfx_bsl` TFXIO source built from the schema, runs the
`preprocessing_fn`'s analyzers on the analyze splits only (never on eval or test data), transforms
every split, and writes `transform_fn/`, `transformed_metadata/`, the raw `metadata/` (so
`tft.TFTransformOutput(output_dir)` has both feature specs), and
`transformed_examples/<split>/data-*.tfrecord.gz`. Examples are sharded and sorted by a fingerprint
of their content, so reruns write identical files; the examples written per split must equal the
rows the ingest manifest says it wrote.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import click
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import metadata_io
from tfx_bsl.public import tfxio

from beam_jobs.lib import artifacts, cli, feature_types, layout, shards, tfdv_io, user_code
from beam_jobs.lib.splits import fingerprint
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "AnalyzeSplits",
    "TransformConfig",
    "TransformPlan",
    "TransformSplit",
    "build_pipeline",
    "canonical_example",
    "content_key",
    "load_schema",
    "main",
    "plan_transform",
    "run",
]

STAGE = "transform"
DEFAULT_ANALYZE_SPLITS = "train"
EXAMPLES_TRANSFORMED = "examples_transformed"
_TFT_TEMP_DIR = ".tft_tmp"
_TELEMETRY = ["beam_jobs", STAGE]
_FLAG = "preprocessing_fn"
# TFT's own message for an output it cannot describe in a schema (tensorflow_transform
# schema_inference): "Feature <name> (<tensor>) had invalid dtype|shape ...".
_TFT_BAD_OUTPUT = re.compile(r"Feature (?P<name>\S+) \(.*\) had invalid (?P<what>dtype|shape)")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """The transform job's parameters, as given on the command line."""

    examples_dir: str
    schema: str
    output_dir: str
    preprocessing_fn: str
    analyze_splits: str = DEFAULT_ANALYZE_SPLITS
    transform_splits: str | None = None


@dataclasses.dataclass(frozen=True)
class TransformPlan:
    """Everything resolved before the pipeline runs: schema, user function, splits, shards."""

    schema: schema_pb2.Schema
    preprocessing_fn: Callable[[dict[str, Any]], dict[str, Any]]
    preprocessing_fn_name: str
    split_patterns: dict[str, str]
    analyze_splits: tuple[str, ...]
    transform_splits: tuple[str, ...]
    expected_counts: dict[str, int]
    num_shards: dict[str, int]
    rows_analyzed: int


def load_schema(path: str) -> schema_pb2.Schema:
    """Reads a TFDV `schema.pbtxt`.

    Raises:
        cli.JobError: the file is missing or is not a text-format schema.
    """
    try:
        return tfdv_io.read_schema(path)
    except FileNotFoundError:
        raise cli.JobError(f"--schema={path}: file not found") from None
    except text_format.ParseError as error:
        raise cli.JobError(f"--schema={path} is not a schema.pbtxt: {error}") from error


def _choose_splits(
    flag: str, requested: list[str], available: list[str], examples_dir: str
) -> tuple[str, ...]:
    unknown = [split for split in requested if split not in available]
    if unknown or not requested:
        raise cli.JobError(
            f"--{flag}: no split {', '.join(unknown) or '(none given)'} in {examples_dir} "
            f"(its splits: {', '.join(available)})"
        )
    return tuple(requested)


def plan_transform(config: TransformConfig) -> TransformPlan:
    """Reads the ingest manifest, the schema and the user's function, failing early.

    Raises:
        cli.JobError: unfinished ingest output, unknown splits, analyze splits without rows, a bad
            schema, or a `preprocessing_fn` that cannot be loaded.
    """
    manifest = artifacts.read_manifest(
        config.examples_dir, flag="examples_dir", stages=artifacts.EXAMPLES_STAGES
    )
    available = manifest.splits
    analyze = _choose_splits(
        "analyze_splits", cli.split_list(config.analyze_splits), available, config.examples_dir
    )
    transform = _choose_splits(
        "transform_splits",
        cli.split_list(config.transform_splits) or available,
        available,
        config.examples_dir,
    )
    rows_written = manifest.rows_written
    rows_analyzed = sum(rows_written[split] for split in analyze)
    if not rows_analyzed:
        raise cli.JobError(f"--analyze_splits={','.join(analyze)}: no rows to analyze")
    patterns = {
        split: FileSystems.join(
            config.examples_dir,
            split,
            layout.EXAMPLES_PATTERN,
        )
        for split in available
    }
    schema = load_schema(config.schema)
    first_files = [
        metadata.path for split in analyze for metadata in artifacts.list_files(patterns[split])[:1]
    ]
    feature_types.check_against_schema(
        feature_types.recorded_or_sampled(manifest, first_files),
        schema,
        config.examples_dir,
        config.schema,
    )
    return TransformPlan(
        schema=schema,
        preprocessing_fn=user_code.load_function(config.preprocessing_fn, flag=_FLAG),
        preprocessing_fn_name=config.preprocessing_fn,
        split_patterns={split: patterns[split] for split in sorted({*analyze, *transform})},
        analyze_splits=analyze,
        transform_splits=transform,
        expected_counts={split: rows_written[split] for split in transform},
        num_shards={
            split: max(1, len(artifacts.list_files(patterns[split]))) for split in transform
        },
        rows_analyzed=rows_analyzed,
    )


def content_key(serialized: bytes) -> tuple[int, bytes]:
    """The sort key of a transformed example: a fingerprint of its content, then the content.

    Sorting by a fingerprint orders the examples the same way on every run and runner while
    mixing them, so a reader's shuffle buffer does not start on a run of near-identical rows.
    """
    return fingerprint(serialized), serialized


def canonical_example(serialized: bytes) -> bytes:
    """A serialized `tf.Example` re-serialized deterministically.

    TFT's batch encoder writes the feature map in an order that varies between processes, so
    the same example can serialize to different bytes on two runs.
    """
    return tf.train.Example.FromString(serialized).SerializeToString(deterministic=True)


class _KeyForShard(beam.DoFn):
    """Serialized tf.Example → ((split, shard), (sort key, canonical bytes)), counted per split."""

    def __init__(self, split: str, num_shards: int) -> None:
        self._split = split
        self._num_shards = num_shards
        self._counter = beam.metrics.Metrics.counter(STAGE, f"{EXAMPLES_TRANSFORMED}_{split}")

    def process(self, serialized: bytes) -> Iterator[tuple[Any, Any]]:
        self._counter.inc()
        canonical = canonical_example(serialized)
        key = content_key(canonical)
        yield (self._split, key[0] % self._num_shards), (key, canonical)


class AnalyzeSplits(beam.PTransform):
    """Raw record batches of the analyze splits → TFT's (transform_fn, transformed metadata)."""

    def __init__(self, plan: TransformPlan, tensor_adapter_config: Any) -> None:
        super().__init__()
        self._plan = plan
        self._tensor_adapter_config = tensor_adapter_config

    def expand(self, record_batches: beam.PCollection) -> Any:
        try:
            return (
                record_batches,
                self._tensor_adapter_config,
            ) | "AnalyzeDataset" >> tft_beam.AnalyzeDataset(self._plan.preprocessing_fn)
        except (ValueError, TypeError, KeyError) as error:
            raise _preprocessing_error(self._plan.preprocessing_fn_name, error) from error


def _preprocessing_error(name: str, error: Exception) -> cli.JobError:
    """One line for a `preprocessing_fn` that fails while TFT traces it."""
    bad_output = _TFT_BAD_OUTPUT.search(str(error))
    if bad_output and bad_output["what"] == "dtype":
        return cli.JobError(
            f"--{_FLAG}={name} returns feature {bad_output['name']!r} with a dtype TFT cannot "
            "write; return tf.int64, tf.float32 or tf.string"
        )
    if bad_output:
        return cli.JobError(
            f"--{_FLAG}={name} returns feature {bad_output['name']!r} with a shape TFT cannot "
            "write; return [batch] or [batch, n] tensors, or sparse/ragged ones"
        )
    if isinstance(error, KeyError):
        return cli.JobError(
            f"--{_FLAG}={name} reads feature {error}, which the schema does not declare"
        )
    return cli.JobError(f"--{_FLAG}={name} failed: {type(error).__name__}: {error}")


class TransformSplit(beam.PTransform):
    """One split's raw record batches → ((split, shard), (sort key, serialized tf.Example))."""

    def __init__(self, split: str, num_shards: int, tensor_adapter_config: Any, transform_fn: Any):
        super().__init__()
        self._split = split
        self._num_shards = num_shards
        self._tensor_adapter_config = tensor_adapter_config
        self._transform_fn = transform_fn

    def expand(self, record_batches: beam.PCollection) -> beam.PCollection:
        dataset = (record_batches, self._tensor_adapter_config)
        transformed = (dataset, self._transform_fn) | "TransformDataset" >> (
            tft_beam.TransformDataset(output_record_batches=True)
        )
        return (
            transformed
            | "EncodeExamples" >> tft_beam.EncodeTransformedDataset()
            | "KeyForShard" >> beam.ParDo(_KeyForShard(self._split, self._num_shards))
        )


def _split_label(split: str) -> str:
    return "".join(part.capitalize() for part in split.split("_"))


def build_pipeline(pipeline: beam.Pipeline, plan: TransformPlan, staging_dir: str) -> None:
    """Adds the transform graph to `pipeline`; call inside `tft_beam.Context(temp_dir=...)`.

    Writes `transform_fn/`, `transformed_metadata/`, the transformed examples and a counts file
    under `staging_dir`.
    """

    def source(patterns: str | list[str]) -> tfxio.TFExampleRecord:
        return tfxio.TFExampleRecord(
            file_pattern=patterns, schema=plan.schema, telemetry_descriptors=_TELEMETRY
        )

    # Analysis and transformation read the data separately: one PCollection feeding both would
    # be held whole in memory until the analyzers finish (the transform waits on their result).
    # Nor is anything flattened: DirectRunner holds a Flatten's inputs whole in memory, so the
    # analyze splits are one source and each split is written on its own.
    analyze_source = source([plan.split_patterns[split] for split in plan.analyze_splits])
    adapter_config = analyze_source.TensorAdapterConfig()
    transform_fn = (
        pipeline
        | "ReadForAnalysis" >> analyze_source.BeamSource()
        | "Analyze" >> AnalyzeSplits(plan, adapter_config)
    )
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(staging_dir)
    examples_dir = FileSystems.join(staging_dir, layout.TRANSFORMED_EXAMPLES_DIR)
    num_shards = dict(plan.num_shards)
    written = [
        pipeline
        | f"Read{_split_label(split)}" >> source(plan.split_patterns[split]).BeamSource()
        | f"Transform{_split_label(split)}"
        >> TransformSplit(split, plan.num_shards[split], adapter_config, transform_fn)
        | f"Write{_split_label(split)}"
        >> shards.WriteSortedShards(
            examples_dir,
            num_shards.__getitem__,
            layout.EXAMPLES_FILE,
            artifacts.write_tfrecords,
        )
        for split in plan.transform_splits
    ]
    _ = written | "FlattenCounts" >> beam.Flatten() | "Counts" >> WriteCounts(staging_dir)


def _function_fingerprint(plan: TransformPlan) -> dict[str, Any]:
    """The user function's name and the fingerprint of the file that defines it."""
    try:
        source = inspect.getsourcefile(plan.preprocessing_fn)
    except TypeError:  # a callable object, not a function
        source = None
    fingerprint = artifacts.file_fingerprint(source) if source else {}
    return {"function": plan.preprocessing_fn_name, **fingerprint}


def _shard_sets(plan: TransformPlan) -> list[shards.ShardSet]:
    """Every shard the output names: each transformed split's examples."""
    return [
        shards.ShardSet(
            FileSystems.join(layout.TRANSFORMED_EXAMPLES_DIR, split),
            layout.EXAMPLES_FILE,
            plan.num_shards[split],
        )
        for split in plan.transform_splits
    ]


def _check_counts(
    written: dict[str, int], plan: TransformPlan, config: TransformConfig
) -> dict[str, int]:
    """The examples written per split, checked against the ingest manifest's rows_written.

    Raises:
        cli.JobError: a split lost or gained rows on the way.
    """
    counts = {split: written.get(split, 0) for split in plan.transform_splits}
    if counts != plan.expected_counts:
        raise cli.JobError(
            f"transformed {counts} examples but {config.examples_dir} holds "
            f"{plan.expected_counts}; nothing was published to {config.output_dir}"
        )
    return counts


def run(config: TransformConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the transform job and publishes its output directory.

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: bad input or user function, or counts that do not match the ingest's.
    """
    staged = artifacts.StagedOutput(
        config.output_dir, STAGE, inputs=[config.examples_dir, config.schema]
    )
    plan = plan_transform(config)
    logging.info(
        "transform: analyze %s, transform %s with %s",
        plan.analyze_splits,
        plan.transform_splits,
        config.preprocessing_fn,
    )
    with staged:
        temp_dir = staged.path(_TFT_TEMP_DIR)
        written = run_beam_stage(
            staged,
            options,
            lambda pipeline: build_pipeline(pipeline, plan, staged.staging_dir),
            context=tft_beam.Context(temp_dir=temp_dir),
        )
        if tf.io.gfile.exists(temp_dir):
            tf.io.gfile.rmtree(temp_dir)
        counts = _check_counts(written, plan, config)
        shards.complete_shards(staged.staging_dir, _shard_sets(plan))
        metadata_io.write_metadata(
            tft.DatasetMetadata(plan.schema),
            staged.path(tft.TFTransformOutput.RAW_METADATA_DIR),
        )
        manifest = staged.publish(
            inputs={
                "examples": artifacts.input_fingerprint(config.examples_dir),
                "schema": artifacts.file_fingerprint(config.schema),
                "preprocessing_fn": _function_fingerprint(plan),
            },
            parameters={
                **dataclasses.asdict(config),
                "analyze_splits": list(plan.analyze_splits),
                "transform_splits": list(plan.transform_splits),
                "num_shards": plan.num_shards,
            },
            counts={
                EXAMPLES_TRANSFORMED: counts,
                "rows_analyzed": plan.rows_analyzed,
            },
            extra={"splits": list(plan.transform_splits)},
        )
    logging.info("transform: %s examples written -> %s", counts, config.output_dir)
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option(
    "--examples_dir", required=True, help="Ingest output: <split>/data-*.tfrecord.gz + manifest."
)
@click.option("--schema", required=True, help="TFDV schema.pbtxt describing the raw examples.")
@click.option(
    "--output_dir",
    required=True,
    help="Directory to write transform_fn/, metadata, transformed_examples/ and manifest.json.",
)
@click.option(
    "--preprocessing_fn",
    required=True,
    help="The TFT preprocessing function: package.module:function or path/to/file.py:function.",
)
@click.option(
    "--analyze_splits",
    default=DEFAULT_ANALYZE_SPLITS,
    help="Comma-separated splits the analyzers see (never eval or test data).",
)
@click.option(
    "--transform_splits",
    default=None,
    help="Comma-separated splits to transform [default: every split of --examples_dir].",
)
def main(
    examples_dir: str,
    schema: str,
    output_dir: str,
    preprocessing_fn: str,
    analyze_splits: str,
    transform_splits: str | None,
    beam_args: tuple[str, ...],
) -> None:
    config = TransformConfig(
        examples_dir=examples_dir,
        schema=schema,
        output_dir=output_dir,
        preprocessing_fn=preprocessing_fn,
        analyze_splits=analyze_splits,
        transform_splits=transform_splits,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
