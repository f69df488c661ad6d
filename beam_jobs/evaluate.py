"""Evaluate: TFMA on Beam, a candidate model against the serving one; blessed or not.

    python -m beam_jobs.evaluate --model_dir=out/train/serving_model/<ts> \
        --examples_dir=out/ingest --output_dir=out/evaluation [--split=eval] \
        [--eval_config=model/eval_config.pbtxt] \
        [--baseline_model_dir=<SavedModel> | --serving_dir=<push target>]

Reads the raw `tf.Example`s of one split of an ingest output with a tfx_bsl TFXIO source and runs
`tfma.ExtractEvaluateAndWriteResults` on them inside this job's own pipeline, through the models'
`serving_default` signatures, so the numbers are what a server would produce. The baseline is
`--baseline_model_dir`, or the newest version under `--serving_dir` (the last pushed, hence last
blessed, model); candidate and baseline are evaluated in the same run. Without a baseline the
eval config's change thresholds are skipped (TFMA's rubber stamp) and its value thresholds decide.

Writes TFMA's results (metrics, plots, validation result) under `tfma/`, an empty `BLESSED` or
`NOT_BLESSED` file, `blessing.json` (candidate, baseline, every threshold with its value and
whether it passed) and `report.html`. The examples evaluated must equal the rows ingest wrote for
the split. Exits 4 when not blessed, after publishing the output: a person reads the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import click
import pyarrow as pa
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import text_format
from tensorflow_model_analysis.proto import config_pb2, validation_result_pb2
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.utils import config_util
from tfx_bsl.public import tfxio

from beam_jobs.lib import artifacts, cli, evaluation_report, layout
from beam_jobs.lib.blessing import marker_file, write_blessing
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "DEFAULT_EVAL_CONFIG",
    "REPORT_FILE",
    "EvaluateConfig",
    "EvaluateExamples",
    "EvaluatePlan",
    "ModelRef",
    "ThresholdCheck",
    "blessing_record",
    "build_pipeline",
    "load_eval_config",
    "main",
    "model_names",
    "plan_evaluation",
    "prepare_eval_config",
    "resolve_baseline",
    "run",
    "summary_lines",
    "threshold_checks",
]

STAGE = "evaluate"
DEFAULT_SPLIT = "eval"
# The demo model's config, as a file beside this package (model/ is installed next to beam_jobs/).
DEFAULT_EVAL_CONFIG = str(
    pathlib.Path(__file__).resolve().parents[1] / "model" / "eval_config.pbtxt"
)
# The files push reads, named once (in push, which reads them).
REPORT_FILE = "report.html"
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
    eval_config: str = DEFAULT_EVAL_CONFIG
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
    """Everything resolved before the pipeline runs."""

    file_pattern: str
    expected_examples: int | None
    eval_config: config_pb2.EvalConfig
    candidate: ModelRef
    baseline: ModelRef | None
    change_thresholds_skipped: bool


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
) -> list[ThresholdCheck]:
    """Every threshold of the eval config on every slice it covers, passed or failed.

    Thresholds are enumerated as TFMA's validator does (`metric_thresholds_from_metrics_specs`);
    TFMA's ValidationResult lists only failures, so a threshold passed unless it is among them.
    A failure no threshold here accounts for (a crossed slice, a slice with no examples) is
    added as a failed check of its own, so every failure has a name.
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
                kind, rule, bound = _bound_text(evaluation_report.metric_label(key), threshold)
                checks.append(
                    ThresholdCheck(
                        name=f"{rule} ({sliced.name})",
                        metric=evaluation_report.metric_label(key),
                        slice=sliced.name,
                        kind=kind,
                        value=sliced.values.get(key),
                        threshold=bound,
                        passed=not hits,
                    )
                )
    checks += _unmatched_failures(failures, matched, validation)
    return checks


def _unmatched_failures(
    failures: Sequence[_Failure],
    matched: set[int],
    validation: validation_result_pb2.ValidationResult,
) -> list[ThresholdCheck]:
    """Failed checks for failures no configured threshold matched, and for missing slices."""
    checks = []
    for index, found in enumerate(failures):
        if index in matched:
            continue
        configured = found.failure.metric_threshold
        threshold = (
            configured.change_threshold
            if configured.HasField("change_threshold")
            else configured.value_threshold
        )
        metric = evaluation_report.metric_label(found.key)
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
    for spec in validation.missing_slices:
        spec_text = text_format.MessageToString(spec, as_one_line=True) or "overall"
        checks.append(
            ThresholdCheck(
                name=f"slice {spec_text} has examples",
                metric=layout.EXAMPLE_COUNT_METRIC,
                slice=spec_text,
                kind="slice",
                value=0.0,
                threshold=None,
                passed=False,
            )
        )
    return checks


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
            rubber_stamp=plan.change_thresholds_skipped,
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


