"""Train: a Keras model on the transform output under tf.distribute, exported for serving.

    python -m model.train --transform_dir=out/transform --output_dir=out/train \
        [--model_fn=model.model:build_model] [--train_steps=N] [--batch_size=N] \
        [--hparams=JSON | --hparams=@hparams.json] [--task=auto|binary_classification|...] \
        [--distribution=mirrored|one_device|multi_worker_mirrored] [--cpu_replicas=N] \
        [--dp_noise_multiplier=F --dp_l2_norm_clip=F [--dp_microbatches=N] [--dp_delta=F]]

Reads `transformed_examples/train` and `/eval` with the transformed feature spec, builds the user's
`build_model(tf_transform_output, hparams)` inside the distribution strategy's scope (`hparams`: the
`--hparams` JSON object as a plain dict) and fits it for `--train_steps` global batches.
`<output_dir>/checkpoints/` holds the training state every `--checkpoint_steps`, so a rerun after a
crash resumes where it stopped; `<output_dir>/logs/` holds TensorBoard logs. The export,
`<output_dir>/serving_model/<unix_ts>/`, is a SavedModel with the TFT layer inside:
`serving_default` takes serialized raw `tf.Example`s (`examples`, label optional) and returns
`outputs`; `transform_features` returns the transformed features. Its `assets/` hold the raw schema
it was trained on and `model_contract.json` (task, label keys, class names), which the jobs that
take a model read (`beam_jobs.lib.model_contract`). `manifest.json`, written last, records what was
trained on, how, and how well. With `--dp_noise_multiplier` and `--dp_l2_norm_clip` the model trains
with DP-SGD (`model.dp`), and the manifest's `privacy` records ε for δ, the noise multiplier, clip,
microbatches, batch size and epochs.
"""

from __future__ import annotations

# Importing this module runs model/__init__.py first, which selects Keras 2 (TF_USE_LEGACY_KERAS)
# before TensorFlow is imported: tf.keras below is tf-keras, as TFT's transform layer needs.
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import click
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, layout, model_contract, user_code
from model import dp, features

__all__ = [
    "DEFAULT_MODEL_FN",
    "DISTRIBUTIONS",
    "TASKS",
    "TrainConfig",
    "export_model",
    "fitting_options",
    "main",
    "make_dataset",
    "make_strategy",
    "model_task",
    "parse_hparams",
    "run",
    "warm_start",
]

STAGE = "train"
DEFAULT_MODEL_FN = "model.model:build_model"
DEFAULT_LABEL_KEY = features.transformed_name(features.LABEL_KEY)
DISTRIBUTIONS = ("mirrored", "one_device", "multi_worker_mirrored")
AUTO_TASK = "auto"
TASKS = (AUTO_TASK, *model_contract.TASKS)
# Keras losses (by their config names) that say which task a one-output model solves.
_BINARY_LOSSES = ("binary_crossentropy", "binary_focal_crossentropy", "hinge", "squared_hinge")
_REGRESSION_LOSSES = (
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "huber",
    "huber_loss",
    "log_cosh",
    "logcosh",
    "poisson",
    "mse",
    "mae",
)
TRAIN_SPLIT, EVAL_SPLIT = "train", "eval"
CHECKPOINTS_DIR = "checkpoints"
# What the checkpoints were trained for: a rerun restores them only for the same training.
CHECKPOINT_KEY_FILE = "training_key.json"
LOGS_DIR = "logs"
DEFAULT_TRAIN_STEPS = 1000
DEFAULT_BATCH_SIZE = 64
DEFAULT_CHECKPOINT_STEPS = 100
# Weight initialization and shuffling are seeded, so reruns train the same model.
SEED = 42
_SHUFFLE_BUFFER = 10_000
_FLAG = "model_fn"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training script's parameters, as given on the command line."""

    transform_dir: str
    output_dir: str
    model_fn: str = DEFAULT_MODEL_FN
    label_key: str = DEFAULT_LABEL_KEY
    train_steps: int = DEFAULT_TRAIN_STEPS
    eval_steps: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    hparams: str | None = None
    task: str = AUTO_TASK
    raw_label_key: str | None = None
    label_vocabulary: str | None = None
    text_encoder: str | None = None
    base_model: str | None = None
    distribution: str = "mirrored"
    cpu_replicas: int = 1
    checkpoint_steps: int = DEFAULT_CHECKPOINT_STEPS
    early_stopping_patience: int = 0
    dp_noise_multiplier: float | None = None
    dp_l2_norm_clip: float | None = None
    dp_microbatches: int | None = None
    dp_delta: float | None = None


