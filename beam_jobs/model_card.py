"""Model card: one static HTML page about a trained model, from what the pipeline recorded.

    python -m beam_jobs.model_card --model_dir=<pushed version | SavedModel> --output=card.html \
        [--evaluation_dir=<evaluate output>] [--training_dir=<train output>] \
        [--min_slice_examples=N] [--label_key=K] [--positive_value=V] [--date_feature=D] \
        [--text_features=T1,T2]

For a pushed version (`<serving_dir>/<version>/`), its `provenance.json` names everything: the
evaluation that blessed it and the manifests of training, transform and ingest. For a SavedModel
elsewhere, `--evaluation_dir` is needed and `--training_dir` defaults to the directory holding
`serving_model/<ts>/`. The model's task, raw label and class names come from the export's model
contract (`assets/model_contract.json`); the flags override it, and an export without one is taken
for what its evaluation computed. The page (chapter 7 of "Building Machine Learning Pipelines")
covers the training data (ingest's manifest, plus one pass over the ingested examples for the label
distribution per split: positives of a binary label, rows per class, a regression label's mean and
range; the date span of `--date_feature` and the presence of `--text_features` when given), the
schema, the model and its hyper-parameters, privacy (ε and δ of DP-SGD, from the training
manifest), overall and per-slice metrics as the evaluation computed them (TFMA's results: AUC and
fairness indicators of a binary model; accuracy, per-class precision and recall and the confusion
matrix of a multi-class one; MSE and MAE of a regression), the worst slices and known limitations,
each written from those facts. Static HTML: readable without Jupyter.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import html
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import click
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_model_analysis.metrics.metric_types import MetricKey, PlotKey
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.writers import eval_config_writer

from beam_jobs.lib import (
    artifacts,
    cli,
    evaluation_report,
    layout,
    model_contract,
    reports,
    tfdv_io,
)
from beam_jobs.lib.blessing import EVALUATE_STAGE, read_blessing
from beam_jobs.lib.model_contract import BINARY, MULTICLASS, REGRESSION
from beam_jobs.lib.provenance import manifest_chain, training_dir_of

__all__ = [
    "Card",
    "ConfusionMatrix",
    "DataSummary",
    "Label",
    "ModelCardConfig",
    "SliceMetrics",
    "Sources",
    "confusion_matrices",
    "data_summary",
    "limitations",
    "main",
    "model_card_html",
    "resolve_label",
    "resolve_sources",
    "run",
    "slice_metrics",
    "worst_slices",
]

DEFAULT_MIN_SLICE_EXAMPLES = 100
WORST_SLICES_SHOWN = 5
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d")
FAIRNESS_METRICS = {"false_positive_rate": "FPR", "false_negative_rate": "FNR"}
# The positive value of a binary integer label when neither the flag nor the contract names one.
INT_POSITIVE_VALUE = "1"
# TFMA's names of an accuracy, in order of preference (one evaluation computes one of them).
ACCURACY_METRICS = ("binary_accuracy", "sparse_categorical_accuracy", "categorical_accuracy")
# Column headings of the metrics the slice tables show first; every other scalar the evaluation
# computed follows under its TFMA name.
METRIC_HEADINGS = {
    "auc": "AUC",
    **dict.fromkeys(ACCURACY_METRICS, "accuracy"),
    "mean_squared_error": "MSE",
    "mean_absolute_error": "MAE",
    "root_mean_squared_error": "RMSE",
    "precision": "precision",
    "recall": "recall",
}
# What "worst" means per task: the TFMA metrics ranked (first present wins), higher is better?
WORST_BY = {
    BINARY: (("auc",), True),
    MULTICLASS: (ACCURACY_METRICS, True),
    REGRESSION: (("mean_squared_error", "mean_absolute_error"), False),
}
_REGRESSION_METRICS = ("mean_squared_error", "mean_absolute_error", "root_mean_squared_error")
_FEATURE_DTYPES = {schema_pb2.INT: tf.int64, schema_pb2.FLOAT: tf.float32}
_NO_PREDICTION = "(no prediction)"
_READ_BATCH = 4096
# An existing --output is replaced only if its head shows it is a card this job wrote.
_CARD_TITLE_TEXT = "Model card: "
_CARD_TITLE = f"<title>{_CARD_TITLE_TEXT}"
_CARD_HEAD_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class ModelCardConfig:
    """The model card command's parameters (None: from the model contract, or not shown)."""

    model_dir: str
    output: str
    evaluation_dir: str | None = None
    training_dir: str | None = None
    min_slice_examples: int = DEFAULT_MIN_SLICE_EXAMPLES
    label_key: str | None = None
    positive_value: str | None = None
    date_feature: str | None = None
    text_features: tuple[str, ...] = ()


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
class Label:
    """What the card knows of the model's label.

    Attributes:
        task: one of `model_contract.TASKS`.
        key: the raw label feature, None when unknown (no contract and no `--label_key`).
        dtype: its type in the raw data (`tf.string`, `tf.int64` or `tf.float32`).
        classes: class names by class index, None when unknown.
        positive_value: the raw value of a binary model's positive class, None when unknown.
        origin: where the task and label came from, for the page.
    """

    task: str
    key: str | None
    dtype: tf.DType = tf.string
    classes: tuple[str, ...] | None = None
    positive_value: str | None = None
    origin: str = "the model contract"

    def class_name(self, index: int) -> str:
        """The name of class `index` (TFMA's class id), its index as text when unknown."""
        if index == tfma.metrics.NO_PREDICTED_CLASS_ID:
            return _NO_PREDICTION
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)


