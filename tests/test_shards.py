"""Tests of shard writing: the external merge sort writes exactly what an in-memory sort would."""

from __future__ import annotations

import collections
import json
import pathlib
import random
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline, util

from beam_jobs.lib import shards, splits
from tests.conftest import direct_options

NUM_SHARDS = {"train": 3, "eval": 2}
TFRECORD = ("data", ".tfrecord.gz")
JSONL = ("lines", ".jsonl")
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
# Items average ~400 bytes as counted (payload plus overhead): ~40 per run, many runs per shard.
TINY_BUFFER_BYTES = 16 << 10
WriteFile = Callable[[str, Iterable[Any]], int]


def keyed_item(line: int, kind: str) -> tuple[Any, Any]:
    """((group, shard), (sort key, payload)) for one line; sort keys are unique.

    `tfrecord`: a bytes payload keyed (file index, line), as ingest's; `jsonl`: a JSON line keyed
    (64-bit fingerprint, bytes), as transform's.
    """
    rng = random.Random(line)
    data = rng.randbytes(rng.randrange(10, 400))
    group = rng.choice(sorted(NUM_SHARDS))
    shard = splits.fingerprint(data) % NUM_SHARDS[group]
    if kind == "tfrecord":
        return (group, shard), ((line % 4, line), data)
    return (group, shard), ((splits.fingerprint(data), data), json.dumps({"hex": data.hex()}))


def shuffled_lines(count: int = 600) -> list[int]:
    lines = list(range(count))
    random.Random(0).shuffle(lines)
    return lines


def sort_in_memory(
    directory: pathlib.Path, items: list, file_name: tuple[str, str], write_file: WriteFile
) -> dict[str, int]:
    """What `WriteSortedShards` did before it spilled: each shard sorted whole, then written."""
    grouped = collections.defaultdict(list)
    for shard_key, item in items:
        grouped[shard_key].append(item)
    prefix, suffix = file_name
    counts: dict[str, int] = collections.Counter()
    for (group, shard), shard_items in grouped.items():
        path = shards.shard_path(str(directory / group), prefix, shard, NUM_SHARDS[group], suffix)
        ordered = sorted(shard_items, key=lambda item: item[0])
        counts[group] += write_file(path, (payload for _, payload in ordered))
    return dict(counts)


def sort_with_beam(
    directory: pathlib.Path,
    kind: str,
    lines: list[int],
    file_name: tuple[str, str],
    write_file: WriteFile,
    expected_counts: dict[str, int],
    options: PipelineOptions,
    merge_fan_in: int = shards.DEFAULT_MERGE_FAN_IN,
) -> int:
    """Runs `WriteSortedShards` on a tiny buffer, checks its counts; returns the runs written."""
    pipeline = test_pipeline.TestPipeline(options=options)
    written = (
        pipeline
        | "Create" >> beam.Create(lines)
        | "KeyItems" >> beam.Map(keyed_item, kind)
        | "Write"
        >> shards.WriteSortedShards(
            str(directory),
            NUM_SHARDS.__getitem__,
            file_name,
            write_file,
            buffer_bytes=TINY_BUFFER_BYTES,
            merge_fan_in=merge_fan_in,
        )
    )
    totals = written | "SumPerGroup" >> beam.CombinePerKey(sum)
    util.assert_that(totals, util.equal_to(list(expected_counts.items())))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name(shards.RUNS_WRITTEN))["counters"]
    return sum(counter.committed for counter in counters)


def files_below(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("kind", "file_name", "write_file"),
    [
        ("tfrecord", TFRECORD, shards.write_tfrecord_shard),
        ("jsonl", JSONL, shards.write_jsonl_shard),
    ],
)
def test_many_runs_merge_to_the_bytes_of_an_in_memory_sort(tmp_path, kind, file_name, write_file):
    lines = shuffled_lines()
    items = [keyed_item(line, kind) for line in lines]
    expected = sort_in_memory(tmp_path / "memory", items, file_name, write_file)
    runs = sort_with_beam(
        tmp_path / "beam", kind, lines, file_name, write_file, expected, direct_options()
    )
    assert runs > 3 * sum(NUM_SHARDS.values())
    assert sum(expected.values()) == len(lines)
    beam_files = files_below(tmp_path / "beam")
    assert len(beam_files) == sum(NUM_SHARDS.values())
    assert beam_files == files_below(tmp_path / "memory")


