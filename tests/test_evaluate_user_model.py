"""Evaluate on a user's own models: the synthetic animals (tests/synthetic.py) with the models of
tests/user_module.py, multi-class, binary and regression, with no knowledge of the demo.

Without `--eval_config` the job evaluates the metrics of the model's task; with one, every form of
threshold TFMA documents decides the blessing; a config that would evaluate nothing is refused in
one line (exit 1). One evaluate run per case, on the ~180 examples of the animals' eval split.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import tensorflow_model_analysis as tfma
from click.testing import CliRunner, Result
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_model_analysis.proto import config_pb2

from beam_jobs import evaluate
from beam_jobs.lib import artifacts, cli, evaluation_report, layout, model_contract, tfma_config
from tests.synthetic import CLASSES
from tests.test_expected_failures import assert_one_line_error

# What TFMA computes on each task by default, by metric name.
TASK_METRIC_NAMES = {
    "multiclass": {"example_count", "sparse_categorical_accuracy", "precision", "recall"},
    "binary": {"example_count", "binary_accuracy", "auc", "precision", "recall"},
    "regression": {"example_count", "mean_squared_error", "mean_absolute_error"},
}
VALUE = "value_threshold { lower_bound { value: %s } }"
CHANGE = "change_threshold { direction: HIGHER_IS_BETTER absolute { value: %s } }"


def run_evaluate(model: pathlib.Path, examples: pathlib.Path, output: pathlib.Path, *args: str):
    return CliRunner().invoke(
        evaluate.main,
        [f"--model_dir={model}", f"--examples_dir={examples}", f"--output_dir={output}", *args],
    )


def write_config(path: pathlib.Path, text: str) -> pathlib.Path:
    text_format.Parse(text, config_pb2.EvalConfig())  # A typo here is the test's, not the job's.
    path.write_text(text)
    return path


def blessing(output: pathlib.Path) -> dict:
    return json.loads((output / layout.BLESSING_JSON).read_text())


def tfma_metrics(output: pathlib.Path, model: str = "") -> dict[tuple, dict[tuple, float]]:
    """TFMA's own numbers of one model, by slice, then by (metric name, sub key)."""
    results = tfma.load_metrics(str(output / layout.TFMA_DIR))
    return {
        sliced.slice_key: {
            (key.name, key.sub_key): value
            for key, value in sliced.values.items()
            if key.model_name == model and not key.is_diff
        }
        for sliced in evaluation_report.sliced_values(results)
    }


@pytest.fixture(scope="module")
def evaluated_by_default(animals_trained, animals_ingested, tmp_path_factory):
    """`evaluated_by_default(task)`: (result, output dir) of evaluate without --eval_config."""
    runs: dict[str, tuple[Result, pathlib.Path]] = {}

    def evaluated(task: str) -> tuple[Result, pathlib.Path]:
        if task not in runs:
            output = tmp_path_factory.mktemp(f"animals_evaluate_{task}") / "out"
            runs[task] = (run_evaluate(animals_trained(task), animals_ingested, output), output)
        return runs[task]

    return evaluated


# --- Without --eval_config: the task's metrics, no threshold -----------------------------------


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_without_eval_config_the_tasks_metrics_are_evaluated_and_blessed_without_a_bar(
    task, evaluated_by_default, animals_trained, animals_ingested
):
    result, output = evaluated_by_default(task)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [evaluate.NO_THRESHOLD, layout.BLESSED_FILE]
    record = blessing(output)
    assert record["blessed"] is True and record["thresholds"] == []
    assert tfma.load_validation_result(str(output / layout.TFMA_DIR)).validation_ok
    contract = model_contract.read_contract(str(animals_trained(task)))
    run_config = tfma.load_eval_result(str(output / layout.TFMA_DIR)).config
    (spec,) = run_config.model_specs
    assert (spec.signature_name, spec.prediction_key) == ("serving_default", "outputs")
    assert spec.label_key == contract.transformed_label_key
    assert list(spec.preprocessing_function_names) == ["transform_features"]
    overall = tfma_metrics(output)[()]
    assert {name for name, _ in overall} == TASK_METRIC_NAMES[task]
    manifest = artifacts.read_manifest(str(output))
    ingested = artifacts.read_manifest(str(animals_ingested)).rows_written["eval"]
    assert manifest.counts == {"examples_evaluated": ingested} and ingested > 150
    assert overall[("example_count", None)] == ingested
    assert "eval_config" not in manifest.inputs
    assert manifest.extra["eval_config"].startswith(f"default for a {contract.task} model")
    assert "No threshold was configured" in (output / evaluate.REPORT_FILE).read_text()


