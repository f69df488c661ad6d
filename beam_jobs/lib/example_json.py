"""`tf.Example` features as JSON values and back, for records that people and jobs both read.

Infer writes the features a model saw into its predictions this way; feedback turns them back into
the very examples that were scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

__all__ = ["example_from_json", "example_to_json"]


def example_to_json(example: tf.train.Example) -> dict[str, list[Any]]:
    """A `tf.Example`'s features as JSON values: text for bytes, numbers for numbers.

    Bytes that are not UTF-8 survive as surrogate escapes; `example_from_json` restores them.
    """
    features = {}
    for name in sorted(example.features.feature):
        feature = example.features.feature[name]
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            features[name] = [
                v.decode("utf-8", "surrogateescape") for v in feature.bytes_list.value
            ]
        elif kind is not None:
            features[name] = list(getattr(feature, kind).value)
    return features


def example_from_json(features: Mapping[str, list[Any]]) -> tf.train.Example:
    """The `tf.Example` of `example_to_json`: text → bytes, all-int → int64, else float.

    Raises:
        ValueError: a feature is not a list of text or numbers.
    """
    example = tf.train.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if all(isinstance(value, str) for value in values):
            encoded = [value.encode("utf-8", "surrogateescape") for value in values]
            feature.bytes_list.value.extend(encoded)
        elif all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(value, (int, float)) for value in values):
            feature.float_list.value.extend(values)
        else:
            raise ValueError(f"feature {name!r}: {values!r} is not a list of text or numbers")
    return example
