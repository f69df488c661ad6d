"""Push: copy a blessed model into TensorFlow Serving's layout, atomically; or roll back.

    python -m beam_jobs.push --model_dir=<SavedModel dir> --evaluation_dir=<evaluate output> \
        --serving_dir=<dir>
    python -m beam_jobs.push --serving_dir=<dir> --rollback

TF Serving polls `<serving_dir>/<version>/` and serves the largest integer version. A model is
copied under a hidden temporary name (which Serving ignores) and renamed to its version in one
step, so a server never sees half a model. Only a model whose evaluation says BLESSED, and whose
evaluation was of this very model (same content fingerprint), is pushed. Not a Beam job: it only
copies files, through Beam's FileSystems so `gs://` and `s3://` serving dirs work too.

A local model must hold only plain files and folders: a symbolic link (or a fifo, socket or
device) is refused before anything is copied, since following it would push content from outside
the model. The version is claimed by the rename itself: a push that finds its version taken by a
concurrent push takes the next one, and a push that fails leaves nothing in the serving dir.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, blessing, cli, layout, provenance

__all__ = [
    "PushConfig",
    "main",
    "push",
    "rollback",
]

ROLLED_BACK_DIR = ".rolled_back"
STAGING_PREFIX = ".pushing-"
# Versions tried in a row before giving up, when concurrent pushes keep taking the next one.
_MAX_VERSION_ATTEMPTS = 8
_COPY_CHUNK_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class PushConfig:
    """The push job's parameters."""

    serving_dir: str
    model_dir: str | None = None
    evaluation_dir: str | None = None
    rollback: bool = False


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A file or folder of a model, by its path relative to the model directory."""

    relative: str
    is_dir: bool


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def _entry_kind(mode: int) -> str:
    """What a directory entry that is neither a plain file nor a plain folder is, in words."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _walk_plain(root: str, relative: str = "") -> Iterator[_Entry]:
    """The folders and files below a local directory, not following links, sorted by path.

    Raises:
        cli.JobError: an entry is a symbolic link or anything else but a plain file or folder.
    """
    with os.scandir(os.path.join(root, relative)) as scanned:
        entries = sorted(scanned, key=lambda entry: entry.name)
    for entry in entries:
        path = os.path.join(relative, entry.name)
        if entry.is_dir(follow_symlinks=False):
            yield _Entry(path, is_dir=True)
            yield from _walk_plain(root, path)
        elif entry.is_file(follow_symlinks=False):
            yield _Entry(path, is_dir=False)
        else:
            kind = _entry_kind(entry.stat(follow_symlinks=False).st_mode)
            raise cli.JobError(
                f"refusing to push {entry.path}: it is {kind}, and a model may hold only plain "
                "files and folders; replace it by the file or folder it stands for"
            )


def _model_entries(model_dir: str) -> list[_Entry]:
    """The files (and, locally, folders) of a SavedModel directory, checked before any copy.

    Raises:
        cli.JobError: it is not a SavedModel directory, or it holds a link or a special file.
    """
    if not FileSystems.exists(FileSystems.join(model_dir, layout.SAVED_MODEL_FILE)):
        raise cli.JobError(
            f"--model_dir={model_dir} is not a SavedModel directory "
            f"(no {layout.SAVED_MODEL_FILE}); "
            "give the export of model.train, <train output>/serving_model/<version>"
        )
    if _is_local(model_dir):
        return list(_walk_plain(model_dir))
    prefix = model_dir.rstrip("/") + "/"
    return [
        _Entry(metadata.path[len(prefix) :], is_dir=False)
        for metadata in artifacts.list_files(prefix + "**")
    ]


def _refuse_serving_inside_model(model_dir: str, serving_dir: str) -> None:
    """A serving dir inside the model would write the push into the model it copies."""
    if not (_is_local(model_dir) and _is_local(serving_dir)):
        return
    model = os.path.realpath(model_dir)
    serving = os.path.realpath(serving_dir)
    if os.path.commonpath([model, serving]) == model:
        raise cli.JobError(
            f"--serving_dir={serving_dir} lies inside --model_dir={model_dir}; "
            "give a serving dir outside the model"
        )


def _prepare_serving_dir(serving_dir: str) -> None:
    """Creates a local serving dir if needed.

    Raises:
        cli.JobError: the path cannot be a directory (it is a file, or lies under one).
    """
    if not _is_local(serving_dir):
        return
    try:
        os.makedirs(serving_dir, exist_ok=True)
    except OSError as error:
        raise cli.JobError(
            f"--serving_dir={serving_dir} cannot be a directory ({error.strerror}: "
            f"{error.filename}); give the path of a directory"
        ) from None


def _copy_regular_file(source: str, destination: str) -> None:
    """Copies one file's bytes, refusing it if it became a link or a special file meanwhile."""
    # O_NONBLOCK: opening a fifo must not wait for a writer; it is refused below.
    descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as reader:
        mode = os.fstat(reader.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise cli.JobError(f"refusing to push {source}: it is {_entry_kind(mode)}")
        with open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_CHUNK_BYTES)


