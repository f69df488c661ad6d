"""Tests of `python -m beam_jobs.model_card` on the real 2015 data: a pushed model, a DP model."""

from __future__ import annotations

import contextlib
import html
import json
import pathlib

import pytest
from click.testing import CliRunner

from beam_jobs import evaluate, model_card, push
from beam_jobs.lib import cli, layout
from tests import browser
from tests.conftest import direct_options


def _card(*flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(model_card.main, list(flags))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def pushed_2015(evaluated_2015, tmp_path_factory) -> pathlib.Path:
    """The blessed demo model of `evaluated_2015`, pushed: its version directory."""
    serving = tmp_path_factory.mktemp("serving_card")
    candidate = json.loads((evaluated_2015 / layout.BLESSING_JSON).read_text())["candidate"]
    version = push.push(push.PushConfig(str(serving), candidate["path"], str(evaluated_2015)))
    return serving / str(version)


def test_card_of_a_pushed_model_lists_slices_data_and_limitations(pushed_2015, tmp_path):
    output = tmp_path / "card.html"
    exit_code, log = _card(f"--model_dir={pushed_2015}", f"--output={output}")
    assert exit_code == 0, log
    text = html.unescape(output.read_text())
    for expected in (
        f"Model card: {pushed_2015}",
        "pushed version",
        "Metrics by product",
        "Metrics by state",
        "product=Debt collection",
        "product=Mortgage",
        "state=TX",
        "state=CA",
        "FPR@0.25",
        "FNR@0.50",
        "Worst slices",
        "Trained without differential privacy.",
        "consumer_complaints_cfpb_2015.csv",
        "2015-01-01",  # date span of date_received in the ingested examples
        "2015-03-19",
        "18,741",  # training rows
        "Sparse label: 16.9% of the 18,741 training examples",
        "No consumer_complaint_narrative in the training data",
        "eval examples (",  # slices with few examples, named
        "hparam wide_units",
        "schemas/consumer_complaints/schema.pbtxt",
    ):
        assert expected in text, expected
    worst = text[text.index("Worst slices") : text.index("Known limitations")]
    assert worst.count("<tr>") == 1 + model_card.WORST_SLICES_SHOWN
    pixels = browser.screenshot(output, tmp_path)
    assert browser.dark_pixels(pixels) > 10_000, "the screenshot is (nearly) blank"
    # A card replaces an earlier card, never another file, and a directory is no page to write.
    assert _card(f"--model_dir={pushed_2015}", f"--output={output}")[0] == 0
    notes = tmp_path / "notes.html"
    notes.write_text("<html><title>My notes</title></html>")
    for target, message in ((notes, "exists and is not a model card"), (tmp_path, "a directory")):
        exit_code, log = _card(f"--model_dir={pushed_2015}", f"--output={target}")
        assert exit_code == cli.EXIT_ERROR and message in log and "Traceback" not in log
        assert len(log.strip().splitlines()) == 1, log
    assert notes.read_text() == "<html><title>My notes</title></html>"


def test_worst_slices_have_the_lowest_auc_among_slices_with_enough_examples(evaluated_2015):
    slices = model_card.slice_metrics(str(evaluated_2015))
    worst = model_card.worst_slices(slices, min_examples=100)
    eligible = [s for s in slices if s.group != "overall" and s.examples >= 100]
    assert len(worst) == model_card.WORST_SLICES_SHOWN
    assert all(item.examples >= 100 for item in worst)
    assert max(item.auc for item in worst) <= min(
        item.auc for item in eligible if item not in worst
    )
    assert {item.group for item in slices} == {"overall", "product", "state"}


def test_card_of_a_dp_model_reports_epsilon(trained_2015_dp, ingested_2015_curated, tmp_path):
    export = trained_2015_dp["manifest"].extra["export_path"]
    evaluation = tmp_path / "evaluation"
    config = evaluate.EvaluateConfig(
        model_dir=export, examples_dir=str(ingested_2015_curated), output_dir=str(evaluation)
    )
    with contextlib.suppress(cli.NotBlessedError):  # a card describes a model blessed or not
        evaluate.run(config, direct_options())
    output = tmp_path / "card.html"
    exit_code, log = _card(
        f"--model_dir={export}", f"--evaluation_dir={evaluation}", f"--output={output}"
    )
    assert exit_code == 0, log
    text = html.unescape(output.read_text())
    privacy = trained_2015_dp["manifest"].extra["privacy"]
    assert f"ε = {privacy['epsilon']:.3g} at δ = 1e-05" in text
    assert "noise_multiplier" in text and "l2_norm_clip" in text
    assert "The (ε, δ) guarantee covers the model's weights" in text
    assert "state=TX" in text and "product=Mortgage" in text


def test_card_of_a_saved_model_without_evaluation_is_a_usage_error(tmp_path):
    exit_code, log = _card(f"--model_dir={tmp_path}", f"--output={tmp_path / 'card.html'}")
    assert exit_code == 2
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "give --evaluation_dir" in errors[0], log