def test_more_runs_than_the_fan_in_merge_in_passes_to_the_same_bytes(tmp_path):
    lines = shuffled_lines()
    items = [keyed_item(line, "tfrecord") for line in lines]
    write = shards.write_tfrecord_shard
    expected = sort_in_memory(tmp_path / "memory", items, TFRECORD, write)
    runs = sort_with_beam(
        tmp_path / "beam", "tfrecord", lines, TFRECORD, write, expected, direct_options(), 2
    )
    assert runs > 4 * sum(NUM_SHARDS.values())  # some shard has 5 or more: three passes
    assert files_below(tmp_path / "beam") == files_below(tmp_path / "memory")


def test_no_sorted_run_is_left_behind(tmp_path):
    lines = shuffled_lines()
    expected = collections.Counter(keyed_item(line, "tfrecord")[0][0] for line in lines)
    sort_with_beam(
        tmp_path,
        "tfrecord",
        lines,
        TFRECORD,
        shards.write_tfrecord_shard,
        dict(expected),
        direct_options(),
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(NUM_SHARDS)
    assert not list(tmp_path.rglob(".*"))


def test_empty_input_writes_nothing(tmp_path):
    runs = sort_with_beam(
        tmp_path, "tfrecord", [], TFRECORD, shards.write_tfrecord_shard, {}, direct_options()
    )
    assert runs == 0
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_two_worker_processes_write_the_same_bytes(tmp_path):
    lines = shuffled_lines()
    items = [keyed_item(line, "tfrecord") for line in lines]
    expected = sort_in_memory(tmp_path / "memory", items, TFRECORD, shards.write_tfrecord_shard)
    sort_with_beam(
        tmp_path / "beam",
        "tfrecord",
        lines,
        TFRECORD,
        shards.write_tfrecord_shard,
        expected,
        PipelineOptions(["--runner=DirectRunner", *MULTI_PROCESS]),
    )
    assert files_below(tmp_path / "beam") == files_below(tmp_path / "memory")
    assert not list((tmp_path / "beam").rglob(".*"))


def test_a_retried_merge_returns_the_count_of_the_file_it_wrote(tmp_path):
    runs_dir = tmp_path / ".runs"
    run = str(runs_dir / "only.run")
    shards._write_run(run, [((0, 1), b"a"), ((0, 2), b"b")])
    merge = shards._MergeRuns(
        str(tmp_path), lambda _: 1, TFRECORD, shards.write_tfrecord_shard, str(runs_dir)
    )
    first = list(merge.process((("train", 0), [run])))
    assert not pathlib.Path(run).exists()
    assert list(merge.process((("train", 0), [run]))) == first == [("train", 2)]


def test_merge_fan_in_must_be_at_least_two(tmp_path):
    with pytest.raises(ValueError, match="merge_fan_in"):
        shards.WriteSortedShards(
            str(tmp_path), lambda _: 1, TFRECORD, shards.write_tfrecord_shard, merge_fan_in=1
        )


def test_buffer_bytes_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="buffer_bytes"):
        shards.WriteSortedShards(
            str(tmp_path), lambda _: 1, TFRECORD, shards.write_tfrecord_shard, buffer_bytes=0
        )


def test_tfrecord_files_of_many_chunks_read_back_in_tensorflow(tmp_path):
    import tensorflow as tf

    records = [random.Random(index).randbytes(700) for index in range(6_000)]  # ~4 MB: 4 chunks
    path = str(tmp_path / "data-00000-of-00001.tfrecord.gz")
    assert shards.write_tfrecord_shard(path, records) == len(records)
    read = [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert read == records


def test_a_failed_write_in_the_writing_thread_fails_the_writer(tmp_path):
    from beam_jobs.lib import artifacts

    class FullDisk:
        def write(self, chunk: bytes) -> None:
            raise OSError("No space left on device")

    writer = artifacts._WriteBehind(FullDisk())
    writer.write(b"x")
    with pytest.raises(OSError, match="No space left"):
        writer.close()
