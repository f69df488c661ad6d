"""Feedback: what users said about predictions, joined to them, as labelled examples for training.

    python -m beam_jobs.feedback --predictions=out/predictions --feedback='feedback/*.jsonl' \
        --output_dir=out/feedback [--min_implicit_events=3] [--splits=train:2,eval:1] \
        [--label_column=<raw label>] [--positive_value=<label>] [--negative_value=<label>]

Feedback records (CSV with a header row, or JSON lines) carry `tracking_id`, `kind`, `value` and
`timestamp` (ISO 8601, optional; without a zone it is UTC). The kinds:

- `label`: the record's true label, from a person or a later outcome; `value` is the label.
- `correction`: a user corrected the prediction; `value` is the correct label.
- `wrong`: the prediction was wrong, no value; on a binary task (one score) the label is the
  opposite of the predicted one, where a score of at least 0.5 predicts the positive label.
  Other tasks have no one opposite: there a `wrong` is rejected (give a `correction`).
- `implicit`: an implicit positive signal (a click, an accepted suggestion), no value: on a
  binary task it makes the positive label, on a multi-class task it confirms the predicted top
  class; a regression prediction takes none.

The label (`label_spec`) is what the model that made the predictions says of itself (infer's
manifest names the model; its `model_contract` and raw schema): `--label_column` defaults to the
contract's raw label key. Binary: a `value` is 1/0, true/false, yes/no or one of the two label
values, `--negative_value`/`--positive_value`, by default the contract's classes 0 and 1, else
`0`/`1` when the raw schema types the label INT; with neither, the flags are needed. Multi-class:
a `value` is a class name, one of the contract's classes when it names them. Regression: a number.
The label column is written with the label's raw type (int64 for an INT label, float for FLOAT,
else bytes), so transform reads feedback as it reads ingest's data.

Per tracking id (`decide_label`, the book's rules made precise): the latest `label` or `correction`
decides (by timestamp, then input order); else a `wrong` flips the predicted label; else at least
`--min_implicit_events` implicit events make a positive (the top class), and fewer make nothing:
absence of a signal is never a negative.

Feedback is joined to `infer`'s predictions by tracking id (CoGroupByKey). Writes, in ingest's
layout so `statistics`, `validate` and `transform` take it as the next span:

- `<split>/data-*.tfrecord.gz`: the example the model scored, with `--label_column` set to the
  decided label; splits by the same hash of the serialized example as ingest;
- `provenance/`: per labelled example its tracking id, split, label, deciding rule, and the model
  name, version and fingerprint that made the prediction (beside the examples, not in them, so the
  examples keep the schema of the training data);
- `unmatched/`: feedback whose tracking id matches no prediction;
- `rejected/`: feedback that cannot be used (unknown kind, bad value or timestamp, no id), and
  feedback on an id that names several different predictions, with reasons;
- `manifest.json`: the label (column, task, values, type), counts that add up (feedback rows
  read = used + unmatched + rejected).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import click
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs.lib import artifacts, cli, layout, model_contract, records, shards, sources
from beam_jobs.lib.example_json import example_from_json
from beam_jobs.lib.splits import DEFAULT_SPLITS, Split, assign_split, parse_splits
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "DEFAULT_MIN_IMPLICIT_EVENTS",
    "KINDS",
    "Decision",
    "Event",
    "FeedbackConfig",
    "FeedbackPlan",
    "LabelSpec",
    "Relabel",
    "build_pipeline",
    "decide_label",
    "label_spec",
    "labelled_example",
    "main",
    "parse_event",
    "parse_label",
    "plan_feedback",
    "run",
]

STAGE = "feedback"
LABEL, CORRECTION, WRONG, IMPLICIT = "label", "correction", "wrong", "implicit"
KINDS = (LABEL, CORRECTION, WRONG, IMPLICIT)
EXPLICIT_KINDS = (LABEL, CORRECTION)
TRACKING_ID, KIND, VALUE, TIMESTAMP = "tracking_id", "kind", "value", "timestamp"
DEFAULT_MIN_IMPLICIT_EVENTS = 3
DECISION_THRESHOLD = 0.5
PROVENANCE_DIR = "provenance"
UNMATCHED_DIR = "unmatched"
_RESERVED_SPLITS = (PROVENANCE_DIR, UNMATCHED_DIR, layout.REJECTED_DIR)
_TRUE_TEXT = ("1", "true", "yes")
_FALSE_TEXT = ("0", "false", "no")
_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)
_JSONL = layout.JSONL_SUFFIX
_PREDICTIONS, _FEEDBACK, _TALLY = "predictions", "feedback", "tally"
_MODEL_KEYS = ("model_name", "model_version", "model_fingerprint")
# A multi-class prediction's own keys, copied into provenance beside `score` when present.
_PREDICTED_KEYS = ("top_class", "top_class_id")


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    """The feedback job's parameters, as given on the command line."""

    predictions: str
    feedback: str
    output_dir: str
    min_implicit_events: int = DEFAULT_MIN_IMPLICIT_EVENTS
    splits: str = DEFAULT_SPLITS
    label_column: str | None = None
    positive_value: str | None = None
    negative_value: str | None = None
    input_format: str | None = None
    compression: str = records.AUTO


