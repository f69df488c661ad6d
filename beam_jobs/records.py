"""Raw records: reading CSV, JSON lines, Parquet, Avro and TFRecord files, typing and encoding them.

Plain functions, testable without Beam. Ingest and batch inference share them, so a record is read,
typed and turned into a `tf.Example` the same way before training and at inference time.

A reader yields `RawRow`s: the file, the row's line (or record index) and a dict of column values,
or a reason when the row cannot be parsed. CSV values stay `str` and are typed by their text;
values from typed formats keep their Python type (strings as `bytes`). An empty value is an absent
feature, never an empty string or a zero.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import enum
import functools
import io
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

from beam_jobs import artifacts
from beam_jobs.cli import JobError

__all__ = [
    "FORMATS",
    "ColumnType",
    "RawRow",
    "column_types_from_schema",
    "detect_format",
    "encode_example",
    "encode_examples",
    "normalize_column_name",
    "normalize_header",
    "read_csv_header",
    "read_rows",
    "value_type",
]

CSV, TFRECORD, PARQUET, AVRO, JSONL = "csv", "tfrecord", "parquet", "avro", "jsonl"
FORMATS = (CSV, TFRECORD, PARQUET, AVRO, JSONL)
_EXTENSIONS = {
    ".csv": CSV,
    ".tfrecord": TFRECORD,
    ".tfrecords": TFRECORD,
    ".parquet": PARQUET,
    ".avro": AVRO,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".json": JSONL,
}
_INT_TEXT = re.compile(r"[-+]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PARQUET_BATCH_ROWS = 4096
# Narratives run to tens of kilobytes; Python's default limit of 128 KiB per field is too tight.
csv.field_size_limit(16 << 20)


class ColumnType(enum.IntEnum):
    """A column's `tf.Example` type; a larger value is a wider type that holds the narrower ones."""

    INT = 1
    FLOAT = 2
    BYTES = 3


