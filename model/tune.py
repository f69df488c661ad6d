"""Tune: a Keras Tuner search over a model's hyper-parameters, on the data model.train trains on.

    python -m model.tune --transform_dir=out/transform --output_dir=out/tune \
        [--model_fn=model.model:build_model] [--search_space=SPACE] \
        [--tuner=random|hyperband|bayesian] [--max_trials=N] [--train_steps=N] [--batch_size=N] \
        [--objective=val_loss[:min|max]] [--label_key=...] [--distribution=...] [--cpu_replicas=N]

Each trial builds the user's `build_model(tf_transform_output, hparams)` (as `model.train` does,
`hparams` a plain dict) with hyper-parameters drawn from the search space, inside the same
tf.distribute strategy as `model.train`, fits it for `--train_steps` global batches of the same
datasets (`model.train.make_dataset` over `transformed_examples/train`) and scores it by
`--objective` on the eval split. The search space (`--search_space`) is either

- a function, `package.module:function` or `path/to/file.py:function`, taking Keras Tuner's
  `HyperParameters` and returning the dict of hparams for `build_model`, e.g.
  `{"units": hp.Int("units", 8, 64, step=8), "learning_rate": hp.Float("lr", 1e-4, 1e-1,
  sampling="log")}`; or
- a JSON object, inline or `@file.json`, one entry per hparam: a list of choices
  (`[8, 16, 32]`, or any JSON values: `[[64, 16], [32]]`), a range
  `{"min": 1e-4, "max": 0.1, "sampling": "log"}` (integers if `min` and `max` are;
  `step`, `sampling` and `default` optional), or a fixed value.

Without `--search_space` the demo model's own (`demo_search_space`: wide units, deep layers,
learning rate) is searched; any other `--model_fn` needs one. `<output_dir>/best_hparams.json` is
the best trial's hparams dict, as `python -m model.train --hparams=@best_hparams.json` (or
`--hparams="$(cat best_hparams.json)"`) takes it. `<output_dir>/search/` holds Keras Tuner's trials
(a rerun searches afresh), `<output_dir>/logs/<trial>/` TensorBoard logs with the HParams
dashboard's trial table, and `manifest.json`, written last, every trial's hparams and score.
"""

from __future__ import annotations

# Importing this module runs model/__init__.py first, which selects Keras 2 (TF_USE_LEGACY_KERAS)
# before TensorFlow is imported: tf.keras below is tf-keras, which Keras Tuner 1.3 builds on.
import dataclasses
import importlib.metadata
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import click
import keras_tuner as kt
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib import artifacts, cli, user_code
from model import train

__all__ = [
    "BEST_HPARAMS_FILE",
    "TUNERS",
    "SearchSpace",
    "TuneConfig",
    "demo_search_space",
    "load_search_space",
    "main",
    "parse_objective",
    "run",
]

STAGE = "tune"
TUNERS = ("random", "hyperband", "bayesian")
BEST_HPARAMS_FILE = "best_hparams.json"
SEARCH_DIR = "search"
LOGS_DIR = train.LOGS_DIR
DEFAULT_MAX_TRIALS = 10
DEFAULT_TRAIN_STEPS = 200
DEFAULT_OBJECTIVE = "val_loss"
HYPERBAND_FACTOR = 3
_DIRECTIONS = ("min", "max")
_RANGE_KEYS = {"min", "max", "step", "sampling", "default"}
_SAMPLINGS = ("linear", "log", "reverse_log")
# The demo's deep layers, by the name a trial shows in TensorBoard.
DEMO_DEEP_UNITS = {"256-64-16": [256, 64, 16], "128-32": [128, 32], "64": [64]}

