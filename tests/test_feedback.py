"""Tests of the feedback job: the labelling rules, and real predictions relabelled into a span."""

from __future__ import annotations

import csv
import datetime
import json
import pathlib

import click
import pytest
import tensorflow as tf
from click.testing import CliRunner
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs import feedback, statistics, validate
from beam_jobs.lib import (
    artifacts,
    cli,
    example_json,
    feature_types,
    model_contract,
    records,
    tfdv_io,
)
from tests.conftest import CURATED_SCHEMA, direct_options
from tests.test_infer import animals_input, read_jsonl, score_animals

MIN_IMPLICIT = 3
UTC = datetime.UTC
# The demo's label, passed as flags: the framework knows nothing of it.
DEMO_LABEL_FLAGS = {
    "label_column": "consumer_disputed",
    "positive_value": "Yes",
    "negative_value": "No",
}
DEMO_LABEL = feedback.LabelSpec("consumer_disputed", model_contract.BINARY, ("No", "Yes"))


def event(kind: str, label: str | None = None, day: int | None = None, line: int = 0):
    timestamp = datetime.datetime(2024, 1, day, tzinfo=UTC) if day else None
    return feedback.Event("id", kind, label, timestamp, (0, line))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Yes", 1), ("no", 0), ("1", 1), (0, 0), (True, 1), (b"false", 0), ("YES", 1), ("No", 0)],
)
def test_parse_label_accepts_the_usual_spellings(value, expected):
    assert feedback.parse_label(value, "Yes", "No") == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kind": "label", "value": "Yes"}, "no tracking_id"),
        ({"tracking_id": "1", "kind": "thumbs_up"}, "unknown kind 'thumbs_up'"),
        ({"tracking_id": "1", "kind": "label", "value": "maybe"}, "'maybe' is not a label"),
        ({"tracking_id": "1", "kind": "correction"}, "None is not a label"),
        ({"tracking_id": "1", "kind": "wrong", "timestamp": "today"}, "not ISO 8601"),
    ],
)
def test_parse_event_rejects_with_reasons(values, message):
    with pytest.raises(ValueError, match=message):
        feedback.parse_event(values, DEMO_LABEL)


def test_parse_event_reads_ids_kinds_values_and_times():
    parsed = feedback.parse_event(
        {"tracking_id": 1290580, "kind": b"Correction", "value": "no", "timestamp": "2024-01-02"},
        DEMO_LABEL,
    )
    assert (parsed.tracking_id, parsed.kind, parsed.label) == ("1290580", "correction", "No")
    assert parsed.timestamp == datetime.datetime(2024, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("score", "events", "expected"),
    [
        (0.2, [event("label", "Yes")], feedback.Decision("Yes", "label")),
        (0.9, [event("correction", "No")], feedback.Decision("No", "correction")),
        # The latest explicit event wins, by timestamp, then by input order.
        (
            0.2,
            [event("label", "Yes", day=1), event("correction", "No", day=2)],
            feedback.Decision("No", "correction"),
        ),
        (
            0.2,
            [event("correction", "No", day=2), event("label", "Yes", day=3)],
            feedback.Decision("Yes", "label"),
        ),
        (
            0.2,
            [event("label", "Yes", line=1), event("label", "No", line=2)],
            feedback.Decision("No", "label"),
        ),
        # "wrong" flips the predicted label; a score of 0.5 predicts the positive label.
        (0.2, [event("wrong")], feedback.Decision("Yes", "wrong")),
        (0.7, [event("wrong")], feedback.Decision("No", "wrong")),
        (0.5, [event("wrong")], feedback.Decision("No", "wrong")),
        (0.2, [event("wrong"), event("label", "No")], feedback.Decision("No", "label")),
        (0.7, [event("wrong")] + [event("implicit")] * 5, feedback.Decision("No", "wrong")),
        # Implicit events make a positive only at the threshold; never a negative.
        (0.2, [event("implicit")] * 2, None),
        (0.2, [event("implicit")] * 3, feedback.Decision("Yes", "implicit")),
        (0.9, [event("implicit")] * 4, feedback.Decision("Yes", "implicit")),
        (0.9, [], None),
    ],
)
def test_decide_label_follows_the_rules(score, events, expected):
    assert feedback.decide_label({"score": score}, events, MIN_IMPLICIT, DEMO_LABEL) == expected