@dataclasses.dataclass(frozen=True)
class Event:
    """One feedback record: id, kind, label (label and correction only: the label value written),
    value as given, time, and origin (feedback file index, line)."""

    tracking_id: str
    kind: str
    label: str | None = None
    timestamp: datetime.datetime | None = None
    origin: tuple[int, int] = (0, 0)
    value: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The label feedback gives a prediction (the value written), and the kind that decided it."""

    label: str
    rule: str


def _text(value: Any) -> str | None:
    """A feedback field as text: bytes decoded, numbers written out, empty as None."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple)):
        return _text(value[0]) if len(value) == 1 else str(value)
    return str(value)


def parse_label(value: Any, positive_value: str, negative_value: str) -> int:
    """A label value as 1 or 0.

    Raises:
        ValueError: the value is none of 1/0, true/false, yes/no, or the two label values.
    """
    text = _text(value)
    folded = text.strip().lower() if text is not None else ""
    if folded in (*_TRUE_TEXT, positive_value.lower()):
        return 1
    if folded in (*_FALSE_TEXT, negative_value.lower()):
        return 0
    accepted = f"1/0, true/false, yes/no, {positive_value}/{negative_value}"
    raise ValueError(f"value {text!r} is not a label ({accepted})")


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """The label feedback writes: its column, the task, the values it takes and its raw type.

    Attributes:
        column: the raw feature the label goes in.
        task: the task of the model that made the predictions (one of `model_contract.TASKS`).
        values: binary: (negative value, positive value); multi-class: the class names by index,
            empty when unknown (any value of the label's type is taken); regression: empty.
        raw_type: the label's type in the raw schema; the label is written with it.
    """

    column: str
    task: str = model_contract.BINARY
    values: tuple[str, ...] = ()
    raw_type: records.ColumnType = records.ColumnType.BYTES

    def feature(self, label: str) -> tf.train.Feature:
        """The label feature holding `label`, of the label's raw type.

        Raises:
            ValueError: `label` does not fit the type; the message names the column.
        """
        example = records.encode_example({self.column: label}, {self.column: self.raw_type})
        return example.features.feature[self.column]

    def parse(self, value: Any) -> str:
        """A `label` or `correction` value as the label written.

        Raises:
            ValueError: the value is not a label of this task (binary: `parse_label`; multi-class:
                not one of the classes; a value that does not fit the label's type).
        """
        if self.task == model_contract.BINARY:
            negative, positive = self.values
            return self.values[parse_label(value, positive, negative)]
        text = _text(value)
        label = text.strip() if text is not None else ""
        if not label:
            raise ValueError(f"value {text!r} is not a label")
        if self.values and label not in self.values:
            raise ValueError(f"value {label!r} is not a class ({', '.join(self.values)})")
        self.feature(label)
        return label

    def check_kind(self, kind: str) -> None:
        """Refuses feedback kinds the task has no label for.

        Raises:
            ValueError: `wrong` on a task other than binary, `implicit` on regression.
        """
        if kind == WRONG and self.task != model_contract.BINARY:
            raise ValueError(
                f"'{WRONG}' has no one opposite label on a {self.task} prediction; "
                f"give a '{CORRECTION}' with the right label"
            )
        if kind == IMPLICIT and self.task == model_contract.REGRESSION:
            raise ValueError(f"'{IMPLICIT}' gives no label to a regression prediction")

    def predicted(self, prediction: Mapping[str, Any]) -> str:
        """The label a prediction record predicts (binary: by `DECISION_THRESHOLD`; multi-class:
        its top class, which must be a label of this spec).

        Raises:
            ValueError: the record does not hold a prediction of this task.
        """
        score = prediction.get("score")
        if self.task == model_contract.BINARY:
            if not isinstance(score, (int, float)):
                raise ValueError(
                    f"a binary label needs a binary prediction (one score), not {score!r}"
                )
            return self.values[1 if score >= DECISION_THRESHOLD else 0]
        if self.task == model_contract.MULTICLASS:
            top_class = prediction.get("top_class")
            scores = prediction.get("scores", score)
            if top_class is None and isinstance(scores, list) and scores:
                top = scores.index(max(scores))
                top_class = self.values[top] if top < len(self.values) else str(top)
            if top_class is not None:
                return self.parse(top_class)  # The predicted class as a label: checked.
        raise ValueError(f"the prediction {score!r} has no predicted {self.task} label")


