"""Statistics: TFDV statistics of every split of an ingest output, in one Beam pipeline.

    python -m beam_jobs.statistics --examples_dir=out/ingest --output_dir=out/statistics \
        [--slice_by=state]... [--sample_rate=1.0]

Each split is read with a tfx_bsl TFXIO source (Arrow RecordBatches of the GZIP'd `tf.Example`s)
and summarised by `tfdv.GenerateStatistics` inside this job's own pipeline, so it runs on any
runner. Writes per split `<split>/stats.pb` (binary `DatasetFeatureStatisticsList`, with one
dataset per slice beside `All Examples` when `--slice_by` is given) and `<split>/stats.html`, a
standalone page. The rows read per split must equal the rows ingest wrote, or the job fails.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import click
import pyarrow as pa
import tensorflow_data_validation as tfdv
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_data_validation.utils import slicing_util
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx_bsl.public import tfxio

from beam_jobs.lib import artifacts, cli, layout, reports, tfdv_io
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "HTML_FILE",
    "SplitStatistics",
    "StatisticsConfig",
    "build_pipeline",
    "example_count",
    "main",
    "run",
    "stats_options",
]

STAGE = "statistics"
HTML_FILE = "stats.html"
_TELEMETRY = ["beam_jobs", STAGE]
_ROWS_READ_COUNTER = beam.metrics.Metrics.counter(STAGE, layout.ROWS_READ)


@dataclasses.dataclass(frozen=True)
class StatisticsConfig:
    """The statistics job's parameters, as given on the command line."""

    examples_dir: str
    output_dir: str
    slice_by: tuple[str, ...] = ()
    sample_rate: float = 1.0


def stats_options(config: StatisticsConfig) -> tfdv.StatsOptions:
    """TFDV options: sampling, and one slice function per `--slice_by` feature (all its values)."""
    slice_functions = [
        slicing_util.get_feature_value_slicer({feature: None}) for feature in config.slice_by
    ]
    return tfdv.StatsOptions(
        sample_rate=config.sample_rate if config.sample_rate < 1.0 else None,
        experimental_slice_functions=slice_functions or None,
    )


def example_count(stats: statistics_pb2.DatasetFeatureStatisticsList) -> int:
    """The number of examples of the unsliced dataset (0 for an empty split)."""
    whole = reports.default_slice(stats)
    return whole.datasets[0].num_examples if whole.datasets else 0


class SplitStatistics(beam.PTransform):
    """One split's examples → `<output_dir>/<split>/stats.pb`; outputs (split, rows read).

    Rows are counted on the RecordBatches TFDV reads, independently of TFDV, so a loss anywhere
    between ingest and statistics shows (cf. tensorflow/data-validation#247).
    """

    def __init__(
        self, *, split: str, file_pattern: str, output_dir: str, options: tfdv.StatsOptions
    ) -> None:
        super().__init__()
        self._split = split
        self._file_pattern = file_pattern
        self._stats_path = FileSystems.join(output_dir, split, layout.STATS_FILE)
        self._options = options

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        source = tfxio.TFExampleRecord(
            file_pattern=[self._file_pattern], telemetry_descriptors=_TELEMETRY
        )
        batches = pipeline | "ReadExamples" >> source.BeamSource()
        _ = (
            batches
            | "GenerateStatistics" >> tfdv.GenerateStatistics(self._options)
            | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(self._stats_path)
        )
        split = self._split
        return (
            batches
            | "RowsPerBatch" >> beam.Map(_num_rows)
            | "SumRows" >> beam.CombineGlobally(sum)
            | "KeyBySplit" >> beam.Map(lambda rows: (split, rows))
        )


def _num_rows(batch: pa.RecordBatch) -> int:
    _ROWS_READ_COUNTER.inc(batch.num_rows)
    return batch.num_rows


def build_pipeline(
    pipeline: beam.Pipeline,
    config: StatisticsConfig,
    splits: Sequence[str],
    staging_dir: str,
) -> None:
    """Adds statistics of every split to `pipeline`; rows read per split go to a counts file."""
    options = stats_options(config)
    counts = [
        pipeline
        | f"Statistics[{split}]"
        >> SplitStatistics(
            split=split,
            file_pattern=FileSystems.join(config.examples_dir, split, layout.EXAMPLES_PATTERN),
            output_dir=staging_dir,
            options=options,
        )
        for split in splits
    ]
    _ = counts | "FlattenCounts" >> beam.Flatten() | "Counts" >> WriteCounts(staging_dir)