@dataclasses.dataclass(frozen=True)
class DataSummary:
    """One split of the ingested data, as counted by one pass over its examples.

    Attributes:
        label_counts: rows per raw label value (classification), values as text.
        label_range: (mean, min, max) of a regression label, None otherwise or without labels.
    """

    split: str
    rows: int
    labelled: int
    label_counts: dict[str, int]
    label_range: tuple[float, float, float] | None
    first_date: datetime.date | None
    last_date: datetime.date | None
    text_rows: dict[str, int]


@dataclasses.dataclass(frozen=True)
class SliceMetrics:
    """The candidate's metrics on one slice, as the evaluation computed them.

    Attributes:
        values: scalar metrics by TFMA name (a sub key other than a class id in parentheses),
            without the example count and the fairness indicators.
        per_class: metrics of each class id (TFMA's binarized metrics), by TFMA name.
        fairness: `FPR@0.50`-style fairness indicators.
    """

    group: str
    name: str
    examples: int
    values: dict[str, float]
    per_class: dict[int, dict[str, float]]
    fairness: dict[str, float]

    @property
    def one_label(self) -> bool:
        """Whether the slice's eval examples all have one label value (a NaN FPR or FNR)."""
        return any(math.isnan(value) for value in self.fairness.values())

    @property
    def auc(self) -> float:
        """AUC, NaN when TFMA has none or the slice has one label value."""
        # TFMA gives AUC 0 on a slice with one label value: undefined, not 0.
        return math.nan if self.one_label else self.values.get("auc", math.nan)

    @property
    def accuracy(self) -> float:
        """The accuracy TFMA computed (binary or multi-class), NaN when none."""
        return next((self.values[n] for n in ACCURACY_METRICS if n in self.values), math.nan)


@dataclasses.dataclass(frozen=True)
class ConfusionMatrix:
    """Eval examples by (actual, predicted) class id on one slice, at one threshold."""

    slice_name: str
    threshold: float
    counts: dict[tuple[int, int], float]

    def class_ids(self) -> list[int]:
        """Every class id in the matrix, ascending; "no prediction" (-1) last."""
        ids = {index for pair in self.counts for index in pair}
        return sorted(ids, key=lambda index: (index < 0, index))


@dataclasses.dataclass(frozen=True)
class Card:
    """Everything one card is written from."""

    sources: Sources
    label: Label
    summaries: list[DataSummary]
    slices: list[SliceMetrics]
    confusion: ConfusionMatrix | None
    schema: tuple[str, schema_pb2.Schema] | None


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


def raw_schema(model_dir: str, sources: Sources) -> tuple[str, schema_pb2.Schema] | None:
    """The raw schema the model was trained with, and its path: the transform's input schema,
    else the one the export carries; None when neither is found.

    Raises:
        cli.JobError: the file found is not a TFDV schema.
    """
    transform_inputs = (sources.transform or {}).get("inputs", {})
    path = (transform_inputs.get("schema") or {}).get("path")
    if not path or not FileSystems.exists(path):
        path = model_contract.raw_schema_path(model_dir)
        if not FileSystems.exists(path):
            return None
    try:
        return path, tfdv_io.read_schema(path)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise cli.JobError(f"{path} is not a TFDV schema: {error}") from None


def _feature_dtype(
    schema: tuple[str, schema_pb2.Schema] | None, key: str, flag: str
) -> tf.DType | None:
    """The raw type of feature `key` (None without a schema).

    Raises:
        cli.JobError: the schema has no such feature; `flag` names where the key came from.
    """
    if schema is None:
        return None
    path, proto = schema
    for feature in proto.feature:
        if feature.name == key:
            return _FEATURE_DTYPES.get(feature.type, tf.string)
    names = ", ".join(feature.name for feature in proto.feature)
    raise cli.JobError(
        f"{flag}={key} is not a feature of the raw schema {path} (features: {names})"
    )


