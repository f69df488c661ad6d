"""Tests of the push job: blessing checks, TF Serving layout, atomic copy, rollback."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from click.testing import CliRunner

from beam_jobs import artifacts, cli, push

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def save_model(path: pathlib.Path, scale: float, padding_bytes: int = 0) -> pathlib.Path:
    """A real (tiny) SavedModel; `padding_bytes` of assets make its copy take a while."""
    module = tf.Module()
    module.scale = tf.Variable(scale)
    module.score = tf.function(
        lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.score})
    if padding_bytes:
        (path / "assets").mkdir(exist_ok=True)
        for index in range(8):
            with (path / "assets" / f"padding-{index}.bin").open("wb") as handle:
                handle.truncate(padding_bytes // 8)
    return path


def write_evaluation(path: pathlib.Path, model_dir: pathlib.Path, blessed: bool) -> pathlib.Path:
    """An evaluation directory as beam_jobs.evaluate leaves it (blessing file, json, manifest)."""
    with artifacts.StagedOutput(str(path), "evaluate") as staged:
        marker = push.BLESSED_FILE if blessed else push.NOT_BLESSED_FILE
        pathlib.Path(staged.path(marker)).write_text("")
        artifacts.write_json(
            staged.path(push.BLESSING_JSON),
            {
                "blessed": blessed,
                "candidate": {
                    "path": str(model_dir),
                    "fingerprint": artifacts.directory_fingerprint(str(model_dir)),
                },
                "thresholds": [
                    {"name": "auc >= 0.6", "value": 0.7 if blessed else 0.5, "passed": blessed}
                ],
            },
        )
        staged.publish(inputs={"model": [{"path": str(model_dir)}]}, parameters={}, counts={})
    return path


def run_push(*args: str):
    return CliRunner().invoke(push.main, list(args))


def test_push_copies_a_blessed_model_and_records_provenance(tmp_path):
    model = save_model(tmp_path / "model", 2.0)
    evaluation = write_evaluation(tmp_path / "evaluation", model, blessed=True)
    serving = tmp_path / "serving"
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert result.exit_code == 0, result.output
    (version,) = artifacts.serving_versions(str(serving))
    assert f"pushed version {version}" in result.output
    loaded = tf.saved_model.load(str(serving / str(version)))
    assert loaded.signatures["serving_default"](tf.constant([3.0]))["output_0"].numpy() == [6.0]
    provenance = artifacts.read_json(str(serving / str(version) / push.PROVENANCE_FILE))
    assert provenance["blessing"]["blessed"] is True
    assert provenance["evaluation"][0]["manifest"]["stage"] == "evaluate"
    assert [p.name for p in serving.iterdir()] == [str(version)]

    second = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert second.exit_code == 0
    versions = artifacts.serving_versions(str(serving))
    assert len(versions) == 2 and versions[1] > versions[0]


def test_push_refuses_what_is_not_blessed_or_not_this_model(tmp_path):
    model = save_model(tmp_path / "model", 2.0)
    other = save_model(tmp_path / "other", 3.0)
    serving = tmp_path / "serving"
    rejected = write_evaluation(tmp_path / "rejected", model, blessed=False)
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={rejected}", f"--serving_dir={serving}"
    )
    assert result.exit_code == cli.EXIT_NOT_BLESSED
    assert "NOT_BLESSED (failed: auc >= 0.6)" in result.output
    blessed_other = write_evaluation(tmp_path / "blessed_other", other, blessed=True)
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={blessed_other}", f"--serving_dir={serving}"
    )
    assert result.exit_code == cli.EXIT_NOT_BLESSED
    assert "evaluated another model" in result.output
    (tmp_path / "unfinished").mkdir()
    result = run_push(
        f"--model_dir={model}",
        f"--evaluation_dir={tmp_path / 'unfinished'}",
        f"--serving_dir={serving}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "no manifest.json" in result.output
    assert artifacts.serving_versions(str(serving)) == []


def test_rollback_restores_the_previous_version(tmp_path):
    serving = tmp_path / "serving"
    for version, scale in ((100, 1.0), (200, 2.0)):
        save_model(serving / str(version), scale)
    result = run_push(f"--serving_dir={serving}", "--rollback")
    assert result.exit_code == 0, result.output
    assert "rolled back version 200; version 100 serves now" in result.output
    assert artifacts.serving_versions(str(serving)) == [100]
    result = run_push(f"--serving_dir={serving}", "--rollback")
    assert result.exit_code == cli.EXIT_ERROR
    assert "needs an older one" in result.output


def test_a_push_killed_mid_copy_leaves_no_loadable_half_model(tmp_path):
    model = save_model(tmp_path / "model", 2.0, padding_bytes=1 << 30)
    evaluation = write_evaluation(tmp_path / "evaluation", model, blessed=True)
    serving = tmp_path / "serving"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beam_jobs.push",
            f"--model_dir={model}",
            f"--evaluation_dir={evaluation}",
            f"--serving_dir={serving}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(serving.glob(".pushing-*/assets/padding-*")):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list(serving.glob(".pushing-*")), "the copy finished before the kill; enlarge the model"
    assert artifacts.serving_versions(str(serving)) == []
    assert not [p for p in serving.iterdir() if p.name.isdigit()]
    # A later push still works and is complete.
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert result.exit_code == 0, result.output
    (version,) = artifacts.serving_versions(str(serving))
    copied = {p.relative_to(serving / str(version)) for p in (serving / str(version)).rglob("*")}
    original = {p.relative_to(model) for p in model.rglob("*")}
    assert copied - original == {pathlib.Path(push.PROVENANCE_FILE)}
    assert original <= copied


@pytest.mark.parametrize("args", [["--rollback", "--model_dir=x"], ["--model_dir=x"]])
def test_push_usage_errors(tmp_path, args):
    result = run_push(f"--serving_dir={tmp_path}", *args)
    assert result.exit_code == cli.EXIT_USAGE
