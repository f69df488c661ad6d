"""Evaluate: TFMA on Beam, a candidate model against the serving one; blessed or not.

    python -m beam_jobs.evaluate --model_dir=out/train/serving_model/<ts> \
        --examples_dir=out/ingest --output_dir=out/evaluation [--split=eval] \
        [--eval_config=<EvalConfig.pbtxt>] \
        [--baseline_model_dir=<SavedModel> | --serving_dir=<push target>]

Reads the raw `tf.Example`s of one split of an ingest output with a tfx_bsl TFXIO source and runs
`tfma.ExtractEvaluateAndWriteResults` on them inside this job's own pipeline, through the models'
`serving_default` signatures, so the numbers are what a server would produce. The baseline is
`--baseline_model_dir`, or the newest version under `--serving_dir` (the last pushed, hence last
blessed, model); candidate and baseline are evaluated in the same run. Without a baseline the
eval config's change thresholds are skipped (TFMA's rubber stamp) and its value thresholds decide.

The EvalConfig is completed from the model's contract (`tfma_config`): without `--eval_config`,
the metrics of the model's task, overall, without thresholds (blessed: there is no bar); fields
the export fixes (signature, prediction key, label) are filled where the config leaves them out.
Before the pipeline, a few examples go through the model's signatures and are checked against the
model's raw schema, so a config or data that would evaluate nothing fails in one line, exit 1.

Writes TFMA's results (metrics, plots, validation result) under `tfma/`, an empty `BLESSED` or
`NOT_BLESSED` file, `blessing.json` (candidate, baseline, every threshold with its value and
whether it passed) and `report.html`. The examples evaluated must equal the rows ingest wrote for
the split. Exits 4 when not blessed, after publishing the output: a person reads the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import click
import pyarrow as pa
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_model_analysis.proto import config_pb2, validation_result_pb2
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.utils import config_util
from tfx_bsl.public import tfxio

from beam_jobs.lib import (
    artifacts,
    cli,
    evaluation_report,
    feature_types,
    layout,
    model_contract,
    tfma_config,
)
from beam_jobs.lib.blessing import marker_file, write_blessing
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "NO_THRESHOLD",
    "REPORT_FILE",
    "EvaluateConfig",
    "EvaluateExamples",
    "EvaluatePlan",
    "ModelRef",
    "ThresholdCheck",
    "blessing_record",
    "build_pipeline",
    "check_model_reads_examples",
    "config_errors",
    "load_eval_config",
    "main",
    "model_names",
    "plan_evaluation",
    "prepare_eval_config",
    "resolve_baseline",
    "resolve_eval_config",
    "run",
    "summary_lines",
    "threshold_checks",
]

STAGE = "evaluate"
DEFAULT_SPLIT = "eval"
# The files push reads, named once (in push, which reads them).
REPORT_FILE = "report.html"
# The summary's line when the config sets no threshold (TFMA then rubber-stamps the model).
NO_THRESHOLD = "no threshold configured: blessed without a bar (the metrics are in the report)"
# Examples scored in this process before the pipeline, to fail early on another data set's.
_PROBE_EXAMPLES = 64
_TELEMETRY = ["beam_jobs", STAGE]


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate job's parameters, as given on the command line."""

    model_dir: str
    examples_dir: str
    output_dir: str
    split: str = DEFAULT_SPLIT
    eval_config: str | None = None
    baseline_model_dir: str | None = None
    serving_dir: str | None = None

    def __post_init__(self) -> None:
        if self.baseline_model_dir and self.serving_dir:
            raise ValueError("give baseline_model_dir or serving_dir, not both")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model evaluated: where it lies, and what it is (content fingerprint)."""

    path: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class EvaluatePlan:
    """Everything resolved before the pipeline runs.

    `eval_config_source` says where the config came from (its path, or the default of the
    model's task); `class_names` are the candidate's classes by index, when its contract has them.
    """

    file_pattern: str
    expected_examples: int | None
    eval_config: config_pb2.EvalConfig
    candidate: ModelRef
    baseline: ModelRef | None
    change_thresholds_skipped: bool
    thresholds_configured: bool = True
    eval_config_source: str = ""
    class_names: tuple[str, ...] | None = None

    @property
    def rubber_stamp(self) -> bool:
        """Whether TFMA blesses without a bar: no baseline for the change thresholds, or no
        threshold at all (TFMA would otherwise call an unbounded config not validated)."""
        return self.change_thresholds_skipped or not self.thresholds_configured


@dataclasses.dataclass(frozen=True)
class ThresholdCheck:
    """One threshold of the eval config on one slice: its value and whether it passed.

    `value` is the candidate's metric for a value threshold and its change over the baseline
    for a change threshold; `threshold` is the bound (a [lower, upper] pair when both are set).
    """

    name: str
    metric: str
    slice: str
    kind: str
    value: float | None
    threshold: float | list[float] | None
    passed: bool


def load_eval_config(path: str) -> config_pb2.EvalConfig:
    """Reads a text-format TFMA `EvalConfig`.

    Raises:
        cli.JobError: the file is missing or is not an EvalConfig.
    """
    if not FileSystems.exists(path):
        raise cli.JobError(f"--eval_config={path} does not exist")
    with FileSystems.open(path) as handle:
        text = handle.read().decode("utf-8")
    try:
        return text_format.Parse(text, config_pb2.EvalConfig())
    except text_format.ParseError as error:
        raise cli.JobError(f"--eval_config={path} is not a TFMA EvalConfig: {error}") from None


def _output_width(model: ModelRef, contract: model_contract.ModelContract) -> int | None:
    """The number of scores the serving signature returns per example (None if not fixed)."""
    signature = tf.saved_model.load(model.path).signatures.get(contract.signature_name)
    output = signature.structured_outputs.get(contract.output_key) if signature else None
    if output is None or output.shape.rank != 2:
        return None
    return output.shape[-1]


def resolve_eval_config(
    path: str | None, candidate: ModelRef, contract: model_contract.ModelContract | None
) -> tuple[config_pb2.EvalConfig, str]:
    """The user's config (or the task's default), completed as TFMA needs it; and its source.

    Raises:
        cli.JobError: no config and no contract to make one from, an unreadable config, or a
            threshold on a metric or slice the config never computes.
    """
    if path:
        eval_config, source = load_eval_config(path), path
    elif contract is None:
        raise cli.JobError(
            f"--model_dir={candidate.path} carries no model contract "
            f"({model_contract.ASSETS_DIR}/{model_contract.CONTRACT_FILE}) to choose metrics "
            "from; pass --eval_config=<TFMA EvalConfig in text format>"
        )
    else:
        classes = contract.classes
        count = len(classes) if classes else None
        if contract.task == model_contract.MULTICLASS and count is None:
            count = _output_width(candidate, contract)
        eval_config = tfma_config.default_eval_config(contract.task, count)
        source = f"default for a {contract.task} model (its contract; no --eval_config)"
    eval_config = tfma_config.inline_keyed_thresholds(
        tfma_config.with_model_defaults(eval_config, contract)
    )
    tfma_config.check_threshold_slices(eval_config)
    return eval_config, source


def resolve_baseline(config: EvaluateConfig) -> str | None:
    """The baseline model: `--baseline_model_dir`, or the newest version under `--serving_dir`.

    An empty or missing serving directory means no baseline (nothing was pushed yet).
    """
    if config.baseline_model_dir:
        return config.baseline_model_dir
    if config.serving_dir:
        versions = artifacts.serving_versions(config.serving_dir)
        if versions:
            return FileSystems.join(config.serving_dir, str(versions[-1]))
    return None


def prepare_eval_config(
    eval_config: config_pb2.EvalConfig, has_baseline: bool
) -> tuple[config_pb2.EvalConfig, bool]:
    """The eval config for this run, by TFMA's own rules, and whether change thresholds go.

    With a baseline, TFMA names the model specs `candidate` and `baseline` (`is_baseline` set on
    the copy); without one, it drops the baseline spec and every change threshold.
    """
    skipped = not has_baseline and config_util.has_change_threshold(eval_config)
    updated = tfma.utils.update_eval_config_with_defaults(
        eval_config, has_baseline=has_baseline, rubber_stamp=skipped
    )
    return updated, skipped


def model_names(eval_config: config_pb2.EvalConfig) -> tuple[str, str | None]:
    """TFMA's names of the candidate and of the baseline (None without one).

    Raises:
        cli.JobError: the config has other than one candidate model spec.
    """
    candidates = [spec.name for spec in eval_config.model_specs if not spec.is_baseline]
    baselines = [spec.name for spec in eval_config.model_specs if spec.is_baseline]
    if len(candidates) != 1 or len(baselines) > 1:
        raise cli.JobError(
            f"the eval config has {len(candidates)} candidate and {len(baselines)} baseline model "
            "specs; this job evaluates one candidate (and its baseline)"
        )
    return candidates[0], (baselines[0] if baselines else None)


def _bound_text(metric: str, threshold: Any) -> tuple[str, str, Any]:
    """(kind, readable rule, bound) of a value or change threshold."""
    if isinstance(threshold, config_pb2.GenericChangeThreshold):
        op = "<=" if threshold.direction == config_pb2.MetricDirection.LOWER_IS_BETTER else ">="
        rules, bounds = [], []
        if threshold.HasField("absolute"):
            rules.append(f"{op} {threshold.absolute.value:+g}")
            bounds.append(threshold.absolute.value)
        if threshold.HasField("relative"):
            rules.append(f"{op} {threshold.relative.value:+g} relative")
            bounds.append(threshold.relative.value)
        bound = bounds[0] if len(bounds) == 1 else bounds
        return "change", f"{metric} change {' and '.join(rules)} vs baseline", bound
    lower = threshold.lower_bound.value if threshold.HasField("lower_bound") else None
    upper = threshold.upper_bound.value if threshold.HasField("upper_bound") else None
    if lower is not None and upper is not None:
        return "value", f"{lower:g} <= {metric} <= {upper:g}", [lower, upper]
    if upper is not None:
        return "value", f"{metric} <= {upper:g}", upper
    return "value", f"{metric} >= {lower:g}", lower


def _applies(slice_spec: Any, slice_key: tuple) -> bool:
    """Whether a threshold's slicing spec (None: every slice) covers a single slice."""
    if slice_spec is None:
        return True
    if isinstance(slice_spec, config_pb2.CrossSlicingSpec):
        return False
    return slicer_lib.SingleSliceSpec(spec=slice_spec).is_slice_applicable(slice_key)


