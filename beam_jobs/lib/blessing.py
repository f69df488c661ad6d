"""Blessing: evaluate's verdict on a model, written beside its results and checked before a push.

An evaluation output holds `BLESSED` or `NOT_BLESSED` (an empty marker file) and `blessing.json`
(the thresholds checked, and the candidate model's content fingerprint).
"""

from __future__ import annotations

from typing import Any

from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, layout

__all__ = ["EVALUATE_STAGE", "check_blessing", "marker_file", "read_blessing", "write_blessing"]

EVALUATE_STAGE = "evaluate"


def marker_file(blessed: bool) -> str:
    """The marker file's name: `BLESSED` or `NOT_BLESSED`."""
    return layout.BLESSED_FILE if blessed else layout.NOT_BLESSED_FILE


def write_blessing(directory: str, blessing: dict[str, Any]) -> None:
    """Writes the marker file and `blessing.json` (whose `blessed` picks the marker)."""
    with FileSystems.create(FileSystems.join(directory, marker_file(blessing["blessed"]))):
        pass
    artifacts.write_json(FileSystems.join(directory, layout.BLESSING_JSON), blessing)


def read_blessing(evaluation_dir: str) -> dict[str, Any]:
    """An evaluation output's `blessing.json`."""
    return artifacts.read_json(FileSystems.join(evaluation_dir, layout.BLESSING_JSON))


def check_blessing(model_dir: str, evaluation_dir: str) -> dict[str, Any]:
    """The evaluation's blessing, if it blesses exactly this model.

    Raises:
        cli.JobError: the evaluation is incomplete, or not an evaluate stage's output.
        cli.NotBlessedError: the model is not blessed, or the evaluation was of another model.
    """
    artifacts.read_manifest(evaluation_dir, flag="evaluation_dir", stages=(EVALUATE_STAGE,))
    if not FileSystems.exists(FileSystems.join(evaluation_dir, layout.BLESSING_JSON)):
        raise cli.JobError(
            f"--evaluation_dir={evaluation_dir} has no {layout.BLESSING_JSON}; "
            "evaluate the model again"
        )
    blessing = read_blessing(evaluation_dir)
    if not FileSystems.exists(FileSystems.join(evaluation_dir, layout.BLESSED_FILE)):
        failed = [t.get("name", "?") for t in blessing.get("thresholds", []) if not t.get("passed")]
        raise cli.NotBlessedError(
            f"refusing to push: {evaluation_dir} says NOT_BLESSED "
            f"(failed: {', '.join(failed) or 'see its report'})"
        )
    fingerprint = artifacts.directory_fingerprint(model_dir)
    if blessing.get("candidate", {}).get("fingerprint") != fingerprint:
        raise cli.NotBlessedError(
            f"refusing to push: {evaluation_dir} evaluated another model than {model_dir} "
            "(content fingerprints differ); evaluate this model first"
        )
    return blessing
