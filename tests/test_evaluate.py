"""Tests of the evaluate job: eval config, threshold records, baseline choice, TFMA on real data."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from click.testing import CliRunner
from google.protobuf import text_format
from tensorflow_model_analysis.proto import (
    config_pb2,
    metrics_for_slice_pb2,
    validation_result_pb2,
)
from tensorflow_model_analysis.slicer import slicer_lib

from beam_jobs import evaluate
from beam_jobs.lib import artifacts, cli, evaluation_report, layout
from model import features
from tests import browser
from tests.conftest import DEMO_EVAL_CONFIG, REPO_ROOT, direct_options

BAD_TRAIN_STEPS = 1  # Seeded initial weights and one step: eval AUC 0.489 on the 2015 data.
AUC_VALUE_CHECK = "auc >= 0.6 (overall)"
AUC_CHANGE_CHECK = "auc change >= +0.01 vs baseline (overall)"


def demo_eval_config() -> config_pb2.EvalConfig:
    return evaluate.load_eval_config(str(DEMO_EVAL_CONFIG))


def run_evaluate(*args: str):
    """The command line on the demo model, with the demo's eval config."""
    return CliRunner().invoke(evaluate.main, [*args, f"--eval_config={DEMO_EVAL_CONFIG}"])


# --- The demo's eval config --------------------------------------------------------------------


def test_the_job_has_no_default_config_file_and_the_demo_config_uses_the_model_feature_keys():
    assert not hasattr(evaluate, "DEFAULT_EVAL_CONFIG")
    config = demo_eval_config()
    (spec,) = config.model_specs
    assert spec.signature_name == "serving_default"
    assert list(spec.preprocessing_function_names) == ["transform_features"]
    assert spec.label_key == features.transformed_name(features.LABEL_KEY)
    assert [list(slicing.feature_keys) for slicing in config.slicing_specs] == [
        [],
        [features.PRODUCT],
        [features.STATE],
    ]
    all_keys = {*features.ONE_HOT_FEATURES, *features.BUCKET_FEATURES, *features.TEXT_FEATURES}
    assert {key for s in config.slicing_specs for key in s.feature_keys} <= all_keys


def test_demo_eval_config_has_the_books_metrics_and_thresholds():
    (metrics_spec,) = demo_eval_config().metrics_specs
    by_name = {metric.class_name: metric for metric in metrics_spec.metrics}
    for name in ("ExampleCount", "BinaryAccuracy", "AUC", "Precision", "Recall"):
        assert name in by_name
    fairness = by_name["FairnessIndicators"]
    assert fairness.module == "fairness_indicators.fairness_indicators_metrics"
    assert json.loads(fairness.config) == {"thresholds": [0.25, 0.5, 0.75]}
    (auc,) = by_name["AUC"].per_slice_thresholds
    assert [text_format.MessageToString(s) for s in auc.slicing_specs] == [""]  # overall
    assert auc.threshold.value_threshold.lower_bound.value == pytest.approx(0.6)
    change = auc.threshold.change_threshold
    assert change.absolute.value == pytest.approx(0.01)
    assert change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER


def test_prepare_eval_config_names_the_baseline_or_drops_change_thresholds():
    with_baseline, skipped = evaluate.prepare_eval_config(demo_eval_config(), has_baseline=True)
    assert not skipped
    assert [(s.name, s.is_baseline) for s in with_baseline.model_specs] == [
        ("candidate", False),
        ("baseline", True),
    ]
    assert evaluate.model_names(with_baseline) == ("candidate", "baseline")
    alone, skipped = evaluate.prepare_eval_config(demo_eval_config(), has_baseline=False)
    assert skipped
    assert evaluate.model_names(alone) == ("", None)
    (auc,) = [m for m in alone.metrics_specs[0].metrics if m.class_name == "AUC"]
    assert not auc.per_slice_thresholds[0].threshold.HasField("change_threshold")
    assert auc.per_slice_thresholds[0].threshold.HasField("value_threshold")


def test_a_config_that_is_not_an_eval_config_is_one_line(tmp_path):
    path = tmp_path / "bad.pbtxt"
    path.write_text("model_specs { no_such_field: 1 }\n")
    with pytest.raises(cli.JobError, match="is not a TFMA EvalConfig"):
        evaluate.load_eval_config(str(path))


# --- Threshold records from TFMA's results (no Beam) --------------------------------------------


