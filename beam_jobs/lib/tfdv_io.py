"""TFDV's artifacts on disk: the curated schema and the statistics one stage writes for another.

Read through Beam's FileSystems like every other artifact, so `gs://` and `s3://` paths work as
local ones do, and without importing TFDV itself (ingest reads schemas and starts faster without).
"""

from __future__ import annotations

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

__all__ = ["load_statistics", "read_schema"]


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def read_schema(path: str) -> schema_pb2.Schema:
    """Reads a TFDV `schema.pbtxt` (a text-format `Schema`).

    Raises:
        FileNotFoundError: there is no file at `path`.
        text_format.ParseError: the file is not a text-format schema.
        UnicodeDecodeError: the file is not UTF-8 text.
    """
    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    return text_format.Parse(_read_bytes(path).decode("utf-8"), schema_pb2.Schema())


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Reads one binary `DatasetFeatureStatisticsList`, as TFDV writes it (`stats.pb`)."""
    return statistics_pb2.DatasetFeatureStatisticsList.FromString(_read_bytes(path))
