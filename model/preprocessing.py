"""The demo's preprocessing: the book's consumer-complaints features, with the book's bugs fixed.

`preprocessing_fn` is what `python -m beam_jobs.transform` runs by default
(`--preprocessing_fn=model.preprocessing:preprocessing_fn`). The helpers are plain TensorFlow
functions, testable eagerly on tiny tensors:

- `fill_in_missing` turns a dense, sparse or ragged column into a dense rank-1 column, with a
  default where a row has no value (the book's version called an undefined `to_string`).
- `normalize_zip_code` turns the ZIP codes the CFPB exports (`76119`, `2127` with its leading zero
  lost, `76119.0`, masked `088XX`, empty) into one number per row that quantiles can bucket
  (the book's `X{0,5}` regex did not).
- Vocabularies keep `dim + 1` values plus an out-of-vocabulary bucket, and the one-hot depth counts
  that bucket, so an unseen value is a one-hot of its own, never index -1 or an all-zero row.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from model import features

__all__ = ["fill_in_missing", "normalize_zip_code", "preprocessing_fn"]

UNKNOWN_ZIP_CODE = 0.0
_ZIP_FLOAT_SUFFIX = r"\.0*$"
_ZIP_PLUS_FOUR = r"^(\d{5})-\d{4}$"
_ZIP_MASK = "[Xx*]"
_ZIP_DIGITS = r"\d{1,5}"

TensorLike = tf.Tensor | tf.SparseTensor | tf.RaggedTensor


def fill_in_missing(column: TensorLike, default_value: Any = None) -> tf.Tensor:
    """A dense rank-1 column: each row's first value, or `default_value` where it has none.

    Args:
        column: a dense `[batch]` or `[batch, n]` tensor, or a sparse or ragged `[batch, None]`
            one (how TFT hands over optional features).
        default_value: the value of empty rows; None means `""` for strings and 0 for numbers.

    Returns:
        A dense tensor of shape `[batch]` and the column's dtype.
    """
    if default_value is None:
        default_value = "" if column.dtype == tf.string else 0
    default = tf.constant(default_value, dtype=column.dtype)
    if isinstance(column, tf.RaggedTensor):
        column = column.to_sparse()
    if isinstance(column, tf.SparseTensor):
        column = tf.sparse.to_dense(column, default_value=default)
    if column.shape.rank == 1:
        return column
    # One extra default column: a batch in which no row has a value still has a first column.
    padding = tf.fill([tf.shape(column)[0], 1], default)
    return tf.concat([column, padding], axis=1)[:, 0]


def normalize_zip_code(zip_codes: tf.Tensor) -> tf.Tensor:
    """ZIP codes as float32 numbers that quantile buckets can cut.

    `76119.0` is 76119; masked digits count as 0, so `088XX` is 8800 (the area keeps its leading
    digits); `2127` and `123` are read as the numbers they are (their leading zeros were lost
    upstream); `76119-1234` is 76119; an empty or unreadable value is `UNKNOWN_ZIP_CODE`.

    Args:
        zip_codes: a dense rank-1 column, string (schema says BYTES) or numeric (types inferred).

    Returns:
        A float32 tensor of the same shape.
    """
    if zip_codes.dtype != tf.string:
        numbers = tf.cast(zip_codes, tf.float32)
        valid = (numbers >= 0.0) & (numbers <= 99999.0)
        return tf.where(valid, numbers, UNKNOWN_ZIP_CODE)
    text = tf.strings.strip(zip_codes)
    text = tf.strings.regex_replace(text, _ZIP_FLOAT_SUFFIX, "")
    text = tf.strings.regex_replace(text, _ZIP_PLUS_FOUR, r"\1")
    text = tf.strings.regex_replace(text, _ZIP_MASK, "0")
    valid = tf.strings.regex_full_match(text, _ZIP_DIGITS)
    text = tf.where(valid, text, "0")
    numbers = tf.strings.to_number(text, out_type=tf.float32)
    return tf.where(valid, numbers, UNKNOWN_ZIP_CODE)


def _one_hot_vocabulary(column: TensorLike, key: str, dim: int) -> tf.Tensor:
    """A categorical column as a one-hot float32 `[batch, dim + 1 + OOV]` over its vocabulary."""
    values = fill_in_missing(column)
    if values.dtype != tf.string:
        values = tf.strings.as_string(values)
    top_k = dim + 1
    indices = tft.compute_and_apply_vocabulary(
        values,
        top_k=top_k,
        num_oov_buckets=features.VOCAB_OOV_BUCKETS,
        vocab_filename=key,
    )
    return tf.one_hot(indices, depth=top_k + features.VOCAB_OOV_BUCKETS, dtype=tf.float32)


def _one_hot_buckets(numbers: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """A numeric column cut into quantile buckets, as a one-hot float32 `[batch, num_buckets]`."""
    buckets = tft.bucketize(numbers, num_buckets=num_buckets)
    return tf.one_hot(buckets, depth=num_buckets, dtype=tf.float32)


def preprocessing_fn(inputs: dict[str, TensorLike]) -> dict[str, tf.Tensor]:
    """The demo's TFT preprocessing: raw complaint features to `_xf` model inputs.

    Args:
        inputs: raw features by name, as TFT reads them with the schema.

    Returns:
        One-hot vocabularies and ZIP buckets (float32), the narrative as text when the data has it,
        and the label (int64, 1 for "Yes") when the data has it.
    """
    outputs = {}
    # Categorical features: vocabulary with an out-of-vocabulary bucket, then one-hot.
    for key, dim in features.ONE_HOT_FEATURES.items():
        outputs[features.transformed_name(key)] = _one_hot_vocabulary(inputs[key], key, dim)
    # ZIP codes: normalized to numbers, cut into quantile buckets, then one-hot.
    for key, num_buckets in features.BUCKET_FEATURES.items():
        numbers = normalize_zip_code(fill_in_missing(inputs[key]))
        outputs[features.transformed_name(key)] = _one_hot_buckets(numbers, num_buckets)
    # Free text: passed through for the model's text encoder, only when the data has it.
    for key in features.TEXT_FEATURES:
        if key in inputs:
            outputs[features.transformed_name(key)] = fill_in_missing(inputs[key])
    # The label: absent from serving requests, so only when present.
    if features.LABEL_KEY in inputs:
        label = fill_in_missing(inputs[features.LABEL_KEY])
        is_positive = tf.equal(label, features.LABEL_POSITIVE_VALUE)
        outputs[features.transformed_name(features.LABEL_KEY)] = tf.cast(is_positive, tf.int64)
    return outputs
