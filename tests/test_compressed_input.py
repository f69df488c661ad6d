"""Tests of compressed input (gzip, bzip2, deflate, zstd, lzma/xz), directory input and a fuzzed
CSV reader: a compressed file reads as its plain copy, row for row and byte for byte of output."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import pathlib
import random
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import tensorflow as tf
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from click.testing import CliRunner

from beam_jobs import feedback, infer, ingest
from beam_jobs.lib import artifacts, cli, layout, records
from tests.conftest import REPO_ROOT, direct_options
from tests.test_ingest import TRICKY_CSVS, python_csv_rows

# Every extension Beam 2.60 detects, with a compressor of the usual command-line tool's format.
COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    ".gz": (CompressionTypes.GZIP, lambda data: gzip.compress(data, mtime=0)),
    ".bz2": (CompressionTypes.BZIP2, bz2.compress),
    ".deflate": (CompressionTypes.DEFLATE, zlib.compress),
    ".zst": (CompressionTypes.ZSTD, zstandard.ZstdCompressor().compress),
    ".zstd": (CompressionTypes.ZSTD, zstandard.ZstdCompressor().compress),
    ".xz": (CompressionTypes.LZMA, lzma.compress),
    ".lzma": (CompressionTypes.LZMA, lambda data: lzma.compress(data, lzma.FORMAT_ALONE)),
}
SUFFIXES = sorted(COMPRESSORS)
SMALL_BLOCK = 4 << 10
# The fake predictions name no model, so feedback takes the demo's label from flags.
DEMO_LABEL = {"label_column": "consumer_disputed", "positive_value": "Yes", "negative_value": "No"}
FUZZ_SEED, FUZZ_CASES, FUZZ_SECONDS = 20240601, 150, 15.0


def sample_csv(rows: int = 3000) -> bytes:
    """A CSV of the awkward kinds: BOM, CRLF, quoted commas, quotes and line breaks, an empty
    value, a row of the wrong width, a blank line, a lone CR and an undecodable byte: `rows`
    rows read, 4 of them rejected."""
    lines = [b"\xef\xbb\xbfComplaint ID,Product,Narrative,ZIP code\r\n"]
    for i in range(rows):
        narrative = f'"said ""no"", then\r\nleft {i}"' if i % 7 == 0 else f"plain {i}"
        zip_code = "" if i % 11 == 0 else f"{i % 99999:05d}"
        lines.append(f"{i},Product {i % 5},{narrative},{zip_code}\r\n".encode())
    lines[1 + rows // 6] = b"x,too,many,fields,here\r\n"
    lines[1 + rows // 3] = b"\r\n"
    lines[1 + rows // 2] = b"y,x,lone\rreturn,1\r\n"
    lines[1 + 2 * rows // 3] = b"z,Product,plain \xff,1\r\n"
    return b"".join(lines)


def sample_jsonl(rows: int = 2000) -> bytes:
    """JSON lines with LF and CRLF ends, a blank line, invalid JSON, a non-object and bad UTF-8."""
    lines = [
        json.dumps({"id": i, "text": f"t {i}", "score": i / 7}).encode()
        + (b"\r\n" if i % 3 == 0 else b"\n")
        for i in range(rows)
    ]
    lines[10], lines[20], lines[30] = b"\n", b"{not json\n", b"[1, 2]\n"
    lines[40] = b'{"text": "\xff"}\n'
    return b"".join(lines)


def write(path: pathlib.Path, data: bytes, suffix: str | None = None) -> pathlib.Path:
    """Writes `data` to `path`, compressed as `suffix` says (appended to the name) if given."""
    if suffix:
        path = path.with_name(path.name + suffix)
        data = COMPRESSORS[suffix][1](data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def summary(batch: records.TextBatch) -> tuple:
    """A batch's lines, values and rejects, without its file name."""
    columns = {name: column.to_pylist() for name, column in batch.columns.items()}
    return batch.lines.tolist(), columns, [(r.line, r.error, r.raw) for r in batch.rejected]


def csv_batches(path: pathlib.Path, block_bytes: int, **kwargs: str) -> list[tuple]:
    return [summary(b) for b in records.read_csv_batches(str(path), block_bytes, **kwargs)]


