"""Tests of the infer job: RunInference scores equal serving_default's, on the real 2015 data."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from tensorflow_serving.apis import prediction_log_pb2

from beam_jobs import infer
from beam_jobs.lib import artifacts, cli, example_json, layout, model_contract, records
from tests.conftest import CURATED_SCHEMA, DEMO_TRAIN_STEPS, direct_options

_SERVE_BATCH = 2048


def read_jsonl(directory: pathlib.Path) -> list[dict]:
    """Every JSON line of the files of one output folder, in file order."""
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def serve(model_dir: pathlib.Path, examples: list[bytes]) -> np.ndarray:
    """`serving_default` called directly, as TF Serving would: one score per serialized example."""
    signature = tf.saved_model.load(str(model_dir)).signatures[layout.SERVING_SIGNATURE]
    scores = [
        signature(examples=tf.constant(examples[start : start + _SERVE_BATCH]))[layout.OUTPUT_KEY]
        for start in range(0, len(examples), _SERVE_BATCH)
    ]
    return np.concatenate([score.numpy() for score in scores]).ravel()


def test_json_features_round_trip_to_the_same_example():
    example = records.encode_example(
        {"text": b"caf\xc3\xa9", "raw": b"\xff\xfe", "ids": [1, -2], "floats": [0.5, 2.0]},
        {"floats": records.ColumnType.FLOAT},
    )
    features = example_json.example_to_json(example)
    assert features["ids"] == [1, -2] and features["floats"] == [0.5, 2.0]
    back = example_json.example_from_json(json.loads(json.dumps(features)))
    assert back.SerializeToString(deterministic=True) == example.SerializeToString(
        deterministic=True
    )


def test_tracking_id_is_the_id_column_or_a_stable_hash():
    example = records.encode_example({"complaint_id": "42", "product": "Mortgage"}, {})
    serialized = example.SerializeToString(deterministic=True)
    assert infer.tracking_id(example, serialized, "complaint_id") == "42"
    hashed = infer.tracking_id(example, serialized, None)
    assert len(hashed) == 32 and hashed == infer.tracking_id(example, serialized, None)
    with pytest.raises(ValueError, match="--id_column=state: needs one value, found 0"):
        infer.tracking_id(example, serialized, "state")


def test_prediction_fields_follow_the_contract_task():
    species = model_contract.ModelContract(
        model_contract.MULTICLASS, "species_xf", "species", ("cat", "dog", "owl")
    )
    values = np.array([0.25, 0.5, 0.25], np.float32)
    assert infer.prediction_fields(values, species) == {
        "score": 0.5,
        "scores": [0.25, 0.5, 0.25],
        "top_class": "dog",
        "top_class_id": 1,
    }
    tie = infer.prediction_fields(np.array([0.4, 0.2, 0.4], np.float32), species)
    assert (tie["top_class"], tie["top_class_id"]) == ("cat", 0)  # The first of equal maxima.
    unnamed = dataclasses.replace(species, classes=None)
    assert infer.prediction_fields(values, unnamed)["top_class"] == "1"
    with pytest.raises(ValueError, match=r"2 value\(s\) are not one score per class"):
        infer.prediction_fields(values[:2], species)
    for task in (model_contract.BINARY, model_contract.REGRESSION):
        contract = model_contract.ModelContract(task, "y_xf", "y")
        assert infer.prediction_fields(np.array([0.75], np.float32), contract) == {"score": 0.75}
        with pytest.raises(ValueError, match=f"a {task} model outputs 1 value, this one 3"):
            infer.prediction_fields(values, contract)
    assert infer.prediction_fields(values, None) == {"score": [0.25, 0.5, 0.25]}
    assert infer.prediction_fields(values[:1], None) == {"score": 0.25}


def test_eval_split_scores_equal_serving_default(
    predictions_2015, trained_2015_steps, ingested_2015_curated
):
    model_dir = trained_2015_steps(DEMO_TRAIN_STEPS)
    manifest = artifacts.read_manifest(str(predictions_2015))
    eval_rows = artifacts.read_manifest(str(ingested_2015_curated)).counts["rows_written"]
    assert manifest.counts == {
        "rows_read": eval_rows["eval"],
        "rows_predicted": eval_rows["eval"],
        "rows_rejected": 0,
    }
    assert manifest.extra["model"] == {
        "path": str(model_dir),
        "name": "serving_model",
        "version": int(model_dir.name),
        "fingerprint": artifacts.directory_fingerprint(str(model_dir)),
    }
    predictions = read_jsonl(predictions_2015 / layout.PREDICTIONS_DIR)
    scored = {record["tracking_id"]: record["score"] for record in predictions}
    assert len(scored) == len(predictions) == eval_rows["eval"]

    raw = [
        record
        for path in sorted((ingested_2015_curated / "eval").glob("data-*.tfrecord.gz"))
        for record in artifacts.read_tfrecords(str(path))
    ]
    ids = [
        str(tf.train.Example.FromString(r).features.feature["complaint_id"].int64_list.value[0])
        for r in raw
    ]
    direct = serve(model_dir, raw)
    difference = np.abs(direct - np.array([scored[i] for i in ids]))
    print(f"scored {len(raw)} eval rows; max |infer - serving_default| = {difference.max():.2e}")
    assert difference.max() <= 1e-6

    logs = [
        prediction_log_pb2.PredictionLog.FromString(record)
        for path in sorted((predictions_2015 / layout.PREDICTION_LOGS_DIR).glob("*.tfrecord.gz"))
        for record in artifacts.read_tfrecords(str(path))
    ]
    assert len(logs) == len(predictions)
    first_input = logs[0].predict_log.request.inputs["examples"].string_val[0]
    assert (
        example_json.example_to_json(tf.train.Example.FromString(first_input))
        == predictions[0]["features"]
    )
    assert infer.score_of(logs[0]) == predictions[0]["score"]


def _small_csv(cfpb_2015_csv: pathlib.Path, path: pathlib.Path, rows: int) -> pathlib.Path:
    """The first `rows` rows of the 2015 data, one without a product, one with 5 fields."""
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as handle:
        lines = list(itertools.islice(csv.reader(handle), rows + 1))
    lines[5][2] = ""
    lines[9] = lines[9][:5]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    return path


def test_serving_dir_newest_version_hash_ids_and_rejects(
    tmp_path, trained_2015_steps, cfpb_2015_csv
):
    serving = tmp_path / "complaints"
    for version in (7, 12):
        shutil.copytree(trained_2015_steps(DEMO_TRAIN_STEPS), serving / str(version))
    source = _small_csv(cfpb_2015_csv, tmp_path / "new.csv", 60)
    output_dir = tmp_path / "out"
    manifest = infer.run(
        infer.InferConfig(
            model_dir=str(serving),
            input=str(source),
            output_dir=str(output_dir),
            schema=str(CURATED_SCHEMA),
            batch_size=16,
            max_rejected_fraction=0.1,
        ),
        direct_options(),
    )
    assert (
        manifest.extra["model"]["name"] == "complaints" and manifest.extra["model"]["version"] == 12
    )
    assert manifest.counts == {"rows_read": 60, "rows_predicted": 58, "rows_rejected": 2}
    rejected = read_jsonl(output_dir / "rejected")
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (
            6,
            "inference failed: InvalidArgumentError: Feature: product "
            "(data type: string) is required but could not be found.",
        ),
        (10, "expected 13 fields, found 5"),
    ]
    predictions = read_jsonl(output_dir / layout.PREDICTIONS_DIR)
    assert {p["model_version"] for p in predictions} == {12}
    first = example_json.example_from_json(predictions[0]["features"])
    serialized = first.SerializeToString(deterministic=True)
    assert predictions[0]["tracking_id"] == infer.tracking_id(first, serialized, None)
    assert predictions[0]["features"]["zip_code"] == ["76119"]  # text, as the schema says


def test_without_schema_zip_codes_are_typed_as_the_model_was_trained(
    tmp_path, trained_2015_steps, cfpb_2015_csv
):
    with cfpb_2015_csv.open(encoding="utf-8") as handle:
        head = [next(handle) for _ in range(4)]
    source = tmp_path / "numeric_zips.csv"  # Typed by these rows alone, zip_code is INT.
    source.write_text("".join(head), encoding="utf-8")
    model_dir = trained_2015_steps(DEMO_TRAIN_STEPS)
    result = CliRunner().invoke(
        infer.main,
        [f"--model_dir={model_dir}", f"--input={source}", f"--output_dir={tmp_path / 'out'}"],
    )
    assert result.exit_code == 0, result.output
    manifest = artifacts.read_manifest(str(tmp_path / "out"))
    assert manifest.counts == {"rows_read": 3, "rows_predicted": 3, "rows_rejected": 0}
    assert manifest.extra["input_schema"]["source"] == infer.SCHEMA_FROM_MODEL
    assert (manifest.extra["task"], manifest.extra["classes"]) == (model_contract.BINARY, None)
    predictions = read_jsonl(tmp_path / "out" / layout.PREDICTIONS_DIR)
    assert sorted(p["features"]["zip_code"][0] for p in predictions) == ["2127", "76119", "77479"]


def test_cli_flags_and_a_directory_without_a_model(tmp_path):
    help_text = CliRunner().invoke(infer.main, ["--help"]).output
    for flag in ("--model_dir", "--input", "--format", "--output_dir", "--id_column", "--schema"):
        assert flag in help_text
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        infer.main,
        [f"--model_dir={tmp_path / 'empty'}", "--input=x.csv", f"--output_dir={tmp_path / 'o'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "neither a SavedModel" in result.output
    assert len(result.output.strip().splitlines()) == 1


def animals_input(
    animals_csv: pathlib.Path, path: pathlib.Path, rows: int = 40, bad_legs: int | None = 5
) -> pathlib.Path:
    """The first `rows` animals with sizes rounded to whole numbers (typed by this input alone,
    `size` would be INT, which the model refuses), and row `bad_legs`'s legs written as a word."""
    with animals_csv.open(newline="") as handle:
        lines = list(itertools.islice(csv.DictReader(handle), rows))
    for line in lines:
        line["size"] = str(round(float(line["size"]))) if line["size"] else ""
    if bad_legs is not None:
        lines[bad_legs]["legs"] = "four"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    return path


