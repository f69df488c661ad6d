"""Validate: statistics against a curated schema, drift against a baseline, skew against serving.

    python -m beam_jobs.validate --statistics_dir=out/statistics \
        --schema=schemas/consumer_complaints/schema.pbtxt --output_dir=out/validation \
        [--baseline_statistics_dir=<previous span>] [--serving_statistics_dir=<serving data>] \
        [--environment=TRAINING|SERVING]

A missing schema file is inferred from the train split's statistics and written there for a person
to curate and commit; an existing schema is never overwritten. Every split is validated with TFDV
in the schema's environment; drift and skew use the comparators the schema declares. Writes
`<split>/anomalies.pbtxt` and `report.html`, prints a summary, and exits 3 when anything is found
(the output directory is still published: a person has to read the report).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import click
import tensorflow_data_validation as tfdv
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from beam_jobs.lib import artifacts, cli, layout, reports, tfdv_io

__all__ = [
    "ANOMALIES_FILE",
    "ENVIRONMENTS",
    "REPORT_FILE",
    "ValidateConfig",
    "fields_to_relax",
    "has_anomalies",
    "load_or_infer_schema",
    "main",
    "pick_split",
    "relax_hint",
    "run",
    "summary_lines",
    "validate_split",
]

STAGE = "validate"
ANOMALIES_FILE = "anomalies.pbtxt"
REPORT_FILE = "report.html"
ENVIRONMENTS = ("TRAINING", "SERVING")
DEFAULT_ENVIRONMENT = "TRAINING"
TRAIN_SPLIT = "train"

StatsList = statistics_pb2.DatasetFeatureStatisticsList


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    """The validate job's parameters, as given on the command line."""

    statistics_dir: str
    schema: str
    output_dir: str
    baseline_statistics_dir: str | None = None
    serving_statistics_dir: str | None = None
    environment: str = DEFAULT_ENVIRONMENT


def _load_statistics_dir(stats_dir: str, flag: str) -> dict[str, StatsList]:
    """The unsliced statistics of every split of a statistics stage output."""
    manifest = artifacts.read_manifest(stats_dir, flag=flag, stages=("statistics",))
    splits = manifest.splits
    if not splits:
        raise cli.JobError(f"--{flag}={stats_dir}: its manifest names no splits")
    return {
        split: reports.default_slice(
            tfdv_io.load_statistics(FileSystems.join(stats_dir, split, layout.STATS_FILE))
        )
        for split in splits
    }


def pick_split(by_split: Mapping[str, StatsList], split: str, flag: str) -> StatsList:
    """The statistics to compare a split with: the same split, or the only one there is.

    Raises:
        cli.JobError: neither exists.
    """
    if split in by_split:
        return by_split[split]
    if len(by_split) == 1:
        return next(iter(by_split.values()))
    raise cli.JobError(
        f"--{flag} has no split {split!r} (it has {', '.join(by_split)}); "
        "compare statistics with the same splits"
    )


def load_or_infer_schema(
    schema_path: str, by_split: Mapping[str, StatsList]
) -> tuple[schema_pb2.Schema, str | None]:
    """The schema at `schema_path`, or one inferred from the train split and written there.

    Returns:
        The schema, and the split it was inferred from now (None: it existed).

    Raises:
        cli.JobError: the file is not a schema.
    """
    if FileSystems.exists(schema_path):
        try:
            return tfdv_io.read_schema(schema_path), None
        except Exception as error:  # text_format.ParseError, or a decoding error.
            raise cli.JobError(f"--schema={schema_path} is not a TFDV schema: {error}") from None
    source = TRAIN_SPLIT if TRAIN_SPLIT in by_split else next(iter(by_split))
    schema = tfdv.infer_schema(by_split[source], infer_feature_shape=True)
    parent = schema_path.rsplit("/", 1)[0] if "/" in schema_path else ""
    if parent and not FileSystems.exists(parent):
        FileSystems.mkdirs(parent)
    tfdv.write_schema_text(schema, schema_path)
    click.echo(
        f"validate: no schema at {schema_path}: inferred one from the {source} statistics and "
        "wrote it there; curate and commit it"
    )
    return schema, source


def _environment(schema: schema_pb2.Schema, requested: str) -> str | None:
    """The environment to validate in; None for a schema that declares no environments."""
    declared = list(schema.default_environment)
    if not declared:
        logging.info("validate: the schema declares no environments; --environment ignored")
        return None
    if requested not in declared:
        raise cli.JobError(
            f"--environment={requested} is not declared by the schema "
            f"(it declares {', '.join(declared)})"
        )
    return requested