@dataclasses.dataclass(frozen=True)
class _Failure:
    """One failure TFMA's validator recorded; `slice_key` is None for a crossed slice."""

    slice_key: tuple | None
    slice: str
    key: tfma.metrics.MetricKey
    failure: validation_result_pb2.ValidationFailure


def _failures(validation: validation_result_pb2.ValidationResult) -> list[_Failure]:
    """Every failure of TFMA's validation result, with its slice and metric key."""
    found = []
    for per_slice in validation.metric_validations_per_slice:
        if per_slice.HasField("cross_slice_key"):
            slice_key = None
            crossed = slicer_lib.deserialize_cross_slice_key(per_slice.cross_slice_key)
            name = " vs ".join(evaluation_report.slice_name(key) for key in crossed)
        else:
            slice_key = slicer_lib.deserialize_slice_key(per_slice.slice_key)
            name = evaluation_report.slice_name(slice_key)
        for failure in per_slice.failures:
            key = tfma.metrics.MetricKey.from_proto(failure.metric_key)
            found.append(_Failure(slice_key, name, key, failure))
    return found


def _failed(failure: validation_result_pb2.ValidationFailure, threshold: Any) -> bool:
    if isinstance(threshold, config_pb2.GenericChangeThreshold):
        return failure.metric_threshold.change_threshold == threshold
    return failure.metric_threshold.value_threshold == threshold


