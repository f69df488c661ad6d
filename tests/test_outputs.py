"""Tests of output ownership: a job writes only what is its own, and a failed run loses nothing.

Each case runs the real job on real files and checks that what must survive is still there, byte
for byte, and that the job said what was wrong in one line with exit code 1.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from beam_jobs import ingest, statistics, transform, validate
from beam_jobs.lib import artifacts, cli
from tests.conftest import DEMO_PREPROCESSING_FN, REPO_ROOT

TINY_CSV = "id,product,state\n1,Mortgage,TX\n2,Credit card,CA\n3,Debt collection,NY\n4,Loan,WA\n"


def snapshot(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file below `root`, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def write(path: pathlib.Path, text: str | bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def invoke(command, *args: str):
    """Runs a job's click command in-process; returns (exit code, output)."""
    result = CliRunner().invoke(command.main, [*args, "--runner=DirectRunner"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *fragments: str) -> None:
    assert code == cli.EXIT_ERROR, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_ingest_refuses_an_output_dir_holding_its_input(tmp_path, cfpb_2015_csv):
    data = tmp_path / "d"
    raw = write(data / "raw.csv", cfpb_2015_csv.read_bytes())
    before = snapshot(tmp_path)
    code, output = invoke(ingest, f"--input={raw}", f"--output_dir={data}")
    assert_one_line_error(code, output, f"--output_dir={data}", "contains the input", str(raw))
    assert snapshot(tmp_path) == before


def test_a_stage_refuses_to_write_over_another_stages_output(tmp_path, ingested_2015):
    before = snapshot(ingested_2015)
    code, output = invoke(
        statistics, f"--examples_dir={ingested_2015}", f"--output_dir={ingested_2015}"
    )
    assert_one_line_error(code, output, "is the input")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / artifacts.MANIFEST_FILE).write_bytes((ingested_2015 / "manifest.json").read_bytes())
    code, output = invoke(statistics, f"--examples_dir={ingested_2015}", f"--output_dir={other}")
    assert_one_line_error(code, output, "holds the output of the ingest stage, not of statistics")
    code, output = invoke(
        statistics, f"--examples_dir={ingested_2015}", f"--output_dir={ingested_2015 / 'stats'}"
    )
    assert_one_line_error(code, output, "lies inside the input")
    assert snapshot(ingested_2015) == before


def test_a_directory_of_the_users_files_is_never_emptied(tmp_path, ingested_2015):
    home = tmp_path / "home"
    write(home / "notes.txt", "do not lose me")
    write(home / "projects" / "thesis.tex", "\\documentclass{article}")
    before = snapshot(home)
    code, output = invoke(statistics, f"--examples_dir={ingested_2015}", f"--output_dir={home}")
    assert_one_line_error(code, output, "is not empty and no statistics run wrote it", "notes.txt")
    assert snapshot(home) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_a_failed_rerun_keeps_the_last_good_output(tmp_path, cfpb_2015_csv):
    out = tmp_path / "out"
    good = write(tmp_path / "good.csv", cfpb_2015_csv.read_bytes())
    assert invoke(ingest, f"--input={good}", f"--output_dir={out}")[0] == 0
    before = snapshot(out)
    lines = cfpb_2015_csv.read_bytes().split(b"\r\n")
    lines[10] = b"1,2,3"
    bad = write(tmp_path / "bad.csv", b"\r\n".join(lines))
    code, output = invoke(ingest, f"--input={bad}", f"--output_dir={out}")
    failed = tmp_path / f"out{artifacts.FAILED_SUFFIX}"
    assert_one_line_error(code, output, "1 of 28156 rows rejected", str(failed / "rejected"))
    assert snapshot(out) == before  # The last good run, untouched.
    assert (failed / artifacts.FAILED_FILE).exists()
    assert not (failed / artifacts.MANIFEST_FILE).exists()
    with pytest.raises(cli.JobError, match=r"no manifest\.json"):
        artifacts.read_manifest(str(failed))
    # A second failure replaces the first one's leftovers; a success removes them.
    assert invoke(ingest, f"--input={bad}", f"--output_dir={out}")[0] == cli.EXIT_ERROR
    assert invoke(ingest, f"--input={good}", f"--output_dir={out}")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "out"]


