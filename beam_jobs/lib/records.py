"""Raw records: reading CSV, JSON lines, Parquet, Avro and TFRecord files, typing and encoding them.

Plain functions, testable without Beam. Ingest and batch inference share them, so a record is read,
typed and turned into a `tf.Example` the same way before training and at inference time.

A reader yields `RawRow`s: the file, the row's line (or record index) and a dict of column values,
or a reason when the row cannot be parsed. CSV values stay `str` and are typed by their text;
values from typed formats keep their Python type (strings as `bytes`). An empty value is an absent
feature, never an empty string or a zero.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import dataclasses
import enum
import functools
import heapq
import io
import itertools
import json
import lzma
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import tensorflow as tf
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.lib import artifacts, example_wire, tfdv_io
from beam_jobs.lib.cli import JobError

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "ColumnType",
    "RawRow",
    "TextBatch",
    "check_compression",
    "column_types_from_schema",
    "detect_format",
    "encode_example",
    "encode_examples",
    "encode_text_columns",
    "normalize_column_name",
    "normalize_header",
    "read_csv_batches",
    "read_csv_header",
    "read_rows",
    "schema_column_types",
    "text_column_type",
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
_INT_PATTERN = r"^[-+]?[0-9]+$"
_FLOAT_PATTERN = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
# The same patterns for Python's `re.fullmatch` and for Arrow's RE2.
_INT_TEXT = re.compile(_INT_PATTERN)
_FLOAT_TEXT = re.compile(_FLOAT_PATTERN)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PARQUET_BATCH_ROWS = 4096
# `--compression` values: Beam's names. `auto` picks one by file extension as Beam does
# (.gz, .bz2, .deflate, .zst, .zstd, .xz, .lzma); CSV and JSON lines are read through it.
AUTO, UNCOMPRESSED = CompressionTypes.AUTO, CompressionTypes.UNCOMPRESSED
_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    CompressionTypes.GZIP: lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    CompressionTypes.BZIP2: bz2.BZ2Decompressor,
    # zlib-wrapped deflate, as Beam writes and reads `.deflate` files.
    CompressionTypes.DEFLATE: zlib.decompressobj,
    CompressionTypes.ZSTD: lambda: zstandard.ZstdDecompressor().decompressobj(),
    # Either container: `.xz`, or the legacy `.lzma`.
    CompressionTypes.LZMA: lzma.LZMADecompressor,
}
COMPRESSIONS = (AUTO, UNCOMPRESSED, *_DECOMPRESSORS)
_CORRUPT_DATA = (zlib.error, OSError, lzma.LZMAError, zstandard.ZstdError)
_COMPRESSED_CHUNK_BYTES = 256 << 10
# CSV is read in blocks of whole records this large, parsed by Arrow (or, for a block Arrow
# cannot parse the way Python's csv module would, by that module).
_CSV_BLOCK_BYTES = 4 << 20
# A block that finds no end of a record by this size is cut at its last newline: a stray quote
# must not make the reader hold the rest of the file.
_CSV_MAX_BLOCK_BYTES = 64 << 20
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


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """Consecutive rows of one CSV file, column by column: what ingest types and encodes in bulk.

    `columns` holds every header column as Arrow strings, null where the value is empty; `lines`
    the line each row starts on; `rejected` the rows of the same stretch that could not be parsed.
    """

    file: str
    lines: np.ndarray
    columns: Mapping[str, pa.Array]
    rejected: tuple[RawRow, ...] = ()

    @property
    def num_rows(self) -> int:
        """Rows parsed (the rejected ones not included)."""
        return len(self.lines)

    def raw_row(self, index: int) -> RawRow:
        """Parsed row `index` as a `RawRow`: its non-empty values, and every field as read."""
        fields = [column[index].as_py() or "" for column in self.columns.values()]
        values = {name: value for name, value in zip(self.columns, fields, strict=True) if value}
        return RawRow(self.file, int(self.lines[index]), values=values, raw=fields)

    def raw_rows(self) -> Iterator[RawRow]:
        """Every row, parsed or rejected, in line order."""
        parsed = (self.raw_row(index) for index in range(self.num_rows))
        yield from heapq.merge(parsed, self.rejected, key=lambda row: row.line)


def normalize_column_name(name: str, index: int) -> str:
    """Normalizes a header name as the book's download script does.

    Lower case, spaces and `-` become `_`, `?` is dropped; an empty name becomes `col_<index>`.
    """
    normalized = name.strip().lower().replace("?", "").replace(" ", "_").replace("-", "_")
    return normalized or f"col_{index}"


def normalize_header(names: list[str], source: str) -> list[str]:
    """Normalizes every name of a header.

    Raises:
        JobError: a name is not UTF-8 text, or two names normalize to the same column.
    """
    for index, name in enumerate(names):
        if _has_undecodable([name]):
            raise JobError(
                f"{source}: header column {index + 1} ({_printable(name)!r}) is not UTF-8 text; "
                "save the file as UTF-8"
            )
    normalized = [normalize_column_name(name, index) for index, name in enumerate(names)]
    seen: set[str] = set()
    for column in normalized:
        if column in seen:
            raise JobError(f"{source}: two header columns normalize to {column!r}; rename one")
        seen.add(column)
    return normalized


def _without_compression_suffix(path: str) -> str:
    if CompressionTypes.detect_compression_type(path) == UNCOMPRESSED:
        return path
    return path.rsplit(".", 1)[0]


def detect_format(paths: list[str]) -> str:
    """The input format named by the files' extensions (a compression suffix, such as `.gz`,
    `.bz2` or `.zst`, is looked through).

    Raises:
        JobError: the extensions are unknown or disagree.
    """
    formats = set()
    for path in paths:
        stem = _without_compression_suffix(path)
        extension = "." + stem.rsplit(".", 1)[-1].lower() if "." in stem else ""
        formats.add(_EXTENSIONS.get(extension))
    if len(formats) != 1 or None in formats:
        raise JobError(
            f"cannot tell the input format from the file names ({paths[0]} ...); "
            f"pass --format={'|'.join(FORMATS)}"
        )
    return formats.pop()


def check_compression(input_format: str, compression: str) -> None:
    """Refuses a `--compression` other than `auto` for formats that compress inside the file.

    Raises:
        JobError: `compression` is set for Parquet, Avro or TFRecord input.
    """
    if compression != AUTO and input_format not in _TEXT_READERS:
        raise JobError(
            f"--compression={compression} applies to csv and jsonl input only; {input_format} "
            "files carry their own compression (TFRecord is read as GZIP when named .gz)"
        )


def column_types_from_schema(schema_path: str) -> dict[str, ColumnType]:
    """Column types declared by a TFDV schema (text `Schema` proto).

    Raises:
        JobError: the file is missing or is not a schema.
    """
    try:
        schema = tfdv_io.read_schema(schema_path)
    except FileNotFoundError:
        raise JobError(f"--schema={schema_path} does not exist") from None
    except text_format.ParseError as error:
        raise JobError(f"--schema={schema_path} is not a TFDV schema: {error}") from None
    return schema_column_types(schema)


def schema_column_types(schema: schema_pb2.Schema) -> dict[str, ColumnType]:
    """Column types declared by a parsed TFDV schema (features of other types are left out)."""
    return {
        feature.name: _SCHEMA_TYPES[feature.type]
        for feature in schema.feature
        if feature.type in _SCHEMA_TYPES
    }


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a compressed binary stream.

    Reads every stream of a concatenation (as `cat a.gz b.gz` or parallel compressors make
    them). Corrupt data raises ValueError, and data that ends before its end-of-stream marker
    (a truncated file) EOFError, where Beam's reader would end quietly short of the rows.
    """

    def __init__(self, compressed: BinaryIO, compression: str) -> None:
        super().__init__()
        self._compressed = compressed
        self._compression = compression
        self._decompressor = _DECOMPRESSORS[compression]()
        self._started = False  # Whether the current stream has had any input.
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._eof:
            self._pending = memoryview(self._decompress_more())
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _decompress_more(self) -> bytes:
        data = b""
        if self._decompressor.eof:  # The next stream of a concatenation, if any.
            data = self._decompressor.unused_data
            self._decompressor = _DECOMPRESSORS[self._compression]()
            self._started = False
        data = data or self._compressed.read(_COMPRESSED_CHUNK_BYTES)
        if not data:
            self._eof = True
            if self._started and not self._decompressor.eof:
                raise EOFError(f"{self._compression} data ends before its end: truncated file?")
            return b""
        self._started = True
        try:
            return self._decompressor.decompress(data)
        except _CORRUPT_DATA as error:
            raise ValueError(f"corrupt {self._compression} data: {error}") from None

    def close(self) -> None:
        if not self.closed:
            self._compressed.close()
        super().close()