_SCHEMA_TYPES = {
    schema_pb2.INT: ColumnType.INT,
    schema_pb2.FLOAT: ColumnType.FLOAT,
    schema_pb2.BYTES: ColumnType.BYTES,
}


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One record as read: its values, or the reason it could not be parsed."""

    file: str
    line: int
    values: Mapping[str, Any] | None = None
    error: str | None = None
    raw: Any = None


def normalize_column_name(name: str, index: int) -> str:
    """Normalizes a header name as the book's download script does.

    Lower case, spaces and `-` become `_`, `?` is dropped; an empty name becomes `col_<index>`.
    """
    normalized = name.strip().lower().replace("?", "").replace(" ", "_").replace("-", "_")
    return normalized or f"col_{index}"


def normalize_header(names: list[str], source: str) -> list[str]:
    """Normalizes every name of a header.

    Raises:
        JobError: two names normalize to the same column.
    """
    normalized = [normalize_column_name(name, index) for index, name in enumerate(names)]
    seen: set[str] = set()
    for column in normalized:
        if column in seen:
            raise JobError(f"{source}: two header columns normalize to {column!r}; rename one")
        seen.add(column)
    return normalized


def detect_format(paths: list[str]) -> str:
    """The input format named by the files' extensions (a trailing `.gz` is ignored).

    Raises:
        JobError: the extensions are unknown or disagree.
    """
    formats = set()
    for path in paths:
        stem = path[:-3] if path.endswith(".gz") else path
        extension = "." + stem.rsplit(".", 1)[-1].lower() if "." in stem else ""
        formats.add(_EXTENSIONS.get(extension))
    if len(formats) != 1 or None in formats:
        raise JobError(
            f"cannot tell the input format from the file names ({paths[0]} ...); "
            f"pass --format={'|'.join(FORMATS)}"
        )
    return formats.pop()


def column_types_from_schema(schema_path: str) -> dict[str, ColumnType]:
    """Column types declared by a TFDV schema (text `Schema` proto).

    Raises:
        JobError: the file is missing or is not a schema.
    """
    if not FileSystems.exists(schema_path):
        raise JobError(f"--schema={schema_path} does not exist")
    with FileSystems.open(schema_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        text = handle.read().decode("utf-8")
    try:
        schema = text_format.Parse(text, schema_pb2.Schema())
    except text_format.ParseError as error:
        raise JobError(f"--schema={schema_path} is not a TFDV schema: {error}") from None
    return {
        feature.name: _SCHEMA_TYPES[feature.type]
        for feature in schema.feature
        if feature.type in _SCHEMA_TYPES
    }


def _open_text(path: str) -> io.TextIOWrapper:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    binary = FileSystems.open(path, compression_type=CompressionTypes.AUTO)
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def read_csv_header(path: str) -> list[str]:
    """The normalized header of a CSV file.

    Raises:
        JobError: the file is empty or its header cannot be read.
    """
    with _open_text(path) as text:
        try:
            header = next(csv.reader(text))
        except StopIteration:
            raise JobError(f"{path} is empty: a CSV input needs a header row") from None
        except csv.Error as error:
            raise JobError(f"{path}: cannot read the CSV header: {error}") from None
    return normalize_header(header, path)


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _has_undecodable(fields: list[str]) -> bool:
    # surrogateescape turned each undecodable byte into a lone surrogate, which UTF-8 refuses.
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_rows(path: str) -> Iterator[RawRow]:
    with _open_text(path) as text:
        reader = csv.reader(text)
        header = normalize_header(next(reader, []), path)
        line = reader.line_num
        while True:
            start = line + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                line = reader.line_num
                yield RawRow(path, start, error=f"malformed CSV: {error}")
                continue
            line = reader.line_num
            if not fields:
                continue  # A blank line is not a row.
            if _has_undecodable(fields):
                raw = [_printable(field) for field in fields]
                yield RawRow(path, start, error="undecodable bytes (not UTF-8)", raw=raw)
            elif len(fields) != len(header):
                yield RawRow(
                    path,
                    start,
                    error=f"expected {len(header)} fields, found {len(fields)}",
                    raw=fields,
                )
            else:
                values = {
                    column: value for column, value in zip(header, fields, strict=True) if value
                }
                yield RawRow(path, start, values=values, raw=fields)


def _typed_values(record: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for index, (name, value) in enumerate(record.items()):
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (list, tuple)):
            value = [item.encode("utf-8") if isinstance(item, str) else item for item in value]
        values[normalize_column_name(name, index)] = value
    return values


def _jsonl_rows(path: str) -> Iterator[RawRow]:
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raw = line.decode("utf-8", "backslashreplace").rstrip("\r\n")
                yield RawRow(path, line_number, error="undecodable bytes (not UTF-8)", raw=raw)
                continue
            except json.JSONDecodeError as error:
                raw = line.decode("utf-8").rstrip("\r\n")
                yield RawRow(path, line_number, error=f"invalid JSON: {error.msg}", raw=raw)
                continue
            if not isinstance(record, dict):
                yield RawRow(path, line_number, error="not a JSON object", raw=record)
                continue
            yield RawRow(path, line_number, values=_typed_values(record), raw=record)


def _parquet_rows(path: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        parquet_file = pq.ParquetFile(handle)
        index = 0
        for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                index += 1
                yield RawRow(path, index, values=_typed_values(record), raw=record)


def _avro_rows(path: str) -> Iterator[RawRow]:
    import fastavro

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for index, record in enumerate(fastavro.reader(handle), start=1):
            yield RawRow(path, index, values=_typed_values(record), raw=record)


def _feature_values(feature: tf.train.Feature) -> list[Any]:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _tfrecord_rows(path: str) -> Iterator[RawRow]:
    for index, record in enumerate(artifacts.read_tfrecords(path), start=1):
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # protobuf's DecodeError differs between its implementations.
            yield RawRow(path, index, error="not a serialized tf.Example", raw=record.hex()[:200])
            continue
        values = {
            name: _feature_values(feature)
            for name, feature in example.features.feature.items()
            if _feature_values(feature)
        }
        yield RawRow(path, index, values=values)


_READERS = {
    CSV: _csv_rows,
    JSONL: _jsonl_rows,
    PARQUET: _parquet_rows,
    AVRO: _avro_rows,
    TFRECORD: _tfrecord_rows,
}


def read_rows(path: str, input_format: str) -> Iterator[RawRow]:
    """Reads every row of one file. A file that breaks off mid-way ends in one rejected row."""
    try:
        yield from _READERS[input_format](path)
    except (OSError, ValueError, EOFError) as error:
        yield RawRow(path, 0, error=f"unreadable {input_format} file: {error}")


@functools.lru_cache(maxsize=1 << 16)
def _text_type(value: str) -> ColumnType:
    # Cached: categorical columns repeat the same few texts over millions of rows.
    if _INT_TEXT.fullmatch(value) and _INT64_MIN <= int(value) <= _INT64_MAX:
        return ColumnType.INT
    if _FLOAT_TEXT.fullmatch(value):
        return ColumnType.FLOAT
    return ColumnType.BYTES


def _scalar_type(value: Any) -> ColumnType | None:
    if value is None:
        return None
    if isinstance(value, (bool, int)):
        return ColumnType.INT
    if isinstance(value, float):
        return ColumnType.FLOAT
    if isinstance(value, str):
        return _text_type(value)
    return ColumnType.BYTES


def value_type(value: Any) -> ColumnType | None:
    """The narrowest column type holding a value (a list: all its items); None when absent."""
    if isinstance(value, (list, tuple)):
        types = [_scalar_type(item) for item in value]
        return max((kind for kind in types if kind is not None), default=None)
    return _scalar_type(value)


def _as_int(value: Any) -> int:
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            return number
    raise ValueError("is not an integer")


def _as_float(value: Any) -> float:
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str) and (_FLOAT_TEXT.fullmatch(value) or value.lower() in ("nan", "inf")):
        return float(value)
    raise ValueError("is not a number")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value)).encode("utf-8")
    return str(value).encode("utf-8")


def _fill_feature(feature: tf.train.Feature, values: list[Any], column_type: ColumnType) -> None:
    # Filled in place: building a Feature and copying it in costs a third of ingest's time.
    if column_type is ColumnType.INT:
        feature.int64_list.value.extend([_as_int(v) for v in values])
    elif column_type is ColumnType.FLOAT:
        feature.float_list.value.extend([_as_float(v) for v in values])
    else:
        feature.bytes_list.value.extend([_as_bytes(v) for v in values])


def encode_example(
    values: Mapping[str, Any], column_types: Mapping[str, ColumnType]
) -> tf.train.Example:
    """Builds a `tf.Example` from one row's values, each column encoded as its column type.

    Raises:
        ValueError: a value does not fit its column's type; the message names column and value.
    """
    example = tf.train.Example()
    features = example.features.feature
    for column in sorted(values):
        value = values[column]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        items = [item for item in items if item is not None and item != ""]
        if not items:
            continue
        column_type = column_types.get(column) or value_type(items) or ColumnType.BYTES
        try:
            _fill_feature(features[column], items, column_type)
        except (ValueError, TypeError, OverflowError) as error:
            shown = items[0] if len(items) == 1 else items
            raise ValueError(
                f"column {column!r}: {shown!r} {error} ({column_type.name} column)"
            ) from None
    return example


# Texts the batch path accepts per column type, as RE2 patterns matching what `_as_int` and
# `_as_float` accept (pyarrow's own parser then converts them).
_ARROW_TEXT_CHECKS = {
    ColumnType.INT: (r"^[-+]?[0-9]+$", "is not an integer"),
    ColumnType.FLOAT: (
        r"^([-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|(?i:nan|inf))$",
        "is not a number",
    ),
}
_ARROW_TYPES = {
    ColumnType.INT: pa.int64(),
    ColumnType.FLOAT: pa.float32(),
    ColumnType.BYTES: pa.binary(),
}


@functools.cache
def _example_encoder() -> example_coder.RecordBatchToExamplesEncoder:
    return example_coder.RecordBatchToExamplesEncoder()


def encode_examples(
    rows: Sequence[Mapping[str, Any]], column_types: Mapping[str, ColumnType]
) -> list[tuple[bytes | None, str | None]]:
    """Serialized `tf.Example`s of many rows: per row (bytes, None), or (None, why it failed).

    Rows of text values (CSV) are typed column by column in Arrow and encoded by tfx_bsl's C++
    encoder, several times faster than one protobuf per row; other rows, and a batch holding a
    text Arrow parses differently from Python (`+5`, an int64 overflow), take the per-row path.
    Both give the same examples: sorted features, absent values absent.
    """
    if rows and all(type(value) is str for row in rows for value in row.values()):
        try:
            return _encode_text_rows(rows, column_types)
        except pa.ArrowException:
            pass
    return [_encode_row(row, column_types) for row in rows]


def _encode_row(
    values: Mapping[str, Any], column_types: Mapping[str, ColumnType]
) -> tuple[bytes | None, str | None]:
    try:
        return encode_example(values, column_types).SerializeToString(deterministic=True), None
    except ValueError as error:
        return None, str(error)


def _typed_column(
    column: str, texts: list[str | None], kind: ColumnType
) -> tuple[pa.Array, list[str | None]]:
    """A column's texts as an Arrow array of its type, and per row why a text does not fit."""
    array = pa.array(texts, pa.string())
    errors: list[str | None] = [None] * len(texts)
    if kind is ColumnType.BYTES:
        return array.cast(pa.binary()), errors
    pattern, problem = _ARROW_TEXT_CHECKS[kind]
    misfits = pc.invert(pc.fill_null(pc.match_substring_regex(array, pattern), True))
    for index in np.flatnonzero(misfits.to_numpy(zero_copy_only=False)):
        errors[index] = f"column {column!r}: {texts[index]!r} {problem} ({kind.name} column)"
    fitting = pc.if_else(misfits, pa.scalar(None, pa.string()), array)
    return fitting.cast(_ARROW_TYPES[kind]), errors