def threshold_checks(
    eval_config: config_pb2.EvalConfig,
    metrics: Sequence[evaluation_report.MetricsForSlice],
    validation: validation_result_pb2.ValidationResult,
    class_names: Sequence[str] | None = None,
) -> list[ThresholdCheck]:
    """Every threshold of the eval config on every slice it covers, passed or failed.

    Thresholds are enumerated as TFMA's validator does (`metric_thresholds_from_metrics_specs`);
    TFMA's ValidationResult lists only failures, so a threshold passed unless it is among them.
    A failure no threshold here accounts for (a crossed slice) is added as a failed check of its
    own, so every failure has a name. Slices and metrics TFMA found nothing for are not checks
    but config errors (`config_errors`). A per-class metric is named by its class where
    `class_names` (the contract's) are known.
    """
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    _, baseline = model_names(eval_config)
    failures = _failures(validation)
    matched: set[int] = set()
    checks = []
    for sliced in evaluation_report.sliced_values(metrics):
        for key, specs in thresholds.items():
            if baseline is not None and key.model_name == baseline:
                continue
            for slice_spec, threshold in specs:
                if not _applies(slice_spec, sliced.slice_key):
                    continue
                hits = [
                    index
                    for index, found in enumerate(failures)
                    if found.slice_key == sliced.slice_key
                    and found.key == key
                    and _failed(found.failure, threshold)
                ]
                matched.update(hits)
                label = evaluation_report.metric_label(key, class_names)
                kind, rule, bound = _bound_text(label, threshold)
                checks.append(
                    ThresholdCheck(
                        name=f"{rule} ({sliced.name})",
                        metric=label,
                        slice=sliced.name,
                        kind=kind,
                        value=sliced.values.get(key),
                        threshold=bound,
                        passed=not hits,
                    )
                )
    checks += _unmatched_failures(failures, matched, class_names)
    return checks


