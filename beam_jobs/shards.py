"""Shard files, the one way every job writes its outputs: sorted, Beam-named, all shards present.

A job's records go to `<directory>/<group>/<prefix>-SSSSS-of-NNNNN<suffix>`, each file sorted by a
key its records carry, so reruns write byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs import artifacts

__all__ = [
    "WriteSortedShards",
    "fill_missing_shards",
    "shard_path",
    "write_jsonl_shard",
    "write_tfrecord_shard",
]


def shard_path(directory: str, name: str, shard: int, num_shards: int, suffix: str) -> str:
    """`<directory>/<name>-00000-of-00001<suffix>`, Beam's shard naming."""
    return FileSystems.join(directory, f"{name}-{shard:05d}-of-{num_shards:05d}{suffix}")


def write_tfrecord_shard(path: str, payloads: Iterable[bytes]) -> int:
    """Writes serialized records to one TFRecord file (GZIP for `.gz`); returns how many."""
    return artifacts.write_tfrecords(path, payloads)


def write_jsonl_shard(path: str, payloads: Iterable[str]) -> int:
    """Writes JSON lines to one file; returns how many."""
    count = 0
    with FileSystems.create(path) as handle:
        for line in payloads:
            handle.write(line.encode("utf-8") + b"\n")
            count += 1
    return count


def fill_missing_shards(
    directory: str,
    file_name: tuple[str, str],
    num_shards: int,
    write_file: Callable[[str, Iterable[Any]], int],
) -> None:
    """Writes an empty file for every shard no row fell in, so every named shard exists.

    `WriteSortedShards` writes only the shards that received rows; readers of `-of-N` names (and
    later stages' counts) expect all N.
    """
    prefix, suffix = file_name
    for shard in range(num_shards):
        path = shard_path(directory, prefix, shard, num_shards, suffix)
        if not FileSystems.exists(path):
            write_file(path, [])


class WriteSortedShards(beam.PTransform):
    """((group, shard), (sort key, payload)) → a sorted file per shard: reruns are byte-identical.

    Outputs (group, rows written) per shard.
    """

    def __init__(
        self,
        directory: str,
        num_shards: Callable[[str], int],
        file_name: tuple[str, str],
        write_file: Callable[[str, Iterable[Any]], int],
    ) -> None:
        super().__init__()
        self._directory = directory
        self._num_shards = num_shards
        self._prefix, self._suffix = file_name
        self._write_file = write_file

    def _write(self, keyed: tuple[tuple[str, int], Iterable[tuple[Any, Any]]]) -> tuple[str, int]:
        (group, shard), items = keyed
        path = shard_path(
            FileSystems.join(self._directory, group),
            self._prefix,
            shard,
            self._num_shards(group),
            self._suffix,
        )
        ordered = sorted(items, key=lambda item: item[0])
        return group, self._write_file(path, (payload for _, payload in ordered))

    def expand(self, keyed_payloads: beam.PCollection) -> beam.PCollection:
        return (
            keyed_payloads
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(self._write)
        )
