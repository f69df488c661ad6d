"""Tests of the ingest job: parsing, typing, splits, rejects, formats and spans, on real data."""

from __future__ import annotations

import collections
import csv
import json
import pathlib
import subprocess
import sys

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from click.testing import CliRunner

from beam_jobs import ingest
from beam_jobs.lib import artifacts, cli, records, sources, splits
from tests.conftest import REPO_ROOT, direct_options

SMALL_CSV = (
    "\ufeffComplaint ID,Product,Sub-product,ZIP code,Consumer disputed?,\r\n"
    '1,"Mortgage, FHA",,76119,Yes,a\r\n'
    '2,Credit card,"line one\r\nline two",2127,,b\r\n'
    "3,Debt collection,Medical,,No,c\r\n"
)


def read_examples(directory: pathlib.Path) -> list[tf.train.Example]:
    """Every example under a split directory, in file order."""
    return [
        tf.train.Example.FromString(record)
        for path in sorted(directory.glob("data-*.tfrecord.gz"))
        for record in artifacts.read_tfrecords(str(path))
    ]


def as_dict(example: tf.train.Example) -> dict[str, list]:
    return {name: records._feature_values(f) for name, f in example.features.feature.items()}


def run_ingest(tmp_path: pathlib.Path, **kwargs) -> tuple[pathlib.Path, artifacts.Manifest]:
    output_dir = tmp_path / "out"
    manifest = ingest.run(
        ingest.IngestConfig(output_dir=str(output_dir), **kwargs), direct_options()
    )
    return output_dir, manifest


