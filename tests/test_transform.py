"""The transform job on the real CFPB data, with real TFT: outputs, counts, OOV, reruns, errors."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from click.testing import CliRunner
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_jobs import ingest, transform
from beam_jobs.lib import artifacts, cli, layout, user_code
from model import features
from tests.conftest import CURATED_SCHEMA, DEMO_PREPROCESSING_FN, direct_options

XF = features.transformed_name
NEW_PRODUCT = "Virtual currency"  # not a product of the 2015 extract
SMALL_TRAIN_ROWS, SMALL_EVAL_ROWS, NEW_PRODUCT_EVERY = 300, 100, 10


def _files(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _examples(transform_dir: pathlib.Path, split: str) -> list[tf.train.Example]:
    pattern = str(transform_dir / layout.TRANSFORMED_EXAMPLES_DIR / split / "*.tfrecord.gz")
    return [
        tf.train.Example.FromString(record)
        for metadata in artifacts.list_files(pattern)
        for record in artifacts.read_tfrecords(metadata.path)
    ]


def _floats(example: tf.train.Example, key: str) -> np.ndarray:
    return np.array(example.features.feature[key].float_list.value)


@pytest.fixture(scope="module")
def small_presplit_csvs(cfpb_2015_csv, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """Real 2015 rows as train.csv and eval.csv; every 10th eval row gets a product train lacks."""
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    product = header.index("Product")
    train_rows = rows[:SMALL_TRAIN_ROWS]
    eval_rows = [list(row) for row in rows[SMALL_TRAIN_ROWS : SMALL_TRAIN_ROWS + SMALL_EVAL_ROWS]]
    for row in eval_rows[::NEW_PRODUCT_EVERY]:
        row[product] = NEW_PRODUCT
    directory = tmp_path_factory.mktemp("small_csv")
    paths = directory / "train.csv", directory / "eval.csv"
    for path, split_rows in zip(paths, (train_rows, eval_rows), strict=True):
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *split_rows])
    return paths


def _ingest_small(csvs, output_dir: pathlib.Path, schema: pathlib.Path | None) -> pathlib.Path:
    train_csv, eval_csv = csvs
    config = ingest.IngestConfig(
        input=f"train={train_csv},eval={eval_csv}",
        output_dir=str(output_dir),
        schema=str(schema) if schema else None,
    )
    ingest.run(config, direct_options())
    return output_dir


@pytest.fixture(scope="module")
def small_ingested(small_presplit_csvs, tmp_path_factory) -> pathlib.Path:
    """The small pre-split CSVs ingested with the curated schema."""
    output_dir = tmp_path_factory.mktemp("small_ingest") / "out"
    return _ingest_small(small_presplit_csvs, output_dir, CURATED_SCHEMA)


def _transform_cli(*args: str):
    """The transform CLI; with the demo's preprocessing_fn unless the arguments name one."""
    if not any(arg.startswith(("--preprocessing_fn", "--help")) for arg in args):
        args = (*args, f"--preprocessing_fn={DEMO_PREPROCESSING_FN}")
    return CliRunner().invoke(transform.main, list(args))


# --- the 2015 data through the demo's preprocessing --------------------------------------------


def test_output_loads_with_tft_transform_output(transformed_2015):
    tft_output = tft.TFTransformOutput(str(transformed_2015))
    raw_spec = tft_output.raw_feature_spec()
    assert raw_spec[features.ZIP_CODE].dtype == tf.string
    assert features.LABEL_KEY in raw_spec and features.PRODUCT in raw_spec
    spec = tft_output.transformed_feature_spec()
    for key, dim in features.ONE_HOT_FEATURES.items():
        assert spec[XF(key)] == tf.io.FixedLenFeature(
            [dim + 1 + features.VOCAB_OOV_BUCKETS], tf.float32
        )
    assert spec[XF(features.ZIP_CODE)] == tf.io.FixedLenFeature([10], tf.float32)
    assert spec[XF(features.LABEL_KEY)] == tf.io.FixedLenFeature([], tf.int64)
    # The curated schema declares the narrative (absent in 2015), so it is passed through, empty.
    assert spec[XF(features.NARRATIVE)] == tf.io.FixedLenFeature([], tf.string)


