"""Tests of the validate job and the curated schema, on the real CFPB data and real TFDV."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from click.testing import CliRunner

from beam_jobs import ingest, statistics, validate
from beam_jobs.lib import artifacts, cli, layout, tfdv_io
from tests.conftest import REPO_ROOT, direct_options

CURATED_SCHEMA = REPO_ROOT / "schemas" / "consumer_complaints" / "schema.pbtxt"
LABEL = "consumer_disputed"
LABEL_COLUMN = "Consumer disputed?"


def ingest_and_describe(csv_path: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Ingests a CSV with the curated schema's types and computes its statistics."""
    examples_dir, stats_dir = workdir / "ingest", workdir / "statistics"
    ingest.run(
        ingest.IngestConfig(
            input=str(csv_path), output_dir=str(examples_dir), schema=str(CURATED_SCHEMA)
        ),
        direct_options(),
    )
    statistics.run(
        statistics.StatisticsConfig(examples_dir=str(examples_dir), output_dir=str(stats_dir)),
        direct_options(),
    )
    return stats_dir


@pytest.fixture(scope="module")
def stats_2015(cfpb_2015_csv, tmp_path_factory) -> pathlib.Path:
    """Statistics of the 2015 data, ingested with the curated schema (ZIP codes as text)."""
    return ingest_and_describe(cfpb_2015_csv, tmp_path_factory.mktemp("validate_2015"))


@pytest.fixture(scope="module")
def stats_2017_sample(cfpb_2017_sample_csv, tmp_path_factory) -> pathlib.Path:
    """Statistics of the 2017 sample (newer export format), ingested with the curated schema."""
    return ingest_and_describe(cfpb_2017_sample_csv, tmp_path_factory.mktemp("validate_2017"))


@pytest.fixture(scope="module")
def stats_2015_half_disputed(cfpb_2015_csv, tmp_path_factory) -> pathlib.Path:
    """Statistics of a copy of the 2015 data where every other complaint is disputed (50 %)."""
    workdir = tmp_path_factory.mktemp("validate_drift")
    shifted = workdir / "complaints_half_disputed.csv"
    with cfpb_2015_csv.open(newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))
    label = rows[0].index(LABEL_COLUMN)
    for index, row in enumerate(rows[1:]):
        row[label] = "Yes" if index % 2 == 0 else "No"
    with shifted.open("w", newline="", encoding="utf-8") as target:
        csv.writer(target).writerows(rows)
    return ingest_and_describe(shifted, workdir)


def invoke(*args: str):
    """Runs `python -m beam_jobs.validate` in-process with click's test runner."""
    return CliRunner().invoke(validate.main, list(args))


def read_report(output_dir: pathlib.Path) -> str:
    return (output_dir / validate.REPORT_FILE).read_text(encoding="utf-8")


def test_2015_eval_and_train_pass_the_curated_schema(stats_2015, tmp_path):
    output_dir = tmp_path / "validation"
    result = invoke(
        f"--statistics_dir={stats_2015}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={output_dir}",
    )
    assert result.exit_code == cli.EXIT_OK, result.output
    assert result.stdout.splitlines() == ["train: no anomalies", "eval: no anomalies"]
    manifest = artifacts.read_manifest(str(output_dir))
    assert manifest.counts["anomalies"] == {"train": 0, "eval": 0}
    assert manifest.parameters["environment"] == "TRAINING"
    assert manifest.inputs["schema"]["sha256"]
    for split in ("train", "eval"):
        anomalies = tfdv.load_anomalies_text(str(output_dir / split / validate.ANOMALIES_FILE))
        assert not validate.has_anomalies(anomalies)
    assert 'eval: <span class="ok">no anomalies' in read_report(output_dir)


def test_curated_thresholds_hold_between_the_2015_splits(stats_2015):
    """The drift and skew thresholds pass on train vs eval of the same data, as the schema says."""
    schema = tfdv.load_schema_text(str(CURATED_SCHEMA))
    train, eval_ = (
        tfdv_io.load_statistics(str(stats_2015 / split / layout.STATS_FILE))
        for split in ("train", "eval")
    )
    drift = validate.validate_split(eval_, schema, "TRAINING", baseline=train)
    skew = validate.validate_split(train, schema, "TRAINING", serving=eval_)
    assert not validate.has_anomalies(drift)
    assert not validate.has_anomalies(skew)
    compared = {step for info in drift.drift_skew_info for step in info.path.step}
    assert {"product", "issue", "state", "company_response", LABEL} <= compared