def test_the_next_run_removes_staging_left_by_a_killed_run(tmp_path, cfpb_2015_csv):
    out = tmp_path / "out"
    raw = write(tmp_path / "raw.csv", cfpb_2015_csv.read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "beam_jobs.ingest", f"--input={raw}", f"--output_dir={out}"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.staging-*/.owner.json")):
            assert process.poll() is None, "ingest ended before it staged anything"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert list(tmp_path.glob(".out.staging-*")), "the killed run left no staging folder"
    assert not out.exists()
    assert invoke(ingest, f"--input={raw}", f"--output_dir={out}")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.csv"]


def test_staging_of_a_live_run_is_left_alone(tmp_path):
    out = tmp_path / "out"
    with artifacts.StagedOutput(str(out), "test") as first:
        write(pathlib.Path(first.path("part.txt")), "in progress")
        with artifacts.StagedOutput(str(out), "test") as second:
            second.publish(inputs={}, parameters={}, counts={})
        assert pathlib.Path(first.path("part.txt")).read_text() == "in progress"
        first.publish(inputs={}, parameters={}, counts={"n": 2})
    assert artifacts.read_manifest(str(out)).counts == {"n": 2}


@pytest.mark.parametrize(
    ("make_output", "message"),
    [
        (lambda d: write(d / "a_file", "x"), "exists and is not a directory"),
        (lambda d: write(d / "a_file", "x") / "below", "which is a file"),
        (lambda d: pathlib.Path("."), "current directory"),
        (lambda d: pathlib.Path(REPO_ROOT), "current directory"),
    ],
)
def test_an_output_path_that_cannot_be_a_directory_is_one_line(
    tmp_path, make_output, message, monkeypatch
):
    monkeypatch.chdir(REPO_ROOT)
    raw = write(tmp_path / "in" / "raw.csv", TINY_CSV)
    output = make_output(tmp_path)
    before_tmp, before_repo = snapshot(tmp_path), snapshot(REPO_ROOT / "beam_jobs")
    code, text = invoke(ingest, f"--input={raw}", f"--output_dir={output}")
    assert_one_line_error(code, text, message)
    assert snapshot(tmp_path) == before_tmp
    assert snapshot(REPO_ROOT / "beam_jobs") == before_repo


def test_another_stages_output_as_input_is_one_line(
    tmp_path, ingested_2017_sample, transformed_2015, curated_schema
):
    stats_dir = tmp_path / "stats"
    assert (
        invoke(statistics, f"--examples_dir={ingested_2017_sample}", f"--output_dir={stats_dir}")[0]
        == 0
    )
    cases = [
        (statistics, [f"--examples_dir={transformed_2015}"], "output of the transform stage"),
        (
            validate,
            [f"--statistics_dir={ingested_2017_sample}", f"--schema={curated_schema}"],
            "output of the ingest stage",
        ),
        (
            transform,
            [
                f"--examples_dir={stats_dir}",
                f"--schema={curated_schema}",
                f"--preprocessing_fn={DEMO_PREPROCESSING_FN}",
            ],
            "output of the statistics stage",
        ),
    ]
    for job, args, message in cases:
        out = tmp_path / f"out_{job.__name__.rsplit('.', 1)[-1]}"
        code, output = invoke(job, *args, f"--output_dir={out}")
        assert_one_line_error(code, output, message, "takes the output of")
        assert not out.exists()


# Paths the fuzz picks an input and an output from: the data, its folder, a previous output, a
# folder of someone else's files, their parents and children, and a path under a file.
_FUZZ_PATHS = (
    "",
    "data",
    "data/raw.csv",
    "data/raw.csv/below",
    "data/sub",
    "out",
    "out/train",
    "out/train/data-00000-of-00001.tfrecord.gz",
    "mine",
    "mine/notes.txt",
    "new",
    "new/deeper",
)


def test_fuzz_output_ownership_changes_nothing_outside_the_output(tmp_path):
    root = tmp_path / "root"
    write(root / "data" / "raw.csv", TINY_CSV)
    write(root / "mine" / "notes.txt", "someone else's")
    assert (
        invoke(
            ingest,
            f"--input={root / 'data' / 'raw.csv'}",
            f"--output_dir={root / 'out'}",
            "--splits=train:1",
        )[0]
        == 0
    )
    chooser = random.Random(14)
    for _ in range(14):
        input_path = root / chooser.choice(_FUZZ_PATHS[1:4])
        output_path = root / chooser.choice(_FUZZ_PATHS)
        before = snapshot(root)
        code, text = invoke(
            ingest, f"--input={input_path}", f"--output_dir={output_path}", "--splits=train:1"
        )
        assert code in (0, cli.EXIT_ERROR), text
        assert "Traceback" not in text
        if code:
            assert len(text.strip().splitlines()) == 1, text
        else:
            assert artifacts.read_manifest(str(output_path), stages=("ingest",))
        prefix = str(output_path.relative_to(root)) + os.sep
        outside = {
            name: digest
            for name, digest in before.items()
            if not (name + os.sep).startswith(prefix)
        }
        after = snapshot(root)
        assert {name: after.get(name) for name in outside} == outside, (input_path, output_path)
        for path in list(root.glob(".*.failed")) + list(root.glob("*.failed")):
            assert (path / artifacts.FAILED_FILE).exists()