def test_a_multi_class_model_reports_accuracy_per_class_metrics_and_a_confusion_matrix(
    evaluated_by_default, animals_trained
):
    _, output = evaluated_by_default("multiclass")
    contract = model_contract.read_contract(str(animals_trained("multiclass")))
    assert sorted(contract.classes) == sorted(CLASSES)
    overall = tfma_metrics(output)[()]
    assert overall[("sparse_categorical_accuracy", None)] > 0.8
    for class_id in range(len(CLASSES)):
        sub_key = tfma.metrics.SubKey(class_id=class_id)
        assert 0.5 < overall[("precision", sub_key)] <= 1.0
        assert 0.5 < overall[("recall", sub_key)] <= 1.0
    page = (output / evaluate.REPORT_FILE).read_text()
    for heading in ("Per class (overall)", "Confusion matrix (overall)"):
        assert heading in page
    for name in CLASSES:
        assert f"<td>{name}</td>" in page and f"precision ({name})" in page
    assert "ROC" not in page and "data:image/png" not in page  # AUC needs a binary label


def test_a_binary_model_reports_roc_and_calibration(evaluated_by_default):
    _, output = evaluated_by_default("binary")
    assert tfma_metrics(output)[()][("auc", None)] > 0.9
    page = (output / evaluate.REPORT_FILE).read_text()
    assert page.count('src="data:image/png;base64,') == 1  # ROC, PR and calibration, overall
    assert "Per class" not in page and "Confusion matrix" not in page


def test_a_regression_model_reports_its_errors(evaluated_by_default):
    _, output = evaluated_by_default("regression")
    overall = tfma_metrics(output)[()]
    assert 0 < overall[("mean_absolute_error", None)] ** 2 <= overall[("mean_squared_error", None)]
    page = (output / evaluate.REPORT_FILE).read_text()
    assert "mean_squared_error" in page and "mean_absolute_error" in page
    assert "data:image/png" not in page


# --- Every threshold form, value and change -----------------------------------------------------

# Four forms on a multi-class model: a metric's `threshold` (every slice), a metric's
# `per_slice_thresholds`, and a MetricsSpec's `thresholds` and `per_slice_thresholds` keyed by
# metric name, the form (TFMA's validator found nothing under those keys on its own).
FORMS_CONFIG = """
model_specs {}
options { include_default_metrics { value: false } }
slicing_specs {}
slicing_specs { feature_keys: "habitat" }
metrics_specs {
  metrics { class_name: "ExampleCount" threshold { %(value_count)s %(change)s } }
  metrics { class_name: "SparseCategoricalAccuracy" }
  thresholds { key: "sparse_categorical_accuracy" value { %(value)s %(change)s } }
}
metrics_specs {
  binarize { class_ids { values: [0, 1, 2] } }
  metrics {
    class_name: "Recall"
    per_slice_thresholds { slicing_specs {} threshold { %(value)s %(change)s } }
  }
  metrics { class_name: "Precision" }
  per_slice_thresholds {
    key: "precision"
    value { thresholds { slicing_specs {} threshold { %(value)s %(change)s } } }
  }
}
"""


def forms_config(path: pathlib.Path, bound: float, change: float, count: int) -> pathlib.Path:
    values = {"value": VALUE % bound, "change": CHANGE % change, "value_count": VALUE % count}
    return write_config(path, FORMS_CONFIG % values)


def expected_checks(classes: tuple[str, ...], slices: list[str]) -> set[str]:
    """The metric of every (metric, slice) check of FORMS_CONFIG, value and change."""
    overall = [f"{metric} ({name})" for metric in ("recall", "precision") for name in classes]
    names = {(metric, "overall") for metric in overall}
    names |= {
        (metric, s) for metric in ("example_count", "sparse_categorical_accuracy") for s in slices
    }
    return {(metric, s, kind) for metric, s in names for kind in ("value", "change")}


def test_every_threshold_form_is_checked_with_value_and_change_against_a_baseline(
    animals_trained, animals_ingested, tmp_path
):
    model = animals_trained("multiclass")
    config = forms_config(tmp_path / "forms.pbtxt", bound=0.8, change=-0.01, count=1)
    output = tmp_path / "evaluation"
    # The model is its own baseline: every change is 0, every value its TFMA value.
    result = run_evaluate(
        model, animals_ingested, output, f"--eval_config={config}", f"--baseline_model_dir={model}"
    )
    assert result.exit_code == 0, result.output
    record = blessing(output)
    assert record["blessed"] is True and record["change_thresholds_skipped"] is False
    checks = record["thresholds"]
    classes = model_contract.read_contract(str(model)).classes
    slices = ["overall", "habitat=city", "habitat=farm", "habitat=forest"]
    assert {(c["metric"], c["slice"], c["kind"]) for c in checks} == expected_checks(
        classes, slices
    )
    assert all(check["passed"] for check in checks)
    measured = tfma_metrics(output, model="candidate")
    for check in checks:
        if check["kind"] == "change":
            assert check["value"] == 0.0
    accuracy = next(
        c for c in checks if c["name"] == "sparse_categorical_accuracy >= 0.8 (overall)"
    )
    assert accuracy["value"] == pytest.approx(measured[()][("sparse_categorical_accuracy", None)])