def validate_split(
    stats: StatsList,
    schema: schema_pb2.Schema,
    environment: str | None,
    baseline: StatsList | None = None,
    serving: StatsList | None = None,
) -> anomalies_pb2.Anomalies:
    """TFDV's anomalies of one split: schema, drift against `baseline`, skew against `serving`."""
    return tfdv.validate_statistics(
        stats,
        schema,
        environment=environment,
        previous_statistics=baseline,
        serving_statistics=serving,
    )


# TFDV's reasons that a schema inferred from one split is stricter than another split needs, and
# the schema field each asks to relax.
_RELAXABLE_FIELDS = {
    anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_FRACTION_PRESENT: "presence.min_fraction",
    anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_NUMBER_PRESENT: "presence.min_count",
    anomalies_pb2.AnomalyInfo.INVALID_FEATURE_SHAPE: "shape",
    anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_NUMBER_VALUES: "value_count.min",
    anomalies_pb2.AnomalyInfo.FEATURE_TYPE_HIGH_NUMBER_VALUES: "value_count.max",
    anomalies_pb2.AnomalyInfo.ENUM_TYPE_UNEXPECTED_STRING_VALUES: "domain",
}


def fields_to_relax(anomalies: anomalies_pb2.Anomalies) -> dict[str, list[str]]:
    """Per feature, the schema fields whose inferred strictness this split's anomalies reject.

    Only features all of whose reasons are of that kind: a wrong type is not a field to relax.
    """
    fields = {}
    for name, info in sorted(anomalies.anomaly_info.items()):
        reasons = [_RELAXABLE_FIELDS.get(reason.type) for reason in info.reason]
        if reasons and all(reasons):
            fields[name] = sorted(set(reasons), key=reasons.index)
    return fields


def relax_hint(
    results: Mapping[str, anomalies_pb2.Anomalies], source: str, schema_path: str
) -> str | None:
    """One clause naming the schema fields to relax, when a schema inferred from `source` fits it
    but flags another split only for being stricter than that split's data; None otherwise."""
    if source not in results or has_anomalies(results[source]):
        return None
    flagged = [split for split in results if split != source and has_anomalies(results[split])]
    fields: dict[str, list[str]] = {}
    for split in flagged:
        found = fields_to_relax(results[split])
        if len(found) != len(results[split].anomaly_info):
            return None  # Something else is wrong too: not a matter of relaxing.
        for name, names in found.items():
            fields.setdefault(name, [])
            fields[name] += [field for field in names if field not in fields[name]]
    if not flagged:
        return None
    named = ", ".join(f"{name} ({', '.join(names)})" for name, names in fields.items())
    return (
        f"the schema inferred from {source} flags {', '.join(flagged)}, whose data it is "
        f"stricter than: relax {named} in {schema_path}, then rerun"
    )


def has_anomalies(anomalies: anomalies_pb2.Anomalies) -> bool:
    """Whether TFDV found anything, for a feature or for the whole dataset."""
    return bool(anomalies.anomaly_info) or bool(anomalies.dataset_anomaly_info.reason)


def summary_lines(rows_by_split: Mapping[str, list[reports.AnomalyRow]]) -> list[str]:
    """The text summary: one line per split, one indented line per anomaly."""
    lines = []
    for split, rows in rows_by_split.items():
        lines.append(f"{split}: {len(rows) or 'no'} anomal{'y' if len(rows) == 1 else 'ies'}")
        lines.extend(
            f"  {row.feature}: {row.short_description}: {row.description.strip()}" for row in rows
        )
    return lines


def _context_lines(config: ValidateConfig, environment: str | None) -> list[str]:
    lines = [
        f"Statistics: {config.statistics_dir}",
        f"Schema: {config.schema}",
        f"Environment: {environment or 'none declared by the schema'}",
    ]
    if config.baseline_statistics_dir:
        lines.append(f"Drift baseline: {config.baseline_statistics_dir}")
    if config.serving_statistics_dir:
        lines.append(f"Skew against serving statistics: {config.serving_statistics_dir}")
    return lines


def _inputs(config: ValidateConfig) -> dict[str, Any]:
    inputs = {
        "statistics": artifacts.input_fingerprint(config.statistics_dir),
        "schema": artifacts.file_fingerprint(config.schema),
    }
    if config.baseline_statistics_dir:
        inputs["baseline_statistics"] = artifacts.input_fingerprint(config.baseline_statistics_dir)
    if config.serving_statistics_dir:
        inputs["serving_statistics"] = artifacts.input_fingerprint(config.serving_statistics_dir)
    return inputs


