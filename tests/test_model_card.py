"""Tests of `python -m beam_jobs.model_card`: on the real 2015 data (a pushed model, a DP model),
and on the synthetic animals (a multi-class, a binary and a regression model of a user's module)."""

from __future__ import annotations

import contextlib
import csv
import html
import json
import pathlib
import re
import shutil

import pytest
from click.testing import CliRunner

from beam_jobs import evaluate, model_card, push
from beam_jobs.lib import cli, layout, model_contract
from tests import browser, synthetic
from tests.conftest import DEMO_EVAL_CONFIG, direct_options

# What the demo's card is told about its data (nothing in the framework knows the demo).
DEMO_FLAGS = (
    "--positive_value=Yes",
    "--date_feature=date_received",
    "--text_features=consumer_complaint_narrative",
)


def _card(*flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(model_card.main, list(flags))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def pushed_2015(evaluated_2015, tmp_path_factory) -> pathlib.Path:
    """The blessed demo model of `evaluated_2015`, pushed: its version directory."""
    serving = tmp_path_factory.mktemp("serving_card")
    candidate = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())["candidate"]
    version = push.push(push.PushConfig(str(serving), candidate["path"], str(evaluated_2015)))
    return serving / str(version)


def test_card_of_a_pushed_model_lists_slices_data_and_limitations(pushed_2015, tmp_path):
    output = tmp_path / "card.html"
    exit_code, log = _card(f"--model_dir={pushed_2015}", f"--output={output}", *DEMO_FLAGS)
    assert exit_code == 0, log
    text = html.unescape(output.read_text())
    for expected in (
        f"Model card: {pushed_2015}",
        "pushed version",
        "consumer_disputed (from the model contract)",  # the label, from the export's contract
        "Metrics by product",
        "Metrics by state",
        "product=Debt collection",
        "product=Mortgage",
        "state=TX",
        "state=CA",
        "FPR@0.25",
        "FNR@0.50",
        "Worst slices",
        "Trained without differential privacy.",
        "consumer_complaints_cfpb_2015.csv",
        "2015-01-01",  # date span of date_received in the ingested examples
        "2015-03-19",
        "18,741",  # training rows
        "Sparse label: 16.9% of the 18,741 training examples",
        "No consumer_complaint_narrative in the training data",
        "eval examples (",  # slices with few examples, named
        "none given: the model function's defaults",  # no --hparams
        "schemas/consumer_complaints/schema.pbtxt",
    ):
        assert expected in text, expected
    worst = text[text.index("Worst slices") : text.index("Known limitations")]
    assert worst.count("<tr>") == 1 + model_card.WORST_SLICES_SHOWN
    pixels = browser.screenshot(output, tmp_path)
    assert browser.dark_pixels(pixels) > 10_000, "the screenshot is (nearly) blank"
    # A card replaces an earlier card, never another file, and a directory is no page to write.
    assert _card(f"--model_dir={pushed_2015}", f"--output={output}", *DEMO_FLAGS)[0] == 0
    notes = tmp_path / "notes.html"
    notes.write_text("<html><title>My notes</title></html>")
    for target, message in ((notes, "exists and is not a model card"), (tmp_path, "a directory")):
        exit_code, log = _card(f"--model_dir={pushed_2015}", f"--output={target}")
        assert exit_code == cli.EXIT_ERROR and message in log and "Traceback" not in log
        assert len(log.strip().splitlines()) == 1, log
    assert notes.read_text() == "<html><title>My notes</title></html>"


def test_worst_slices_have_the_lowest_auc_among_slices_with_enough_examples(evaluated_2015):
    slices = model_card.slice_metrics(str(evaluated_2015))
    worst = model_card.worst_slices(slices, min_examples=100)
    eligible = [s for s in slices if s.group != "overall" and s.examples >= 100]
    assert len(worst) == model_card.WORST_SLICES_SHOWN
    assert all(item.examples >= 100 for item in worst)
    assert max(item.auc for item in worst) <= min(
        item.auc for item in eligible if item not in worst
    )
    assert {item.group for item in slices} == {"overall", "product", "state"}