def _unmatched_failures(
    failures: Sequence[_Failure], matched: set[int], class_names: Sequence[str] | None
) -> list[ThresholdCheck]:
    """Failed checks for failures with a value that no configured threshold matched."""
    checks = []
    for index, found in enumerate(failures):
        if index in matched or not found.failure.HasField("metric_value"):
            continue
        configured = found.failure.metric_threshold
        threshold = (
            configured.change_threshold
            if configured.HasField("change_threshold")
            else configured.value_threshold
        )
        metric = evaluation_report.metric_label(found.key, class_names)
        kind, rule, bound = _bound_text(metric, threshold)
        checks.append(
            ThresholdCheck(
                name=f"{rule} ({found.slice})",
                metric=metric,
                slice=found.slice,
                kind=kind,
                value=found.failure.metric_value.double_value.value,
                threshold=bound,
                passed=False,
            )
        )
    return checks


def config_errors(validation: validation_result_pb2.ValidationResult) -> list[str]:
    """Where TFMA's validator found nothing to check: the config's fault, not the model's.

    A threshold's metric that TFMA never computed (its failure has no value: "Metric not
    found"), and a threshold's slice that no example fell into. Blessing or not on those would
    judge the model on nothing.
    """
    reasons = [
        f"TFMA computed no {evaluation_report.metric_label(found.key)} on slice {found.slice}, "
        "which a threshold names"
        for found in _failures(validation)
        if not found.failure.HasField("metric_value")
    ]
    reasons += [
        f"no example falls into slice {tfma_config.slice_spec_text(spec)}, which a threshold names"
        for spec in validation.missing_slices
    ]
    reasons += [
        f"no example falls into crossed slice {text_format.MessageToString(spec, as_one_line=True)}"
        ", which a threshold names"
        for spec in validation.missing_cross_slices
    ]
    return reasons


def blessing_record(
    *,
    validation: validation_result_pb2.ValidationResult,
    checks: Sequence[ThresholdCheck],
    candidate: ModelRef,
    baseline: ModelRef | None,
    change_thresholds_skipped: bool,
) -> dict[str, Any]:
    """`blessing.json`: blessed when TFMA's validation is ok and every check passed."""
    return {
        "blessed": bool(validation.validation_ok) and all(check.passed for check in checks),
        "candidate": dataclasses.asdict(candidate),
        "baseline": dataclasses.asdict(baseline) if baseline else None,
        "thresholds": [dataclasses.asdict(check) for check in checks],
        "change_thresholds_skipped": change_thresholds_skipped,
    }


class EvaluateExamples(beam.PTransform):
    """Raw examples of one split → TFMA's results under `output_path`; outputs the rows read.

    Rows are counted on the RecordBatches TFMA reads, independently of TFMA, so a loss anywhere
    between ingest and evaluation shows.
    """

    def __init__(
        self,
        *,
        file_pattern: str,
        eval_config: config_pb2.EvalConfig,
        models: Sequence[tfma.types.EvalSharedModel],
        output_path: str,
    ) -> None:
        super().__init__()
        self._file_pattern = file_pattern
        self._eval_config = eval_config
        self._models = list(models)
        self._output_path = output_path

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        source = tfxio.TFExampleRecord(
            file_pattern=[self._file_pattern],
            raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
            telemetry_descriptors=_TELEMETRY,
        )
        batches = pipeline | "ReadExamples" >> source.BeamSource()
        _ = batches | "ExtractEvaluateAndWriteResults" >> tfma.ExtractEvaluateAndWriteResults(
            eval_shared_model=self._models,
            eval_config=self._eval_config,
            output_path=self._output_path,
        )
        return (
            batches
            | "RowsPerBatch" >> beam.ParDo(_CountRows())
            | "SumRows" >> beam.CombineGlobally(sum)
        )