def _validate_all(
    config: ValidateConfig, by_split: Mapping[str, StatsList], schema: schema_pb2.Schema
) -> tuple[dict[str, anomalies_pb2.Anomalies], str | None]:
    environment = _environment(schema, config.environment)
    baselines = (
        _load_statistics_dir(config.baseline_statistics_dir, "baseline_statistics_dir")
        if config.baseline_statistics_dir
        else None
    )
    serving = (
        _load_statistics_dir(config.serving_statistics_dir, "serving_statistics_dir")
        if config.serving_statistics_dir
        else None
    )
    results = {
        split: validate_split(
            stats,
            schema,
            environment,
            baseline=pick_split(baselines, split, "baseline_statistics_dir") if baselines else None,
            serving=pick_split(serving, split, "serving_statistics_dir") if serving else None,
        )
        for split, stats in by_split.items()
    }
    return results, environment


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def run(config: ValidateConfig) -> dict[str, Any]:
    """Runs the validation and publishes its output directory (also when it finds anomalies).

    Validation reads statistics, which are small, so it runs in this process, not in Beam.

    Returns:
        The manifest written to `<output_dir>/manifest.json` (when nothing was found).

    Raises:
        cli.ValidationAnomaliesError: anomalies were found (after publishing the report).
        cli.JobError: an input directory is unfinished, the schema or environment is unusable.
    """
    staged = artifacts.StagedOutput(
        config.output_dir,
        STAGE,
        inputs=[
            config.statistics_dir,
            config.schema,
            config.baseline_statistics_dir,
            config.serving_statistics_dir,
        ],
    )
    by_split = _load_statistics_dir(config.statistics_dir, "statistics_dir")
    schema, inferred_from = load_or_infer_schema(config.schema, by_split)
    results, environment = _validate_all(config, by_split, schema)
    rows = {split: reports.anomaly_rows(split, result) for split, result in results.items()}
    report_path = FileSystems.join(config.output_dir, REPORT_FILE)
    with staged:
        for split, result in results.items():
            _write_text(staged.path(split, ANOMALIES_FILE), text_format.MessageToString(result))
        page = reports.anomalies_html(
            f"Validation of {config.statistics_dir}", rows, _context_lines(config, environment)
        )
        _write_text(staged.path(REPORT_FILE), page)
        anomalous = [split for split, result in results.items() if has_anomalies(result)]
        manifest = staged.publish(
            inputs=_inputs(config),
            parameters={**dataclasses.asdict(config), "environment": environment},
            counts={
                "anomalies": {split: len(result.anomaly_info) for split, result in results.items()}
            },
            extra={
                "splits": list(results),
                "schema_inferred": inferred_from is not None,
                "anomalous": anomalous,
            },
        )
    click.echo("\n".join(summary_lines(rows)))
    if anomalous:
        found = ", ".join(f"{split}: {len(rows[split])}" for split in anomalous)
        hint = relax_hint(results, inferred_from, config.schema) if inferred_from else None
        raise cli.ValidationAnomaliesError(
            f"anomalies found ({found}); {hint + '; ' if hint else ''}report: {report_path}"
        )
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option(
    "--statistics_dir", required=True, help="A statistics output directory (with manifest)."
)
@click.option(
    "--schema",
    required=True,
    help="TFDV schema.pbtxt; inferred from the train statistics and written here if missing.",
)
@click.option("--output_dir", required=True, help="Directory to write anomalies and the report.")
@click.option(
    "--baseline_statistics_dir", default=None, help="Statistics of the previous span (drift)."
)
@click.option("--serving_statistics_dir", default=None, help="Statistics of serving data (skew).")
@click.option(
    "--environment",
    type=click.Choice(ENVIRONMENTS),
    default=DEFAULT_ENVIRONMENT,
    help="Schema environment: the label is required in TRAINING and absent in SERVING.",
)
def main(
    statistics_dir: str,
    schema: str,
    output_dir: str,
    baseline_statistics_dir: str | None,
    serving_statistics_dir: str | None,
    environment: str,
    beam_args: tuple[str, ...],
) -> None:
    cli.pipeline_options(beam_args)  # Accepts the Beam flags a chain passes to every job.
    config = ValidateConfig(
        statistics_dir=statistics_dir,
        schema=schema,
        output_dir=output_dir,
        baseline_statistics_dir=baseline_statistics_dir,
        serving_statistics_dir=serving_statistics_dir,
        environment=environment,
    )
    run(config)


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