def test_wrong_needs_a_binary_prediction():
    with pytest.raises(ValueError, match="binary prediction"):
        feedback.decide_label({"score": [0.1, 0.9]}, [event("wrong")], MIN_IMPLICIT, DEMO_LABEL)


def test_labelled_example_keeps_what_the_model_saw_and_sets_the_label():
    features = {"product": ["Mortgage"], "complaint_id": [7], "consumer_disputed": ["Yes"]}
    example = tf.train.Example.FromString(feedback.labelled_example(features, DEMO_LABEL, "No"))
    assert example_json.example_to_json(example) == {**features, "consumer_disputed": ["No"]}


def _feedback_lines(ids: list[str]) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """Feedback on the predictions `ids`, and the (label, rule) each labelled id must get."""
    lines: list[dict] = []
    expected: dict[str, tuple[str, str]] = {}

    def add(tracking, kind, value=None, timestamp=None):
        lines.append(
            {"tracking_id": tracking, "kind": kind, "value": value, "timestamp": timestamp}
        )

    add(ids[0], "label", "Yes")
    add(ids[1], "label", "0")
    add(ids[2], "label", True)
    add(ids[3], "correction", "No")
    add(ids[4], "label", "Yes", "2024-01-01T10:00:00")
    add(ids[4], "correction", "No", "2024-01-02T10:00:00Z")
    add(ids[5], "label", "yes", "2024-01-03T00:00:00+00:00")
    add(ids[5], "correction", "No", "2024-01-02T00:00:00")
    add(ids[6], "wrong")
    add(ids[7], "wrong")
    for tracking, count in ((ids[7], 5), (ids[8], 2), (ids[9], 3), (ids[10], 4)):
        for _ in range(count):
            add(tracking, "implicit")
    add(ids[11], "wrong")
    add(ids[11], "label", "No")
    add("no-such-id-1", "label", "Yes")
    add("no-such-id-2", "implicit")
    add(ids[12], "thumbs_up")
    add(ids[13], "label", "maybe")
    add(ids[14], "label", "Yes", "yesterday")
    add(None, "label", "Yes")
    expected.update(
        {
            ids[0]: ("Yes", "label"),
            ids[1]: ("No", "label"),
            ids[2]: ("Yes", "label"),
            ids[3]: ("No", "correction"),
            ids[4]: ("No", "correction"),
            ids[5]: ("Yes", "label"),
            ids[9]: ("Yes", "implicit"),
            ids[10]: ("Yes", "implicit"),
            ids[11]: ("No", "label"),
        }
    )
    for index, tracking in enumerate(ids[20:80]):
        value = "Yes" if index % 3 == 0 else "No"
        add(tracking, "label", value)
        expected[tracking] = (value, "label")
    return lines, expected


