"""Resume support for chained stages: has a stage already run on exactly these inputs and flags?

    python -m beam_jobs.resume check  <stage_dir> -- <stage command...>   # exit 0: up to date
    python -m beam_jobs.resume record <stage_dir> -- <stage command...>   # after a stage succeeded

A stage's run key is a fingerprint of its command line, of the content of every input its flags
name (a file's bytes, a stage directory's manifest, a folder's files) and of the project's own code.
Contents, not timestamps: touching a file changes nothing, editing it reruns the stage. An upstream
stage that reran writes a new manifest, so every stage downstream of it gets a new key and reruns.

A stage is up to date only while its own output is still there as recorded: the manifest of its
`--output_dir`, or, for a stage without one (push), the newest version under its `--serving_dir`
at record time, with the same files. A deleted or replaced output reruns its stage.

The file-system settings come from the stage command's own Beam flags (`--s3_endpoint_url=...`),
so a stage dir on `gs://` or `s3://` is read as the stage itself reads it; credentials given as
flags are neither part of the key nor recorded.
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

from beam_jobs.lib import artifacts, cli, filesystems, layout

__all__ = ["RUN_KEY_FILE", "is_up_to_date", "main", "record", "run_key"]

RUN_KEY_FILE = "run_key.json"
_PACKAGES = ("beam_jobs", "model")
_OWN_OUTPUT_FLAGS = ("--output_dir", "--serving_dir")
# Where a runner listens (Prism's ports change with every start), not what a stage computes.
_RUNNER_ADDRESS_FLAGS = ("--job_endpoint", "--artifact_endpoint", "--environment_config")
# Which store to reach and how, not what a stage computes; their values are no paths.
_STORE_FLAG_PREFIX = "--s3_"
_REDACTED = "<redacted>"


def _code_fingerprint() -> str:
    """The project's own modules, so a changed preprocessing_fn or job reruns its stage."""
    digest = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parents[1]
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".pbtxt") and path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _path_fingerprint(path: str) -> Any:
    """What one path or pattern names: a stage directory, a folder, files of a pattern, or None."""
    if FileSystems.exists(FileSystems.join(path, artifacts.MANIFEST_FILE)):
        return artifacts.input_fingerprint(path)
    if FileSystems.get_scheme(path) is None and pathlib.Path(path).is_dir():
        return {"path": path, "files_sha256": artifacts.directory_fingerprint(path)}
    files = artifacts.list_files(path.replace("{SPAN}", "*").replace("{VERSION}", "*"))
    if files:
        return [artifacts.file_fingerprint(metadata.path)["sha256"] for metadata in files]
    return None


def _value_fingerprint(value: str) -> list[Any]:
    """What every part of a flag's value names: `train=<pattern>,eval=<pattern>` has two."""
    paths = [candidate.rpartition("=")[2] for candidate in value.split(",")]
    return [_path_fingerprint(path) for path in paths if path]


def _flag_values(command: Sequence[str]) -> dict[str, str]:
    """The `--flag=value` arguments of a command (the last one of a flag given twice)."""
    values = {}
    for argument in command:
        flag, sep, value = argument.partition("=")
        if sep and flag.startswith("--"):
            values[flag] = value
    return values


def run_key(command: Sequence[str]) -> str:
    """The fingerprint of a stage command: its arguments and the content of what they name."""
    inputs = {
        flag: _value_fingerprint(value)
        for flag, value in _flag_values(command).items()
        if flag not in _OWN_OUTPUT_FLAGS and not flag.startswith(_STORE_FLAG_PREFIX)
    }
    computed = [
        arg
        for arg in command
        if arg.partition("=")[0] not in _RUNNER_ADDRESS_FLAGS
        and not arg.startswith(_STORE_FLAG_PREFIX)
    ]
    payload = {"command": computed, "inputs": inputs, "code": _code_fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _manifest_sha256(output_dir: str) -> str | None:
    manifest_path = FileSystems.join(output_dir, artifacts.MANIFEST_FILE)
    if not FileSystems.exists(manifest_path):
        return None
    return artifacts.file_fingerprint(manifest_path)["sha256"]


def _served_model_sha256(version_dir: str) -> str | None:
    if not FileSystems.exists(FileSystems.join(version_dir, layout.SAVED_MODEL_FILE)):
        return None
    return artifacts.directory_fingerprint(version_dir)


def _own_output(command: Sequence[str]) -> dict[str, Any] | None:
    """The stage's output as it is now: its `--output_dir`'s manifest, or its newest served model.

    None when the command names no output; a fingerprint of None when that output is missing.
    """
    values = _flag_values(command)
    if "--output_dir" in values:
        path = values["--output_dir"]
        return {"path": path, "manifest_sha256": _manifest_sha256(path)}
    if "--serving_dir" in values:
        versions = artifacts.serving_versions(values["--serving_dir"])
        if not versions:
            return {"path": values["--serving_dir"], "files_sha256": None}
        path = FileSystems.join(values["--serving_dir"], str(versions[-1]))
        return {"path": path, "files_sha256": _served_model_sha256(path)}
    return None


def _output_intact(recorded: dict[str, Any] | None) -> bool:
    """True if a recorded output still exists with the content it had when it was recorded."""
    if recorded is None:
        return True
    if "manifest_sha256" in recorded:
        current = _manifest_sha256(recorded["path"])
        return current is not None and current == recorded["manifest_sha256"]
    current = _served_model_sha256(recorded["path"])
    return current is not None and current == recorded.get("files_sha256")


def is_up_to_date(stage_dir: str, command: Sequence[str]) -> bool:
    """True if `stage_dir` recorded a run of this command on these inputs, its output unchanged."""
    key_path = FileSystems.join(stage_dir, RUN_KEY_FILE)
    if not FileSystems.exists(key_path):
        return False
    recorded = artifacts.read_json(key_path)
    if recorded.get("run_key") != run_key(command) or "output" not in recorded:
        return False
    return _output_intact(recorded["output"])


def _redacted(command: Sequence[str]) -> list[str]:
    """The command as recorded: credentials given as flags replaced."""
    return [
        f"{arg.partition('=')[0]}={_REDACTED}"
        if arg.partition("=")[0] in filesystems.SECRET_FLAGS
        else arg
        for arg in command
    ]


def record(stage_dir: str, command: Sequence[str]) -> None:
    """Records that `command` finished, writing its run key and its output into `stage_dir`."""
    if FileSystems.get_scheme(stage_dir) is None:
        pathlib.Path(stage_dir).mkdir(parents=True, exist_ok=True)
    artifacts.write_json(
        FileSystems.join(stage_dir, RUN_KEY_FILE),
        {
            "run_key": run_key(command),
            "command": _redacted(command),
            "output": _own_output(command),
            "recorded_at": artifacts.utc_now(),
        },
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(["check", "record"]))
@click.argument("stage_dir")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@cli.reports_job_errors
def main(action: str, stage_dir: str, command: tuple[str, ...]) -> None:
    """check: exit 0 if STAGE_DIR ran COMMAND on these inputs, else 1. record: note it did."""
    beam_flags = filesystems.beam_flags(command)
    filesystems.apply(cli.pipeline_options(beam_flags), [stage_dir, *command])
    if action == "record":
        record(stage_dir, command)
        return
    sys.exit(0 if is_up_to_date(stage_dir, command) else 1)


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