def test_counts_equal_ingest_counts_per_split(transformed_2015, ingested_2015_curated):
    ingested = artifacts.read_manifest(str(ingested_2015_curated)).counts["rows_written"]
    manifest = artifacts.read_manifest(str(transformed_2015))
    assert manifest.counts[transform.EXAMPLES_TRANSFORMED] == ingested
    assert manifest.counts["rows_analyzed"] == ingested["train"]
    assert manifest.splits == ["train", "eval"]
    eval_examples = _examples(transformed_2015, "eval")
    assert len(eval_examples) == ingested["eval"]
    labels = [e.features.feature[XF(features.LABEL_KEY)].int64_list.value[0] for e in eval_examples]
    assert set(labels) == {0, 1} and 0.1 < np.mean(labels) < 0.25  # 16.7 % "Yes" overall
    zip_buckets = np.stack([_floats(e, XF(features.ZIP_CODE)) for e in eval_examples])
    assert (zip_buckets.sum(axis=1) == 1).all()
    assert (zip_buckets.sum(axis=0) > 0.05 * len(eval_examples)).all()  # quantiles: all used


def test_product_vocabulary_has_the_11_products(transformed_2015, cfpb_2015_csv):
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as handle:
        products = {row["Product"] for row in csv.DictReader(handle)}
    assert len(products) == 11
    tft_output = tft.TFTransformOutput(str(transformed_2015))
    vocabulary = {token.decode() for token in tft_output.vocabulary_by_name(features.PRODUCT)}
    assert vocabulary == products
    for key, dim in features.ONE_HOT_FEATURES.items():
        assert 1 < tft_output.vocabulary_size_by_name(key) <= dim + 1, key


def test_two_runs_give_identical_assets_and_examples(
    transformed_2015, ingested_2015_curated, tmp_path
):
    rerun_dir = tmp_path / "rerun"
    config = transform.TransformConfig(
        examples_dir=str(ingested_2015_curated),
        schema=str(CURATED_SCHEMA),
        output_dir=str(rerun_dir),
        preprocessing_fn=DEMO_PREPROCESSING_FN,
    )
    transform.run(config, direct_options())
    for subdir in ("transform_fn/assets", layout.TRANSFORMED_EXAMPLES_DIR):
        first, second = _files(transformed_2015 / subdir), _files(rerun_dir / subdir)
        assert first and first == second, subdir


# --- small pre-split data: analyzers see train only -------------------------------------------


def test_value_seen_only_in_eval_maps_to_the_oov_bucket(small_ingested, tmp_path):
    output_dir = tmp_path / "transformed"
    result = _transform_cli(
        f"--examples_dir={small_ingested}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={output_dir}",
        "--analyze_splits=train",
        "--runner=DirectRunner",
    )
    assert result.exit_code == 0, result.output
    vocabulary = tft.TFTransformOutput(str(output_dir)).vocabulary_by_name(features.PRODUCT)
    assert NEW_PRODUCT.encode() not in vocabulary
    oov_index = len(vocabulary)

    def products(split):
        one_hots = np.stack(
            [_floats(e, XF(features.PRODUCT)) for e in _examples(output_dir, split)]
        )
        assert (one_hots.sum(axis=1) == 1).all()  # never -1, never an all-zero row
        return one_hots.argmax(axis=1)

    assert (products("eval") == oov_index).sum() == SMALL_EVAL_ROWS // NEW_PRODUCT_EVERY
    assert (products("train") != oov_index).all()
    counts = artifacts.read_manifest(str(output_dir)).counts[transform.EXAMPLES_TRANSFORMED]
    assert counts == {"train": SMALL_TRAIN_ROWS, "eval": SMALL_EVAL_ROWS}


def test_zip_code_ingested_as_integers(small_presplit_csvs, tmp_path):
    """Without --schema, ingest types ZIP codes as INT: the demo's preprocessing takes them too."""
    ingested = _ingest_small(small_presplit_csvs, tmp_path / "ingest", schema=None)
    schema = text_format.Parse(CURATED_SCHEMA.read_text(), schema_pb2.Schema())
    next(f for f in schema.feature if f.name == features.ZIP_CODE).type = schema_pb2.INT
    int_schema = tmp_path / "schema.pbtxt"
    int_schema.write_text(text_format.MessageToString(schema))
    config = transform.TransformConfig(
        examples_dir=str(ingested),
        schema=str(int_schema),
        output_dir=str(tmp_path / "out"),
        transform_splits="eval",
        preprocessing_fn=DEMO_PREPROCESSING_FN,
    )
    manifest = transform.run(config, direct_options())
    assert manifest.counts[transform.EXAMPLES_TRANSFORMED] == {"eval": SMALL_EVAL_ROWS}
    tft_output = tft.TFTransformOutput(str(tmp_path / "out"))
    assert tft_output.raw_feature_spec()[features.ZIP_CODE].dtype == tf.int64
    buckets = [
        _floats(e, XF(features.ZIP_CODE)).argmax() for e in _examples(tmp_path / "out", "eval")
    ]
    assert len(set(buckets)) >= 5


