"""End-to-end tests of `python -m model.train` on real data: the 2015 CFPB extract and demo data.

Training runs in subprocesses (`--cpu_replicas` must split the CPU before TensorFlow starts, and a
crash is simulated with SIGKILL); exports are checked in-process and in a fresh Python process
that imports only TensorFlow.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from beam_jobs import ingest, transform
from beam_jobs.lib import artifacts, layout
from model import features, train
from model import model as demo_model
from tests.conftest import CURATED_SCHEMA, DEMO_PREPROCESSING_FN, REPO_ROOT, direct_options

LABEL = features.LABEL_KEY
NARRATIVE = features.NARRATIVE
# About five epochs of the 2015 train split (18.7k rows) at batch 128: eval AUC ~0.64.
STEPS_2015 = 750
BATCH_2015 = 128
MIN_AUC_2015 = 0.62
TRAIN_TIMEOUT_SECONDS = 300


def _train_command(transform_dir: pathlib.Path, output_dir: pathlib.Path, *flags: str) -> list:
    return [
        sys.executable,
        "-m",
        "model.train",
        f"--transform_dir={transform_dir}",
        f"--output_dir={output_dir}",
        *flags,
    ]


def _train(transform_dir: pathlib.Path, output_dir: pathlib.Path, *flags: str) -> str:
    """Runs the training script to completion; returns its log (stderr)."""
    result = subprocess.run(
        _train_command(transform_dir, output_dir, *flags),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _manifest(output_dir: pathlib.Path) -> dict:
    return artifacts.read_json(str(output_dir / artifacts.MANIFEST_FILE))


def _raw_examples(ingest_dir: pathlib.Path, split: str = "eval") -> list[bytes]:
    files = sorted((ingest_dir / split).glob("data-*.tfrecord.gz"))
    return [record for path in files for record in artifacts.read_tfrecords(str(path))]


def _without(serialized: bytes, key: str) -> bytes:
    example = tf.train.Example.FromString(serialized)
    if key in example.features.feature:
        del example.features.feature[key]
    return example.SerializeToString()


def _with_narrative(serialized: bytes, text: str) -> bytes:
    example = tf.train.Example.FromString(serialized)
    example.features.feature[NARRATIVE].bytes_list.value[:] = [text.encode()]
    return example.SerializeToString()


def _labels(examples: list[bytes]) -> np.ndarray:
    def label(serialized: bytes) -> int:
        values = tf.train.Example.FromString(serialized).features.feature[LABEL].bytes_list.value
        return int(list(values) == [features.LABEL_POSITIVE_VALUE.encode()])

    return np.array([label(serialized) for serialized in examples])


def _serve(export_path: str, examples: list[bytes], batch: int = 2048) -> np.ndarray:
    serving = tf.saved_model.load(export_path).signatures[layout.SERVING_SIGNATURE]
    scores = [
        serving(examples=tf.constant(examples[start : start + batch]))["outputs"].numpy()
        for start in range(0, len(examples), batch)
    ]
    return np.concatenate(scores)[:, 0]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def trained_2015(transformed_2015, tmp_path_factory):
    """The demo model trained on a copy of the 2015 transform output, on 2 CPU replicas."""
    root = tmp_path_factory.mktemp("train_2015")
    transform_copy = root / "transform"
    shutil.copytree(transformed_2015, transform_copy)
    output_dir = root / "train"
    started = time.monotonic()
    log = _train(
        transform_copy,
        output_dir,
        "--cpu_replicas=2",
        f"--train_steps={STEPS_2015}",
        f"--batch_size={BATCH_2015}",
        "--checkpoint_steps=200",
    )
    print(f"trained {STEPS_2015} steps in {time.monotonic() - started:.0f}s")
    return {"output_dir": output_dir, "transform_copy": transform_copy, "log": log}


@pytest.fixture(scope="module")
def transformed_demo(tmp_path_factory):
    """The project's generated demo data (narratives on a third of rows): ingested, transformed."""
    root = tmp_path_factory.mktemp("demo")
    csv_path = root / "complaints.csv"
    subprocess.run(
        [sys.executable, "scripts/generate_demo_data.py", f"--output={csv_path}", "--rows=1500"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    ingest_dir, transform_dir = root / "ingest", root / "transform"
    ingest.run(
        ingest.IngestConfig(
            input=str(csv_path), output_dir=str(ingest_dir), schema=str(CURATED_SCHEMA)
        ),
        direct_options(),
    )
    transform.run(
        transform.TransformConfig(
            examples_dir=str(ingest_dir),
            schema=str(CURATED_SCHEMA),
            output_dir=str(transform_dir),
            preprocessing_fn=DEMO_PREPROCESSING_FN,
        ),
        direct_options(),
    )
    return {"ingest": ingest_dir, "transform": transform_dir}


def test_trains_on_two_cpu_replicas_and_records_the_run(trained_2015):
    manifest = _manifest(trained_2015["output_dir"])
    assert "training on 2 replicas" in trained_2015["log"]
    counts = manifest["counts"]
    assert counts["replicas"] == 2
    assert counts["per_replica_batch_size"] == BATCH_2015 // 2
    assert counts["steps"] == STEPS_2015
    assert manifest["inputs"]["transform"]["path"] == str(trained_2015["transform_copy"])
    assert manifest["inputs"]["transform"]["manifest_sha256"]
    assert manifest["parameters"]["hparams"] == {}  # As given: the model applies its defaults.
    contract = manifest["model_contract"]
    assert contract["task"] == "binary_classification"
    assert contract["label_key"] == "consumer_disputed"
    assert contract["classes"] is None  # The demo maps Yes/No to 1/0 itself: no vocabulary.
    assert set(manifest["metrics"]["eval"]) >= {"loss", "auc", "binary_accuracy"}
    assert os.path.isdir(manifest["export_path"])
    assert any((trained_2015["output_dir"] / train.LOGS_DIR).rglob("events.out.tfevents.*"))


def test_export_reaches_auc_on_raw_eval_examples(trained_2015, ingested_2015_curated):
    examples = _raw_examples(ingested_2015_curated)
    scores = _serve(_manifest(trained_2015["output_dir"])["export_path"], examples)
    auc = _auc(_labels(examples), scores)
    print(f"AUC over {len(examples)} raw eval examples through serving_default: {auc:.4f}")
    assert auc >= MIN_AUC_2015


_FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export_path, with_label, without_label, out = sys.argv[1:]
    serving = tf.saved_model.load(export_path).signatures["serving_default"]
    for name, path in (("with_label", with_label), ("without_label", without_label)):
        examples = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        np.save(f"{out}/{name}.npy", serving(examples=tf.constant(examples))["outputs"].numpy())
    ours = ("model", "beam_jobs", "tensorflow_transform")
    print(json.dumps([name for name in sys.modules if name.split(".")[0] in ours]))
    """
)


def test_export_serves_in_fresh_tensorflow_process_without_transform_dir(
    trained_2015, transformed_2015, ingested_2015_curated, tmp_path
):
    export_path = _manifest(trained_2015["output_dir"])["export_path"]
    shutil.rmtree(trained_2015["transform_copy"])  # the transform it was trained on is gone
    examples = _raw_examples(ingested_2015_curated)[:500]
    unlabelled = [_without(serialized, LABEL) for serialized in examples]
    for name, records in (("with_label", examples), ("without_label", unlabelled)):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}.tfrecord")) as writer:
            for record in records:
                writer.write(record)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH_PROCESS_SCRIPT,
            export_path,
            str(tmp_path / "with_label.tfrecord"),
            str(tmp_path / "without_label.tfrecord"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_SECONDS,
        env={key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    # In process: the trained Keras model applied to features transformed by TFT itself.
    keras_model = tf.keras.models.load_model(export_path)
    tf_transform_output = tft.TFTransformOutput(str(transformed_2015))
    raw_spec = tf_transform_output.raw_feature_spec()
    raw_spec.pop(LABEL)
    transformed = tf_transform_output.transform_features_layer()(
        tf.io.parse_example(tf.constant(unlabelled), raw_spec)
    )
    expected = keras_model({name: transformed[name] for name in keras_model.input_names}).numpy()
    for name in ("with_label", "without_label"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, atol=1e-6)


def test_transform_features_signature_returns_transformed_features(
    trained_2015, ingested_2015_curated
):
    export = tf.saved_model.load(_manifest(trained_2015["output_dir"])["export_path"])
    examples = _raw_examples(ingested_2015_curated)[:20]
    transformed = export.signatures[layout.TRANSFORM_SIGNATURE](examples=tf.constant(examples))
    assert transformed["product_xf"].shape == (20, features.ONE_HOT_FEATURES["product"] + 2)
    np.testing.assert_array_equal(
        transformed[features.transformed_name(LABEL)].numpy(), _labels(examples)
    )


def test_warm_start_from_base_model_continues_training(trained_2015, transformed_2015, tmp_path):
    base = _manifest(trained_2015["output_dir"])["export_path"]
    output_dir = tmp_path / "warm"
    _train(
        transformed_2015,
        output_dir,
        f"--base_model={base}",
        "--train_steps=20",
        f"--batch_size={BATCH_2015}",
    )
    manifest = _manifest(output_dir)
    assert manifest["inputs"]["base_model"] == {"path": base}
    assert manifest["counts"]["steps"] == 20
    # Twenty steps from random weights reach about 0.55; from the base model, the base's AUC.
    assert manifest["metrics"]["eval"]["auc"] >= MIN_AUC_2015


def _checkpoint_written(checkpoints: pathlib.Path) -> bool:
    """A checkpoint is complete once tf.train.CheckpointManager's state file names it."""
    return any(path.name == "checkpoint" for path in checkpoints.rglob("*"))


def test_killed_training_resumes_from_checkpoint(transformed_2015, tmp_path):
    output_dir = tmp_path / "train"
    flags = ("--train_steps=3000", "--batch_size=32", "--checkpoint_steps=50", "--eval_steps=5")
    process = subprocess.Popen(
        _train_command(transformed_2015, output_dir, *flags),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TRAIN_TIMEOUT_SECONDS
        while not _checkpoint_written(output_dir / train.CHECKPOINTS_DIR):
            assert process.poll() is None, "training ended before writing a checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert not (output_dir / artifacts.MANIFEST_FILE).exists()
    assert not list((output_dir / layout.SERVING_MODEL_DIR).glob("[0-9]*"))

    log = _train(transformed_2015, output_dir, *flags)
    counts = _manifest(output_dir)["counts"]
    assert counts["initial_step"] >= 50
    assert f"resumed from checkpoint at step {counts['initial_step']}" in log
    assert counts["steps"] == 3000
    assert counts["steps_this_run"] == 3000 - counts["initial_step"]


def test_text_branch_is_built_and_used_on_demo_data(transformed_demo):
    output_dir = transformed_demo["transform"].parent / "train"
    _train(
        transformed_demo["transform"],
        output_dir,
        "--cpu_replicas=2",
        "--train_steps=40",
        "--batch_size=32",
        "--early_stopping_patience=1",
    )
    export_path = _manifest(output_dir)["export_path"]
    keras_model = tf.keras.models.load_model(export_path)
    encoder = keras_model.get_layer(demo_model.TEXT_ENCODER_LAYER)
    assert isinstance(encoder, demo_model.HashedTextEncoder)
    example = _raw_examples(transformed_demo["ingest"])[0]
    scores = _serve(
        export_path,
        [
            _with_narrative(example, "I was charged twice and nobody answered my letters"),
            _with_narrative(example, "The company fixed the error quickly, thank you"),
        ],
    )
    assert scores[0] != scores[1]


class _TinyEncoder(tf.Module):
    """A text encoder SavedModel as TF Hub's are: strings [batch] to vectors [batch, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = tf.Variable(tf.random.stateless_uniform([64, 4], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        ids = tf.strings.to_hash_bucket_fast(tf.strings.split(texts), 64)
        sums = tf.reduce_sum(tf.ragged.map_flat_values(tf.gather, self.embeddings, ids), axis=1)
        return sums / tf.cast(tf.maximum(ids.row_lengths(), 1), tf.float32)[:, tf.newaxis]


def test_local_saved_model_text_encoder_through_hub(transformed_demo, tmp_path):
    encoder_dir = tmp_path / "encoder"
    tf.saved_model.save(_TinyEncoder(), str(encoder_dir))
    output_dir = tmp_path / "train"
    _train(
        transformed_demo["transform"],
        output_dir,
        f"--text_encoder={encoder_dir}",
        "--train_steps=20",
        "--batch_size=32",
    )
    manifest = _manifest(output_dir)
    assert manifest["parameters"]["hparams"]["text_encoder"] == str(encoder_dir)
    shutil.rmtree(encoder_dir)  # the export carries the encoder's graph and weights
    example = _raw_examples(transformed_demo["ingest"])[0]
    scores = _serve(
        manifest["export_path"],
        [_with_narrative(example, "charged twice late fee"), _with_narrative(example, "thanks")],
    )
    assert scores[0] != scores[1]
