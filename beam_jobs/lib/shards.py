"""Shard files, the one way every job writes its outputs: sorted, Beam-named, all shards present.

A job's records go to `<directory>/<group>/<prefix>-SSSSS-of-NNNNN<suffix>`, each file sorted by a
key its records carry, so reruns write byte-identical files. `WriteSortedShards` sorts with an
external merge sort: DirectRunner holds a `GroupByKey`'s whole input in memory, so grouping the
records themselves would make a job's memory grow with its data. Instead each worker sorts what
fits in a memory budget into run files, only the run files' paths are grouped, and each shard's
runs are merged into its file as a stream.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import operator
import pickle
import struct
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.lib import artifacts

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_MERGE_FAN_IN",
    "RUNS_DIR_PREFIX",
    "RUNS_WRITTEN",
    "ShardSet",
    "WriteSortedShards",
    "complete_shards",
    "fill_missing_shards",
    "shard_path",
    "write_jsonl_shard",
    "write_tfrecord_shard",
]

DEFAULT_BUFFER_BYTES = 64 << 20
# Runs a merge reads at once. A distributed runner's many small bundles can leave thousands of
# runs per shard, and each open reader holds a buffer (megabytes on an object store).
DEFAULT_MERGE_FAN_IN = 64
RUNS_DIR_PREFIX = ".sort-runs-"
RUNS_WRITTEN = "sorted_runs_written"
_RUN_SUFFIX = ".run"
_DONE_SUFFIX = ".done.json"
# What Python spends on a buffered item besides its payload: the tuples, the sort key, headers.
_ITEM_OVERHEAD_BYTES = 200
_RECORD_LENGTH = struct.Struct("<Q")
# Items per pickled record of a run file.
_RUN_CHUNK = 256
_SORT_KEY = operator.itemgetter(0)

ShardKey = tuple[str, int]
Keyed = tuple[Any, Any]


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


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The shards of one kind in one folder of an output: `<directory>/<prefix>-i-of-n<suffix>`."""

    directory: str
    file_name: tuple[str, str]
    num_shards: int
    write_file: Callable[[str, Iterable[Any]], int] = write_tfrecord_shard


def complete_shards(output_dir: str, shard_sets: Iterable[ShardSet]) -> None:
    """Writes an empty file for every shard of `shard_sets` that no record fell in."""
    for shard_set in shard_sets:
        fill_missing_shards(
            FileSystems.join(output_dir, shard_set.directory),
            shard_set.file_name,
            shard_set.num_shards,
            shard_set.write_file,
        )


def _write_run(path: str, items: Iterable[Keyed]) -> None:
    """Writes (sort key, payload) items as length-prefixed pickles of `_RUN_CHUNK` items each,
    one run file (one pickle call per chunk, not per item, keeps Python off the hot path)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for chunk in _chunks(items, _RUN_CHUNK):
            record = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
            handle.write(_RECORD_LENGTH.pack(len(record)) + record)


def _chunks(items: Iterable[Keyed], size: int) -> Iterator[list[Keyed]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _read_run(path: str) -> Iterator[Keyed]:
    """The (sort key, payload) items of one run file, in the order written.

    Raises:
        ValueError: the file is truncated.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while header := handle.read(_RECORD_LENGTH.size):
            if len(header) < _RECORD_LENGTH.size:
                raise ValueError(f"{path}: truncated sorted run header")
            (length,) = _RECORD_LENGTH.unpack(header)
            record = handle.read(length)
            if len(record) < length:
                raise ValueError(f"{path}: truncated sorted run")
            yield from pickle.loads(record)


@contextlib.contextmanager
def _merged_runs(runs: list[str]) -> Iterator[Iterator[Keyed]]:
    """The items of several run files merged by sort key; the files are closed on exit."""
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(contextlib.closing(_read_run(run))) for run in runs]
        yield heapq.merge(*readers, key=_SORT_KEY)


class _SpillSortedRuns(beam.DoFn):
    """((group, shard), (sort key, payload)) → ((group, shard), path of a sorted run file).

    Buffers items per shard; once they pass `buffer_bytes`, and at the end of a bundle, sorts
    each shard's buffer and writes it to a new run file in `runs_dir`. Memory holds one budget.
    """

    def __init__(self, runs_dir: str, buffer_bytes: int) -> None:
        self._runs_dir = runs_dir
        self._buffer_bytes = buffer_bytes
        self._runs_written = beam.metrics.Metrics.counter(__name__, RUNS_WRITTEN)

    def start_bundle(self) -> None:
        self._buffers: dict[ShardKey, list[Keyed]] = collections.defaultdict(list)
        self._buffered = 0

    def process(self, keyed: tuple[ShardKey, Keyed]) -> Iterator[tuple[ShardKey, str]]:
        shard, item = keyed
        self._buffers[shard].append(item)
        self._buffered += sys.getsizeof(item[1]) + _ITEM_OVERHEAD_BYTES
        if self._buffered >= self._buffer_bytes:
            yield from self._spill()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for spilled in self._spill():
            yield GlobalWindows.windowed_value(spilled)

    def _spill(self) -> Iterator[tuple[ShardKey, str]]:
        buffers, self._buffers, self._buffered = self._buffers, collections.defaultdict(list), 0
        while buffers:
            shard, items = buffers.popitem()  # Frees each buffer once it is on disk.
            items.sort(key=_SORT_KEY)
            path = FileSystems.join(self._runs_dir, uuid.uuid4().hex + _RUN_SUFFIX)
            _write_run(path, items)
            self._runs_written.inc()
            yield shard, path