def _parse_timestamp(value: Any) -> datetime.datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def parse_event(
    values: Mapping[str, Any], spec: LabelSpec, origin: tuple[int, int] = (0, 0)
) -> Event:
    """One feedback record's columns as an `Event`.

    Raises:
        ValueError: no tracking id, an unknown kind or one the task takes none of, a label kind
            without a label value of the task, or a timestamp that is not ISO 8601; the message
            says which.
    """
    tracking = _text(values.get(TRACKING_ID))
    if tracking is None:
        raise ValueError(f"no {TRACKING_ID}")
    kind = (_text(values.get(KIND)) or "").strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    spec.check_kind(kind)
    label = spec.parse(values.get(VALUE)) if kind in EXPLICIT_KINDS else None
    timestamp = _parse_timestamp(values.get(TIMESTAMP))
    return Event(tracking.strip(), kind, label, timestamp, origin, _text(values.get(VALUE)))


def _latest(events: Iterable[Event]) -> Event:
    return max(events, key=lambda event: (event.timestamp or _EPOCH, event.origin))


def decide_label(
    prediction: Mapping[str, Any],
    events: Sequence[Event],
    min_implicit_events: int,
    spec: LabelSpec,
) -> Decision | None:
    """The label feedback gives one prediction, or None when it gives none.

    Args:
        prediction: infer's record of the prediction (`score`, and `top_class` on multi-class).
        events: every feedback event on the record.
        min_implicit_events: implicit events needed for a positive (binary) or the top class.
        spec: the label, its task and values.

    Raises:
        ValueError: `wrong` or `implicit` decides, and the record holds no prediction of the task
            (a binary task's `wrong` on several scores).
    """
    explicit = [event for event in events if event.kind in EXPLICIT_KINDS]
    if explicit:
        latest = _latest(explicit)
        return Decision(latest.label, latest.kind)
    if any(event.kind == WRONG for event in events):
        negative, positive = spec.values
        return Decision(negative if spec.predicted(prediction) == positive else positive, WRONG)
    implicit = sum(event.kind == IMPLICIT for event in events)
    if implicit and implicit >= min_implicit_events:
        if spec.task == model_contract.BINARY:
            return Decision(spec.values[1], IMPLICIT)
        return Decision(spec.predicted(prediction), IMPLICIT)
    return None


def labelled_example(features: Mapping[str, list[Any]], spec: LabelSpec, label: str) -> bytes:
    """The serialized example the model saw, with the label column set to `label` (of the label's
    raw type), deterministically."""
    example = example_from_json(features)
    example.features.feature[spec.column].CopyFrom(spec.feature(label))
    return example.SerializeToString(deterministic=True)


