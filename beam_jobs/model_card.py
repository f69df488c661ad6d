"""Model card: one static HTML page about a trained model, from what the pipeline recorded.

    python -m beam_jobs.model_card --model_dir=<pushed version | SavedModel> --output=card.html \
        [--evaluation_dir=<evaluate output>] [--training_dir=<train output>] \
        [--min_slice_examples=N]

For a pushed version (`<serving_dir>/<version>/`), its `provenance.json` names everything: the
evaluation that blessed it and the manifests of training, transform and ingest. For a SavedModel
elsewhere, `--evaluation_dir` is needed and `--training_dir` defaults to the directory holding
`serving_model/<ts>/`. The page (chapter 7 of "Building Machine Learning Pipelines") covers the
training data (ingest's manifest, plus one pass over the ingested examples for the label rate, the
date span of `--date_feature` and which text features are present), the schema, the model and its
hyper-parameters, privacy (ε and δ of DP-SGD, from the training manifest), overall and per-slice
metrics with fairness indicators (TFMA's results in the evaluation), the worst slices and known
limitations, each written from those facts. Static HTML: readable without Jupyter.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import click
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_model_analysis.writers import eval_config_writer

from beam_jobs.lib import artifacts, cli, evaluation_report, layout, reports, tfdv_io
from beam_jobs.lib.blessing import EVALUATE_STAGE, read_blessing
from beam_jobs.lib.provenance import manifest_chain, training_dir_of

__all__ = [
    "DataSummary",
    "ModelCardConfig",
    "SliceMetrics",
    "Sources",
    "data_summary",
    "limitations",
    "main",
    "model_card_html",
    "resolve_sources",
    "run",
    "slice_metrics",
    "worst_slices",
]

DEFAULT_MIN_SLICE_EXAMPLES = 100
DEFAULT_DATE_FEATURE = "date_received"
# The demo model's label, its positive value and its free-text features (model/features.py); other
# data sets pass their own label flags.
DEFAULT_LABEL_KEY = "consumer_disputed"
DEFAULT_POSITIVE_VALUE = "Yes"
TEXT_FEATURES = ("consumer_complaint_narrative",)
WORST_SLICES_SHOWN = 5
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d")
FAIRNESS_METRICS = {"false_positive_rate": "FPR", "false_negative_rate": "FNR"}
_READ_BATCH = 4096
# An existing --output is replaced only if its head shows it is a card this job wrote.
_CARD_TITLE_TEXT = "Model card: "
_CARD_TITLE = f"<title>{_CARD_TITLE_TEXT}"
_CARD_HEAD_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class ModelCardConfig:
    """The model card command's parameters."""

    model_dir: str
    output: str
    evaluation_dir: str | None = None
    training_dir: str | None = None
    min_slice_examples: int = DEFAULT_MIN_SLICE_EXAMPLES
    label_key: str = DEFAULT_LABEL_KEY
    positive_value: str = DEFAULT_POSITIVE_VALUE
    date_feature: str = DEFAULT_DATE_FEATURE


@dataclasses.dataclass(frozen=True)
class Sources:
    """The stage outputs a card is written from: paths and manifests (None when unknown)."""

    model_dir: str
    evaluation_dir: str
    evaluation: dict[str, Any]
    blessing: dict[str, Any]
    training: dict[str, Any] | None
    transform_dir: str | None
    transform: dict[str, Any] | None
    ingest_dir: str | None
    ingest: dict[str, Any] | None
    pushed: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class DataSummary:
    """One split of the ingested data, as counted by one pass over its examples."""

    split: str
    rows: int
    positives: int
    first_date: datetime.date | None
    last_date: datetime.date | None
    text_rows: dict[str, int]


@dataclasses.dataclass(frozen=True)
class SliceMetrics:
    """The candidate's metrics on one slice: counts, AUC, accuracy, fairness indicators."""

    group: str
    name: str
    examples: int
    auc: float
    accuracy: float
    fairness: dict[str, float]


