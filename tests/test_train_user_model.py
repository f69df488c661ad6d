"""model.train with a user's module on data the project never saw (tests/synthetic.py): the
hyper-parameters arrive as a plain dict, and each export carries its contract and raw schema."""

from __future__ import annotations

import ast
import itertools
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from click.testing import CliRunner

from beam_jobs.lib import artifacts, cli, layout, model_contract
from model import train
from tests.conftest import ANIMAL_TASKS, USER_MODULE
from tests.synthetic import CLASSES


@pytest.mark.parametrize(
    ("task", "expected_task", "label_key"),
    [
        ("multiclass", model_contract.MULTICLASS, "species"),
        ("binary", model_contract.BINARY, "heavy"),
        ("regression", model_contract.REGRESSION, "weight"),
    ],
)
def test_each_export_carries_its_task_label_and_raw_schema(
    animals_trained, animals_transformed, task, expected_task, label_key
):
    export = str(animals_trained(task))
    contract = model_contract.read_contract(export)
    assert contract.task == expected_task
    assert contract.label_key == label_key
    assert contract.transformed_label_key == ANIMAL_TASKS[task][2]
    if task == "multiclass":
        # The label's vocabulary (named after it), most frequent first: index i is class i.
        assert sorted(contract.classes) == sorted(CLASSES)
        vocabulary = tft.TFTransformOutput(str(animals_transformed(task))).vocabulary_by_name(
            label_key
        )
        assert contract.classes == tuple(value.decode() for value in vocabulary)
    else:
        assert contract.classes is None
    raw_schema = model_contract.read_raw_schema(export)
    expected = tft.TFTransformOutput(str(animals_transformed(task))).raw_metadata.schema
    assert raw_schema == expected
    assert label_key in {feature.name for feature in raw_schema.feature}


def test_the_multiclass_export_serves_raw_examples_without_their_label(
    animals_trained, animals_ingested
):
    export = animals_trained("multiclass")
    pattern = str(animals_ingested / "eval" / layout.EXAMPLES_PATTERN)
    records = []
    for metadata in artifacts.list_files(pattern):
        records += list(artifacts.read_tfrecords(metadata.path))
    unlabelled = []
    labels = []
    for record in itertools.islice(records, 64):
        example = tf.train.Example.FromString(record)
        labels.append(example.features.feature["species"].bytes_list.value[0].decode())
        del example.features.feature["species"]
        unlabelled.append(example.SerializeToString())
    serve = tf.saved_model.load(str(export)).signatures[layout.SERVING_SIGNATURE]
    scores = serve(examples=tf.constant(unlabelled))[layout.OUTPUT_KEY].numpy()
    assert scores.shape == (len(unlabelled), len(CLASSES))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    classes = model_contract.read_contract(str(export)).classes
    predicted = [classes[index] for index in scores.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels, strict=True)])
    assert accuracy > 0.8  # Three classes: chance is a third.


def test_hparams_reach_the_user_model_as_a_plain_dict_from_a_file(animals_transformed, tmp_path):
    hparams = tmp_path / "hparams.json"
    # A key the demo model does not know: a user's model takes whatever keys it reads.
    hparams.write_text(json.dumps({"hidden_units": 5, "learning_rate": 0.05}))
    output_dir = tmp_path / "train"
    result = CliRunner().invoke(
        train.main,
        [
            f"--transform_dir={animals_transformed('multiclass')}",
            f"--output_dir={output_dir}",
            f"--model_fn={USER_MODULE}:build_model",
            "--label_key=species_xf",
            "--train_steps=3",
            "--batch_size=16",
            f"--hparams=@{hparams}",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = artifacts.read_manifest(str(output_dir), stages=("train",))
    assert manifest.parameters["hparams"] == {"hidden_units": 5, "learning_rate": 0.05}
    export = manifest.extra["export_path"]
    shapes = {tuple(v.shape) for v in tf.saved_model.load(export).trainable_variables}
    assert (5,) in shapes  # The hidden layer's bias: 5 units, as the file said.


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ("@/nonexistent/hparams.json", "cannot read /nonexistent/hparams.json"),
        ("[1, 2]", "needs a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_bad_hparams_are_one_line_usage_errors(animals_transformed, tmp_path, hparams, message):
    result = CliRunner().invoke(
        train.main,
        [
            f"--transform_dir={animals_transformed('multiclass')}",
            f"--output_dir={tmp_path / 'train'}",
            f"--model_fn={USER_MODULE}:build_model",
            "--label_key=species_xf",
            f"--hparams={hparams}",
        ],
    )
    assert result.exit_code == cli.EXIT_USAGE
    assert message in result.output


def _compiled(units: int, activation: str | None, loss) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(2,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(units, activation=activation)(inputs))
    model.compile(optimizer="sgd", loss=loss)
    return model


def _custom_loss(y_true, y_pred):
    return tf.reduce_mean(tf.abs(y_true - y_pred))


@pytest.mark.parametrize(
    ("units", "activation", "loss", "expected"),
    [
        (4, "softmax", "sparse_categorical_crossentropy", model_contract.MULTICLASS),
        (1, "sigmoid", tf.keras.losses.BinaryCrossentropy(), model_contract.BINARY),
        (1, None, "binary_crossentropy", model_contract.BINARY),
        (1, None, tf.keras.losses.Huber(), model_contract.REGRESSION),
        (1, None, "mse", model_contract.REGRESSION),
        (1, "sigmoid", _custom_loss, model_contract.BINARY),
    ],
)
def test_the_task_is_read_from_outputs_and_loss(units, activation, loss, expected):
    assert train.model_task(_compiled(units, activation, loss)) == expected


def test_a_task_the_model_does_not_tell_needs_the_flag():
    model = _compiled(1, None, _custom_loss)
    with pytest.raises(cli.JobError, match="pass --task="):
        train.model_task(model)
    assert train.model_task(model, model_contract.REGRESSION) == model_contract.REGRESSION


def test_user_module_imports_nothing_of_the_project():
    tree = ast.parse(pathlib.Path(USER_MODULE).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported if name} & {"model", "beam_jobs", "tests"}


def test_a_rerun_resumes_only_the_same_training(animals_transformed, tmp_path):
    """Checkpoints of another training (other hparams) are not restored; the same training with
    more steps continues from where the last run stopped."""

    def run(steps: int, units: int) -> dict:
        config = train.TrainConfig(
            transform_dir=str(animals_transformed("multiclass")),
            output_dir=str(tmp_path / "train"),
            model_fn=f"{USER_MODULE}:build_model",
            label_key="species_xf",
            train_steps=steps,
            batch_size=16,
            checkpoint_steps=5,
            hparams=json.dumps({"hidden_units": units}),
        )
        return train.run(config).counts

    assert run(10, 5)["initial_step"] == 0
    counts = run(10, 7)  # Other hparams: the 10 steps of the 5-unit model are not restored.
    assert counts["initial_step"] == 0 and counts["steps"] == 10
    counts = run(15, 7)  # The same training, further.
    assert counts["initial_step"] == 10 and counts["steps"] == 15
