"""Every Beam job on Beam's portable runner (Prism) gives DirectRunner's results, on the 2015 data.

One Prism serves the module (`scripts/prism.sh start`, built on first use); SDK workers run in
processes of their own, from its worker pool (EXTERNAL) or started by Prism (PROCESS). Each test
runs a job on Prism and compares it with the same job on DirectRunner, mostly the session's
fixtures from conftest. What "equal" means per job:
- ingest, feedback: every output file byte-identical (manifests: the same counts).
- infer: byte-identical (infer never scores a batch of one row, whose kernels round otherwise;
  scores are also compared within SCORE_ATOL, to name the rows should that ever change).
- statistics: every count equal; floating-point numbers equal to 1e-9, except the ones TFDV takes
  from its approximate quantiles sketch (every histogram's bounds and counts, the median), within
  STATS_QUANTILE_RTOL.
- transform: every feature of every example equal, except features of approximate analyzers
  (`tft.bucketize`), which may differ on under APPROXIMATE_ROWS_MAX of the rows.
- evaluate: every metric equal to 1e-6, and the same blessing.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf.descriptor import FieldDescriptor
from tensorflow_metadata.proto.v0 import statistics_pb2

from beam_jobs import evaluate, feedback, infer, ingest, statistics, transform
from beam_jobs.lib import layout
from model import features
from tests.conftest import (
    CURATED_SCHEMA,
    DEMO_EVAL_CONFIG,
    DEMO_PREPROCESSING_FN,
    DEMO_TRAIN_STEPS,
    REPO_ROOT,
    direct_options,
)

PRISM_SH = REPO_ROOT / "scripts" / "prism.sh"
# Building Prism the first time takes a few minutes on two busy cores.
PRISM_START_TIMEOUT_S = 1200
# Where Go's official archive installs; scripts/prism.sh looks there when `go` is not on the PATH.
GO_ARCHIVE_BINARY = "/usr/local/go/bin/go"
STATS_FLOAT_RTOL = 1e-9
STATS_QUANTILE_RTOL = 1e-2
APPROXIMATE_ROWS_MAX = 0.01
METRIC_ATOL = 1e-6
# Infer's scores on another runner: equal but for float32 rounding (2**-24 of a score in [0, 1]).
SCORE_ATOL = 1e-7
# Features computed by approximate analyzers (quantiles behind tft.bucketize).
APPROXIMATE_FEATURES = frozenset(features.transformed_name(key) for key in features.BUCKET_FEATURES)
SPLITS = ("train", "eval")

# Seconds each job took, printed at the end of the module (README "Runners").
TIMINGS: dict[tuple[str, str], float] = {}


def _prism_sh(run_dir: pathlib.Path, *args: str) -> str:
    env = dict(os.environ, PRISM_RUN_DIR=str(run_dir), VENV_DIR=sys.prefix)
    done = subprocess.run(
        [str(PRISM_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=PRISM_START_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"prism.sh {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def prism(tmp_path_factory) -> Iterator[pathlib.Path]:
    """A Prism with a worker pool on 127.0.0.1, for this module; its state folder."""
    if shutil.which("go") is None and not pathlib.Path(GO_ARCHIVE_BINARY).exists():
        pytest.skip("go is not installed: scripts/prism.sh builds Prism with it")
    run_dir = tmp_path_factory.mktemp("prism") / "run"
    _prism_sh(run_dir, "start", "--environment_type=EXTERNAL")
    yield run_dir
    _prism_sh(run_dir, "stop")
    for (job, runner), seconds in sorted(TIMINGS.items()):
        print(f"{job:<12} {runner:<22} {seconds:6.1f} s")


def portable_options(run_dir: pathlib.Path, environment_type: str) -> PipelineOptions:
    """The Beam options `scripts/prism.sh options` prints, for EXTERNAL or PROCESS workers."""
    flags = _prism_sh(run_dir, "options", f"--environment_type={environment_type}").split()
    assert "--runner=PortableRunner" in flags
    return PipelineOptions(flags)


def _timed(job: str, runner: str, fn, *args):
    started = time.monotonic()
    result = fn(*args)
    TIMINGS[(job, runner)] = time.monotonic() - started
    return result


def _files(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under `root` but the manifest, by relative path."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


def _manifest(root: pathlib.Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _assert_same_files(portable: pathlib.Path, direct: pathlib.Path) -> None:
    ours, theirs = _files(portable), _files(direct)
    assert sorted(ours) == sorted(theirs)
    differing = [name for name in ours if ours[name] != theirs[name]]
    assert not differing, f"differ from DirectRunner's: {differing}"
    assert _manifest(portable)["counts"] == _manifest(direct)["counts"]


def test_ingest_shards_are_byte_identical(prism, cfpb_2015_csv, ingested_2015_curated, tmp_path):
    output_dir = tmp_path / "ingest"
    config = ingest.IngestConfig(
        input=str(cfpb_2015_csv), output_dir=str(output_dir), schema=str(CURATED_SCHEMA)
    )
    # PROCESS mode here: Prism starts the workers itself (the other tests use the worker pool).
    _timed("ingest", "Prism PROCESS", ingest.run, config, portable_options(prism, "PROCESS"))
    _assert_same_files(output_dir, ingested_2015_curated)


def _stats_differences(
    portable: object, direct: object, path: str, quantiles: bool
) -> Iterator[str]:
    """Where two statistics protos differ beyond the module's tolerances, as readable paths."""
    for field in direct.DESCRIPTOR.fields:
        name, ours, theirs = (
            f"{path}.{field.name}",
            getattr(portable, field.name),
            getattr(direct, field.name),
        )
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        ours, theirs = (list(ours), list(theirs)) if repeated else ([ours], [theirs])
        if len(ours) != len(theirs):
            yield f"{name}: {len(ours)} values, DirectRunner {len(theirs)}"
            continue
        for mine, other in zip(ours, theirs, strict=True):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                # TFDV draws every histogram, equal-width ones too, from its quantiles sketch.
                histogram = (
                    other.DESCRIPTOR.full_name == statistics_pb2.Histogram.DESCRIPTOR.full_name
                )
                yield from _stats_differences(mine, other, name, quantiles or histogram)
            elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                rtol = (
                    STATS_QUANTILE_RTOL if quantiles or field.name == "median" else STATS_FLOAT_RTOL
                )
                if not math.isclose(mine, other, rel_tol=rtol, abs_tol=1e-12):
                    yield f"{name}: {mine} vs DirectRunner {other}"
            elif mine != other:
                yield f"{name}: {mine!r} vs DirectRunner {other!r}"


