"""The TFMA `EvalConfig` an evaluation runs: the user's, completed from the model's contract.

A user writes an EvalConfig the documented TFMA way and should not need to know this project's
export: the signature, its output and, when the raw label is not what the model trained on, the
transformed label, are all in the export's contract (`assets/model_contract.json`). Three steps turn
a user's config (or none) into the one TFMA runs:

- `default_eval_config`: without a config, metrics fit for the model's task, overall, no threshold;
- `with_model_defaults`: fields of a model spec the export fixes are filled where left out;
- `inline_keyed_thresholds`: thresholds keyed by metric name in a `MetricsSpec` move into the
  metric they name. TFMA keys those with `example_weighted` unset, while it computes every
  configured metric with `example_weighted` false, so its validator never finds them: it reports
  "Metric not found" and an empty overall slice although it computed the metric.

`check_threshold_slices` then refuses thresholds on slices the config never computes. Every error
is a `JobError` naming the field: a config that would evaluate nothing is the user's to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.proto import config_pb2

from beam_jobs.lib import layout, model_contract
from beam_jobs.lib.cli import JobError

__all__ = [
    "TASK_METRICS",
    "check_threshold_slices",
    "default_eval_config",
    "has_thresholds",
    "inline_keyed_thresholds",
    "is_overall",
    "label_keys",
    "slice_columns",
    "slice_spec_text",
    "with_model_defaults",
]

# Metrics of the default config per task. Plots are metrics to TFMA; the report draws them.
TASK_METRICS = {
    model_contract.BINARY: (
        "ExampleCount",
        "BinaryAccuracy",
        "AUC",
        "Precision",
        "Recall",
        "CalibrationPlot",
        "ConfusionMatrixPlot",
    ),
    model_contract.MULTICLASS: (
        "ExampleCount",
        "SparseCategoricalAccuracy",
        "MultiClassConfusionMatrixPlot",
    ),
    model_contract.REGRESSION: ("ExampleCount", "MeanSquaredError", "MeanAbsoluteError"),
}
# Per-class metrics of a multi-class model: one-vs-rest for each class id (TFMA's binarize).
PER_CLASS_METRICS = ("Precision", "Recall")


def default_eval_config(task: str, class_count: int | None = None) -> config_pb2.EvalConfig:
    """The config used without `--eval_config`: the task's metrics, overall, no threshold.

    Its model spec is empty: `with_model_defaults` fills it from the contract like any other.
    A multi-class model with a known `class_count` also gets precision and recall per class.
    """
    config = config_pb2.EvalConfig()
    config.model_specs.add()
    config.options.include_default_metrics.value = False
    config.slicing_specs.add()
    spec = config.metrics_specs.add()
    spec.metrics.extend(config_pb2.MetricConfig(class_name=name) for name in TASK_METRICS[task])
    if task == model_contract.MULTICLASS and class_count:
        per_class = config.metrics_specs.add()
        per_class.binarize.class_ids.values.extend(range(class_count))
        per_class.metrics.extend(
            config_pb2.MetricConfig(class_name=name) for name in PER_CLASS_METRICS
        )
    return config


def with_model_defaults(
    eval_config: config_pb2.EvalConfig, contract: model_contract.ModelContract | None
) -> config_pb2.EvalConfig:
    """A copy with the model spec fields the export fixes filled in where the user left them out.

    `signature_name` and `prediction_key` come from the contract (else this project's
    `serving_default` and `outputs`); a missing label becomes the contract's transformed label.
    The transformed label is read through the export's transform signature, as the demo's
    config does by hand: TFMA finds it nowhere else. A config without model specs gets one.
    """
    updated = config_pb2.EvalConfig()
    updated.CopyFrom(eval_config)
    if not updated.model_specs:
        updated.model_specs.add()
    for spec in updated.model_specs:
        if not spec.signature_name:
            spec.signature_name = contract.signature_name if contract else layout.SERVING_SIGNATURE
        if not spec.prediction_key and not spec.prediction_keys:
            spec.prediction_key = contract.output_key if contract else layout.OUTPUT_KEY
        if contract is None:
            continue
        if not spec.label_key and not spec.label_keys:
            spec.label_key = contract.transformed_label_key
        transformed = contract.transformed_label_key in label_keys(spec)
        if transformed and contract.transform_signature not in spec.preprocessing_function_names:
            spec.preprocessing_function_names.append(contract.transform_signature)
    return updated


def label_keys(spec: config_pb2.ModelSpec) -> list[str]:
    """The label features a model spec names (one, or one per output)."""
    return [spec.label_key] if spec.label_key else sorted(set(spec.label_keys.values()))


def _metric_names(spec: config_pb2.MetricsSpec) -> dict[str, config_pb2.MetricConfig]:
    """The metrics of a spec by the name TFMA gives their results (`AUC` → `auc`)."""
    registered = metric_types.registered_metrics()
    named = {}
    for metric in spec.metrics:
        try:
            name = metric_specs.metric_instance(metric, registered).name
        except (AttributeError, ImportError, NotImplementedError, TypeError, ValueError) as error:
            raise JobError(
                f"eval config metric {metric.class_name!r} cannot be made: {error}"
            ) from None
        named[name] = metric
    return named


def _unknown_metric(kind: str, name: str, named: Iterable[str]) -> JobError:
    return JobError(
        f"eval config: metrics_specs {kind} {{ key: {name!r} }} names a metric its metrics_spec "
        f"does not compute (it computes {', '.join(sorted(named)) or 'nothing'}); add "
        f"metrics {{ class_name: ... }} for it or key the threshold by one of those names"
    )


def _merge_threshold(
    metric: config_pb2.MetricConfig, name: str, threshold: config_pb2.MetricThreshold
) -> None:
    """Adds a keyed threshold to a metric's own, refusing two bounds of one kind."""
    for kind in ("value_threshold", "change_threshold"):
        if threshold.HasField(kind) and metric.threshold.HasField(kind):
            raise JobError(
                f"eval config: metric {name!r} has a {kind} both in its metrics {{ threshold }} "
                "and in metrics_specs thresholds; keep one"
            )
    metric.threshold.MergeFrom(threshold)