def _task_of_evaluation(slices: Sequence[SliceMetrics], has_matrix: bool) -> str:
    """The task of a model without a contract, from what its evaluation computed."""
    overall = next((item for item in slices if item.group == evaluation_report.OVERALL), None)
    values = overall.values if overall else {}
    if has_matrix or "sparse_categorical_accuracy" in values:
        return MULTICLASS
    if "auc" not in values and any(name in values for name in _REGRESSION_METRICS):
        return REGRESSION
    return BINARY


def _positive_value(
    config: ModelCardConfig, classes: tuple[str, ...] | None, dtype: tf.DType | None
) -> str | None:
    """A binary label's positive value: the flag, the contract's class 1, 1 for an integer."""
    if config.positive_value is not None:
        return config.positive_value
    if classes and len(classes) == 2:
        return classes[1]
    return INT_POSITIVE_VALUE if dtype == tf.int64 else None


def resolve_label(
    config: ModelCardConfig,
    slices: Sequence[SliceMetrics],
    has_matrix: bool,
    schema: tuple[str, schema_pb2.Schema] | None,
) -> Label:
    """The model's task and label: flags, then the export's contract, then the evaluation.

    Raises:
        cli.JobError: an unreadable contract, or a flag naming a feature the schema lacks.
        click.UsageError: `--positive_value` for a model that is not binary.
    """
    contract = model_contract.read_contract(config.model_dir)
    if contract is not None:
        task, key, classes, origin = contract.task, contract.label_key, contract.classes, None
    else:
        task, key, classes = _task_of_evaluation(slices, has_matrix), None, None
        origin = "what the evaluation computed (the export has no model contract)"
    if config.positive_value is not None and task != BINARY:
        raise click.UsageError(f"--positive_value is for a binary model; this one is {task}")
    flag = "--label_key" if config.label_key else "the model contract's label_key"
    key = config.label_key or key
    dtype = _feature_dtype(schema, key, flag) if key else None
    if task == REGRESSION and dtype == tf.string:
        raise cli.JobError(
            f"{flag}={key} is text in the raw schema; a regression label is a number"
        )
    for name in (config.date_feature, *config.text_features):
        flag = "--date_feature" if name == config.date_feature else "--text_features"
        if name and _feature_dtype(schema, name, flag) not in (None, tf.string):
            raise cli.JobError(f"{flag}={name} is not a text feature in the raw schema")
    positive = _positive_value(config, classes, dtype) if task == BINARY else None
    return Label(
        task=task,
        key=key,
        dtype=dtype or tf.string,
        classes=classes,
        positive_value=positive,
        origin=origin or "the model contract",
    )


def _parse_date(text: bytes) -> datetime.date | None:
    value = text.decode("utf-8", "replace").strip()
    for pattern in DATE_FORMATS:
        try:
            return datetime.datetime.strptime(value, pattern).date()
        except ValueError:
            continue
    return None


def _label_text(value: Any) -> str:
    """A raw label value as the card writes it (and as class names and flags are given)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.floating):
        return f"{float(value):g}"
    return str(value)


def _first_values(sparse: tf.SparseTensor) -> np.ndarray:
    """The first value of every row that has one (a label is one value per example)."""
    rows = sparse.indices.numpy()[:, 0]
    _, first = np.unique(rows, return_index=True)
    return sparse.values.numpy()[first]


class _SplitCounter:
    """Accumulates one split's counts over batches of parsed examples."""

    def __init__(self, label: Label, config: ModelCardConfig) -> None:
        self._label, self._config = label, config
        self.rows = 0
        self.label_counts: collections.Counter[str] = collections.Counter()
        self.numbers: list[np.ndarray] = []
        self.dates: list[datetime.date] = []
        self.text_rows = dict.fromkeys(config.text_features, 0)

    def add(self, rows: int, parsed: dict[str, tf.SparseTensor]) -> None:
        self.rows += rows
        if self._label.key:
            values = _first_values(parsed[self._label.key])
            if self._label.task == REGRESSION:
                self.numbers.append(values.astype(np.float64))
            else:
                self.label_counts.update(_label_text(value) for value in values)
        if self._config.date_feature:
            values = parsed[self._config.date_feature].values.numpy()
            self.dates += [date for date in map(_parse_date, values) if date]
        for key in self._config.text_features:
            sparse = parsed[key]
            filled = np.array([bool(value.strip()) for value in sparse.values.numpy()], bool)
            self.text_rows[key] += np.unique(sparse.indices.numpy()[filled, 0]).size

    def summary(self, split: str) -> DataSummary:
        numbers = np.concatenate(self.numbers) if self.numbers else np.zeros(0)
        label_range = None
        if numbers.size:
            label_range = (float(numbers.mean()), float(numbers.min()), float(numbers.max()))
        labelled = numbers.size if self._label.task == REGRESSION else self.label_counts.total()
        return DataSummary(
            split=split,
            rows=self.rows,
            labelled=int(labelled),
            label_counts=dict(self.label_counts),
            label_range=label_range,
            first_date=min(self.dates, default=None),
            last_date=max(self.dates, default=None),
            text_rows=self.text_rows,
        )


