"""Shared fixtures: the real CFPB data in ../shared/data and stage outputs built once."""

from __future__ import annotations

import pathlib

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import ingest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CFPB_2015 = SHARED_DATA / "consumer_complaints_cfpb_2015.csv"
CFPB_2017_SAMPLE = SHARED_DATA / "consumer_complaints_cfpb_2017_sample.csv"
# The demo's user code and config, passed to the jobs as any user's would be.
DEMO_PREPROCESSING_FN = "model.preprocessing:preprocessing_fn"
DEMO_EVAL_CONFIG = REPO_ROOT / "model" / "eval_config.pbtxt"


def direct_options() -> PipelineOptions:
    """DirectRunner options for tests: one in-process worker."""
    return PipelineOptions(["--runner=DirectRunner"])


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(
            f"real CFPB data not found at {path} (../shared/data is absent in a user's clone)"
        )
    return path


@pytest.fixture(scope="session")
def cfpb_2015_csv() -> pathlib.Path:
    """The real 2015 CFPB extract (28,156 rows)."""
    return _require(CFPB_2015)


@pytest.fixture(scope="session")
def cfpb_2017_sample_csv() -> pathlib.Path:
    """The real 2017 CFPB sample (145 rows, newer export format, with narratives)."""
    return _require(CFPB_2017_SAMPLE)


@pytest.fixture(scope="session")
def ingested_2015(cfpb_2015_csv, tmp_path_factory) -> pathlib.Path:
    """The 2015 CFPB data ingested with the default 2:1 split (train, eval)."""
    output_dir = tmp_path_factory.mktemp("ingest_2015") / "out"
    config = ingest.IngestConfig(input=str(cfpb_2015_csv), output_dir=str(output_dir))
    ingest.run(config, direct_options())
    return output_dir


@pytest.fixture(scope="session")
def ingested_2017_sample(cfpb_2017_sample_csv, tmp_path_factory) -> pathlib.Path:
    """The 2017 CFPB sample ingested with the default 2:1 split."""
    output_dir = tmp_path_factory.mktemp("ingest_2017") / "out"
    config = ingest.IngestConfig(input=str(cfpb_2017_sample_csv), output_dir=str(output_dir))
    ingest.run(config, direct_options())
    return output_dir


CURATED_SCHEMA = REPO_ROOT / "schemas" / "consumer_complaints" / "schema.pbtxt"


@pytest.fixture(scope="session")
def curated_schema() -> pathlib.Path:
    """The curated TFDV schema of the consumer complaints data."""
    return CURATED_SCHEMA


@pytest.fixture(scope="session")
def ingested_2015_curated(cfpb_2015_csv, tmp_path_factory) -> pathlib.Path:
    """The 2015 CFPB data ingested with the curated schema's types (zip_code as text), 2:1 split."""
    output_dir = tmp_path_factory.mktemp("ingest_2015_curated") / "out"
    config = ingest.IngestConfig(
        input=str(cfpb_2015_csv), output_dir=str(output_dir), schema=str(CURATED_SCHEMA)
    )
    ingest.run(config, direct_options())
    return output_dir


@pytest.fixture(scope="session")
def transformed_2015(ingested_2015_curated, tmp_path_factory) -> pathlib.Path:
    """`ingested_2015_curated` through the transform job with the demo's preprocessing_fn."""
    from beam_jobs import transform

    output_dir = tmp_path_factory.mktemp("transform_2015") / "out"
    config = transform.TransformConfig(
        examples_dir=str(ingested_2015_curated),
        schema=str(CURATED_SCHEMA),
        output_dir=str(output_dir),
        preprocessing_fn=DEMO_PREPROCESSING_FN,
    )
    transform.run(config, direct_options())
    return output_dir


