"""Artifact I/O shared by every stage: staged outputs, manifests, fingerprints, TFRecord files.

A stage writes everything into a staging directory beside its output directory, writes
`manifest.json` last, and only then moves the staging directory into place. `manifest.json` is the
commit marker: a directory without one is incomplete, and `read_manifest` refuses it. A stage owns
only its own outputs (`check_output_dir`): it never writes into another stage's output, a folder of
someone's files or one of its inputs. All paths go through Beam's `FileSystems`, so `gs://` and
`s3://` behave like local paths.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import queue
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import google_crc32c
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import layout
from beam_jobs.lib.cli import JobError
from beam_jobs.lib.manifest import Manifest

__all__ = [
    "EXAMPLES_STAGES",
    "FAILED_FILE",
    "FAILED_SUFFIX",
    "MANIFEST_FILE",
    "Manifest",
    "StagedOutput",
    "check_output_dir",
    "delete_tree",
    "directory_fingerprint",
    "file_fingerprint",
    "input_fingerprint",
    "list_files",
    "move_directory",
    "package_versions",
    "read_json",
    "read_manifest",
    "read_tfrecords",
    "serving_versions",
    "utc_now",
    "write_bytes",
    "write_json",
    "write_tfrecords",
]

MANIFEST_FILE = layout.MANIFEST_FILE
# Stages whose output is examples in ingest's layout (<split>/data-*.tfrecord.gz).
EXAMPLES_STAGES = ("ingest", "feedback")
_HASH_CHUNK_BYTES = 8 << 20
_PINNED_PACKAGES = (
    "apache-beam",
    "pyarrow",
    "tensorflow",
    "tensorflow-data-validation",
    "tensorflow-metadata",
    "tensorflow-model-analysis",
    "tensorflow-transform",
    "tf-keras",
    "tfx-bsl",
)
# rename() errors that mean "the destination holds something already".
_TAKEN_ERRNOS = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR)


def utc_now() -> str:
    """The current UTC time in ISO 8601, as manifests record it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Versions of the pinned stack as installed, for the manifest."""
    versions = {}
    for name in _PINNED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _root_cause(error: BaseException) -> BaseException:
    """The error under Beam's `BeamIOError`s, which nest one per pattern and per listing."""
    while isinstance(error, BeamIOError) and error.exception_details:
        error = next(iter(error.exception_details.values()))
    return error


def list_files(pattern: str) -> list[Any]:
    """The files matching a glob pattern (Beam `FileMetadata`), sorted by path; empty if none.

    Raises:
        JobError: the store cannot be listed (credentials, endpoint, permission, a scheme without
            a file system); a missing local folder or bucket is no match, not an error.
    """
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except (BeamIOError, ValueError) as error:
        if _is_local(pattern):
            return []  # Older Beam raised IOError for a missing local directory.
        reason = _root_cause(error)
        raise JobError(
            f"cannot list {pattern}: {type(reason).__name__}: {reason}".splitlines()[0]
        ) from None
    return sorted(matches, key=lambda metadata: metadata.path)


def file_fingerprint(path: str) -> dict[str, Any]:
    """Path, size and sha256 of one file's content."""
    digest = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"path": path, "size": size, "sha256": digest.hexdigest()}


def input_fingerprint(path: str) -> dict[str, Any]:
    """A content fingerprint of a stage's input: a file's sha256, or a stage directory's manifest's.

    A stage directory's manifest already fingerprints everything that made it, so hashing the
    manifest identifies the directory's content without reading every data file again.
    """
    manifest_path = FileSystems.join(path, MANIFEST_FILE)
    if FileSystems.exists(manifest_path):
        fingerprint = file_fingerprint(manifest_path)
        return {"path": path, "manifest_sha256": fingerprint["sha256"]}
    return file_fingerprint(path)


def read_json(path: str) -> Any:
    """Reads one JSON file through Beam's FileSystems."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_json(path: str, value: Any) -> None:
    """Writes one JSON file through Beam's FileSystems (sorted keys, so reruns compare equal)."""
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"
    write_bytes(path, data)