def _open_binary(path: str, compression: str) -> BinaryIO:
    """A file's bytes, decompressed as `compression` says (`auto`: by its extension)."""
    if compression == AUTO:
        compression = CompressionTypes.detect_compression_type(path)
    binary = FileSystems.open(path, compression_type=UNCOMPRESSED)
    if compression == UNCOMPRESSED:
        return binary
    return io.BufferedReader(_Decompressed(binary, compression), buffer_size=1 << 20)


def _open_text(path: str, compression: str) -> io.TextIOWrapper:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    binary = _open_binary(path, compression)
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def read_csv_header(path: str, compression: str = AUTO) -> list[str]:
    """The normalized header of a CSV file.

    Raises:
        JobError: the file is empty or its header cannot be read.
    """
    try:
        with _open_text(path, compression) as text:
            header = next(csv.reader(text))
    except StopIteration:
        raise JobError(f"{path} is empty: a CSV input needs a header row") from None
    except (OSError, ValueError, EOFError, csv.Error) as error:
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


def _csv_records(reader: Any, header: list[str], path: str, lines_before: int) -> Iterator[RawRow]:
    """Rows of a `csv.reader`, numbered from `lines_before` + 1, or why a row was refused."""
    line = lines_before + reader.line_num
    while True:
        start = line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            line = lines_before + reader.line_num
            yield RawRow(path, start, error=f"malformed CSV: {error}")
            continue
        line = lines_before + reader.line_num
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
            values = {column: value for column, value in zip(header, fields, strict=True) if value}
            yield RawRow(path, start, values=values, raw=fields)


