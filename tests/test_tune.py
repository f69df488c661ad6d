"""model.tune on real transform outputs: Keras Tuner searches whose best hparams train takes."""

from __future__ import annotations

import json
import pathlib

import keras_tuner as kt
import pytest
from click.testing import CliRunner

from model import model as demo_model
from model import train, tune
from tests import user_module
from tests.conftest import ANIMAL_BATCH_SIZE, ANIMAL_TASKS, USER_MODULE

SEARCH_STEPS = 20  # Per trial: enough to tell 4 hidden units from 32 on the animals.
JSON_SPACE = {
    "hidden_units": [4, 32],
    "learning_rate": {"min": 0.005, "max": 0.05, "sampling": "log"},
}


def animal_search_space(hp: kt.HyperParameters) -> dict:
    """The user's own search space for tests/user_module.py's models."""
    return {
        "hidden_units": hp.Int("hidden_units", 4, 32, step=28),
        "learning_rate": hp.Choice("learning_rate", [0.005, 0.05]),
    }


def tune_config(transform_dir: pathlib.Path, output_dir: pathlib.Path, **flags) -> tune.TuneConfig:
    _, model_fn, label_key = ANIMAL_TASKS["multiclass"]
    defaults = {
        "model_fn": f"{USER_MODULE}:{model_fn}",
        "label_key": label_key,
        "search_space": "tests.test_tune:animal_search_space",
        "max_trials": 2,
        "train_steps": SEARCH_STEPS,
        "batch_size": ANIMAL_BATCH_SIZE,
    }
    return tune.TuneConfig(str(transform_dir), str(output_dir), **{**defaults, **flags})


@pytest.fixture(scope="module")
def animals_tuned(animals_transformed, tmp_path_factory) -> pathlib.Path:
    """A random search of 2 trials over the user's model with its own search space."""
    output_dir = tmp_path_factory.mktemp("tune_animals") / "out"
    tune.run(tune_config(animals_transformed("multiclass"), output_dir))
    return output_dir