def _stage(chain: Sequence[dict[str, Any]], stage: str) -> tuple[str | None, dict | None]:
    """The path and manifest of the first stage of that name in a provenance chain."""
    for entry in chain:
        if entry["manifest"].get("stage") == stage:
            return entry["path"], entry["manifest"]
    return None, None


def _read_provenance(config: ModelCardConfig) -> tuple[dict | None, list, list]:
    """(provenance, evaluation chain, training chain): from provenance.json, else the flags."""
    provenance_path = FileSystems.join(config.model_dir, layout.PROVENANCE_FILE)
    if FileSystems.exists(provenance_path):
        provenance = artifacts.read_json(provenance_path)
        evaluation, training = provenance["evaluation"], provenance["training"]
        if config.evaluation_dir:
            evaluation = manifest_chain(config.evaluation_dir)
        if config.training_dir:
            training = manifest_chain(config.training_dir)
        return provenance, evaluation, training
    if not config.evaluation_dir:
        raise click.UsageError(
            f"{config.model_dir} has no {layout.PROVENANCE_FILE} (not a pushed version): "
            "give --evaluation_dir (and --training_dir)"
        )
    training_dir = config.training_dir or training_dir_of(config.model_dir)
    evaluation = manifest_chain(config.evaluation_dir)
    return None, evaluation, manifest_chain(training_dir)


def resolve_sources(config: ModelCardConfig) -> Sources:
    """Finds the evaluation, training, transform and ingest outputs behind a model.

    Raises:
        click.UsageError: neither a pushed version nor `--evaluation_dir`.
        cli.JobError: the evaluation output is missing or unfinished.
    """
    provenance, evaluation_chain, training_chain = _read_provenance(config)
    evaluation_dir, evaluation = _stage(evaluation_chain, EVALUATE_STAGE)
    if evaluation is None:
        named = config.evaluation_dir or (evaluation_chain or [{}])[0].get("path", "?")
        raise cli.JobError(f"no finished evaluation at {named}; run beam_jobs.evaluate first")
    blessing = read_blessing(evaluation_dir)
    _, training = _stage(training_chain, "train")
    transform_dir, transform = _stage(training_chain, "transform")
    ingest_dir, ingest = _stage(training_chain, "ingest")
    if ingest is None:
        ingest_dir, ingest = _stage(evaluation_chain, "ingest")
    pushed = None
    if provenance:
        pushed = {key: provenance[key] for key in ("version", "pushed_at", "model_dir")}
    return Sources(
        config.model_dir,
        evaluation_dir,
        evaluation,
        blessing,
        training,
        transform_dir,
        transform,
        ingest_dir,
        ingest,
        pushed,
    )


def _parse_date(text: bytes) -> datetime.date | None:
    value = text.decode("utf-8", "replace").strip()
    for pattern in DATE_FORMATS:
        try:
            return datetime.datetime.strptime(value, pattern).date()
        except ValueError:
            continue
    return None


def data_summary(
    ingest_dir: str, splits: Sequence[str], config: ModelCardConfig
) -> list[DataSummary]:
    """Rows, positive labels, date span and text presence of each split of an ingest output."""
    text_keys = list(TEXT_FEATURES)
    spec = {
        key: tf.io.VarLenFeature(tf.string)
        for key in (config.label_key, config.date_feature, *text_keys)
    }
    positive = config.positive_value.encode()
    summaries = []
    for split in splits:
        pattern = FileSystems.join(ingest_dir, split, layout.EXAMPLES_PATTERN)
        files = [metadata.path for metadata in artifacts.list_files(pattern)]
        rows = positives = 0
        dates: list[datetime.date] = []
        text_rows = dict.fromkeys(text_keys, 0)
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_READ_BATCH)
        for batch in dataset.map(lambda records: tf.io.parse_example(records, spec)):
            dense = {key: tf.sparse.to_dense(value, b"").numpy() for key, value in batch.items()}
            rows += len(dense[config.label_key])
            positives += sum(1 for row in dense[config.label_key] if positive in row)
            dates += [d for row in dense[config.date_feature] for d in map(_parse_date, row) if d]
            for key in text_keys:
                text_rows[key] += sum(1 for row in dense[key] if any(v.strip() for v in row))
        summaries.append(
            DataSummary(
                split,
                rows,
                positives,
                min(dates, default=None),
                max(dates, default=None),
                text_rows,
            )
        )
    return summaries