def write(path: pathlib.Path, text: str | bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


@pytest.mark.parametrize(
    ("name", "index", "expected"),
    [
        ("Consumer disputed?", 3, "consumer_disputed"),
        ("Sub-product", 1, "sub_product"),
        ("ZIP code", 2, "zip_code"),
        ("", 0, "col_0"),
        ("  Timely response? ", 5, "timely_response"),
    ],
)
def test_normalize_column_name(name, index, expected):
    assert records.normalize_column_name(name, index) == expected


def test_parse_splits_accepts_weights_and_rejects_bad_ones():
    assert splits.parse_splits("train:6,eval:2,test:2") == (
        splits.Split("train", 6),
        splits.Split("eval", 2),
        splits.Split("test", 2),
    )
    for bad in ("train:0,eval:1", "train:2,train:1", "train", "rejected:1", "1x:2"):
        with pytest.raises(Exception, match=r"--splits|split"):
            splits.parse_splits(bad)


def test_parse_input_tells_presplit_from_a_pattern():
    assert sources.parse_input("data/*.csv") == {None: "data/*.csv"}
    assert sources.parse_input("train=a/*.csv,eval=b/*.csv") == {
        "train": "a/*.csv",
        "eval": "b/*.csv",
    }
    assert sources.parse_input("gs://bucket/date=2020/*.csv") == {
        None: "gs://bucket/date=2020/*.csv"
    }


def test_assign_split_follows_the_weights_and_is_stable():
    weights = splits.parse_splits("train:6,eval:2,test:2")
    counts = collections.Counter(
        splits.assign_split(str(i).encode(), weights) for i in range(30_000)
    )
    assert counts["train"] / 30_000 == pytest.approx(0.6, abs=0.01)
    assert counts["test"] / 30_000 == pytest.approx(0.2, abs=0.01)
    assert splits.assign_split(b"same key", weights) == splits.assign_split(b"same key", weights)


def test_value_types_and_encoding_leave_empty_values_absent():
    assert records.value_type("12") is records.ColumnType.INT
    assert records.value_type("1.5e3") is records.ColumnType.FLOAT
    assert records.value_type("088XX") is records.ColumnType.BYTES
    assert records.value_type([1, 2.5]) is records.ColumnType.FLOAT
    assert records.value_type(None) is None
    example = records.encode_example(
        {"a": "7", "b": "", "c": None, "d": [b"x", b"y"]},
        {"a": records.ColumnType.INT},
    )
    assert as_dict(example) == {"a": [7], "d": [b"x", b"y"]}
    with pytest.raises(ValueError, match=r"column 'a'.*'x7' is not an integer"):
        records.encode_example({"a": "x7"}, {"a": records.ColumnType.INT})


def test_csv_rfc4180_quotes_newlines_crlf_bom(tmp_path):
    path = write(tmp_path / "small.csv", SMALL_CSV)
    rows = list(records.read_rows(str(path), records.CSV))
    assert [row.line for row in rows] == [2, 3, 5]
    assert rows[0].values == {
        "complaint_id": "1",
        "product": "Mortgage, FHA",
        "zip_code": "76119",
        "consumer_disputed": "Yes",
        "col_5": "a",
    }
    assert rows[1].values["sub_product"] == "line one\r\nline two"
    assert "zip_code" not in rows[2].values


def python_csv_rows(path: pathlib.Path) -> list[records.RawRow]:
    """The whole file through Python's csv module alone: what the block reader must match."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
        reader = csv.reader(text)
        header = records.normalize_header(next(reader, []), str(path))
        return list(records._csv_records(reader, header, str(path), 0))


TRICKY_CSVS = {
    "stray_quotes": 'a,b,c\n1,5" screen,x\n2,"multi\nline",y\n3,ok,z\n4,"q""uote",w\n',
    "blank_lines": 'a,b\n1,2\n\n3,4\n\n\n5,"x\n\ny"\n6,7',
    "lone_carriage_returns": 'a,b\r1,2\r3,"x\ry"\r4,5\r',
    "mixed_line_ends": 'a,b\r\n1,"2\r\n3"\n3,4\r\n',
    "quote_left_open": 'a,b\n1,"never closed\n2,3\n4,5\n',
    "wrong_widths": "a,b\n1\n2,3\n4,5,6\n7,8",
    "undecodable": b"\xef\xbb\xbfa,b\n1,2\n3,\xff\n5,6\n",
    "header_only": "a,b\n",
    "blank_header": "\n1,2\n3,4\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY_CSVS))
def test_block_reader_reads_every_row_as_python_csv_does(tmp_path, name):
    path = write(tmp_path / f"{name}.csv", TRICKY_CSVS[name])
    expected = python_csv_rows(path)
    for block_bytes in (1, 3, 17, 1 << 20):
        batches = list(records.read_csv_batches(str(path), block_bytes))
        assert [row for batch in batches for row in batch.raw_rows()] == expected, block_bytes


def test_block_reader_on_real_data_uses_arrow_and_matches_python(cfpb_2015_csv, tmp_path):
    corrupted = tmp_path / "corrupted.csv"
    lines = cfpb_2015_csv.read_bytes().split(b"\r\n")[:2000]
    lines[300] += b",extra"
    write(corrupted, b"\r\n".join(lines))
    for path in (cfpb_2015_csv, corrupted):
        batches = list(records.read_csv_batches(str(path), 64 << 10))
        assert [row for batch in batches for row in batch.raw_rows()] == python_csv_rows(path)
    # Clean blocks go through Arrow: only the one holding the bad row takes Python's reader.
    header_end = cfpb_2015_csv.read_bytes().index(b"\n") + 1
    block = cfpb_2015_csv.read_bytes()[header_end : header_end + (1 << 20)]
    block = block[: records._last_record_end(block)]
    header = records.read_csv_header(str(cfpb_2015_csv))
    lines = records._count_lines(block)
    assert records._arrow_csv_block("f.csv", header, 2, block, lines) is not None
    blank_line = block.replace(b"\r\n", b"\r\n\r\n", 1)
    assert records._arrow_csv_block("f.csv", header, 2, blank_line, lines + 1) is None


def test_ingest_small_csv_types_columns_over_the_whole_input(tmp_path):
    path = write(tmp_path / "small.csv", SMALL_CSV + "4,Mortgage,,7611X,Yes,d\r\n")
    output_dir, manifest = run_ingest(tmp_path, input=str(path), splits="all:1")
    examples = sorted(
        (as_dict(e) for e in read_examples(output_dir / "all")), key=lambda d: d["complaint_id"]
    )
    assert manifest.counts == {"rows_read": 4, "rows_rejected": 0, "rows_written": {"all": 4}}
    # One masked ZIP code makes the whole column BYTES, as inference over the input must.
    assert [e.get("zip_code") for e in examples] == [[b"76119"], [b"2127"], None, [b"7611X"]]
    assert examples[0]["complaint_id"] == [1]
    assert "sub_product" not in examples[0]


def test_ingest_real_2015_data(ingested_2015, cfpb_2015_csv):
    manifest = artifacts.read_manifest(str(ingested_2015))
    written = manifest.counts["rows_written"]
    assert manifest.counts["rows_read"] == 28_156
    assert manifest.counts["rows_rejected"] == 0
    assert sum(written.values()) == 28_156
    assert written["train"] / 28_156 == pytest.approx(2 / 3, abs=0.01)
    examples = read_examples(ingested_2015 / "train") + read_examples(ingested_2015 / "eval")
    assert len(examples) == 28_156
    names = set().union(*(e.features.feature.keys() for e in examples))
    for name in (
        "product",
        "sub_product",
        "issue",
        "state",
        "zip_code",
        "company_response",
        "consumer_disputed",
        "complaint_id",
        "timely_response",
    ):
        assert name in names
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as handle:
        empty_sub_product = sum(1 for row in csv.DictReader(handle) if not row["Sub-product"])
    assert empty_sub_product == 10_574
    assert sum("sub_product" not in e.features.feature for e in examples) == empty_sub_product
    assert manifest.inputs["raw"][0]["size"] == cfpb_2015_csv.stat().st_size
    assert (ingested_2015 / "rejected").is_dir()


def test_corrupted_rows_are_rejected_with_reasons(tmp_path, cfpb_2015_csv):
    lines = cfpb_2015_csv.read_bytes().split(b"\r\n")
    lines[30] = lines[30].replace(b",", b",\xff\xfe", 1)
    lines[40] += b",extra"
    lines[50] = b"1,2,3"
    corrupted = write(tmp_path / "corrupted.csv", b"\r\n".join(lines))

    output_dir = tmp_path / "strict"
    result = CliRunner().invoke(ingest.main, [f"--input={corrupted}", f"--output_dir={output_dir}"])
    assert result.exit_code == cli.EXIT_ERROR
    assert "3 of 28156 rows rejected" in result.output
    failed_dir = tmp_path / f"strict{artifacts.FAILED_SUFFIX}"
    assert f"reasons in {failed_dir / 'rejected'}/" in result.output
    assert "Traceback" not in result.output
    assert not output_dir.exists()  # Nothing published; the partial output waits aside.
    assert not (failed_dir / artifacts.MANIFEST_FILE).exists()
    rejected = [
        json.loads(line)
        for line in (failed_dir / "rejected" / "rejected-00000-of-00001.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (31, "undecodable bytes (not UTF-8)"),
        (41, "expected 13 fields, found 14"),
        (51, "expected 13 fields, found 3"),
    ]

    lenient, manifest = run_ingest(
        tmp_path / "lenient", input=str(corrupted), max_rejected_fraction=0.001
    )
    counts = manifest.counts
    assert counts["rows_read"] == 28_156
    assert counts["rows_rejected"] == 3
    assert sum(counts["rows_written"].values()) + counts["rows_rejected"] == counts["rows_read"]
    assert len(read_examples(lenient / "train")) + len(read_examples(lenient / "eval")) == 28_153


def test_three_splits_are_proportional_and_byte_identical(tmp_path, cfpb_2015_csv):
    first, manifest = run_ingest(
        tmp_path / "a", input=str(cfpb_2015_csv), splits="train:6,eval:2,test:2"
    )
    second, _ = run_ingest(tmp_path / "b", input=str(cfpb_2015_csv), splits="train:6,eval:2,test:2")
    written = manifest.counts["rows_written"]
    assert set(written) == {"train", "eval", "test"}
    for split, share in (("train", 0.6), ("eval", 0.2), ("test", 0.2)):
        assert written[split] / 28_156 == pytest.approx(share, abs=0.01)
        files_a = sorted((first / split).iterdir())
        files_b = sorted((second / split).iterdir())
        assert [f.name for f in files_a] == [f.name for f in files_b]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_a, files_b, strict=True))


def test_no_shard_is_left_empty_when_shards_and_split_weights_share_a_factor(
    tmp_path, cfpb_2015_csv
):
    output_dir, manifest = run_ingest(tmp_path, input=str(cfpb_2015_csv), num_shards=3)
    for split in ("train", "eval"):
        shards = sorted((output_dir / split).iterdir())
        sizes = [len(list(artifacts.read_tfrecords(str(shard)))) for shard in shards]
        assert len(sizes) == 3
        assert sum(sizes) == manifest.counts["rows_written"][split]
        assert min(sizes) > 0.3 * sum(sizes)


def test_partition_feature_keeps_each_value_in_one_split(tmp_path, cfpb_2015_csv):
    output_dir, _ = run_ingest(tmp_path, input=str(cfpb_2015_csv), partition_feature="state")
    states_by_split = {
        split: {tuple(as_dict(e).get("state", [])) for e in read_examples(output_dir / split)}
        for split in ("train", "eval")
    }
    assert not states_by_split["train"] & states_by_split["eval"]
    assert len(states_by_split["train"]) > 10


def _typed_rows() -> list[dict]:
    return [
        {"id": 1, "product": "Mortgage", "score": 0.5, "zip": "76119"},
        {"id": 2, "product": "Credit card", "score": None, "zip": None},
        {"id": 3, "product": "Debt collection", "score": 2.0, "zip": "088XX"},
    ]


@pytest.mark.parametrize("input_format", ["jsonl", "parquet", "avro", "tfrecord"])
def test_other_formats_go_through_the_same_path(tmp_path, input_format):
    rows = _typed_rows()
    path = tmp_path / f"input.{input_format}"
    if input_format == "jsonl":
        write(path, "\n".join(json.dumps(row) for row in rows) + "\n")
    elif input_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif input_format == "avro":
        schema = {
            "type": "record",
            "name": "Complaint",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "product", "type": "string"},
                {"name": "score", "type": ["null", "double"]},
                {"name": "zip", "type": ["null", "string"]},
            ],
        }
        with path.open("wb") as handle:
            fastavro.writer(handle, schema, rows)
    else:
        encoded = [records.encode_example(row, {}).SerializeToString() for row in rows]
        artifacts.write_tfrecords(str(path), encoded)
    output_dir, manifest = run_ingest(tmp_path, input=str(path), splits="all:1")
    assert manifest.parameters["input_format"] == input_format
    examples = sorted(
        (as_dict(e) for e in read_examples(output_dir / "all")), key=lambda d: d["id"]
    )
    assert examples == [
        {"id": [1], "product": [b"Mortgage"], "score": [0.5], "zip": [b"76119"]},
        {"id": [2], "product": [b"Credit card"]},
        {"id": [3], "product": [b"Debt collection"], "score": [2.0], "zip": [b"088XX"]},
    ]


def test_bad_json_lines_are_rejected(tmp_path):
    path = write(tmp_path / "input.jsonl", '{"a": 1}\n{"a": \n[1, 2]\n\n{"a": 3}\n')
    output_dir, manifest = run_ingest(
        tmp_path, input=str(path), splits="all:1", max_rejected_fraction=1.0
    )
    assert manifest.counts == {"rows_read": 4, "rows_rejected": 2, "rows_written": {"all": 2}}
    reasons = (output_dir / "rejected" / "rejected-00000-of-00001.jsonl").read_text()
    assert "invalid JSON" in reasons and "not a JSON object" in reasons


def test_spans_and_versions_pick_the_newest_unless_told(tmp_path):
    for span, version in ((1, 1), (2, 1), (2, 3)):
        write(
            tmp_path / f"span-{span:02d}" / f"v{version}" / "data.csv",
            f"id,span\n{span}{version},{span}\n",
        )
    pattern = str(tmp_path / "span-{SPAN}" / "v{VERSION}" / "*.csv")
    _, newest = run_ingest(tmp_path / "newest", input=pattern, splits="all:1")
    assert (newest.extra["span"], newest.extra["version"]) == (2, 3)
    assert newest.inputs["raw"][0]["path"].endswith("span-02/v3/data.csv")
    _, chosen = run_ingest(tmp_path / "chosen", input=pattern, splits="all:1", span=1)
    assert (chosen.extra["span"], chosen.extra["version"]) == (1, 1)


def test_presplit_input_keeps_the_given_splits(tmp_path):
    train = write(tmp_path / "train.csv", "id,product\n1,Mortgage\n2,Credit card\n")
    evaluation = write(tmp_path / "eval.csv", "id,product\n3,Payday loan\n")
    output_dir, manifest = run_ingest(tmp_path, input=f"train={train},eval={evaluation}")
    assert manifest.counts["rows_written"] == {"train": 2, "eval": 1}
    assert [as_dict(e)["product"] for e in read_examples(output_dir / "eval")] == [[b"Payday loan"]]


def test_schema_types_replace_inference_and_reject_misfits(tmp_path):
    schema = write(
        tmp_path / "schema.pbtxt",
        'feature { name: "zip_code" type: BYTES }\nfeature { name: "id" type: INT }\n',
    )
    path = write(tmp_path / "input.csv", "id,zip_code\n1,76119\nx2,2127\n")
    output_dir, manifest = run_ingest(
        tmp_path, input=str(path), splits="all:1", schema=str(schema), max_rejected_fraction=0.5
    )
    assert [as_dict(e) for e in read_examples(output_dir / "all")] == [
        {"id": [1], "zip_code": [b"76119"]}
    ]
    rejected = (output_dir / "rejected" / "rejected-00000-of-00001.jsonl").read_text()
    assert "column 'id': 'x2' is not an integer (INT column)" in rejected
    assert manifest.counts["rows_rejected"] == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: str(d / "missing*.csv"), "no file matches"),
        (lambda d: str(write(d / "empty.csv", "")), "is empty"),
        (lambda d: str(write(d / "header_only.csv", "a,b\n")), "holds no rows"),
        (lambda d: str(write(d / "data.xyz", "a\n1\n")), "pass --format"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, setup, message):
    result = CliRunner().invoke(
        ingest.main, [f"--input={setup(tmp_path)}", f"--output_dir={tmp_path / 'out'}"]
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / artifacts.MANIFEST_FILE).exists()


def test_cli_forwards_beam_flags_and_rejects_stray_arguments(tmp_path):
    path = write(tmp_path / "small.csv", SMALL_CSV)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        ingest.main,
        [
            f"--input={path}",
            f"--output_dir={out}",
            "--runner=DirectRunner",
            "--direct_num_workers=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(str(out)).counts["rows_read"] == 3
    stray = CliRunner().invoke(ingest.main, [f"--input={path}", f"--output_dir={out}", "oops"])
    assert stray.exit_code == cli.EXIT_USAGE
    bad_splits = CliRunner().invoke(
        ingest.main, [f"--input={path}", f"--output_dir={out}", "--splits=train:x"]
    )
    assert bad_splits.exit_code == cli.EXIT_USAGE
    help_text = CliRunner().invoke(ingest.main, ["--help"]).output
    for flag in (
        "--input",
        "--output_dir",
        "--format",
        "--splits",
        "--partition_feature",
        "--schema",
        "--max_rejected_fraction",
        "--span",
        "--version",
    ):
        assert flag in help_text


def test_a_stage_dir_without_manifest_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(cli.JobError, match=r"no manifest\.json"):
        artifacts.read_manifest(str(tmp_path / "half"), flag="examples_dir")


def test_staged_output_keeps_a_failure_aside_and_publishes_nothing(tmp_path):
    output_dir = tmp_path / "stage"
    with pytest.raises(RuntimeError), artifacts.StagedOutput(str(output_dir), "test") as staged:
        write(pathlib.Path(staged.path("part.txt")), "partial")
        raise RuntimeError("killed mid-way")
    failed_dir = tmp_path / f"stage{artifacts.FAILED_SUFFIX}"
    assert [p.name for p in tmp_path.iterdir()] == [failed_dir.name]
    assert (failed_dir / "part.txt").read_text() == "partial"
    failure = json.loads((failed_dir / artifacts.FAILED_FILE).read_text())
    assert "killed mid-way" in failure["reason"]
    with artifacts.StagedOutput(str(output_dir), "test") as staged:
        write(pathlib.Path(staged.path("part.txt")), "whole")
        staged.publish(inputs={}, parameters={}, counts={"n": 1})
    assert artifacts.read_manifest(str(output_dir)).counts == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


PII_CSV = (
    "complaint_id,consumer_complaint_narrative,customer_name,state\n"
    '1,"Reach me at jane.doe@example.com or (555) 123-4567, SSN 123-45-6789.",Jane Doe,TX\n'
    '2,"Card 4111 1111 1111 1111 was charged twice; call 555.987.6543",John Roe,CA\n'
    "3,No personal data here,Ann Poe,NY\n"
    '4,"broken row with a@b.com",Bo Li\n'
    "x5,also bad jo@x.org,Di Wu,WA\n"
)


def test_pii_is_dropped_and_scrubbed_everywhere(tmp_path):
    path = write(tmp_path / "pii.csv", PII_CSV)
    schema = write(tmp_path / "schema.pbtxt", 'feature { name: "complaint_id" type: INT }\n')
    output_dir, manifest = run_ingest(
        tmp_path,
        input=str(path),
        splits="all:1",
        schema=str(schema),
        drop_columns="customer_name",
        scrub="consumer_complaint_narrative:all",
        max_rejected_fraction=0.5,
    )
    examples = {e["complaint_id"][0]: e for e in map(as_dict, read_examples(output_dir / "all"))}
    assert examples[1]["consumer_complaint_narrative"] == [
        b"Reach me at [EMAIL] or [PHONE], SSN [SSN]."
    ]
    assert examples[2]["consumer_complaint_narrative"] == [
        b"Card [CARD] was charged twice; call [PHONE]"
    ]
    assert all("customer_name" not in e for e in examples.values())
    assert manifest.counts["pii_replacements"] == {"card": 1, "ssn": 1, "email": 1, "phone": 2}
    assert manifest.counts["rows_rejected"] == 2
    everything = b"".join(p.read_bytes() for p in output_dir.rglob("*") if p.is_file())
    for secret in (
        b"jane.doe@example.com",
        b"123-4567",
        b"123-45-6789",
        b"4111",
        b"Jane Doe",
        b"a@b.com",
        b"Bo Li",
        b"jo@x.org",
        b"Di Wu",
    ):
        assert secret not in everything, secret
    rejected = (output_dir / "rejected" / "rejected-00000-of-00001.jsonl").read_text()
    assert "withheld" in rejected  # the 3-field row: its columns cannot be told apart
    assert "[EMAIL]" in rejected  # the mistyped row: known columns, scrubbed


def test_privacy_flags_are_checked_against_the_header(tmp_path):
    path = write(tmp_path / "small.csv", SMALL_CSV)
    result = CliRunner().invoke(
        ingest.main,
        [f"--input={path}", f"--output_dir={tmp_path / 'out'}", "--drop_columns=no_such_column"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "not a column" in result.output
    result = CliRunner().invoke(
        ingest.main,
        [f"--input={path}", f"--output_dir={tmp_path / 'out'}", "--scrub=product:passport"],
    )
    assert result.exit_code == cli.EXIT_USAGE


def test_python_m_on_two_worker_processes_writes_the_same_bytes(tmp_path):
    data = tmp_path / "complaints.csv"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "generate_demo_data.py"),
            f"--output={data}",
            "--rows=2000",
        ],
        check=True,
    )
    outputs = {}
    for name, extra in (
        ("one", []),
        ("two", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
    ):
        outputs[name] = tmp_path / name
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "beam_jobs.ingest",
                f"--input={data}",
                f"--output_dir={outputs[name]}",
                "--runner=DirectRunner",
                *extra,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    for split in ("train", "eval"):
        (one,) = (outputs["one"] / split).iterdir()
        (two,) = (outputs["two"] / split).iterdir()
        assert one.read_bytes() == two.read_bytes()


def test_batch_encoding_equals_the_per_row_path(cfpb_2015_csv):
    rows = [row.values for row in records.read_rows(str(cfpb_2015_csv), records.CSV)][:3000]
    rows += [{"complaint_id": "x2"}, {"zip_code": "1.5e3"}, {}, {"complaint_id": "nan"}]
    types = {"complaint_id": records.ColumnType.INT, "zip_code": records.ColumnType.FLOAT}
    per_row = [records._encode_row(row, types) for row in rows]
    assert records.encode_examples(rows, types) == per_row
    assert per_row[-4] == (None, "column 'complaint_id': 'x2' is not an integer (INT column)")
    assert per_row[-2] == (b"", None)
    # Texts Arrow parses otherwise than Python send the batch down the per-row path.
    tricky = [{"complaint_id": "+5"}, {"complaint_id": str(2**70)}]
    assert records.encode_examples(tricky, types) == [
        records._encode_row(row, types) for row in tricky
    ]
