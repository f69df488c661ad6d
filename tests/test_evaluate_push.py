"""Evaluate, bless and push end to end on the real 2015 data: the last pushed model is the bar."""

from __future__ import annotations

import json

from click.testing import CliRunner

from beam_jobs import artifacts, cli, evaluate, push

WEAKER_TRAIN_STEPS = 300  # Eval AUC 0.620: passes AUC >= 0.60, not +0.01 over 600 steps' 0.639.


def test_blessed_model_is_pushed_and_a_candidate_not_better_than_it_is_refused(
    evaluated_2015, trained_2015_steps, ingested_2015_curated, tmp_path
):
    serving = tmp_path / "serving"
    first = json.loads((evaluated_2015 / evaluate.BLESSING_JSON).read_text())
    assert first["blessed"] is True
    pushed = CliRunner().invoke(
        push.main,
        [
            f"--model_dir={first['candidate']['path']}",
            f"--evaluation_dir={evaluated_2015}",
            f"--serving_dir={serving}",
        ],
    )
    assert pushed.exit_code == 0, pushed.output
    (v1,) = artifacts.serving_versions(str(serving))

    candidate = trained_2015_steps(WEAKER_TRAIN_STEPS)
    evaluation = tmp_path / "evaluation_2"
    result = CliRunner().invoke(
        evaluate.main,
        [
            f"--model_dir={candidate}",
            f"--examples_dir={ingested_2015_curated}",
            f"--output_dir={evaluation}",
            f"--serving_dir={serving}",
        ],
    )
    assert result.exit_code == cli.EXIT_NOT_BLESSED, result.output
    assert "failed auc change >= +0.01 vs baseline (overall)" in result.output
    second = json.loads((evaluation / evaluate.BLESSING_JSON).read_text())
    baseline_dir = serving / str(v1)
    assert second["baseline"] == {
        "path": str(baseline_dir),
        "fingerprint": artifacts.directory_fingerprint(str(baseline_dir)),
    }
    assert second["change_thresholds_skipped"] is False
    checks = {check["name"]: check for check in second["thresholds"]}
    value = checks["auc >= 0.6 (overall)"]
    change = checks["auc change >= +0.01 vs baseline (overall)"]
    assert value["passed"] is True  # good enough on its own ...
    assert change["passed"] is False and change["value"] < 0.01  # ... but not better than V1
    first_auc = first["thresholds"][0]["value"]
    assert abs(value["value"] - change["value"] - first_auc) < 1e-6  # V1 scored as before
    assert (evaluation / evaluate.NOT_BLESSED_FILE).exists()

    refused = CliRunner().invoke(
        push.main,
        [f"--model_dir={candidate}", f"--evaluation_dir={evaluation}", f"--serving_dir={serving}"],
    )
    assert refused.exit_code == cli.EXIT_NOT_BLESSED
    assert "NOT_BLESSED (failed: auc change >= +0.01 vs baseline (overall))" in refused.output
    assert artifacts.serving_versions(str(serving)) == [v1]