def _count_lines(data: bytes) -> int:
    """Lines as Python's csv module counts them: ends at \n, \r\n or a lone \r."""
    lone_returns = data.count(b"\r") - data.count(b"\r\n")
    unterminated = bool(data) and not data.endswith((b"\n", b"\r"))
    return data.count(b"\n") + lone_returns + unterminated


def _last_record_end(data: bytes) -> int:
    """The offset just past the last newline outside quotes, or 0: where a block may end.

    Counting quotes is right for RFC 4180 quoting; a stray quote in an unquoted value can
    mislead it, which `_arrow_csv_block` notices, and the Python reader then takes over.
    """
    array = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(array == ord("\n"))
    quotes = np.flatnonzero(array == ord('"'))
    outside = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


def _arrow_csv_block(
    path: str, header: list[str], first_line: int, data: bytes, lines_in_data: int
) -> TextBatch | None:
    """A block of whole records parsed by Arrow, or None where Arrow might not read it as
    Python's csv module would.

    Arrow gives no line numbers: each row spans one line plus the newlines inside its values,
    which holds only without blank lines and lone carriage returns, so the total is checked.
    Undecodable bytes and rows of the wrong width make Arrow fail. A last value ending in a
    newline may be a quote left open by a block cut in the wrong place.
    """
    if not header or data.count(b"\r") != data.count(b"\r\n"):
        return None
    try:
        table = pv.read_csv(
            pa.py_buffer(data),
            read_options=pv.ReadOptions(column_names=header, use_threads=False),
            parse_options=pv.ParseOptions(newlines_in_values=True),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid:
        return None
    columns = {name: table.column(name).combine_chunks() for name in header}
    last = columns[header[-1]][-1].as_py() if table.num_rows else None
    if last and last.endswith(("\n", "\r")):
        return None
    spans = np.ones(table.num_rows, np.int64)
    for column in columns.values():
        spans += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy(zero_copy_only=False)
    if int(spans.sum()) != lines_in_data:
        return None
    lines = first_line + np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
    return TextBatch(path, lines, columns)


def _rows_to_batch(path: str, header: list[str], rows: list[RawRow]) -> TextBatch:
    parsed = [row for row in rows if row.error is None]
    columns = {
        name: pa.array([row.values.get(name) for row in parsed], pa.string()) for name in header
    }
    lines = np.array([row.line for row in parsed], np.int64)
    return TextBatch(path, lines, columns, tuple(row for row in rows if row.error is not None))


_LINE_END = re.compile(rb"\r\n|\r|\n")


class _CsvReader:
    """Reads one CSV stream as `TextBatch`es: Arrow for blocks of well-formed records, Python's
    csv module from the start of any block Arrow refuses until past that block's end, where a
    record of Python's own ends and Arrow takes over again. Every row gets what Python's csv
    module alone would give it, including its line number."""

    def __init__(self, binary: Any, path: str, block_bytes: int) -> None:
        self._binary = binary
        self._path = path
        self._block_bytes = block_bytes
        self._buffer = b""
        self._eof = False
        self._line = 1  # The line the buffer starts on.
        self._header: list[str] = []

    def _fill(self, size: int) -> None:
        while not self._eof and len(self._buffer) < size:
            chunk = self._binary.read(self._block_bytes)
            self._eof = not chunk
            self._buffer += chunk

    def _consume(self, size: int, lines: int) -> None:
        self._buffer = self._buffer[size:]
        self._line += lines

    def _read_header(self) -> None:
        self._fill(max(self._block_bytes, len(codecs.BOM_UTF8)))
        self._buffer = self._buffer.removeprefix(codecs.BOM_UTF8)
        reader = csv.reader(self._lines(0, [0]))
        self._header = normalize_header(next(reader, []), self._path)
        ends = list(itertools.islice(_LINE_END.finditer(self._buffer), reader.line_num))
        self._consume(ends[-1].end() if ends else len(self._buffer), reader.line_num)

    def _lines(self, start: int, offset: list[int]) -> Iterator[str]:
        """The buffer's lines from `start`, reading on as needed; `offset[0]` follows the end of
        the last line handed out."""
        offset[0] = start
        while True:
            match = _LINE_END.search(self._buffer, offset[0])
            at_edge = match is None or match.end() == len(self._buffer)
            if at_edge and not self._eof:  # A \r at the edge may be half of a \r\n.
                self._fill(len(self._buffer) + self._block_bytes)
                continue
            end = match.end() if match else len(self._buffer)
            if end == offset[0]:
                return
            line, offset[0] = self._buffer[offset[0] : end], end
            yield line.decode("utf-8", "surrogateescape")

    def _python_block(self, block_end: int) -> TextBatch:
        offset = [0]
        reader = csv.reader(self._lines(0, offset))
        rows = []
        for row in _csv_records(reader, self._header, self._path, self._line - 1):
            rows.append(row)
            if offset[0] >= block_end:
                break
        self._consume(offset[0], reader.line_num)
        return _rows_to_batch(self._path, self._header, rows)

    def batches(self) -> Iterator[TextBatch]:
        self._read_header()
        while True:
            self._fill(self._block_bytes)
            if not self._buffer:
                return
            end = len(self._buffer) if self._eof else _last_record_end(self._buffer)
            if not end and len(self._buffer) < _CSV_MAX_BLOCK_BYTES:
                self._fill(len(self._buffer) + self._block_bytes)
                continue
            if not end:
                yield self._python_block(len(self._buffer))
                continue
            block = self._buffer[:end]
            lines = _count_lines(block)
            batch = _arrow_csv_block(self._path, self._header, self._line, block, lines)
            if batch is None:
                yield self._python_block(end)
                continue
            self._consume(end, lines)
            yield batch


def read_csv_batches(
    path: str, block_bytes: int = _CSV_BLOCK_BYTES, *, compression: str = AUTO
) -> Iterator[TextBatch]:
    """Reads a CSV file (RFC 4180, with a header) as `TextBatch`es of about `block_bytes` each.

    Well-formed stretches are parsed by Arrow, any other by Python's csv module, row by row:
    the same values and lines for every good row, and a reason for every bad one. A file that
    breaks off (or whose compressed data does) ends in one rejected row. `compression` is one of
    `COMPRESSIONS`; `auto` goes by the file extension.
    """
    try:
        with _open_binary(path, compression) as binary:
            yield from _CsvReader(binary, path, block_bytes).batches()
    except (OSError, ValueError, EOFError, csv.Error) as error:
        rejected = (RawRow(path, 0, error=f"unreadable csv file: {error}"),)
        yield TextBatch(path, np.zeros(0, np.int64), {}, rejected)


def _csv_rows(path: str, compression: str) -> Iterator[RawRow]:
    for batch in read_csv_batches(path, compression=compression):
        yield from batch.raw_rows()


def _typed_values(record: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for index, (name, value) in enumerate(record.items()):
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (list, tuple)):
            value = [item.encode("utf-8") if isinstance(item, str) else item for item in value]
        values[normalize_column_name(name, index)] = value
    return values


def _jsonl_rows(path: str, compression: str) -> Iterator[RawRow]:
    with _open_binary(path, compression) as handle:
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
    # Our decompression, which notices a stream that ends before its end-of-stream marker.
    records = artifacts.read_tfrecords(path, open_file=lambda name: _open_binary(name, AUTO))
    for index, record in enumerate(records, start=1):
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


_TEXT_READERS = {CSV: _csv_rows, JSONL: _jsonl_rows}
_BINARY_READERS = {PARQUET: _parquet_rows, AVRO: _avro_rows, TFRECORD: _tfrecord_rows}


def read_rows(path: str, input_format: str, compression: str = AUTO) -> Iterator[RawRow]:
    """Reads every row of one file. A file that breaks off mid-way ends in one rejected row.

    `compression` applies to CSV and JSON lines (see `check_compression`).
    """
    try:
        if input_format in _TEXT_READERS:
            yield from _TEXT_READERS[input_format](path, compression)
        else:
            yield from _BINARY_READERS[input_format](path)
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
    ColumnType.INT: (_INT_PATTERN, "is not an integer"),
    ColumnType.FLOAT: (f"^({_FLOAT_PATTERN[1:-1]}|(?i:nan|inf))$", "is not a number"),
}
_ARROW_TYPES = {
    ColumnType.INT: pa.int64(),
    ColumnType.FLOAT: pa.float32(),
    ColumnType.BYTES: pa.binary(),
}