def test_every_threshold_form_fails_the_model_where_its_bound_is_not_met(
    animals_trained, animals_ingested, tmp_path
):
    model = animals_trained("multiclass")
    config = forms_config(tmp_path / "forms.pbtxt", bound=0.999, change=0.01, count=10_000)
    output = tmp_path / "evaluation"
    result = run_evaluate(
        model, animals_ingested, output, f"--eval_config={config}", f"--baseline_model_dir={model}"
    )
    assert result.exit_code == cli.EXIT_NOT_BLESSED, result.output
    checks = blessing(output)["thresholds"]
    failed = {(c["metric"].split(" ")[0], c["kind"]) for c in checks if not c["passed"]}
    for metric in ("example_count", "sparse_categorical_accuracy", "recall", "precision"):
        assert {(metric, "value"), (metric, "change")} <= failed
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "sparse_categorical_accuracy >= 0.999 (overall)" in error
    assert (output / layout.NOT_BLESSED_FILE).exists()


def test_keyed_thresholds_move_into_their_metric_under_the_keys_tfma_computes():
    config = text_format.Parse(
        f"""
        metrics_specs {{
          metrics {{ class_name: "AUC" }}
          metrics {{ class_name: "BinaryAccuracy" threshold {{ {VALUE % 0.5} }} }}
          thresholds {{ key: "auc" value {{ {VALUE % 0.7} }} }}
          thresholds {{ key: "binary_accuracy" value {{ {CHANGE % 0.01} }} }}
          per_slice_thresholds {{
            key: "auc" value {{ thresholds {{ slicing_specs {{}} threshold {{ {VALUE % 0.8} }} }} }}
          }}
          cross_slice_thresholds {{
            key: "auc"
            value {{
              thresholds {{
                cross_slicing_specs {{ baseline_spec {{}} slicing_specs {{ feature_keys: "a" }} }}
                threshold {{ {CHANGE % 0.1} }}
              }}
            }}
          }}
        }}
        """,
        config_pb2.EvalConfig(),
    )
    inlined = tfma_config.inline_keyed_thresholds(config)
    (spec,) = inlined.metrics_specs
    assert not spec.thresholds and not spec.per_slice_thresholds and not spec.cross_slice_thresholds
    auc, accuracy = spec.metrics
    assert auc.threshold.value_threshold.lower_bound.value == 0.7
    assert auc.per_slice_thresholds[0].threshold.value_threshold.lower_bound.value == 0.8
    assert auc.cross_slice_thresholds[0].threshold.change_threshold.absolute.value == 0.1
    assert accuracy.threshold.value_threshold.lower_bound.value == 0.5
    assert accuracy.threshold.change_threshold.absolute.value == 0.01
    keys = tfma.metrics.metric_thresholds_from_metrics_specs(inlined.metrics_specs)
    assert {key.example_weighted for key in keys} == {False}  # As TFMA computes them.


def test_model_spec_fields_the_export_fixes_are_filled_from_the_contract():
    contract = model_contract.ModelContract(
        task=model_contract.MULTICLASS, transformed_label_key="species_xf", label_key="species"
    )
    (spec,) = tfma_config.with_model_defaults(config_pb2.EvalConfig(), contract).model_specs
    assert (spec.signature_name, spec.prediction_key, spec.label_key) == (
        "serving_default",
        "outputs",
        "species_xf",
    )
    assert list(spec.preprocessing_function_names) == ["transform_features"]
    given = text_format.Parse(
        'model_specs { label_key: "species" prediction_key: "scores" }', config_pb2.EvalConfig()
    )
    (spec,) = tfma_config.with_model_defaults(given, contract).model_specs
    assert (spec.label_key, spec.prediction_key) == ("species", "scores")
    assert not spec.preprocessing_function_names
    (spec,) = tfma_config.with_model_defaults(config_pb2.EvalConfig(), None).model_specs
    assert (spec.signature_name, spec.prediction_key, spec.label_key) == (
        "serving_default",
        "outputs",
        "",
    )


