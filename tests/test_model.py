"""Unit tests of the demo model and the training script's pieces, on tiny real TFT outputs.

The transform outputs here are made by TFT itself (`tft_beam` on a few in-memory rows through the
demo's `preprocessing_fn`), with and without the narrative, so `build_model` sees real specs.
"""

from __future__ import annotations

import pathlib

import click
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from click.testing import CliRunner
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from beam_jobs.lib import artifacts, cli, model_contract
from model import features, preprocessing, train
from model import model as demo_model

_ROWS = [
    {
        "product": "Mortgage",
        "sub_product": "FHA mortgage",
        "company_response": "Closed with explanation",
        "state": "TX",
        "issue": "Loan servicing",
        "zip_code": "76119",
        "consumer_complaint_narrative": "They charged me twice",
        "consumer_disputed": "Yes",
    },
    {
        "product": "Debt collection",
        "sub_product": "",
        "company_response": "Closed",
        "state": "CA",
        "issue": "Cont'd attempts collect debt not owed",
        "zip_code": "088XX",
        "consumer_complaint_narrative": "",
        "consumer_disputed": "No",
    },
]


def _transform_output(directory: pathlib.Path, *, with_text: bool) -> tft.TFTransformOutput:
    """Runs TFT on `_ROWS` and writes a transform output with a manifest, as the job does."""
    keys = [*features.ONE_HOT_FEATURES, *features.BUCKET_FEATURES, features.LABEL_KEY]
    keys += list(features.TEXT_FEATURES) if with_text else []
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in keys}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    rows = [{key: row[key].encode() for key in keys} for row in _ROWS]
    with tft_beam.Context(temp_dir=str(directory / "tmp")):
        _, transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(directory))
    raw_metadata_dir = directory / tft.TFTransformOutput.RAW_METADATA_DIR
    metadata_io.write_metadata(metadata, str(raw_metadata_dir))
    artifacts.write_json(str(directory / artifacts.MANIFEST_FILE), {"stage": "transform"})
    return tft.TFTransformOutput(str(directory))


@pytest.fixture(scope="module")
def tiny_transform(tmp_path_factory) -> tft.TFTransformOutput:
    return _transform_output(tmp_path_factory.mktemp("tiny"), with_text=False)


@pytest.fixture(scope="module")
def tiny_text_transform(tmp_path_factory) -> tft.TFTransformOutput:
    return _transform_output(tmp_path_factory.mktemp("tiny_text"), with_text=True)


def _transformed_batch(tf_transform_output: tft.TFTransformOutput, keras_model) -> dict:
    raw = {key: tf.constant([row[key] for row in _ROWS]) for key in _ROWS[0]}
    raw = {
        key: value for key, value in raw.items() if key in tf_transform_output.raw_feature_spec()
    }
    transformed = tf_transform_output.transform_features_layer()(raw)
    return {name: transformed[name] for name in keras_model.input_names}