def check_model_reads_examples(
    model: ModelRef, flag: str, file_pattern: str, spec: config_pb2.ModelSpec
) -> None:
    """Scores a few examples through the signatures TFMA will call, before the pipeline starts.

    Examples of another data set (a feature the model requires is missing, or typed otherwise)
    then fail here in one line, not in every Beam worker with a traceback each.

    Raises:
        cli.JobError: a signature is missing, or cannot read the examples.
    """
    records = _first_examples(file_pattern, _PROBE_EXAMPLES)
    if not records:
        return
    loaded = tf.saved_model.load(model.path)
    for name in [
        spec.signature_name or layout.SERVING_SIGNATURE,
        *spec.preprocessing_function_names,
    ]:
        signature = loaded.signatures.get(name)
        if signature is None:
            raise cli.JobError(
                f"--{flag}={model.path} has no signature {name!r}, which the eval config names "
                f"(it has {', '.join(sorted(loaded.signatures)) or 'none'})"
            )
        inputs = list(signature.structured_input_signature[1])
        try:
            signature(**{inputs[0]: tf.constant(records)})
        except (tf.errors.OpError, IndexError, TypeError, ValueError) as error:
            reason = cli.tensorflow_reason(
                error.message if isinstance(error, tf.errors.OpError) else str(error)
            )
            raise cli.JobError(
                f"--{flag}={model.path} cannot read the examples in {file_pattern} through "
                f"{name!r}: {reason}; evaluate it on examples of the data it was trained on"
            ) from None


def plan_evaluation(config: EvaluateConfig) -> EvaluatePlan:
    """Resolves examples, models and the eval config, failing early with one clear line.

    Raises:
        cli.JobError: an unfinished ingest output, a missing split, a directory that is not a
            SavedModel, or an unreadable eval config.
    """
    manifest = artifacts.read_manifest(
        config.examples_dir, flag="examples_dir", stages=artifacts.EXAMPLES_STAGES
    )
    splits = manifest.splits
    if config.split not in splits:
        raise cli.JobError(
            f"--split={config.split}: {config.examples_dir} has splits {', '.join(splits)}"
        )
    candidate = _model_ref(config.model_dir, "model_dir")
    baseline_dir = resolve_baseline(config)
    flag = "baseline_model_dir" if config.baseline_model_dir else "serving_dir"
    baseline = _model_ref(baseline_dir, flag) if baseline_dir else None
    eval_config, skipped = prepare_eval_config(
        load_eval_config(config.eval_config), has_baseline=baseline is not None
    )
    model_names(eval_config)
    file_pattern = FileSystems.join(config.examples_dir, config.split, layout.EXAMPLES_PATTERN)
    for spec in eval_config.model_specs:
        model, flag = (baseline, flag) if spec.is_baseline else (candidate, "model_dir")
        check_model_reads_examples(model, flag, file_pattern, spec)
    return EvaluatePlan(
        file_pattern=file_pattern,
        expected_examples=manifest.rows_written.get(config.split),
        eval_config=eval_config,
        candidate=candidate,
        baseline=baseline,
        change_thresholds_skipped=skipped,
    )


def _check_counts(
    config: EvaluateConfig,
    plan: EvaluatePlan,
    evaluated: int,
    metrics: Sequence[evaluation_report.MetricsForSlice],
) -> None:
    """Fails unless ingest's rows, the rows read and TFMA's overall example count agree."""
    if plan.expected_examples is not None and evaluated != plan.expected_examples:
        raise cli.JobError(
            f"split {config.split}: evaluated {evaluated} examples but ingest wrote "
            f"{plan.expected_examples}; {config.examples_dir} was changed or records were lost, "
            "nothing published"
        )
    candidate, _ = model_names(plan.eval_config)
    for sliced in evaluation_report.sliced_values(metrics):
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
    baseline = (
        f"Baseline: {plan.baseline.path} (fingerprint {plan.baseline.fingerprint[:12]})"
        if plan.baseline
        else "Baseline: none (nothing serves yet): change thresholds skipped"
    )
    return [
        f"Candidate: {plan.candidate.path} (fingerprint {plan.candidate.fingerprint[:12]})",
        baseline,
        f"Examples: {evaluated:,} of split {config.split} of {config.examples_dir}",
        f"Eval config: {config.eval_config}",
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
    checks = threshold_checks(plan.eval_config, metrics, validation)
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
    )
    _write_text(staged.path(REPORT_FILE), page)
    return blessing


def _inputs(config: EvaluateConfig, plan: EvaluatePlan) -> dict[str, Any]:
    inputs = {
        "examples": artifacts.input_fingerprint(config.examples_dir),
        "model": dataclasses.asdict(plan.candidate),
        "eval_config": artifacts.file_fingerprint(config.eval_config),
    }
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
@click.option("--eval_config", default=DEFAULT_EVAL_CONFIG, help="TFMA EvalConfig in text format.")
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
    eval_config: str,
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