def test_the_search_writes_the_best_trial_hparams_and_a_manifest_last(animals_tuned):
    manifest = json.loads((animals_tuned / "manifest.json").read_text())
    best = json.loads((animals_tuned / tune.BEST_HPARAMS_FILE).read_text())
    assert manifest["stage"] == "tune"
    assert manifest["counts"]["trials"] == manifest["counts"]["trials_completed"] == 2
    trials = manifest["trials"]
    assert len({trial["trial_id"] for trial in trials}) == 2
    for trial in trials:
        assert trial["status"] == "COMPLETED"
        assert trial["hparams"]["hidden_units"] in (4, 32)
        assert trial["hparams"]["learning_rate"] in (0.005, 0.05)
    assert trials[0]["score"] <= trials[1]["score"]  # val_loss: lowest first
    assert best == trials[0]["hparams"] == manifest["best"]["hparams"]
    assert manifest["objective"] == {"name": "val_loss", "direction": "min"}
    assert manifest["package_versions"]["keras-tuner"] == kt.__version__
    # TensorBoard: one folder of event files per trial, with the HParams plugin's summary.
    for trial in trials:
        events = list((animals_tuned / "logs" / trial["trial_id"]).rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for trial {trial['trial_id']}"


def test_model_train_takes_best_hparams_as_a_file_and_as_text(
    animals_tuned, animals_transformed, tmp_path
):
    best_file = animals_tuned / tune.BEST_HPARAMS_FILE
    as_text = train.parse_hparams(best_file.read_text())
    assert train.parse_hparams(f"@{best_file}") == as_text
    _, model_fn, label_key = ANIMAL_TASKS["multiclass"]
    manifest = train.run(
        train.TrainConfig(
            transform_dir=str(animals_transformed("multiclass")),
            output_dir=str(tmp_path / "train"),
            model_fn=f"{USER_MODULE}:{model_fn}",
            label_key=label_key,
            train_steps=5,
            batch_size=ANIMAL_BATCH_SIZE,
            hparams=f"@{best_file}",
        )
    )
    assert manifest.parameters["hparams"] == as_text


@pytest.mark.parametrize("tuner", ["hyperband", "bayesian"])
def test_hyperband_and_bayesian_search_a_json_space(animals_transformed, tmp_path, tuner):
    output_dir = tmp_path / "tune"
    manifest = tune.run(
        tune_config(
            animals_transformed("multiclass"),
            output_dir,
            tuner=tuner,
            search_space=json.dumps(JSON_SPACE),
            objective="val_sparse_categorical_accuracy:max",
        )
    )
    best = json.loads((output_dir / tune.BEST_HPARAMS_FILE).read_text())
    assert set(best) == set(JSON_SPACE) and best["hidden_units"] in (4, 32)
    assert 0.005 <= best["learning_rate"] <= 0.05
    assert 1 <= manifest.counts["trials_completed"] <= 2
    scores = [t["score"] for t in manifest.extra["trials"] if t["score"] is not None]
    assert scores[0] == max(scores)


def test_the_demo_search_space_on_the_demo_transform(transformed_2015, tmp_path):
    output_dir = tmp_path / "tune"
    tune.run(
        tune.TuneConfig(
            str(transformed_2015), str(output_dir), max_trials=2, train_steps=5, eval_steps=2
        )
    )
    best = json.loads((output_dir / tune.BEST_HPARAMS_FILE).read_text())
    assert set(best) == {"wide_units", "deep_units", "learning_rate"}
    demo_model.parse_hparams(best)  # The demo model's own check of its hparams.
    assert best["deep_units"] in tune.DEMO_DEEP_UNITS.values()


def test_json_search_space_entries():
    hp = kt.HyperParameters()
    space = tune.load_search_space(
        json.dumps({"units": [[64, 16], [32]], "rate": {"min": 1, "max": 9, "step": 2}, "k": "x"}),
        "m:f",
    )
    assert space(hp) == {"units": [64, 16], "rate": 1, "k": "x"}
    assert tune.load_search_space('{"encoder": [null]}', "m:f")(hp) == {"encoder": None}
    assert tune.load_search_space(None, train.DEFAULT_MODEL_FN) is tune.demo_search_space


def _cli(*args: str):
    return CliRunner().invoke(tune.main, list(args))


def _error_line(result) -> str:
    """The one line a job error prints (Keras Tuner's own output comes before it)."""
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_fn=tests/user_module.py:build_model"], "needs --search_space"),
        (["--search_space={nope"], "not valid JSON"),
        (['--search_space={"units": {"min": 1}}'], "a range needs min and max"),
        (['--search_space={"encoder": null}'], "write [null] for it"),
        (["--objective=val_loss:up"], "optionally with :min or :max"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, message, tmp_path):
    result = _cli(f"--transform_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_job_errors_are_one_line_exit_1(animals_transformed, animals_ingested, tmp_path):
    transform_dir = animals_transformed("multiclass")
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"--transform_dir={tmp_path / 'empty'}"], "not a finished stage output"),
        (
            [f"--transform_dir={transform_dir}", f"--output_dir={animals_ingested}"],
            "holds the output of the ingest stage",
        ),
        ([f"--transform_dir={transform_dir}"], "--label_key=consumer_disputed_xf is not a"),
        # The demo model on another data set's transform: refused before any trial.
        (
            [f"--transform_dir={transform_dir}", "--label_key=species_xf"],
            "was it made by model.preprocessing?",
        ),
    ]
    for args, message in cases:
        result = _cli(f"--output_dir={tmp_path / 'out'}", *args)
        assert result.exit_code == 1, result.output
        assert message in _error_line(result)


def test_defaults_the_model_function_rejects_are_a_usage_error(transformed_2015, tmp_path):
    result = _cli(
        f"--transform_dir={transformed_2015}",
        f"--output_dir={tmp_path / 'out'}",
        '--search_space={"units": [1, 2]}',
    )
    assert result.exit_code == 2, result.output
    assert "unknown hparams ['units']" in result.output


def test_an_objective_the_model_does_not_report_is_a_usage_error(animals_transformed, tmp_path):
    result = _cli(
        f"--transform_dir={animals_transformed('multiclass')}",
        f"--output_dir={tmp_path / 'out'}",
        f"--model_fn={USER_MODULE}:build_model",
        "--label_key=species_xf",
        "--search_space=tests.test_tune:animal_search_space",
        "--objective=val_auc",
    )
    assert result.exit_code == 2, result.output
    assert "the model reports no val_auc; it has loss" in result.output
    assert "val_sparse_categorical_accuracy" in result.output


def picky_model(tf_transform_output, hparams: dict):
    """The user's multi-class model, refusing 4 hidden units as a model function may."""
    if hparams["hidden_units"] == 4:
        raise ValueError("4 hidden units are too few")
    return user_module.build_model(tf_transform_output, hparams)


def test_a_trial_the_model_function_rejects_fails_alone(animals_transformed, tmp_path):
    manifest = tune.run(
        tune_config(
            animals_transformed("multiclass"),
            tmp_path / "out",
            model_fn="tests.test_tune:picky_model",
            search_space=json.dumps({"hidden_units": [32, 4]}),
            train_steps=5,
        )
    )
    assert manifest.counts["trials"] == 2 and manifest.counts["trials_completed"] == 1
    completed, failed = manifest.extra["trials"]
    assert completed["hparams"] == manifest.extra["best"]["hparams"] == {"hidden_units": 32}
    assert failed["status"] == "FAILED"
    assert "4 hidden units are too few" in failed["error"]