def _parse(records: tf.Tensor, spec: dict[str, tf.io.VarLenFeature]) -> dict[str, Any]:
    """The features of `spec` of a batch of serialized examples (none when `spec` is empty)."""
    return tf.io.parse_example(records, spec) if spec else {}


def data_summary(
    ingest_dir: str, splits: Sequence[str], config: ModelCardConfig, label: Label
) -> list[DataSummary]:
    """Rows, labels, date span and text presence of each split of an ingest output.

    Raises:
        cli.JobError: a feature read has another type in the data than the card assumed.
    """
    spec = {key: tf.io.VarLenFeature(tf.string) for key in config.text_features}
    if config.date_feature:
        spec[config.date_feature] = tf.io.VarLenFeature(tf.string)
    if label.key:
        spec[label.key] = tf.io.VarLenFeature(label.dtype)
    summaries = []
    for split in splits:
        pattern = FileSystems.join(ingest_dir, split, layout.EXAMPLES_PATTERN)
        files = [metadata.path for metadata in artifacts.list_files(pattern)]
        counter = _SplitCounter(label, config)
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_READ_BATCH)
        parsed = dataset.map(lambda records: (tf.size(records), _parse(records, spec)))
        try:
            for rows, batch in parsed:
                counter.add(int(rows), batch)
        except tf.errors.InvalidArgumentError as error:
            raise cli.JobError(
                f"split {split} of {ingest_dir}: {cli.tensorflow_reason(error.message)} (give "
                "the raw schema's feature names and types: --label_key, --date_feature, "
                "--text_features)"
            ) from None
        summaries.append(counter.summary(split))
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


def _fairness_label(name: str) -> str | None:
    """`FPR@0.5` for TFMA's `fairness_indicators_metrics/false_positive_rate@0.5`, else None."""
    if not name.startswith(evaluation_report.FAIRNESS_PREFIX):
        return None
    metric, _, threshold = name.removeprefix(evaluation_report.FAIRNESS_PREFIX).partition("@")
    return f"{FAIRNESS_METRICS[metric]}@{threshold}" if metric in FAIRNESS_METRICS else None


def _slice_of(sliced: evaluation_report.SlicedValues, candidate: str) -> SliceMetrics:
    """One slice's candidate metrics, sorted into scalars, per-class values and fairness."""
    values: dict[str, float] = {}
    per_class: dict[int, dict[str, float]] = {}
    fairness: dict[str, float] = {}
    for key, value in sliced.values.items():
        if key.model_name != candidate or key.is_diff:
            continue
        if key.sub_key and key.sub_key.class_id is not None:
            per_class.setdefault(key.sub_key.class_id, {})[key.name] = value
        elif key.name.startswith(evaluation_report.FAIRNESS_PREFIX):
            label = _fairness_label(key.name)
            if label and not key.sub_key:
                fairness[label] = value
        else:
            values[evaluation_report.metric_label(key)] = value
    count = values.pop(layout.EXAMPLE_COUNT_METRIC, None)
    if count is None:  # ExampleCount only in a binarized spec: one count per class, all equal
        counts = [item.pop(layout.EXAMPLE_COUNT_METRIC, 0) for item in per_class.values()]
        count = max(counts, default=0)
    return SliceMetrics(
        group=", ".join(column for column, _ in sliced.slice_key) or evaluation_report.OVERALL,
        name=sliced.name,
        examples=int(count),
        values=values,
        per_class=dict(sorted(per_class.items())),
        fairness=dict(sorted(fairness.items(), key=_fairness_order)),
    )


def slice_metrics(evaluation_dir: str) -> list[SliceMetrics]:
    """The candidate's metrics of every slice of an evaluation, overall first."""
    candidate = _candidate_name(evaluation_dir)
    metrics = tfma.load_metrics(FileSystems.join(evaluation_dir, layout.TFMA_DIR))
    return [_slice_of(sliced, candidate) for sliced in evaluation_report.sliced_values(metrics)]


def _matrix_of(slice_name: str, value: Any) -> ConfusionMatrix | None:
    """The matrix at the lowest threshold (0: the top prediction) of TFMA's matrices."""
    matrices = value.multi_class_confusion_matrix_at_thresholds.matrices
    if not matrices:
        return None
    matrix = min(matrices, key=lambda item: item.threshold)
    counts: dict[tuple[int, int], float] = collections.defaultdict(float)
    for entry in matrix.entries:
        counts[entry.actual_class_id, entry.predicted_class_id] += entry.num_weighted_examples
    return ConfusionMatrix(slice_name, matrix.threshold, dict(counts))


