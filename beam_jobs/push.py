"""Push: copy a blessed model into TensorFlow Serving's layout, atomically; or roll back.

    python -m beam_jobs.push --model_dir=<SavedModel dir> --evaluation_dir=<evaluate output> \
        --serving_dir=<dir>
    python -m beam_jobs.push --serving_dir=<dir> --rollback

TF Serving polls `<serving_dir>/<version>/` and serves the largest integer version. A model is
copied under a hidden temporary name (which Serving ignores) and renamed to its version in one
step, so a server never sees half a model. Only a model whose evaluation says BLESSED, and whose
evaluation was of this very model (same content fingerprint), is pushed. Not a Beam job: it only
copies files, through Beam's FileSystems so `gs://` and `s3://` serving dirs work too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
from typing import Any

import click
from apache_beam.io.filesystems import FileSystems

from beam_jobs import artifacts, cli

__all__ = [
    "BLESSED_FILE",
    "BLESSING_JSON",
    "PROVENANCE_FILE",
    "PushConfig",
    "main",
    "push",
    "rollback",
]

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
BLESSING_JSON = "blessing.json"
PROVENANCE_FILE = "provenance.json"
ROLLED_BACK_DIR = ".rolled_back"
_MAX_PROVENANCE_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class PushConfig:
    """The push job's parameters."""

    serving_dir: str
    model_dir: str | None = None
    evaluation_dir: str | None = None
    rollback: bool = False


def check_blessing(model_dir: str, evaluation_dir: str) -> dict[str, Any]:
    """The evaluation's blessing, if it blesses exactly this model.

    Raises:
        cli.JobError: the evaluation is incomplete.
        cli.NotBlessedError: the model is not blessed, or the evaluation was of another model.
    """
    artifacts.read_manifest(evaluation_dir, flag="evaluation_dir", stages=("evaluate",))
    blessing = artifacts.read_json(FileSystems.join(evaluation_dir, BLESSING_JSON))
    if not FileSystems.exists(FileSystems.join(evaluation_dir, BLESSED_FILE)):
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


def _provenance(stage_dir: str, depth: int = 0) -> list[dict[str, Any]]:
    """The manifests of a stage directory and, recursively, of every stage directory it read."""
    manifest_path = FileSystems.join(stage_dir, artifacts.MANIFEST_FILE)
    if depth > _MAX_PROVENANCE_DEPTH or not FileSystems.exists(manifest_path):
        return []
    manifest = artifacts.read_json(manifest_path)
    chain = [{"path": stage_dir, "manifest": manifest}]
    for entries in manifest.get("inputs", {}).values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and "manifest_sha256" in entry:
                chain.extend(_provenance(entry["path"], depth + 1))
    return chain


def _training_dir(model_dir: str) -> str:
    """`<train output>` of `<train output>/serving_model/<ts>`, where the training manifest lies."""
    return os.path.dirname(os.path.dirname(model_dir.rstrip("/")))


def _copy_tree(source: str, destination: str) -> None:
    if not FileSystems.get_scheme(destination) and not FileSystems.get_scheme(source):
        shutil.copytree(source, destination)
        return
    prefix = source.rstrip("/") + "/"
    files = [metadata.path for metadata in artifacts.list_files(prefix + "**")]
    FileSystems.copy(files, [FileSystems.join(destination, path[len(prefix) :]) for path in files])


def _move_into_place(staging: str, destination: str) -> None:
    if not FileSystems.get_scheme(destination):
        os.rename(staging, destination)
        return
    # Object stores have no rename of a folder: move file by file, saved_model.pb last, since
    # Serving loads nothing before that file exists.
    prefix = staging.rstrip("/") + "/"
    files = sorted(
        (metadata.path for metadata in artifacts.list_files(prefix + "**")),
        key=lambda path: path.endswith("/saved_model.pb"),
    )
    for path in files:
        FileSystems.rename([path], [FileSystems.join(destination, path[len(prefix) :])])


def push(config: PushConfig) -> int:
    """Copies a blessed model to `<serving_dir>/<version>/` and returns the version.

    The version is the current Unix time, or one more than the newest version if that is larger,
    so a newer push always serves.
    """
    blessing = check_blessing(config.model_dir, config.evaluation_dir)
    versions = artifacts.serving_versions(config.serving_dir)
    version = max([int(time.time())] + [v + 1 for v in versions])
    staging = FileSystems.join(config.serving_dir, f".pushing-{version}-{uuid.uuid4().hex[:8]}")
    if not FileSystems.get_scheme(staging):
        os.makedirs(config.serving_dir, exist_ok=True)
    try:
        _copy_tree(config.model_dir, staging)
        provenance = {
            "pushed_at": artifacts.utc_now(),
            "version": version,
            "model_dir": config.model_dir,
            "blessing": blessing,
            "evaluation": _provenance(config.evaluation_dir),
            "training": _provenance(_training_dir(config.model_dir)),
        }
        artifacts.write_json(FileSystems.join(staging, PROVENANCE_FILE), provenance)
        _move_into_place(staging, FileSystems.join(config.serving_dir, str(version)))
    finally:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])
    return version


def rollback(serving_dir: str) -> tuple[int, int]:
    """Moves the newest version aside (under `.rolled_back/`, which Serving ignores).

    Returns:
        (the version removed, the version that serves now).

    Raises:
        cli.JobError: fewer than two versions, so nothing would serve after the rollback.
    """
    versions = artifacts.serving_versions(serving_dir)
    if len(versions) < 2:
        raise cli.JobError(
            f"cannot roll back {serving_dir}: it has {len(versions)} version(s), and rolling back "
            "needs an older one to serve"
        )
    newest = versions[-1]
    aside = FileSystems.join(serving_dir, ROLLED_BACK_DIR, f"{newest}-{int(time.time())}")
    source = FileSystems.join(serving_dir, str(newest))
    if FileSystems.get_scheme(serving_dir):
        _copy_tree(source, aside)
        FileSystems.delete([source])
    else:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(source, aside)
    return newest, versions[-2]


@click.command(help=__doc__.split("\n\n")[0], context_settings={"show_default": True})
@click.option("--model_dir", default=None, help="SavedModel directory to push.")
@click.option("--evaluation_dir", default=None, help="Output of beam_jobs.evaluate for that model.")
@click.option("--serving_dir", required=True, help="TF Serving base directory (versions inside).")
@click.option("--rollback", "do_rollback", is_flag=True, help="Remove the newest version instead.")
@cli.reports_job_errors
def main(
    model_dir: str | None, evaluation_dir: str | None, serving_dir: str, do_rollback: bool
) -> None:
    if do_rollback:
        if model_dir or evaluation_dir:
            raise click.UsageError("--rollback takes only --serving_dir")
        removed, serving = rollback(serving_dir)
        click.echo(
            f"rolled back version {removed}; version {serving} serves now from {serving_dir}"
        )
        return
    if not (model_dir and evaluation_dir):
        raise click.UsageError("pushing needs --model_dir and --evaluation_dir")
    version = push(PushConfig(serving_dir, model_dir, evaluation_dir))
    logging.info("pushed %s as version %d", model_dir, version)
    click.echo(f"pushed version {version} to {FileSystems.join(serving_dir, str(version))}")


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