class _CountRows(beam.DoFn):
    """Each RecordBatch's number of rows, also added to a Beam counter."""

    def __init__(self) -> None:
        super().__init__()
        self._counter = beam.metrics.Metrics.counter(STAGE, layout.EXAMPLES_EVALUATED)

    def process(self, batch: pa.RecordBatch) -> Iterator[int]:
        self._counter.inc(batch.num_rows)
        yield batch.num_rows


def _shared_models(plan: EvaluatePlan) -> list[tfma.types.EvalSharedModel]:
    candidate, baseline = model_names(plan.eval_config)
    models = [
        tfma.default_eval_shared_model(
            eval_saved_model_path=plan.candidate.path,
            eval_config=plan.eval_config,
            model_name=candidate,
            rubber_stamp=plan.rubber_stamp,
        )
    ]
    if plan.baseline is not None:
        models.append(
            tfma.default_eval_shared_model(
                eval_saved_model_path=plan.baseline.path,
                eval_config=plan.eval_config,
                model_name=baseline,
            )
        )
    return models


def build_pipeline(pipeline: beam.Pipeline, plan: EvaluatePlan, staging_dir: str) -> None:
    """Adds the evaluation to `pipeline`: TFMA's results under `<staging_dir>/tfma`, counts."""
    rows = pipeline | "Evaluate" >> EvaluateExamples(
        file_pattern=plan.file_pattern,
        eval_config=plan.eval_config,
        models=_shared_models(plan),
        output_path=FileSystems.join(staging_dir, layout.TFMA_DIR),
    )
    counts_key = layout.EXAMPLES_EVALUATED  # A local: workers may not see this module's globals.
    _ = (
        rows
        | "KeyCount" >> beam.Map(lambda found: (counts_key, found))
        | "Counts" >> WriteCounts(staging_dir)
    )


def _model_ref(path: str, flag: str) -> ModelRef:
    if not FileSystems.exists(FileSystems.join(path, layout.SAVED_MODEL_FILE)):
        raise cli.JobError(
            f"--{flag}={path} is not a SavedModel (no {layout.SAVED_MODEL_FILE}); give the "
            "serving_model/<timestamp> directory the training wrote"
        )
    return ModelRef(path, artifacts.directory_fingerprint(path))


def _first_examples(file_pattern: str, count: int) -> list[bytes]:
    for metadata in artifacts.list_files(file_pattern):
        records = list(itertools.islice(artifacts.read_tfrecords(metadata.path), count))
        if records:
            return records
    return []


def _check_raw_types(
    model: ModelRef, flag: str, file_pattern: str, example_types: Mapping[str, str]
) -> None:
    """Fails where a feature of the examples is typed otherwise than the model's raw schema.

    The raw schema is the one the model was trained on (its contract's); an export without one
    is checked by its signatures alone.
    """
    schema = model_contract.read_raw_schema(model.path)
    if schema is None:
        return
    for feature in schema.feature:
        found = example_types.get(feature.name)
        expected = schema_pb2.FeatureType.Name(feature.type)
        if found and feature.type != schema_pb2.TYPE_UNKNOWN and found != expected:
            raise cli.JobError(
                f"--{flag}={model.path} cannot read the examples in {file_pattern}: feature "
                f"{feature.name} is {found} there but {expected} in the raw schema the model was "
                f"trained on ({model_contract.raw_schema_path(model.path)}); ingest them with "
                "that schema (--schema) so the types agree"
            )


def _call_signature(
    loaded: Any, name: str, model: ModelRef, flag: str, file_pattern: str, records: list[bytes]
) -> dict[str, Any]:
    """The outputs of one signature on the probe's examples, or a one-line error."""
    signature = loaded.signatures.get(name)
    if signature is None:
        raise cli.JobError(
            f"--{flag}={model.path} has no signature {name!r}, which the eval config names "
            f"(it has {', '.join(sorted(loaded.signatures)) or 'none'})"
        )
    inputs = list(signature.structured_input_signature[1])
    try:
        return signature(**{inputs[0]: tf.constant(records)})
    except (tf.errors.OpError, IndexError, TypeError, ValueError) as error:
        reason = cli.tensorflow_reason(
            error.message if isinstance(error, tf.errors.OpError) else str(error)
        )
        raise cli.JobError(
            f"--{flag}={model.path} cannot read the examples in {file_pattern} through "
            f"{name!r}: {reason}; evaluate it on examples of the data it was trained on"
        ) from None