def confusion_matrices(evaluation_dir: str) -> dict[str, ConfusionMatrix]:
    """The candidate's multi-class confusion matrix of each slice that has one, by slice name.

    From TFMA's plots (`MultiClassConfusionMatrixPlot`) or metrics
    (`MultiClassConfusionMatrixAtThresholds`), whichever the evaluation computed.
    """
    tfma_dir = FileSystems.join(evaluation_dir, layout.TFMA_DIR)
    candidate = _candidate_name(evaluation_dir)
    found: dict[str, ConfusionMatrix] = {}
    results: Iterable[Any] = [
        *((item, "plot_keys_and_values", PlotKey) for item in tfma.load_plots(tfma_dir)),
        *((item, "metric_keys_and_values", MetricKey) for item in tfma.load_metrics(tfma_dir)),
    ]
    for sliced, field, key_type in results:
        if sliced.HasField("cross_slice_key"):
            continue
        name = evaluation_report.slice_name(slicer_lib.deserialize_slice_key(sliced.slice_key))
        for item in getattr(sliced, field):
            key = key_type.from_proto(item.key)
            if key.model_name != candidate or key.is_diff or name in found:
                continue
            if item.value.HasField("multi_class_confusion_matrix_at_thresholds"):
                matrix = _matrix_of(name, item.value)
                if matrix:
                    found[name] = matrix
    return found


def _ranked_value(item: SliceMetrics, task: str) -> float:
    """The value `worst_slices` ranks a slice by (NaN when the evaluation has none)."""
    if task == BINARY:
        return item.auc
    names, _ = WORST_BY[task]
    return next((item.values[name] for name in names if name in item.values), math.nan)


def worst_slices(
    slices: Sequence[SliceMetrics],
    min_examples: int,
    count: int = WORST_SLICES_SHOWN,
    task: str = BINARY,
) -> list[SliceMetrics]:
    """The slices (not overall) with at least `min_examples` that do worst on the task's metric:
    lowest AUC (binary), lowest accuracy (multi-class), highest MSE or MAE (regression)."""
    eligible = [
        item
        for item in slices
        if item.group != evaluation_report.OVERALL
        and item.examples >= min_examples
        and not math.isnan(_ranked_value(item, task))
    ]
    _, higher_is_better = WORST_BY[task]
    eligible.sort(key=lambda item: _ranked_value(item, task), reverse=not higher_is_better)
    return eligible[:count]


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
        undefined = [item for item in members if item.one_label]
        if undefined:
            lines.append(
                f"AUC is undefined for {len(undefined)} {group} slice(s) whose eval examples all "
                "have the same label."
            )
    return lines


def _ordered_values(summaries: Sequence[DataSummary], label: Label) -> list[str]:
    """Label values of the splits: the contract's classes in class order, then the others."""
    seen = {value for item in summaries for value in item.label_counts}
    known = list(label.classes or ())
    rest = seen - set(known)
    numeric = sorted(value for value in rest if _is_number(value))
    return known + sorted(numeric, key=float) + sorted(rest - set(numeric))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_lines(train: DataSummary | None, label: Label) -> list[str]:
    """Limitations of the training labels: missing, sparse, a rare class, a range."""
    if label.key is None:
        return [
            "The raw label feature is unknown (the export has no model contract): give "
            "--label_key to count labels per split."
        ]
    if train is None or not train.rows:
        return []
    lines = []
    if train.labelled < train.rows:
        lines.append(
            f"{train.rows - train.labelled:,} of the {train.rows:,} training rows have no "
            f"{label.key}."
        )
    if label.task == REGRESSION and train.label_range:
        mean, low, high = train.label_range
        lines.append(
            f"Trained on {label.key} from {low:.4g} to {high:.4g} (mean {mean:.4g}): predictions "
            "outside that range are extrapolation."
        )
    elif label.task == BINARY and label.positive_value is not None:
        share = train.label_counts.get(label.positive_value, 0) / train.rows
        lines.append(
            f"{'Sparse label' if share < 0.5 else 'Label share'}: {share:.1%} of the "
            f"{train.rows:,} training examples have {label.key} = {label.positive_value}."
        )
    elif train.labelled:
        rows, name = min((train.label_counts.get(v, 0), v) for v in _ordered_values([train], label))
        lines.append(
            f"Rarest class in training: {name}, {rows:,} of the {train.labelled:,} labelled "
            f"examples ({rows / train.labelled:.1%})."
        )
    return lines


def _data_lines(train: DataSummary | None, config: ModelCardConfig) -> list[str]:
    """Limitations of the training data: absent text features, the date span."""
    if train is None or not train.rows:
        return []
    lines = [
        f"No {key} in the training data (0 of {train.rows:,} rows): the model learned from the "
        "other fields only."
        for key, present in train.text_rows.items()
        if not present
    ]
    if train.first_date and train.last_date:
        lines.append(
            f"Trained on {config.date_feature} from {train.first_date} to {train.last_date}; "
            "behaviour on later data is unmeasured until a new evaluation."
        )
    return lines


