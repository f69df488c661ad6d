"""Tests of the statistics job: TFDV statistics per split, slices, counts, the HTML page."""

from __future__ import annotations

import json
import pathlib

import pytest
from apache_beam.testing import test_pipeline
from click.testing import CliRunner

from beam_jobs import statistics
from beam_jobs.lib import artifacts, cli, layout, records, tfdv_io
from tests import browser
from tests.conftest import direct_options

CFPB_2015_FEATURES = (
    "col_0",
    "complaint_id",
    "product",
    "sub_product",
    "issue",
    "sub_issue",
    "state",
    "zip_code",
    "date_received",
    "date_sent_to_company",
    "company_response",
    "timely_response",
    "consumer_disputed",
)


def write_tiny_ingest_output(directory: pathlib.Path, rows: int) -> pathlib.Path:
    """An ingest-like output: one `train` split of `rows` examples and a manifest saying so."""
    examples = (
        records.encode_example(
            {"product": ["Mortgage", "Credit card"][i % 2], "amount": str(i)},
            {"amount": records.ColumnType.INT},
        ).SerializeToString()
        for i in range(rows)
    )
    (directory / "train").mkdir(parents=True)
    artifacts.write_tfrecords(
        str(directory / "train" / "data-00000-of-00001.tfrecord.gz"), examples
    )
    artifacts.write_json(
        str(directory / artifacts.MANIFEST_FILE),
        {"stage": "ingest", "splits": ["train"], "counts": {"rows_written": {"train": rows}}},
    )
    return directory


@pytest.fixture(scope="module")
def statistics_2015(ingested_2015, tmp_path_factory) -> pathlib.Path:
    """Statistics of the ingested 2015 data, sliced by product."""
    output_dir = tmp_path_factory.mktemp("statistics_2015") / "out"
    config = statistics.StatisticsConfig(
        examples_dir=str(ingested_2015), output_dir=str(output_dir), slice_by=("product",)
    )
    statistics.run(config, direct_options())
    return output_dir


def test_statistics_of_every_split_count_what_ingest_wrote(ingested_2015, statistics_2015):
    ingest_manifest = artifacts.read_manifest(str(ingested_2015))
    manifest = artifacts.read_manifest(str(statistics_2015))
    written = ingest_manifest.counts["rows_written"]
    assert manifest.splits == ["train", "eval"]
    assert manifest.counts["examples"] == written
    assert sum(written.values()) == 28156
    assert manifest.inputs["examples"]["manifest_sha256"]
    assert manifest.parameters["slice_by"] == ["product"]
    for split in ("train", "eval"):
        stats = tfdv_io.load_statistics(str(statistics_2015 / split / layout.STATS_FILE))
        assert statistics.example_count(stats) == written[split]
        whole = stats.datasets[0]
        assert whole.name == "All Examples"
        assert {feature.path.step[0] for feature in whole.features} == set(CFPB_2015_FEATURES)


def test_slice_by_adds_one_dataset_per_value_beside_the_whole_set(statistics_2015):
    stats = tfdv_io.load_statistics(str(statistics_2015 / "train" / layout.STATS_FILE))
    names = [dataset.name for dataset in stats.datasets]
    slices = [dataset for dataset in stats.datasets if dataset.name.startswith("product_")]
    assert names[0] == "All Examples"
    assert "product_Mortgage" in names
    assert len(slices) == 11  # The 2015 extract's 11 products.
    assert sum(dataset.num_examples for dataset in slices) == stats.datasets[0].num_examples


def test_stats_html_names_every_feature(statistics_2015):
    page = (statistics_2015 / "eval" / statistics.HTML_FILE).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for feature in CFPB_2015_FEATURES:
        assert f"<td>{feature}</td>" in page
    assert "facets-overview" in page  # TFDV's interactive view follows the static table.
    assert "product_Mortgage" in page


def test_stats_html_renders_in_headless_chromium(statistics_2015, tmp_path):
    pixels = browser.screenshot(statistics_2015 / "train" / statistics.HTML_FILE, tmp_path)
    dark = browser.dark_pixels(pixels)
    assert dark > 10_000, "the screenshot is (nearly) blank: the page drew no text"