def _check_keys(
    spec: config_pb2.ModelSpec,
    outputs: Mapping[str, Mapping[str, Any]],
    example_features: set[str],
    model: ModelRef,
    flag: str,
) -> None:
    """Fails unless the predictions and labels the spec names exist: else TFMA scores nothing."""
    serving = outputs[spec.signature_name or layout.SERVING_SIGNATURE]
    predictions = [spec.prediction_key] if spec.prediction_key else [*spec.prediction_keys.values()]
    for key in predictions:
        if key not in serving:
            raise cli.JobError(
                f"eval config prediction_key {key!r}: signature {spec.signature_name!r} of "
                f"--{flag}={model.path} returns {', '.join(sorted(serving))}"
            )
    transformed = {key for name in spec.preprocessing_function_names for key in outputs[name]}
    for key in tfma_config.label_keys(spec):
        if key not in example_features and key not in transformed:
            found = f"a feature of the examples ({', '.join(sorted(example_features))})"
            if spec.preprocessing_function_names:
                through = ", ".join(spec.preprocessing_function_names)
                found += f" nor an output of {through} ({', '.join(sorted(transformed))})"
            raise cli.JobError(
                f"eval config label_key {key!r} is neither {found}: no example would have a "
                "label; name the label the model was trained on"
            )


def check_model_reads_examples(
    model: ModelRef,
    flag: str,
    file_pattern: str,
    spec: config_pb2.ModelSpec,
    example_types: Mapping[str, str] | None = None,
) -> None:
    """Scores a few examples through the signatures TFMA will call, before the pipeline starts.

    Examples of another data set (a feature typed otherwise than the model's raw schema says,
    one it requires missing), or a label or prediction key that neither the examples nor the
    model have, would fail in every Beam worker with a traceback each, or evaluate nothing;
    here they fail in one line. `example_types` are the examples' feature types (ingest's
    manifest records them); by default those of the probed examples.

    Raises:
        cli.JobError: names the feature, signature or key, and what to do.
    """
    records = _first_examples(file_pattern, _PROBE_EXAMPLES)
    if not records:
        return
    if example_types is None:
        paths = [found.path for found in artifacts.list_files(file_pattern)]
        example_types = feature_types.types_in_examples(paths, _PROBE_EXAMPLES)
    _check_raw_types(model, flag, file_pattern, example_types)
    loaded = tf.saved_model.load(model.path)
    names = [spec.signature_name or layout.SERVING_SIGNATURE, *spec.preprocessing_function_names]
    outputs = {
        name: _call_signature(loaded, name, model, flag, file_pattern, records) for name in names
    }
    example_features = {
        name for record in records for name in tf.train.Example.FromString(record).features.feature
    }
    _check_keys(spec, outputs, example_features, model, flag)


def plan_evaluation(config: EvaluateConfig) -> EvaluatePlan:
    """Resolves examples, models and the eval config, failing early with one clear line.

    Raises:
        cli.JobError: an unfinished ingest output, a missing or empty split, a directory that
            is not a SavedModel, an unreadable or unusable eval config (or none and no model
            contract), or examples the models cannot read.
    """
    manifest = artifacts.read_manifest(
        config.examples_dir, flag="examples_dir", stages=artifacts.EXAMPLES_STAGES
    )
    if config.split not in manifest.splits:
        raise cli.JobError(
            f"--split={config.split}: {config.examples_dir} has splits {', '.join(manifest.splits)}"
        )
    expected = manifest.rows_written.get(config.split)
    if expected == 0:
        raise cli.JobError(
            f"--split={config.split} of {config.examples_dir} has no examples (ingest wrote 0 "
            "rows); nothing to evaluate: choose a split with examples"
        )
    candidate = _model_ref(config.model_dir, "model_dir")
    baseline_dir = resolve_baseline(config)
    flag = "baseline_model_dir" if config.baseline_model_dir else "serving_dir"
    baseline = _model_ref(baseline_dir, flag) if baseline_dir else None
    contract = model_contract.read_contract(candidate.path)
    eval_config, source = resolve_eval_config(config.eval_config, candidate, contract)
    eval_config, skipped = prepare_eval_config(eval_config, has_baseline=baseline is not None)
    model_names(eval_config)
    file_pattern = FileSystems.join(config.examples_dir, config.split, layout.EXAMPLES_PATTERN)
    example_types = feature_types.recorded_or_sampled(
        manifest, [found.path for found in artifacts.list_files(file_pattern)]
    )
    for spec in eval_config.model_specs:
        model, flag = (baseline, flag) if spec.is_baseline else (candidate, "model_dir")
        check_model_reads_examples(model, flag, file_pattern, spec, example_types)
    return EvaluatePlan(
        file_pattern=file_pattern,
        expected_examples=expected,
        eval_config=eval_config,
        candidate=candidate,
        baseline=baseline,
        change_thresholds_skipped=skipped,
        thresholds_configured=tfma_config.has_thresholds(eval_config),
        eval_config_source=source,
        class_names=contract.classes if contract else None,
    )