def _split_cpu(cpu_replicas: int) -> None:
    """Splits the CPU into `cpu_replicas` logical devices (before TensorFlow starts its runtime)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
    except RuntimeError as error:
        raise cli.JobError(
            f"--cpu_replicas={cpu_replicas}: TensorFlow's devices were already initialized in this "
            "process; run python -m model.train in a fresh process"
        ) from error


def make_strategy(distribution: str, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """The tf.distribute strategy: every visible GPU is a replica, else `cpu_replicas` CPU parts.

    Raises:
        click.BadParameter: `cpu_replicas` above 1 for a strategy other than `mirrored`.
    """
    if cpu_replicas > 1 and distribution != "mirrored":
        raise click.BadParameter(
            f"{cpu_replicas} CPU replicas need --distribution=mirrored", param_hint="--cpu_replicas"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and cpu_replicas > 1:
        logging.warning("train: %d GPU(s) visible, so --cpu_replicas is ignored", len(gpus))
    elif cpu_replicas > 1:
        _split_cpu(cpu_replicas)
    if distribution == "one_device":
        # Keras' BackupAndRestore refuses OneDeviceStrategy; a mirror of one device is the same.
        return tf.distribute.MirroredStrategy(["/gpu:0" if gpus else "/cpu:0"])
    if distribution == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if gpus:
        return tf.distribute.MirroredStrategy()
    # Collective all-reduce (the default between CPU devices) segfaults in TensorFlow 2.16 on
    # sparse gradients (an embedding's IndexedSlices); reducing on one device does not.
    return tf.distribute.MirroredStrategy(
        [device.name for device in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )


def _example_files(transform_dir: str, split: str) -> list[str]:
    pattern = FileSystems.join(transform_dir, layout.TRANSFORMED_EXAMPLES_DIR, split, "*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise cli.JobError(
            f"--transform_dir={transform_dir} has no {split} split ({pattern} matches no file); "
            f"transform it with --transform_splits={TRAIN_SPLIT},{EVAL_SPLIT}"
        )
    return files


def make_dataset(
    files: list[str],
    feature_spec: dict[str, Any],
    *,
    label_key: str,
    batch_size: int,
    training: bool,
) -> tf.data.Dataset:
    """Batches of (features, label) from GZIP'd transformed `tf.Example`s.

    Args:
        files: TFRecord files of transformed examples.
        feature_spec: the transformed feature spec; only features in it are parsed.
        label_key: the transformed label feature, returned as float32 `[batch, 1]`.
        batch_size: global batch size (a distribution strategy splits it among replicas).
        training: shuffle (with a fixed seed) and repeat forever; otherwise one pass in order.
    """
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if training:
        dataset = dataset.shuffle(_SHUFFLE_BUFFER, seed=SEED).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=training)

    def parse(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = tf.io.parse_example(serialized, feature_spec)
        label = tf.reshape(tf.cast(parsed.pop(label_key), tf.float32), [-1, 1])
        return parsed, label

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Examples are few large files: shard by element, not by file, across workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


class _StepControl(tf.keras.callbacks.Callback):
    """Logs where training starts (after a restored checkpoint) and stops at `train_steps`."""

    def __init__(self, train_steps: int) -> None:
        super().__init__()
        self.train_steps = train_steps
        self.initial_step = 0
        self._step = 0
        # Steps are counted in Python, so the batch logs may stay tensors: Keras then need not
        # wait for each step to finish to copy them to the host.
        self._supports_tf_logs = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # BackupAndRestore, the callback before this one, has restored the step count by now.
        self.initial_step = int(self.model.optimizer.iterations.numpy())
        self._step = self.initial_step
        if self.initial_step:
            logging.info("train: resumed from checkpoint at step %d", self.initial_step)
        if self.initial_step >= self.train_steps:
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # One batch is one optimizer step (Keras' default steps_per_execution of 1).
        self._step += 1
        if self._step >= self.train_steps:
            self.model.stop_training = True


class _BackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, recording the batch in its state only before a backup.

    Keras assigns the batch to a variable before every batch: under MirroredStrategy that eager
    assignment took about 1.5 ms, a third of the demo model's 4 ms step. The backup holds the
    same value either way. (`_batches_count` and `_training_state` are tf-keras 2.16's.)
    """

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._batches_count + 1 >= self.save_freq:
            self._training_state._ckpt_saved_batch.assign(batch)
        super().on_train_batch_end(batch, logs)