def test_card_of_a_dp_model_reports_epsilon(trained_2015_dp, ingested_2015_curated, tmp_path):
    export = trained_2015_dp["manifest"].extra["export_path"]
    evaluation = tmp_path / "evaluation"
    config = evaluate.EvaluateConfig(
        model_dir=export,
        examples_dir=str(ingested_2015_curated),
        output_dir=str(evaluation),
        eval_config=str(DEMO_EVAL_CONFIG),
    )
    with contextlib.suppress(cli.NotBlessedError):  # a card describes a model blessed or not
        evaluate.run(config, direct_options())
    output = tmp_path / "card.html"
    exit_code, log = _card(
        f"--model_dir={export}", f"--evaluation_dir={evaluation}", f"--output={output}", *DEMO_FLAGS
    )
    assert exit_code == 0, log
    text = html.unescape(output.read_text())
    privacy = trained_2015_dp["manifest"].extra["privacy"]
    assert f"ε = {privacy['epsilon']:.3g} at δ = 1e-05" in text
    assert "noise_multiplier" in text and "l2_norm_clip" in text
    assert "hparam wide_units" in text  # DP_2015's --hparams
    assert "The (ε, δ) guarantee covers the model's weights" in text
    assert "state=TX" in text and "product=Mortgage" in text


def test_card_of_a_saved_model_without_evaluation_is_a_usage_error(tmp_path):
    exit_code, log = _card(f"--model_dir={tmp_path}", f"--output={tmp_path / 'card.html'}")
    assert exit_code == 2
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "give --evaluation_dir" in errors[0], log


# EvalConfigs a user of the animals data writes (TFMA's documented forms, nothing of the demo):
# per-class precision and recall are TFMA's binarized metrics, keyed by class id.
_ANIMALS_MODEL_SPEC = """
model_specs {
  signature_name: "serving_default"
  prediction_key: "outputs"
  preprocessing_function_names: "transform_features"
  label_key: "%s"
}
options { include_default_metrics { value: false } }
slicing_specs {}
slicing_specs { feature_keys: "habitat" }
"""
ANIMALS_METRICS = {
    "multiclass": """
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics {
    class_name: "SparseCategoricalAccuracy"
    threshold { value_threshold { lower_bound { value: 0.5 } } }
  }
  metrics { class_name: "MultiClassConfusionMatrixPlot" }
}
metrics_specs {
  binarize { class_ids { values: [0, 1, 2] } }
  metrics { class_name: "Precision" }
  metrics { class_name: "Recall" }
}
""",
    "binary": """
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics { class_name: "BinaryAccuracy" }
  metrics { class_name: "AUC" threshold { value_threshold { lower_bound { value: 0.5 } } } }
}
""",
    "regression": """
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics {
    class_name: "MeanSquaredError"
    threshold { value_threshold { upper_bound { value: 1000.0 } } }
  }
  metrics { class_name: "MeanAbsoluteError" }
}
""",
}


@pytest.fixture(scope="module")
def animals_evaluated(animals_trained, animals_ingested, tmp_path_factory):
    """`animals_evaluated(task)`: (export, evaluation dir) of the animals model of that task."""
    from tests.conftest import ANIMAL_TASKS

    evaluations: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}

    def evaluated(task: str) -> tuple[pathlib.Path, pathlib.Path]:
        if task not in evaluations:
            root = tmp_path_factory.mktemp(f"animals_card_{task}")
            eval_config = root / "eval_config.pbtxt"
            label_key = ANIMAL_TASKS[task][2]
            eval_config.write_text(_ANIMALS_MODEL_SPEC % label_key + ANIMALS_METRICS[task])
            export = animals_trained(task)
            config = evaluate.EvaluateConfig(
                model_dir=str(export),
                examples_dir=str(animals_ingested),
                output_dir=str(root / "evaluation"),
                eval_config=str(eval_config),
            )
            evaluate.run(config, direct_options())
            evaluations[task] = export, root / "evaluation"
        return evaluations[task]

    return evaluated


