"""The demo's preprocessing on tiny inputs: TF helpers run eagerly, `preprocessing_fn` via TFT."""

from __future__ import annotations

import pickle

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from model import features
from model.preprocessing import fill_in_missing, normalize_zip_code, preprocessing_fn
from tests.conftest import direct_options

XF = features.transformed_name


def _analyze_and_transform(fn, rows, feature_spec, temp_dir):
    """Runs `fn` through TFT on in-memory rows; returns the transformed rows in input order.

    Each row carries a `row` id feature that `fn`'s outputs must pass through. The rows come back
    through a file: the runner may run the collecting step on a pickled copy of it.
    """
    result_path = temp_dir / "transformed.pickle"

    def collect(transformed):
        ordered = sorted(transformed, key=lambda row: int(row["row"]))
        result_path.write_bytes(pickle.dumps(ordered))

    metadata = tft.DatasetMetadata.from_feature_spec(feature_spec)
    with (
        test_pipeline.TestPipeline(options=direct_options()) as pipeline,
        tft_beam.Context(temp_dir=str(temp_dir / "tft")),
    ):
        raw = pipeline | "CreateRows" >> beam.Create(rows)
        (transformed, _), _ = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(fn)
        assert_that(transformed, collect)
    return pickle.loads(result_path.read_bytes())


def test_scale_to_0_1_golden_example(tmp_path):
    """The book's example: [1.20, 2.99, 100.00] scaled to [0, 1]."""
    rows = [{"row": i, "x": x} for i, x in enumerate([1.20, 2.99, 100.00])]
    spec = {
        "row": tf.io.FixedLenFeature([], tf.int64),
        "x": tf.io.FixedLenFeature([], tf.float32),
    }

    def scale(inputs):
        return {"row": inputs["row"], "x_xf": tft.scale_to_0_1(inputs["x"])}

    result = _analyze_and_transform(scale, rows, spec, tmp_path)
    np.testing.assert_allclose([row["x_xf"] for row in result], [0.0, 0.018117407, 1.0], rtol=1e-6)


def test_fill_in_missing_dense_passes_values_and_drops_the_unit_dimension():
    dense = tf.constant([["a"], ["b"]])
    assert fill_in_missing(dense).numpy().tolist() == [b"a", b"b"]
    assert fill_in_missing(tf.constant([1, 2], tf.int64)).numpy().tolist() == [1, 2]


def test_fill_in_missing_sparse_fills_empty_rows_with_the_default():
    sparse = tf.SparseTensor(indices=[[0, 0], [2, 0]], values=["a", "b"], dense_shape=[3, 1])
    assert fill_in_missing(sparse, "none").numpy().tolist() == [b"a", b"none", b"b"]
    assert fill_in_missing(sparse).numpy().tolist() == [b"a", b"", b"b"]


def test_fill_in_missing_sparse_batch_without_any_value():
    empty = tf.SparseTensor(
        indices=tf.zeros([0, 2], tf.int64), values=tf.constant([], tf.int64), dense_shape=[2, 0]
    )
    assert fill_in_missing(empty, 7).numpy().tolist() == [7, 7]


def test_fill_in_missing_ragged():
    ragged = tf.ragged.constant([[1.5], [], [2.0]])
    assert fill_in_missing(ragged).numpy().tolist() == [1.5, 0.0, 2.0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("76119.0", 76119.0),  # float text of an integer column
        ("088XX", 8800.0),  # masked digits: the known leading digits stay
        ("", 0.0),  # empty: unknown
        ("123", 123.0),  # leading zeros lost upstream: 00123
        ("2127", 2127.0),
        ("76119", 76119.0),
        ("76119-1234", 76119.0),  # ZIP+4
        ("n/a", 0.0),
    ],
)
def test_normalize_zip_code_text(raw, expected):
    assert normalize_zip_code(tf.constant([raw])).numpy().tolist() == [expected]


def test_normalize_zip_code_integers():
    zip_codes = tf.constant([76119, 2127, -5], tf.int64)
    assert normalize_zip_code(zip_codes).numpy().tolist() == [76119.0, 2127.0, 0.0]


_PRODUCTS = ["Mortgage", "Debt collection", "Credit card"]


def _raw_rows(zip_as_int: bool, with_narrative: bool) -> list[dict]:
    rows = []
    for i in range(12):
        zip_code = 10000 + 7000 * i
        row = {
            "row": i,
            features.PRODUCT: [_PRODUCTS[i % 3]],
            features.SUB_PRODUCT: [] if i % 2 else ["Other"],
            features.COMPANY_RESPONSE: ["Closed with explanation"],
            features.STATE: ["TX" if i % 4 else "CA"],
            features.ISSUE: ["Loan servicing"],
            features.ZIP_CODE: [zip_code if zip_as_int else f"{zip_code}.0".encode()],
            features.LABEL_KEY: [[b"Yes"], [b"No"], []][i % 3],
        }
        if with_narrative:
            row[features.NARRATIVE] = [f"complaint {i}".encode()] if i % 2 else []
        rows.append(row)
    return rows


def _raw_spec(zip_as_int: bool, with_narrative: bool) -> dict:
    spec = {
        "row": tf.io.FixedLenFeature([], tf.int64),
        features.PRODUCT: tf.io.FixedLenFeature([1], tf.string),  # required: dense
        features.ZIP_CODE: tf.io.VarLenFeature(tf.int64 if zip_as_int else tf.string),
        features.LABEL_KEY: tf.io.VarLenFeature(tf.string),
    }
    for key in (features.SUB_PRODUCT, features.COMPANY_RESPONSE, features.STATE, features.ISSUE):
        spec[key] = tf.io.VarLenFeature(tf.string)
    if with_narrative:
        spec[features.NARRATIVE] = tf.io.VarLenFeature(tf.string)
    return spec


def _with_row(inputs):
    return {"row": inputs["row"], **preprocessing_fn(inputs)}


@pytest.mark.parametrize(
    ("zip_as_int", "with_narrative"), [(False, True), (True, False)], ids=["text", "no_text"]
)
def test_preprocessing_fn_outputs(tmp_path, zip_as_int, with_narrative):
    rows = _raw_rows(zip_as_int, with_narrative)
    result = _analyze_and_transform(
        _with_row, rows, _raw_spec(zip_as_int, with_narrative), tmp_path
    )
    assert len(result) == len(rows)
    for key, dim in features.ONE_HOT_FEATURES.items():
        one_hot = np.stack([row[XF(key)] for row in result])
        assert one_hot.shape == (len(rows), dim + 1 + features.VOCAB_OOV_BUCKETS)
        assert (one_hot.sum(axis=1) == 1).all(), key  # every row has exactly one category
    zip_buckets = np.stack([row[XF(features.ZIP_CODE)] for row in result])
    assert zip_buckets.shape == (len(rows), features.BUCKET_FEATURES[features.ZIP_CODE])
    assert (zip_buckets.sum(axis=1) == 1).all()
    bucket_of_row = zip_buckets.argmax(axis=1)
    assert (np.diff(bucket_of_row) >= 0).all() and bucket_of_row[-1] > bucket_of_row[0]
    labels = [int(row[XF(features.LABEL_KEY)]) for row in result]
    assert labels == [[1, 0, 0][i % 3] for i in range(len(rows))]
    assert (XF(features.NARRATIVE) in result[0]) == with_narrative
    if with_narrative:
        assert [row[XF(features.NARRATIVE)] for row in result[:2]] == [b"", b"complaint 1"]