def _check_counts(
    config: EvaluateConfig,
    plan: EvaluatePlan,
    evaluated: int,
    metrics: Sequence[evaluation_report.MetricsForSlice],
) -> None:
    """Fails unless ingest's rows, the rows read and TFMA's overall example count agree.

    Zero examples evaluated, or no overall slice where the config computes one, is an error:
    a verdict on nothing is no verdict.
    """
    if plan.expected_examples is not None and evaluated != plan.expected_examples:
        raise cli.JobError(
            f"split {config.split}: evaluated {evaluated} examples but ingest wrote "
            f"{plan.expected_examples}; {config.examples_dir} was changed or records were lost, "
            "nothing published"
        )
    if not evaluated:
        raise cli.JobError(
            f"split {config.split} of {config.examples_dir} has no examples; nothing to evaluate"
        )
    sliced_metrics = evaluation_report.sliced_values(metrics)
    specs = plan.eval_config.slicing_specs
    overall = not specs or any(tfma_config.is_overall(spec) for spec in specs)
    if overall and not any(not sliced.slice_key for sliced in sliced_metrics):
        raise cli.JobError(
            f"TFMA's results have no overall slice, of {evaluated} examples read: it evaluated "
            "none; nothing published"
        )
    candidate, _ = model_names(plan.eval_config)
    for sliced in sliced_metrics:
        for key, value in sliced.values.items():
            if (
                not sliced.slice_key
                and key.name == layout.EXAMPLE_COUNT_METRIC
                and key.model_name == candidate
                and not key.is_diff
                and int(value) != evaluated
            ):
                raise cli.JobError(
                    f"TFMA counted {int(value)} examples of the {evaluated} read; nothing published"
                )


def _context_lines(config: EvaluateConfig, plan: EvaluatePlan, evaluated: int) -> list[str]:
    if plan.baseline:
        baseline = f"Baseline: {plan.baseline.path} (fingerprint {plan.baseline.fingerprint[:12]})"
    elif plan.change_thresholds_skipped:
        baseline = "Baseline: none (nothing serves yet): change thresholds skipped"
    else:
        baseline = "Baseline: none"
    return [
        f"Candidate: {plan.candidate.path} (fingerprint {plan.candidate.fingerprint[:12]})",
        baseline,
        f"Examples: {evaluated:,} of split {config.split} of {config.examples_dir}",
        f"Eval config: {plan.eval_config_source}",
    ]


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def _write_outputs(
    staged: artifacts.StagedOutput, config: EvaluateConfig, plan: EvaluatePlan, evaluated: int
) -> dict[str, Any]:
    """Reads TFMA's results back, writes the blessing files and the report; the blessing."""
    results_dir = staged.path(layout.TFMA_DIR)
    metrics = list(tfma.load_metrics(results_dir))
    _check_counts(config, plan, evaluated, metrics)
    validation = tfma.load_validation_result(results_dir)
    reasons = config_errors(validation)
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise cli.JobError(
            f"eval config: {reasons[0]}{more} in split {config.split}; the threshold checks "
            "nothing there: fix its metric or slice; nothing published"
        )
    checks = threshold_checks(plan.eval_config, metrics, validation, plan.class_names)
    blessing = blessing_record(
        validation=validation,
        checks=checks,
        candidate=plan.candidate,
        baseline=plan.baseline,
        change_thresholds_skipped=plan.change_thresholds_skipped,
    )
    write_blessing(staged.staging_dir, blessing)
    page = evaluation_report.evaluation_html(
        f"Evaluation of {config.model_dir}",
        _context_lines(config, plan, evaluated),
        blessing,
        metrics,
        tfma.load_plots(results_dir),
        model_names(plan.eval_config),
        class_names=plan.class_names,
    )
    _write_text(staged.path(REPORT_FILE), page)
    return blessing