def _animals_card(evaluated, output: pathlib.Path, *flags: str) -> str:
    """The text of the card of an evaluated animals model (HTML entities decoded)."""
    export, evaluation = evaluated
    exit_code, log = _card(
        f"--model_dir={export}", f"--evaluation_dir={evaluation}", f"--output={output}", *flags
    )
    assert exit_code == 0, log
    return html.unescape(output.read_text())


def _tables(text: str) -> list[list[list[str]]]:
    """Every table of a page: rows of cells, header row first."""
    tables = re.findall(r"<table>(.*?)</table>", text, flags=re.DOTALL)
    return [
        [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in table.split("<tr>")[1:]]
        for table in tables
    ]


def _table(text: str, first_heading: str, after: str = "") -> list[list[str]]:
    """The first table (after the text `after`) whose header starts with `first_heading`."""
    return next(t for t in _tables(text[text.index(after) :]) if t[0][0] == first_heading)


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def _animals_rows(animals_csv: pathlib.Path) -> list[dict[str, str]]:
    with animals_csv.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_card_of_a_multiclass_model_has_per_class_metrics_and_a_confusion_matrix(
    animals_evaluated, animals_csv, tmp_path
):
    export, evaluation = animals_evaluated("multiclass")
    output = tmp_path / "card.html"
    flags = ("--text_features=colour", "--text_features=habitat,colour")  # repeated, or a list
    text = _animals_card(animals_evaluated("multiclass"), output, *flags)
    classes = model_contract.read_contract(str(export)).classes
    assert sorted(classes) == sorted(synthetic.CLASSES)
    assert "multiclass_classification (from the model contract)" in text
    assert "species (from the model contract)" in text
    assert "AUC" not in text and "positive" not in text  # ROC and AUC need a binary label
    # One row per class id, named from the contract, with TFMA's binarized precision and recall.
    per_class = _table(text, "class id")
    assert per_class[0] == ["class id", "class", "precision", "recall"]
    assert [row[:2] for row in per_class[1:]] == [[str(i), name] for i, name in enumerate(classes)]
    assert all(0.5 < _number(cell) <= 1 for row in per_class[1:] for cell in row[2:])
    # TFMA's confusion matrix of the eval examples: a row's total is the class's eval rows the card
    # counted in the data itself, and the diagonal's share is the accuracy TFMA computed.
    matrix = _table(text, "actual \\ predicted")
    assert matrix[0] == ["actual \\ predicted", *classes, "examples"]
    counts = {row[0]: [int(_number(cell)) for cell in row[1:]] for row in matrix[1:]}
    assert list(counts) == list(classes)
    distribution = _table(text, "class")
    assert distribution[0] == ["class", "train rows", "train share", "eval rows", "eval share"]
    eval_rows = {row[0]: int(_number(row[3])) for row in distribution[1:]}
    assert {name: cells[-1] for name, cells in counts.items()} == eval_rows
    assert all(cells[-1] == sum(cells[:-1]) for cells in counts.values())
    manifest = json.loads((evaluation / layout.MANIFEST_FILE).read_text())
    assert sum(eval_rows.values()) == manifest["counts"][layout.EXAMPLES_EVALUATED]
    diagonal = sum(counts[name][index] for index, name in enumerate(classes))
    overall = _table(text, "slice", after="Metrics overall")
    assert overall[0] == ["slice", "examples", "accuracy"]
    assert _number(overall[1][2]) == pytest.approx(diagonal / sum(eval_rows.values()), abs=5e-4)
    # The class distribution of both splits is the CSV's, and text presence is counted per flag.
    rows = _animals_rows(animals_csv)
    for row in distribution[1:]:
        assert int(_number(row[1])) + int(_number(row[3])) == sum(
            1 for animal in rows if animal["species"] == row[0]
        )
    splits = _table(text, "split")
    assert splits[0] == ["split", "rows", "rows with colour", "rows with habitat"]
    with_colour = sum(int(_number(row[2])) for row in splits[1:])
    assert with_colour == sum(1 for animal in rows if animal["colour"]) < len(rows)
    assert "habitat=forest" in text and "Lowest accuracy among slices" in text
    assert "Rarest class in training: " in text and "Lowest recall: class " in text
    assert browser.dark_pixels(browser.screenshot(output, tmp_path)) > 10_000