def test_build_pipeline_on_a_test_pipeline(tmp_path):
    examples_dir = write_tiny_ingest_output(tmp_path / "ingest", rows=5)
    config = statistics.StatisticsConfig(examples_dir=str(examples_dir), output_dir="unused")
    staging = tmp_path / "staging"
    with test_pipeline.TestPipeline(options=direct_options()) as pipeline:
        statistics.build_pipeline(pipeline, config, ["train"], str(staging))
    stats = tfdv_io.load_statistics(str(staging / "train" / layout.STATS_FILE))
    assert statistics.example_count(stats) == 5
    assert json.loads((staging / ".counts.json").read_text()) == {"train": 5}


def test_sampling_still_counts_every_row(tmp_path):
    examples_dir = write_tiny_ingest_output(tmp_path / "ingest", rows=400)
    config = statistics.StatisticsConfig(
        examples_dir=str(examples_dir), output_dir=str(tmp_path / "out"), sample_rate=0.25
    )
    manifest = statistics.run(config, direct_options())
    stats = tfdv_io.load_statistics(str(tmp_path / "out" / "train" / layout.STATS_FILE))
    assert manifest.counts["examples"] == {"train": 400}
    assert 0 < statistics.example_count(stats) < 400


def test_a_count_that_differs_from_ingest_fails_and_publishes_nothing(tmp_path):
    examples_dir = write_tiny_ingest_output(tmp_path / "ingest", rows=7)
    manifest_path = examples_dir / artifacts.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["rows_written"]["train"] = 8
    manifest_path.write_text(json.dumps(manifest))
    output_dir = tmp_path / "out"
    config = statistics.StatisticsConfig(examples_dir=str(examples_dir), output_dir=str(output_dir))
    failed_dir = tmp_path / f"out{artifacts.FAILED_SUFFIX}"
    with pytest.raises(cli.JobError, match="read 7 examples but ingest wrote 8") as error:
        statistics.run(config, direct_options())
    assert f"partial output kept in {failed_dir}" in str(error.value)
    assert not output_dir.exists()
    # No staging directory left behind; the failed run's output waits aside, never published.
    assert sorted(tmp_path.iterdir()) == [examples_dir, failed_dir]
    assert not (failed_dir / artifacts.MANIFEST_FILE).exists()


def test_slice_by_an_unknown_feature_fails(tmp_path):
    examples_dir = write_tiny_ingest_output(tmp_path / "ingest", rows=3)
    config = statistics.StatisticsConfig(
        examples_dir=str(examples_dir), output_dir=str(tmp_path / "out"), slice_by=("state",)
    )
    with pytest.raises(cli.JobError, match=r"--slice_by=state is not a feature .*amount, product"):
        statistics.run(config, direct_options())


def test_cli_refuses_an_unfinished_examples_dir_in_one_line(tmp_path):
    unfinished = tmp_path / "ingest"
    unfinished.mkdir()
    result = CliRunner().invoke(
        statistics.main,
        [f"--examples_dir={unfinished}", f"--output_dir={tmp_path / 'out'}"],
    )
    assert result.exit_code == cli.EXIT_ERROR
    assert result.stderr.count("\n") == 1
    assert "--examples_dir" in result.stderr and "no manifest.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_statistics_and_forwards_beam_flags(tmp_path):
    examples_dir = write_tiny_ingest_output(tmp_path / "ingest", rows=4)
    result = CliRunner().invoke(
        statistics.main,
        [
            f"--examples_dir={examples_dir}",
            f"--output_dir={tmp_path / 'out'}",
            "--slice_by=product",
            "--runner=DirectRunner",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = artifacts.read_manifest(str(tmp_path / "out"))
    assert manifest.counts == {"datasets": {"train": 3}, "examples": {"train": 4}}


def test_help_lists_the_job_flags():
    result = CliRunner().invoke(statistics.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--examples_dir", "--output_dir", "--slice_by", "--sample_rate"):
        assert flag in result.output
