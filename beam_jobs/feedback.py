"""Feedback: what users said about predictions, joined to them, as labelled examples for training.

    python -m beam_jobs.feedback --predictions=out/predictions --feedback='feedback/*.jsonl' \
        --output_dir=out/feedback [--min_implicit_events=3] [--splits=train:2,eval:1] \
        [--label_column=consumer_disputed] [--positive_value=Yes] [--negative_value=No]

Feedback records (CSV with a header row, or JSON lines) carry `tracking_id`, `kind`, `value` and
`timestamp` (ISO 8601, optional; without a zone it is UTC). The kinds:

- `label`: the record's true label, from a person or a later outcome; `value` is the label.
- `correction`: a user corrected the prediction; `value` is the correct label.
- `wrong`: the prediction was wrong, no value; on a binary task (one score) the label is the
  opposite of the predicted one, where a score of at least 0.5 predicts the positive label.
- `implicit`: an implicit positive signal (a click, an accepted suggestion), no value.

A label `value` is 1/0, true/false, yes/no or the `--positive_value`/`--negative_value` themselves.
Per tracking id (`decide_label`, the book's rules made precise): the latest `label` or `correction`
decides (by timestamp, then input order); else a `wrong` flips the predicted label; else at least
`--min_implicit_events` implicit events make a positive, and fewer make nothing: absence of a
signal is never a negative.

Feedback is joined to `infer`'s predictions by tracking id (CoGroupByKey). Writes, in ingest's
layout so `statistics`, `validate` and `transform` take it as the next span:

- `<split>/data-*.tfrecord.gz`: the example the model scored, with `--label_column` set to the
  positive or negative value; splits by the same hash of the serialized example as ingest;
- `provenance/`: per labelled example its tracking id, split, label, deciding rule, and the model
  name, version and fingerprint that made the prediction (beside the examples, not in them, so the
  examples keep the schema of the training data);
- `unmatched/`: feedback whose tracking id matches no prediction;
- `rejected/`: feedback that cannot be used (unknown kind, bad value or timestamp, no id), and
  feedback on an id that names several different predictions, with reasons;
- `manifest.json`: counts that add up (feedback rows read = used + unmatched + rejected).
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
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.lib import artifacts, cli, layout, records, shards, sources
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
    "Relabel",
    "build_pipeline",
    "decide_label",
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
# The demo model's label column and its values (model/features.py); other data sets pass their own.
DEFAULT_LABEL_COLUMN = "consumer_disputed"
DEFAULT_POSITIVE_VALUE = "Yes"
DEFAULT_NEGATIVE_VALUE = "No"
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


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    """The feedback job's parameters, as given on the command line."""

    predictions: str
    feedback: str
    output_dir: str
    min_implicit_events: int = DEFAULT_MIN_IMPLICIT_EVENTS
    splits: str = DEFAULT_SPLITS
    label_column: str = DEFAULT_LABEL_COLUMN
    positive_value: str = DEFAULT_POSITIVE_VALUE
    negative_value: str = DEFAULT_NEGATIVE_VALUE
    input_format: str | None = None
    compression: str = records.AUTO