def test_parse_hparams_defaults_and_overrides():
    assert demo_model.parse_hparams(None) == demo_model.HParams()
    hparams = demo_model.parse_hparams(
        '{"deep_units": [8, 4], "learning_rate": 1, "wide_units": 3}'
    )
    assert hparams.deep_units == (8, 4)
    assert hparams.learning_rate == 1.0
    assert hparams.wide_units == 3
    assert demo_model.parse_hparams('{"text_encoder": null}').text_encoder is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"hidden": 3}', "unknown hparams ['hidden']"),
        ('{"wide_units": "16"}', "wide_units needs a int"),
        ('{"wide_units": true}', "wide_units needs a int"),
        ('{"deep_units": 8}', "deep_units needs a list"),
        ("[1]", "needs a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_parse_hparams_rejects_bad_values_in_one_line(text, message):
    with pytest.raises(ValueError, match=None) as error:
        demo_model.parse_hparams(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_hashed_text_encoder_averages_token_embeddings():
    encoder = demo_model.HashedTextEncoder(num_buckets=50, embedding_dim=3)
    vectors = encoder(tf.constant(["Late FEE, late fee!", "late fee", "", "other words"])).numpy()
    assert vectors.shape == (4, 3)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-7)  # case and punctuation
    np.testing.assert_array_equal(vectors[2], np.zeros(3))  # no tokens: zeros, not NaN
    assert not np.allclose(vectors[1], vectors[3])


def test_build_model_without_text_is_wide_only(tiny_transform):
    keras_model = demo_model.build_model(tiny_transform, demo_model.HParams())
    spec = tiny_transform.transformed_feature_spec()
    assert sorted(keras_model.input_names) == sorted(demo_model.wide_feature_keys(spec))
    assert demo_model.text_feature_keys(spec) == []
    layer_names = {layer.name for layer in keras_model.layers}
    assert demo_model.TEXT_ENCODER_LAYER not in layer_names
    assert keras_model.get_layer("wide").units == 16
    assert isinstance(keras_model.optimizer, tf.keras.optimizers.Adam)
    assert keras_model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    outputs = keras_model(_transformed_batch(tiny_transform, keras_model)).numpy()
    assert outputs.shape == (2, 1)
    assert np.all((outputs > 0) & (outputs < 1))


def test_build_model_with_text_has_the_deep_branch(tiny_text_transform):
    keras_model = demo_model.build_model(tiny_text_transform, demo_model.HParams())
    narrative = features.transformed_name(features.NARRATIVE)
    assert narrative in keras_model.input_names
    assert isinstance(
        keras_model.get_layer(demo_model.TEXT_ENCODER_LAYER), demo_model.HashedTextEncoder
    )
    assert [keras_model.get_layer(f"deep_{index}").units for index in range(3)] == [256, 64, 16]
    keras_model.fit(
        _transformed_batch(tiny_text_transform, keras_model),
        np.array([[1.0], [0.0]]),
        epochs=1,
        verbose=0,
    )
    assert set(keras_model.metrics_names) >= {"loss", "binary_accuracy", "auc"}


def test_build_model_takes_layer_sizes_from_hparams(tiny_text_transform):
    hparams = demo_model.HParams(wide_units=4, deep_units=(8,), text_embedding_dim=5)
    keras_model = demo_model.build_model(tiny_text_transform, hparams)
    assert keras_model.get_layer("wide").units == 4
    assert keras_model.get_layer("deep_0").units == 8
    assert keras_model.get_layer(demo_model.TEXT_ENCODER_LAYER).embedding_dim == 5


def test_make_dataset_splits_features_and_label(tmp_path):
    path = str(tmp_path / "data.tfrecord.gz")
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "x_xf": tf.train.Feature(float_list=tf.train.FloatList(value=[i, 1.0])),
                    "y_xf": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
                }
            )
        ).SerializeToString()
        for i in range(5)
    ]
    artifacts.write_tfrecords(path, examples)
    spec = {
        "x_xf": tf.io.FixedLenFeature([2], tf.float32),
        "y_xf": tf.io.FixedLenFeature([], tf.int64),
    }
    dataset = train.make_dataset([path], spec, label_key="y_xf", batch_size=2, training=False)
    batches = list(dataset)
    assert [label.shape for _, label in batches] == [(2, 1), (2, 1), (1, 1)]
    assert set(batches[0][0]) == {"x_xf"}
    np.testing.assert_array_equal(batches[0][1].numpy(), [[0.0], [1.0]])


def test_cpu_replicas_need_the_mirrored_strategy():
    with pytest.raises(click.BadParameter, match="need --distribution=mirrored"):
        train.make_strategy("one_device", cpu_replicas=2)
    assert train.make_strategy("one_device").num_replicas_in_sync == 1


def test_cli_refuses_a_transform_dir_without_manifest(tmp_path):
    (tmp_path / "half").mkdir()
    result = CliRunner().invoke(
        train.main, [f"--transform_dir={tmp_path / 'half'}", f"--output_dir={tmp_path / 'out'}"]
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "is not a finished stage output" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_bad_hparams_and_unknown_flags_are_usage_errors(tiny_transform, tmp_path):
    transform_dir = tiny_transform.transform_savedmodel_dir.rsplit("/", 1)[0]
    base = [f"--transform_dir={transform_dir}", f"--output_dir={tmp_path / 'out'}"]
    result = CliRunner().invoke(train.main, [*base, '--hparams={"hidden": 1}'])
    assert result.exit_code == cli.EXIT_USAGE
    assert "unknown hparams ['hidden']" in result.output
    # Beam's options are accepted (object-store settings); any other unknown flag is refused.
    result = CliRunner().invoke(train.main, [*base, "--train_stpes=5"])
    assert result.exit_code == cli.EXIT_USAGE
    assert "--train_stpes" in result.output


def test_cli_help_lists_every_flag():
    result = CliRunner().invoke(train.main, ["--help"])
    assert result.exit_code == 0
    for flag in (
        "--transform_dir",
        "--output_dir",
        "--model_fn",
        "--label_key",
        "--train_steps",
        "--eval_steps",
        "--batch_size",
        "--hparams",
        "--text_encoder",
        "--base_model",
        "--distribution",
        "--cpu_replicas",
        "--checkpoint_steps",
        "--early_stopping_patience",
    ):
        assert flag in result.output


def test_warm_start_copies_layer_weights_and_refuses_another_architecture(
    tiny_text_transform, tmp_path
):
    base = demo_model.build_model(tiny_text_transform, demo_model.HParams())
    contract = model_contract.ModelContract(
        task=model_contract.BINARY,
        transformed_label_key=features.transformed_name(features.LABEL_KEY),
        label_key=features.LABEL_KEY,
    )
    export_path = train.export_model(base, tiny_text_transform, str(tmp_path), contract)
    tf.keras.utils.set_random_seed(7)
    fresh = demo_model.build_model(tiny_text_transform, demo_model.HParams())
    train.warm_start(fresh, export_path)
    for copied, original in zip(fresh.get_weights(), base.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    assert int(fresh.optimizer.iterations.numpy()) == 0
    other = demo_model.build_model(tiny_text_transform, demo_model.HParams(wide_units=3))
    with pytest.raises(cli.JobError, match="does not fit this model"):
        train.warm_start(other, export_path)