def test_real_feedback_becomes_a_span_that_validates(predictions_2015, tmp_path):
    predictions = {p["tracking_id"]: p for p in read_jsonl(predictions_2015 / "predictions")}
    ids = sorted(predictions)
    lines, expected = _feedback_lines(ids)
    for tracking in (ids[6], ids[7]):  # "wrong" flips the predicted label
        expected[tracking] = ("No" if predictions[tracking]["score"] >= 0.5 else "Yes", "wrong")
    source = tmp_path / "feedback.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output_dir = tmp_path / "span"
    config = feedback.FeedbackConfig(
        predictions=str(predictions_2015),
        feedback=str(source),
        output_dir=str(output_dir),
        min_implicit_events=MIN_IMPLICIT,
        **DEMO_LABEL_FLAGS,
    )
    counts = feedback.run(config, direct_options()).counts
    written = counts.pop("rows_written")
    assert counts == {
        "feedback_rows_read": 92,
        "feedback_rows_used": 86,
        "feedback_rows_unmatched": 2,
        "feedback_rows_rejected": 4,
        "predictions_read": len(predictions),
        "ids_labelled": 71,
        "ids_without_label": 1,
        "labels_by_rule": {"label": 65, "correction": 2, "wrong": 2, "implicit": 2},
    }
    assert set(written) == {"train", "eval"} and sum(written.values()) == 71

    examples = {}
    for split in ("train", "eval"):
        for path in sorted((output_dir / split).glob("data-*.tfrecord.gz")):
            for record in artifacts.read_tfrecords(str(path)):
                features = example_json.example_to_json(tf.train.Example.FromString(record))
                examples[str(features["complaint_id"][0])] = features
    assert {i: e["consumer_disputed"] for i, e in examples.items()} == {
        i: [label] for i, (label, _) in expected.items()
    }
    for tracking, features in examples.items():
        seen = dict(
            predictions[tracking]["features"], consumer_disputed=features["consumer_disputed"]
        )
        assert features == seen

    provenance = {p["tracking_id"]: p for p in read_jsonl(output_dir / "provenance")}
    assert {i: (p["label"], p["rule"]) for i, p in provenance.items()} == expected
    model = artifacts.read_manifest(str(predictions_2015)).extra["model"]
    assert {p["model_version"] for p in provenance.values()} == {model["version"]}
    unmatched = read_jsonl(output_dir / "unmatched")
    assert [u["row"]["tracking_id"] for u in unmatched] == ["no-such-id-1", "no-such-id-2"]
    reasons = [r["reason"] for r in read_jsonl(output_dir / "rejected")]
    assert len(reasons) == 4
    assert "unknown kind 'thumbs_up'" in reasons[0] and "no tracking_id" in reasons[3]

    stats_dir, validation_dir = tmp_path / "stats", tmp_path / "validation"
    result = CliRunner().invoke(
        statistics.main, [f"--examples_dir={output_dir}", f"--output_dir={stats_dir}"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        validate.main,
        [
            f"--statistics_dir={stats_dir}",
            f"--schema={CURATED_SCHEMA}",
            f"--output_dir={validation_dir}",
        ],
    )
    assert result.exit_code == 0, result.output


def test_csv_feedback_and_cli(predictions_2015, tmp_path):
    ids = sorted(p["tracking_id"] for p in read_jsonl(predictions_2015 / "predictions"))[:2]
    source = tmp_path / "feedback.csv"
    source.write_text(
        "tracking_id,kind,value,timestamp\n"
        f"{ids[0]},correction,Yes,2024-05-01T12:00:00\n"
        f"{ids[1]},implicit,,\n"
        f"{ids[1]},implicit,,\n"
        "unknown,label,No,\n"
    )
    output_dir = tmp_path / "out"
    args = [
        f"--predictions={predictions_2015}",
        f"--feedback={source}",
        f"--output_dir={output_dir}",
        "--min_implicit_events=2",
        "--splits=all:1",
    ]
    # The demo's label is text without a vocabulary: its two values must be given.
    result = CliRunner().invoke(feedback.main, args)
    assert result.exit_code == cli.EXIT_ERROR
    assert result.output.count("\n") == 1 and "pass --positive_value and --negative_value" in (
        result.output
    )
    result = CliRunner().invoke(
        feedback.main, [*args, "--positive_value=Yes", "--negative_value=No"]
    )
    assert result.exit_code == 0, result.output
    manifest = artifacts.read_manifest(str(output_dir))
    assert manifest.extra["label"]["column"] == "consumer_disputed"  # From the model's contract.
    assert manifest.splits == ["all"]
    assert manifest.counts["rows_written"] == {"all": 2}
    assert manifest.counts["labels_by_rule"]["implicit"] == 1
    assert manifest.counts["feedback_rows_unmatched"] == 1
    help_text = CliRunner().invoke(feedback.main, ["--help"]).output
    for flag in ("--predictions", "--feedback", "--min_implicit_events", "--splits"):
        assert flag in help_text


def test_predictions_without_manifest_are_refused(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "fb.jsonl").write_text("{}\n")
    result = CliRunner().invoke(
        feedback.main,
        [
            f"--predictions={tmp_path / 'half'}",
            f"--feedback={tmp_path / 'fb.jsonl'}",
            f"--output_dir={tmp_path / 'out'}",
        ],
    )
    assert result.exit_code == 1
    assert "no manifest.json" in result.output


ANIMALS = ("cat", "dog", "owl")
SPECIES = feedback.LabelSpec("species", model_contract.MULTICLASS, ANIMALS)


def _contract(task: str, label_key: str | None = "species", classes=None):
    return model_contract.ModelContract(task, f"{label_key}_xf", label_key, classes)


def _schema(label: str, kind: int) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    schema.feature.add(name=label, type=kind)
    return schema


def test_multiclass_labels_are_class_names_and_wrong_is_refused():
    parsed = feedback.parse_event({"tracking_id": "a", "kind": "label", "value": " owl "}, SPECIES)
    assert parsed.label == "owl"
    with pytest.raises(ValueError, match=r"'fish' is not a class \(cat, dog, owl\)"):
        feedback.parse_event({"tracking_id": "a", "kind": "correction", "value": "fish"}, SPECIES)
    with pytest.raises(ValueError, match="'wrong' has no one opposite label"):
        feedback.parse_event({"tracking_id": "a", "kind": "wrong"}, SPECIES)
    prediction = {"score": 0.7, "scores": [0.1, 0.7, 0.2], "top_class": "dog", "top_class_id": 1}
    implicit = [event("implicit")] * MIN_IMPLICIT
    assert feedback.decide_label(prediction, implicit, MIN_IMPLICIT, SPECIES) == (
        feedback.Decision("dog", "implicit")
    )
    assert feedback.decide_label(
        prediction, [*implicit, event("correction", "cat")], MIN_IMPLICIT, SPECIES
    ) == feedback.Decision("cat", "correction")
    # Predicted: an out-of-vocabulary bucket (class index 3) is no class to confirm.
    out_of_vocabulary = {"score": 0.4, "scores": [0.2, 0.2, 0.2, 0.4], "top_class": "3"}
    with pytest.raises(ValueError, match="value '3' is not a class"):
        feedback.decide_label(out_of_vocabulary, implicit, MIN_IMPLICIT, SPECIES)


def test_the_label_is_written_with_its_raw_type():
    heavy = feedback.LabelSpec("heavy", model_contract.BINARY, ("0", "1"), records.ColumnType.INT)
    assert heavy.parse("yes") == "1" and heavy.parse(0) == "0"
    example = tf.train.Example.FromString(feedback.labelled_example({"legs": [4]}, heavy, "1"))
    assert example.features.feature["heavy"].int64_list.value == [1]
    label = feedback.LabelSpec(
        "legs", model_contract.MULTICLASS, (), records.ColumnType.INT
    )  # an integer multi-class label without class names: any integer
    assert label.parse("4") == "4"
    with pytest.raises(ValueError, match="column 'legs': 'four' is not an integer"):
        label.parse("four")
    weight = feedback.LabelSpec("weight", model_contract.REGRESSION, (), records.ColumnType.FLOAT)
    assert weight.parse("2.5") == "2.5"
    with pytest.raises(ValueError, match="'implicit' gives no label to a regression"):
        weight.check_kind("implicit")


@pytest.mark.parametrize(
    ("contract", "schema", "flags", "expected"),
    [
        # Binary with named classes: the label key, classes 0 and 1.
        (
            _contract(model_contract.BINARY, "size", ("small", "big")),
            None,
            {},
            feedback.LabelSpec("size", model_contract.BINARY, ("small", "big")),
        ),
        # Binary 0/1 label typed INT by the raw schema: "0"/"1", written as integers.
        (
            _contract(model_contract.BINARY, "heavy"),
            _schema("heavy", schema_pb2.INT),
            {},
            feedback.LabelSpec("heavy", model_contract.BINARY, ("0", "1"), records.ColumnType.INT),
        ),
        # Flags override the contract.
        (
            _contract(model_contract.BINARY, "size", ("small", "big")),
            None,
            {"label_column": "kind", "positive_value": "Y", "negative_value": "N"},
            feedback.LabelSpec("kind", model_contract.BINARY, ("N", "Y")),
        ),
        (
            _contract(model_contract.MULTICLASS, "species", ANIMALS),
            _schema("species", schema_pb2.BYTES),
            {},
            SPECIES,
        ),
        (
            _contract(model_contract.REGRESSION, "weight"),
            None,
            {},
            feedback.LabelSpec("weight", model_contract.REGRESSION, (), records.ColumnType.FLOAT),
        ),
        # No contract (an older export): binary, everything from the flags.
        (None, None, DEMO_LABEL_FLAGS, DEMO_LABEL),
    ],
)
def test_label_defaults_come_from_the_model(contract, schema, flags, expected):
    config = feedback.FeedbackConfig("p", "f", "o", **flags)
    assert feedback.label_spec(config, contract, schema) == expected


@pytest.mark.parametrize(
    ("contract", "schema", "flags", "error", "message"),
    [
        (None, None, {}, cli.JobError, "names no raw label column; pass --label_column"),
        (
            _contract(model_contract.BINARY, "heavy"),
            _schema("heavy", schema_pb2.BYTES),
            {},
            cli.JobError,
            "cannot tell the values of the binary label heavy of the model: its contract names "
            "no two classes and its raw schema does not type the label INT; pass --positive_value "
            "and --negative_value",
        ),
        (
            _contract(model_contract.BINARY, "heavy"),
            _schema("heavy", schema_pb2.INT),
            {"positive_value": "Yes"},
            click.BadParameter,
            "column 'heavy': 'Yes' is not an integer",
        ),
        (
            _contract(model_contract.MULTICLASS, "species", ANIMALS),
            None,
            {"positive_value": "owl"},
            click.BadParameter,
            "applies to binary models; the model is multiclass_classification",
        ),
    ],
)
def test_label_without_defaults_or_with_unfit_flags_is_one_error(
    contract, schema, flags, error, message
):
    config = feedback.FeedbackConfig("p", "f", "o", **flags)
    with pytest.raises(error) as raised:
        feedback.label_spec(config, contract, schema)
    assert message in str(raised.value)


def _animal_predictions(model_dir, animals_csv, tmp_path) -> list[dict]:
    """The animals of `animals_input` scored by `model_dir` into tmp_path/predictions."""
    source = animals_input(animals_csv, tmp_path / "animals.csv")
    score_animals(model_dir, source, tmp_path / "predictions")
    records_ = read_jsonl(tmp_path / "predictions" / "predictions")
    return sorted(records_, key=lambda record: int(record["tracking_id"]))


def _span(output_dir) -> dict[str, dict]:
    """The examples of a feedback output by animal_id, as JSON features."""
    examples = {}
    for path in sorted(output_dir.glob("*/data-*.tfrecord.gz")):
        for record in artifacts.read_tfrecords(str(path)):
            features = example_json.example_to_json(tf.train.Example.FromString(record))
            examples[str(features["animal_id"][0])] = features
    return examples


def _check_types_as_transform_does(output_dir, schema_path) -> None:
    """The feedback span's feature types against the schema, the check transform makes first."""
    schema = tfdv_io.read_schema(str(schema_path))
    found = feature_types.types_in_examples(
        str(path) for path in output_dir.glob("*/data-*.tfrecord.gz")
    )
    feature_types.check_against_schema(found, schema, str(output_dir), str(schema_path))


def test_multiclass_feedback_takes_class_names(
    animals_trained, animals_csv, animals_schema, tmp_path
):
    predictions = _animal_predictions(animals_trained("multiclass"), animals_csv, tmp_path)
    ids = [p["tracking_id"] for p in predictions]
    events = [
        (ids[0], "label", "owl", None),
        (ids[1], "correction", "dog", None),
        *[(ids[2], "implicit", None, None)] * MIN_IMPLICIT,
        (ids[3], "wrong", None, None),
        (ids[4], "label", "fish", None),
        (ids[5], "implicit", None, None),
        (ids[6], "label", "cat", "2024-01-01"),
        (ids[6], "correction", "dog", "2024-01-02"),
    ]
    source = tmp_path / "feedback.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tracking_id", "kind", "value", "timestamp"])
        writer.writerows(events)
    output_dir = tmp_path / "span"
    config = feedback.FeedbackConfig(str(tmp_path / "predictions"), str(source), str(output_dir))
    manifest = feedback.run(config, direct_options())  # No label flag: the model's contract.
    assert manifest.extra["label"] == {
        "column": "species",
        "task": model_contract.MULTICLASS,
        "values": artifacts.read_manifest(str(tmp_path / "predictions")).extra["classes"],
        "type": "BYTES",
    }
    counts = manifest.counts
    assert (counts["feedback_rows_read"], counts["feedback_rows_used"]) == (10, 8)
    assert (counts["feedback_rows_rejected"], counts["ids_labelled"]) == (2, 4)
    assert counts["ids_without_label"] == 1
    reasons = [r["reason"] for r in read_jsonl(output_dir / "rejected")]
    assert "'wrong' has no one opposite label on a multiclass_classification" in reasons[0]
    assert "value 'fish' is not a class (" in reasons[1]
    examples = _span(output_dir)
    assert {i: e["species"] for i, e in examples.items()} == {
        ids[0]: ["owl"],
        ids[1]: ["dog"],
        ids[2]: [predictions[2]["top_class"]],
        ids[6]: ["dog"],
    }
    by_id = {p["tracking_id"]: p for p in predictions}
    assert all(e == dict(by_id[i]["features"], species=e["species"]) for i, e in examples.items())
    provenance = {p["tracking_id"]: p for p in read_jsonl(output_dir / "provenance")}
    assert provenance[ids[2]]["top_class"] == predictions[2]["top_class"]
    _check_types_as_transform_does(output_dir, animals_schema)