def score_animals(model_dir: pathlib.Path, source: pathlib.Path, output_dir: pathlib.Path):
    """infer on `source` with no --schema, tracked by animal_id; returns the manifest."""
    config = infer.InferConfig(
        model_dir=str(model_dir),
        input=str(source),
        output_dir=str(output_dir),
        id_column="animal_id",
        batch_size=16,
        max_rejected_fraction=0.1,
    )
    return infer.run(config, direct_options())


def test_multiclass_model_types_input_by_its_raw_schema(animals_trained, animals_csv, tmp_path):
    model_dir = animals_trained("multiclass")
    source = animals_input(animals_csv, tmp_path / "animals.csv")
    manifest = score_animals(model_dir, source, tmp_path / "out")
    assert manifest.counts == {"rows_read": 40, "rows_predicted": 39, "rows_rejected": 1}
    assert manifest.extra["input_schema"] == {
        "source": infer.SCHEMA_FROM_MODEL,
        "path": model_contract.raw_schema_path(str(model_dir)),
    }
    assert manifest.extra["task"] == model_contract.MULTICLASS
    classes = manifest.extra["classes"]
    assert sorted(classes) == ["cat", "dog", "owl"]
    (rejected,) = read_jsonl(tmp_path / "out" / "rejected")
    assert (rejected["line"], rejected["reason"]) == (
        7,
        "column 'legs': 'four' is not an integer (INT column)",
    )
    predictions = read_jsonl(tmp_path / "out" / layout.PREDICTIONS_DIR)
    for record in predictions:
        scores, top = record["scores"], record["top_class_id"]
        assert len(scores) == 3 and abs(sum(scores) - 1) < 1e-5
        assert top == int(np.argmax(scores)) and record["score"] == scores[top]
        assert record["top_class"] == classes[top]
        assert isinstance(record["features"].get("size", [0.0])[0], float)  # Not INT.
    truth = {r["animal_id"]: r["species"] for r in csv.DictReader(source.open())}
    right = sum(record["top_class"] == truth[record["tracking_id"]] for record in predictions)
    assert right / len(predictions) > 0.8


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_binary_and_regression_predictions_are_one_score(
    task, animals_trained, animals_csv, tmp_path
):
    source = animals_input(animals_csv, tmp_path / "animals.csv")
    manifest = score_animals(animals_trained(task), source, tmp_path / "out")
    assert manifest.counts["rows_predicted"] == 39
    assert (manifest.extra["task"], manifest.extra["classes"]) == (
        {"binary": model_contract.BINARY, "regression": model_contract.REGRESSION}[task],
        None,
    )
    predictions = read_jsonl(tmp_path / "out" / layout.PREDICTIONS_DIR)
    assert {key for record in predictions for key in record} == {
        "tracking_id",
        "model_name",
        "model_version",
        "model_fingerprint",
        "score",
        "features",
    }
    scores = [record["score"] for record in predictions]
    if task == "binary":
        assert all(0.0 <= score <= 1.0 for score in scores)
    else:  # The weight, about 1.8 x size: kilograms, not a probability.
        assert max(scores) > 10