def test_statistics_counts_equal_numbers_within_tolerance(prism, ingested_2015_curated, tmp_path):
    outputs = {}
    for runner, options in (("DirectRunner", direct_options()), ("Prism EXTERNAL", None)):
        outputs[runner] = tmp_path / runner.split()[0]
        config = statistics.StatisticsConfig(
            examples_dir=str(ingested_2015_curated), output_dir=str(outputs[runner])
        )
        _timed(
            "statistics",
            runner,
            statistics.run,
            config,
            options or portable_options(prism, "EXTERNAL"),
        )
    for split in SPLITS:
        stats = {}
        for runner, output_dir in outputs.items():
            parsed = statistics_pb2.DatasetFeatureStatisticsList.FromString(
                (output_dir / split / "stats.pb").read_bytes()
            )
            (dataset,) = parsed.datasets
            stats[runner] = dataset
        portable, direct = stats["Prism EXTERNAL"], stats["DirectRunner"]
        assert portable.num_examples == direct.num_examples > 0
        by_path = {
            runner: {f.path.SerializeToString(): f for f in d.features}
            for runner, d in stats.items()
        }
        assert by_path["Prism EXTERNAL"].keys() == by_path["DirectRunner"].keys()
        differences = [
            difference
            for key, feature in by_path["DirectRunner"].items()
            for difference in _stats_differences(
                by_path["Prism EXTERNAL"][key], feature, ".".join(feature.path.step), False
            )
        ]
        assert not differences, f"{split}: {differences[:10]}"