def _metrics(slice_values: dict[tuple, dict[tfma.metrics.MetricKey, float]]) -> list:
    result = []
    for slice_key, values in slice_values.items():
        sliced = metrics_for_slice_pb2.MetricsForSlice()
        sliced.slice_key.CopyFrom(slicer_lib.serialize_slice_key(slice_key))
        for key, value in values.items():
            item = sliced.metric_keys_and_values.add()
            item.key.CopyFrom(key.to_proto())
            item.value.double_value.value = value
        result.append(sliced)
    return result


def test_threshold_checks_name_every_threshold_and_what_failed():
    config, _ = evaluate.prepare_eval_config(demo_eval_config(), has_baseline=True)
    auc = tfma.metrics.MetricKey("auc", model_name="candidate", example_weighted=False)
    diff = auc._replace(is_diff=True)
    baseline_auc = auc._replace(model_name="baseline")
    metrics = _metrics(
        {
            (): {auc: 0.631, baseline_auc: 0.627, diff: 0.004},
            (("product", b"Mortgage"),): {auc: 0.55, baseline_auc: 0.56, diff: -0.01},
        }
    )
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    per_slice = validation.metric_validations_per_slice.add()
    per_slice.slice_key.SetInParent()
    failure = per_slice.failures.add()
    failure.metric_key.CopyFrom(diff.to_proto())
    failure.metric_value.double_value.value = 0.004
    auc_config = next(m for m in config.metrics_specs[0].metrics if m.class_name == "AUC")
    threshold = auc_config.per_slice_thresholds[0].threshold
    failure.metric_threshold.change_threshold.CopyFrom(threshold.change_threshold)

    checks = evaluate.threshold_checks(config, metrics, validation)

    assert [(c.name, c.kind, c.value, c.threshold, c.passed) for c in checks] == [
        (AUC_VALUE_CHECK, "value", 0.631, 0.6, True),
        (AUC_CHANGE_CHECK, "change", 0.004, 0.01, False),
    ]
    candidate = evaluate.ModelRef("/m", "f" * 64)
    blessing = evaluate.blessing_record(
        validation=validation,
        checks=checks,
        candidate=candidate,
        baseline=None,
        change_thresholds_skipped=False,
    )
    assert blessing["blessed"] is False
    assert blessing["candidate"] == {"path": "/m", "fingerprint": "f" * 64}
    assert [t["passed"] for t in blessing["thresholds"]] == [True, False]


def test_a_failure_no_threshold_accounts_for_still_gets_a_name_and_nothing_found_is_an_error():
    config, _ = evaluate.prepare_eval_config(demo_eval_config(), has_baseline=False)
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    per_slice = validation.metric_validations_per_slice.add()
    per_slice.slice_key.CopyFrom(slicer_lib.serialize_slice_key((("product", b"Mortgage"),)))
    failure = per_slice.failures.add()
    failure.metric_key.CopyFrom(tfma.metrics.MetricKey("recall").to_proto())
    failure.metric_value.double_value.value = 0.1
    failure.metric_threshold.value_threshold.lower_bound.value = 0.5
    # TFMA's words for a threshold's metric it never computed, and for a slice with no example.
    not_found = per_slice.failures.add(message="Metric not found.")
    not_found.metric_key.CopyFrom(tfma.metrics.MetricKey("precision").to_proto())
    not_found.metric_threshold.value_threshold.lower_bound.value = 0.5
    validation.missing_slices.add().feature_values["state"] = "ZZ"
    checks = evaluate.threshold_checks(config, [], validation)
    assert [(c.name, c.value, c.passed) for c in checks] == [
        ("recall >= 0.5 (product=Mortgage)", 0.1, False),
    ]
    assert evaluate.config_errors(validation) == [
        "TFMA computed no precision on slice product=Mortgage, which a threshold names",
        "no example falls into slice state=ZZ, which a threshold names",
    ]