def test_binary_feedback_on_an_int_label_writes_integers(
    animals_trained, animals_csv, animals_schema, tmp_path
):
    predictions = _animal_predictions(animals_trained("binary"), animals_csv, tmp_path)
    ids = [p["tracking_id"] for p in predictions]
    lines = [
        {"tracking_id": ids[0], "kind": "label", "value": 1},
        {"tracking_id": ids[1], "kind": "correction", "value": "no"},
        {"tracking_id": ids[2], "kind": "wrong"},
        *[{"tracking_id": ids[3], "kind": "implicit"}] * MIN_IMPLICIT,
        {"tracking_id": ids[4], "kind": "label", "value": "heavy"},
    ]
    source = tmp_path / "feedback.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output_dir = tmp_path / "span"
    config = feedback.FeedbackConfig(str(tmp_path / "predictions"), str(source), str(output_dir))
    manifest = feedback.run(config, direct_options())
    assert manifest.extra["label"] == {
        "column": "heavy",
        "task": model_contract.BINARY,
        "values": ["0", "1"],
        "type": "INT",
    }
    assert manifest.counts["feedback_rows_rejected"] == 1
    flipped = 0 if predictions[2]["score"] >= feedback.DECISION_THRESHOLD else 1
    assert {i: e["heavy"] for i, e in _span(output_dir).items()} == {
        ids[0]: [1],
        ids[1]: [0],
        ids[2]: [flipped],
        ids[3]: [1],
    }
    _check_types_as_transform_does(output_dir, animals_schema)


