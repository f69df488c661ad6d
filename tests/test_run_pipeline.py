"""scripts/run_pipeline.sh end to end: every stage (tune too), a pushed model, --resume by content,
output, and the run page of each run."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from beam_jobs.lib import artifacts
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "run_pipeline.sh"
STAGES = ("ingest", "statistics", "validate", "transform", "train", "evaluate", "push")
# A small search (model.tune) between transform and train, in every run of the resume test.
TUNE = "--tune_options=--max_trials=2 --train_steps=20 --eval_steps=2"


def run_pipeline(*args: str) -> subprocess.CompletedProcess:
    # The test's own interpreter is the venv's: the script reuses it instead of installing.
    env = {**os.environ, "VENV_DIR": str(pathlib.Path(sys.executable).parents[1])}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return [stage for stage in STAGES if f"==> {stage}\n" in result.stderr]


@pytest.fixture(scope="module")
def demo_input(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("demo") / "complaints.csv"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "generate_demo_data.py"),
            f"--output={path}",
            "--rows=4000",
        ],
        check=True,
    )
    return path


def test_pipeline_pushes_a_model_and_resumes_by_content(demo_input, tmp_path):
    from tests.test_run_page import check_run_page

    root = tmp_path / "root"
    first = run_pipeline(f"--input={demo_input}", f"--pipeline_root={root}", TUNE)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ran(first) == list(STAGES) and "==> tune\n" in first.stderr
    assert len(artifacts.serving_versions(str(root / "serving"))) == 1
    assert "evaluation report" in first.stderr
    best = json.loads((root / "tune" / "best_hparams.json").read_text())
    trained = json.loads((root / "train" / "manifest.json").read_text())
    assert trained["parameters"]["hparams"] == best
    page = check_run_page(root, {stage: "ran" for stage in (*STAGES, "tune")}, tmp_path)
    version = artifacts.serving_versions(str(root / "serving"))[0]
    assert f"pushed version {version} to " in page

    again = run_pipeline(f"--input={demo_input}", f"--pipeline_root={root}", "--resume", TUNE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ran(again) == []
    assert again.stderr.count("up to date, skipped") == len(STAGES) + 1
    skipped = {stage: "skipped (resume)" for stage in (*STAGES, "tune")}
    assert f"pushed version {version} to " in check_run_page(root, skipped, tmp_path)

    shutil.rmtree(root / "serving")  # push's output is gone: push alone reruns and serves again
    served_again = run_pipeline(
        f"--input={demo_input}", f"--pipeline_root={root}", "--resume", TUNE
    )
    assert served_again.returncode == 0, served_again.stderr[-3000:]
    assert ran(served_again) == ["push"]
    assert len(artifacts.serving_versions(str(root / "serving"))) == 1

    os.utime(demo_input)  # a new timestamp, the same content: nothing to redo
    touched = run_pipeline(f"--input={demo_input}", f"--pipeline_root={root}", "--resume", TUNE)
    assert ran(touched) == []

    with demo_input.open("a") as handle:  # new content: every stage reruns from ingest
        handle.write(demo_input.read_text().splitlines()[1].replace("1000000", "2000000", 1))
        handle.write("\n")
    edited = run_pipeline(f"--input={demo_input}", f"--pipeline_root={root}", "--resume", TUNE)
    assert ran(edited)[:5] == ["ingest", "statistics", "validate", "transform", "train"]
    # The retrained model must beat the pushed one by +0.01 AUC; on the same data it need not.
    if edited.returncode == 4:
        assert "pipeline stopped at evaluate (exit 4)" in edited.stderr
    else:
        assert edited.returncode == 0, edited.stderr[-3000:]


def test_unknown_argument_is_a_usage_error():
    result = run_pipeline("--no_such_flag")
    assert result.returncode == 2
    assert "unknown argument --no_such_flag" in result.stderr
