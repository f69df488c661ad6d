"""`example_wire` against protobuf's own deterministic serialization, on data made here."""

import math

import numpy as np
import pyarrow as pa
import tensorflow as tf

from beam_jobs.lib import example_wire

NUM_ROWS = 400
INT64_EXTREMES = [0, 1, -1, 127, 128, 2**31, -(2**31), 2**63 - 1, -(2**63)]
FLOAT_SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, 3.4e38]


def _expected(columns: dict, num_rows: int) -> list[bytes]:
    """What protobuf writes for the same rows, one `tf.train.Example` at a time."""
    out = []
    for row in range(num_rows):
        example = tf.train.Example()
        for name, (values, list_field) in columns.items():
            value = values[row].as_py()
            if value is None:
                continue
            feature = example.features.feature[name]
            if list_field == example_wire.BYTES_LIST:
                feature.bytes_list.value.append(value.encode() if isinstance(value, str) else value)
            elif list_field == example_wire.FLOAT_LIST:
                feature.float_list.value.append(value)
            else:
                feature.int64_list.value.append(value)
        out.append(example.SerializeToString(deterministic=True))
    return out


def _with_nulls(values: list, rng: np.random.Generator, fraction: float) -> list:
    return [None if rng.random() < fraction else value for value in values]


def test_serialized_examples_equal_protobufs_deterministic_bytes():
    rng = np.random.default_rng(7)
    ints = [int(v) for v in rng.choice(INT64_EXTREMES, NUM_ROWS)]
    ints[:200] = [int(v) for v in rng.integers(-(2**62), 2**62, 200)]
    floats = [float(v) for v in rng.choice(FLOAT_SPECIALS, NUM_ROWS)]
    floats[:200] = [float(v) for v in rng.normal(0, 1e6, 200).astype(np.float32)]
    lengths = rng.choice([0, 1, 127, 128, 20_000], NUM_ROWS)
    texts = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in lengths]
    columns = {
        # Keys out of order, past one varint byte long, and not ASCII.
        "zeta_" + "k" * 300: (pa.array(_with_nulls(ints, rng, 0.3), pa.int64()), 3),
        "été": (pa.array(_with_nulls(floats, rng, 0.3), pa.float32()), 2),
        "alpha": (pa.array(_with_nulls(texts, rng, 0.3), pa.binary()), 1),
        "beta": (pa.array(_with_nulls(["ü" * 3] * NUM_ROWS, rng, 0.9), pa.string()), 1),
    }
    got = example_wire.serialize_examples(columns, NUM_ROWS)
    expected = _expected(columns, NUM_ROWS)
    # NaN's payload bits are the input's: compare those rows parsed, the rest byte for byte.
    for row, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        if floats[row] != floats[row] and columns["été"][0][row].is_valid:
            parsed = tf.train.Example.FromString(ours)
            assert math.isnan(parsed.features.feature["été"].float_list.value[0])
            continue
        assert ours == theirs, row


def test_rows_with_no_value_are_empty_examples():
    columns = {
        "a": (pa.array([None, 5, None], pa.int64()), example_wire.INT64_LIST),
        "b": (pa.array([None, None, None], pa.binary()), example_wire.BYTES_LIST),
    }
    got = example_wire.serialize_examples(columns, 3)
    assert got == [b"", _expected(columns, 3)[1], b""]
    assert example_wire.serialize_examples({}, 2) == [b"", b""]


def test_arrays_sliced_out_of_larger_ones_give_the_same_examples():
    rng = np.random.default_rng(11)
    whole = {
        "n": (pa.array(_with_nulls(list(range(-50, 50)), rng, 0.2), pa.int64()), 3),
        "s": (pa.array(_with_nulls([f"v{i}" * i for i in range(100)], rng, 0.2)), 1),
    }
    sliced = {name: (values.slice(30, 40), field) for name, (values, field) in whole.items()}
    rebuilt = {
        name: (pa.array(values.to_pylist(), values.type), field)
        for name, (values, field) in sliced.items()
    }
    assert example_wire.serialize_examples(sliced, 40) == _expected(rebuilt, 40)
    assert example_wire.serialize_examples(sliced, 0) == []