def _candidate_name(evaluation_dir: str) -> str:
    """TFMA's name of the candidate model in an evaluation (`""` when there was no baseline)."""
    eval_config = eval_config_writer.load_eval_run(
        FileSystems.join(evaluation_dir, layout.TFMA_DIR)
    )[0]
    return next(spec.name for spec in eval_config.model_specs if not spec.is_baseline)


def _fairness_order(item: tuple[str, float]) -> tuple[str, bool]:
    """By threshold, FPR before FNR."""
    label, _, threshold = item[0].partition("@")
    return threshold, label != "FPR"


def slice_metrics(evaluation_dir: str) -> list[SliceMetrics]:
    """The candidate's metrics of every slice of an evaluation, overall first."""
    candidate = _candidate_name(evaluation_dir)
    metrics = tfma.load_metrics(FileSystems.join(evaluation_dir, layout.TFMA_DIR))
    result = []
    for sliced in evaluation_report.sliced_values(metrics):
        values = {
            key.name: value
            for key, value in sliced.values.items()
            if key.model_name == candidate and not key.is_diff and not key.sub_key
        }
        fairness = {}
        for name, value in values.items():
            metric, _, threshold = name.removeprefix(evaluation_report.FAIRNESS_PREFIX).partition(
                "@"
            )
            if name.startswith(evaluation_report.FAIRNESS_PREFIX) and metric in FAIRNESS_METRICS:
                fairness[f"{FAIRNESS_METRICS[metric]}@{threshold}"] = value
        group = ", ".join(column for column, _ in sliced.slice_key) or evaluation_report.OVERALL
        # TFMA gives AUC 0 on a slice with one label value; a NaN rate (no positives, or no
        # negatives) shows it, and then AUC is undefined.
        one_label = any(math.isnan(value) for value in fairness.values())
        result.append(
            SliceMetrics(
                group=group,
                name=sliced.name,
                examples=int(values.get(layout.EXAMPLE_COUNT_METRIC, 0)),
                auc=math.nan if one_label else values.get("auc", math.nan),
                accuracy=values.get("binary_accuracy", math.nan),
                fairness=dict(sorted(fairness.items(), key=_fairness_order)),
            )
        )
    return result


def worst_slices(
    slices: Sequence[SliceMetrics], min_examples: int, count: int = WORST_SLICES_SHOWN
) -> list[SliceMetrics]:
    """The slices of lowest AUC among those (not overall) with at least `min_examples`."""
    eligible = [
        item
        for item in slices
        if item.group != evaluation_report.OVERALL
        and item.examples >= min_examples
        and not math.isnan(item.auc)
    ]
    return sorted(eligible, key=lambda item: item.auc)[:count]


def _few_examples_lines(slices: Sequence[SliceMetrics], min_examples: int) -> list[str]:
    lines = []
    groups: dict[str, list[SliceMetrics]] = {}
    for item in slices:
        if item.group != evaluation_report.OVERALL:
            groups.setdefault(item.group, []).append(item)
    for group, members in groups.items():
        few = [item for item in members if item.examples < min_examples]
        if few:
            names = ", ".join(item.name.partition("=")[2] or item.name for item in few)
            lines.append(
                f"{len(few)} of {len(members)} {group} slices have fewer than {min_examples} eval "
                f"examples ({names}): their metrics are noisy and they are left out of the "
                "worst slices."
            )
        undefined = [item for item in members if math.isnan(item.auc)]
        if undefined:
            lines.append(
                f"AUC is undefined for {len(undefined)} {group} slice(s) whose eval examples all "
                "have the same label."
            )
    return lines