def test_roc_pr_and_calibration_points_from_tfma_plot_data():
    matrices = metrics_for_slice_pb2.ConfusionMatrixAtThresholds()
    for threshold, tp, fp, tn, fn in ((0.2, 8, 6, 4, 2), (0.5, 5, 2, 8, 5), (0.9, 0, 0, 10, 10)):
        matrices.matrices.add(
            threshold=threshold,
            true_positives=tp,
            false_positives=fp,
            true_negatives=tn,
            false_negatives=fn,
        )
    assert evaluation_report.roc_points(matrices.matrices) == [
        (0.0, 0.0),
        (0.2, 0.5),
        (0.6, 0.8),
        (1.0, 1.0),
    ]
    assert evaluation_report.pr_points(matrices.matrices) == [(0.5, 5 / 7), (0.8, 8 / 14)]
    buckets = metrics_for_slice_pb2.CalibrationHistogramBuckets()
    bucket = buckets.buckets.add()
    bucket.num_weighted_examples.value = 4
    bucket.total_weighted_label.value = 1
    bucket.total_weighted_refined_prediction.value = 0.8
    buckets.buckets.add()  # empty: left out
    assert evaluation_report.calibration_points(buckets.buckets) == [(0.2, 0.25, 4)]


# --- Baseline choice and the command line ------------------------------------------------------


def test_baseline_is_the_given_model_or_the_newest_serving_version(tmp_path):
    serving = tmp_path / "serving"
    for version in ("100", "200", ".pushing-300-x"):
        (serving / version).mkdir(parents=True)
        (serving / version / "saved_model.pb").write_bytes(b"")
    (serving / "400").mkdir()  # no saved_model.pb: TF Serving would not load it either

    def config(**kwargs) -> evaluate.EvaluateConfig:
        return evaluate.EvaluateConfig(model_dir="m", examples_dir="e", output_dir="o", **kwargs)

    assert evaluate.resolve_baseline(config(serving_dir=str(serving))) == str(serving / "200")
    assert evaluate.resolve_baseline(config(baseline_model_dir="/b")) == "/b"
    assert evaluate.resolve_baseline(config(serving_dir=str(tmp_path / "none"))) is None
    (tmp_path / "empty").mkdir()
    assert evaluate.resolve_baseline(config(serving_dir=str(tmp_path / "empty"))) is None
    assert evaluate.resolve_baseline(config()) is None
    with pytest.raises(ValueError, match="not both"):
        config(serving_dir="s", baseline_model_dir="b")


def test_both_baseline_flags_are_a_usage_error(tmp_path):
    result = run_evaluate(
        "--model_dir=m",
        "--examples_dir=e",
        f"--output_dir={tmp_path / 'out'}",
        "--baseline_model_dir=b",
        "--serving_dir=s",
    )
    assert result.exit_code == cli.EXIT_USAGE
    assert "not both" in result.output