@pytest.fixture(scope="session")
def trained_2015_steps(transformed_2015, tmp_path_factory):
    """`trained_2015_steps(n)`: the export of the demo model trained n steps on `transformed_2015`.

    Training is seeded, so the same n gives the same model; each n is trained once per session.
    """
    from model import train

    exports: dict[int, pathlib.Path] = {}

    def export(steps: int) -> pathlib.Path:
        if steps not in exports:
            output_dir = tmp_path_factory.mktemp(f"train_2015_{steps}_steps") / "out"
            config = train.TrainConfig(
                transform_dir=str(transformed_2015), output_dir=str(output_dir), train_steps=steps
            )
            exports[steps] = pathlib.Path(train.run(config).extra["export_path"])
        return exports[steps]

    return export


# Training steps at which the demo model passes the eval config's AUC >= 0.60 on the 2015 data
# (eval AUC 0.639 at 600 steps of 64 examples; 0.620 at 300; 0.489 after 1).
DEMO_TRAIN_STEPS = 600


@pytest.fixture(scope="session")
def evaluated_2015(ingested_2015_curated, trained_2015_steps, tmp_path_factory) -> pathlib.Path:
    """The demo model (DEMO_TRAIN_STEPS) evaluated on the 2015 eval split with no baseline."""
    from beam_jobs import evaluate

    output_dir = tmp_path_factory.mktemp("evaluate_2015") / "out"
    config = evaluate.EvaluateConfig(
        model_dir=str(trained_2015_steps(DEMO_TRAIN_STEPS)),
        examples_dir=str(ingested_2015_curated),
        output_dir=str(output_dir),
        eval_config=str(DEMO_EVAL_CONFIG),
    )
    evaluate.run(config, direct_options())
    return output_dir


@pytest.fixture(scope="session")
def predictions_2015(trained_2015_steps, ingested_2015_curated, tmp_path_factory) -> pathlib.Path:
    """The eval split of `ingested_2015_curated` scored through infer by the demo model
    (DEMO_TRAIN_STEPS), tracked by complaint_id."""
    from beam_jobs import infer

    output_dir = tmp_path_factory.mktemp("infer_2015") / "out"
    config = infer.InferConfig(
        model_dir=str(trained_2015_steps(DEMO_TRAIN_STEPS)),
        input=str(ingested_2015_curated / "eval" / "*.tfrecord.gz"),
        output_dir=str(output_dir),
        id_column="complaint_id",
        schema=str(CURATED_SCHEMA),
    )
    infer.run(config, direct_options())
    return output_dir


# DP-SGD on the 2015 data with the book's settings (noise 2.0, clip 1.5, batch 32, one example per
# microbatch; delta by default 1/18,741 rounded down: 1e-5) for about three epochs. The noise on the
# averaged gradient (2.0 x 1.5 / 32 per weight) drowns a large model: the demo model with its
# default hparams stays near eval AUC 0.5, with 8 wide units, no deep layers and Adam at 0.01 it
# reached 0.587-0.596 from the second epoch on (epsilon 0.17 at 1,800 steps).
DP_2015 = {
    "noise": 2.0,
    "clip": 1.5,
    "batch": 32,
    "steps": 1800,
    "hparams": '{"learning_rate": 0.01, "wide_units": 8, "deep_units": []}',
}


@pytest.fixture(scope="session")
def trained_2015_dp(transformed_2015, tmp_path_factory) -> dict:
    """The demo model trained with DP-SGD (DP_2015) on `transformed_2015`: manifest and time."""
    import time

    from model import train

    output_dir = tmp_path_factory.mktemp("train_2015_dp") / "out"
    config = train.TrainConfig(
        transform_dir=str(transformed_2015),
        output_dir=str(output_dir),
        train_steps=DP_2015["steps"],
        batch_size=DP_2015["batch"],
        hparams=DP_2015["hparams"],
        dp_noise_multiplier=DP_2015["noise"],
        dp_l2_norm_clip=DP_2015["clip"],
        dp_microbatches=DP_2015["batch"],
    )
    started = time.monotonic()
    manifest = train.run(config)
    return {"manifest": manifest, "output_dir": output_dir, "seconds": time.monotonic() - started}


