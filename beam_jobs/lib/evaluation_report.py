"""The evaluation's page for people: verdict, thresholds, metrics per slice, TFMA's plots.

Plain functions from TFMA's result protos (`MetricsForSlice`, `PlotsForSlice`) and the blessing
record to one standalone HTML page, readable offline and without Jupyter: tables of the metrics of
every slice, fairness indicators per slice, and the plots TFMA computes (ROC and precision-recall
curves from its confusion matrices at thresholds, the calibration plot from its histogram) drawn
with matplotlib's Agg renderer and embedded as PNG data. The page layout is `reports`' own.

What is shown follows what TFMA computed, whatever the task: a binary model's ROC and calibration
plots; a multi-class model's precision and recall per class (metrics binarized by class id) and
its confusion matrix, with the class names of the model's contract where known; a regression
model's errors in the metric tables.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow_model_analysis as tfma
from matplotlib.figure import Figure
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tensorflow_model_analysis.slicer import slicer_lib

from beam_jobs.lib import reports

__all__ = [
    "NO_PREDICTION",
    "OVERALL",
    "ConfusionMatrix",
    "Curves",
    "SlicedValues",
    "calibration_points",
    "class_label",
    "confusion_matrices",
    "curves_by_model",
    "evaluation_html",
    "metric_label",
    "plot_png",
    "pr_points",
    "roc_points",
    "slice_name",
    "sliced_values",
    "slices_roc_png",
]

OVERALL = "overall"
FAIRNESS_PREFIX = "fairness_indicators_metrics/"
# Fairness indicators shown per slice (TFMA computes more; these two are the book's).
FAIRNESS_SHOWN = {"false_positive_rate": "FPR", "false_negative_rate": "FNR"}
# ROC curves of a slicing group's slices share one plot when there are at most this many.
MAX_SLICES_PER_PLOT = 12
_DPI = 100

# TFMA's predicted class id where no class scored above the matrix's threshold.
NO_PREDICTION = -1

MetricsForSlice = metrics_for_slice_pb2.MetricsForSlice
PlotsForSlice = metrics_for_slice_pb2.PlotsForSlice
ConfusionMatrix = dict[tuple[int, int], float]  # (actual, predicted) class ids → examples


@dataclasses.dataclass(frozen=True)
class SlicedValues:
    """The scalar metrics of one slice, by TFMA metric key (NaN where TFMA has no number)."""

    slice_key: tuple
    name: str
    values: dict[tfma.metrics.MetricKey, float]


@dataclasses.dataclass
class Curves:
    """One model's plot data on one slice: ROC, precision-recall and calibration points."""

    roc: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    pr: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    calibration: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)


def slice_name(slice_key: tuple) -> str:
    """`overall`, or `product=Debt collection` (columns joined by `, ` for crossed features)."""
    if not slice_key:
        return OVERALL
    parts = []
    for column, value in slice_key:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        parts.append(f"{column}={text}")
    return ", ".join(parts)


def _scalar(value: metrics_for_slice_pb2.MetricValue) -> float | None:
    """A metric's number (a confidence interval's point estimate), None for non-scalars."""
    if value.HasField("double_value"):
        return value.double_value.value
    if value.HasField("bounded_value"):
        return value.bounded_value.value.value
    return None


def sliced_values(metrics: Iterable[MetricsForSlice]) -> list[SlicedValues]:
    """The scalar metrics of every single (not crossed) slice, overall first, then by name."""
    result = []
    for sliced in metrics:
        if sliced.HasField("cross_slice_key"):
            continue
        slice_key = slicer_lib.deserialize_slice_key(sliced.slice_key)
        values = {}
        for item in sliced.metric_keys_and_values:
            number = _scalar(item.value)
            if number is not None:
                values[tfma.metrics.MetricKey.from_proto(item.key)] = number
        result.append(SlicedValues(slice_key, slice_name(slice_key), values))
    return sorted(result, key=lambda item: (bool(item.slice_key), item.name))


def class_label(class_id: int, class_names: Sequence[str] | None) -> str:
    """A class's name from the contract's classes, else `class <id>`."""
    if class_names is not None and 0 <= class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


def metric_label(key: tfma.metrics.MetricKey, class_names: Sequence[str] | None = None) -> str:
    """A metric's readable name: its TFMA name, with its sub key (`top_k:3`) if any.

    With `class_names`, a per-class metric is named by its class (`precision (owl)`).
    """
    if not key.sub_key:
        return key.name
    if class_names is not None and key.sub_key.class_id is not None:
        return f"{key.name} ({class_label(key.sub_key.class_id, class_names)})"
    return f"{key.name} ({key.sub_key})"