def test_missing_schema_is_inferred_from_train_and_never_overwritten(stats_2015, tmp_path):
    schema_path = tmp_path / "schemas" / "schema.pbtxt"
    first = invoke(
        f"--statistics_dir={stats_2015}",
        f"--schema={schema_path}",
        f"--output_dir={tmp_path / 'first'}",
    )
    assert first.exit_code in (cli.EXIT_OK, cli.EXIT_VALIDATION_ANOMALIES), first.output
    said = [line for line in first.stdout.splitlines() if "inferred" in line]
    assert said == [
        f"validate: no schema at {schema_path}: inferred one from the train statistics and "
        "wrote it there; curate and commit it"
    ]
    schema = tfdv.load_schema_text(str(schema_path))
    assert tfdv.get_feature(schema, "product").shape.dim[0].size == 1  # infer_feature_shape
    assert artifacts.read_manifest(str(tmp_path / "first")).extra["schema_inferred"] is True
    schema_path.write_text(schema_path.read_text() + "# curated by a person\n")
    second = invoke(
        f"--statistics_dir={stats_2015}",
        f"--schema={schema_path}",
        f"--output_dir={tmp_path / 'second'}",
    )
    assert "inferred" not in second.stdout
    assert schema_path.read_text().endswith("# curated by a person\n")