def inline_keyed_thresholds(eval_config: config_pb2.EvalConfig) -> config_pb2.EvalConfig:
    """A copy where `MetricsSpec.thresholds`, `per_slice_thresholds` and `cross_slice_thresholds`
    moved into the metrics they name.

    The result validates the same bounds on the same slices, under the keys TFMA computes.

    Raises:
        JobError: a key names no metric of its spec, or a bound is given twice.
    """
    updated = config_pb2.EvalConfig()
    updated.CopyFrom(eval_config)
    for spec in updated.metrics_specs:
        if not (spec.thresholds or spec.per_slice_thresholds or spec.cross_slice_thresholds):
            continue
        named = _metric_names(spec)
        for name, threshold in spec.thresholds.items():
            if name not in named:
                raise _unknown_metric("thresholds", name, named)
            _merge_threshold(named[name], name, threshold)
        for name, per_slice in spec.per_slice_thresholds.items():
            if name not in named:
                raise _unknown_metric("per_slice_thresholds", name, named)
            named[name].per_slice_thresholds.extend(per_slice.thresholds)
        for name, cross_slice in spec.cross_slice_thresholds.items():
            if name not in named:
                raise _unknown_metric("cross_slice_thresholds", name, named)
            named[name].cross_slice_thresholds.extend(cross_slice.thresholds)
        for field in ("thresholds", "per_slice_thresholds", "cross_slice_thresholds"):
            spec.ClearField(field)
    return updated


def has_thresholds(eval_config: config_pb2.EvalConfig) -> bool:
    """Whether the config sets any threshold TFMA validates (in any of its forms)."""
    return bool(
        metric_specs.metric_thresholds_from_metrics_specs(
            eval_config.metrics_specs, eval_config=eval_config
        )
    )


def slice_columns(spec: config_pb2.SlicingSpec) -> frozenset[str]:
    """The features a slicing spec slices by (none: the overall slice)."""
    return frozenset([*spec.feature_keys, *spec.feature_values])


def is_overall(spec: config_pb2.SlicingSpec) -> bool:
    """Whether a slicing spec is the overall slice (`slicing_specs {}`)."""
    return not slice_columns(spec) and not spec.slice_keys_sql


def slice_spec_text(spec: config_pb2.SlicingSpec) -> str:
    """`overall`, `product`, or `product=Mortgage`: a slicing spec as the report names slices."""
    parts = [*spec.feature_keys, *(f"{k}={v}" for k, v in sorted(spec.feature_values.items()))]
    return ", ".join(parts) or "overall"


def check_threshold_slices(eval_config: config_pb2.EvalConfig) -> None:
    """Refuses per-slice thresholds on slices that no `slicing_specs` entry computes.

    TFMA computes only the slices of `slicing_specs` (overall alone when there are none); a
    threshold on any other slice is checked against nothing, and TFMA reports it missing.

    Raises:
        JobError: names the threshold's slice and the slicing spec to add.
    """
    specs = eval_config.slicing_specs
    computed = {slice_columns(spec) for spec in specs if not spec.slice_keys_sql}
    if not specs:
        computed = {frozenset()}
    for metric, slice_spec in _threshold_slices(eval_config.metrics_specs):
        if slice_spec.slice_keys_sql or slice_columns(slice_spec) in computed:
            continue
        needed = ", ".join(f'feature_keys: "{key}"' for key in sorted(slice_columns(slice_spec)))
        raise JobError(
            f"eval config: the threshold of {metric} on slice {slice_spec_text(slice_spec)} is "
            f"on a slice slicing_specs do not compute; add slicing_specs {{ {needed} }}"
        )


def _threshold_slices(
    metrics_specs: Sequence[config_pb2.MetricsSpec],
) -> Iterable[tuple[str, config_pb2.SlicingSpec]]:
    """(metric name, slicing spec) of every per-slice threshold, keyed or in its metric."""
    for spec in metrics_specs:
        for name, per_slice in spec.per_slice_thresholds.items():
            for threshold in per_slice.thresholds:
                for slice_spec in threshold.slicing_specs:
                    yield name, slice_spec
        for metric in spec.metrics:
            for threshold in metric.per_slice_thresholds:
                for slice_spec in threshold.slicing_specs:
                    yield metric.class_name, slice_spec