def roc_points(
    matrices: Sequence[metrics_for_slice_pb2.ConfusionMatrixAtThresholds.ConfusionMatrix],
) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) per threshold, from (0, 0) to (1, 1)."""
    points = {(0.0, 0.0), (1.0, 1.0)}
    for matrix in matrices:
        negatives = matrix.false_positives + matrix.true_negatives
        positives = matrix.true_positives + matrix.false_negatives
        if negatives and positives:
            points.add((matrix.false_positives / negatives, matrix.true_positives / positives))
    return sorted(points)


def pr_points(
    matrices: Sequence[metrics_for_slice_pb2.ConfusionMatrixAtThresholds.ConfusionMatrix],
) -> list[tuple[float, float]]:
    """(recall, precision) per threshold at which the model predicts any positive."""
    points = set()
    for matrix in matrices:
        predicted = matrix.true_positives + matrix.false_positives
        positives = matrix.true_positives + matrix.false_negatives
        if predicted and positives:
            points.add((matrix.true_positives / positives, matrix.true_positives / predicted))
    return sorted(points)


def calibration_points(
    buckets: Sequence[metrics_for_slice_pb2.CalibrationHistogramBuckets.Bucket],
) -> list[tuple[float, float, float]]:
    """(mean prediction, mean label, examples) of every non-empty calibration bucket."""
    points = []
    for bucket in buckets:
        count = bucket.num_weighted_examples.value
        if count > 0:
            points.append(
                (
                    bucket.total_weighted_refined_prediction.value / count,
                    bucket.total_weighted_label.value / count,
                    count,
                )
            )
    return points


def _single_slices(plots: Iterable[PlotsForSlice]) -> Iterator[tuple[str, Any]]:
    """(slice name, plot item) of every plot of a single (not crossed) slice."""
    for sliced in plots:
        if sliced.HasField("cross_slice_key"):
            continue
        name = slice_name(slicer_lib.deserialize_slice_key(sliced.slice_key))
        for item in sliced.plot_keys_and_values:
            yield name, item


def curves_by_model(plots: Iterable[PlotsForSlice]) -> dict[str, dict[str, Curves]]:
    """Binary plot points by slice name, then by model name (`""` for a single model).

    Slices and models without ROC, precision-recall or calibration data are left out.
    """
    result: dict[str, dict[str, Curves]] = {}
    for name, item in _single_slices(plots):
        binary = item.value.HasField("confusion_matrix_at_thresholds")
        calibration = item.value.HasField("calibration_histogram_buckets")
        if not binary and not calibration:
            continue
        curves = result.setdefault(name, {}).setdefault(item.key.model_name, Curves())
        if binary:
            matrices = item.value.confusion_matrix_at_thresholds.matrices
            curves.roc, curves.pr = roc_points(matrices), pr_points(matrices)
        if calibration:
            buckets = item.value.calibration_histogram_buckets.buckets
            curves.calibration = calibration_points(buckets)
    return result


def confusion_matrices(plots: Iterable[PlotsForSlice]) -> dict[str, dict[str, ConfusionMatrix]]:
    """Multi-class confusion matrices by slice name, then model name.

    TFMA's `MultiClassConfusionMatrixPlot` holds one matrix per threshold; by default one, at
    threshold 0: each example counted at its top class. The first matrix is taken.
    """
    result: dict[str, dict[str, ConfusionMatrix]] = {}
    for name, item in _single_slices(plots):
        if not item.value.HasField("multi_class_confusion_matrix_at_thresholds"):
            continue
        matrices = item.value.multi_class_confusion_matrix_at_thresholds.matrices
        if not matrices:
            continue
        counts = {
            (entry.actual_class_id, entry.predicted_class_id): entry.num_weighted_examples
            for entry in matrices[0].entries
        }
        result.setdefault(name, {})[item.key.model_name] = counts
    return result


def plot_png(curves: Mapping[str, Curves], title: str) -> bytes:
    """ROC, precision-recall and calibration of each model side by side, as a PNG."""
    figure = Figure(figsize=(15, 4.6), dpi=_DPI, layout="constrained")
    roc_axes, pr_axes, calibration_axes = figure.subplots(1, 3)
    for model, item in curves.items():
        label = model or "model"
        if item.roc:
            roc_axes.plot(*zip(*item.roc, strict=True), label=label)
        if item.pr:
            pr_axes.plot(*zip(*item.pr, strict=True), label=label)
        if item.calibration:
            predicted, observed, _ = zip(*item.calibration, strict=True)
            calibration_axes.plot(predicted, observed, marker="o", label=label)
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    calibration_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for axes, (x_label, y_label, heading) in zip(
        (roc_axes, pr_axes, calibration_axes),
        (
            ("false positive rate", "true positive rate", "ROC"),
            ("recall", "precision", "Precision-recall"),
            ("mean prediction", "observed rate of the label", "Calibration"),
        ),
        strict=True,
    ):
        axes.set(xlabel=x_label, ylabel=y_label, title=f"{heading}: {title}")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def slices_roc_png(roc_by_slice: Mapping[str, list[tuple[float, float]]], title: str) -> bytes:
    """The ROC curves of several slices (one model) in one plot, as a PNG."""
    figure = Figure(figsize=(7.5, 5.5), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    for name, points in roc_by_slice.items():
        if points:
            axes.plot(*zip(*points, strict=True), label=name)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img alt="{html.escape(alt)}" style="max-width: 100%" src="data:image/png;base64,{data}">'
    )


def _cell(value: float | None) -> Any:
    return "n/a" if value is None or math.isnan(value) else value


def _group(item: SlicedValues) -> str:
    return ", ".join(column for column, _ in item.slice_key) or OVERALL


def _metric_table(
    slices: Sequence[SlicedValues],
    models: tuple[str, str | None],
    compared: set[str],
    class_names: Sequence[str] | None,
) -> str:
    """One row per slice: the candidate's metrics, and baseline and change of `compared` ones."""
    candidate, baseline = models
    keys = []
    for item in slices:
        for key in item.values:
            if (
                key.model_name == candidate
                and not key.is_diff
                and not key.name.startswith(FAIRNESS_PREFIX)
                and key not in keys
            ):
                keys.append(key)
    header = ["slice", *(metric_label(key, class_names) for key in keys)]
    columns = list(keys)
    if baseline is not None:
        for key in keys:
            label = metric_label(key, class_names)
            if label in compared:
                header += [f"{label} baseline", f"{label} change"]
                columns += [key._replace(model_name=baseline), key._replace(is_diff=True)]
    rows = [[item.name, *(_cell(item.values.get(key)) for key in columns)] for item in slices]
    return reports.table(header, rows)