class _MergeRuns(beam.DoFn):
    """((group, shard), run paths) → the shard's file, its runs merged by sort key; (group, rows).

    The shard's row count is saved in `runs_dir` before its runs are deleted, so a retried bundle
    that finds the runs gone returns the count of the file already written.
    """

    def __init__(
        self,
        directory: str,
        num_shards: Callable[[str], int],
        file_name: tuple[str, str],
        write_file: Callable[[str, Iterable[Any]], int],
        runs_dir: str,
        fan_in: int = DEFAULT_MERGE_FAN_IN,
    ) -> None:
        self._directory = directory
        self._num_shards = num_shards
        self._prefix, self._suffix = file_name
        self._write_file = write_file
        self._runs_dir = runs_dir
        self._fan_in = fan_in

    def process(self, keyed: tuple[ShardKey, Iterable[str]]) -> Iterator[tuple[str, int]]:
        (group, shard), runs = keyed
        done = FileSystems.join(self._runs_dir, f"{group}-{shard:05d}{_DONE_SUFFIX}")
        if FileSystems.exists(done):
            yield group, artifacts.read_json(done)
            return
        path = shard_path(
            FileSystems.join(self._directory, group),
            self._prefix,
            shard,
            self._num_shards(group),
            self._suffix,
        )
        inputs = sorted(runs)
        runs, created = inputs, []
        while len(runs) > self._fan_in:
            # Merged `fan_in` runs at a time into new runs; the inputs stay until the shard is
            # written, so a retried bundle still finds every run it was given.
            runs = [
                self._merge_into_run(runs[i : i + self._fan_in])
                for i in range(0, len(runs), self._fan_in)
            ]
            created.extend(runs)
        with _merged_runs(runs) as merged:
            count = self._write_file(path, (payload for _, payload in merged))
        artifacts.write_json(done, count)
        FileSystems.delete(inputs + created)
        yield group, count

    def _merge_into_run(self, runs: list[str]) -> str:
        path = FileSystems.join(self._runs_dir, uuid.uuid4().hex + _RUN_SUFFIX)
        with _merged_runs(runs) as merged:
            _write_run(path, merged)
        return path


class WriteSortedShards(beam.PTransform):
    """((group, shard), (sort key, payload)) → a sorted file per shard: reruns are byte-identical.

    Writes `<directory>/<group>/<prefix>-SSSSS-of-NNNNN<suffix>` with `write_file`, for the
    shards that received rows, and outputs (group, rows written) per shard. Sort keys must be
    picklable and totally ordered, and should be unique (equal keys come in no set order); the
    input is a batch in the global window. Memory holds about `buffer_bytes` of items per worker:
    the rest waits in sorted run files in a hidden directory under `directory`, deleted once every
    shard is written, so a staging directory published after the pipeline holds none of it (and a
    failed pipeline publishes nothing). A shard with more than `merge_fan_in` runs is merged in
    passes, `merge_fan_in` runs at a time.
    """

    def __init__(
        self,
        directory: str,
        num_shards: Callable[[str], int],
        file_name: tuple[str, str],
        write_file: Callable[[str, Iterable[Any]], int],
        *,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        merge_fan_in: int = DEFAULT_MERGE_FAN_IN,
    ) -> None:
        super().__init__()
        if buffer_bytes <= 0:
            raise ValueError(f"buffer_bytes must be positive, got {buffer_bytes}")
        if merge_fan_in < 2:
            raise ValueError(f"merge_fan_in must be at least 2, got {merge_fan_in}")
        self._merge_fan_in = merge_fan_in
        self._directory = directory
        self._num_shards = num_shards
        self._file_name = file_name
        self._write_file = write_file
        self._buffer_bytes = buffer_bytes
        self._runs_dir = FileSystems.join(directory, RUNS_DIR_PREFIX + uuid.uuid4().hex[:12])

    def expand(self, keyed_payloads: beam.PCollection) -> beam.PCollection:
        written = (
            keyed_payloads
            | "SpillSortedRuns" >> beam.ParDo(_SpillSortedRuns(self._runs_dir, self._buffer_bytes))
            | "GroupRunsByShard" >> beam.GroupByKey()
            | "MergeRuns"
            >> beam.ParDo(
                _MergeRuns(
                    self._directory,
                    self._num_shards,
                    self._file_name,
                    self._write_file,
                    self._runs_dir,
                    self._merge_fan_in,
                )
            )
        )
        runs_dir = self._runs_dir
        # Count.Globally emits once every shard is written, and once for no shard at all too.
        _ = (
            written
            | "WaitForShards" >> beam.combiners.Count.Globally()
            | "RemoveRuns" >> beam.Map(lambda _: artifacts.delete_tree(runs_dir))
        )
        return written
