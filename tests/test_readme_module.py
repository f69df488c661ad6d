"""The README's user module, run as a new user would: copied out of the README, on a data set the
project never saw (tests/synthetic.py), through every stage with the commands the README shows."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from click.testing import CliRunner

from beam_jobs import evaluate, feedback, infer, model_card, push, transform
from beam_jobs.lib import artifacts, layout, model_contract
from model import train
from tests.conftest import REPO_ROOT
from tests.synthetic import CLASSES, write_animals_csv

README = REPO_ROOT / "README.md"
_MODULE_BLOCK = re.compile(r"```python\n# my_module.py\n(?P<code>.*?)```", re.DOTALL)


def readme_module(directory: pathlib.Path) -> pathlib.Path:
    """The README's `my_module.py`, written into `directory`."""
    found = _MODULE_BLOCK.search(README.read_text())
    assert found, "the README has no my_module.py block"
    path = directory / "my_module.py"
    path.write_text(found.group("code"))
    return path


def ok(main, *args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# The README's EvalConfig example for a model of one's own: thresholds on the model's own metric,
# in the metrics_specs.thresholds form; the model spec is left to the defaults.
USER_EVAL_CONFIG = """
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics { class_name: "SparseCategoricalAccuracy" }
  thresholds {
    key: "sparse_categorical_accuracy"
    value { value_threshold { lower_bound { value: 0.7 } } }
  }
}
slicing_specs {}
slicing_specs { feature_keys: "habitat" }
"""


def _predictions(output_dir: pathlib.Path) -> list[dict]:
    lines = []
    for path in sorted((output_dir / layout.PREDICTIONS_DIR).glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


@pytest.fixture(scope="module")
def readme_pipeline(animals_ingested, animals_schema, tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("readme_pipeline")
    module = readme_module(root)
    ok(
        transform.main,
        f"--examples_dir={animals_ingested}",
        f"--schema={animals_schema}",
        f"--output_dir={root / 'transform'}",
        f"--preprocessing_fn={module}:preprocessing_fn",
    )
    ok(
        train.main,
        f"--transform_dir={root / 'transform'}",
        f"--output_dir={root / 'train'}",
        f"--model_fn={module}:build_model",
        "--label_key=species_xf",
        '--hparams={"units": 12}',
        "--train_steps=150",
        "--batch_size=32",
    )
    manifest = artifacts.read_manifest(str(root / "train"), stages=("train",))
    return {"root": root, "export": pathlib.Path(manifest.extra["export_path"])}


def test_the_readme_module_trains_a_multiclass_model_that_names_its_classes(readme_pipeline):
    manifest = artifacts.read_manifest(str(readme_pipeline["root"] / "train"), stages=("train",))
    assert manifest.parameters["hparams"] == {"units": 12}
    assert manifest.extra["metrics"]["eval"]["sparse_categorical_accuracy"] > 0.8
    contract = model_contract.read_contract(str(readme_pipeline["export"]))
    assert contract.task == model_contract.MULTICLASS
    assert sorted(contract.classes) == sorted(CLASSES)


def test_every_stage_takes_the_user_model_with_no_demo_flags(
    readme_pipeline, animals_ingested, tmp_path
):
    """evaluate, push, infer, feedback and the model card with nothing but paths: what they need
    to know about the model they read from its contract."""
    export = readme_pipeline["export"]
    config = tmp_path / "eval_config.pbtxt"
    config.write_text(USER_EVAL_CONFIG)
    ok(
        evaluate.main,
        f"--model_dir={export}",
        f"--examples_dir={animals_ingested}",
        f"--eval_config={config}",
        f"--output_dir={tmp_path / 'evaluate'}",
    )
    blessing = json.loads((tmp_path / "evaluate" / layout.BLESSING_JSON).read_text())
    overall = [c for c in blessing["thresholds"] if c["slice"] == "overall"]
    assert overall and overall[0]["value"] > 0.7 and blessing["blessed"]
    ok(
        evaluate.main,  # No --eval_config: one made for the task from the model's contract.
        f"--model_dir={export}",
        f"--examples_dir={animals_ingested}",
        f"--output_dir={tmp_path / 'evaluate_default'}",
    )
    serving = tmp_path / "serving" / "animals"
    ok(
        push.main,
        f"--model_dir={export}",
        f"--evaluation_dir={tmp_path / 'evaluate'}",
        f"--serving_dir={serving}",
    )
    new_animals = write_animals_csv(tmp_path / "new_animals.csv", rows=120, seed=99)
    ok(
        infer.main,
        f"--model_dir={serving}",
        f"--input={new_animals}",
        "--id_column=animal_id",
        f"--output_dir={tmp_path / 'infer'}",
    )
    manifest = artifacts.read_manifest(str(tmp_path / "infer"), stages=("infer",))
    assert manifest.counts["rows_read"] == 120 and manifest.counts.get("rows_rejected", 0) == 0
    predictions = _predictions(tmp_path / "infer")
    assert len(predictions) == 120
    truth = {row.split(",")[0]: row.split(",")[5] for row in new_animals.read_text().splitlines()}
    hits = sum(p["top_class"] == truth[p["tracking_id"]] for p in predictions)
    assert hits / len(predictions) > 0.8
    assert all(len(p["scores"]) == len(CLASSES) for p in predictions)
    events = tmp_path / "feedback.jsonl"
    events.write_text(
        "\n".join(
            json.dumps(
                {"tracking_id": p["tracking_id"], "kind": "label", "value": truth[p["tracking_id"]]}
            )
            for p in predictions[:60]
        )
        + "\n"
    )
    ok(
        feedback.main,
        f"--predictions={tmp_path / 'infer'}",
        f"--feedback={events}",
        f"--output_dir={tmp_path / 'feedback'}",
    )
    labelled = artifacts.read_manifest(str(tmp_path / "feedback"), stages=("feedback",))
    assert sum(labelled.rows_written.values()) == 60
    card = tmp_path / "card.html"
    ok(
        model_card.main,
        f"--model_dir={export}",
        f"--evaluation_dir={tmp_path / 'evaluate'}",
        f"--output={card}",
    )
    page = card.read_text()
    assert all(name in page for name in CLASSES)


BINARY_EVAL_CONFIG = """
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics {
    class_name: "AUC"
    threshold { value_threshold { lower_bound { value: 0.8 } } }
  }
}
slicing_specs {}
"""


def test_a_binary_user_model_goes_from_evaluate_to_push_and_infer(
    animals_trained, animals_ingested, tmp_path
):
    """tests/user_module.py's binary model (a 0/1 label, no vocabulary) with the metrics.threshold
    form of an EvalConfig, pushed and scored: one probability per record."""
    export = animals_trained("binary")
    config = tmp_path / "eval_config.pbtxt"
    config.write_text(BINARY_EVAL_CONFIG)
    output = ok(
        evaluate.main,
        f"--model_dir={export}",
        f"--examples_dir={animals_ingested}",
        f"--eval_config={config}",
        f"--output_dir={tmp_path / 'evaluate'}",
    )
    assert "passed: auc >= 0.8 (overall)" in output.lower()
    serving = tmp_path / "serving" / "heavy"
    ok(
        push.main,
        f"--model_dir={export}",
        f"--evaluation_dir={tmp_path / 'evaluate'}",
        f"--serving_dir={serving}",
    )
    new_animals = write_animals_csv(tmp_path / "new_animals.csv", rows=80, seed=5)
    ok(
        infer.main,
        f"--model_dir={serving}",
        f"--input={new_animals}",
        f"--output_dir={tmp_path / 'infer'}",
    )
    predictions = _predictions(tmp_path / "infer")
    assert len(predictions) == 80
    assert all(isinstance(p["score"], float) and 0 <= p["score"] <= 1 for p in predictions)
    assert "top_class" not in predictions[0]
    heavy = [p["score"] for p in predictions if p["features"]["heavy"] == [1]]
    light = [p["score"] for p in predictions if p["features"]["heavy"] == [0]]
    assert heavy and light
    assert sum(heavy) / len(heavy) > sum(light) / len(light) + 0.3