def read_batches(path: pathlib.Path, block_bytes: int) -> list[records.TextBatch]:
    return list(records.read_csv_batches(str(path), block_bytes))


def flat(batches: list[records.TextBatch]) -> list[tuple]:
    """Every row of `batches`, without its file name."""
    return [(r.line, r.values, r.error, r.raw) for batch in batches for r in batch.raw_rows()]


def flat_rows(path: pathlib.Path, block_bytes: int) -> list[tuple]:
    """Every row of `read_csv_batches`, without its file name."""
    return flat(read_batches(path, block_bytes))


def python_rows(path: pathlib.Path) -> list[tuple]:
    """Every row as Python's csv module alone reads the file, without its file name."""
    return [(r.line, r.values, r.error, r.raw) for r in python_csv_rows(path)]


def rows(path: pathlib.Path, input_format: str, **kwargs: str) -> list[tuple]:
    """Every row as read, without its file name."""
    read = records.read_rows(str(path), input_format, **kwargs)
    return [(row.line, row.values, row.error, row.raw) for row in read]


def outputs(output_dir: pathlib.Path, input_path: pathlib.Path) -> dict[str, bytes]:
    """Every output file but the manifest; the input's path in rejected rows made neutral."""
    quoted = json.dumps(str(input_path)).encode()
    return {
        str(path.relative_to(output_dir)): path.read_bytes().replace(quoted, b'"<input>"')
        for path in sorted(output_dir.rglob("*"))
        if path.is_file() and path.name != artifacts.MANIFEST_FILE
    }


def run_ingest(
    input_path: pathlib.Path, output_dir: pathlib.Path, *args: str
) -> artifacts.Manifest:
    result = CliRunner().invoke(
        ingest.main, [f"--input={input_path}", f"--output_dir={output_dir}", *args]
    )
    assert result.exit_code == 0, result.output
    return artifacts.read_manifest(str(output_dir))


