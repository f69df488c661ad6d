"""Resume support for chained stages: has a stage already run on exactly these inputs and flags?

    python -m beam_jobs.resume check  <stage_dir> -- <stage command...>   # exit 0: up to date
    python -m beam_jobs.resume record <stage_dir> -- <stage command...>   # after a stage succeeded

A stage's run key is a fingerprint of its command line, of the content of every input its flags
name (a file's bytes, a stage directory's manifest, a folder's files) and of the project's own code.
Contents, not timestamps: touching a file changes nothing, editing it reruns the stage. An upstream
stage that reran writes a new manifest, so every stage downstream of it gets a new key and reruns.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import click
from apache_beam.io.filesystems import FileSystems

from beam_jobs import artifacts, cli

__all__ = ["RUN_KEY_FILE", "is_up_to_date", "main", "record", "run_key"]

RUN_KEY_FILE = "run_key.json"
_PACKAGES = ("beam_jobs", "model")
_OWN_OUTPUT_FLAGS = ("--output_dir", "--serving_dir")


def _code_fingerprint() -> str:
    """The project's own modules, so a changed preprocessing_fn or job reruns its stage."""
    digest = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parents[1]
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".pbtxt") and path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _value_fingerprint(value: str) -> Any:
    """What a flag's value names: a stage directory, a folder, files of a pattern, or nothing."""
    for candidate in value.split(","):
        _, _, path = candidate.rpartition("=")  # train=<pattern>,eval=<pattern>
        if not path:
            continue
        if FileSystems.exists(FileSystems.join(path, artifacts.MANIFEST_FILE)):
            return artifacts.input_fingerprint(path)
        if FileSystems.get_scheme(path) is None and pathlib.Path(path).is_dir():
            return {"path": path, "files_sha256": artifacts.directory_fingerprint(path)}
        files = artifacts.list_files(path.replace("{SPAN}", "*").replace("{VERSION}", "*"))
        if files:
            return [artifacts.file_fingerprint(metadata.path)["sha256"] for metadata in files]
    return None


def run_key(command: Sequence[str]) -> str:
    """The fingerprint of a stage command: its arguments and the content of what they name."""
    inputs = {}
    for argument in command:
        flag, sep, value = argument.partition("=")
        if sep and flag.startswith("--") and flag not in _OWN_OUTPUT_FLAGS:
            inputs[flag] = _value_fingerprint(value)
    payload = {"command": list(command), "inputs": inputs, "code": _code_fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_up_to_date(stage_dir: str, command: Sequence[str]) -> bool:
    """True if `stage_dir` recorded a finished run of exactly this command on these inputs."""
    key_path = FileSystems.join(stage_dir, RUN_KEY_FILE)
    if not FileSystems.exists(key_path):
        return False
    return artifacts.read_json(key_path).get("run_key") == run_key(command)


def record(stage_dir: str, command: Sequence[str]) -> None:
    """Records that `command` finished, writing its run key into `stage_dir`."""
    if FileSystems.get_scheme(stage_dir) is None:
        pathlib.Path(stage_dir).mkdir(parents=True, exist_ok=True)
    artifacts.write_json(
        FileSystems.join(stage_dir, RUN_KEY_FILE),
        {"run_key": run_key(command), "command": list(command), "recorded_at": artifacts.utc_now()},
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(["check", "record"]))
@click.argument("stage_dir")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@cli.reports_job_errors
def main(action: str, stage_dir: str, command: tuple[str, ...]) -> None:
    """check: exit 0 if STAGE_DIR ran COMMAND on these inputs, else 1. record: note it did."""
    if action == "record":
        record(stage_dir, command)
        return
    sys.exit(0 if is_up_to_date(stage_dir, command) else 1)


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
