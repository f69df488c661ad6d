"""The demo's Keras model: the book's wide-and-deep classifier of disputed complaints.

`build_model(tf_transform_output, hparams)` is what `python -m model.train` builds by default
(`--model_fn=model.model:build_model`). Its inputs are named after the transformed features:

- wide part: the one-hot `_xf` features (vocabularies and ZIP buckets) concatenated, then a small
  dense layer;
- deep part, only when the transformed data has the narrative: the text through a text encoder,
  then dense layers of 256, 64 and 16 units. The encoder is a TF Hub handle or a local SavedModel
  (`HParams.text_encoder`, loaded with `hub.KerasLayer`), or by default `HashedTextEncoder`, a small
  trainable in-graph encoder (TF string ops, hashing, an embedding, a mean) that needs no network;
- both concatenated into one sigmoid unit: the probability that the consumer disputes.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from beam_jobs.lib.cli import JobError
from model import features

__all__ = [
    "OUTPUT_NAME",
    "HParams",
    "HashedTextEncoder",
    "build_model",
    "parse_hparams",
    "text_feature_keys",
    "wide_feature_keys",
]

OUTPUT_NAME = "outputs"
TEXT_ENCODER_LAYER = "text_encoder"
_TOKEN_SEPARATORS = r"[^a-z0-9']+"


@dataclasses.dataclass(frozen=True)
class HParams:
    """The demo model's hyper-parameters (`--hparams` JSON keys), with the book's values.

    Attributes:
        wide_units: units of the dense layer over the concatenated one-hot features.
        deep_units: units of the dense layers over the encoded narrative, in order.
        learning_rate: Adam's learning rate.
        text_encoder: TF Hub handle or local SavedModel path of a text encoder (strings of shape
            `[batch]` to vectors); None for the in-graph `HashedTextEncoder`.
        text_encoder_trainable: fine-tune the weights of a `text_encoder` SavedModel.
        text_hash_buckets: token hash buckets of the in-graph encoder.
        text_embedding_dim: embedding size of the in-graph encoder.
    """

    wide_units: int = 16
    deep_units: tuple[int, ...] = (256, 64, 16)
    learning_rate: float = 1e-3
    text_encoder: str | None = None
    text_encoder_trainable: bool = False
    text_hash_buckets: int = 10_000
    text_embedding_dim: int = 32


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """`value` as the type `hint` of field `name` (JSON lists become tuples; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"hparam {name} needs a list, got {value!r}")
        return tuple(_coerce(name, args[0], item) for item in value)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(name, next(arg for arg in args if arg is not type(None)), value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"hparam {name} needs a {hint.__name__}, got {value!r}")
    return value


def parse_hparams(values: Mapping[str, Any] | str | None) -> HParams:
    """The demo's `HParams` from `--hparams`' plain dict (or its JSON text) over the defaults.

    `model.train` hands every `build_model` a plain dict; the demo's turns it into its own
    dataclass here, so a key it does not know is an error rather than silently ignored.

    Raises:
        ValueError: not a JSON object, an unknown key, or a value of the wrong type.
    """
    if not values:
        return HParams()
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error})") from error
    if not isinstance(values, Mapping):
        raise ValueError(f"needs a JSON object of hyper-parameters, got {values!r}")
    hints = typing.get_type_hints(HParams)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown hparams {unknown}; known: {sorted(hints)}")
    return HParams(**{key: _coerce(key, hints[key], value) for key, value in values.items()})


@tf.keras.utils.register_keras_serializable(package="model")
class HashedTextEncoder(tf.keras.layers.Layer):
    """Strings `[batch]` to the mean of their tokens' embeddings `[batch, embedding_dim]`.

    Lower-cases, splits on anything but letters, digits and apostrophes, hashes each token into
    `num_buckets` and averages the tokens' trainable embeddings; an empty text gives zeros.
    """

    def __init__(self, num_buckets: int, embedding_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_buckets = num_buckets
        self.embedding_dim = embedding_dim

    def build(self, input_shape: tf.TensorShape) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.embedding_dim),
            initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05),
        )
        super().build(input_shape)

    def call(self, texts: tf.Tensor) -> tf.Tensor:
        cleaned = tf.strings.regex_replace(
            tf.strings.lower(tf.reshape(texts, [-1])), _TOKEN_SEPARATORS, " "
        )
        tokens = tf.strings.split(cleaned)
        ids = tf.strings.to_hash_bucket_fast(tokens, self.num_buckets)
        vectors = tf.ragged.map_flat_values(tf.gather, self.embeddings, ids)
        counts = tf.cast(tf.maximum(ids.row_lengths(), 1), self.embeddings.dtype)
        return tf.reduce_sum(vectors, axis=1) / counts[:, tf.newaxis]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_buckets": self.num_buckets,
            "embedding_dim": self.embedding_dim,
        }