# The synthetic animals data (tests/synthetic.py) and a user's module for it (tests/user_module.py):
# a data set and model the framework has never seen. Each task has its preprocessing_fn, model
# function and transformed label.
USER_MODULE = REPO_ROOT / "tests" / "user_module.py"
ANIMAL_TASKS = {
    "multiclass": ("preprocessing_fn", "build_model", "species_xf"),
    "binary": ("binary_preprocessing_fn", "build_binary_model", "heavy_xf"),
    "regression": ("regression_preprocessing_fn", "build_regression_model", "weight_xf"),
}
ANIMAL_TRAIN_STEPS = 150
ANIMAL_BATCH_SIZE = 32


@pytest.fixture(scope="session")
def animals_csv(tmp_path_factory) -> pathlib.Path:
    """600 synthetic animals as a CSV file (header row first)."""
    from tests.synthetic import write_animals_csv

    return write_animals_csv(tmp_path_factory.mktemp("animals") / "animals.csv")


@pytest.fixture(scope="session")
def animals_ingested(animals_csv, tmp_path_factory) -> pathlib.Path:
    """The animals ingested with the default 2:1 split, column types inferred."""
    output_dir = tmp_path_factory.mktemp("animals_ingest") / "out"
    ingest.run(
        ingest.IngestConfig(input=str(animals_csv), output_dir=str(output_dir)), direct_options()
    )
    return output_dir


@pytest.fixture(scope="session")
def animals_schema(animals_ingested, tmp_path_factory) -> pathlib.Path:
    """The schema validate infers from the animals' train statistics (no curation)."""
    from beam_jobs import statistics, validate

    root = tmp_path_factory.mktemp("animals_schema")
    statistics.run(
        statistics.StatisticsConfig(
            examples_dir=str(animals_ingested), output_dir=str(root / "statistics")
        ),
        direct_options(),
    )
    schema = root / "schema.pbtxt"
    validate.run(
        validate.ValidateConfig(
            statistics_dir=str(root / "statistics"),
            schema=str(schema),
            output_dir=str(root / "validation"),
        )
    )
    return schema


@pytest.fixture(scope="session")
def animals_transformed(animals_ingested, animals_schema, tmp_path_factory):
    """`animals_transformed(task)`: the transform output of one of ANIMAL_TASKS, made once."""
    from beam_jobs import transform

    outputs: dict[str, pathlib.Path] = {}

    def transformed(task: str) -> pathlib.Path:
        if task not in outputs:
            output_dir = tmp_path_factory.mktemp(f"animals_transform_{task}") / "out"
            config = transform.TransformConfig(
                examples_dir=str(animals_ingested),
                schema=str(animals_schema),
                output_dir=str(output_dir),
                preprocessing_fn=f"{USER_MODULE}:{ANIMAL_TASKS[task][0]}",
            )
            transform.run(config, direct_options())
            outputs[task] = output_dir
        return outputs[task]

    return transformed


@pytest.fixture(scope="session")
def animals_trained(animals_transformed, tmp_path_factory):
    """`animals_trained(task)`: the export of the user's model for one of ANIMAL_TASKS."""
    from model import train

    exports: dict[str, pathlib.Path] = {}

    def export(task: str) -> pathlib.Path:
        if task not in exports:
            _, model_fn, label_key = ANIMAL_TASKS[task]
            output_dir = tmp_path_factory.mktemp(f"animals_train_{task}") / "out"
            config = train.TrainConfig(
                transform_dir=str(animals_transformed(task)),
                output_dir=str(output_dir),
                model_fn=f"{USER_MODULE}:{model_fn}",
                label_key=label_key,
                train_steps=ANIMAL_TRAIN_STEPS,
                batch_size=ANIMAL_BATCH_SIZE,
            )
            exports[task] = pathlib.Path(train.run(config).extra["export_path"])
        return exports[task]

    return export