def _encode_text_rows(
    rows: Sequence[Mapping[str, str]], column_types: Mapping[str, ColumnType]
) -> list[tuple[bytes | None, str | None]]:
    errors: list[str | None] = [None] * len(rows)
    typed = {}
    for column in sorted(set().union(*rows)):
        texts = [row.get(column) for row in rows]
        kind = column_types.get(column) or max(map(value_type, filter(None, texts)))
        typed[column], column_errors = _typed_column(column, texts, kind)
        errors = [mine or theirs for mine, theirs in zip(errors, column_errors, strict=True)]
    results: list[tuple[bytes | None, str | None]] = [(None, error) for error in errors]
    # Rows with the same columns present are encoded together, so every list is one value long
    # and no absent value becomes an empty feature.
    by_columns: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
    for index, row in enumerate(rows):
        if errors[index] is None:
            by_columns[tuple(sorted(row))].append(index)
    for columns, indexes in by_columns.items():
        if not columns:
            for index in indexes:
                results[index] = (b"", None)
            continue
        take = pa.array(indexes, pa.int64())
        offsets = pa.array(np.arange(len(indexes) + 1, dtype=np.int32))
        arrays = [pa.ListArray.from_arrays(offsets, typed[c].take(take)) for c in columns]
        batch = pa.RecordBatch.from_arrays(arrays, names=list(columns))
        for index, serialized in zip(indexes, _example_encoder().encode(batch), strict=True):
            # The C++ encoder orders features by hash: re-serialize them sorted, as protobuf's
            # deterministic mode does for the per-row path, so both give the same bytes.
            example = tf.train.Example.FromString(serialized)
            results[index] = (example.SerializeToString(deterministic=True), None)
    return results
