"""The manifest: what a stage writes last into its output, as its commit marker.

`manifest.json` holds the stage, its inputs (paths and content fingerprints), parameters, counts,
package versions, start and end time, and fields of the stage's own (`splits`, `feature_types`,
`span`, `model`, ...). `Manifest` is that file as a value; its JSON is the file's, key for key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["FORMAT_VERSION", "Manifest"]

FORMAT_VERSION = 1
_FIELDS = (
    "stage",
    "format_version",
    "inputs",
    "parameters",
    "counts",
    "package_versions",
    "started_at",
    "finished_at",
)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One stage output's manifest.

    Attributes:
        stage: the stage that wrote it (`ingest`, `transform`, ...).
        inputs: what the stage read, by role: paths and content fingerprints.
        parameters: the stage's parameters as it ran.
        counts: rows read, written, rejected, ... as the stage counted them.
        package_versions: the versions of the packages that did the work.
        started_at: when the run started (UTC, ISO 8601).
        finished_at: when the manifest was written.
        format_version: the manifest format, or None where a stage writes none (training).
        extra: the stage's own fields, written beside the common ones.
    """

    stage: str
    inputs: Mapping[str, Any]
    parameters: Mapping[str, Any]
    counts: Mapping[str, Any]
    package_versions: Mapping[str, str]
    started_at: str
    finished_at: str
    format_version: int | None = FORMAT_VERSION
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        """The split names of an output in ingest's layout, in order (empty if none)."""
        return list(self.extra.get("splits") or [])

    @property
    def rows_written(self) -> dict[str, int]:
        """Rows written per split, as ingest and feedback count them (empty if none)."""
        return dict(self.counts.get("rows_written") or {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """The manifest of a `manifest.json` object; missing common fields read as empty."""
        return cls(
            stage=data.get("stage", ""),
            inputs=data.get("inputs") or {},
            parameters=data.get("parameters") or {},
            counts=data.get("counts") or {},
            package_versions=data.get("package_versions") or {},
            started_at=data.get("started_at", ""),
            finished_at=data.get("finished_at", ""),
            format_version=data.get("format_version"),
            extra={key: value for key, value in data.items() if key not in _FIELDS},
        )

    def to_json(self) -> dict[str, Any]:
        """The `manifest.json` object: the common fields, then the stage's own."""
        common = {name: getattr(self, name) for name in _FIELDS}
        if self.format_version is None:
            del common["format_version"]
        return {**common, **self.extra}
