"""Tests of the resume keys that let scripts/run_pipeline.sh skip stages that are up to date."""

from __future__ import annotations

import os
import shutil
import time

from click.testing import CliRunner

from beam_jobs import resume
from beam_jobs.lib import artifacts


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
    _stage_dir(tmp_path / "statistics", "statistics of the first run")  # what the stage wrote
    resume.record(stage_dir, command)
    assert resume.is_up_to_date(stage_dir, command)
    _stage_dir(upstream, "second run")
    assert not resume.is_up_to_date(stage_dir, command)


def _served_version(serving_dir, version: int, content: bytes):
    (serving_dir / str(version) / "variables").mkdir(parents=True)
    (serving_dir / str(version) / "saved_model.pb").write_bytes(content)
    (serving_dir / str(version) / "variables" / "variables.index").write_bytes(b"index")
    return serving_dir / str(version)


def test_every_part_of_a_multi_pattern_flag_is_in_the_key(tmp_path):
    train, evaluation = tmp_path / "a.csv", tmp_path / "b.csv"
    train.write_text("a,b\n1,2\n")
    evaluation.write_text("a,b\n3,4\n")
    command = [
        "python",
        "-m",
        "beam_jobs.ingest",
        f"--input=train={train},eval={evaluation}",
        f"--output_dir={tmp_path / 'o'}",
    ]
    key = resume.run_key(command)
    evaluation.write_text("a,b\n3,5\n")
    edited_eval = resume.run_key(command)
    assert edited_eval != key
    train.write_text("a,b\n1,3\n")
    assert resume.run_key(command) not in (key, edited_eval)


def test_a_stage_whose_output_dir_is_gone_or_replaced_reruns(tmp_path):
    output = _stage_dir(tmp_path / "statistics", "first run")
    command = ["python", "-m", "beam_jobs.statistics", f"--output_dir={output}"]
    stage_dir = str(tmp_path / "run_keys")
    resume.record(stage_dir, command)
    assert resume.is_up_to_date(stage_dir, command)
    _stage_dir(output, "another run")  # another run's output, not the one recorded
    assert not resume.is_up_to_date(stage_dir, command)
    resume.record(stage_dir, command)
    assert resume.is_up_to_date(stage_dir, command)
    (output / artifacts.MANIFEST_FILE).unlink()  # an unfinished output
    assert not resume.is_up_to_date(stage_dir, command)
    shutil.rmtree(output)
    assert not resume.is_up_to_date(stage_dir, command)


def test_a_push_whose_served_version_is_gone_or_changed_reruns(tmp_path):
    serving = tmp_path / "serving"
    command = ["python", "-m", "beam_jobs.push", f"--serving_dir={serving}"]
    stage_dir = str(tmp_path / "push")
    resume.record(stage_dir, command)  # nothing served: a record of nothing is not up to date
    assert not resume.is_up_to_date(stage_dir, command)
    version = _served_version(serving, 100, b"model one")
    resume.record(stage_dir, command)
    assert resume.is_up_to_date(stage_dir, command)
    _served_version(serving, 200, b"a later push")  # the recorded version still serves beside it
    assert resume.is_up_to_date(stage_dir, command)
    (version / "variables" / "variables.index").write_bytes(b"edited")
    assert not resume.is_up_to_date(stage_dir, command)
    shutil.rmtree(serving)
    assert not resume.is_up_to_date(stage_dir, command)


def test_cli_check_exit_codes(tmp_path):
    _served_version(tmp_path / "serving", 100, b"model")
    command = ["--", "python", "-m", "beam_jobs.push", f"--serving_dir={tmp_path / 'serving'}"]
    stage_dir = str(tmp_path / "push")
    assert CliRunner().invoke(resume.main, ["check", stage_dir, *command]).exit_code == 1
    assert CliRunner().invoke(resume.main, ["record", stage_dir, *command]).exit_code == 0
    assert CliRunner().invoke(resume.main, ["check", stage_dir, *command]).exit_code == 0


def test_a_runners_address_is_not_part_of_the_run_key(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    command = ["python", "-m", "beam_jobs.ingest", f"--input={data}", "--runner=PortableRunner"]
    first = [*command, "--job_endpoint=localhost:41001", "--environment_config=127.0.0.1:41003"]
    again = [*command, "--job_endpoint=localhost:52001", "--environment_config=127.0.0.1:52003"]
    assert resume.run_key(first) == resume.run_key(again)
    assert resume.run_key(first) != resume.run_key([*first, "--environment_type=PROCESS"])