# --- Configs that would evaluate nothing: one line, exit 1, nothing published -----------------

CONFIG_ERRORS = {
    "threshold on a metric never computed": (
        f'metrics_specs {{ metrics {{ class_name: "ExampleCount" }} '
        f'thresholds {{ key: "auc" value {{ {VALUE % 0.5} }} }} }}',
        ["names a metric its metrics_spec does not compute", "'auc'", "example_count"],
    ),
    "threshold on a slice never computed": (
        f'slicing_specs {{}} metrics_specs {{ metrics {{ class_name: "ExampleCount" '
        f'per_slice_thresholds {{ slicing_specs {{ feature_keys: "colour" }} '
        f"threshold {{ {VALUE % 1} }} }} }} }}",
        ["slice colour", 'add slicing_specs { feature_keys: "colour" }'],
    ),
    "label the examples do not have": (
        'model_specs { label_key: "no_such_label" } '
        'metrics_specs { metrics { class_name: "ExampleCount" } }',
        ["label_key 'no_such_label' is neither a feature of the examples (", "species"],
    ),
    "prediction key the model does not return": (
        'model_specs { prediction_key: "probabilities" } '
        'metrics_specs { metrics { class_name: "ExampleCount" } }',
        ["prediction_key 'probabilities'", "returns outputs"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_a_config_that_would_evaluate_nothing_is_refused_before_the_pipeline(
    case, animals_trained, animals_ingested, tmp_path
):
    text, fragments = CONFIG_ERRORS[case]
    config = write_config(tmp_path / "config.pbtxt", text)
    output = tmp_path / "evaluation"
    result = run_evaluate(
        animals_trained("multiclass"), animals_ingested, output, f"--eval_config={config}"
    )
    assert_one_line_error(result, *fragments)
    assert not output.exists() and not pathlib.Path(f"{output}.failed").exists()


def test_a_threshold_slice_no_example_falls_into_is_an_error_not_a_failed_model(
    animals_trained, animals_ingested, tmp_path
):
    config = write_config(
        tmp_path / "config.pbtxt",
        f"""
        slicing_specs {{}}
        slicing_specs {{ feature_keys: "habitat" }}
        metrics_specs {{
          metrics {{
            class_name: "SparseCategoricalAccuracy"
            per_slice_thresholds {{
              slicing_specs {{ feature_values {{ key: "habitat" value: "sea" }} }}
              threshold {{ {VALUE % 0.5} }}
            }}
          }}
        }}
        """,
    )
    output = tmp_path / "evaluation"
    result = run_evaluate(
        animals_trained("multiclass"), animals_ingested, output, f"--eval_config={config}"
    )
    assert_one_line_error(
        result,
        "no example falls into slice habitat=sea, which a threshold names",
        "nothing published",
    )
    assert not output.exists()
    assert not (pathlib.Path(f"{output}.failed") / layout.BLESSING_JSON).exists()


def test_without_contract_or_eval_config_the_job_asks_for_one(
    animals_trained, animals_ingested, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(animals_trained("binary"), model)
    (model / model_contract.ASSETS_DIR / model_contract.CONTRACT_FILE).unlink()
    result = run_evaluate(model, animals_ingested, tmp_path / "evaluation")
    assert_one_line_error(result, "carries no model contract", "pass --eval_config=")


def test_an_empty_split_is_an_error(animals_trained, animals_ingested, tmp_path):
    examples = tmp_path / "ingest"
    shutil.copytree(animals_ingested, examples)
    manifest = json.loads((examples / artifacts.MANIFEST_FILE).read_text())
    manifest["counts"]["rows_written"]["eval"] = 0
    (examples / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    result = run_evaluate(animals_trained("binary"), examples, tmp_path / "evaluation")
    assert_one_line_error(result, "--split=eval", "has no examples", "nothing to evaluate")


def test_examples_typed_otherwise_than_the_models_raw_schema_are_refused_naming_the_feature(
    animals_trained, animals_ingested, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(animals_trained("binary"), model)
    schema_path = model / model_contract.ASSETS_DIR / model_contract.RAW_SCHEMA_FILE
    schema = model_contract.read_raw_schema(str(model))
    (legs,) = [feature for feature in schema.feature if feature.name == "legs"]
    assert legs.type == schema_pb2.INT
    legs.type = schema_pb2.BYTES  # As if trained on legs as text: the examples have integers.
    schema_path.write_text(text_format.MessageToString(schema))
    result = run_evaluate(model, animals_ingested, tmp_path / "evaluation")
    assert_one_line_error(
        result, "cannot read the examples", "feature legs is INT there but BYTES", "trained on"
    )