def _fairness_table(slices: Sequence[SlicedValues], candidate: str) -> str:
    """One row per slice: the candidate's false positive and negative rates at each threshold."""
    keys = sorted(
        {
            key
            for item in slices
            for key in item.values
            if key.model_name == candidate
            and not key.is_diff
            and key.name.startswith(FAIRNESS_PREFIX)
            and key.name[len(FAIRNESS_PREFIX) :].split("@")[0] in FAIRNESS_SHOWN
        },
        key=lambda key: (key.name.split("@")[-1], key.name),
    )
    if not keys:
        return ""
    header = ["slice"]
    for key in keys:
        metric, _, threshold = key.name[len(FAIRNESS_PREFIX) :].partition("@")
        header.append(f"{FAIRNESS_SHOWN[metric]}@{threshold}")
    rows = [[item.name, *(_cell(item.values.get(key)) for key in keys)] for item in slices]
    return reports.table(header, rows)


def _per_class_table(
    overall: SlicedValues, candidate: str, class_names: Sequence[str] | None
) -> str:
    """One row per class: the candidate's per-class metrics (binarized by class id), overall."""
    by_class: dict[int, dict[str, float]] = {}
    for key, value in overall.values.items():
        class_id = key.sub_key.class_id if key.sub_key else None
        if key.model_name == candidate and not key.is_diff and class_id is not None:
            by_class.setdefault(class_id, {})[key.name] = value
    if not by_class:
        return ""
    names = sorted({name for values in by_class.values() for name in values})
    rows = [
        [class_label(class_id, class_names), *(_cell(by_class[class_id].get(n)) for n in names)]
        for class_id in sorted(by_class)
    ]
    return reports.table(["class", *names], rows)


def _confusion_table(matrix: ConfusionMatrix, class_names: Sequence[str] | None) -> str:
    """Rows: the actual class; columns: the predicted one (and `none` below the threshold)."""
    actual = sorted({pair[0] for pair in matrix})
    predicted = sorted({pair[1] for pair in matrix} | set(actual))
    if NO_PREDICTION in predicted:
        predicted = [*(c for c in predicted if c != NO_PREDICTION), NO_PREDICTION]
    header = [
        "actual \\ predicted",
        *("none" if c == NO_PREDICTION else class_label(c, class_names) for c in predicted),
    ]
    rows = [
        [class_label(a, class_names), *(_cell(matrix.get((a, p), 0.0)) for p in predicted)]
        for a in actual
        if a != NO_PREDICTION
    ]
    return reports.table(header, rows)