def _multiclass_lines(overall: SliceMetrics | None, card: Card) -> list[str]:
    """The class found least often, and the most frequent confusion (overall)."""
    lines = []
    recalls = {
        index: values["recall"]
        for index, values in (overall.per_class if overall else {}).items()
        if not math.isnan(values.get("recall", math.nan))
    }
    if recalls:
        index = min(recalls, key=recalls.__getitem__)
        lines.append(
            f"Lowest recall: class {card.label.class_name(index)}, of whose eval examples the "
            f"model finds {recalls[index]:.1%}."
        )
    counts = card.confusion.counts if card.confusion else {}
    wrong = {pair: count for pair, count in counts.items() if pair[0] != pair[1] and count > 0}
    if wrong:
        (actual, predicted), count = max(wrong.items(), key=lambda item: item[1])
        total = sum(value for (row, _), value in counts.items() if row == actual)
        lines.append(
            f"Most frequent confusion: {count:,.0f} of the {total:,.0f} eval examples of class "
            f"{card.label.class_name(actual)} are predicted as "
            f"{card.label.class_name(predicted)}."
        )
    return lines


def limitations(card: Card, config: ModelCardConfig) -> list[str]:
    """Known limitations, each stated from a number the pipeline recorded or counted."""
    train = next((item for item in card.summaries if item.split == "train"), None)
    lines = _label_lines(train, card.label) + _data_lines(train, config)
    overall = next((item for item in card.slices if item.group == evaluation_report.OVERALL), None)
    missed = overall.fairness.get("FNR@0.50") if overall else None
    if card.label.task == BINARY and missed is not None and missed >= 0.5:
        lines.append(
            f"At the 0.5 threshold the model misses {missed:.0%} of positive eval examples: "
            "pick a threshold from the fairness indicators below before acting on its scores."
        )
    if card.label.task == MULTICLASS:
        lines += _multiclass_lines(overall, card)
    lines += _few_examples_lines(card.slices, config.min_slice_examples)
    training = card.sources.training
    if training and training.get("privacy"):
        lines.append(
            "The (ε, δ) guarantee covers the model's weights; the training loss and metrics in the "
            "training manifest were computed on the raw training data and are not covered."
        )
    if training is None:
        lines.append("No training manifest was found: hyper-parameters and privacy are unknown.")
    return lines


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return value


def _count(value: float) -> int | float:
    """A weighted example count: an int when whole."""
    return int(value) if float(value).is_integer() else value


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _paragraphs(lines: Sequence[str]) -> list[str]:
    return [f"<p>{html.escape(line)}</p>" for line in lines]


def _label_rows(label: Label, config: ModelCardConfig) -> list[tuple[str, Any]]:
    """The model section's rows about the task and the label."""
    rows: list[tuple[str, Any]] = [("task", f"{label.task} (from {label.origin})")]
    origin = "--label_key" if config.label_key else label.origin
    rows.append(("label", f"{label.key} (from {origin})" if label.key else "unknown"))
    if label.classes:
        rows.append(("classes", ", ".join(f"{i}: {name}" for i, name in enumerate(label.classes))))
    if label.task == BINARY:
        rows.append(("positive value", label.positive_value or "unknown"))
    return rows