def wide_feature_keys(transformed_spec: dict[str, Any]) -> list[str]:
    """The transformed one-hot features (vocabularies, then buckets) the wide part takes.

    Raises:
        JobError: the transformed data lacks one of them (another data set's transform).
    """
    keys = [
        features.transformed_name(key)
        for key in (*features.ONE_HOT_FEATURES, *features.BUCKET_FEATURES)
    ]
    missing = [key for key in keys if key not in transformed_spec]
    if missing:
        raise JobError(
            f"the transformed data has no {missing}: was it made by model.preprocessing?"
        )
    return keys


def text_feature_keys(transformed_spec: dict[str, Any]) -> list[str]:
    """The transformed text features present in the data (the deep part exists if any)."""
    return [
        features.transformed_name(key)
        for key in features.TEXT_FEATURES
        if features.transformed_name(key) in transformed_spec
    ]


def _text_encoder(hparams: HParams) -> tf.keras.layers.Layer:
    if hparams.text_encoder:
        import tensorflow_hub as hub  # Only users of --text_encoder pay for importing it.

        return hub.KerasLayer(
            hparams.text_encoder,
            trainable=hparams.text_encoder_trainable,
            name=TEXT_ENCODER_LAYER,
        )
    return HashedTextEncoder(
        hparams.text_hash_buckets, hparams.text_embedding_dim, name=TEXT_ENCODER_LAYER
    )


def _deep_part(texts: list[tf.Tensor], hparams: HParams) -> tf.Tensor:
    """Each text through the shared encoder, concatenated, then the deep dense layers."""
    encoder = _text_encoder(hparams)
    encoded = [encoder(text) for text in texts]
    deep = encoded[0] if len(encoded) == 1 else tf.keras.layers.concatenate(encoded)
    for index, units in enumerate(hparams.deep_units):
        deep = tf.keras.layers.Dense(units, activation="relu", name=f"deep_{index}")(deep)
    return deep


def build_model(
    tf_transform_output: tft.TFTransformOutput, hparams: Mapping[str, Any] | HParams
) -> tf.keras.Model:
    """The book's wide-and-deep model over the transformed features, compiled.

    Args:
        tf_transform_output: the transform output the model trains on (its transformed spec
            gives the inputs' names, shapes and whether there is text).
        hparams: `--hparams` as a dict of `HParams` fields (or an `HParams`): layer sizes,
            learning rate and text encoder.

    Returns:
        A compiled Keras model: a dict of `_xf` features in, the probability `[batch, 1]` out.

    Raises:
        ValueError: an unknown hyper-parameter or a value of the wrong type.
    """
    if not isinstance(hparams, HParams):
        hparams = parse_hparams(hparams)
    spec = tf_transform_output.transformed_feature_spec()
    wide_inputs = [
        tf.keras.Input(shape=spec[key].shape, name=key, dtype=tf.float32)
        for key in wide_feature_keys(spec)
    ]
    wide = tf.keras.layers.concatenate(wide_inputs, name="wide_features")
    wide = tf.keras.layers.Dense(hparams.wide_units, activation="relu", name="wide")(wide)
    text_inputs = [
        tf.keras.Input(shape=(), name=key, dtype=tf.string) for key in text_feature_keys(spec)
    ]
    parts = [wide, _deep_part(text_inputs, hparams)] if text_inputs else [wide]
    joined = parts[0] if len(parts) == 1 else tf.keras.layers.concatenate(parts)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(joined)
    model = tf.keras.Model(inputs=wide_inputs + text_inputs, outputs=outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=hparams.learning_rate),
        loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[
            tf.keras.metrics.BinaryAccuracy(name="binary_accuracy"),
            tf.keras.metrics.AUC(name="auc"),
        ],
    )
    return model
