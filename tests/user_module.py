"""A user's module for the synthetic animals data (tests/synthetic.py), written only from the
README's contracts: `preprocessing_fn(inputs)` for the transform job and
`build_model(tf_transform_output, hparams)` for `model.train`, with nothing from `model/`.

Three tasks on the same data: `species` (three classes, the label's vocabulary is named after it so
the export names its classes), `heavy` (a 0/1 label) and `weight` (a number).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

CATEGORICAL_FEATURES = ("colour", "habitat")
NUMERIC_FEATURES = ("size", "legs")
SPECIES, HEAVY, WEIGHT = "species", "heavy", "weight"
OOV_BUCKETS = 1
DEFAULT_HPARAMS = {"hidden_units": 16, "learning_rate": 0.02}


def transformed_name(key: str) -> str:
    return key + "_xf"


def _dense(column: Any, default: Any) -> tf.Tensor:
    """A `[batch]` column: optional features arrive sparse, required ones `[batch, 1]`."""
    if isinstance(column, tf.SparseTensor):
        shape = tf.stack([column.dense_shape[0], 1])
        column = tf.sparse.to_dense(
            tf.SparseTensor(column.indices, column.values, shape), default_value=default
        )
    return tf.reshape(column, [-1])


def _features(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    outputs = {}
    for key in CATEGORICAL_FEATURES:
        outputs[transformed_name(key)] = tft.compute_and_apply_vocabulary(
            _dense(inputs[key], ""), num_oov_buckets=OOV_BUCKETS, vocab_filename=key
        )
    for key in NUMERIC_FEATURES:
        values = tf.cast(_dense(inputs[key], 0), tf.float32)
        outputs[transformed_name(key)] = tft.scale_to_z_score(values)
    return outputs


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    """Multi-class: the features, and `species` as its index in a vocabulary named `species`."""
    outputs = _features(inputs)
    outputs[transformed_name(SPECIES)] = tft.compute_and_apply_vocabulary(
        _dense(inputs[SPECIES], ""), vocab_filename=SPECIES
    )
    return outputs


def binary_preprocessing_fn(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    """Binary: the features, and `heavy` (0/1) as it is."""
    outputs = _features(inputs)
    outputs[transformed_name(HEAVY)] = tf.cast(_dense(inputs[HEAVY], 0), tf.int64)
    return outputs


def regression_preprocessing_fn(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    """Regression: the features, and `weight` as it is."""
    outputs = _features(inputs)
    outputs[transformed_name(WEIGHT)] = tf.cast(_dense(inputs[WEIGHT], 0), tf.float32)
    return outputs


def _body(tf_transform_output: Any, units: int) -> tuple[list[tf.keras.Input], tf.Tensor]:
    """Inputs named after the transformed features, one-hot and numeric, then a dense layer."""
    inputs, parts = [], []
    for key in CATEGORICAL_FEATURES:
        size = tf_transform_output.vocabulary_size_by_name(key) + OOV_BUCKETS
        column = tf.keras.Input(shape=(), name=transformed_name(key), dtype=tf.int64)
        inputs.append(column)
        parts.append(tf.keras.layers.CategoryEncoding(size, output_mode="one_hot")(column))
    for key in NUMERIC_FEATURES:
        column = tf.keras.Input(shape=(), name=transformed_name(key), dtype=tf.float32)
        inputs.append(column)
        parts.append(tf.keras.layers.Reshape((1,))(column))
    hidden = tf.keras.layers.Dense(units, activation="relu")(tf.keras.layers.concatenate(parts))
    return inputs, hidden


def build_model(tf_transform_output: Any, hparams: dict[str, Any]) -> tf.keras.Model:
    """Softmax over the species vocabulary."""
    params = dict(DEFAULT_HPARAMS, **hparams)
    inputs, hidden = _body(tf_transform_output, params["hidden_units"])
    classes = tf_transform_output.vocabulary_size_by_name(SPECIES)
    outputs = tf.keras.layers.Dense(classes, activation="softmax")(hidden)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(params["learning_rate"]),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def build_binary_model(tf_transform_output: Any, hparams: dict[str, Any]) -> tf.keras.Model:
    """One sigmoid unit: the probability that the animal is heavy."""
    params = dict(DEFAULT_HPARAMS, **hparams)
    inputs, hidden = _body(tf_transform_output, params["hidden_units"])
    outputs = tf.keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(params["learning_rate"]),
        loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    return model


def build_regression_model(tf_transform_output: Any, hparams: dict[str, Any]) -> tf.keras.Model:
    """One linear unit: the weight."""
    params = dict(DEFAULT_HPARAMS, **hparams)
    inputs, hidden = _body(tf_transform_output, params["hidden_units"])
    outputs = tf.keras.layers.Dense(1)(hidden)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(params["learning_rate"]),
        loss=tf.keras.losses.MeanSquaredError(),
        metrics=[tf.keras.metrics.MeanAbsoluteError()],
    )
    return model
