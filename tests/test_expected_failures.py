"""Expected failures end in one line naming what was wrong and what to do, never a traceback.

Types that disagree between examples and a schema, examples of another data set given to a model:
checked before any pipeline runs, on real data and on data the tests make.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from beam_jobs import evaluate, ingest, transform
from beam_jobs.lib import artifacts, cli
from tests.conftest import CURATED_SCHEMA, DEMO_PREPROCESSING_FN, DEMO_TRAIN_STEPS, direct_options


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == cli.EXIT_ERROR, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_ingest_records_each_features_type(ingested_2015, ingested_2015_curated):
    inferred = artifacts.read_manifest(str(ingested_2015)).extra["feature_types"]
    curated = artifacts.read_manifest(str(ingested_2015_curated)).extra["feature_types"]
    assert inferred["zip_code"] == "INT" and curated["zip_code"] == "BYTES"
    assert inferred["complaint_id"] == curated["complaint_id"] == "INT"
    assert inferred["product"] == "BYTES"


def test_transform_names_a_type_mismatch_before_it_runs(tmp_path, ingested_2015):
    result = CliRunner().invoke(
        transform.main,
        [
            f"--preprocessing_fn={DEMO_PREPROCESSING_FN}",
            f"--examples_dir={ingested_2015}",
            f"--schema={CURATED_SCHEMA}",
            f"--output_dir={tmp_path / 'out'}",
        ],
    )
    assert_one_line_error(
        result,
        f"feature zip_code is INT in the examples of {ingested_2015} but BYTES",
        f"ingest with --schema={CURATED_SCHEMA}",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_type_mismatch_on_data_the_test_makes(tmp_path):
    (tmp_path / "data.csv").write_text("id,code,size\n1,42,1.5\n2,7,2.5\n3,13,3.0\n")
    schema = tmp_path / "schema.pbtxt"
    schema.write_text(
        'feature { name: "id" type: INT }\n'
        'feature { name: "code" type: BYTES }\n'
        'feature { name: "size" type: INT }\n'
    )
    ingested = tmp_path / "ingest"
    ingest.run(
        ingest.IngestConfig(
            input=str(tmp_path / "data.csv"), output_dir=str(ingested), splits="train:1"
        ),
        direct_options(),
    )
    result = CliRunner().invoke(
        transform.main,
        [
            f"--preprocessing_fn={DEMO_PREPROCESSING_FN}",
            f"--examples_dir={ingested}",
            f"--schema={schema}",
            f"--output_dir={tmp_path / 'out'}",
        ],
    )
    line = assert_one_line_error(result, "feature code is INT", "but BYTES", "and 1 more")
    assert "ingest with --schema" in line
    # Feedback and older outputs record no types: the first examples are read instead.
    manifest_path = ingested / artifacts.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["feature_types"]
    manifest_path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(
        transform.main,
        [
            f"--preprocessing_fn={DEMO_PREPROCESSING_FN}",
            f"--examples_dir={ingested}",
            f"--schema={schema}",
            f"--output_dir={tmp_path / 'out'}",
        ],
    )
    assert_one_line_error(result, "feature code is INT", "but BYTES")


def test_evaluate_refuses_examples_the_model_cannot_read(
    tmp_path, trained_2015_steps, ingested_2015
):
    model = trained_2015_steps(DEMO_TRAIN_STEPS)
    # The 2015 data ingested without the curated schema: ZIP codes typed as integers.
    result = CliRunner().invoke(
        evaluate.main,
        [
            f"--model_dir={model}",
            f"--examples_dir={ingested_2015}",
            f"--output_dir={tmp_path / 'out_types'}",
        ],
    )
    assert_one_line_error(result, "cannot read the examples", "zip_code", "trained on")
    # Another data set altogether: none of the model's features.
    (tmp_path / "other.csv").write_text(
        "sepal_length,sepal_width,species\n5.1,3.5,setosa\n6.2,2.9,versicolor\n5.9,3.0,virginica\n"
    )
    other = tmp_path / "other_ingest"
    ingest.run(
        ingest.IngestConfig(input=str(tmp_path / "other.csv"), output_dir=str(other)),
        direct_options(),
    )
    written = artifacts.read_manifest(str(other)).counts["rows_written"]
    split = next(name for name, rows in written.items() if rows)
    result = CliRunner().invoke(
        evaluate.main,
        [
            f"--model_dir={model}",
            f"--examples_dir={other}",
            f"--output_dir={tmp_path / 'out_other'}",
            f"--split={split}",
        ],
    )
    assert_one_line_error(result, "cannot read the examples", "is required but could not be found")
    assert not (tmp_path / "out_types").exists() and not (tmp_path / "out_other").exists()
