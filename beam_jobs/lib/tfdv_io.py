"""TFDV's artifacts on disk: statistics that one stage writes and another reads.

Paths go through TensorFlow's file systems, so `gs://` and `s3://` work as local paths do.
"""

from __future__ import annotations

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

__all__ = ["load_statistics"]


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Reads one binary `DatasetFeatureStatisticsList` (any filesystem TensorFlow knows)."""
    return tfdv.load_stats_binary(path)
