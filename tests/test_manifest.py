"""The Manifest type: manifest.json as a value, its JSON the file's key for key."""

import json

from beam_jobs.lib import artifacts
from beam_jobs.lib.manifest import Manifest

ON_DISK = {
    "stage": "ingest",
    "format_version": 1,
    "inputs": {"raw": [{"path": "/d/a.csv", "sha256": "ab", "size": 3}]},
    "parameters": {"splits": {"train": 2, "eval": 1}},
    "counts": {"rows_read": 3, "rows_rejected": 0, "rows_written": {"train": 2, "eval": 1}},
    "package_versions": {"apache-beam": "2.60.0"},
    "started_at": "2026-01-01T00:00:00Z",
    "finished_at": "2026-01-01T00:00:01Z",
    "splits": ["train", "eval"],
    "span": None,
    "feature_types": {"product": "bytes"},
}


def test_a_manifest_reads_and_writes_the_same_json():
    manifest = Manifest.from_json(ON_DISK)
    assert manifest.to_json() == ON_DISK
    assert manifest.splits == ["train", "eval"]
    assert manifest.rows_written == {"train": 2, "eval": 1}
    assert manifest.extra["feature_types"] == {"product": "bytes"}


def test_a_manifest_without_format_version_is_written_without_one():
    training = {key: value for key, value in ON_DISK.items() if key != "format_version"}
    assert "format_version" not in Manifest.from_json(training).to_json()


def test_read_manifest_returns_the_manifest_of_a_stage_output(tmp_path):
    (tmp_path / artifacts.MANIFEST_FILE).write_text(json.dumps(ON_DISK))
    manifest = artifacts.read_manifest(str(tmp_path), stages=("ingest",))
    assert manifest == Manifest.from_json(ON_DISK)
    assert manifest.counts["rows_read"] == 3


def test_publish_writes_the_manifest_it_returns(tmp_path):
    output_dir = str(tmp_path / "out")
    with artifacts.StagedOutput(output_dir, "ingest") as staged:
        manifest = staged.publish(
            inputs={}, parameters={"n": 1}, counts={"rows_read": 0}, extra={"splits": ["all"]}
        )
    on_disk = json.loads((tmp_path / "out" / artifacts.MANIFEST_FILE).read_text())
    assert on_disk == manifest.to_json()
    assert artifacts.read_manifest(output_dir) == manifest