_LIST_FIELDS = {
    ColumnType.INT: example_wire.INT64_LIST,
    ColumnType.FLOAT: example_wire.FLOAT_LIST,
    ColumnType.BYTES: example_wire.BYTES_LIST,
}


def text_column_type(texts: pa.Array) -> ColumnType | None:
    """The narrowest type holding every text of an Arrow string column (as `value_type` of each,
    widest wins); None when all are null."""
    texts = texts.drop_null()
    if not len(texts):
        return None
    if pc.all(pc.match_substring_regex(texts, _INT_PATTERN)).as_py():
        try:
            texts.cast(pa.int64())
            return ColumnType.INT
        except pa.ArrowInvalid:  # `+5` or past int64: Python's rules decide, per distinct text.
            return max(map(_text_type, set(texts.to_pylist())))
    if pc.all(pc.match_substring_regex(texts, _FLOAT_PATTERN)).as_py():
        return ColumnType.FLOAT
    return ColumnType.BYTES


def encode_examples(
    rows: Sequence[Mapping[str, Any]], column_types: Mapping[str, ColumnType]
) -> list[tuple[bytes | None, str | None]]:
    """Serialized `tf.Example`s of many rows: per row (bytes, None), or (None, why it failed).

    Rows of text values (CSV) go through `encode_text_columns`; other rows are encoded one by one.
    Both give the same examples: sorted features, absent values absent.
    """
    if rows and all(type(value) is str for row in rows for value in row.values()):
        columns = {
            name: pa.array([row.get(name) or None for row in rows], pa.string())
            for name in sorted(set().union(*rows))
        }
        return encode_text_columns(columns, len(rows), column_types)
    return [_encode_row(row, column_types) for row in rows]


