"""Tests of the resume keys that let scripts/run_pipeline.sh skip stages that are up to date."""

from __future__ import annotations

import os
import time

from click.testing import CliRunner

from beam_jobs import artifacts, resume


def _stage_dir(path, content: str):
    path.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(str(path / artifacts.MANIFEST_FILE), {"stage": "x", "content": content})
    return path


def test_run_key_follows_content_not_timestamps(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    command = ["python", "-m", "beam_jobs.ingest", f"--input={data}", f"--output_dir={tmp_path}/o"]
    key = resume.run_key(command)
    later = time.time() + 100
    os.utime(data, (later, later))
    assert resume.run_key(command) == key
    data.write_text("a,b\n1,3\n")
    assert resume.run_key(command) != key
    assert resume.run_key([*command, "--splits=train:1"]) != resume.run_key(command)


def test_a_rerun_upstream_stage_changes_the_downstream_key(tmp_path):
    upstream = _stage_dir(tmp_path / "ingest", "first run")
    command = [
        "python",
        "-m",
        "beam_jobs.statistics",
        f"--examples_dir={upstream}",
        f"--output_dir={tmp_path / 'statistics'}",
    ]
    stage_dir = str(tmp_path / "statistics")
    assert not resume.is_up_to_date(stage_dir, command)
    resume.record(stage_dir, command)
    assert resume.is_up_to_date(stage_dir, command)
    _stage_dir(upstream, "second run")
    assert not resume.is_up_to_date(stage_dir, command)


def test_cli_check_exit_codes(tmp_path):
    command = ["--", "python", "-m", "beam_jobs.push", f"--serving_dir={tmp_path / 'serving'}"]
    stage_dir = str(tmp_path / "push")
    assert CliRunner().invoke(resume.main, ["check", stage_dir, *command]).exit_code == 1
    assert CliRunner().invoke(resume.main, ["record", stage_dir, *command]).exit_code == 0
    assert CliRunner().invoke(resume.main, ["check", stage_dir, *command]).exit_code == 0
