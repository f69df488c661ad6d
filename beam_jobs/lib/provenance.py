"""Provenance: the chain of stage manifests behind an artifact, followed through their inputs.

A manifest names each input directory with its manifest's sha256; following those names from a
stage's output back to ingest gives everything that made it (push records it beside a version, the
model card reads it back).
"""

from __future__ import annotations

import os
from typing import Any

from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, layout

__all__ = ["manifest_chain", "training_dir_of"]

_MAX_DEPTH = 8


def manifest_chain(stage_dir: str, depth: int = 0) -> list[dict[str, Any]]:
    """The manifests of a stage directory and, recursively, of every stage directory it read.

    Returns:
        `{"path": <dir>, "manifest": <manifest as JSON>}` per stage, the given one first; empty
        where the directory has no manifest.
    """
    manifest_path = FileSystems.join(stage_dir, layout.MANIFEST_FILE)
    if depth > _MAX_DEPTH or not FileSystems.exists(manifest_path):
        return []
    manifest = artifacts.read_json(manifest_path)
    chain = [{"path": stage_dir, "manifest": manifest}]
    for entries in manifest.get("inputs", {}).values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and "manifest_sha256" in entry:
                chain.extend(manifest_chain(entry["path"], depth + 1))
    return chain


def training_dir_of(model_dir: str) -> str:
    """`<train output>` of `<train output>/serving_model/<ts>`, where the training manifest lies."""
    return os.path.dirname(os.path.dirname(model_dir.rstrip("/")))