def run_module(job: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m beam_jobs.<job>` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"beam_jobs.{job}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
    )


def assert_one_error_line(stderr: str, expected: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr
    assert len(errors) == 1 and expected in errors[0], stderr[-2000:]


def test_every_compression_beam_detects_is_offered_and_tested():
    detected = {CompressionTypes.detect_compression_type(f"x.csv{s}") for s in SUFFIXES}
    assert detected == {name for name, _ in COMPRESSORS.values()}
    assert set(records.COMPRESSIONS) == detected | {CompressionTypes.AUTO, "uncompressed"}
    for name in records.COMPRESSIONS:
        assert CompressionTypes.is_valid_compression_type(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x.csv.bz2", records.CSV),
        ("x.CSV.GZ", records.CSV),
        ("x.jsonl.zst", records.JSONL),
        ("x.ndjson.zstd", records.JSONL),
        ("x.csv.deflate", records.CSV),
        ("x.csv.xz", records.CSV),
        ("x.json.lzma", records.JSONL),
        ("x.tfrecord.gz", records.TFRECORD),
    ],
)
def test_detect_format_looks_through_every_compression_suffix(name, expected):
    assert records.detect_format([f"/data/{name}"]) == expected


def test_detect_format_still_needs_a_format_extension():
    with pytest.raises(cli.JobError, match="cannot tell the input format"):
        records.detect_format(["/data/x.gz"])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_compressed_csv_reads_as_the_plain_file(tmp_path, suffix):
    data = sample_csv()
    plain, compressed = write(tmp_path / "s.csv", data), write(tmp_path / "s.csv", data, suffix)
    assert records.read_csv_header(str(compressed)) == records.read_csv_header(str(plain))
    for block_bytes in (SMALL_BLOCK, 1 << 20):
        expected = csv_batches(plain, block_bytes)
        assert csv_batches(compressed, block_bytes) == expected
    assert rows(compressed, records.CSV) == rows(plain, records.CSV)
    # Both readers were exercised: Arrow's blocks, and Python's for the awkward rows.
    reasons = {r[2] for r in rows(plain, records.CSV) if r[2]}
    assert reasons == {
        "expected 4 fields, found 5",
        "expected 4 fields, found 3",
        "expected 4 fields, found 2",
        "undecodable bytes (not UTF-8)",
    }


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_compressed_jsonl_reads_as_the_plain_file(tmp_path, suffix):
    data = sample_jsonl()
    plain = write(tmp_path / "s.jsonl", data)
    compressed = write(tmp_path / "s.jsonl", data, suffix)
    expected = rows(plain, records.JSONL)
    assert len(expected) == 1999 and sum(1 for r in expected if r[2]) == 3
    assert rows(compressed, records.JSONL) == expected


@pytest.mark.parametrize("name", sorted(TRICKY_CSVS))
def test_tricky_csvs_read_compressed_as_python_csv_reads_them_plain(tmp_path, name):
    data = TRICKY_CSVS[name]
    data = data.encode() if isinstance(data, str) else data
    expected = python_rows(write(tmp_path / "t.csv", data))
    compressed = write(tmp_path / "t.csv", data, ".gz")
    for block_bytes in (1, 17, 1 << 20):
        assert flat_rows(compressed, block_bytes) == expected, block_bytes


def test_files_beam_writes_compressed_read_back(tmp_path):
    data = sample_csv(300)
    plain = write(tmp_path / "s.csv", data)
    for suffix in SUFFIXES:
        path = str(tmp_path / f"beam.csv{suffix}")
        with FileSystems.create(path, compression_type=CompressionTypes.AUTO) as handle:
            handle.write(data)
        assert csv_batches(pathlib.Path(path), SMALL_BLOCK) == csv_batches(plain, SMALL_BLOCK)


def test_concatenated_streams_are_all_read(tmp_path):
    data = sample_csv(400)
    cut = len(data) // 2 + 3  # Mid-row: the streams make one text only together.
    plain = write(tmp_path / "s.csv", data)
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        compress = COMPRESSORS[suffix][1]
        path = tmp_path / f"cat.csv{suffix}"
        path.write_bytes(compress(data[:cut]) + compress(data[cut:]))
        assert csv_batches(path, SMALL_BLOCK) == csv_batches(plain, SMALL_BLOCK), suffix


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_truncated_compressed_file_ends_in_a_rejected_row(tmp_path, suffix):
    data = sample_csv()
    compressed = write(tmp_path / "s.csv", data, suffix)
    compressed.write_bytes(compressed.read_bytes()[: compressed.stat().st_size // 2])
    plain = python_rows(write(tmp_path / "s.csv", data))
    compression = COMPRESSORS[suffix][0]
    for block_bytes in (SMALL_BLOCK, 1 << 20):
        read = flat_rows(compressed, block_bytes)
        assert read[-1][:3] == (
            0,
            None,
            f"unreadable csv file: {compression} data ends before its end: truncated file?",
        )
        # The whole blocks before the cut, as in the plain file; nothing past it.
        assert read[:-1] == plain[: len(read) - 1] and len(read) - 1 < len(plain)


def test_corrupt_data_after_the_stream_is_a_rejected_row(tmp_path):
    path = write(tmp_path / "s.csv", sample_csv(100), ".gz")
    path.write_bytes(path.read_bytes() + b"not gzip at all")
    for block_bytes in (SMALL_BLOCK, 1 << 20):
        line, _, error, _ = flat_rows(path, block_bytes)[-1]
        assert line == 0 and error.startswith("unreadable csv file: corrupt gzip data: Error -3")
    jsonl = write(tmp_path / "s.jsonl", sample_jsonl(50), ".bz2")
    jsonl.write_bytes(jsonl.read_bytes()[:-9] + b"\x00" * 9)
    assert "unreadable jsonl file" in rows(jsonl, records.JSONL)[-1][2]


def test_a_corrupt_header_fails_in_one_line(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 this is no deflate stream" * 4)
    with pytest.raises(cli.JobError, match="cannot read the CSV header: corrupt gzip data"):
        records.read_csv_header(str(path))


def test_compression_option_overrides_the_extension(tmp_path):
    data = sample_csv(200)
    plain = write(tmp_path / "s.csv", data)
    gzipped_as_csv = tmp_path / "gz" / "s.csv"
    write(gzipped_as_csv, gzip.compress(data))
    plain_as_gz = write(tmp_path / "plain" / "s.csv.gz", data)
    expected = csv_batches(plain, SMALL_BLOCK)
    assert csv_batches(gzipped_as_csv, SMALL_BLOCK, compression="gzip") == expected
    assert csv_batches(plain_as_gz, SMALL_BLOCK, compression="uncompressed") == expected
    assert records.read_csv_header(str(gzipped_as_csv), "gzip") == records.read_csv_header(
        str(plain)
    )
    jsonl = sample_jsonl(100)
    no_suffix = write(tmp_path / "events", bz2.compress(jsonl))
    expected_rows = rows(write(tmp_path / "e.jsonl", jsonl), records.JSONL)
    assert rows(no_suffix, records.JSONL, compression="bzip2") == expected_rows


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_ingest_of_compressed_csv_writes_the_bytes_of_the_plain_ingest(tmp_path, suffix):
    data = sample_csv(1500)
    plain = write(tmp_path / "in" / "s.csv", data)
    compressed = write(tmp_path / "in" / "s.csv", data, suffix)
    flags = ("--max_rejected_fraction=1", "--num_shards=2")
    expected_manifest = run_ingest(plain, tmp_path / "plain", *flags)
    manifest = run_ingest(compressed, tmp_path / "compressed", *flags)
    assert manifest.counts == expected_manifest.counts
    assert manifest.counts["rows_rejected"] == 4
    assert manifest.parameters["compression"] == "auto"
    assert outputs(tmp_path / "compressed", compressed) == outputs(tmp_path / "plain", plain)


def test_ingest_cli_compression_flag_and_compressed_jsonl(tmp_path):
    data = sample_jsonl(300)
    plain = write(tmp_path / "in" / "e.jsonl", data)
    expected_manifest = run_ingest(plain, tmp_path / "plain", "--max_rejected_fraction=1")
    expected = outputs(tmp_path / "plain", plain)
    for name, flags in (("e.jsonl.gz", []), ("e.jsonl", ["--compression=gzip"])):
        path = write(tmp_path / f"in-{len(flags)}" / name, gzip.compress(data))
        out = tmp_path / f"out-{len(flags)}"
        manifest = run_ingest(path, out, "--max_rejected_fraction=1", *flags)
        assert manifest.counts == expected_manifest.counts
        assert outputs(out, path) == expected
    help_text = CliRunner().invoke(ingest.main, ["--help"]).output
    assert "--compression" in help_text and "zstd" in help_text


def test_compression_flag_refused_for_formats_with_their_own(tmp_path):
    path = write(tmp_path / "x.parquet", b"PAR1")
    result = CliRunner().invoke(
        ingest.main,
        [f"--input={path}", f"--output_dir={tmp_path / 'o'}", "--compression=gzip"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "--compression=gzip applies to csv and jsonl")


def test_gzipped_tfrecord_input_still_reads(tmp_path):
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"a": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}
            )
        ).SerializeToString()
        for i in range(50)
    ]
    plain, gzipped = tmp_path / "x.tfrecord", tmp_path / "x.tfrecord.gz"
    for path, options in ((plain, None), (gzipped, "GZIP")):
        with tf.io.TFRecordWriter(str(path), options) as writer:
            for example in examples:
                writer.write(example)
    assert rows(gzipped, records.TFRECORD) == rows(plain, records.TFRECORD)
    assert len(rows(gzipped, records.TFRECORD)) == 50
    run_ingest(plain, tmp_path / "plain")
    manifest = run_ingest(gzipped, tmp_path / "gz")
    assert manifest.counts["rows_read"] == 50
    assert outputs(tmp_path / "gz", gzipped) == outputs(tmp_path / "plain", plain)


def test_a_gzipped_tfrecord_cut_at_a_record_boundary_is_not_read_short(tmp_path):
    frames = tmp_path / "frames.tfrecord"
    with tf.io.TFRecordWriter(str(frames)) as writer:
        for i in range(100):
            writer.write(f"record {i:03d}".encode())
    data = frames.read_bytes()
    first_40 = len(data) * 40 // 100  # Every frame here has the same length.
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    # The stream flushed after 40 whole records and cut there: no end-of-stream marker.
    cut = compressor.compress(data[:first_40]) + compressor.flush(zlib.Z_FULL_FLUSH)
    truncated = tmp_path / "cut.tfrecord.gz"
    truncated.write_bytes(cut)
    assert sum(1 for _ in artifacts.read_tfrecords(str(truncated))) == 40  # Beam's reader: short.
    read = rows(truncated, records.TFRECORD)
    assert len(read) == 41 and "ends before its end" in read[-1][2], read[-1]


def test_real_2015_data_gzipped_ingests_to_the_same_bytes(cfpb_2015_csv, ingested_2015, tmp_path):
    compressed = tmp_path / "complaints.csv.gz"
    compressed.write_bytes(gzip.compress(cfpb_2015_csv.read_bytes(), compresslevel=1, mtime=0))
    config = ingest.IngestConfig(input=str(compressed), output_dir=str(tmp_path / "out"))
    manifest = ingest.run(config, direct_options())
    expected = artifacts.read_manifest(str(ingested_2015))
    assert manifest.counts == expected.counts
    assert manifest.counts["rows_read"] == 28_156
    assert outputs(tmp_path / "out", compressed) == outputs(ingested_2015, cfpb_2015_csv)


@pytest.mark.parametrize(
    ("flags", "suggested"),
    [
        ([], "*.csv"),
        (["--format=csv"], "*.csv"),
        (["--format=jsonl", "--compression=gzip"], "*.jsonl"),
    ],
)
def test_a_directory_as_input_fails_in_one_line(tmp_path, flags, suggested):
    directory = write(tmp_path / "somedir" / "a.csv", b"a,b\n1,2\n").parent
    for given in (str(directory), f"{directory}/"):
        result = CliRunner().invoke(
            ingest.main, [f"--input={given}", f"--output_dir={tmp_path / 'o'}", *flags]
        )
        assert result.exit_code == cli.EXIT_ERROR
        assert_one_error_line(
            result.stderr,
            f"--input={given} is a directory; pass a pattern of its files, such as "
            f"{directory}/{suggested}",
        )
    assert not (tmp_path / "o").exists()


def test_python_m_ingest_of_a_truncated_file_fails_in_one_line(tmp_path):
    truncated = write(tmp_path / "t.csv", sample_csv(), ".xz")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    result = run_module("ingest", f"--input={truncated}", f"--output_dir={tmp_path / 'o'}")
    assert result.returncode == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "rows rejected")
    assert not (tmp_path / "o").exists()  # Failed: kept aside, not published.
    rejected = (tmp_path / f"o{artifacts.FAILED_SUFFIX}" / "rejected").glob("*.jsonl")
    reasons = [json.loads(line)["reason"] for path in rejected for line in path.open()]
    assert "unreadable csv file: lzma data ends before its end: truncated file?" in reasons


class TinyModel(tf.Module):
    """A `serving_default` of serialized examples: the length of each one's `product` text."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = {"product": tf.io.FixedLenFeature([], tf.string, default_value="")}
        product = tf.io.parse_example(examples, spec)["product"]
        return {layout.OUTPUT_KEY: tf.cast(tf.strings.length(product), tf.float32)[:, None]}


def test_infer_reads_compressed_csv_as_the_plain_file(tmp_path):
    model, model_dir = TinyModel(), tmp_path / "model"
    tf.saved_model.save(model, str(model_dir), signatures={layout.SERVING_SIGNATURE: model.serve})
    data = sample_csv(300)
    plain = write(tmp_path / "in" / "s.csv", data)
    gzipped_without_suffix = write(tmp_path / "gz" / "s.csv", gzip.compress(data))
    results = {}
    for name, path, compression in (
        ("plain", plain, "auto"),
        ("bz2", write(tmp_path / "in" / "s.csv", data, ".bz2"), "auto"),
        ("gzip", gzipped_without_suffix, "gzip"),
    ):
        config = infer.InferConfig(
            model_dir=str(model_dir),
            input=str(path),
            output_dir=str(tmp_path / name),
            compression=compression,
            id_column="complaint_id",
            max_rejected_fraction=1.0,
        )
        counts = infer.run(config, direct_options()).counts
        results[name] = counts, outputs(tmp_path / name, path)
    assert results["plain"][0]["rows_read"] == 300 and results["plain"][0]["rows_rejected"] == 4
    assert results["bz2"] == results["plain"] and results["gzip"] == results["plain"]


def write_predictions(directory: pathlib.Path, count: int) -> None:
    """A finished infer output of `count` predictions, as feedback reads it."""
    with artifacts.StagedOutput(str(directory), "infer") as staged:
        lines = [
            json.dumps(
                {
                    "tracking_id": f"id-{i}",
                    "model_name": "tiny",
                    "model_version": 1,
                    "model_fingerprint": "f",
                    "score": (i % 10) / 10,
                    "features": {"complaint_id": [i], "product": ["Mortgage"]},
                }
            )
            for i in range(count)
        ]
        path = pathlib.Path(staged.path(layout.PREDICTIONS_DIR, "predictions-00000-of-00001.jsonl"))
        write(path, "\n".join(lines).encode() + b"\n")
        staged.publish(inputs={}, parameters={}, counts={})


def test_feedback_reads_compressed_jsonl_as_the_plain_file(tmp_path):
    write_predictions(tmp_path / "predictions", 40)
    events = [
        {"tracking_id": f"id-{i}", "kind": "label", "value": "Yes" if i % 3 else "No"}
        for i in range(30)
    ]
    events += [{"tracking_id": "id-nope", "kind": "label", "value": "Yes"}, {"kind": "label"}]
    data = "".join(json.dumps(event) + "\n" for event in events).encode() + b"{bad json\n"
    plain = write(tmp_path / "in" / "feedback.jsonl", data)
    results = {}
    for name, path in (
        ("plain", plain),
        ("gz", write(tmp_path / "in" / "feedback.jsonl", data, ".gz")),
        ("zst", write(tmp_path / "in" / "feedback.jsonl", data, ".zst")),
    ):
        config = feedback.FeedbackConfig(
            predictions=str(tmp_path / "predictions"),
            feedback=str(path),
            output_dir=str(tmp_path / name),
            **DEMO_LABEL,
        )
        counts = feedback.run(config, direct_options()).counts
        results[name] = counts, outputs(tmp_path / name, path)
    counts = results["plain"][0]
    assert counts["feedback_rows_read"] == 33 and counts["ids_labelled"] == 30
    assert counts["feedback_rows_unmatched"] == 1 and counts["feedback_rows_rejected"] == 2
    assert results["gz"] == results["plain"] and results["zst"] == results["plain"]


def test_feedback_compression_flag_and_its_refusal(tmp_path):
    write_predictions(tmp_path / "predictions", 3)
    data = b'{"tracking_id": "id-1", "kind": "label", "value": "Yes"}\n'
    path = write(tmp_path / "feedback.jsonl", lzma.compress(data))
    (tmp_path / "in").mkdir()
    args = [
        f"--predictions={tmp_path / 'predictions'}",
        f"--feedback={path}",
        *(f"--{flag}={value}" for flag, value in DEMO_LABEL.items()),
    ]
    result = CliRunner().invoke(
        feedback.main, [*args, "--compression=lzma", f"--output_dir={tmp_path / 'o'}"]
    )
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(str(tmp_path / "o")).counts["ids_labelled"] == 1
    result = CliRunner().invoke(
        feedback.main,
        [*args, "--format=avro", "--compression=lzma", f"--output_dir={tmp_path / 'o2'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "--compression=lzma applies to csv and jsonl")
    result = CliRunner().invoke(
        feedback.main,
        [
            args[0],
            *args[2:],
            f"--feedback={path.parent / 'in'}",
            "--format=csv",
            f"--output_dir={tmp_path / 'o3'}",
        ],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, f"--feedback={path.parent / 'in'} is a directory")


FUZZ_PIECES = (
    b",",
    b'"',
    b'""',
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    "é".encode(),
    b"a",
    b"12",
    b"-3.5",
    b" ",
    b"\t",
    b"\xef\xbb\xbf",
)


def fuzz_csv(rng: random.Random, header_odds: float = 0.8) -> bytes:
    """A random CSV: mostly a good header, then runs of CSV-ish pieces, random bytes (NULs,
    invalid UTF-8, lone CRs among them) and now and then a line of 100-200 KB, quoted or not."""
    if rng.random() < header_odds:
        header = b"a,b,c\n"
    else:
        header = b"".join(rng.choices(FUZZ_PIECES, k=rng.randint(0, 8)))
    body = []
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.6:
            body.append(b"".join(rng.choices(FUZZ_PIECES, k=rng.randint(0, 300))))
        elif kind < 0.9:
            body.append(rng.randbytes(rng.randint(0, 2000)))
        else:
            quote = b'"' if rng.random() < 0.5 else b""
            body.append(b"1," + quote + b"x" * rng.randint(100_000, 200_000) + quote + b",2\n")
    return header + b"".join(body)


def read_or_error(read: Callable[..., list], path: pathlib.Path, *args: int) -> list | str:
    """What `read(path, *args)` gives, or the one-line JobError it raises (a header ingest
    refuses)."""
    try:
        return read(path, *args)
    except cli.JobError as error:
        return str(error).replace(str(path), "<path>")


def test_fuzzed_csv_reads_as_python_csv_and_the_same_compressed(tmp_path):
    rng, started, cases = random.Random(FUZZ_SEED), time.monotonic(), 0
    while cases < FUZZ_CASES and time.monotonic() - started < FUZZ_SECONDS:
        data = fuzz_csv(rng)
        plain = write(tmp_path / f"f{cases}.csv", data)
        compressed = write(tmp_path / f"f{cases}.csv", data, rng.choice(SUFFIXES))
        expected = read_or_error(python_rows, plain)
        for block_bytes in (64, 1 << 20):
            batches = read_or_error(read_batches, plain, block_bytes)
            got = batches if isinstance(batches, str) else flat(batches)
            assert got == expected, (cases, block_bytes, data[:200])
            from_compressed = read_or_error(csv_batches, compressed, block_bytes)
            plain_batches = batches if isinstance(batches, str) else [summary(b) for b in batches]
            assert from_compressed == plain_batches, (cases, block_bytes, compressed.name)
        cases += 1
    assert cases >= 30, f"only {cases} fuzz cases in {FUZZ_SECONDS} s"


def assert_counts_add_up(output_dir: pathlib.Path) -> None:
    """rows read = written + rejected, in the manifest and in the files themselves."""
    counts = artifacts.read_manifest(str(output_dir)).counts
    written = counts["rows_written"]
    assert counts["rows_read"] == sum(written.values()) + counts["rows_rejected"]
    for split, count in written.items():
        shard_paths = sorted((output_dir / split).glob("data-*.tfrecord.gz"))
        assert sum(1 for p in shard_paths for _ in artifacts.read_tfrecords(str(p))) == count
    rejected = [line for p in (output_dir / "rejected").glob("*.jsonl") for line in p.open("rb")]
    assert len(rejected) == counts["rows_rejected"]


def ingest_outcome(path: pathlib.Path, output_dir: pathlib.Path, own_process: bool) -> Any:
    """Ingest's output files when it succeeds (their counts checked), else its one error line."""
    args = [f"--input={path}", f"--output_dir={output_dir}", "--max_rejected_fraction=1"]
    if own_process:  # As a user runs it.
        result = run_module("ingest", *args)
        exit_code, stderr = result.returncode, result.stderr
    else:
        invoked = CliRunner().invoke(ingest.main, args)
        assert invoked.exception is None or isinstance(invoked.exception, SystemExit)
        exit_code, stderr = invoked.exit_code, invoked.stderr
    if exit_code == 0:
        assert_counts_add_up(output_dir)
        return outputs(output_dir, path)
    assert exit_code == cli.EXIT_ERROR
    assert_one_error_line(stderr, "")
    return stderr.splitlines()[-1].replace(str(path), "<input>")


def test_fuzzed_csv_through_ingest_never_a_traceback(tmp_path):
    rng = random.Random(FUZZ_SEED + 1)
    # Random rows (most rejected), and once a header ingest refuses.
    cases = [fuzz_csv(rng, header_odds=0.7) for _ in range(2)] + [b"a,\xff\n" + fuzz_csv(rng)]
    for case, data in enumerate(cases):
        plain = write(tmp_path / "in" / f"f{case}.csv", data)
        compressed = write(tmp_path / "in" / f"f{case}.csv", data, SUFFIXES[case])
        expected = ingest_outcome(plain, tmp_path / f"{case}.plain", own_process=False)
        got = ingest_outcome(compressed, tmp_path / f"{case}.compressed", own_process=case == 0)
        assert got == expected, case