class _ParseEvents(beam.DoFn):
    """`RawRow` of feedback → (tracking id, Event), or (origin, rejected line) tagged rejected."""

    def __init__(self, files: tuple[sources.InputFile, ...], spec: LabelSpec) -> None:
        self._index = {item.path: item.index for item in files}
        self._spec = spec

    def process(self, row: records.RawRow) -> Iterator[Any]:
        origin = (self._index[row.file], row.line)
        try:
            if row.error:
                raise ValueError(row.error)
            event = parse_event(row.values, self._spec, origin)
        except ValueError as error:
            line = sources.rejected_line(row.file, row.line, str(error), row.raw or row.values)
            yield beam.pvalue.TaggedOutput(layout.REJECTED_DIR, (origin, line))
            return
        yield event.tracking_id, event


def _prediction_entries(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(tracking id, prediction record) of every line of one predictions file."""
    with FileSystems.open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line.decode("utf-8"))
                yield record["tracking_id"], record


@dataclasses.dataclass(frozen=True)
class FeedbackPlan:
    """Everything resolved before the pipeline runs."""

    config: FeedbackConfig
    label: LabelSpec
    prediction_files: tuple[str, ...]
    feedback_files: tuple[sources.InputFile, ...]
    feedback_format: str
    splits: tuple[Split, ...]


def _tally(name: str, count: int = 1) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput(_TALLY, (f"{_TALLY}:{name}", count))


class _JoinFeedback(beam.DoFn):
    """(tracking id, {predictions, feedback}) → a labelled example and its provenance, or asides."""

    def __init__(self, plan: FeedbackPlan) -> None:
        self._plan = plan
        self._paths = {item.index: item.path for item in plan.feedback_files}

    def _aside(self, directory: str, events: Iterable[Event], reason: str) -> Iterator[Any]:
        for event in events:
            file, line = self._paths[event.origin[0]], event.origin[1]
            row = {
                TRACKING_ID: event.tracking_id,
                KIND: event.kind,
                VALUE: event.value,
                TIMESTAMP: event.timestamp.isoformat() if event.timestamp else None,
            }
            yield beam.pvalue.TaggedOutput(
                directory,
                ((directory, 0), (event.origin, sources.rejected_line(file, line, reason, row))),
            )

    def process(self, joined: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        tracking, grouped = joined
        events = list(grouped[_FEEDBACK])
        if not events:
            return
        distinct = {json.dumps(p, sort_keys=True): p for p in grouped[_PREDICTIONS]}
        if not distinct:
            yield from self._aside(UNMATCHED_DIR, events, "no prediction has this tracking_id")
            return
        if len(distinct) > 1:
            reason = f"tracking_id names {len(distinct)} different predictions"
            yield from self._aside(layout.REJECTED_DIR, events, reason)
            return
        (prediction,) = distinct.values()
        try:
            decision = decide_label(
                prediction, events, self._plan.config.min_implicit_events, self._plan.label
            )
        except ValueError as error:
            yield from self._aside(layout.REJECTED_DIR, events, str(error))
            return
        yield _tally("feedback_used", len(events))
        if decision is None:
            yield _tally("ids_without_label")
            return
        yield from self._labelled(tracking, prediction, decision, len(events))

    def _labelled(
        self, tracking: str, prediction: dict[str, Any], decision: Decision, events: int
    ) -> Iterator[Any]:
        serialized = labelled_example(prediction["features"], self._plan.label, decision.label)
        split = assign_split(serialized, self._plan.splits)
        yield (split, 0), (tracking, serialized)
        provenance = {
            "tracking_id": tracking,
            "split": split,
            "label": decision.label,
            "rule": decision.rule,
            "events": events,
            "score": prediction["score"],
            **{key: prediction[key] for key in _PREDICTED_KEYS if key in prediction},
            **{key: prediction.get(key) for key in _MODEL_KEYS},
        }
        line = json.dumps(provenance, sort_keys=True)
        yield beam.pvalue.TaggedOutput(PROVENANCE_DIR, ((PROVENANCE_DIR, 0), (tracking, line)))
        yield _tally(f"rule:{decision.rule}")
        yield _tally(f"model:{prediction.get('model_name')}:{prediction.get('model_version')}")


class Relabel(beam.PTransform):
    """Feedback rows and predictions → keyed files of ingest's layout, and tallies.

    Input: a dict with `feedback` (`RawRow`s) and `predictions` ((tracking id, record)). Output: a
    dict of PCollections of ((directory, shard), (sort key, payload)): `examples`, `provenance`,
    `unmatched`, `rejected`; and `tally`, (name, count) pairs for the manifest.
    """

    def __init__(self, plan: FeedbackPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        events = inputs["feedback"] | "ParseEvents" >> beam.ParDo(
            _ParseEvents(self._plan.feedback_files, self._plan.label)
        ).with_outputs(layout.REJECTED_DIR, main="events")
        joined = (
            {_PREDICTIONS: inputs["predictions"], _FEEDBACK: events.events}
            | "JoinByTrackingId" >> beam.CoGroupByKey()
            | "ApplyRules"
            >> beam.ParDo(_JoinFeedback(self._plan)).with_outputs(
                PROVENANCE_DIR, UNMATCHED_DIR, layout.REJECTED_DIR, _TALLY, main="examples"
            )
        )
        rejected = events[layout.REJECTED_DIR] | "KeyRejected" >> beam.Map(
            lambda keyed: ((layout.REJECTED_DIR, 0), keyed)
        )
        return {
            "examples": joined.examples,
            "provenance": joined[PROVENANCE_DIR],
            "unmatched": joined[UNMATCHED_DIR],
            "rejected": (rejected, joined[layout.REJECTED_DIR])
            | "FlattenRejected" >> beam.Flatten(),
            "tally": joined[_TALLY],
        }


def _count(pcoll: beam.PCollection, name: str) -> beam.PCollection:
    return (
        pcoll
        | f"Count{name}" >> beam.combiners.Count.Globally()
        | f"Key{name}" >> beam.Map(lambda count: (f"{_TALLY}:{name}", count))
    )


def build_pipeline(pipeline: beam.Pipeline, plan: FeedbackPlan, staging_dir: str) -> None:
    """Adds the feedback graph to `pipeline`: examples, asides and counts under `staging_dir`."""
    rows = pipeline | "ReadFeedback" >> sources.ReadRawRows(
        plan.feedback_files, plan.feedback_format
    )
    predictions = (
        pipeline
        | "ListPredictions" >> beam.Create(plan.prediction_files)
        | "ReadPredictions" >> beam.FlatMap(_prediction_entries)
    )
    relabelled = {"feedback": rows, "predictions": predictions} | "Relabel" >> Relabel(plan)
    written = [
        relabelled["examples"]
        | "WriteExamples"
        >> shards.WriteSortedShards(
            staging_dir, lambda _: 1, layout.EXAMPLES_FILE, shards.write_tfrecord_shard
        )
    ]
    for name, directory in (
        ("provenance", PROVENANCE_DIR),
        ("unmatched", UNMATCHED_DIR),
        ("rejected", layout.REJECTED_DIR),
    ):
        written.append(
            relabelled[name]
            | f"Write{name.title()}"
            >> shards.WriteSortedShards(
                staging_dir, lambda _: 1, (directory, _JSONL), shards.write_jsonl_shard
            )
        )
    _ = (
        (
            *written,
            relabelled["tally"],
            _count(rows, "feedback_read"),
            _count(predictions, "predictions_read"),
        )
        | "FlattenCounts" >> beam.Flatten()
        | "Counts" >> WriteCounts(staging_dir)
    )


def _label_type(raw_schema: schema_pb2.Schema | None, column: str, task: str) -> records.ColumnType:
    """The label's raw type: the raw schema's, else FLOAT for regression and BYTES otherwise."""
    types = records.schema_column_types(raw_schema) if raw_schema is not None else {}
    if column in types:
        return types[column]
    return (
        records.ColumnType.FLOAT if task == model_contract.REGRESSION else records.ColumnType.BYTES
    )


def _binary_values(
    config: FeedbackConfig,
    contract: model_contract.ModelContract | None,
    raw_type: records.ColumnType,
    label: str,
) -> tuple[str, str]:
    """(negative, positive): the flags, else the contract's classes 0 and 1, else 0/1 for INT.

    Raises:
        cli.JobError: no flag and nothing to take them from.
        click.BadParameter: the two values are the same.
    """
    defaults: tuple[str | None, str | None] = (None, None)
    if contract is not None and contract.classes is not None and len(contract.classes) == 2:
        defaults = (contract.classes[0], contract.classes[1])
    elif raw_type is records.ColumnType.INT:
        defaults = ("0", "1")
    negative = config.negative_value or defaults[0]
    positive = config.positive_value or defaults[1]
    if negative is None or positive is None:
        raise cli.JobError(
            f"cannot tell the values of the binary label {label}: "
            "its contract names no two classes and its raw schema does not type the label INT; "
            "pass --positive_value and --negative_value"
        )
    if positive.lower() == negative.lower():
        raise click.BadParameter(
            f"the same as --positive_value={positive}", param_hint="--negative_value"
        )
    return negative, positive


def label_spec(
    config: FeedbackConfig,
    contract: model_contract.ModelContract | None,
    raw_schema: schema_pb2.Schema | None,
    model: str = "the model",
) -> LabelSpec:
    """The label feedback writes: the flags, else what the model says of itself.

    Args:
        config: the job's flags (`label_column`, `positive_value`, `negative_value`).
        contract: the contract of the model that made the predictions, None without one (then
            the task is binary and the flags are needed).
        raw_schema: that model's raw schema, None without one.
        model: how errors name the model.

    Raises:
        cli.JobError: no label column or label values given or found.
        click.BadParameter: values that do not fit the label's type or task.
    """
    column = config.label_column or (contract.label_key if contract else None)
    if not column:
        raise cli.JobError(f"{model} names no raw label column; pass --label_column")
    task = contract.task if contract else model_contract.BINARY
    raw_type = _label_type(raw_schema, column, task)
    if task == model_contract.BINARY:
        label = f"{column} of {model}"
        values: tuple[str, ...] = _binary_values(config, contract, raw_type, label)
    elif config.positive_value or config.negative_value:
        flag = "--positive_value" if config.positive_value else "--negative_value"
        raise click.BadParameter(f"applies to binary models; {model} is {task}", param_hint=flag)
    else:
        values = (contract.classes or ()) if task == model_contract.MULTICLASS else ()
    spec = LabelSpec(column, task, tuple(values), raw_type)
    _check_values(spec, config, model)
    return spec


def _check_values(spec: LabelSpec, config: FeedbackConfig, model: str) -> None:
    """Checks every label value fits the label's raw type.

    Raises:
        click.BadParameter: a `--positive_value`/`--negative_value` that does not fit.
        cli.JobError: a class of the model's contract that does not fit.
    """
    flags = {config.negative_value: "--negative_value", config.positive_value: "--positive_value"}
    for value in spec.values:
        try:
            spec.feature(value)
        except ValueError as error:
            if value in flags:
                raise click.BadParameter(str(error), param_hint=flags[value]) from None
            raise cli.JobError(f"{model}: class {error}") from None


def _prediction_model(
    manifest: artifacts.Manifest,
) -> tuple[model_contract.ModelContract | None, schema_pb2.Schema | None, str]:
    """The contract and raw schema of the model infer's manifest names, and how to name it.

    Without the model, the labels are binary, from the flags.

    Raises:
        cli.JobError: the model's contract or raw schema cannot be read, or the model is gone
            and infer recorded a task other than binary, whose labels need its contract.
    """
    model = manifest.extra.get("model") or {}
    path = model.get("path") if isinstance(model, dict) else None
    if not path:
        return None, None, "the model that made the predictions (infer's manifest names none)"
    if not FileSystems.exists(path):
        task = manifest.extra.get("task")
        if task not in (None, model_contract.BINARY):
            raise cli.JobError(
                f"--predictions: the {task} model that made them, {path}, is gone; its "
                "contract names the labels: put the model back at that path"
            )
        return None, None, f"the model that made the predictions ({path}, which is gone)"
    contract = model_contract.read_contract(path)
    raw_schema = model_contract.read_raw_schema(path)
    return contract, raw_schema, f"the model that made the predictions ({path})"


def plan_feedback(config: FeedbackConfig) -> FeedbackPlan:
    """Resolves prediction files, feedback files and format, splits and the label, failing early.

    Raises:
        cli.JobError: the predictions are not a finished infer output, no feedback file, no
            label column or values given or found.
        click.BadParameter: bad splits, or label values that cannot be (the same positive and
            negative value, a value not of the label's type).
    """
    manifest = artifacts.read_manifest(config.predictions, flag="predictions", stages=("infer",))
    prediction_files = tuple(
        item.path
        for item in artifacts.list_files(
            FileSystems.join(config.predictions, layout.PREDICTIONS_DIR, f"*{_JSONL}")
        )
    )
    if not prediction_files:
        raise cli.JobError(f"--predictions={config.predictions} holds no {layout.PREDICTIONS_DIR}/")
    paths = [item.path for item in artifacts.list_files(config.feedback)]
    if not paths:
        raise cli.JobError(f"--feedback: no file matches {config.feedback}")
    sources.refuse_directory(config.feedback, paths, config.input_format, flag="feedback")
    feedback_format = config.input_format or records.detect_format(paths)
    records.check_compression(feedback_format, config.compression)
    splits = parse_splits(config.splits)
    reserved = [split.name for split in splits if split.name in _RESERVED_SPLITS]
    if reserved:
        raise click.BadParameter(f"{reserved[0]!r} is a reserved name", param_hint="--splits")
    return FeedbackPlan(
        config=config,
        label=label_spec(config, *_prediction_model(manifest)),
        prediction_files=prediction_files,
        feedback_files=tuple(
            sources.InputFile(index, path, compression=config.compression)
            for index, path in enumerate(paths)
        ),
        feedback_format=feedback_format,
        splits=splits,
    )


def _shard_sets(plan: FeedbackPlan) -> list[shards.ShardSet]:
    """Every file the output names: one per split, and one per aside."""
    return [
        *(shards.ShardSet(split.name, layout.EXAMPLES_FILE, 1) for split in plan.splits),
        *(
            shards.ShardSet(directory, (directory, _JSONL), 1, shards.write_jsonl_shard)
            for directory in (PROVENANCE_DIR, UNMATCHED_DIR, layout.REJECTED_DIR)
        ),
    ]


def _manifest_counts(raw: Mapping[str, int], plan: FeedbackPlan) -> dict[str, Any]:
    """The manifest's counts from the pipeline's, checked to add up.

    Raises:
        cli.JobError: they do not add up, or no feedback row was read.
    """
    tally = {key.split(":", 1)[1]: n for key, n in raw.items() if key.startswith(f"{_TALLY}:")}
    by_rule = {kind: tally.get(f"rule:{kind}", 0) for kind in KINDS}
    counts = {
        "feedback_rows_read": tally.get("feedback_read", 0),
        "feedback_rows_used": tally.get("feedback_used", 0),
        "feedback_rows_unmatched": raw.get(UNMATCHED_DIR, 0),
        "feedback_rows_rejected": raw.get(layout.REJECTED_DIR, 0),
        "predictions_read": tally.get("predictions_read", 0),
        "ids_labelled": raw.get(PROVENANCE_DIR, 0),
        "ids_without_label": tally.get("ids_without_label", 0),
        "labels_by_rule": by_rule,
        "rows_written": {split.name: raw.get(split.name, 0) for split in plan.splits},
    }
    read = counts["feedback_rows_read"]
    parts = [counts[f"feedback_rows_{part}"] for part in ("used", "unmatched", "rejected")]
    labelled = {counts["ids_labelled"], sum(by_rule.values()), sum(counts["rows_written"].values())}
    if read != sum(parts) or len(labelled) != 1:
        raise cli.JobError(f"counts do not add up: {counts}; nothing was published")
    if read == 0:
        raise cli.JobError(f"--feedback={plan.config.feedback} holds no rows")
    return counts


def _models(raw: Mapping[str, int]) -> list[dict[str, Any]]:
    """Examples per model name and version that made the relabelled predictions."""
    prefix = f"{_TALLY}:model:"
    models = []
    for key, count in sorted(raw.items()):
        if key.startswith(prefix):
            name, version = key[len(prefix) :].rsplit(":", 1)
            number = int(version) if version.isdigit() else None
            models.append({"model_name": name, "model_version": number, "examples": count})
    return models


def run(config: FeedbackConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the feedback job and publishes its output directory.

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: bad inputs, or counts that do not add up.
    """
    staged = artifacts.StagedOutput(
        config.output_dir, STAGE, inputs=[config.predictions, config.feedback]
    )
    plan = plan_feedback(config)
    logging.info(
        "feedback: %d %s file(s) against %s",
        len(plan.feedback_files),
        plan.feedback_format,
        config.predictions,
    )
    with staged:
        raw = run_beam_stage(
            staged, options, lambda pipeline: build_pipeline(pipeline, plan, staged.staging_dir)
        )
        counts = _manifest_counts(raw, plan)
        shards.complete_shards(staged.staging_dir, _shard_sets(plan))
        manifest = staged.publish(
            inputs={
                "predictions": artifacts.input_fingerprint(config.predictions),
                "feedback": [artifacts.file_fingerprint(item.path) for item in plan.feedback_files],
            },
            parameters={
                **dataclasses.asdict(config),
                "input_format": plan.feedback_format,
                "splits": {split.name: split.weight for split in plan.splits},
            },
            counts=counts,
            extra={
                "splits": [split.name for split in plan.splits],
                "models": _models(raw),
                "label": {
                    "column": plan.label.column,
                    "task": plan.label.task,
                    "values": list(plan.label.values),
                    "type": plan.label.raw_type.name,
                },
            },
        )
    logging.info("feedback: %s -> %s", counts, config.output_dir)
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option("--predictions", required=True, help="Output directory of beam_jobs.infer.")
@click.option(
    "--feedback",
    "feedback_pattern",
    required=True,
    help="File pattern of feedback (CSV or JSON lines: tracking_id, kind, value, timestamp).",
)
@click.option(
    "--output_dir",
    required=True,
    help="Directory to write <split>/, provenance/, unmatched/, rejected/ and manifest.json.",
)
@click.option(
    "--min_implicit_events",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_IMPLICIT_EVENTS,
    help="Implicit events on one prediction that make a positive label.",
)
@click.option("--splits", default=DEFAULT_SPLITS, help="Split names and hash-bucket weights.")
@click.option(
    "--label_column",
    default=None,
    help="Column the label goes in [default: the predicting model's raw label].",
)
@click.option(
    "--positive_value",
    default=None,
    help="Label of a positive (binary) [default: the model's class 1; 1 for an INT label].",
)
@click.option(
    "--negative_value",
    default=None,
    help="Label of a negative (binary) [default: the model's class 0; 0 for an INT label].",
)
@sources.input_format_option("Feedback")
@sources.compression_option
def main(
    predictions: str,
    feedback_pattern: str,
    output_dir: str,
    min_implicit_events: int,
    splits: str,
    label_column: str | None,
    positive_value: str | None,
    negative_value: str | None,
    input_format: str | None,
    compression: str,
    beam_args: tuple[str, ...],
) -> None:
    config = FeedbackConfig(
        predictions=predictions,
        feedback=feedback_pattern,
        output_dir=output_dir,
        min_implicit_events=min_implicit_events,
        splits=splits,
        label_column=label_column,
        positive_value=positive_value,
        negative_value=negative_value,
        input_format=input_format,
        compression=compression,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
