"""The whole chain, ingest to push and infer, with every artifact on s3:// and on gs://.

Each store is a local emulator on 127.0.0.1 (tests/object_stores.py): moto's S3 server, and
fake-gcs-server, which TensorFlow's built-in gs:// file system reaches through a local HTTPS
tunnel. Every stage runs as its own process, given the store's settings only as Beam flags and
environment variables, as a user would. The test reads what the stages wrote through the
emulator's own API: manifests whose counts add up, a pushed version, and no staging objects left.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests import object_stores
from tests.conftest import CURATED_SCHEMA, DEMO_PREPROCESSING_FN, REPO_ROOT

ROWS = 2000
TRAIN_STEPS = 20
# What a crashed or unfinished write leaves: a later stage must never find one.
HIDDEN_MARKERS = (".staging-", ".pushing-", ".failed")


@pytest.fixture(scope="module", params=["s3", "gs"])
def store(request, tmp_path_factory):
    yield from object_stores.emulator(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def complaints_csv(cfpb_2015_csv, tmp_path_factory):
    """The first ROWS complaints of the 2015 extract, local: the stages' outputs go to the store."""
    path = tmp_path_factory.mktemp("complaints") / "complaints.csv"
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as source:
        rows = csv.reader(source)
        with path.open("w", newline="", encoding="utf-8") as target:
            writer = csv.writer(target)
            for index, row in enumerate(rows):
                if index > ROWS:
                    break
                writer.writerow(row)
    return path


def run(store: object_stores.ObjectStore, module: str, *flags: str, beam: bool = True):
    command = [sys.executable, "-m", module, *flags, *store.beam_flags()]
    if beam:
        command.append("--runner=DirectRunner")
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=object_stores.stage_env(store),
        capture_output=True,
        text=True,
        check=False,
    )


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def hidden(bucket: object_stores.Bucket) -> list[str]:
    return [key for key in bucket.object_names() if any(marker in key for marker in HIDDEN_MARKERS)]


def test_chain_ingest_to_push_and_infer(store, complaints_csv):
    bucket = object_stores.Bucket(store, store.bucket())
    root = f"{bucket.root}/pipeline"

    ok(
        run(
            store,
            "beam_jobs.ingest",
            f"--input={complaints_csv}",
            f"--schema={CURATED_SCHEMA}",
            f"--output_dir={root}/ingest",
        )
    )
    counts = bucket.read_json("pipeline/ingest/manifest.json")["counts"]
    assert counts["rows_read"] == ROWS
    assert sum(counts["rows_written"].values()) + counts.get("rows_rejected", 0) == ROWS
    assert set(counts["rows_written"]) == {"train", "eval"}

    ok(
        run(
            store,
            "beam_jobs.statistics",
            f"--examples_dir={root}/ingest",
            f"--output_dir={root}/statistics",
        )
    )
    ok(
        run(
            store,
            "beam_jobs.validate",
            f"--statistics_dir={root}/statistics",
            f"--schema={CURATED_SCHEMA}",
            f"--output_dir={root}/validate",
        )
    )
    ok(
        run(
            store,
            "beam_jobs.transform",
            f"--examples_dir={root}/ingest",
            f"--schema={CURATED_SCHEMA}",
            f"--preprocessing_fn={DEMO_PREPROCESSING_FN}",
            f"--output_dir={root}/transform",
        )
    )
    transformed = bucket.read_json("pipeline/transform/manifest.json")["counts"]
    assert transformed["examples_transformed"] == counts["rows_written"]

    ok(
        run(
            store,
            "model.train",
            f"--transform_dir={root}/transform",
            f"--output_dir={root}/train",
            f"--train_steps={TRAIN_STEPS}",
            "--eval_steps=5",
            beam=False,
        )
    )
    exports = {
        key.split("/")[3]
        for key in bucket.object_names()
        # TensorFlow writes folder markers ("serving_model/") on gs://: versions are below them.
        if key.startswith("pipeline/train/serving_model/") and key.split("/")[3]
    }
    assert len(exports) == 1, exports
    model_dir = f"{root}/train/serving_model/{exports.pop()}"

    ok(
        run(
            store,
            "beam_jobs.evaluate",
            f"--model_dir={model_dir}",
            f"--examples_dir={root}/ingest",
            f"--output_dir={root}/evaluate",
        )
    )
    assert "pipeline/evaluate/BLESSED" in bucket.object_names()

    ok(
        run(
            store,
            "beam_jobs.push",
            f"--model_dir={model_dir}",
            f"--evaluation_dir={root}/evaluate",
            f"--serving_dir={root}/serving",
            beam=False,
        )
    )
    versions = {
        key.split("/")[2]
        for key in bucket.object_names()
        if key.startswith("pipeline/serving/") and key.split("/")[2]
    }
    assert len(versions) == 1 and versions.pop().isdigit()

    ok(
        run(
            store,
            "beam_jobs.infer",
            f"--model_dir={root}/serving",
            f"--input={complaints_csv}",
            f"--output_dir={root}/infer",
        )
    )
    inferred = bucket.read_json("pipeline/infer/manifest.json")["counts"]
    assert inferred["rows_read"] == ROWS
    assert inferred["rows_predicted"] + inferred.get("rows_rejected", 0) == ROWS

    assert hidden(bucket) == []


def test_failed_push_leaves_nothing_behind(store, tmp_path):
    """A push with no evaluation to check is refused in one line, writing nothing to the store."""
    bucket = object_stores.Bucket(store, store.bucket())
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"not a model")
    result = run(
        store,
        "beam_jobs.push",
        f"--model_dir={model}",
        f"--evaluation_dir={bucket.root}/no-evaluation",
        f"--serving_dir={bucket.root}/serving",
        beam=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert bucket.object_names() == []