def _callbacks(
    config: TrainConfig, step_control: _StepControl
) -> list[tf.keras.callbacks.Callback]:
    """Checkpoints (restored first), step control, TensorBoard, and early stopping if asked."""
    callbacks = [
        _BackupAndRestore(
            FileSystems.join(config.output_dir, CHECKPOINTS_DIR),
            save_freq=config.checkpoint_steps,
            delete_checkpoint=False,
        ),
        step_control,
        tf.keras.callbacks.TerminateOnNaN(),
        tf.keras.callbacks.TensorBoard(FileSystems.join(config.output_dir, LOGS_DIR)),
    ]
    if config.early_stopping_patience:
        callbacks.append(
            tf.keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    return callbacks


def warm_start(keras_model: tf.keras.Model, base_model: str) -> None:
    """Copies the weights of an earlier export of the same architecture into `keras_model`.

    Only the layers' weights are copied (not the optimizer's state or step count), matched by the
    model's structure as Keras checkpoints it.

    Raises:
        cli.JobError: `base_model` is not a SavedModel, or its weights do not fit the model.
    """
    prefix = FileSystems.join(base_model, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):
        raise cli.JobError(f"--base_model={base_model} is not a SavedModel (no {prefix}.index)")
    # A model over the same layers without the optimizer, so only layer weights are restored.
    layers_only = tf.keras.Model(keras_model.inputs, keras_model.outputs)
    try:
        layers_only.load_weights(prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise cli.JobError(
            f"--base_model={base_model} does not fit this model (another architecture or "
            f"hparams?): {str(error).splitlines()[0]}"
        ) from error
    logging.info("train: warm-started from %s", base_model)


def _raw_label_key(tf_transform_output: tft.TFTransformOutput, config: TrainConfig) -> str | None:
    """The raw feature the transformed label came from: `--raw_label_key`, else the label key
    without its `_xf` suffix if the raw data has that feature, else None."""
    if config.raw_label_key:
        return config.raw_label_key
    raw_key = config.label_key.removesuffix(features.TRANSFORMED_SUFFIX)
    return raw_key if raw_key in tf_transform_output.raw_feature_spec() else None


def _signatures(
    keras_model: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    raw_label_key: str | None,
) -> dict[str, Any]:
    """`serving_default` (raw examples, label optional, to `outputs`) and `transform_features`."""
    keras_model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    serving_spec = dict(raw_spec)
    serving_spec.pop(raw_label_key or "", None)
    examples = tf.TensorSpec(shape=[None], dtype=tf.string, name=layout.EXAMPLES_INPUT)

    @tf.function(input_signature=[examples])
    def serve(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = keras_model.tft_layer(tf.io.parse_example(serialized, serving_spec))
        inputs = {name: transformed[name] for name in keras_model.input_names}
        return {layout.OUTPUT_KEY: keras_model(inputs)}

    @tf.function(input_signature=[examples])
    def transform(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return keras_model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    return {
        layout.SERVING_SIGNATURE: serve.get_concrete_function(),
        layout.TRANSFORM_SIGNATURE: transform.get_concrete_function(),
    }


def _loss_names(keras_model: tf.keras.Model) -> list[str]:
    """The config names of the compiled loss(es): `"binary_crossentropy"`, `"huber"`..."""
    losses = keras_model.loss
    if isinstance(losses, Mapping):
        losses = list(losses.values())
    elif not isinstance(losses, (list, tuple)):
        losses = [losses]
    names = []
    for loss in losses:
        if isinstance(loss, str):
            names.append(loss)
        elif isinstance(loss, tf.keras.losses.Loss):
            names.append(loss.name)
        else:
            names.append(getattr(loss, "__name__", type(loss).__name__))
    return [name.lower() for name in names]


def model_task(keras_model: tf.keras.Model, task: str = AUTO_TASK) -> str:
    """The task of the model, as the export's contract records it.

    `auto` reads it from the model: several outputs per example make a multi-class model; one
    output is binary under a binary loss (or a sigmoid), regression under a regression loss.

    Raises:
        cli.JobError: `auto`, and neither the output shape nor the loss tells.
    """
    if task != AUTO_TASK:
        return task
    units = keras_model.outputs[0].shape[-1] if keras_model.outputs[0].shape.rank else 1
    if units and units > 1:
        return model_contract.MULTICLASS
    losses = _loss_names(keras_model)
    if any(name in _BINARY_LOSSES for name in losses):
        return model_contract.BINARY
    if any(name in _REGRESSION_LOSSES for name in losses):
        return model_contract.REGRESSION
    activation = getattr(keras_model.layers[-1], "activation", None)
    if getattr(activation, "__name__", "") == "sigmoid":
        return model_contract.BINARY
    raise cli.JobError(
        f"cannot tell the task of a model with one output and loss {losses}; pass --task="
        f"{model_contract.BINARY}|{model_contract.REGRESSION}"
    )


def _label_classes(
    tf_transform_output: tft.TFTransformOutput, config: TrainConfig, raw_label_key: str | None
) -> tuple[str, ...] | None:
    """Class names by index: the label's TFT vocabulary (`--label_vocabulary`, else one named
    after the raw label key), or None when the label has none.

    Raises:
        cli.JobError: `--label_vocabulary` names no vocabulary of the transform output.
    """
    name = config.label_vocabulary or raw_label_key
    if not name or tf_transform_output.vocabulary_file_by_name(name) is None:
        if config.label_vocabulary:
            raise cli.JobError(
                f"--label_vocabulary={config.label_vocabulary} is not a vocabulary of "
                f"{config.transform_dir} (name it with vocab_filename= in the preprocessing_fn)"
            )
        return None
    values = tf_transform_output.vocabulary_by_name(name)
    return tuple(value.decode("utf-8", "replace") for value in values)


def _contract(
    keras_model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput, config: TrainConfig
) -> model_contract.ModelContract:
    raw_label_key = _raw_label_key(tf_transform_output, config)
    task = model_task(keras_model, config.task)
    classes = _label_classes(tf_transform_output, config, raw_label_key)
    if task == model_contract.REGRESSION:
        classes = None
    return model_contract.ModelContract(
        task=task,
        transformed_label_key=config.label_key,
        label_key=raw_label_key,
        classes=classes,
    )


def export_model(
    keras_model: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    output_dir: str,
    contract: model_contract.ModelContract,
) -> str:
    """Saves `<output_dir>/serving_model/<unix_ts>/` under a temporary name, then renames it.

    The raw schema and the contract go into the export's `assets/` before the rename, so an
    export that exists is complete.

    Returns:
        The export's path.
    """
    signatures = _signatures(keras_model, tf_transform_output, contract.label_key)
    serving_dir = FileSystems.join(output_dir, layout.SERVING_MODEL_DIR)
    version = int(time.time())
    while tf.io.gfile.exists(FileSystems.join(serving_dir, str(version))):
        version += 1
    export_path = FileSystems.join(serving_dir, str(version))
    staging_path = FileSystems.join(serving_dir, f".{version}.staging")
    keras_model.save(staging_path, save_format="tf", signatures=signatures, include_optimizer=False)
    model_contract.write_contract(staging_path, contract, tf_transform_output.raw_metadata.schema)
    artifacts.move_directory(staging_path, export_path, commit_file=layout.SAVED_MODEL_FILE)
    logging.info("train: exported %s (%s)", export_path, contract.task)
    return export_path


def _load_transform(config: TrainConfig) -> tuple[tft.TFTransformOutput, artifacts.Manifest]:
    """The finished transform output and its manifest; the label must be a transformed feature."""
    manifest = artifacts.read_manifest(
        config.transform_dir, flag="transform_dir", stages=("transform",)
    )
    tf_transform_output = tft.TFTransformOutput(config.transform_dir)
    spec = tf_transform_output.transformed_feature_spec()
    if config.label_key not in spec:
        raise cli.JobError(
            f"--label_key={config.label_key} is not a transformed feature of "
            f"{config.transform_dir}; it has {sorted(spec)}"
        )
    return tf_transform_output, manifest


def parse_hparams(text: str | None) -> dict[str, Any]:
    """`--hparams`: a JSON object, or `@path` of a file holding one, as a plain dict.

    Raises:
        click.BadParameter: not a JSON object, or a file that cannot be read.
    """
    if not text:
        return {}
    if text.startswith("@"):
        path = text[1:]
        try:
            with FileSystems.open(path) as handle:
                text = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise click.BadParameter(
                f"cannot read {path}: {cli.tensorflow_reason(str(error))}", param_hint="--hparams"
            ) from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON ({error})", param_hint="--hparams") from None
    if not isinstance(values, dict):
        raise click.BadParameter(
            f"needs a JSON object of hyper-parameters, got {text.strip()!r}", param_hint="--hparams"
        )
    return values


def _hparams(config: TrainConfig) -> dict[str, Any]:
    hparams = parse_hparams(config.hparams)
    if config.text_encoder:
        hparams["text_encoder"] = config.text_encoder
    return hparams


def _train_examples(manifest: artifacts.Manifest, files: list[str]) -> int:
    """Training examples: as the transform manifest counted them, else counted here."""
    counted = manifest.counts.get("examples_transformed", {}).get(TRAIN_SPLIT)
    if counted is not None:
        return int(counted)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return int(dataset.reduce(0, lambda count, _: count + 1))


def _build(
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    tf_transform_output: tft.TFTransformOutput,
    hparams: dict[str, Any],
    dp_options: dp.DPOptions | None,
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """The user's compiled model, built in the strategy's scope and warm-started if asked.

    Returns:
        The model (to export) and the model to fit: the same one, or with DP options a
        `dp.DPSGDModel` training it.
    """
    build_model = user_code.load_function(config.model_fn, flag=_FLAG)
    tf.keras.utils.set_random_seed(SEED)
    with strategy.scope():
        try:
            keras_model = build_model(tf_transform_output, dict(hparams))
        except ValueError as error:
            # The contract: a model function raises ValueError for hyper-parameters it rejects.
            raise click.BadParameter(
                f"--{_FLAG}={config.model_fn} rejected them: {error}", param_hint="--hparams"
            ) from None
        if not isinstance(keras_model, tf.keras.Model) or keras_model.optimizer is None:
            raise cli.JobError(
                f"--{_FLAG}={config.model_fn} returned {type(keras_model).__name__}, "
                "not a compiled tf.keras.Model"
            )
        if config.base_model:
            warm_start(keras_model, config.base_model)
        if dp_options is None:
            return keras_model, keras_model
        try:
            return keras_model, dp.DPSGDModel(keras_model, dp_options)
        except ValueError as error:
            raise cli.JobError(f"--{_FLAG}={config.model_fn}: {error}") from error


def _strategy(config: TrainConfig) -> tuple[tf.distribute.Strategy, int]:
    """The strategy and its replica count, checked against the global batch size."""
    strategy = make_strategy(config.distribution, config.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    devices = list(strategy.extended.worker_devices)
    logging.info("train: training on %d replicas: %s", replicas, devices)
    if config.batch_size % replicas:
        raise click.BadParameter(
            f"global batch {config.batch_size} does not divide among {replicas} replicas",
            param_hint="--batch_size",
        )
    return strategy, replicas


def _fit(
    config: TrainConfig,
    keras_model: tf.keras.Model,
    trainer: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    transform_manifest: artifacts.Manifest,
) -> dict[str, Any]:
    """Fits `trainer` (which trains `keras_model`) up to `train_steps` global steps.

    Returns:
        Counts and metrics for the manifest.
    """
    spec = tf_transform_output.transformed_feature_spec()
    spec = {key: spec[key] for key in (*keras_model.input_names, config.label_key)}
    train_files = _example_files(config.transform_dir, TRAIN_SPLIT)
    train_examples = _train_examples(transform_manifest, train_files)
    eval_data = make_dataset(
        _example_files(config.transform_dir, EVAL_SPLIT),
        spec,
        label_key=config.label_key,
        batch_size=config.batch_size,
        training=False,
    )
    train_data = make_dataset(
        train_files, spec, label_key=config.label_key, batch_size=config.batch_size, training=True
    )
    steps_per_epoch = min(config.train_steps, max(1, train_examples // config.batch_size))
    step_control = _StepControl(config.train_steps)
    history = trainer.fit(
        train_data,
        epochs=math.ceil(config.train_steps / steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_data,
        validation_steps=config.eval_steps,
        callbacks=_callbacks(config, step_control),
        verbose=2,
    )
    eval_metrics = trainer.evaluate(eval_data, steps=config.eval_steps, return_dict=True, verbose=0)
    if any(math.isnan(value) for value in eval_metrics.values()):
        raise cli.JobError(
            f"training diverged: eval metrics {eval_metrics}; lower the learning rate (--hparams) "
            "or check the inputs for NaN"
        )
    steps = int(trainer.optimizer.iterations.numpy())
    logging.info(
        "train: %d steps (%d in this run), eval %s",
        steps,
        steps - step_control.initial_step,
        eval_metrics,
    )
    train_metrics = {
        key: values[-1] for key, values in history.history.items() if not key.startswith("val_")
    }
    return {
        "counts": {
            "steps": steps,
            "initial_step": step_control.initial_step,
            "steps_this_run": steps - step_control.initial_step,
            "steps_per_epoch": steps_per_epoch,
            "train_examples": train_examples,
        },
        "metrics": {"train": train_metrics, "eval": eval_metrics},
    }


def _dp_options(config: TrainConfig) -> dp.DPOptions | None:
    """The checked DP-SGD options of the `--dp_*` flags (None without them)."""
    return dp.dp_options(
        noise_multiplier=config.dp_noise_multiplier,
        l2_norm_clip=config.dp_l2_norm_clip,
        microbatches=config.dp_microbatches,
        delta=config.dp_delta,
        batch_size=config.batch_size,
    )


def _privacy(dp_options: dp.DPOptions | None, config: TrainConfig, counts: dict[str, Any]):
    """The manifest's `privacy` entry (None without DP), logged with its ε."""
    if dp_options is None:
        return None
    record = dp.privacy_record(
        dp_options,
        steps=counts["steps"],
        batch_size=config.batch_size,
        train_examples=counts["train_examples"],
    )
    epsilon = "inf (no noise: no guarantee)" if record["epsilon"] is None else record["epsilon"]
    logging.info(
        "train: DP-SGD epsilon %s at delta %g (noise multiplier %g, clip %g, %d microbatches "
        "of batch %d, %d steps, %.2f epochs)",
        epsilon,
        record["delta"],
        record["noise_multiplier"],
        record["l2_norm_clip"],
        record["microbatches"],
        record["batch_size"],
        record["steps"],
        record["epochs"],
    )
    return record


def _training_key(config: TrainConfig, hparams: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's weights depend on; the step count and evaluation do not count, so a
    rerun with more `--train_steps` continues where the last one stopped."""
    return {
        "transform": artifacts.input_fingerprint(config.transform_dir),
        "model_fn": config.model_fn,
        "label_key": config.label_key,
        "hparams": hparams,
        "batch_size": config.batch_size,
        "base_model": config.base_model,
        "dp": [config.dp_noise_multiplier, config.dp_l2_norm_clip, config.dp_microbatches],
    }


def _claim_checkpoints(config: TrainConfig, hparams: dict[str, Any]) -> None:
    """Keeps `checkpoints/` only if they were written for this training, else removes them (they
    are this stage's own), and records the key the next run compares with.

    A killed run resumes from its checkpoints; a rerun with other hyper-parameters, data or model
    starts afresh instead of restoring weights of another training at its final step.
    """
    checkpoints = FileSystems.join(config.output_dir, CHECKPOINTS_DIR)
    key_path = FileSystems.join(checkpoints, CHECKPOINT_KEY_FILE)
    key = json.loads(json.dumps(_training_key(config, hparams), sort_keys=True, default=str))
    if FileSystems.exists(checkpoints):
        recorded = artifacts.read_json(key_path) if FileSystems.exists(key_path) else None
        if recorded == key:
            return
        logging.info("train: %s holds another training's checkpoints: starting afresh", checkpoints)
        FileSystems.delete([checkpoints])
    FileSystems.mkdirs(checkpoints)
    artifacts.write_json(key_path, key)


def run(config: TrainConfig) -> artifacts.Manifest:
    """Trains, exports and writes the manifest (last).

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: an unfinished or unsuitable transform output, a bad model function or base
            model, or devices that cannot be split any more.
        click.BadParameter: bad `--hparams`, a batch that does not divide among the replicas,
            or DP-SGD flags outside their constraints.
        click.UsageError: DP-SGD flags without the noise multiplier or the clip.
    """
    started_at = artifacts.utc_now()
    dp_options = _dp_options(config)  # Usage errors (exit 2) before anything is looked at.
    # Training writes in place (a rerun resumes from its checkpoints), so the directory may also
    # hold an unfinished run's folders; the previous manifest stays until the new one replaces it.
    artifacts.check_output_dir(
        config.output_dir,
        STAGE,
        inputs=[config.transform_dir, config.base_model],
        own_entries=(CHECKPOINTS_DIR, LOGS_DIR, layout.SERVING_MODEL_DIR),
    )
    manifest_path = FileSystems.join(config.output_dir, artifacts.MANIFEST_FILE)
    tf_transform_output, transform_manifest = _load_transform(config)
    hparams = _hparams(config)
    _claim_checkpoints(config, hparams)
    strategy, replicas = _strategy(config)
    if dp_options is not None:
        dp.check_replicas(dp_options, replicas)
        train_files = _example_files(config.transform_dir, TRAIN_SPLIT)
        dp_options = dp_options.with_default_delta(_train_examples(transform_manifest, train_files))
    keras_model, trainer = _build(config, strategy, tf_transform_output, hparams, dp_options)
    result = _fit(config, keras_model, trainer, tf_transform_output, transform_manifest)
    contract = _contract(keras_model, tf_transform_output, config)
    export_path = export_model(keras_model, tf_transform_output, config.output_dir, contract)
    inputs = {"transform": artifacts.input_fingerprint(config.transform_dir)}
    if config.base_model:
        inputs["base_model"] = {"path": config.base_model}
    manifest = artifacts.Manifest(
        stage=STAGE,
        inputs=inputs,
        parameters={**dataclasses.asdict(config), "hparams": hparams},
        counts={
            **result["counts"],
            "batch_size": config.batch_size,
            "per_replica_batch_size": config.batch_size // replicas,
            "replicas": replicas,
            "devices": list(strategy.extended.worker_devices),
        },
        package_versions=artifacts.package_versions(),
        started_at=started_at,
        finished_at=artifacts.utc_now(),
        format_version=None,  # Training's manifest has never carried one.
        extra={
            "metrics": result["metrics"],
            "privacy": _privacy(dp_options, config, result["counts"]),
            "export_path": export_path,
            "model_contract": contract.to_json(),
        },
    )
    artifacts.write_json(manifest_path, manifest.to_json())
    return manifest


def fitting_options(command: Any) -> Any:
    """The flags `model.train` and `model.tune` share: the model function, its label, the batches
    and the devices it fits on."""
    options = [
        click.option(
            "--model_fn",
            default=DEFAULT_MODEL_FN,
            help="build_model(tf_transform_output, hparams): package.module:function or "
            "file.py:function.",
        ),
        click.option("--label_key", default=DEFAULT_LABEL_KEY, help="Transformed label feature."),
        click.option(
            "--eval_steps",
            type=click.IntRange(min=1),
            default=None,
            help="Eval batches per evaluation [default: the whole eval split].",
        ),
        click.option(
            "--batch_size",
            type=click.IntRange(min=1),
            default=DEFAULT_BATCH_SIZE,
            help="Global batch size.",
        ),
        click.option(
            "--distribution",
            type=click.Choice(DISTRIBUTIONS),
            default="mirrored",
            help="tf.distribute.",
        ),
        click.option(
            "--cpu_replicas",
            type=click.IntRange(min=1),
            default=1,
            help="Without GPUs: split the CPU into this many replicas (mirrored).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.job_command(__doc__.split("\n\n")[0])
@click.option("--transform_dir", required=True, help="Transform output to train on.")
@click.option(
    "--output_dir", required=True, help="Directory for serving_model/, checkpoints/, logs/."
)
@fitting_options
@click.option(
    "--train_steps", type=click.IntRange(min=1), default=DEFAULT_TRAIN_STEPS, help="Global steps."
)
@click.option(
    "--hparams",
    default=None,
    help="Hyper-parameters for build_model, a plain dict: a JSON object, or @file.json.",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default=AUTO_TASK,
    help="What the model predicts, for the export's contract [auto: from its outputs and loss].",
)
@click.option(
    "--raw_label_key",
    default=None,
    help="Raw feature the label comes from [default: --label_key without _xf, if a raw feature].",
)
@click.option(
    "--label_vocabulary",
    default=None,
    help="TFT vocabulary naming the classes [default: one named after the raw label key].",
)
@click.option(
    "--text_encoder", default=None, help="TF Hub handle or local SavedModel encoding the text."
)
@click.option("--base_model", default=None, help="SavedModel export to warm-start from.")
@click.option(
    "--checkpoint_steps",
    type=click.IntRange(min=1),
    default=DEFAULT_CHECKPOINT_STEPS,
    help="Save the training state every this many steps.",
)
@click.option(
    "--early_stopping_patience",
    type=click.IntRange(min=0),
    default=0,
    help="Stop after this many epochs without a lower eval loss (0: never).",
)
@click.option(
    "--dp_noise_multiplier",
    type=float,
    default=None,
    help="DP-SGD: Gaussian noise stddev relative to the clip (>= 0); needs --dp_l2_norm_clip.",
)
@click.option(
    "--dp_l2_norm_clip",
    type=float,
    default=None,
    help="DP-SGD: largest L2 norm of one microbatch's gradient (> 0).",
)
@click.option(
    "--dp_microbatches",
    type=int,
    default=None,
    help="DP-SGD: microbatches per global batch, dividing it [default: the batch size].",
)
@click.option(
    "--dp_delta",
    type=float,
    default=None,
    help="DP-SGD: delta of the reported epsilon, in (0, 1) [default: 1/training examples "
    "rounded down to a power of ten].",
)
def main(**flags: Any) -> None:
    """Trains the model named by `--model_fn` on `--transform_dir`."""
    manifest = run(TrainConfig(**flags))
    logging.info(
        "train: %d steps on %d replicas, eval %s -> %s",
        manifest.counts["steps"],
        manifest.counts["replicas"],
        manifest.extra["metrics"]["eval"],
        manifest.extra["export_path"],
    )


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