def write_bytes(path: str, data: bytes) -> None:
    """Writes one file through Beam's FileSystems; locally beside it and renamed over it, so a
    crash never leaves half a file."""
    if _is_local(path):
        directory, name = os.path.split(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
        return
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def read_manifest(stage_dir: str, *, flag: str = "input", stages: tuple[str, ...] = ()) -> Manifest:
    """The manifest of a finished stage directory, written by one of `stages` (any if empty).

    Raises:
        JobError: the directory has no manifest, so the stage that writes it never finished, or
            another stage wrote it (one stage's output given where another's is expected).
    """
    manifest_path = FileSystems.join(stage_dir, MANIFEST_FILE)
    if not FileSystems.exists(manifest_path):
        raise JobError(
            f"--{flag}={stage_dir} is not a finished stage output (no {MANIFEST_FILE}); "
            "run the stage that writes it first"
        )
    try:
        manifest = read_json(manifest_path)
    except (ValueError, UnicodeDecodeError) as error:
        raise JobError(
            f"--{flag}={stage_dir}: {MANIFEST_FILE} is not valid JSON ({error})"
        ) from None
    if not isinstance(manifest, dict):
        raise JobError(f"--{flag}={stage_dir}: {MANIFEST_FILE} is not a stage manifest")
    if stages and manifest.get("stage") not in stages:
        raise JobError(
            f"--{flag}={stage_dir} is the output of the {manifest.get('stage', 'unknown')} stage, "
            f"but --{flag} takes the output of {' or '.join(stages)}"
        )
    return Manifest.from_json(manifest)


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def move_directory(source: str, destination: str, *, commit_file: str) -> None:
    """Moves a finished folder to `destination`, which must hold nothing yet: the one way every
    job puts a folder into place.

    Locally one rename, atomic. Object stores have no rename of a folder: the files move one by
    one, `commit_file` (what readers wait for: a manifest, `saved_model.pb`) last.

    Raises:
        FileExistsError: `destination` holds something already; nothing was moved.
    """
    if _is_local(destination):
        try:
            os.rename(source, destination)
        except OSError as error:
            if error.errno in _TAKEN_ERRNOS:
                raise FileExistsError(error.errno, "destination is taken", destination) from None
            raise
        return
    if list_files(FileSystems.join(destination, "**")):
        raise FileExistsError(errno.EEXIST, "destination is taken", destination)
    prefix = source.rstrip("/") + "/"
    files = sorted(
        (metadata.path for metadata in list_files(prefix + "**")),
        key=lambda path: path.endswith("/" + commit_file),
    )
    moved: list[tuple[str, str]] = []
    try:
        for path in files:
            target = FileSystems.join(destination, path[len(prefix) :])
            FileSystems.rename([path], [target])
            moved.append((path, target))
    except Exception:
        # Back into the source, so the destination (a prefix, gone with its last object) is
        # left as it was and whoever cleans up the source finds every file there.
        for path, target in reversed(moved):
            FileSystems.rename([target], [path])
        raise


def delete_tree(path: str) -> None:
    """Deletes a directory and everything below it; nothing if it does not exist."""
    if _is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = [metadata.path for metadata in list_files(FileSystems.join(path, "**"))]
    if files:
        FileSystems.delete(files)


# What a run leaves while it writes, and what a failed run leaves for inspection, beside the output.
_STAGING_INFIX = ".staging-"
_REPLACED_SUFFIX = ".replaced"
FAILED_SUFFIX = ".failed"
FAILED_FILE = "FAILED.json"
_OWNER_FILE = ".owner.json"
# A staging folder without an owner file that is younger than this may be one being created.
_UNOWNED_GRACE_SECONDS = 60


def _normalized(path: str) -> str:
    """A path to compare with others: absolute and without links locally, no trailing slash."""
    if _is_local(path):
        return os.path.realpath(os.path.abspath(path or "."))
    return path.rstrip("/")


def _within(path: str, ancestor: str) -> bool:
    """Whether `path` is `ancestor` or lies below it (both normalized)."""
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _input_paths(pattern: str) -> list[str]:
    """The paths an input flag names: the files a pattern matches, or the path itself."""
    paths = [_normalized(pattern)]
    if any(char in pattern for char in "*?["):
        paths = [_normalized(metadata.path) for metadata in list_files(pattern)]
        # A recursive pattern reaches everything below its fixed part, future outputs too.
        if "**" in pattern:
            paths.append(_normalized(pattern.split("**", 1)[0] or "."))
    return paths


def _check_not_an_input(output_dir: str, flag: str, inputs: Iterable[str | None]) -> None:
    target = _normalized(output_dir)
    for pattern in filter(None, inputs):  # Flags left unset are None.
        for path in _input_paths(pattern):
            if _within(path, target) or _within(target, path):
                relation = (
                    "is"
                    if path == target
                    else "contains"
                    if _within(path, target)
                    else "lies inside"
                )
                raise JobError(
                    f"--{flag}={output_dir} {relation} the input {path}: a job never writes over "
                    f"what it reads; choose a directory of its own"
                )


def _check_local_location(output_dir: str, flag: str) -> None:
    target = _normalized(output_dir)
    if _within(_normalized(os.getcwd()), target):
        raise JobError(
            f"--{flag}={output_dir} is or contains the current directory; "
            "name a new or empty directory of its own"
        )
    ancestor = os.path.dirname(target)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise JobError(f"--{flag}={output_dir} lies under {ancestor}, which is a file")
    if os.path.exists(target) and not os.path.isdir(target):
        raise JobError(f"--{flag}={output_dir} exists and is not a directory")


def _directory_entries(directory: str) -> list[str]:
    """The names directly below a directory (local or object store); empty if it is absent."""
    if _is_local(directory):
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    prefix = directory.rstrip("/") + "/"
    return sorted({m.path[len(prefix) :].split("/", 1)[0] for m in list_files(prefix + "**")})


def check_output_dir(
    output_dir: str,
    stage: str,
    *,
    inputs: Iterable[str | None] = (),
    flag: str = "output_dir",
    own_entries: Iterable[str] = (),
) -> None:
    """Refuses, before any work, an output directory this stage may not write into.

    A stage writes only into a directory that is absent, empty, or a previous output of the same
    stage (its manifest names the stage), and never into, over or around one of its inputs.
    `own_entries` are names a stage that writes in place (training) may find there unfinished.

    Raises:
        JobError: one line naming what is there.
    """
    if not output_dir:
        raise JobError(f"--{flag} is empty: name a directory")
    if _is_local(output_dir):
        _check_local_location(output_dir, flag)
    _check_not_an_input(output_dir, flag, inputs)
    entries = _directory_entries(output_dir)
    if not entries:
        return
    if MANIFEST_FILE in entries:
        try:
            written_by = read_json(FileSystems.join(output_dir, MANIFEST_FILE)).get("stage")
        except (ValueError, UnicodeDecodeError, AttributeError):
            written_by = None
        if written_by == stage:
            return
        raise JobError(
            f"--{flag}={output_dir} holds the output of the {written_by or 'unknown'} stage, "
            f"not of {stage}; choose another directory (a job only replaces its own output)"
        )
    foreign = [entry for entry in entries if entry not in set(own_entries)]
    if not foreign:
        return
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise JobError(
        f"--{flag}={output_dir} is not empty and no {stage} run wrote it (it holds {shown}); "
        "choose a new or empty directory"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": utc_now()}


def _is_abandoned(staging_dir: str) -> bool:
    """Whether a staging folder was left by a run that is gone (killed) on this host."""
    owner_path = FileSystems.join(staging_dir, _OWNER_FILE)
    if FileSystems.exists(owner_path):
        try:
            owner = read_json(owner_path)
        except (ValueError, UnicodeDecodeError):
            return True
        return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner["pid"]))
    if _is_local(staging_dir) and os.path.isdir(staging_dir):
        return time.time() - os.path.getmtime(staging_dir) > _UNOWNED_GRACE_SECONDS
    return False