def _model_section(sources: Sources, label: Label, config: ModelCardConfig) -> list[str]:
    blessing = sources.blessing
    rows = [
        ("model", sources.model_dir),
        ("fingerprint (sha256 of the SavedModel)", blessing["candidate"]["fingerprint"]),
        ("blessed", "yes" if blessing["blessed"] else "no"),
        *_label_rows(label, config),
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
        hparams = parameters.get("hparams") or {}
        rows += [(f"hparam {key}", str(value)) for key, value in hparams.items()]
        if not hparams:
            rows.append(("hyper-parameters", "none given: the model function's defaults"))
    return [
        "<h2>Model</h2>",
        reports.table(["property", "value"], [(k, _cell(v)) for k, v in rows]),
    ]


def _split_columns(card: Card, config: ModelCardConfig) -> list[tuple[str, Any]]:
    """(heading, cell of a `DataSummary`) of each column of the splits table."""
    label, summaries = card.label, card.summaries
    columns: list[tuple[str, Any]] = [("split", lambda s: s.split), ("rows", lambda s: s.rows)]
    if label.key and any(item.labelled < item.rows for item in summaries):
        columns.append((f"rows without {label.key}", lambda s: s.rows - s.labelled))
    positive = label.positive_value
    if label.key and label.task == BINARY and positive is not None:
        columns += [
            ("positive labels", lambda s: s.label_counts.get(positive, 0)),
            ("positive share", lambda s: _share(s.label_counts.get(positive, 0), s.rows)),
        ]
    if label.key and label.task == REGRESSION:
        columns += [
            (f"{label.key} {name}", lambda s, i=i: s.label_range[i] if s.label_range else math.nan)
            for i, name in enumerate(("mean", "min", "max"))
        ]
    if config.date_feature:
        columns += [
            ("first date", lambda s: str(s.first_date or "n/a")),
            ("last date", lambda s: str(s.last_date or "n/a")),
        ]
    columns += [
        (f"rows with {key}", lambda s, k=key: s.text_rows[k]) for key in config.text_features
    ]
    return columns


def _classes_table(summaries: Sequence[DataSummary], label: Label) -> str:
    """Rows and share of each label value per split."""
    header = ["class"]
    for item in summaries:
        header += [f"{item.split} rows", f"{item.split} share"]
    rows = []
    for value in _ordered_values(summaries, label):
        row: list[Any] = [value]
        for item in summaries:
            count = item.label_counts.get(value, 0)
            row += [count, _cell(_share(count, item.labelled))]
        rows.append(row)
    return reports.table(header, rows)


def _data_section(card: Card, config: ModelCardConfig) -> list[str]:
    sources, label = card.sources, card.label
    ingest = sources.ingest or {}
    body = ["<h2>Training data</h2>"]
    raw = ingest.get("inputs", {}).get("raw", [])
    body.append(
        reports.table(
            ["source file", "bytes", "sha256"],
            [(item["path"], item.get("size", ""), item.get("sha256", "")[:16]) for item in raw],
        )
    )
    columns = _split_columns(card, config)
    body.append(
        reports.table(
            [heading for heading, _ in columns],
            [[_cell(cell(item)) for _, cell in columns] for item in card.summaries],
        )
    )
    classified = label.key and label.task != REGRESSION
    if classified and (label.task == MULTICLASS or label.positive_value is None):
        body += ["<h3>Class distribution</h3>", _classes_table(card.summaries, label)]
    rejected = ingest.get("counts", {}).get("rows_rejected")
    counted = ["Rows"]
    if label.key:
        counted.append(f"labels ({label.key})")
    if config.date_feature:
        counted.append(f"dates (the span of {config.date_feature})")
    if config.text_features:
        counted.append("rows with text")
    counted_text = " and ".join([", ".join(counted[:-1]), counted[-1]] if counted[1:] else counted)
    body += _paragraphs(
        [
            f"Ingest output: {sources.ingest_dir}; rows rejected at ingest: {rejected}. Splits are "
            f"ingest's hash-based split {ingest.get('parameters', {}).get('splits')}.",
            f"{counted_text} are counted by one pass over the ingested examples.",
        ]
    )
    return body


def _schema_section(schema: tuple[str, schema_pb2.Schema] | None) -> list[str]:
    if schema is None:
        return ["<h2>Schema</h2>", "<p>No raw schema was found (transform or export).</p>"]
    schema_path, proto = schema
    domains = {domain.name: len(domain.value) for domain in proto.string_domain}
    rows = []
    for feature in proto.feature:
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


def _metric_names(slices: Sequence[SliceMetrics]) -> list[str]:
    """The scalar metrics of the slices: those of METRIC_HEADINGS first, then TFMA's order."""
    names = list(dict.fromkeys(name for item in slices for name in item.values))
    order = list(METRIC_HEADINGS)
    return sorted(names, key=lambda name: order.index(name) if name in order else len(order))


def _metric_value(item: SliceMetrics, name: str) -> float:
    return item.auc if name == "auc" else item.values.get(name, math.nan)


def _slices_table(slices: Sequence[SliceMetrics]) -> str:
    names = _metric_names(slices)
    fairness_keys = list(dict.fromkeys(key for item in slices for key in item.fairness))
    header = ["slice", "examples", *(METRIC_HEADINGS.get(name, name) for name in names)]
    rows = [
        [
            item.name,
            item.examples,
            *(_cell(_metric_value(item, name)) for name in names),
            *(_cell(item.fairness.get(key, math.nan)) for key in fairness_keys),
        ]
        for item in slices
    ]
    return reports.table([*header, *fairness_keys], rows)


def _per_class_table(overall: SliceMetrics, label: Label) -> str:
    """One row per class id: its binarized metrics (precision, recall, ...)."""
    names = list(dict.fromkeys(name for values in overall.per_class.values() for name in values))
    rows = [
        [index, label.class_name(index), *(_cell(values.get(name, math.nan)) for name in names)]
        for index, values in overall.per_class.items()
    ]
    return reports.table(["class id", "class", *names], rows)


def _confusion_table(matrix: ConfusionMatrix, label: Label) -> str:
    """Rows the actual class, columns the predicted class, cells eval examples."""
    ids = sorted(
        {*matrix.class_ids(), *range(len(label.classes or ()))},
        key=lambda index: (index < 0, index),
    )
    actual = [index for index in ids if index >= 0]
    header = ["actual \\ predicted", *(label.class_name(index) for index in ids), "examples"]
    rows = [
        [
            label.class_name(row),
            *(_count(matrix.counts.get((row, column), 0.0)) for column in ids),
            _count(sum(value for (a, _), value in matrix.counts.items() if a == row)),
        ]
        for row in actual
    ]
    return reports.table(header, rows)


def _multiclass_sections(card: Card) -> list[str]:
    """Per-class metrics and the confusion matrix of the overall slice, where computed."""
    overall = next((item for item in card.slices if item.group == evaluation_report.OVERALL), None)
    body = []
    if overall and overall.per_class:
        body += ["<h3>Per class (overall)</h3>", _per_class_table(overall, card.label)]
    if card.confusion:
        body += [
            "<h3>Confusion matrix (overall)</h3>",
            f"<p>Eval examples by actual class (rows) and the model's top class (columns), at "
            f"threshold {card.confusion.threshold:g}.</p>",
            _confusion_table(card.confusion, card.label),
        ]
    return body


def _worst_heading(slices: Sequence[SliceMetrics], task: str) -> str:
    """`Lowest AUC`, `Lowest accuracy`, `Highest MSE`: what worst_slices ranked by."""
    names, higher_is_better = WORST_BY[task]
    present = {name for item in slices for name in item.values}
    name = next((name for name in names if name in present), names[0])
    return f"{'Lowest' if higher_is_better else 'Highest'} {METRIC_HEADINGS.get(name, name)}"


def _metrics_sections(card: Card, min_examples: int) -> list[str]:
    sources, slices, task = card.sources, card.slices, card.label.task
    evaluated = sources.evaluation.get("counts", {}).get(layout.EXAMPLES_EVALUATED)
    intro = (
        f"TFMA evaluation {sources.evaluation_dir} on {evaluated:,} examples of split "
        f"{sources.evaluation['parameters']['split']}, through serving_default."
    )
    if any(item.fairness for item in slices):
        intro += " FPR and FNR are the false positive and false negative rates at each threshold."
    body = ["<h2>Evaluation</h2>", *_paragraphs([intro])]
    groups: dict[str, list[SliceMetrics]] = {}
    for item in slices:
        groups.setdefault(item.group, []).append(item)
    for group, members in groups.items():
        heading = "overall" if group == evaluation_report.OVERALL else f"by {group}"
        body += [f"<h3>Metrics {html.escape(heading)}</h3>", _slices_table(members)]
        if group == evaluation_report.OVERALL and task == MULTICLASS:
            body += _multiclass_sections(card)
    worst = worst_slices(slices, min_examples, task=task)
    body += [
        "<h2>Worst slices</h2>",
        f"<p>{_worst_heading(slices, task)} among slices with at least {min_examples} eval "
        "examples.</p>",
        _slices_table(worst) if worst else "<p>No slice has that many examples.</p>",
    ]
    return body


def model_card_html(card: Card, config: ModelCardConfig) -> str:
    """The model card page."""
    body = _model_section(card.sources, card.label, config)
    body += _data_section(card, config)
    body += _schema_section(card.schema)
    body += _privacy_section(card.sources.training)
    body += _metrics_sections(card, config.min_slice_examples)
    body.append("<h2>Known limitations</h2>")
    items = limitations(card, config)
    body.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in items) + "</ul>")
    return reports.page(f"{_CARD_TITLE_TEXT}{card.sources.model_dir}", body)


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
    slices = slice_metrics(sources.evaluation_dir)
    matrices = confusion_matrices(sources.evaluation_dir)
    schema = raw_schema(config.model_dir, sources)
    label = resolve_label(config, slices, bool(matrices), schema)
    splits = (sources.ingest or {}).get("splits") or []
    summaries = (
        data_summary(sources.ingest_dir, splits, config, label) if sources.ingest_dir else []
    )
    card = Card(sources, label, summaries, slices, matrices.get(evaluation_report.OVERALL), schema)
    page = model_card_html(card, config)
    artifacts.write_bytes(config.output, page.encode("utf-8"))
    logging.info("model_card: wrote %s", config.output)
    return page


@cli.job_command(__doc__.split("\n\n")[0])
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
@click.option(
    "--label_key", default=None, help="Raw label feature [default: the model contract's]."
)
@click.option(
    "--positive_value",
    default=None,
    help="A binary label's positive value [default: the contract's class 1, else 1 for an "
    "integer label].",
)
@click.option(
    "--date_feature",
    default=None,
    help="Raw text feature holding dates; the card shows their span [default: none].",
)
@click.option(
    "--text_features",
    multiple=True,
    help="Raw free-text feature whose presence the card counts; repeat it or give a comma "
    "list [default: none].",
)
def main(**flags: Any) -> None:
    """Writes the model card."""
    flags["text_features"] = tuple(
        dict.fromkeys(key for value in flags["text_features"] for key in cli.split_list(value))
    )
    run(ModelCardConfig(**flags))
    click.echo(f"wrote {flags['output']}")


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