def _fake_predictions(directory, extra: dict) -> None:
    """A finished infer output of two binary predictions, its manifest's own fields `extra`."""
    with artifacts.StagedOutput(str(directory), "infer") as staged:
        lines = [
            {"tracking_id": f"id-{i}", "score": 0.75, "features": {"animal_id": [i]}}
            for i in range(2)
        ]
        path = pathlib.Path(staged.path("predictions", "predictions-00000-of-00001.jsonl"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        staged.publish(inputs={}, parameters={}, counts={}, extra=extra)


def test_without_the_predicting_model_binary_labels_come_from_the_flags(tmp_path):
    source = tmp_path / "feedback.jsonl"
    source.write_text('{"tracking_id": "id-1", "kind": "wrong"}\n')
    gone = {"path": str(tmp_path / "deleted_model")}
    _fake_predictions(tmp_path / "binary", {"model": gone, "task": model_contract.BINARY})
    args = [f"--feedback={source}", f"--output_dir={tmp_path / 'out'}"]
    result = CliRunner().invoke(feedback.main, [f"--predictions={tmp_path / 'binary'}", *args])
    assert result.exit_code == cli.EXIT_ERROR
    assert "names no raw label column; pass --label_column" in result.output
    flags = ["--label_column=heavy", "--positive_value=1", "--negative_value=0"]
    result = CliRunner().invoke(
        feedback.main, [f"--predictions={tmp_path / 'binary'}", *args, *flags]
    )
    assert result.exit_code == 0, result.output
    (example,) = _span_examples(tmp_path / "out")
    assert example["heavy"] == ["0"]  # No raw schema: the label is text.
    _fake_predictions(tmp_path / "multi", {"model": gone, "task": model_contract.MULTICLASS})
    result = CliRunner().invoke(
        feedback.main, [f"--predictions={tmp_path / 'multi'}", *args, *flags]
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert result.output == (
        f"error: --predictions: the multiclass_classification model that made them, "
        f"{gone['path']}, is gone; its contract names the labels: put the model back at that "
        "path\n"
    )


def _span_examples(output_dir) -> list[dict]:
    return [
        example_json.example_to_json(tf.train.Example.FromString(record))
        for path in sorted(output_dir.glob("*/data-*.tfrecord.gz"))
        for record in artifacts.read_tfrecords(str(path))
    ]
