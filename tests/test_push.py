"""Tests of the push job: blessing checks, TF Serving layout, atomic copy, rollback."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf
from click.testing import CliRunner

from beam_jobs import push
from beam_jobs.lib import artifacts, cli, layout

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
        marker = layout.BLESSED_FILE if blessed else layout.NOT_BLESSED_FILE
        pathlib.Path(staged.path(marker)).write_text("")
        artifacts.write_json(
            staged.path(layout.BLESSING_JSON),
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


def snapshot(root: pathlib.Path) -> dict[str, tuple]:
    """Every entry below `root`, links not followed: a file's bytes, a link's target, a folder."""
    entries = {}
    for current, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(current, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                entries[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entries[relative] = ("folder",)
            elif os.path.isfile(path):
                entries[relative] = ("file", pathlib.Path(path).read_bytes())
            else:
                entries[relative] = ("special",)
    return entries


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    """Exactly one `error:` line on stderr, holding `fragments`, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def only_versions_left(serving: pathlib.Path) -> bool:
    """No staging copy or anything else of a push beside the version folders."""
    return all(path.name.isdigit() for path in serving.iterdir())


@pytest.fixture
def pushed(tmp_path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A blessed model, its evaluation and a serving dir that already serves one version of it."""
    model = save_model(tmp_path / "model", 2.0)
    evaluation = write_evaluation(tmp_path / "evaluation", model, blessed=True)
    serving = tmp_path / "serving"
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert result.exit_code == 0, result.output
    return model, evaluation, serving


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
    provenance = artifacts.read_json(str(serving / str(version) / layout.PROVENANCE_FILE))
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
    assert copied - original == {pathlib.Path(layout.PROVENANCE_FILE)}
    assert original <= copied


@pytest.mark.parametrize("args", [["--rollback", "--model_dir=x"], ["--model_dir=x"]])
def test_push_usage_errors(tmp_path, args):
    result = run_push(f"--serving_dir={tmp_path}", *args)
    assert result.exit_code == cli.EXIT_USAGE


def _add_link_to_file(model: pathlib.Path, outside: pathlib.Path) -> pathlib.Path:
    (outside / "secret.txt").write_text("not part of the model")
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "vocabulary.txt").symlink_to(outside / "secret.txt")
    return model / "assets" / "vocabulary.txt"


def _add_link_to_folder(model: pathlib.Path, outside: pathlib.Path) -> pathlib.Path:
    (outside / "big").mkdir()
    (outside / "big" / "data.bin").write_bytes(b"\0" * 1024)
    (model / "extra").symlink_to(outside / "big", target_is_directory=True)
    return model / "extra"


def _add_fifo(model: pathlib.Path, outside: pathlib.Path) -> pathlib.Path:
    os.mkfifo(model / "variables" / "pipe")
    return model / "variables" / "pipe"


def _add_socket(model: pathlib.Path, outside: pathlib.Path) -> pathlib.Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(model / "sock"))
    server.close()
    return model / "sock"


@pytest.mark.parametrize(
    ("add_entry", "kind"),
    [
        (_add_link_to_file, "a symbolic link"),
        (_add_link_to_folder, "a symbolic link"),
        (_add_fifo, "a fifo"),
        (_add_socket, "a socket"),
    ],
)
def test_a_model_with_a_link_or_special_file_is_refused_before_any_copy(
    pushed, tmp_path, add_entry, kind
):
    model, evaluation, serving = pushed
    outside = tmp_path / "outside"
    outside.mkdir()
    offending = add_entry(model, outside)
    model_before, serving_before = snapshot(model), snapshot(serving)
    outside_before = snapshot(outside)
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, f"refusing to push {offending}", kind)
    assert snapshot(serving) == serving_before
    assert snapshot(model) == model_before
    assert snapshot(outside) == outside_before


def test_concurrent_pushes_of_the_same_second_claim_distinct_versions(tmp_path, monkeypatch):
    model = save_model(tmp_path / "model", 2.0)
    evaluation = write_evaluation(tmp_path / "evaluation", model, blessed=True)
    serving = tmp_path / "serving"
    config = push.PushConfig(str(serving), str(model), str(evaluation))
    pushes = 4
    # Every push picks its version, copies, then waits here: all of them rename at once.
    all_copied = threading.Barrier(pushes, timeout=60)
    copy_files = push._copy_files

    def copy_then_wait(*args):
        copy_files(*args)
        all_copied.wait()

    monkeypatch.setattr(push, "_copy_files", copy_then_wait)
    outcomes = []

    def one_push():
        try:
            outcomes.append(push.push(config, clock=lambda: 1000.0))
        except Exception as error:  # Recorded for the assertions below.
            outcomes.append(error)

    threads = [threading.Thread(target=one_push) for _ in range(pushes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
    assert sorted(outcomes) == [1000, 1001, 1002, 1003]
    assert artifacts.serving_versions(str(serving)) == [1000, 1001, 1002, 1003]
    assert only_versions_left(serving)
    for version in outcomes:
        provenance = artifacts.read_json(str(serving / str(version) / layout.PROVENANCE_FILE))
        assert provenance["version"] == version


def test_a_push_that_cannot_claim_a_version_is_refused_in_one_line(tmp_path, monkeypatch):
    model = save_model(tmp_path / "model", 2.0)
    evaluation = write_evaluation(tmp_path / "evaluation", model, blessed=True)
    serving = tmp_path / "serving"
    config = push.PushConfig(str(serving), str(model), str(evaluation))
    all_copied = threading.Barrier(3, timeout=60)
    copy_files = push._copy_files

    def copy_then_wait(*args):
        copy_files(*args)
        all_copied.wait()

    monkeypatch.setattr(push, "_copy_files", copy_then_wait)
    monkeypatch.setattr(push, "_MAX_VERSION_ATTEMPTS", 1)
    outcomes = []

    def one_push():
        try:
            outcomes.append(push.push(config, clock=lambda: 1000.0))
        except Exception as error:  # Recorded for the assertions below.
            outcomes.append(error)

    threads = [threading.Thread(target=one_push) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refusals = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert [outcome for outcome in outcomes if outcome not in refusals] == [1000]
    assert len(refusals) == 2
    for refusal in refusals:
        assert type(refusal) is cli.JobError
        assert "could not claim a version" in str(refusal) and "\n" not in str(refusal)
    assert artifacts.serving_versions(str(serving)) == [1000]
    assert only_versions_left(serving)


# A push process that imports and loads everything first (Beam loads its file systems on first
# use), then waits for the go file: all of them list the serving dir and copy at the same moment.
_PUSH_ON_GO = """
import os, sys, time
import beam_jobs.push
go = sys.argv.pop(1)
beam_jobs.lib.artifacts.directory_fingerprint(os.path.dirname(go))
open(f"{go}.ready-{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
beam_jobs.push.main()
"""


def test_push_processes_started_at_once_end_with_distinct_versions(pushed, tmp_path):
    model, evaluation, serving = pushed
    # A far newer version makes every push pick the same next one, whatever second it starts in.
    (newest,) = artifacts.serving_versions(str(serving))
    os.rename(serving / str(newest), serving / str(newest + 10**6))
    before = snapshot(serving)
    go = tmp_path / "go"
    command = [
        sys.executable,
        "-c",
        _PUSH_ON_GO,
        str(go),
        f"--model_dir={model}",
        f"--evaluation_dir={evaluation}",
        f"--serving_dir={serving}",
    ]
    processes = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < len(processes):
        assert time.monotonic() < deadline, "the push processes did not start"
        assert all(process.poll() is None for process in processes)
        time.sleep(0.05)
    go.write_text("")
    pushed_versions = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        if process.returncode == 0:
            pushed_versions.append(int(stdout.split()[2]))
        else:
            assert process.returncode == cli.EXIT_ERROR
            assert_one_error_line(stderr, "could not claim a version")
    assert len(set(pushed_versions)) == len(pushed_versions) >= 1
    assert artifacts.serving_versions(str(serving)) == sorted([newest + 10**6, *pushed_versions])
    assert only_versions_left(serving)
    after = snapshot(serving)
    assert {path: after[path] for path in before} == before


def test_a_copy_that_fails_leaves_nothing_in_the_serving_dir(pushed, monkeypatch):
    model, evaluation, serving = pushed
    model_before, serving_before = snapshot(model), snapshot(serving)
    copied = []
    copy_regular_file = push._copy_regular_file

    def copy_until_the_disk_is_full(source, destination):
        if len(copied) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), destination)
        copy_regular_file(source, destination)
        copied.append(destination)

    monkeypatch.setattr(push, "_copy_regular_file", copy_until_the_disk_is_full)
    result = run_push(
        f"--model_dir={model}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "No space left on device", "nothing was pushed")
    assert copied and snapshot(serving) == serving_before
    assert snapshot(model) == model_before


def test_a_push_interrupted_mid_copy_leaves_nothing_in_the_serving_dir(pushed, monkeypatch):
    model, evaluation, serving = pushed
    serving_before = snapshot(serving)

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(push, "_copy_regular_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        push.push(push.PushConfig(str(serving), str(model), str(evaluation)))
    assert snapshot(serving) == serving_before


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("ingest", "is the output of the ingest stage, but --evaluation_dir takes"),
        ("evaluate", f"has no {layout.BLESSING_JSON}"),  # An evaluation without its blessing.
    ],
)
def test_push_refuses_an_evaluation_dir_that_is_no_evaluation(pushed, tmp_path, stage, message):
    model, _, serving = pushed
    serving_before = snapshot(serving)
    with artifacts.StagedOutput(str(tmp_path / stage), stage) as staged:
        staged.publish(inputs={}, parameters={}, counts={})
    stage_before = snapshot(tmp_path / stage)
    result = run_push(
        f"--model_dir={model}",
        f"--evaluation_dir={tmp_path / stage}",
        f"--serving_dir={serving}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, message)
    assert snapshot(serving) == serving_before
    assert snapshot(tmp_path / stage) == stage_before


@pytest.mark.parametrize("serving_path", ["serving.txt", "serving.txt/serving"])
def test_push_refuses_a_serving_dir_that_cannot_be_a_directory(pushed, tmp_path, serving_path):
    model, evaluation, _ = pushed
    blocker = tmp_path / "serving.txt"
    blocker.write_text("precious notes\n")
    model_before = snapshot(model)
    result = run_push(
        f"--model_dir={model}",
        f"--evaluation_dir={evaluation}",
        f"--serving_dir={tmp_path / serving_path}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "cannot be a directory")
    assert blocker.read_text() == "precious notes\n"
    assert snapshot(model) == model_before


def test_push_refuses_a_serving_dir_inside_the_model(pushed):
    model, evaluation, _ = pushed
    model_before = snapshot(model)
    result = run_push(
        f"--model_dir={model}",
        f"--evaluation_dir={evaluation}",
        f"--serving_dir={model / 'serving'}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "lies inside --model_dir")
    assert snapshot(model) == model_before


@pytest.mark.parametrize("model_path", ["model/variables", "no_such_model"])
def test_push_refuses_a_model_dir_that_is_not_a_saved_model(pushed, tmp_path, model_path):
    model, evaluation, serving = pushed
    model_before, serving_before = snapshot(model), snapshot(serving)
    result = run_push(
        f"--model_dir={tmp_path / model_path}",
        f"--evaluation_dir={evaluation}",
        f"--serving_dir={serving}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert_one_error_line(result.stderr, "is not a SavedModel directory (no saved_model.pb)")
    assert snapshot(serving) == serving_before
    assert snapshot(model) == model_before