def test_an_export_without_raw_schema_types_by_the_input_alone(
    animals_trained, animals_csv, tmp_path
):
    model_dir = tmp_path / "old_export"
    shutil.copytree(animals_trained("multiclass"), model_dir)
    for name in (model_contract.CONTRACT_FILE, model_contract.RAW_SCHEMA_FILE):
        (model_dir / model_contract.ASSETS_DIR / name).unlink()
    source = animals_input(animals_csv, tmp_path / "animals.csv", rows=4, bad_legs=None)
    result = CliRunner().invoke(
        infer.main,
        [f"--model_dir={model_dir}", f"--input={source}", f"--output_dir={tmp_path / 'out'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "4 of 4 rows rejected" in result.output
    reasons = {
        r["reason"] for r in read_jsonl(tmp_path / f"out{artifacts.FAILED_SUFFIX}" / "rejected")
    }
    assert reasons == {
        "inference failed: InvalidArgumentError: Key: size, Index: 0.  Data types don't match. "
        "Expected type: float, Actual type: int64"
    }


def test_a_contract_that_does_not_fit_the_outputs_is_one_error(animals_trained, tmp_path):
    model_dir = tmp_path / "mislabelled"
    shutil.copytree(animals_trained("binary"), model_dir)
    contract = model_contract.ModelContract(
        model_contract.MULTICLASS, "heavy_xf", "heavy", ("light", "heavy", "huge")
    )
    model_contract.write_contract(str(model_dir), contract, None)
    result = CliRunner().invoke(
        infer.main,
        [f"--model_dir={model_dir}", "--input=x.csv", f"--output_dir={tmp_path / 'out'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert result.output == (
        f"error: --model_dir: {model_dir} outputs 1 value(s) per record, but its contract says "
        "multiclass_classification (outputs wanted: 3); re-export the model\n"
    )