def encode_text_columns(
    columns: Mapping[str, pa.Array], num_rows: int, column_types: Mapping[str, ColumnType]
) -> list[tuple[bytes | None, str | None]]:
    """Serialized `tf.Example`s of rows given as Arrow string columns (null: absent value).

    Each column is typed in Arrow and the rows serialized column-wise by `example_wire`, many
    times faster than one protobuf per row. A batch holding a text Arrow parses differently from
    Python (`+5`, an int64 overflow) takes the per-row path, which gives the same bytes.
    """
    try:
        return _encode_text_columns(columns, num_rows, column_types)
    except pa.ArrowException:
        names = list(columns)
        texts = [columns[name].to_pylist() for name in names]
        rows = [
            {
                name: values[index]
                for name, values in zip(names, texts, strict=True)
                if values[index]
            }
            for index in range(num_rows)
        ]
        return [_encode_row(row, column_types) for row in rows]


def _encode_row(
    values: Mapping[str, Any], column_types: Mapping[str, ColumnType]
) -> tuple[bytes | None, str | None]:
    try:
        return encode_example(values, column_types).SerializeToString(deterministic=True), None
    except ValueError as error:
        return None, str(error)


def _typed_column(column: str, texts: pa.Array, kind: ColumnType) -> tuple[pa.Array, dict]:
    """A column's texts as an Arrow array of its type, and {row: why its text does not fit}."""
    if kind is ColumnType.BYTES:
        return texts.cast(pa.binary()), {}
    pattern, problem = _ARROW_TEXT_CHECKS[kind]
    misfits = pc.invert(pc.fill_null(pc.match_substring_regex(texts, pattern), True))
    errors = {
        int(index): f"column {column!r}: {texts[index].as_py()!r} {problem} ({kind.name} column)"
        for index in np.flatnonzero(misfits.to_numpy(zero_copy_only=False))
    }
    fitting = pc.if_else(misfits, pa.scalar(None, pa.string()), texts)
    return fitting.cast(_ARROW_TYPES[kind]), errors


def _encode_text_columns(
    columns: Mapping[str, pa.Array], num_rows: int, column_types: Mapping[str, ColumnType]
) -> list[tuple[bytes | None, str | None]]:
    typed: dict[str, tuple[pa.Array, int]] = {}
    errors: dict[int, str] = {}
    for name in sorted(columns):
        kind = column_types.get(name) or text_column_type(columns[name])
        if kind is None:
            continue  # No value in this batch.
        values, column_errors = _typed_column(name, columns[name], kind)
        typed[name] = (values, _LIST_FIELDS[kind])
        for index, error in column_errors.items():
            errors.setdefault(index, error)  # The first column in name order names the problem.
    serialized = example_wire.serialize_examples(typed, num_rows)
    results: list[tuple[bytes | None, str | None]] = [(row, None) for row in serialized]
    for index, error in errors.items():
        results[index] = (None, error)
    return results