def limitations(
    summaries: Sequence[DataSummary],
    slices: Sequence[SliceMetrics],
    sources: Sources,
    config: ModelCardConfig,
) -> list[str]:
    """Known limitations, each stated from a number the pipeline recorded or counted."""
    lines = []
    train = next((item for item in summaries if item.split == "train"), None)
    if train and train.rows:
        lines.append(
            f"Sparse label: {train.positives / train.rows:.1%} of the {train.rows:,} training "
            f"examples have {config.label_key} = {config.positive_value}."
        )
        for key, present in train.text_rows.items():
            if not present:
                lines.append(
                    f"No {key} in the training data (0 of {train.rows:,} rows): the model learned "
                    "from the structured fields only."
                )
        if train.first_date and train.last_date:
            lines.append(
                f"Trained on {config.date_feature} from {train.first_date} to {train.last_date}; "
                "behaviour on later data is unmeasured until a new evaluation."
            )
    overall = next((item for item in slices if item.group == evaluation_report.OVERALL), None)
    missed = overall.fairness.get("FNR@0.50") if overall else None
    if missed is not None and missed >= 0.5:
        lines.append(
            f"At the 0.5 threshold the model misses {missed:.0%} of positive eval examples: "
            "pick a threshold from the fairness indicators below before acting on its scores."
        )
    lines += _few_examples_lines(slices, config.min_slice_examples)
    privacy = (sources.training or {}).get("privacy")
    if privacy:
        lines.append(
            "The (ε, δ) guarantee covers the model's weights; the training loss and metrics in the "
            "training manifest were computed on the raw training data and are not covered."
        )
    if sources.training is None:
        lines.append("No training manifest was found: hyper-parameters and privacy are unknown.")
    return lines


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return value


def _paragraphs(lines: Sequence[str]) -> list[str]:
    return [f"<p>{html.escape(line)}</p>" for line in lines]


def _model_section(sources: Sources) -> list[str]:
    blessing = sources.blessing
    rows = [
        ("model", sources.model_dir),
        ("fingerprint (sha256 of the SavedModel)", blessing["candidate"]["fingerprint"]),
        ("blessed", "yes" if blessing["blessed"] else "no"),
    ]
    if sources.pushed:
        rows += [
            ("pushed version", str(sources.pushed["version"])),
            ("pushed at", sources.pushed["pushed_at"]),
            ("pushed from", sources.pushed["model_dir"]),
        ]
    training = sources.training
    if training:
        parameters, counts = training["parameters"], training["counts"]
        rows += [
            ("model function", parameters["model_fn"]),
            ("training steps", counts["steps"]),
            ("batch size", counts["batch_size"]),
            ("epochs", counts["steps"] * counts["batch_size"] / counts["train_examples"]),
            ("replicas", counts["replicas"]),
            ("trained", f"{training['started_at']} to {training['finished_at']}"),
        ]
        rows += [(f"hparam {key}", str(value)) for key, value in parameters["hparams"].items()]
    return [
        "<h2>Model</h2>",
        reports.table(["property", "value"], [(k, _cell(v)) for k, v in rows]),
    ]