def test_2017_sample_exits_3_naming_new_columns_and_unseen_categories(stats_2017_sample, tmp_path):
    output_dir = tmp_path / "validation"
    result = invoke(
        f"--statistics_dir={stats_2017_sample}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={output_dir}",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES
    assert result.stderr.count("\n") == 1
    assert f"report: {output_dir / validate.REPORT_FILE}" in result.stderr
    report = read_report(output_dir)  # Published although anomalous: a person must read it.
    manifest = artifacts.read_manifest(str(output_dir))
    assert manifest.extra["anomalous"] == ["train", "eval"]
    for new_column in ("company_response_to_consumer", "submitted_via", "tags"):
        assert new_column in report and new_column in result.stdout
    assert "Column dropped" in report  # company_response was renamed.
    assert "Consumer Loan" in report  # Unseen product (2015 spells it "Consumer loan").
    assert "Unexpected string values" in report
    train = tfdv.load_anomalies_text(str(output_dir / "train" / validate.ANOMALIES_FILE))
    assert {"product", "company_response", "tags"} <= set(train.anomaly_info)


def test_label_share_drift_exits_3_and_names_the_label(
    stats_2015, stats_2015_half_disputed, tmp_path
):
    output_dir = tmp_path / "validation"
    result = invoke(
        f"--statistics_dir={stats_2015_half_disputed}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={output_dir}",
        f"--baseline_statistics_dir={stats_2015}",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES, result.output
    for split in ("train", "eval"):
        anomalies = tfdv.load_anomalies_text(str(output_dir / split / validate.ANOMALIES_FILE))
        assert set(anomalies.anomaly_info) == {LABEL}
        assert "Linfty distance between current and previous" in (
            anomalies.anomaly_info[LABEL].description
        )
    assert LABEL in read_report(output_dir)


def test_skew_against_serving_statistics_names_the_label(
    stats_2015, stats_2015_half_disputed, tmp_path
):
    result = invoke(
        f"--statistics_dir={stats_2015}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'validation'}",
        f"--serving_statistics_dir={stats_2015_half_disputed}",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES, result.output
    assert "Linfty distance between training and serving" in result.stdout
    assert f"  {LABEL}:" in result.stdout


def test_serving_environment_forbids_the_label(stats_2015, tmp_path):
    result = invoke(
        f"--statistics_dir={stats_2015}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'validation'}",
        "--environment=SERVING",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES
    assert f"{LABEL}: Column missing in environment" in result.stdout


def test_the_books_l_infinity_examples():
    """‖x‖∞ = maxᵢ |xᵢ|, the distance the schema's infinity_norm comparators threshold."""
    assert np.linalg.norm([3, -10, -5], ord=np.inf) == 10
    assert np.linalg.norm(np.subtract([2, 4, -1], [9, 1, 8]), ord=np.inf) == 9
    # TFDV applies it to the value shares of a categorical feature: [.5, .3, .2] → [.2, .4, .4].
    baseline = tfdv.generate_statistics_from_dataframe(
        pd.DataFrame({"f": ["a"] * 50 + ["b"] * 30 + ["c"] * 20})
    )
    current = tfdv.generate_statistics_from_dataframe(
        pd.DataFrame({"f": ["a"] * 20 + ["b"] * 40 + ["c"] * 40})
    )
    expected = np.linalg.norm(np.subtract([0.2, 0.4, 0.4], [0.5, 0.3, 0.2]), ord=np.inf)
    schema = tfdv.infer_schema(baseline)
    comparator = tfdv.get_feature(schema, "f").drift_comparator.infinity_norm
    for threshold, drifted in ((expected - 0.05, True), (expected + 0.05, False)):
        comparator.threshold = threshold
        anomalies = validate.validate_split(current, schema, None, baseline=baseline)
        (measured,) = anomalies.drift_skew_info[0].drift_measurements
        assert measured.value == pytest.approx(expected)
        assert validate.has_anomalies(anomalies) is drifted


def test_pick_split_takes_the_same_split_or_the_only_one():
    one, two = object(), object()
    assert validate.pick_split({"train": one, "eval": two}, "eval", "flag") is two
    assert validate.pick_split({"serving": one}, "eval", "flag") is one
    with pytest.raises(cli.JobError, match="--flag has no split 'test'"):
        validate.pick_split({"train": one, "eval": two}, "test", "flag")


def test_cli_refuses_an_unfinished_statistics_dir_in_one_line(tmp_path):
    result = invoke(
        f"--statistics_dir={tmp_path / 'missing'}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'validation'}",
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert "--statistics_dir" in result.stderr and "no manifest.json" in result.stderr
    assert not (tmp_path / "validation").exists()


def _presplit_animals(workdir: pathlib.Path) -> pathlib.Path:
    """Statistics of a pre-split data set the test makes: `colour` and `size` always present in
    train, missing in a fifth of eval."""
    rng = np.random.default_rng(3)
    for split, rows, missing in (("train", 200, 0.0), ("eval", 100, 0.2)):
        with (workdir / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["animal_id", "colour", "size", "species"])
            for index in range(rows):
                colour = "" if rng.random() < missing else rng.choice(["red", "blue"])
                size = "" if rng.random() < missing else round(float(rng.random()) * 10, 2)
                writer.writerow([index, colour, size, rng.choice(["cat", "dog"])])
    examples_dir, stats_dir = workdir / "ingest", workdir / "statistics"
    ingest.run(
        ingest.IngestConfig(
            input=f"train={workdir / 'train.csv'},eval={workdir / 'eval.csv'}",
            output_dir=str(examples_dir),
        ),
        direct_options(),
    )
    statistics.run(
        statistics.StatisticsConfig(examples_dir=str(examples_dir), output_dir=str(stats_dir)),
        direct_options(),
    )
    return stats_dir


def test_a_schema_inferred_from_train_names_the_fields_to_relax_for_eval(tmp_path):
    stats_dir = _presplit_animals(tmp_path)
    schema_path = tmp_path / "schema.pbtxt"
    result = invoke(
        f"--statistics_dir={stats_dir}",
        f"--schema={schema_path}",
        f"--output_dir={tmp_path / 'validation'}",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES, result.output
    line = result.output.strip().splitlines()[-1]
    assert "the schema inferred from train flags eval" in line
    assert (
        "relax colour (shape, presence.min_fraction), size (shape, presence.min_fraction)" in line
    )
    assert str(schema_path) in line and "species" not in line and "animal_id" not in line
    # Relaxing exactly those fields makes the same statistics pass.
    schema = tfdv_io.read_schema(str(schema_path))
    for feature in schema.feature:
        if feature.name in ("colour", "size"):
            feature.ClearField("shape")
            feature.presence.min_fraction = 0.0
    tfdv.write_schema_text(schema, str(schema_path))
    result = invoke(
        f"--statistics_dir={stats_dir}",
        f"--schema={schema_path}",
        f"--output_dir={tmp_path / 'validation'}",
    )
    assert result.exit_code == 0, result.output


def test_no_relax_hint_for_a_curated_schema_or_a_real_type_error(stats_2017_sample, tmp_path):
    result = invoke(
        f"--statistics_dir={stats_2017_sample}",
        f"--schema={CURATED_SCHEMA}",
        f"--output_dir={tmp_path / 'validation'}",
    )
    assert result.exit_code == cli.EXIT_VALIDATION_ANOMALIES
    assert "relax " not in result.output and "stricter" not in result.output