def test_unfinished_inputs_are_one_line_errors(tmp_path, ingested_2015_curated):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "model").mkdir()
    result = run_evaluate(
        f"--model_dir={tmp_path / 'model'}",
        f"--examples_dir={tmp_path / 'unfinished'}",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "no manifest.json" in result.output
    result = run_evaluate(
        f"--model_dir={tmp_path / 'model'}",
        f"--examples_dir={ingested_2015_curated}",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "is not a SavedModel" in result.output
    assert not (tmp_path / "out").exists()


# --- TFMA on the real 2015 data ------------------------------------------------------------------


def test_first_model_without_baseline_is_blessed_on_auc(evaluated_2015, ingested_2015_curated):
    assert (evaluated_2015 / layout.BLESSED_FILE).read_bytes() == b""
    assert not (evaluated_2015 / layout.NOT_BLESSED_FILE).exists()
    blessing = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())
    assert blessing["blessed"] is True
    assert blessing["baseline"] is None
    assert blessing["change_thresholds_skipped"] is True
    (check,) = blessing["thresholds"]
    assert check["name"] == AUC_VALUE_CHECK and check["passed"] is True
    assert 0.6 <= check["value"] < 0.7  # a logistic-regression-like model on this extract
    model_dir = blessing["candidate"]["path"]
    assert blessing["candidate"]["fingerprint"] == artifacts.directory_fingerprint(model_dir)

    manifest = json.loads((evaluated_2015 / artifacts.MANIFEST_FILE).read_text())
    ingest_manifest = json.loads((ingested_2015_curated / artifacts.MANIFEST_FILE).read_text())
    assert (
        manifest["counts"]["examples_evaluated"]
        == ingest_manifest["counts"]["rows_written"]["eval"]
    )
    assert manifest["inputs"]["model"]["fingerprint"] == blessing["candidate"]["fingerprint"]
    assert manifest["inputs"]["examples"] == artifacts.input_fingerprint(str(ingested_2015_curated))
    results = str(evaluated_2015 / layout.TFMA_DIR)
    validation = tfma.load_validation_result(results)
    assert validation.validation_ok and validation.rubber_stamp
    result = tfma.load_eval_result(results)
    slices = {evaluation_report.slice_name(key) for key, _ in result.slicing_metrics}
    assert {"overall", "product=Mortgage", "state=CA"} <= slices
    assert len(list(tfma.load_plots(results))) == len(slices)


def test_a_model_that_learned_nothing_is_not_blessed_even_without_baseline(
    trained_2015_steps, ingested_2015_curated, tmp_path
):
    output_dir = tmp_path / "evaluation"
    result = run_evaluate(
        f"--model_dir={trained_2015_steps(BAD_TRAIN_STEPS)}",
        f"--examples_dir={ingested_2015_curated}",
        f"--output_dir={output_dir}",
    )
    assert result.exit_code == cli.EXIT_NOT_BLESSED, result.output
    (error_line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert f"NOT_BLESSED: failed {AUC_VALUE_CHECK}" in error_line
    # Published anyway, for a person to read.
    assert (output_dir / layout.NOT_BLESSED_FILE).exists()
    assert not (output_dir / layout.BLESSED_FILE).exists()
    assert (output_dir / evaluate.REPORT_FILE).exists()
    assert (output_dir / artifacts.MANIFEST_FILE).exists()
    blessing = json.loads((output_dir / layout.BLESSING_JSON).read_text())
    (check,) = blessing["thresholds"]
    assert (check["name"], check["passed"]) == (AUC_VALUE_CHECK, False)
    assert check["value"] < 0.6


def test_examples_that_differ_from_ingest_counts_are_an_error(
    evaluated_2015, ingested_2015_curated, tmp_path
):
    tampered = tmp_path / "ingest"
    shutil.copytree(ingested_2015_curated, tampered)
    manifest = json.loads((tampered / artifacts.MANIFEST_FILE).read_text())
    manifest["counts"]["rows_written"]["eval"] += 1
    (tampered / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    blessing = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())
    config = evaluate.EvaluateConfig(
        model_dir=blessing["candidate"]["path"],
        examples_dir=str(tampered),
        output_dir=str(tmp_path / "evaluation"),
        eval_config=str(DEMO_EVAL_CONFIG),
    )
    with pytest.raises(cli.JobError, match="evaluated 9415 examples but ingest wrote 9416"):
        evaluate.run(config, direct_options())
    assert not (tmp_path / "evaluation").exists()


def test_report_has_per_slice_metrics_and_plots_and_renders_in_chromium(evaluated_2015, tmp_path):
    page = evaluated_2015 / evaluate.REPORT_FILE
    text = page.read_text()
    candidate = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())["candidate"]
    assert f"<h1>Evaluation of {html.escape(candidate['path'])}</h1>" in text
    for expected in ("BLESSED", AUC_VALUE_CHECK, "Metrics by product", "Metrics by state"):
        assert html.escape(expected) in text
    assert "product=Debt collection" in text and "state=TX" in text
    assert "FPR@0.25" in text  # fairness indicators per slice
    assert text.count('src="data:image/png;base64,') == 2  # overall plots, ROC by product
    pixels = browser.screenshot(page, tmp_path)
    assert browser.dark_pixels(pixels) > 10_000, "the screenshot is (nearly) blank: no text"
    colored = np.count_nonzero(np.ptp(pixels[..., :3].astype(int), axis=-1) > 60)
    assert colored > 1_000, "no coloured pixels: the plots were not drawn"


def test_python_m_on_two_worker_processes_gives_the_same_numbers(
    evaluated_2015, ingested_2015_curated, tmp_path
):
    first = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())
    output_dir = tmp_path / "evaluation"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_jobs.evaluate",
            f"--model_dir={first['candidate']['path']}",
            f"--examples_dir={ingested_2015_curated}",
            f"--output_dir={output_dir}",
            f"--eval_config={DEMO_EVAL_CONFIG}",
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines()[-1] == layout.BLESSED_FILE
    second = json.loads((output_dir / layout.BLESSING_JSON).read_text())
    assert second["thresholds"][0]["value"] == pytest.approx(first["thresholds"][0]["value"])
    manifest = json.loads((output_dir / artifacts.MANIFEST_FILE).read_text())
    assert manifest["counts"] == {"examples_evaluated": 9415}
