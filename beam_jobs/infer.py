"""Infer: raw records scored in bulk by a SavedModel, through Beam's RunInference.

    python -m beam_jobs.infer --model_dir=<SavedModel dir | serving dir> --input=data/*.csv \
        --output_dir=out/predictions [--format=csv] [--id_column=complaint_id] \
        [--schema=schemas/consumer_complaints/schema.pbtxt]

Records are read, typed and encoded as `tf.Example`s by the readers and conversion ingest uses
(`sources.RawRowsToExamples`), without splitting: the model sees exactly what training data looked
like. Columns are typed by the raw schema the model was trained on (`assets/raw_schema.pbtxt` of
the export, see `model_contract`), so a column is typed as in training whatever this input holds;
`--schema` overrides it. A value that does not fit its column's type (text in an INT column) is
rejected with the column named. An export without a raw schema and no `--schema`: types are
inferred over this input alone, and a column like `zip_code`, text in training, may come out as
integers the model cannot parse (a warning says so).

Scoring is tfx_bsl's model handler (`CreateModelHandler` with a `SavedModelSpec`) under Beam's
`RunInference`: batches of serialized examples go to the `serving_default` signature and come back
as TF Serving `PredictionLog`s. A batch that fails is retried one record at a time, so only the
records that really fail are rejected. Writes:

- `predictions/predictions-*.jsonl`: per record its tracking id (the `--id_column` value, else a
  hash of the serialized example), model name, version and fingerprint, the prediction, and the
  features the model saw (`example_to_json`), so feedback can be joined to exactly what was scored;
- `prediction_logs/prediction_logs-*.tfrecord.gz`: the `PredictionLog`s, in the same order;
- `rejected/`: records that could not be parsed, typed, identified or scored, with reasons;
- `manifest.json`: model path, version and fingerprint, the model's task and classes, the schema
  that typed the input, counts (rows read = predicted + rejected).

The prediction follows the task of the export's contract (`prediction_fields`): binary, `score`
is the probability of class 1; multi-class, `scores` holds the probability of each class by class
index, `top_class_id` the index of the most probable class (the lowest on a tie), `top_class` its
name (the contract's class name, else the index as text) and `score` its probability; regression,
`score` is the predicted value. An export without a contract: `score` is the output as it is (a
float, or a list of floats when the model outputs several values per record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import click
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as inference
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tfx_bsl.public.beam.run_inference import CreateModelHandler
from tfx_bsl.public.proto import model_spec_pb2

from beam_jobs.lib import artifacts, cli, layout, model_contract, records, shards, sources
from beam_jobs.lib.example_json import example_to_json
from beam_jobs.lib.splits import fingerprint
from beam_jobs.lib.stage_run import WriteCounts, run_beam_stage

__all__ = [
    "InferConfig",
    "InferPlan",
    "InputSchema",
    "ModelInfo",
    "ScoreExamples",
    "build_pipeline",
    "input_schema",
    "main",
    "plan_infer",
    "prediction_fields",
    "prediction_record",
    "resolve_model",
    "run",
    "score_of",
    "tracking_id",
]

STAGE = "infer"
ROWS_PREDICTED = "rows_predicted"
DEFAULT_BATCH_SIZE = 256
_MAX_REASON_CHARS = 300
_PREDICTIONS_FILE = (layout.PREDICTIONS_DIR, layout.JSONL_SUFFIX)
_LOGS_FILE = (layout.PREDICTION_LOGS_DIR, layout.TFRECORD_GZ_SUFFIX)

SCHEMA_FROM_MODEL, SCHEMA_FROM_FLAG = "model", "--schema"

SortKey = tuple[int, int]
Keyed = tuple[tuple[SortKey, str], bytes]


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """The infer job's parameters, as given on the command line."""

    model_dir: str
    input: str
    output_dir: str
    input_format: str | None = None
    compression: str = records.AUTO
    id_column: str | None = None
    schema: str | None = None
    model_name: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    max_rejected_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The SavedModel that scores: where it is, its name and version, its content fingerprint."""

    path: str
    name: str
    version: int | None
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """The column types raw records are typed with, and the schema they come from.

    Attributes:
        types: column types by column name; columns not named are typed by their values.
        source: `SCHEMA_FROM_MODEL` (the export's raw schema), `SCHEMA_FROM_FLAG` (`--schema`),
            or None (no schema: every column typed by its values in this input).
        path: the schema file, None without one.
    """

    types: dict[str, records.ColumnType]
    source: str | None = None
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class InferPlan:
    """Everything resolved before the pipeline runs: model, contract, files, format, types."""

    model: ModelInfo
    contract: model_contract.ModelContract | None
    files: tuple[sources.InputFile, ...]
    input_format: str
    input_schema: InputSchema
    num_shards: int
    id_column: str | None
    batch_size: int


def _base_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _serving_signature(model_path: str) -> Any:
    """The `serving_default` SignatureDef of a SavedModel, or None when it has none."""
    saved_model = saved_model_pb2.SavedModel()
    path = FileSystems.join(model_path, layout.SAVED_MODEL_FILE)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        saved_model.ParseFromString(handle.read())
    signatures = saved_model.meta_graphs[0].signature_def if saved_model.meta_graphs else {}
    return signatures.get(layout.SERVING_SIGNATURE)


def _check_signature(model_path: str) -> None:
    """Checks the SavedModel has `serving_default`: one string input, an `outputs` output."""
    signature = _serving_signature(model_path)
    if signature is None:
        raise cli.JobError(f"--model_dir: {model_path} has no {layout.SERVING_SIGNATURE} signature")
    inputs = list(signature.inputs.values())
    if len(inputs) != 1 or inputs[0].dtype != tf.string.as_datatype_enum:
        raise cli.JobError(
            f"--model_dir: {layout.SERVING_SIGNATURE} of {model_path} must take one string input "
            f"(serialized tf.Examples), it takes {sorted(signature.inputs)}"
        )
    if layout.OUTPUT_KEY not in signature.outputs:
        raise cli.JobError(
            f"--model_dir: {layout.SERVING_SIGNATURE} of {model_path} returns "
            f"{sorted(signature.outputs)}, not {layout.OUTPUT_KEY!r}"
        )


def _values_per_record(model_path: str) -> int | None:
    """How many values `outputs` holds per record, from its declared shape; None if unknown."""
    shape = _serving_signature(model_path).outputs[layout.OUTPUT_KEY].tensor_shape
    if shape.unknown_rank or not shape.dim:
        return None
    if len(shape.dim) == 1:
        return 1
    sizes = [dim.size for dim in shape.dim[1:]]
    return int(np.prod(sizes)) if all(size >= 0 for size in sizes) else None


def _check_outputs(model: ModelInfo, contract: model_contract.ModelContract | None) -> None:
    """Checks the model's output width fits its contract's task (and classes, when named).

    Raises:
        cli.JobError: a binary or regression model with several outputs per record, a
            multi-class model with one, or a number of outputs other than the classes named.
    """
    width = _values_per_record(model.path)
    if contract is None or width is None:
        return
    if contract.task == model_contract.MULTICLASS:
        expected = len(contract.classes) if contract.classes is not None else None
        fits = width > 1 and expected in (None, width)
        wanted = f"{expected}" if expected is not None else "one per class (more than one)"
    else:
        fits, wanted = width == 1, "1"
    if not fits:
        raise cli.JobError(
            f"--model_dir: {model.path} outputs {width} value(s) per record, but its contract "
            f"says {contract.task} (outputs wanted: {wanted}); re-export the model"
        )


def resolve_model(model_dir: str, model_name: str | None = None) -> ModelInfo:
    """The SavedModel named by `--model_dir`: itself, or a serving dir's newest version.

    The version is the integer name of the model's folder (`<serving dir>/<version>/`, or
    `serving_model/<unix ts>/` of training), else None; the name defaults to the folder holding
    the versions (TF Serving's model name), else the model's own folder name.

    Raises:
        cli.JobError: neither a SavedModel nor a serving dir, or no usable `serving_default`.
    """
    model_dir = model_dir.rstrip("/")
    if FileSystems.exists(FileSystems.join(model_dir, layout.SAVED_MODEL_FILE)):
        path = model_dir
    else:
        versions = artifacts.serving_versions(model_dir)
        if not versions:
            raise cli.JobError(
                f"--model_dir={model_dir} is neither a SavedModel (no {layout.SAVED_MODEL_FILE}) "
                "nor a serving dir with integer versions; pass an export of model.train or push"
            )
        path = FileSystems.join(model_dir, str(versions[-1]))
    _check_signature(path)
    folder = _base_name(path)
    version = int(folder) if folder.isdigit() else None
    parent = _base_name(path[: -len(folder) - 1]) if version is not None else folder
    return ModelInfo(
        path=path,
        name=model_name or parent or folder,
        version=version,
        fingerprint=artifacts.directory_fingerprint(path),
    )


def tracking_id(example: tf.train.Example, serialized: bytes, id_column: str | None) -> str:
    """The record's tracking id: its `id_column` value, else a hash of the serialized example.

    The hash is of the deterministic serialization, so the same record gets the same id on
    every run and runner.

    Raises:
        ValueError: the record has no single value in `id_column`.
    """
    if not id_column:
        return hashlib.blake2b(serialized, digest_size=16).hexdigest()
    values = example_to_json(example).get(id_column, [])
    if len(values) != 1:
        raise ValueError(f"--id_column={id_column}: needs one value, found {len(values)}")
    return str(values[0])


def _output_values(log: prediction_log_pb2.PredictionLog) -> np.ndarray:
    return np.asarray(tf.make_ndarray(log.predict_log.response.outputs[layout.OUTPUT_KEY])).ravel()


def score_of(log: prediction_log_pb2.PredictionLog) -> float | list[float]:
    """The model's `outputs` for one record: a float, or a list for several outputs."""
    values = _output_values(log)
    return float(values[0]) if values.size == 1 else [float(value) for value in values]


def prediction_fields(
    values: np.ndarray, contract: model_contract.ModelContract | None
) -> dict[str, Any]:
    """The prediction's fields of one record's output values, by the contract's task.

    Binary and regression: `score` (the probability of class 1, the predicted value). Multi-class:
    `scores` by class index, `top_class_id` (the first of equal maxima), `top_class` and `score`
    (the top class's probability). No contract: `score`, a float or a list of floats.

    Raises:
        ValueError: the number of values does not fit the task.
    """
    scores = [float(value) for value in values]
    if contract is None:
        return {"score": scores[0] if len(scores) == 1 else scores}
    if contract.task != model_contract.MULTICLASS:
        if len(scores) != 1:
            raise ValueError(f"a {contract.task} model outputs 1 value, this one {len(scores)}")
        return {"score": scores[0]}
    if len(scores) < 2 or (contract.classes is not None and len(scores) != len(contract.classes)):
        raise ValueError(f"{len(scores)} value(s) are not one score per class of the model")
    top = int(np.argmax(values))
    return {
        "score": scores[top],
        "scores": scores,
        "top_class": contract.class_name(top),
        "top_class_id": top,
    }


def prediction_record(
    tracking: str,
    model: ModelInfo,
    log: prediction_log_pb2.PredictionLog,
    contract: model_contract.ModelContract | None = None,
) -> dict[str, Any]:
    """The JSON line of one prediction: id, model, prediction and the features the model saw.

    Raises:
        ValueError: the model's output does not fit its contract's task (`prediction_fields`).
    """
    return {
        "tracking_id": tracking,
        "model_name": model.name,
        "model_version": model.version,
        "model_fingerprint": model.fingerprint,
        **prediction_fields(_output_values(log), contract),
        "features": _record_features(log),
    }


def _record_features(log: prediction_log_pb2.PredictionLog) -> dict[str, list[Any]]:
    """The features of the example a log's request scored, as JSON values."""
    serialized = log.predict_log.request.inputs[next(iter(log.predict_log.request.inputs))]
    return example_to_json(tf.train.Example.FromString(serialized.string_val[0]))


class _AssignTrackingId(beam.DoFn):
    """(sort key, serialized) → ((sort key, tracking id), serialized), or a rejected line."""

    def __init__(self, files: tuple[sources.InputFile, ...], id_column: str | None) -> None:
        self._paths = {item.index: item.path for item in files}
        self._id_column = id_column
        self._rejected = beam.metrics.Metrics.counter(STAGE, layout.ROWS_REJECTED)

    def process(self, keyed: tuple[SortKey, bytes]) -> Iterator[Any]:
        sort_key, serialized = keyed
        example = tf.train.Example.FromString(serialized)
        try:
            tracking = tracking_id(example, serialized, self._id_column)
        except ValueError as error:
            self._rejected.inc()
            line = sources.rejected_line(
                self._paths[sort_key[0]],
                sort_key[1],
                str(error),
                example_to_json(example),
            )
            yield beam.pvalue.TaggedOutput(layout.REJECTED_DIR, (sort_key, line))
            return
        yield (sort_key, tracking), serialized


def _error_reason(error: Any) -> str:
    """A one-line reason from RunInference's dead letter: an exception, or Beam's tuple of it."""
    if isinstance(error, tuple) and len(error) == 3:  # (type, repr, formatted traceback)
        kind, _, trace = error
        name, message = getattr(kind, "__name__", str(kind)), "".join(trace[-1:])
    else:
        name, message = type(error).__name__, str(error)
    detail = cli.tensorflow_reason(message)
    return f"inference failed: {name}: {detail[:_MAX_REASON_CHARS]}"


def _failed_lines(
    failure: tuple[list[Keyed], Any], paths: Mapping[int, str]
) -> Iterator[tuple[SortKey, str]]:
    """Rejected lines of a batch that failed even one record at a time."""
    batch, error = failure
    reason = _error_reason(error)
    for (sort_key, _), serialized in batch:
        features = example_to_json(tf.train.Example.FromString(serialized))
        yield sort_key, sources.rejected_line(paths[sort_key[0]], sort_key[1], reason, features)


class _NoBatchOfOne(inference.ModelHandler):
    """Scores a batch of one row as two copies of it and keeps the first result.

    TensorFlow scores a one-row batch through other kernels, whose results differ in the last
    float32 bit; how many rows a batch holds depends on the runner's bundles, so without this a
    row's score would depend on where it ran. Every other call goes to the wrapped handler.
    """

    def __init__(self, handler: inference.ModelHandler) -> None:
        self._handler = handler

    def load_model(self) -> Any:
        return self._handler.load_model()

    def run_inference(
        self, batch: Sequence[Any], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        if len(batch) == 1:
            return list(self._handler.run_inference([batch[0], batch[0]], model, inference_args))[
                :1
            ]
        return self._handler.run_inference(batch, model, inference_args)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return self._handler.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return self._handler.batch_elements_kwargs()

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        self._handler.validate_inference_args(inference_args)

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()


class ScoreExamples(beam.PTransform):
    """((sort key, tracking id), serialized example) → ((sort key, tracking id), PredictionLog).

    RunInference in batches of up to `batch_size`; the records of a failed batch are scored again
    one at a time. Returns a dict: `predictions`, and `rejected` ((sort key, rejected line)) for the
    records that fail alone.
    """

    def __init__(self, model: ModelInfo, batch_size: int, paths: Mapping[int, str]) -> None:
        super().__init__()
        self._model = model
        self._batch_size = batch_size
        self._paths = dict(paths)

    def _handler(self, batch_size: int) -> inference.ModelHandler:
        spec = model_spec_pb2.InferenceSpecType(
            saved_model_spec=model_spec_pb2.SavedModelSpec(
                model_path=self._model.path, signature_name=[layout.SERVING_SIGNATURE]
            ),
            batch_parameters=model_spec_pb2.BatchParameters(
                min_batch_size=1, max_batch_size=batch_size
            ),
        )
        return inference.KeyedModelHandler(_NoBatchOfOne(CreateModelHandler(spec)))

    def expand(self, keyed: beam.PCollection) -> dict[str, beam.PCollection]:
        scored, failed = (
            keyed
            | "RunInference"
            >> inference.RunInference(self._handler(self._batch_size)).with_exception_handling()
        )
        retried, failed_alone = (
            failed.failed_inferences
            | "FailedBatchRecords" >> beam.FlatMap(lambda failure: failure[0])
            | "RunInferenceOneByOne"
            >> inference.RunInference(self._handler(1)).with_exception_handling()
        )
        rejected = failed_alone.failed_inferences | "RejectFailed" >> beam.FlatMap(
            _failed_lines, self._paths
        )
        predictions = (scored, retried) | "FlattenScored" >> beam.Flatten()
        return {"predictions": predictions, "rejected": rejected}


class _FormatPrediction(beam.DoFn):
    """((sort key, id), log) → a JSON line and a serialized log, each keyed for its shard, or a
    rejected line (tagged rejected) when the output does not fit the model's task."""

    def __init__(self, plan: InferPlan) -> None:
        self._model = plan.model
        self._contract = plan.contract
        self._num_shards = plan.num_shards
        self._paths = {item.index: item.path for item in plan.files}
        self._predicted = beam.metrics.Metrics.counter(STAGE, ROWS_PREDICTED)
        self._rejected = beam.metrics.Metrics.counter(STAGE, layout.ROWS_REJECTED)

    def process(self, scored: tuple[tuple[SortKey, str], Any]) -> Iterator[Any]:
        (sort_key, tracking), log = scored
        try:
            record = prediction_record(tracking, self._model, log, self._contract)
        except ValueError as error:
            self._rejected.inc()
            features = _record_features(log)
            path = self._paths[sort_key[0]]
            line = sources.rejected_line(path, sort_key[1], f"prediction: {error}", features)
            yield beam.pvalue.TaggedOutput(layout.REJECTED_DIR, (sort_key, line))
            return
        self._predicted.inc()
        shard = fingerprint(tracking.encode("utf-8")) % self._num_shards
        line = json.dumps(record, sort_keys=True)
        yield (layout.PREDICTIONS_DIR, shard), (sort_key, line)
        yield beam.pvalue.TaggedOutput(
            layout.PREDICTION_LOGS_DIR,
            (
                (layout.PREDICTION_LOGS_DIR, shard),
                (sort_key, log.SerializeToString(deterministic=True)),
            ),
        )


def build_pipeline(pipeline: beam.Pipeline, plan: InferPlan, staging_dir: str) -> None:
    """Adds the infer graph to `pipeline`: predictions, logs, rejects, counts in `staging_dir`."""
    paths = {item.index: item.path for item in plan.files}
    converted = pipeline | "ReadExamples" >> sources.RawRowsToExamples(
        plan.files, plan.input_format, plan.input_schema.types, stage=STAGE
    )
    identified = converted.examples | "AssignTrackingIds" >> beam.ParDo(
        _AssignTrackingId(plan.files, plan.id_column)
    ).with_outputs(layout.REJECTED_DIR, main="keyed")
    scored = identified.keyed | "Score" >> ScoreExamples(plan.model, plan.batch_size, paths)
    formatted = scored["predictions"] | "FormatPredictions" >> beam.ParDo(
        _FormatPrediction(plan)
    ).with_outputs(layout.PREDICTION_LOGS_DIR, layout.REJECTED_DIR, main=layout.PREDICTIONS_DIR)
    written = formatted[layout.PREDICTIONS_DIR] | "WritePredictions" >> shards.WriteSortedShards(
        staging_dir, lambda _: plan.num_shards, _PREDICTIONS_FILE, shards.write_jsonl_shard
    )
    logs_written = formatted[layout.PREDICTION_LOGS_DIR] | "WriteLogs" >> shards.WriteSortedShards(
        staging_dir, lambda _: plan.num_shards, _LOGS_FILE, shards.write_tfrecord_shard
    )
    rejected = (
        (
            converted.rejected,
            identified[layout.REJECTED_DIR],
            scored["rejected"],
            formatted[layout.REJECTED_DIR],
        )
        | "FlattenRejected" >> beam.Flatten()
        | "KeyRejected" >> beam.Map(lambda keyed: ((layout.REJECTED_DIR, 0), keyed))
        | "WriteRejected"
        >> shards.WriteSortedShards(
            staging_dir, lambda _: 1, layout.REJECTED_FILE, shards.write_jsonl_shard
        )
    )
    read_count = converted.rows_read | "KeyRowsRead" >> beam.Map(
        lambda count: (layout.ROWS_READ, count)
    )
    _ = (
        (read_count, written, logs_written, rejected)
        | "FlattenCounts" >> beam.Flatten()
        | "Counts" >> WriteCounts(staging_dir)
    )


def input_schema(schema: str | None, model: ModelInfo) -> InputSchema:
    """The column types of raw records: `--schema`'s, else the model's raw schema's, else none.

    Raises:
        cli.JobError: `--schema` is not a schema, or the model's raw schema cannot be read.
    """
    if schema:
        return InputSchema(records.column_types_from_schema(schema), SCHEMA_FROM_FLAG, schema)
    raw_schema = model_contract.read_raw_schema(model.path)
    if raw_schema is None:
        logging.warning(
            "infer: the model carries no raw schema and there is no --schema, so column types are "
            "inferred from this input alone; pass the schema the training data was ingested with "
            "so every column is typed as in training"
        )
        return InputSchema({})
    path = model_contract.raw_schema_path(model.path)
    return InputSchema(records.schema_column_types(raw_schema), SCHEMA_FROM_MODEL, path)


def plan_infer(config: InferConfig) -> InferPlan:
    """Resolves the model, its contract and the input as ingest would (files, format, column
    types, shards).

    Raises:
        cli.JobError: no model, an output that does not fit the contract, no input file, an
            unknown format, a CSV without `--id_column`.
    """
    model = resolve_model(config.model_dir, config.model_name)
    contract = model_contract.read_contract(model.path)
    _check_outputs(model, contract)
    schema = input_schema(config.schema, model)
    input_plan = sources.plan_source(
        sources.SourceConfig(
            input=config.input, input_format=config.input_format, compression=config.compression
        )
    )
    if config.id_column and input_plan.input_format == records.CSV:
        first = input_plan.files[0]
        header = records.read_csv_header(first.path, first.compression)
        if config.id_column not in header:
            raise cli.JobError(
                f"--id_column={config.id_column} is not a column of {input_plan.files[0].path} "
                f"(columns: {', '.join(header)})"
            )
    return InferPlan(
        model=model,
        contract=contract,
        files=input_plan.files,
        input_format=input_plan.input_format,
        input_schema=schema,
        num_shards=input_plan.num_shards,
        id_column=config.id_column,
        batch_size=config.batch_size,
    )


def _shard_sets(num_shards: int) -> list[shards.ShardSet]:
    """Every shard the output names: predictions, prediction logs, rejected records."""
    return [
        shards.ShardSet(
            layout.PREDICTIONS_DIR, _PREDICTIONS_FILE, num_shards, shards.write_jsonl_shard
        ),
        shards.ShardSet(layout.PREDICTION_LOGS_DIR, _LOGS_FILE, num_shards),
        shards.ShardSet(layout.REJECTED_DIR, layout.REJECTED_FILE, 1, shards.write_jsonl_shard),
    ]


def _check_counts(raw: dict[str, int], config: InferConfig) -> dict[str, int]:
    """Rows read, predicted and rejected, checked to add up.

    Raises:
        cli.JobError: the counts do not add up, or there was no row.
    """
    counts = {
        layout.ROWS_READ: raw.get(layout.ROWS_READ, 0),
        ROWS_PREDICTED: raw.get(layout.PREDICTIONS_DIR, 0),
        layout.ROWS_REJECTED: raw.get(layout.REJECTED_DIR, 0),
    }
    read, predicted = counts[layout.ROWS_READ], counts[ROWS_PREDICTED]
    if read != predicted + counts[layout.ROWS_REJECTED] or raw.get(
        layout.PREDICTION_LOGS_DIR, 0
    ) != (predicted):
        raise cli.JobError(
            f"counts do not add up: {raw}; nothing was published to {config.output_dir}"
        )
    if read == 0:
        raise cli.JobError(f"--input={config.input} holds no rows")
    return counts


def _manifest_extra(plan: InferPlan) -> dict[str, Any]:
    """The manifest's own fields: the model, its task and classes, the schema that typed input."""
    contract = plan.contract
    return {
        "model": dataclasses.asdict(plan.model),
        "task": contract.task if contract else None,
        "classes": list(contract.classes) if contract and contract.classes is not None else None,
        "input_schema": {"source": plan.input_schema.source, "path": plan.input_schema.path},
    }


def run(config: InferConfig, options: PipelineOptions) -> dict[str, Any]:
    """Runs the infer job and publishes its output directory.

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: bad model or input, or more rejected rows than `max_rejected_fraction`
            allows (what was written is kept in `<output_dir>.failed/`, nothing is published).
    """
    staged = artifacts.StagedOutput(
        config.output_dir,
        STAGE,
        inputs=[config.model_dir, config.input, config.schema],
    )
    plan = plan_infer(config)
    logging.info(
        "infer: model %s version %s (%s), %d %s file(s)",
        plan.model.name,
        plan.model.version,
        plan.model.path,
        len(plan.files),
        plan.input_format,
    )
    with staged:
        raw = run_beam_stage(
            staged, options, lambda pipeline: build_pipeline(pipeline, plan, staged.staging_dir)
        )
        counts = _check_counts(raw, config)
        shards.complete_shards(staged.staging_dir, _shard_sets(plan.num_shards))
        read, rejected = counts[layout.ROWS_READ], counts[layout.ROWS_REJECTED]
        sources.publish_if_too_many_rejected(staged, read, rejected, config.max_rejected_fraction)
        manifest = staged.publish(
            inputs={
                "raw": [artifacts.file_fingerprint(item.path) for item in plan.files],
                "model": {"path": plan.model.path, "fingerprint": plan.model.fingerprint},
            },
            parameters={
                **dataclasses.asdict(config),
                "input_format": plan.input_format,
                "num_shards": plan.num_shards,
            },
            counts=counts,
            extra=_manifest_extra(plan),
        )
    logging.info("infer: %s -> %s", counts, config.output_dir)
    return manifest


@cli.beam_job_command(__doc__.split("\n\n")[0])
@click.option(
    "--model_dir",
    required=True,
    help="SavedModel directory, or a serving dir (<dir>/<version>/) to use its newest version.",
)
@click.option("--input", "input_pattern", required=True, help="File pattern of raw records.")
@click.option(
    "--output_dir",
    required=True,
    help="Directory to write predictions/, prediction_logs/, rejected/ and manifest.json.",
)
@sources.input_format_option()
@sources.compression_option
@click.option(
    "--id_column",
    default=None,
    help="Column whose value is the tracking id [default: a hash of the record].",
)
@click.option(
    "--schema",
    default=None,
    help="TFDV schema.pbtxt giving column types, as at ingest [default: the model's raw schema].",
)
@click.option(
    "--model_name", default=None, help="Model name in predictions [default: the model's folder]."
)
@click.option(
    "--batch_size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    help="Most records per model call.",
)
@sources.max_rejected_fraction_option
def main(
    model_dir: str,
    input_pattern: str,
    output_dir: str,
    input_format: str | None,
    compression: str,
    id_column: str | None,
    schema: str | None,
    model_name: str | None,
    batch_size: int,
    max_rejected_fraction: float,
    beam_args: tuple[str, ...],
) -> None:
    config = InferConfig(
        model_dir=model_dir,
        input=input_pattern,
        output_dir=output_dir,
        input_format=input_format,
        compression=compression,
        id_column=id_column,
        schema=schema,
        model_name=model_name,
        batch_size=batch_size,
        max_rejected_fraction=max_rejected_fraction,
    )
    run(config, cli.pipeline_options(beam_args))


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