def _inputs(config: EvaluateConfig, plan: EvaluatePlan) -> dict[str, Any]:
    inputs = {
        "examples": artifacts.input_fingerprint(config.examples_dir),
        "model": dataclasses.asdict(plan.candidate),
    }
    if config.eval_config:
        inputs["eval_config"] = artifacts.file_fingerprint(config.eval_config)
    if plan.baseline:
        inputs["baseline_model"] = dataclasses.asdict(plan.baseline)
    return inputs


def summary_lines(blessing: dict[str, Any]) -> list[str]:
    """The text summary: one line per threshold, then the verdict."""
    lines = [
        f"{'passed' if check['passed'] else 'FAILED'}: {check['name']}: {check['value']}"
        for check in blessing["thresholds"]
    ]
    if blessing["change_thresholds_skipped"]:
        lines.append("no baseline model: change thresholds skipped, value thresholds decided")
    elif not blessing["thresholds"]:
        lines.append(NO_THRESHOLD)
    lines.append(marker_file(blessing["blessed"]))
    return lines


def run(config: EvaluateConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the evaluation and publishes its output directory (blessed or not).

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.NotBlessedError: a threshold failed (after publishing the output and its report).
        cli.JobError: unusable inputs, or the examples evaluated differ from ingest's count.
    """
    staged = artifacts.StagedOutput(
        config.output_dir,
        STAGE,
        inputs=[
            config.model_dir,
            config.examples_dir,
            config.eval_config,
            config.baseline_model_dir,
            config.serving_dir,
        ],
    )
    plan = plan_evaluation(config)
    if plan.change_thresholds_skipped:
        logging.info("evaluate: no baseline model: change thresholds skipped")
    logging.info("evaluate: %s on %s", config.model_dir, plan.file_pattern)
    with staged:
        counts = run_beam_stage(
            staged, options, lambda pipeline: build_pipeline(pipeline, plan, staged.staging_dir)
        )
        evaluated = counts[layout.EXAMPLES_EVALUATED]
        blessing = _write_outputs(staged, config, plan, evaluated)
        manifest = staged.publish(
            inputs=_inputs(config, plan),
            parameters=dataclasses.asdict(config),
            counts={layout.EXAMPLES_EVALUATED: evaluated},
            extra={
                "blessed": blessing["blessed"],
                "change_thresholds_skipped": plan.change_thresholds_skipped,
                "eval_config": plan.eval_config_source,
            },
        )
    click.echo("\n".join(summary_lines(blessing)))
    if not blessing["blessed"]:
        failed = [check["name"] for check in blessing["thresholds"] if not check["passed"]]
        report = FileSystems.join(config.output_dir, REPORT_FILE)
        raise cli.NotBlessedError(
            f"{config.model_dir} is NOT_BLESSED: failed {', '.join(failed) or 'validation'}; "
            f"report: {report}"
        )
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option("--model_dir", required=True, help="Candidate SavedModel (serving_model/<ts>).")
@click.option("--examples_dir", required=True, help="An ingest output directory (with manifest).")
@click.option("--split", default=DEFAULT_SPLIT, help="Split of --examples_dir to evaluate on.")
@click.option(
    "--eval_config",
    default=None,
    help="TFMA EvalConfig in text format [default: the metrics of the model's task, from its "
    "contract, without thresholds].",
)
@click.option(
    "--output_dir", required=True, help="Directory to write results, blessing and report."
)
@click.option("--baseline_model_dir", default=None, help="Baseline SavedModel to compare with.")
@click.option(
    "--serving_dir",
    default=None,
    help="Push target: its newest version is the baseline (none if empty).",
)
def main(
    model_dir: str,
    examples_dir: str,
    split: str,
    eval_config: str | None,
    output_dir: str,
    baseline_model_dir: str | None,
    serving_dir: str | None,
    beam_args: tuple[str, ...],
) -> None:
    if baseline_model_dir and serving_dir:
        raise click.UsageError("give --baseline_model_dir or --serving_dir, not both")
    config = EvaluateConfig(
        model_dir=model_dir,
        examples_dir=examples_dir,
        output_dir=output_dir,
        split=split,
        eval_config=eval_config,
        baseline_model_dir=baseline_model_dir,
        serving_dir=serving_dir,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