def _thresholds_section(blessing: Mapping[str, Any]) -> list[str]:
    verdict = (
        '<h2 class="ok">BLESSED</h2>' if blessing["blessed"] else '<h2 class="bad">NOT BLESSED</h2>'
    )
    rows = [
        (
            check["name"],
            _cell(check["value"]),
            str(check["threshold"]),
            "passed" if check["passed"] else "FAILED",
        )
        for check in blessing["thresholds"]
    ]
    body = [verdict, "<h2>Thresholds</h2>"]
    if blessing.get("change_thresholds_skipped"):
        body.append(
            "<p>No baseline model (nothing serves yet): change thresholds were skipped, "
            "value thresholds decided.</p>"
        )
    elif not blessing["thresholds"]:
        body.append(
            "<p>No threshold was configured: the model is blessed without a bar. Read its "
            "metrics below before you push it.</p>"
        )
    if rows:
        body.append(reports.table(["threshold", "value", "bound", "result"], rows))
    return body


def _classes_section(
    slices: Sequence[SlicedValues],
    matrices: Mapping[str, Mapping[str, ConfusionMatrix]],
    candidate: str,
    class_names: Sequence[str] | None,
) -> list[str]:
    """A multi-class model's precision and recall per class and its confusion matrix, overall."""
    body = []
    overall = next((item for item in slices if not item.slice_key), None)
    per_class = _per_class_table(overall, candidate, class_names) if overall else ""
    if per_class:
        body += ["<h2>Per class (overall)</h2>", per_class]
    matrix = matrices.get(OVERALL, {}).get(candidate)
    if matrix:
        body += ["<h2>Confusion matrix (overall)</h2>", _confusion_table(matrix, class_names)]
    return body


def _group_section(
    group: str,
    members: Sequence[SlicedValues],
    curves: Mapping[str, Mapping[str, Curves]],
    models: tuple[str, str | None],
    compared: set[str],
    class_names: Sequence[str] | None,
) -> list[str]:
    """The metrics of one slicing group, its slices' ROC curves (binary) and fairness."""
    candidate = models[0]
    heading = "(overall)" if group == OVERALL else f"by {html.escape(group)}"
    body = [f"<h2>Metrics {heading}</h2>", _metric_table(members, models, compared, class_names)]
    roc = {
        item.name: curves[item.name][candidate].roc
        for item in members
        if curves.get(item.name, {}).get(candidate, Curves()).roc
    }
    if group != OVERALL and roc and len(members) <= MAX_SLICES_PER_PLOT:
        plot_title = f"candidate by {group}"
        body.append(_image(slices_roc_png(roc, plot_title), plot_title))
    fairness = _fairness_table(members, candidate)
    if fairness:
        body += [f"<h3>Fairness indicators {heading}</h3>", fairness]
    return body


def evaluation_html(
    title: str,
    context: Sequence[str],
    blessing: Mapping[str, Any],
    metrics: Iterable[MetricsForSlice],
    plots: Iterable[PlotsForSlice],
    model_names: tuple[str, str | None],
    *,
    class_names: Sequence[str] | None = None,
) -> str:
    """The standalone report page of one evaluation.

    Args:
        title: the page title.
        context: lines shown first (models, examples, eval config).
        blessing: the blessing record (`blessed`, `thresholds`, `change_thresholds_skipped`).
        metrics: TFMA's metrics of every slice.
        plots: TFMA's plots of every slice.
        model_names: TFMA's names of the candidate and of the baseline (None without one).
        class_names: the classes by class id (the model contract's), to name per-class rows.
    """
    plots = list(plots)
    body = [f"<p>{html.escape(line)}</p>" for line in context]
    body += _thresholds_section(blessing)
    slices = sliced_values(metrics)
    compared = {check["metric"] for check in blessing["thresholds"] if check["kind"] == "change"}
    groups: dict[str, list[SlicedValues]] = {}
    for item in slices:
        groups.setdefault(_group(item), []).append(item)
    curves = curves_by_model(plots)
    if OVERALL in curves:
        body += ["<h2>Plots (overall)</h2>", _image(plot_png(curves[OVERALL], OVERALL), OVERALL)]
    body += _classes_section(slices, confusion_matrices(plots), model_names[0], class_names)
    for group, members in groups.items():
        body += _group_section(group, members, curves, model_names, compared, class_names)
    return reports.page(title, body)
