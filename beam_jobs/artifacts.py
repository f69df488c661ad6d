"""Artifact I/O shared by every stage: staged outputs, manifests, fingerprints, TFRecord files.

A stage writes everything into a staging directory beside its output directory, writes
`manifest.json` last, and only then moves the staging directory into place. `manifest.json` is the
commit marker: a directory without one is incomplete, and `read_manifest` refuses it. All paths go
through Beam's `FileSystems`, so `gs://` and `s3://` behave like local paths.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import queue
import shutil
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.cli import JobError

__all__ = [
    "EXAMPLES_STAGES",
    "MANIFEST_FILE",
    "StagedOutput",
    "delete_tree",
    "directory_fingerprint",
    "file_fingerprint",
    "input_fingerprint",
    "list_files",
    "package_versions",
    "read_json",
    "read_manifest",
    "read_tfrecords",
    "serving_versions",
    "utc_now",
    "write_json",
    "write_tfrecords",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
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


def list_files(pattern: str) -> list[Any]:
    """The files matching a glob pattern (Beam `FileMetadata`), sorted by path; empty if none."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises BeamIOError, or IOError for a missing local directory.
        return []
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
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def read_manifest(
    stage_dir: str, *, flag: str = "input", stages: tuple[str, ...] = ()
) -> dict[str, Any]:
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
    return manifest


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def delete_tree(path: str) -> None:
    """Deletes a directory and everything below it; nothing if it does not exist."""
    if _is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = [metadata.path for metadata in list_files(FileSystems.join(path, "**"))]
    if files:
        FileSystems.delete(files)


class StagedOutput:
    """A stage's output directory, written in a staging directory and published atomically.

    Use as a context manager: write under `staging_dir`, then call `publish(manifest)`. Leaving
    the block without publishing (an exception) deletes the staging directory, and the output
    directory is left as it was.
    """

    def __init__(self, output_dir: str, stage: str) -> None:
        self.output_dir = output_dir.rstrip("/")
        self.stage = stage
        self.started_at = utc_now()
        parent, name = (
            os.path.split(self.output_dir)
            if _is_local(self.output_dir)
            else (self.output_dir.rsplit("/", 1))
        )
        self.staging_dir = FileSystems.join(
            parent or ".", f".{name}.staging-{uuid.uuid4().hex[:12]}"
        )
        self._published = False

    def __enter__(self) -> StagedOutput:
        if _is_local(self.staging_dir):
            os.makedirs(self.staging_dir)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._published:
            delete_tree(self.staging_dir)

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
        complete: bool = True,
    ) -> dict[str, Any]:
        """Writes the manifest last and moves the staging directory to the output directory.

        With `complete=False` the outputs are moved into place without a manifest, for a stage
        that failed but left something to inspect (rejected rows); later stages refuse them.

        Returns:
            The manifest as written (empty when `complete` is false).
        """
        manifest: dict[str, Any] = {}
        if complete:
            manifest = {
                "stage": self.stage,
                "format_version": MANIFEST_FORMAT_VERSION,
                "inputs": inputs,
                "parameters": parameters,
                "counts": counts,
                "package_versions": package_versions(),
                "started_at": self.started_at,
                "finished_at": utc_now(),
                **(extra or {}),
            }
            write_json(self.path(MANIFEST_FILE), manifest)
        self._move_into_place()
        self._published = True
        return manifest

    def _move_into_place(self) -> None:
        old_manifest = FileSystems.join(self.output_dir, MANIFEST_FILE)
        if FileSystems.exists(old_manifest):
            # Un-commit the old output first: no crash below may leave a manifest over mixed files.
            FileSystems.delete([old_manifest])
        if _is_local(self.output_dir):
            replaced = None
            if os.path.exists(self.output_dir):
                replaced = f"{self.staging_dir}.replaced"
                os.rename(self.output_dir, replaced)
            os.makedirs(os.path.dirname(os.path.abspath(self.output_dir)), exist_ok=True)
            os.rename(self.staging_dir, self.output_dir)
            if replaced:
                shutil.rmtree(replaced, ignore_errors=True)
            return
        # Object stores have no directory rename: copy file by file, the manifest last.
        delete_tree(self.output_dir)
        sources = [
            metadata.path for metadata in list_files(FileSystems.join(self.staging_dir, "**"))
        ]
        sources.sort(key=lambda path: path.endswith("/" + MANIFEST_FILE))
        destinations = [self.output_dir + source[len(self.staging_dir) :] for source in sources]
        for source, destination in zip(sources, destinations, strict=True):
            FileSystems.rename([source], [destination])


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


def read_tfrecords(path: str) -> Iterator[bytes]:
    """Reads the records of one TFRecord file (GZIP when the path ends in `.gz`), checking CRCs.

    Raises:
        ValueError: the file is truncated or a checksum does not match.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
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