def _copy_files(source: str, destination: str, entries: list[_Entry]) -> None:
    """Copies the listed entries of `source` to the new directory `destination`."""
    if _is_local(source) and _is_local(destination):
        os.mkdir(destination)
        for entry in entries:
            target = os.path.join(destination, entry.relative)
            if entry.is_dir:
                os.mkdir(target)
            else:
                _copy_regular_file(os.path.join(source, entry.relative), target)
        return
    files = [entry.relative for entry in entries if not entry.is_dir]
    sources = [FileSystems.join(source, path) for path in files]
    destinations = [FileSystems.join(destination, path) for path in files]
    if FileSystems.get_scheme(source) == FileSystems.get_scheme(destination):
        FileSystems.copy(sources, destinations)
        return
    # Beam copies only within one file system: a local model to a bucket goes byte by byte.
    for source_path, destination_path in zip(sources, destinations, strict=True):
        with (
            FileSystems.open(source_path, compression_type=CompressionTypes.UNCOMPRESSED) as reader,
            FileSystems.create(
                destination_path, compression_type=CompressionTypes.UNCOMPRESSED
            ) as writer,
        ):
            shutil.copyfileobj(reader, writer, _COPY_CHUNK_BYTES)


def _newest_taken(serving_dir: str) -> int:
    """The largest version name under a serving dir (any entry named by digits), or 0."""
    if _is_local(serving_dir):
        names = [name for name in os.listdir(serving_dir) if name.isdigit()]
        return max((int(name) for name in names), default=0)
    return max(artifacts.serving_versions(serving_dir), default=0)


def _claim_version(staging: str, serving_dir: str, record: dict[str, Any], first: int) -> int:
    """Moves the staged copy to the first free version from `first` on and returns it.

    The rename is the claim: of concurrent pushes that picked the same version, one wins and the
    others try the next version, with the provenance rewritten to name it.

    Raises:
        cli.JobError: concurrent pushes took every version tried.
    """
    version = first
    for _ in range(_MAX_VERSION_ATTEMPTS):
        artifacts.write_json(
            FileSystems.join(staging, layout.PROVENANCE_FILE), {**record, "version": version}
        )
        # Serving loads nothing before saved_model.pb exists; the rename (locally) is the claim.
        destination = FileSystems.join(serving_dir, str(version))
        try:
            artifacts.move_directory(staging, destination, commit_file=layout.SAVED_MODEL_FILE)
        except FileExistsError:
            version = max(version, _newest_taken(serving_dir)) + 1
            continue
        return version
    raise cli.JobError(
        f"could not claim a version under {serving_dir}: concurrent pushes took "
        f"{_MAX_VERSION_ATTEMPTS} versions in a row; nothing was pushed, push again"
    )


def push(config: PushConfig, *, clock: Callable[[], float] = time.time) -> int:
    """Copies a blessed model to `<serving_dir>/<version>/` and returns the version.

    The version is the current Unix time (from `clock`), or one more than the newest version if
    that is larger, so a newer push always serves.

    Raises:
        cli.JobError: the model, the evaluation or the serving dir cannot be pushed, or the copy
            failed; nothing is left in the serving dir then.
        cli.NotBlessedError: the evaluation does not bless this model.
    """
    entries = _model_entries(config.model_dir)
    _refuse_serving_inside_model(config.model_dir, config.serving_dir)
    verdict = blessing.check_blessing(config.model_dir, config.evaluation_dir)
    _prepare_serving_dir(config.serving_dir)
    first = max(int(clock()), _newest_taken(config.serving_dir) + 1)
    staging = FileSystems.join(config.serving_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        _copy_files(config.model_dir, staging, entries)
        record = {
            "pushed_at": artifacts.utc_now(),
            "model_dir": config.model_dir,
            "blessing": verdict,
            "evaluation": provenance.manifest_chain(config.evaluation_dir),
            "training": provenance.manifest_chain(provenance.training_dir_of(config.model_dir)),
        }
        return _claim_version(staging, config.serving_dir, record, first)
    except OSError as error:
        raise cli.JobError(
            f"pushing {config.model_dir} to {config.serving_dir} failed ({error}); nothing was "
            "pushed"
        ) from None
    finally:
        _remove_staging(staging)


def _remove_staging(staging: str) -> None:
    """Deletes what a push staged, file by file on object stores, where a folder is only a
    prefix of names. A failure to clean up is logged, never raised over the push's own error."""
    try:
        artifacts.delete_tree(staging)
    except (OSError, cli.JobError) as error:
        logging.error("could not remove %s, left by this push: %s", staging, error)


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
        _copy_files(source, aside, _model_entries(source))
        FileSystems.delete([source])
    else:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(source, aside)
    return newest, versions[-2]


@cli.job_command(__doc__.split("\n\n")[0])
@click.option("--model_dir", default=None, help="SavedModel directory to push.")
@click.option("--evaluation_dir", default=None, help="Output of beam_jobs.evaluate for that model.")
@click.option("--serving_dir", required=True, help="TF Serving base directory (versions inside).")
@click.option("--rollback", "do_rollback", is_flag=True, help="Remove the newest version instead.")
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