def _data_section(sources: Sources, summaries: Sequence[DataSummary], date_feature: str) -> list:
    ingest = sources.ingest or {}
    body = ["<h2>Training data</h2>"]
    raw = ingest.get("inputs", {}).get("raw", [])
    body.append(
        reports.table(
            ["source file", "bytes", "sha256"],
            [(item["path"], item.get("size", ""), item.get("sha256", "")[:16]) for item in raw],
        )
    )
    rows = [
        (
            item.split,
            item.rows,
            item.positives,
            item.positives / item.rows if item.rows else math.nan,
            str(item.first_date or "n/a"),
            str(item.last_date or "n/a"),
        )
        for item in summaries
    ]
    body.append(
        reports.table(
            ["split", "rows", "positive labels", "positive share", "first date", "last date"],
            [[_cell(cell) for cell in row] for row in rows],
        )
    )
    rejected = ingest.get("counts", {}).get("rows_rejected")
    body += _paragraphs(
        [
            f"Ingest output: {sources.ingest_dir}; rows rejected at ingest: {rejected}. Splits are "
            f"ingest's hash-based split {ingest.get('parameters', {}).get('splits')}.",
            f"Rows, labels and dates are counted by one pass over the ingested examples; dates are "
            f"the span of {date_feature}.",
        ]
    )
    return body


def _schema_section(sources: Sources) -> list[str]:
    schema_path = ((sources.transform or {}).get("inputs", {}).get("schema") or {}).get("path")
    if not schema_path or not FileSystems.exists(schema_path):
        return ["<h2>Schema</h2>", "<p>The transform's schema was not found.</p>"]
    schema = tfdv_io.read_schema(schema_path)
    domains = {domain.name: len(domain.value) for domain in schema.string_domain}
    rows = []
    for feature in schema.feature:
        required = feature.presence.min_fraction >= 1.0
        domain = feature.domain or (feature.string_domain.name if feature.string_domain else "")
        values = domains.get(domain) or len(feature.string_domain.value) or ""
        kind = schema_pb2.FeatureType.Name(feature.type)
        rows.append((feature.name, kind, "required" if required else "optional", values))
    return [
        "<h2>Schema</h2>",
        f"<p>{html.escape(schema_path)}: {len(rows)} features.</p>",
        reports.table(["feature", "type", "presence", "domain values"], rows),
    ]


def _privacy_section(training: dict[str, Any] | None) -> list[str]:
    heading = "<h2>Privacy</h2>"
    if training is None:
        return [heading, "<p>Unknown: no training manifest.</p>"]
    privacy = training.get("privacy")
    if not privacy:
        return [heading, "<p>Trained without differential privacy.</p>"]
    epsilon = privacy["epsilon"]
    body = [heading]
    body += _paragraphs(
        [
            f"Trained with {privacy['mechanism']}: ε = "
            f"{'∞ (no noise, no guarantee)' if epsilon is None else f'{epsilon:.3g}'} at "
            f"δ = {privacy['delta']:g} ({privacy['accountant']})."
        ]
    )
    keys = ("noise_multiplier", "l2_norm_clip", "microbatches", "batch_size", "steps", "epochs")
    rows = [(key, privacy[key]) for key in (*keys, "sampling_probability", "train_examples")]
    return [*body, reports.table(["parameter", "value"], rows)]


def _slices_table(slices: Sequence[SliceMetrics]) -> str:
    fairness_keys = list(dict.fromkeys(key for item in slices for key in item.fairness))
    header = ["slice", "examples", "AUC", "accuracy", *fairness_keys]
    rows = [
        [
            item.name,
            item.examples,
            _cell(item.auc),
            _cell(item.accuracy),
            *(_cell(item.fairness.get(key, math.nan)) for key in fairness_keys),
        ]
        for item in slices
    ]
    return reports.table(header, rows)