@dataclasses.dataclass(frozen=True)
class Event:
    """One feedback record: id, kind, label (label and correction only), value as given, time, and
    origin (feedback file index, line)."""

    tracking_id: str
    kind: str
    label: int | None = None
    timestamp: datetime.datetime | None = None
    origin: tuple[int, int] = (0, 0)
    value: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The label feedback gives a prediction, and the kind of feedback that decided it."""

    label: int
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
    values: Mapping[str, Any],
    positive_value: str,
    negative_value: str,
    origin: tuple[int, int] = (0, 0),
) -> Event:
    """One feedback record's columns as an `Event`.

    Raises:
        ValueError: no tracking id, an unknown kind, a label kind without a label value, or a
            timestamp that is not ISO 8601; the message says which.
    """
    tracking = _text(values.get(TRACKING_ID))
    if tracking is None:
        raise ValueError(f"no {TRACKING_ID}")
    kind = (_text(values.get(KIND)) or "").strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    label = None
    if kind in EXPLICIT_KINDS:
        label = parse_label(values.get(VALUE), positive_value, negative_value)
    timestamp = _parse_timestamp(values.get(TIMESTAMP))
    return Event(tracking.strip(), kind, label, timestamp, origin, _text(values.get(VALUE)))


def _latest(events: Iterable[Event]) -> Event:
    return max(events, key=lambda event: (event.timestamp or _EPOCH, event.origin))


def decide_label(
    score: float | Sequence[float], events: Sequence[Event], min_implicit_events: int
) -> Decision | None:
    """The label feedback gives one prediction, or None when it gives none.

    Args:
        score: the model's score of the record (one probability on a binary task).
        events: every feedback event on the record.
        min_implicit_events: implicit events needed for a positive.

    Raises:
        ValueError: only `wrong` decides, and the prediction is not one binary score.
    """
    explicit = [event for event in events if event.kind in EXPLICIT_KINDS]
    if explicit:
        latest = _latest(explicit)
        return Decision(latest.label, latest.kind)
    if any(event.kind == WRONG for event in events):
        if isinstance(score, (list, tuple)):
            raise ValueError(f"'{WRONG}' needs a binary prediction (one score), not {score!r}")
        return Decision(0 if score >= DECISION_THRESHOLD else 1, WRONG)
    implicit = sum(event.kind == IMPLICIT for event in events)
    if implicit and implicit >= min_implicit_events:
        return Decision(1, IMPLICIT)
    return None


def labelled_example(features: Mapping[str, list[Any]], label_column: str, label: bytes) -> bytes:
    """The serialized example the model saw, with `label_column` set to `label` (deterministic)."""
    example = example_from_json(features)
    example.features.feature[label_column].bytes_list.value[:] = [label]
    return example.SerializeToString(deterministic=True)


class _ParseEvents(beam.DoFn):
    """`RawRow` of feedback → (tracking id, Event), or (origin, rejected line) tagged rejected."""

    def __init__(self, files: tuple[sources.InputFile, ...], config: FeedbackConfig) -> None:
        self._index = {item.path: item.index for item in files}
        self._positive = config.positive_value
        self._negative = config.negative_value

    def process(self, row: records.RawRow) -> Iterator[Any]:
        origin = (self._index[row.file], row.line)
        try:
            if row.error:
                raise ValueError(row.error)
            event = parse_event(row.values, self._positive, self._negative, origin)
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
        config = plan.config
        self._values = {1: config.positive_value.encode(), 0: config.negative_value.encode()}

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
                prediction["score"], events, self._plan.config.min_implicit_events
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
        config = self._plan.config
        label = self._values[decision.label]
        serialized = labelled_example(prediction["features"], config.label_column, label)
        split = assign_split(serialized, self._plan.splits)
        yield (split, 0), (tracking, serialized)
        provenance = {
            "tracking_id": tracking,
            "split": split,
            "label": label.decode(),
            "rule": decision.rule,
            "events": events,
            "score": prediction["score"],
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
            _ParseEvents(self._plan.feedback_files, self._plan.config)
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


def plan_feedback(config: FeedbackConfig) -> FeedbackPlan:
    """Resolves prediction files, feedback files and format, and splits, failing early.

    Raises:
        cli.JobError: the predictions are not a finished infer output, no feedback file.
        click.BadParameter: bad splits, or the same positive and negative label value.
    """
    artifacts.read_manifest(config.predictions, flag="predictions", stages=("infer",))
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
    if config.positive_value.lower() == config.negative_value.lower():
        raise click.BadParameter(
            f"the same as --positive_value={config.positive_value}", param_hint="--negative_value"
        )
    return FeedbackPlan(
        config=config,
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
            extra={"splits": [split.name for split in plan.splits], "models": _models(raw)},
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
@click.option("--label_column", default=DEFAULT_LABEL_COLUMN, help="Column the label goes in.")
@click.option("--positive_value", default=DEFAULT_POSITIVE_VALUE, help="Label text of a positive.")
@click.option("--negative_value", default=DEFAULT_NEGATIVE_VALUE, help="Label text of a negative.")
@sources.input_format_option("Feedback")
@sources.compression_option
def main(
    predictions: str,
    feedback_pattern: str,
    output_dir: str,
    min_implicit_events: int,
    splits: str,
    label_column: str,
    positive_value: str,
    negative_value: str,
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