# --- failures: one clear line ----------------------------------------------------------------


BAD_DTYPE_MODULE = """
import tensorflow as tf


def preprocessing_fn(inputs):
    return {"complaint_id_xf": tf.cast(inputs["complaint_id"], tf.int32)}


def reads_undeclared(inputs):
    return {"x_xf": inputs["no_such_feature"]}
"""


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("no_such_package.prep:preprocessing_fn", "cannot import no_such_package.prep"),
        ("model.preprocessing:no_such_fn", "model.preprocessing has no function 'no_such_fn'"),
        ("not a function spec", "name a function as package.module:function"),
        ("{dir}/bad.py:preprocessing_fn", "returns feature 'complaint_id_xf' with a dtype"),
        ("{dir}/bad.py:reads_undeclared", "reads feature 'no_such_feature', which the schema"),
        ("{dir}/missing.py:preprocessing_fn", "missing.py not found"),
    ],
)
def test_bad_preprocessing_fn_fails_with_one_line(small_ingested, tmp_path, function, message):
    (tmp_path / "bad.py").write_text(BAD_DTYPE_MODULE)
    function = function.format(dir=tmp_path)
    result = _transform_cli(
        f"--examples_dir={small_ingested}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'out'}",
        f"--preprocessing_fn={function}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert message in result.output
    assert f"--preprocessing_fn={function}" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--analyze_splits=test"], "--analyze_splits: no split test"),
        (["--transform_splits=train,holdout"], "--transform_splits: no split holdout"),
    ],
)
def test_unknown_split_fails_with_one_line(small_ingested, tmp_path, flags, message):
    result = _transform_cli(
        f"--examples_dir={small_ingested}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'out'}",
        *flags,
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_help_lists_every_job_flag_with_its_default():
    help_text = _transform_cli("--help").output
    for flag in (
        "--examples_dir",
        "--schema",
        "--output_dir",
        "--preprocessing_fn",
        "--analyze_splits",
        "--transform_splits",
    ):
        assert flag in help_text


def test_unfinished_ingest_output_is_refused(small_ingested, tmp_path):
    (tmp_path / "half").mkdir()
    result = _transform_cli(
        f"--examples_dir={tmp_path / 'half'}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert "not a finished stage output" in result.output


def test_count_mismatch_publishes_nothing(small_ingested, tmp_path):
    tampered = tmp_path / "ingest"
    for name, data in _files(small_ingested).items():
        (tampered / name).parent.mkdir(parents=True, exist_ok=True)
        (tampered / name).write_bytes(data)
    manifest_path = tampered / artifacts.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["rows_written"]["eval"] += 1
    manifest_path.write_text(json.dumps(manifest))
    config = transform.TransformConfig(
        examples_dir=str(tampered),
        schema=str(CURATED_SCHEMA),
        output_dir=str(tmp_path / "out"),
        preprocessing_fn=DEMO_PREPROCESSING_FN,
    )
    with pytest.raises(cli.JobError, match=r"transformed .* examples but .* holds"):
        transform.run(config, direct_options())
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


# --- the user-code loader ------------------------------------------------------------------------


def test_load_function_from_module_and_from_file(tmp_path):
    from model.preprocessing import preprocessing_fn

    loaded = user_code.load_function("model.preprocessing:preprocessing_fn", flag="fn")
    assert loaded is preprocessing_fn
    (tmp_path / "my_prep.py").write_text("def double(x):\n    return 2 * x\n")
    assert user_code.load_function(f"{tmp_path}/my_prep.py:double", flag="fn")(21) == 42


def test_load_function_reports_errors_raised_while_importing(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        cli.JobError, match=r"--fn=.*broken.py:f: cannot import .*RuntimeError: boom"
    ):
        user_code.load_function(f"{tmp_path}/broken.py:f", flag="fn")