class StagedOutput:
    """A stage's output directory, written in a staging directory and published atomically.

    Constructing it checks the output directory (`check_output_dir`), before any work. Use as a
    context manager: write under `staging_dir`, then call `publish(...)`. Until `publish` has
    written the new manifest, a previous output stays in place, untouched. Leaving the block
    without publishing (an exception) keeps what was written in `<output_dir>.failed/` with a
    `FAILED.json` saying why (replacing an earlier failure of the same stage), and a `JobError`'s
    line says where. Entering removes staging folders of killed runs into the same output.
    """

    def __init__(
        self,
        output_dir: str,
        stage: str,
        *,
        inputs: Iterable[str | None] = (),
        flag: str = "output_dir",
    ) -> None:
        check_output_dir(output_dir, stage, inputs=inputs, flag=flag)
        self.output_dir = (
            _normalized(output_dir) if _is_local(output_dir) else output_dir.rstrip("/")
        )
        self.stage = stage
        self.started_at = utc_now()
        self.failed_dir = self.output_dir + FAILED_SUFFIX
        parent, self._name = self.output_dir.rsplit("/", 1)
        self._parent = parent or "/"
        self.staging_dir = FileSystems.join(
            self._parent, f".{self._name}{_STAGING_INFIX}{uuid.uuid4().hex[:12]}"
        )
        self._published = False

    def __enter__(self) -> StagedOutput:
        self._remove_abandoned()
        if _is_local(self.staging_dir):
            os.makedirs(self.staging_dir)
        write_json(self.path(_OWNER_FILE), _owner())
        return self

    def __exit__(self, exc_type: Any, error: BaseException | None, traceback: Any) -> None:
        if self._published:
            return
        kept = self._keep_failed(error)
        if isinstance(error, JobError) and kept not in str(error):
            error.args = (f"{error}; partial output kept in {kept}",)
        elif error is not None and not isinstance(error, JobError):
            logging.error("%s failed; partial output kept in %s", self.stage, kept)

    def path(self, *parts: str) -> str:
        """A path inside the staging directory."""
        return FileSystems.join(self.staging_dir, *parts)

    def publish(
        self,
        *,
        inputs: dict[str, Any],
        parameters: dict[str, Any],
        counts: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Writes the manifest last and moves the staging directory to the output directory.

        Returns:
            The manifest as written.
        """
        manifest = Manifest(
            stage=self.stage,
            inputs=inputs,
            parameters=parameters,
            counts=counts,
            package_versions=package_versions(),
            started_at=self.started_at,
            finished_at=utc_now(),
            extra=extra or {},
        )
        FileSystems.delete([self.path(_OWNER_FILE)])
        write_json(self.path(MANIFEST_FILE), manifest.to_json())
        self._move_into_place()
        self._published = True
        if self._is_own_failure(self.failed_dir):
            delete_tree(self.failed_dir)  # A success supersedes the last failure's leftovers.
        return manifest

    def _siblings(self) -> list[str]:
        """Staging and replaced folders of earlier runs into the same output directory."""
        prefix = FileSystems.join(self._parent, f".{self._name}{_STAGING_INFIX}")
        if _is_local(prefix):
            parent = os.path.dirname(prefix)
            name = os.path.basename(prefix)
            found = os.listdir(parent) if os.path.isdir(parent) else []
            return sorted(os.path.join(parent, n) for n in found if n.startswith(name))
        names = {m.path[len(prefix) :].split("/", 1)[0] for m in list_files(prefix + "*/**")}
        return sorted(prefix + name for name in names)

    def _remove_abandoned(self) -> None:
        for sibling in self._siblings():
            if sibling.endswith(_REPLACED_SUFFIX):
                self._settle_replaced(sibling)
            elif _is_abandoned(sibling):
                logging.info("removing %s, left by a run that was killed", sibling)
                delete_tree(sibling)

    def _settle_replaced(self, replaced: str) -> None:
        """A previous output moved aside by a publish that died before the new one took its
        place: put it back if the output is missing, else it is superseded."""
        if _is_local(self.output_dir) and not os.path.exists(self.output_dir):
            logging.info("restoring %s, the last good output, from %s", self.output_dir, replaced)
            os.rename(replaced, self.output_dir)
        else:
            delete_tree(replaced)

    def _is_own_failure(self, path: str) -> bool:
        marker = FileSystems.join(path, FAILED_FILE)
        try:
            return FileSystems.exists(marker) and read_json(marker).get("stage") == self.stage
        except (ValueError, UnicodeDecodeError, AttributeError):
            return False

    def _keep_failed(self, error: BaseException | None) -> str:
        """Moves the staging folder to `failed_dir` (or keeps it where it is, if `failed_dir`
        holds something else) with a `FAILED.json`; returns where it is."""
        reason = f"{type(error).__name__}: {error}" if error is not None else "not published"
        write_json(
            self.path(FAILED_FILE),
            {
                "stage": self.stage,
                "reason": reason,
                "started_at": self.started_at,
                "failed_at": utc_now(),
            },
        )
        if FileSystems.exists(self.path(_OWNER_FILE)):
            FileSystems.delete([self.path(_OWNER_FILE)])
        if not _is_local(self.staging_dir):
            return self.staging_dir
        if os.path.exists(self.failed_dir):
            if not self._is_own_failure(self.failed_dir):
                return self.staging_dir
            shutil.rmtree(self.failed_dir)
        os.rename(self.staging_dir, self.failed_dir)
        return self.failed_dir

    def _move_into_place(self) -> None:
        if _is_local(self.output_dir):
            replaced = None
            if os.path.exists(self.output_dir):
                replaced = f"{self.staging_dir}{_REPLACED_SUFFIX}"
                os.rename(self.output_dir, replaced)
            os.makedirs(self._parent, exist_ok=True)
            move_directory(self.staging_dir, self.output_dir, commit_file=MANIFEST_FILE)
            if replaced:
                shutil.rmtree(replaced, ignore_errors=True)
            return
        # Object stores: un-commit the old output first (no crash below may leave a manifest over
        # mixed files), then move the new one in, the manifest last.
        old_manifest = FileSystems.join(self.output_dir, MANIFEST_FILE)
        if FileSystems.exists(old_manifest):
            FileSystems.delete([old_manifest])
        delete_tree(self.output_dir)
        move_directory(self.staging_dir, self.output_dir, commit_file=MANIFEST_FILE)


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# Records are framed into chunks this large before they are compressed and written.
_WRITE_CHUNK_BYTES = 1 << 20


class _WriteBehind:
    """Hands chunks to a second thread that writes them to `handle`: zlib releases the GIL, so
    compressing one chunk overlaps with framing the next."""

    def __init__(self, handle: Any) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, args=(handle,), daemon=True)
        self._thread.start()

    def _drain(self, handle: Any) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    handle.write(chunk)
                except BaseException as error:  # Raised again in the writing thread.
                    self._error = error

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def close(self) -> None:
        self._chunks.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def write_tfrecords(path: str, records: Iterable[bytes]) -> int:
    """Writes records to one TFRecord file (GZIP when the path ends in `.gz`).

    Returns:
        The number of records written.
    """
    count = 0
    with FileSystems.create(path, compression_type=CompressionTypes.AUTO) as handle:
        writer = _WriteBehind(handle)
        try:
            frames = bytearray()
            for record in records:
                length = struct.pack("<Q", len(record))
                frames += length
                frames += struct.pack("<I", _masked_crc32c(length))
                frames += record
                frames += struct.pack("<I", _masked_crc32c(record))
                count += 1
                if len(frames) >= _WRITE_CHUNK_BYTES:
                    writer.write(bytes(frames))
                    frames.clear()
            writer.write(bytes(frames))
        finally:
            writer.close()
    return count


def read_tfrecords(
    path: str, open_file: Callable[[str], BinaryIO] | None = None
) -> Iterator[bytes]:
    """Reads the records of one TFRecord file (GZIP when the path ends in `.gz`), checking CRCs.

    `open_file` opens the file's decompressed bytes instead of Beam's `FileSystems.open`, whose
    GZIP reader ends quietly at a truncated stream's last whole record.

    Raises:
        ValueError: the file is truncated or a checksum does not match.
    """
    opened = (
        open_file(path)
        if open_file
        else FileSystems.open(path, compression_type=CompressionTypes.AUTO)
    )
    with opened as handle:
        while header := handle.read(12):
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord header")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != _masked_crc32c(header[:8]):
                raise ValueError(f"{path}: corrupt TFRecord length checksum")
            body = handle.read(length + 4)
            if len(body) < length + 4:
                raise ValueError(f"{path}: truncated TFRecord")
            record = body[:length]
            if struct.unpack("<I", body[length:])[0] != _masked_crc32c(record):
                raise ValueError(f"{path}: corrupt TFRecord data checksum")
            yield record


def directory_fingerprint(directory: str) -> str:
    """A sha256 over every file's relative path and content below a directory (a SavedModel).

    Identifies a model by what it is, not where it lies: a copy has the same fingerprint.
    """
    digest = hashlib.sha256()
    prefix = directory.rstrip("/") + "/"
    for metadata in list_files(prefix + "**"):
        relative = metadata.path[len(prefix) :]
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(file_fingerprint(metadata.path)["sha256"].encode("ascii") + b"\n")
    return digest.hexdigest()


def serving_versions(serving_dir: str) -> list[int]:
    """The model versions under a TF Serving base directory (integer-named folders), ascending.

    Only a version whose `saved_model.pb` exists counts: TF Serving could not load anything else.
    """
    versions = set()
    prefix = serving_dir.rstrip("/") + "/"
    for metadata in list_files(prefix + "*/saved_model.pb"):
        name = metadata.path[len(prefix) :].split("/", 1)[0]
        if name.isdigit():
            versions.add(int(name))
    return sorted(versions)