def _metrics_sections(sources: Sources, slices: Sequence[SliceMetrics], min_examples: int):
    evaluated = sources.evaluation.get("counts", {}).get(layout.EXAMPLES_EVALUATED)
    body = [
        "<h2>Evaluation</h2>",
        *_paragraphs(
            [
                f"TFMA evaluation {sources.evaluation_dir} on {evaluated:,} examples of split "
                f"{sources.evaluation['parameters']['split']}, through serving_default. FPR and "
                "FNR are the false positive and false negative rates at each threshold.",
            ]
        ),
    ]
    groups: dict[str, list[SliceMetrics]] = {}
    for item in slices:
        groups.setdefault(item.group, []).append(item)
    for group, members in groups.items():
        heading = "overall" if group == evaluation_report.OVERALL else f"by {group}"
        body += [f"<h3>Metrics {html.escape(heading)}</h3>", _slices_table(members)]
    worst = worst_slices(slices, min_examples)
    body += [
        "<h2>Worst slices</h2>",
        f"<p>Lowest AUC among slices with at least {min_examples} eval examples.</p>",
        _slices_table(worst) if worst else "<p>No slice has that many examples.</p>",
    ]
    return body


def model_card_html(
    sources: Sources,
    summaries: Sequence[DataSummary],
    slices: Sequence[SliceMetrics],
    config: ModelCardConfig,
) -> str:
    """The model card page."""
    body = _model_section(sources)
    body += _data_section(sources, summaries, config.date_feature)
    body += _schema_section(sources)
    body += _privacy_section(sources.training)
    body += _metrics_sections(sources, slices, config.min_slice_examples)
    body.append("<h2>Known limitations</h2>")
    items = limitations(summaries, slices, sources, config)
    body.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in items) + "</ul>")
    return reports.page(f"{_CARD_TITLE_TEXT}{sources.model_dir}", body)


def check_output(path: str) -> None:
    """Refuses, before any work, an `--output` that is something other than an earlier card.

    Raises:
        cli.JobError: the path is a directory, lies under a file, or is a file no card run wrote.
    """
    if not FileSystems.get_scheme(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.path.isdir(path) or not os.path.isdir(parent):
            where = "is a directory" if os.path.isdir(path) else f"lies under the file {parent}"
            raise cli.JobError(f"--output={path} {where}; name the HTML file to write")
    if FileSystems.exists(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            head = handle.read(_CARD_HEAD_BYTES).decode("utf-8", "replace")
        if _CARD_TITLE not in head:
            raise cli.JobError(
                f"--output={path} exists and is not a model card; a job replaces only what it "
                "wrote: choose another path"
            )


def run(config: ModelCardConfig) -> str:
    """Writes the model card of `config.model_dir` to `config.output`; returns the page."""
    check_output(config.output)
    sources = resolve_sources(config)
    splits = (sources.ingest or {}).get("splits") or []
    summaries = data_summary(sources.ingest_dir, splits, config) if sources.ingest_dir else []
    page = model_card_html(sources, summaries, slice_metrics(sources.evaluation_dir), config)
    artifacts.write_bytes(config.output, page.encode("utf-8"))
    logging.info("model_card: wrote %s", config.output)
    return page


@click.command(
    help=__doc__.split("\n\n")[0],
    context_settings={"show_default": True, "max_content_width": 100},
)
@click.option(
    "--model_dir", required=True, help="A pushed version (with provenance.json) or a SavedModel."
)
@click.option("--output", required=True, help="Path of the HTML page to write.")
@click.option(
    "--evaluation_dir", default=None, help="beam_jobs.evaluate output [default: provenance's]."
)
@click.option(
    "--training_dir",
    default=None,
    help="model.train output [default: provenance's, or the parent of serving_model/].",
)
@click.option(
    "--min_slice_examples",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_SLICE_EXAMPLES,
    help="Slices with fewer eval examples are called noisy, not worst.",
)
@click.option("--label_key", default=DEFAULT_LABEL_KEY, help="Raw label feature.")
@click.option("--positive_value", default=DEFAULT_POSITIVE_VALUE, help="Label of a positive.")
@click.option("--date_feature", default=DEFAULT_DATE_FEATURE, help="Raw feature holding dates.")
@cli.reports_job_errors
def main(**flags: Any) -> None:
    """Writes the model card."""
    run(ModelCardConfig(**flags))
    click.echo(f"wrote {flags['output']}")


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