SearchSpace = Callable[[kt.HyperParameters], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The tuning script's parameters, as given on the command line."""

    transform_dir: str
    output_dir: str
    model_fn: str = train.DEFAULT_MODEL_FN
    search_space: str | None = None
    tuner: str = "random"
    max_trials: int = DEFAULT_MAX_TRIALS
    train_steps: int = DEFAULT_TRAIN_STEPS
    eval_steps: int | None = None
    batch_size: int = train.DEFAULT_BATCH_SIZE
    objective: str = DEFAULT_OBJECTIVE
    label_key: str = train.DEFAULT_LABEL_KEY
    distribution: str = "mirrored"
    cpu_replicas: int = 1


def demo_search_space(hp: kt.HyperParameters) -> dict[str, Any]:
    """The demo model's search space (`model.model.HParams`), around the book's values."""
    deep = hp.Choice("deep_units", list(DEMO_DEEP_UNITS), default="256-64-16")
    return {
        "wide_units": hp.Choice("wide_units", [8, 16, 32, 64], default=16),
        "deep_units": DEMO_DEEP_UNITS[deep],
        "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3),
    }


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def _check_entry(name: str, entry: Any) -> None:
    """Refuses a JSON search-space entry that is neither choices, a range nor a fixed value."""
    bad = None
    if isinstance(entry, list) and not entry:
        bad = "an empty list of choices"
    elif isinstance(entry, dict):
        unknown = sorted(set(entry) - _RANGE_KEYS)
        if unknown or not {"min", "max"} <= set(entry):
            bad = f"a range needs min and max (and only {sorted(_RANGE_KEYS)})"
        elif not all(isinstance(entry[k], int | float) for k in ("min", "max")):
            bad = "a range's min and max must be numbers"
        elif entry.get("sampling", "linear") not in _SAMPLINGS:
            bad = f"sampling must be one of {list(_SAMPLINGS)}"
    elif not isinstance(entry, list) and not _is_scalar(entry):
        bad = f"a fixed value is a number, string or boolean; write [{json.dumps(entry)}] for it"
    if bad:
        raise click.BadParameter(f"hparam {name!r}: {bad}", param_hint="--search_space")


def _json_entry(hp: kt.HyperParameters, name: str, entry: Any) -> Any:
    """One hparam of a JSON search space, drawn from `hp`."""
    if isinstance(entry, list):
        if all(_is_scalar(value) for value in entry) and len({type(v) for v in entry}) == 1:
            return hp.Choice(name, entry)
        # Lists or mixed values: chosen by their JSON text, which Keras Tuner can hold.
        return json.loads(hp.Choice(name, [json.dumps(value) for value in entry]))
    if isinstance(entry, dict):
        options = {key: entry[key] for key in ("step", "sampling", "default") if key in entry}
        if all(isinstance(entry[k], int) for k in ("min", "max")) and isinstance(
            entry.get("step", 1), int
        ):
            return hp.Int(name, entry["min"], entry["max"], **options)
        return hp.Float(name, float(entry["min"]), float(entry["max"]), **options)
    return hp.Fixed(name, entry)


def _json_space(description: Mapping[str, Any]) -> SearchSpace:
    for name, entry in description.items():
        _check_entry(name, entry)

    def space(hp: kt.HyperParameters) -> dict[str, Any]:
        return {name: _json_entry(hp, name, entry) for name, entry in description.items()}

    return space


def _read_json_space(text: str) -> SearchSpace:
    if text.startswith("@"):
        try:
            with FileSystems.open(text[1:]) as handle:
                text = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise click.BadParameter(
                f"cannot read {text[1:]}: {cli.tensorflow_reason(str(error))}",
                param_hint="--search_space",
            ) from None
    try:
        description = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON ({error})", param_hint="--search_space") from None
    if not isinstance(description, dict) or not description:
        raise click.BadParameter(
            "a JSON search space is an object of hparams", param_hint="--search_space"
        )
    return _json_space(description)


def load_search_space(spec: str | None, model_fn: str) -> SearchSpace:
    """The search space `--search_space` names (the demo's for the demo model without one).

    Raises:
        click.UsageError: no search space for a model other than the demo's.
        click.BadParameter: a JSON space that cannot be read or is not one.
        cli.JobError: a function that cannot be loaded.
    """
    if not spec:
        if model_fn != train.DEFAULT_MODEL_FN:
            raise click.UsageError(
                f"--model_fn={model_fn} needs --search_space: a function(hp) -> hparams dict, "
                "or a JSON object of hparams (see python -m model.tune --help)"
            )
        return demo_search_space
    if spec.startswith(("{", "@")):
        return _read_json_space(spec)
    return user_code.load_function(spec, flag="search_space")


def parse_objective(text: str) -> kt.Objective | str:
    """`--objective`: a metric Keras reports (`val_loss`), with `:min` or `:max` if Keras Tuner
    cannot tell the direction from its name.

    Raises:
        click.BadParameter: an empty name or a direction other than min or max.
    """
    name, _, direction = text.partition(":")
    if not name or (direction and direction not in _DIRECTIONS):
        raise click.BadParameter(
            f"{text!r}: name a metric, optionally with :min or :max", param_hint="--objective"
        )
    return kt.Objective(name, direction) if direction else name


def _train_config(config: TuneConfig) -> train.TrainConfig:
    """The training parameters every trial shares with `model.train`."""
    return train.TrainConfig(
        transform_dir=config.transform_dir,
        output_dir=config.output_dir,
        model_fn=config.model_fn,
        label_key=config.label_key,
        train_steps=config.train_steps,
        eval_steps=config.eval_steps,
        batch_size=config.batch_size,
        distribution=config.distribution,
        cpu_replicas=config.cpu_replicas,
    )


def _hparams_of(space: SearchSpace, hp: kt.HyperParameters) -> dict[str, Any]:
    """The hparams dict a search space gives for `hp`, checked to be a JSON object.

    Raises:
        cli.JobError: the space returned something else.
    """
    hparams = space(hp)
    if not isinstance(hparams, dict):
        raise cli.JobError(
            f"--search_space returned {type(hparams).__name__}, not a dict of hparams"
        )
    try:
        json.dumps(hparams)
    except (TypeError, ValueError) as error:
        raise cli.JobError(f"--search_space returned hparams that are not JSON: {error}") from None
    return hparams


def _build_function(
    config: TuneConfig, space: SearchSpace, tf_transform_output: tft.TFTransformOutput
) -> Callable[[kt.HyperParameters], tf.keras.Model]:
    """The hypermodel: hparams from the space, then the user's compiled model.

    A model function that rejects a combination (ValueError) fails that trial alone.
    """
    build_model = user_code.load_function(config.model_fn, flag="model_fn")

    def build(hp: kt.HyperParameters) -> tf.keras.Model:
        hparams = _hparams_of(space, hp)
        tf.keras.utils.set_random_seed(train.SEED)
        try:
            keras_model = build_model(tf_transform_output, dict(hparams))
        except ValueError as error:
            raise kt.errors.FailedTrialError(f"--model_fn rejected {hparams}: {error}") from None
        if not isinstance(keras_model, tf.keras.Model) or keras_model.optimizer is None:
            raise kt.errors.FatalTypeError(
                f"--model_fn={config.model_fn} returned {type(keras_model).__name__}, "
                "not a compiled tf.keras.Model"
            )
        return keras_model

    return build


def _default_model(
    space: SearchSpace,
    build: Callable[[kt.HyperParameters], tf.keras.Model],
    strategy: tf.distribute.Strategy,
) -> tf.keras.Model:
    """Builds the model of the space's defaults once, before the search (to check it early).

    Raises:
        click.BadParameter: the model function rejects the defaults.
        cli.JobError: it returns no compiled Keras model, or the space no dict.
    """
    with strategy.scope():
        try:
            return build(kt.HyperParameters())
        except kt.errors.FailedTrialError as error:
            raise click.BadParameter(
                f"the search space's defaults: {error}", param_hint="--search_space"
            ) from None
        except kt.errors.FatalError as error:
            raise cli.JobError(str(error)) from None


def _check_objective(keras_model: tf.keras.Model, eval_data: tf.data.Dataset, text: str) -> None:
    """Refuses an objective the model does not report, from one eval batch of the default model.

    Raises:
        click.BadParameter: `--objective` names no metric of the model.
    """
    name = text.partition(":")[0]
    reported = list(keras_model.evaluate(eval_data.take(1), verbose=0, return_dict=True))
    names = [*reported, *(f"val_{metric}" for metric in reported)]
    if name not in names:
        raise click.BadParameter(
            f"the model reports no {name}; it has {', '.join(names)}", param_hint="--objective"
        )


def _datasets(
    config: TuneConfig, input_names: list[str], tf_transform_output: tft.TFTransformOutput
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """`model.train`'s training (shuffled, repeated) and eval datasets of the model's inputs."""
    spec = tf_transform_output.transformed_feature_spec()
    spec = {key: spec[key] for key in (*input_names, config.label_key)}
    options = {"label_key": config.label_key, "batch_size": config.batch_size}
    train_data = train.make_dataset(
        train._example_files(config.transform_dir, train.TRAIN_SPLIT),
        spec,
        **options,
        training=True,
    )
    eval_data = train.make_dataset(
        train._example_files(config.transform_dir, train.EVAL_SPLIT),
        spec,
        **options,
        training=False,
    )
    return train_data, eval_data


def _make_tuner(
    config: TuneConfig,
    build: Callable[[kt.HyperParameters], tf.keras.Model],
    strategy: tf.distribute.Strategy,
    epochs: int,
) -> kt.Tuner:
    """The Keras Tuner of `--tuner`, seeded, its trials under `<output_dir>/search/`."""
    common = {
        "objective": parse_objective(config.objective),
        "seed": train.SEED,
        "directory": config.output_dir,
        "project_name": SEARCH_DIR,
        "overwrite": True,
        "distribution_strategy": strategy,
    }
    if config.tuner == "hyperband":
        tuner = kt.Hyperband(build, max_epochs=epochs, factor=HYPERBAND_FACTOR, **common)
        # Hyperband sizes its brackets from max_epochs; --max_trials caps them all the same.
        tuner.oracle.max_trials = config.max_trials
        return tuner
    if config.tuner == "bayesian":
        return kt.BayesianOptimization(build, max_trials=config.max_trials, **common)
    return kt.RandomSearch(build, max_trials=config.max_trials, **common)


def _failure_reason(message: str | None) -> str:
    """The last line of a failed trial's traceback: the error itself."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _search(tuner: kt.Tuner, fit: dict[str, Any], config: TuneConfig) -> None:
    """Runs the search, trials logged to TensorBoard under `<output_dir>/logs/<trial>/`.

    Raises:
        cli.JobError: the search stopped on failing trials, or a trial's model was no model.
    """
    callbacks = [
        tf.keras.callbacks.TensorBoard(FileSystems.join(config.output_dir, LOGS_DIR)),
        tf.keras.callbacks.TerminateOnNaN(),
    ]
    # A failed trial's traceback goes to its trial.json, not the console: its last line is logged.
    debug, kt.config.DEBUG = kt.config.DEBUG, False
    try:
        tuner.search(**fit, callbacks=callbacks, verbose=2)
    except kt.errors.FatalError as error:
        raise cli.JobError(str(error)) from None
    except RuntimeError as error:  # Keras Tuner's "Number of consecutive failures excceeded".
        if "consecutive failures" not in str(error):
            raise
        raise cli.JobError(
            f"the search stopped after {tuner.oracle.max_consecutive_failed_trials} failed "
            f"trials in a row: {_failure_reason(str(error))}"
        ) from None
    finally:
        kt.config.DEBUG = debug


def _trials(tuner: kt.Tuner, space: SearchSpace) -> list[dict[str, Any]]:
    """Every trial: its id, status, score and the hparams dict it built (best first)."""
    ranked = tuner.oracle.get_best_trials(num_trials=len(tuner.oracle.trials))
    others = [trial for trial in tuner.oracle.trials.values() if trial not in ranked]
    for trial in others:
        logging.warning("tune: trial %s failed: %s", trial.trial_id, _failure_reason(trial.message))
    return [
        {
            "trial_id": trial.trial_id,
            "status": trial.status,
            "score": trial.score,
            "hparams": _hparams_of(space, trial.hyperparameters.copy()),
            **({"error": _failure_reason(trial.message)} if trial.message else {}),
        }
        for trial in (*ranked, *others)
    ]


def _steps_per_epoch(config: TuneConfig, manifest: artifacts.Manifest) -> int:
    """Steps per Keras epoch as `model.train` counts them: one pass, at most `train_steps`."""
    files = train._example_files(config.transform_dir, train.TRAIN_SPLIT)
    examples = train._train_examples(manifest, files)
    return min(config.train_steps, max(1, examples // config.batch_size))


def _manifest(
    config: TuneConfig,
    tuner: kt.Tuner,
    trials: list[dict[str, Any]],
    counts: dict[str, Any],
    started_at: str,
) -> artifacts.Manifest:
    completed = [t for t in trials if t["status"] == kt.engine.trial.TrialStatus.COMPLETED]
    objective = tuner.oracle.objective  # With the direction Keras Tuner inferred.
    return artifacts.Manifest(
        stage=STAGE,
        inputs={"transform": artifacts.input_fingerprint(config.transform_dir)},
        parameters=dataclasses.asdict(config),
        counts={**counts, "trials": len(trials), "trials_completed": len(completed)},
        package_versions={
            **artifacts.package_versions(),
            "keras-tuner": importlib.metadata.version("keras-tuner"),
        },
        started_at=started_at,
        finished_at=artifacts.utc_now(),
        extra={
            "objective": {"name": objective.name, "direction": objective.direction},
            "best": {key: trials[0][key] for key in ("trial_id", "score", "hparams")},
            "trials": trials,
        },
    )


def _prepare(config: TuneConfig, space: SearchSpace) -> tuple[kt.Tuner, dict[str, Any], dict]:
    """The tuner, the fit arguments of every trial, and the counts for the manifest."""
    training = _train_config(config)
    tf_transform_output, transform_manifest = train._load_transform(training)
    strategy, replicas = train._strategy(training)
    build = _build_function(config, space, tf_transform_output)
    default_model = _default_model(space, build, strategy)
    train_data, eval_data = _datasets(config, default_model.input_names, tf_transform_output)
    _check_objective(default_model, eval_data, config.objective)
    steps_per_epoch = _steps_per_epoch(config, transform_manifest)
    epochs = math.ceil(config.train_steps / steps_per_epoch)
    fit = {
        "x": train_data,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "validation_data": eval_data,
        "validation_steps": config.eval_steps,
    }
    counts = {
        "steps_per_trial": config.train_steps,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": config.batch_size,
        "replicas": replicas,
    }
    return _make_tuner(config, build, strategy, epochs), fit, counts


def run(config: TuneConfig) -> artifacts.Manifest:
    """Searches, writes `best_hparams.json`, then the manifest (last).

    Returns:
        The manifest written to `<output_dir>/manifest.json`.

    Raises:
        cli.JobError: an unfinished or unsuitable transform output, a model function or search
            space that cannot be loaded or gives no model, or a search without a finished trial.
        click.BadParameter: a bad search space, objective or batch size, or defaults the model
            function rejects.
        click.UsageError: another model than the demo's without a search space.
    """
    started_at = artifacts.utc_now()
    space = load_search_space(config.search_space, config.model_fn)  # Usage errors first.
    parse_objective(config.objective)
    artifacts.check_output_dir(
        config.output_dir,
        STAGE,
        inputs=[config.transform_dir],
        own_entries=(SEARCH_DIR, LOGS_DIR, BEST_HPARAMS_FILE),
    )
    tuner, fit, counts = _prepare(config, space)
    artifacts.delete_tree(FileSystems.join(config.output_dir, LOGS_DIR))  # A fresh search.
    _search(tuner, fit, config)
    trials = _trials(tuner, space)
    if not trials or trials[0]["status"] != kt.engine.trial.TrialStatus.COMPLETED:
        reason = trials[-1].get("error", "no trial ran") if trials else "no trial ran"
        raise cli.JobError(f"no trial of the search finished: {reason}")
    best_path = FileSystems.join(config.output_dir, BEST_HPARAMS_FILE)
    artifacts.write_json(best_path, trials[0]["hparams"])
    manifest = _manifest(config, tuner, trials, counts, started_at)
    artifacts.write_json(
        FileSystems.join(config.output_dir, artifacts.MANIFEST_FILE), manifest.to_json()
    )
    return manifest


@cli.job_command(__doc__.split("\n\n")[0])
@click.option("--transform_dir", required=True, help="Transform output to tune on.")
@click.option(
    "--output_dir", required=True, help="Directory for best_hparams.json, search/, logs/."
)
@train.fitting_options
@click.option(
    "--search_space",
    default=None,
    help="function(hp) -> hparams dict (module:function or file.py:function), or a JSON object "
    "of hparams: inline or @file.json [default: the demo model's, for the demo model only].",
)
@click.option("--tuner", type=click.Choice(TUNERS), default="random", help="Search algorithm.")
@click.option(
    "--max_trials", type=click.IntRange(min=1), default=DEFAULT_MAX_TRIALS, help="Trials at most."
)
@click.option(
    "--train_steps",
    type=click.IntRange(min=1),
    default=DEFAULT_TRAIN_STEPS,
    help="Global steps per trial (hyperband: of its longest trials).",
)
@click.option(
    "--objective",
    default=DEFAULT_OBJECTIVE,
    help="Metric to optimize, e.g. val_auc; name:min or name:max where the name does not tell.",
)
def main(**flags: Any) -> None:
    """Searches the hyper-parameters of the model named by `--model_fn` on `--transform_dir`."""
    config = TuneConfig(**flags)
    manifest = run(config)
    best = manifest.extra["best"]
    logging.info(
        "tune: %d trials, best %s %s = %s -> %s",
        manifest.counts["trials"],
        best["trial_id"],
        manifest.extra["objective"]["name"],
        best["score"],
        FileSystems.join(config.output_dir, BEST_HPARAMS_FILE),
    )


if __name__ == "__main__":
    cli.run_module_main(__spec__.name)