def _check_split(
    split: str,
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    rows_read: int,
    config: StatisticsConfig,
    ingest_manifest: artifacts.Manifest,
) -> None:
    """Fails unless the rows read equal the rows ingest wrote (and TFDV counted, unsampled)."""
    expected = ingest_manifest.rows_written.get(split)
    if expected is not None and rows_read != expected:
        raise cli.JobError(
            f"split {split}: read {rows_read} examples but ingest wrote {expected}; "
            f"{config.examples_dir} was changed or records were lost, nothing published"
        )
    counted = example_count(stats)
    if config.sample_rate >= 1.0 and counted != rows_read:
        raise cli.JobError(
            f"split {split}: TFDV counted {counted} examples of the {rows_read} read; "
            "nothing published"
        )
    features = {
        ".".join(feature.path.step) or feature.name
        for dataset in reports.default_slice(stats).datasets
        for feature in dataset.features
    }
    missing = [feature for feature in config.slice_by if feature not in features]
    if rows_read and missing:
        raise cli.JobError(
            f"--slice_by={missing[0]} is not a feature of split {split} "
            f"(features: {', '.join(sorted(features))})"
        )


def _finish_split(
    staged: artifacts.StagedOutput, split: str, rows_read: int, config: StatisticsConfig
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, int]:
    stats_path = staged.path(split, layout.STATS_FILE)
    stats = (
        tfdv_io.load_statistics(stats_path)
        if FileSystems.exists(stats_path)
        else statistics_pb2.DatasetFeatureStatisticsList()
    )
    html_text = reports.statistics_html(
        stats, f"Statistics of split {split}: {config.examples_dir}"
    )
    with FileSystems.create(staged.path(split, HTML_FILE)) as handle:
        handle.write(html_text.encode("utf-8"))
    return stats, len(stats.datasets)


def run(config: StatisticsConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the statistics job and publishes its output directory.

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: the examples directory is not a finished ingest output, a count does not
            match, or a `--slice_by` feature does not exist.
    """
    staged = artifacts.StagedOutput(config.output_dir, STAGE, inputs=[config.examples_dir])
    ingest_manifest = artifacts.read_manifest(
        config.examples_dir, flag="examples_dir", stages=artifacts.EXAMPLES_STAGES
    )
    splits = ingest_manifest.splits
    if not splits:
        raise cli.JobError(f"--examples_dir={config.examples_dir}: its manifest names no splits")
    logging.info("statistics: splits %s of %s", splits, config.examples_dir)
    with staged:
        rows_read = run_beam_stage(
            staged,
            options,
            lambda pipeline: build_pipeline(pipeline, config, splits, staged.staging_dir),
        )
        examples, slices = {}, {}
        for split in splits:
            stats, slices[split] = _finish_split(staged, split, rows_read.get(split, 0), config)
            _check_split(split, stats, rows_read.get(split, 0), config, ingest_manifest)
            examples[split] = rows_read.get(split, 0)
        manifest = staged.publish(
            inputs={"examples": artifacts.input_fingerprint(config.examples_dir)},
            parameters={**dataclasses.asdict(config), "slice_by": list(config.slice_by)},
            counts={"examples": examples, "datasets": slices},
            extra={"splits": splits},
        )
    logging.info("statistics: examples per split %s -> %s", examples, config.output_dir)
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option("--examples_dir", required=True, help="An ingest output directory (with manifest).")
@click.option(
    "--output_dir", required=True, help="Directory to write <split>/stats.pb and stats.html."
)
@click.option(
    "--slice_by",
    multiple=True,
    help="Also compute statistics per value of this feature (repeatable).",
)
@click.option(
    "--sample_rate",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    help="Fraction of examples TFDV samples for its statistics.",
)
def main(
    examples_dir: str,
    output_dir: str,
    slice_by: tuple[str, ...],
    sample_rate: float,
    beam_args: tuple[str, ...],
) -> None:
    config = StatisticsConfig(
        examples_dir=examples_dir,
        output_dir=output_dir,
        slice_by=tuple(slice_by),
        sample_rate=sample_rate,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