def _examples(split_dir: pathlib.Path) -> list[dict[str, tuple]]:
    """Every tf.Example of a split's shards, as {feature: values}."""
    rows = []
    for path in sorted(split_dir.glob("*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            row = {}
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                row[name] = tuple(getattr(feature, kind).value) if kind else ()
            rows.append(row)
    return rows


def _approximate_mismatches(portable: list[dict], direct: list[dict]) -> int:
    """Rows whose approximate features differ, after every other feature matched exactly.

    Shards are sorted by content, so rows are paired by their exact features: for each group of
    rows equal there, the approximate values are compared as multisets.
    """

    def split_row(row: dict) -> tuple[tuple, tuple]:
        exact = tuple(sorted((k, v) for k, v in row.items() if k not in APPROXIMATE_FEATURES))
        approximate = tuple(sorted((k, v) for k, v in row.items() if k in APPROXIMATE_FEATURES))
        return exact, approximate

    groups: dict[tuple, list[collections.Counter]] = collections.defaultdict(
        lambda: [collections.Counter(), collections.Counter()]
    )
    for side, rows in enumerate((portable, direct)):
        for row in rows:
            exact, approximate = split_row(row)
            groups[exact][side][approximate] += 1
    unmatched_exact = [k for k, (ours, theirs) in groups.items() if ours.total() != theirs.total()]
    assert not unmatched_exact, f"rows differ outside {sorted(APPROXIMATE_FEATURES)}"
    return sum((ours - theirs).total() for ours, theirs in groups.values())


def test_transform_equal_but_approximate_buckets(
    prism, ingested_2015_curated, transformed_2015, tmp_path
):
    output_dir = tmp_path / "transform"
    config = transform.TransformConfig(
        examples_dir=str(ingested_2015_curated),
        schema=str(CURATED_SCHEMA),
        output_dir=str(output_dir),
        preprocessing_fn=DEMO_PREPROCESSING_FN,
    )
    _timed(
        "transform", "Prism EXTERNAL", transform.run, config, portable_options(prism, "EXTERNAL")
    )
    assert _manifest(output_dir)["counts"] == _manifest(transformed_2015)["counts"]
    for asset in ("transform_fn/assets", "transformed_metadata", "metadata"):
        assert _files(output_dir / asset) == _files(transformed_2015 / asset), asset
    for split in SPLITS:
        portable = _examples(output_dir / "transformed_examples" / split)
        direct = _examples(transformed_2015 / "transformed_examples" / split)
        assert len(portable) == len(direct) > 0
        mismatched = _approximate_mismatches(portable, direct)
        assert mismatched < APPROXIMATE_ROWS_MAX * len(direct), (split, mismatched)


def _metric_values(value: object, path: str = "") -> Iterator[tuple[str, float]]:
    """The numbers of one TFMA slice's metrics (nested dicts), with their paths."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _metric_values(value[key], f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _metric_values(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def _slice_metrics(output_dir: pathlib.Path) -> dict[str, dict[str, float]]:
    result = tfma.load_eval_result(str(output_dir / layout.TFMA_DIR))
    return {str(key): dict(_metric_values(metrics)) for key, metrics in result.slicing_metrics}


def test_evaluate_metrics_equal(
    prism, trained_2015_steps, ingested_2015_curated, evaluated_2015, tmp_path
):
    output_dir = tmp_path / "evaluate"
    config = evaluate.EvaluateConfig(
        model_dir=str(trained_2015_steps(DEMO_TRAIN_STEPS)),
        examples_dir=str(ingested_2015_curated),
        output_dir=str(output_dir),
        eval_config=str(DEMO_EVAL_CONFIG),
    )
    _timed("evaluate", "Prism EXTERNAL", evaluate.run, config, portable_options(prism, "EXTERNAL"))
    portable, direct = _slice_metrics(output_dir), _slice_metrics(evaluated_2015)
    assert portable.keys() == direct.keys() and "()" in direct
    for slice_key, metrics in direct.items():
        assert portable[slice_key].keys() == metrics.keys(), slice_key
        for name, value in metrics.items():
            ours = portable[slice_key][name]
            assert math.isclose(ours, value, abs_tol=METRIC_ATOL) or (
                math.isnan(ours) and math.isnan(value)
            ), (slice_key, name, ours, value)
    blessed = [
        json.loads((d / layout.BLESSING_JSON).read_text())["blessed"]
        for d in (output_dir, evaluated_2015)
    ]
    assert blessed[0] == blessed[1]


def _infer_config(model_dir: pathlib.Path, ingested: pathlib.Path, output_dir: pathlib.Path):
    """conftest's `predictions_2015` configuration, into another output directory."""
    return infer.InferConfig(
        model_dir=str(model_dir),
        input=str(ingested / "eval" / "*.tfrecord.gz"),
        output_dir=str(output_dir),
        id_column="complaint_id",
        schema=str(CURATED_SCHEMA),
    )


@pytest.fixture(scope="module")
def infer_portable(prism, trained_2015_steps, ingested_2015_curated, tmp_path_factory):
    """conftest's `predictions_2015` run again on Prism (EXTERNAL)."""
    output_dir = tmp_path_factory.mktemp("infer_portable") / "out"
    config = _infer_config(trained_2015_steps(DEMO_TRAIN_STEPS), ingested_2015_curated, output_dir)
    _timed("infer", "Prism EXTERNAL", infer.run, config, portable_options(prism, "EXTERNAL"))
    return output_dir


def _prediction_logs(output_dir: pathlib.Path) -> list[tuple[bytes, list[float]]]:
    """Each PredictionLog as (its request, the float values of its response)."""
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for path in sorted((output_dir / "prediction_logs").glob("*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            response = log.predict_log.response
            values = [
                v for key in sorted(response.outputs) for v in response.outputs[key].float_val
            ]
            logs.append((log.predict_log.request.SerializeToString(), values))
    return logs


def test_infer_outputs_equal_scores_to_float32_rounding(infer_portable, predictions_2015):
    portable, direct = _files(infer_portable), _files(predictions_2015)
    assert sorted(portable) == sorted(direct)
    assert _manifest(infer_portable)["counts"] == _manifest(predictions_2015)["counts"]
    for name in portable:
        if name.startswith("predictions/"):
            ours = [json.loads(line) for line in portable[name].splitlines()]
            theirs = [json.loads(line) for line in direct[name].splitlines()]
            assert [dict(p, score=None) for p in ours] == [dict(p, score=None) for p in theirs]
            for mine, other in zip(ours, theirs, strict=True):
                assert math.isclose(mine["score"], other["score"], abs_tol=SCORE_ATOL), mine
        elif not name.startswith("prediction_logs/"):
            assert portable[name] == direct[name], name
    ours, theirs = _prediction_logs(infer_portable), _prediction_logs(predictions_2015)
    assert [request for request, _ in ours] == [request for request, _ in theirs]
    for (_, mine), (_, other) in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(other, abs=SCORE_ATOL)


def test_infer_outputs_are_byte_identical(infer_portable, predictions_2015):
    _assert_same_files(infer_portable, predictions_2015)


def _feedback_file(predictions_dir: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """Label events for every tenth prediction, a correction, implicit events and unknown ids."""
    ids = []
    for shard in sorted((predictions_dir / "predictions").glob("*.jsonl*")):
        opener = gzip.open if shard.suffix == ".gz" else open
        with opener(shard, "rt") as lines:
            ids += [json.loads(line)["tracking_id"] for line in lines if line.strip()]
    events = [
        {"tracking_id": tracking, "kind": "label", "value": "Yes" if i % 3 else "No"}
        for i, tracking in enumerate(sorted(ids)[::10])
    ]
    events += [{"tracking_id": ids[0], "kind": "correction", "value": "No"}]
    events += [{"tracking_id": ids[1], "kind": "implicit", "value": ""}] * 3
    events += [{"tracking_id": "no-such-id", "kind": "label", "value": "Yes"}]
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    return path


def test_feedback_outputs_are_byte_identical(prism, predictions_2015, tmp_path):
    source = _feedback_file(predictions_2015, tmp_path / "feedback.jsonl")
    outputs = {}
    for runner in ("DirectRunner", "Prism EXTERNAL"):
        outputs[runner] = tmp_path / runner.split()[0]
        config = feedback.FeedbackConfig(
            predictions=str(predictions_2015),
            feedback=str(source),
            output_dir=str(outputs[runner]),
            positive_value="Yes",
            negative_value="No",
        )
        options = (
            direct_options() if runner == "DirectRunner" else portable_options(prism, "EXTERNAL")
        )
        _timed("feedback", runner, feedback.run, config, options)
    assert _manifest(outputs["DirectRunner"])["counts"]["ids_labelled"] > 100
    _assert_same_files(outputs["Prism EXTERNAL"], outputs["DirectRunner"])