def test_card_of_a_binary_model_with_an_integer_label_counts_positives_of_1(
    animals_evaluated, animals_csv, tmp_path
):
    text = _animals_card(animals_evaluated("binary"), tmp_path / "card.html")
    assert "binary_classification (from the model contract)" in text
    assert ["positive value", "1"] in _table(text, "property")
    splits = _table(text, "split")
    assert splits[0] == ["split", "rows", "positive labels", "positive share"]
    heavy = sum(1 for animal in _animals_rows(animals_csv) if animal["heavy"] == "1")
    assert sum(int(_number(row[2])) for row in splits[1:]) == heavy
    overall = _table(text, "slice", after="Metrics overall")
    assert overall[0] == ["slice", "examples", "AUC", "accuracy"]
    assert 0.5 < _number(overall[1][2]) <= 1
    assert "Lowest AUC among slices" in text and "Confusion matrix" not in text


def test_card_of_a_regression_model_has_mse_mae_and_the_label_range(
    animals_evaluated, animals_csv, tmp_path
):
    text = _animals_card(animals_evaluated("regression"), tmp_path / "card.html")
    assert "regression (from the model contract)" in text
    splits = _table(text, "split")
    assert splits[0] == ["split", "rows", "weight mean", "weight min", "weight max"]
    weights = [float(animal["weight"]) for animal in _animals_rows(animals_csv)]
    assert min(_number(row[3]) for row in splits[1:]) == pytest.approx(min(weights), rel=1e-3)
    assert max(_number(row[4]) for row in splits[1:]) == pytest.approx(max(weights), rel=1e-3)
    overall = _table(text, "slice", after="Metrics overall")
    assert overall[0] == ["slice", "examples", "MSE", "MAE"]
    mse, mae = _number(overall[1][2]), _number(overall[1][3])
    assert mae > 0 and mae**2 <= mse * (1 + 1e-3)  # the mean of squares bounds the squared mean
    assert "Highest MSE among slices" in text and "Trained on weight from " in text
    assert "Class distribution" not in text and "AUC" not in text


def test_card_without_a_contract_takes_the_task_from_the_evaluation(animals_evaluated, tmp_path):
    export, evaluation = animals_evaluated("multiclass")
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    (copy / model_contract.ASSETS_DIR / model_contract.CONTRACT_FILE).unlink()
    text = _animals_card((copy, evaluation), tmp_path / "card.html")
    assert "multiclass_classification (from what the evaluation computed" in text
    assert "give --label_key to count labels per split" in text
    assert [row[:2] for row in _table(text, "class id")[1:]] == [["0", "0"], ["1", "1"], ["2", "2"]]
    text = _animals_card((copy, evaluation), tmp_path / "card.html", "--label_key=species")
    assert "species (from --label_key)" in text
    assert sorted(row[0] for row in _table(text, "class")[1:]) == sorted(synthetic.CLASSES)


def test_bad_card_flags_and_contracts_are_one_line_errors(animals_evaluated, tmp_path):
    export, evaluation = animals_evaluated("multiclass")
    broken = tmp_path / "export"
    shutil.copytree(export, broken)
    (broken / model_contract.ASSETS_DIR / model_contract.CONTRACT_FILE).write_text("[]")
    output = tmp_path / "card.html"
    for model, flag, code, message in (
        (export, "--positive_value=cat", 2, "--positive_value is for a binary model"),
        (export, "--label_key=name", 1, "--label_key=name is not a feature of the raw schema"),
        (export, "--date_feature=legs", 1, "--date_feature=legs is not a text feature"),
        (export, "--text_features=colour,size", 1, "--text_features=size is not a text feature"),
        (broken, "--min_slice_examples=1", 1, "is not a model contract"),
    ):
        exit_code, log = _card(
            f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--output={output}", flag
        )
        errors = [line for line in log.splitlines() if line.lower().startswith("error")]
        assert exit_code == code and len(errors) == 1 and message in errors[0], log
        assert "Traceback" not in log and not output.exists()
