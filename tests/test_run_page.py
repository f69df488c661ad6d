"""The run page: statuses, counts and report links of every stage, from manifests and run_status/.

Unit tests build pipeline roots by hand; `test_a_run_stopped_by_validation_has_its_page` runs
scripts/run_pipeline.sh on data with anomalies (it stops at validate, exit 3), and
tests/test_run_pipeline.py checks the page of its full runs with `check_run_page`.
"""

from __future__ import annotations

import csv
import html
import json
import pathlib
import re
import subprocess
import sys

from click.testing import CliRunner

from beam_jobs import run_page
from tests import browser

T0, T1, T2 = "2026-01-01T10:00:00+00:00", "2026-01-01T10:00:30+00:00", "2026-01-01T10:01:00+00:00"
_ROW = re.compile(r'<tr id="stage-([^"]+)"><td>[^<]*</td><td class="[^"]*">([^<]*)</td>(.*?)</tr>')


def page_rows(page: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Stage name → (status text, the rest of its row's HTML) of a written run page."""
    return {
        name: (html.unescape(status), rest) for name, status, rest in _ROW.findall(page.read_text())
    }


def check_run_page(root: pathlib.Path, statuses: dict[str, str], work_dir: pathlib.Path) -> str:
    """Asserts the page of `root` shows `statuses`, links only reports that exist, loads nothing
    from the web and draws text in headless Chromium. Returns the page's HTML."""
    page = root / run_page.PAGE_FILE
    text = page.read_text()
    rows = page_rows(page)
    assert {name: rows[name][0] for name in statuses} == statuses
    links = re.findall(r'href="([^"]+)"', text)
    assert links, "the page links no report"
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (root / html.unescape(link)).is_file(), f"{link} is linked but missing"
    assert "<script" not in text
    pixels = browser.screenshot(page, work_dir)
    assert browser.dark_pixels(pixels) > 5_000, "the screenshot is (nearly) blank: no text"
    return text


def write_json(path: pathlib.Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_page(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html></html>")


def manifest(stage: str, counts: dict, **extra) -> dict:
    return {"stage": stage, "started_at": T0, "finished_at": T1, "counts": counts, **extra}


def status(stage: str, state: str, code=None, started=T0, finished=T2) -> dict:
    return {
        "stage": stage,
        "status": state,
        "exit_code": code,
        "started_at": started,
        "finished_at": finished,
        "command": ["python", "-m", f"beam_jobs.{stage}"],
    }


def hand_made_root(root: pathlib.Path) -> pathlib.Path:
    """Stage outputs as the stages write them, up to a not-blessed evaluation."""
    splits = {"splits": ["train", "eval"]}
    write_json(
        root / "ingest" / "manifest.json",
        manifest(
            "ingest",
            {"rows_read": 30, "rows_rejected": 1, "rows_written": {"train": 20, "eval": 9}},
            **splits,
        ),
    )
    write_json(
        root / "statistics" / "manifest.json",
        manifest("statistics", {"examples": {"train": 20, "eval": 9}}, **splits),
    )
    for split in ("train", "eval"):
        write_page(root / "statistics" / split / "stats.html")
    write_json(
        root / "validate" / "manifest.json",
        manifest("validate", {"anomalies": {"train": 0, "eval": 2}}, anomalous=["eval"], **splits),
    )
    write_page(root / "validate" / "report.html")
    write_json(root / "evaluate" / "manifest.json", manifest("evaluate", {"examples_evaluated": 9}))
    write_json(
        root / "evaluate" / "blessing.json",
        {
            "blessed": False,
            "thresholds": [
                {"name": "auc >= 0.6 (overall)", "value": 0.71, "passed": True},
                {"name": "auc change >= +0.01 vs baseline", "value": 0.002, "passed": False},
            ],
        },
    )
    write_page(root / "evaluate" / "report.html")
    return root


def test_a_root_run_by_hand_shows_what_its_manifests_say(tmp_path):
    root = hand_made_root(tmp_path / "root")
    rows = {row.name: row for row in run_page.read_stage_rows(str(root))}
    assert [row for row in rows] == list(run_page.CORE_STAGES)
    assert rows["ingest"].status == "ran"
    assert "rows written: train 20, eval 9" in rows["ingest"].facts
    assert "rows rejected: 1" in rows["ingest"].facts
    assert rows["statistics"].links == (
        ("statistics: train", "statistics/train/stats.html"),
        ("statistics: eval", "statistics/eval/stats.html"),
    )
    assert "anomalies: train 0, eval 2" in rows["validate"].facts
    assert "anomalous splits: eval" in rows["validate"].facts
    # Not blessed: the failing threshold decided it, so it alone is shown.
    assert rows["evaluate"].facts[1:] == (
        "NOT_BLESSED",
        "auc change >= +0.01 vs baseline: 0.002 (failed)",
    )
    assert rows["transform"].status == rows["train"].status == rows["push"].status == "not run"


def test_recorded_statuses_ran_skipped_failed_and_not_run(tmp_path):
    root = hand_made_root(tmp_path / "root")
    status_dir = root / run_page.RUN_STATUS_DIR
    write_json(status_dir / "run.json", {"started_at": T0, "finished_at": T2, "exit_code": 4})
    write_json(status_dir / "ingest.json", status("ingest", "skipped", started=T2))
    write_json(status_dir / "statistics.json", status("statistics", "ran", 0))
    write_json(status_dir / "validate.json", status("validate", "ran", 0))
    # Evaluate failed after publishing (exit 4): its manifest is this run's, so its facts show.
    write_json(status_dir / "evaluate.json", status("evaluate", "failed", 4))
    # Transform died before publishing: its output is an earlier run's, so none of it shows.
    write_json(status_dir / "transform.json", status("transform", "failed", 1, started=T2))
    write_json(
        root / "transform.failed" / "FAILED.json",
        {"stage": "transform", "reason": "JobError: no such feature", "failed_at": T2},
    )
    write_json(root / "transform" / "manifest.json", manifest("transform", {"rows_analyzed": 3}))
    rows = {row.name: row for row in run_page.read_stage_rows(str(root))}
    assert rows["ingest"].status == "skipped"
    assert rows["ingest"].facts[0].startswith("up to date: skipped by --resume")
    assert (rows["ingest"].started_at, rows["ingest"].finished_at) == (T0, T1)  # its output's
    assert rows["transform"].status == "failed" and rows["transform"].exit_code == 1
    assert rows["transform"].facts == ("reason: JobError: no such feature",)
    assert rows["evaluate"].exit_code == 4 and "NOT_BLESSED" in rows["evaluate"].facts
    assert rows["evaluate"].links == (("evaluation report", "evaluate/report.html"),)
    assert rows["train"].status == "not run" and rows["push"].status == "not run"

    assert CliRunner().invoke(run_page.main, [f"--pipeline_root={root}"]).exit_code == 0
    shown = page_rows(root / run_page.PAGE_FILE)
    assert shown["transform"][0] == "failed (exit 1)"
    assert shown["ingest"][0] == "skipped (resume)"
    assert "stopped at transform (exit 1)" in (root / run_page.PAGE_FILE).read_text()


def test_tune_infer_push_and_model_cards_appear_where_the_root_has_them(tmp_path):
    root = tmp_path / "root"
    write_json(
        root / "tune" / "manifest.json",
        manifest(
            "tune",
            {"trials": 2, "trials_completed": 2},
            objective={"name": "val_loss", "direction": "min"},
            best={"trial_id": "1", "score": 0.25, "hparams": {"units": 8}},
        ),
    )
    write_json(root / "scores" / "manifest.json", manifest("infer", {"rows_predicted": 5}))
    serving = root / "serving" / "17"
    (serving / "saved_model.pb").parent.mkdir(parents=True)
    (serving / "saved_model.pb").write_bytes(b"")
    write_json(
        serving / "provenance.json",
        {"version": 17, "pushed_at": T2, "evaluation": [{"path": str(root / "evaluate")}]},
    )
    (root / "card.html").write_text("<html><head><title>Model card: x</title></head></html>")
    rows = run_page.read_stage_rows(str(root))
    names = [row.name for row in rows]
    assert names.index("transform") < names.index("tune") < names.index("train")
    assert names.index("push") < names.index("scores") < names.index("model_card")
    by_name = {row.name: row for row in rows}
    assert "best trial 1: val_loss 0.25" in by_name["tune"].facts
    assert 'best hparams: {"units": 8}' in by_name["tune"].facts
    assert "rows predicted: 5" in by_name["scores"].facts
    assert by_name["push"].facts == (f"pushed version 17 to {root / 'serving'}",)
    assert by_name["model_card"].links == (("model card", "card.html"),)


def test_a_missing_root_is_one_line(tmp_path):
    result = CliRunner().invoke(run_page.main, [f"--pipeline_root={tmp_path / 'nope'}"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --pipeline_root={tmp_path / 'nope'} is not a directory"


def anomalous_demo_csv(path: pathlib.Path) -> pathlib.Path:
    """200 demo complaints from a state the curated schema does not know."""
    from tests.conftest import REPO_ROOT

    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "generate_demo_data.py"),
            f"--output={path}",
            "--rows=200",
        ],
        check=True,
    )
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "state": "ZZ"} for row in rows)
    return path


def test_a_run_stopped_by_validation_has_its_page(tmp_path):
    from tests.test_run_pipeline import run_pipeline

    root = tmp_path / "root"
    result = run_pipeline(
        f"--input={anomalous_demo_csv(tmp_path / 'complaints.csv')}", f"--pipeline_root={root}"
    )
    assert result.returncode == 3, result.stderr[-3000:]
    statuses = {
        "ingest": "ran",
        "statistics": "ran",
        "validate": "failed (exit 3)",
        "transform": "not run",
        "train": "not run",
        "push": "not run",
    }
    text = check_run_page(root, statuses, tmp_path)
    assert "stopped at validate (exit 3)" in text
    assert 'href="validate/report.html"' in text
    assert 'href="statistics/eval/stats.html"' in text
    validate_row = page_rows(root / run_page.PAGE_FILE)["validate"][1]
    assert "anomalous splits: " in validate_row
