"""Benchmarks every stage against the script a user would write with the same library, in one run.

    python scripts/benchmark.py [--sizes=1,10] [--stages=ingest,statistics,transform,train,evaluate]
        [--repeats=1] [--source=../shared/data/...csv] [--workdir=DIR]

Builds inputs of N x the 2015 CFPB extract (rows replicated with distinct ids, so hash splits stay
balanced), then for each size runs ingest, statistics, transform, train and evaluate as separate
processes (the Beam stages on DirectRunner), recording wall time, rows per second and the peak
resident memory of the whole process tree. In the same run, each beside its plain-library
reference: ingest against a single-process pyarrow + tfx_bsl converter, statistics against
`tfdv.generate_statistics_from_csv`, transform against `tft_beam.AnalyzeAndTransformDataset`,
train against `model.fit` on a plain tf.data pipeline (same steps and batch), evaluate against
`tfma.run_model_analysis`; and one worker against two in multi-processing mode for ingest,
statistics and transform (whose counts must still add up). A tiny input measures the fixed
start-up cost. Machines are noisy: only ratios from one run mean anything, and with
`--repeats=N` each stage and its reference run alternately N times (ours, reference, ours, ...),
so a drift in machine speed falls on both; the seconds reported are each side's median and the
ratio theirs. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "consumer_complaints_cfpb_2015.csv"
SCHEMA = REPO_ROOT / "schemas" / "consumer_complaints" / "schema.pbtxt"
# Every stage needs ingest's output; train fits on transform's; evaluate scores train's model.
STAGES = ("ingest", "statistics", "transform", "train", "evaluate")
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
STARTUP_ROWS = 100
_ID_COLUMNS = ("", "Complaint ID")
_POLL_SECONDS = 0.2
_MIN_SECONDS_BEYOND_STARTUP = 1.0
# Train (ours and the plain Keras script alike): one epoch of at most TRAIN_STEPS global batches
# of BATCH_SIZE, validated and evaluated on EVAL_STEPS eval batches, then exported.
TRAIN_STEPS = 1000
EVAL_STEPS = 50
BATCH_SIZE = 64


@dataclasses.dataclass
class Measurement:
    """One timed process: what ran, on how many rows, how long, and its peak memory."""

    stage: str
    size: str
    rows: int
    seconds: float
    peak_mb: float
    reference: str | None = None
    ratio: float | None = None
    # Every run's seconds when the stage was repeated (`seconds` is their median).
    runs: list[float] = dataclasses.field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def replicate_csv(source: pathlib.Path, target: pathlib.Path, times: int, rows: int = 0) -> int:
    """Writes `times` copies of the source rows (or its first `rows`) with ids distinct per copy."""
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        body = list(reader)
    if rows:
        body = body[:rows]
    id_indexes = [header.index(name) for name in _ID_COLUMNS if name in header]
    offset = 10 ** len(str(max(int(row[i]) for row in body for i in id_indexes if row[i]) + 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for copy in range(times):
            for row in body:
                row = list(row)
                for index in id_indexes:
                    if row[index]:
                        row[index] = str(int(row[index]) + copy * offset)
                writer.writerow(row)
    return times * len(body)


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def timed(command: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Runs a command; returns (seconds, peak MB of its process tree). Fails loudly on error."""
    start = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        process = psutil.Process(child.pid)
        while not done.is_set():
            try:
                peak = max(peak, _tree_rss(process))
            except psutil.Error:
                return
            time.sleep(_POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, stderr = child.communicate()
    done.set()
    poller.join()
    seconds = time.perf_counter() - start
    if child.returncode not in ok_codes:
        tail = stderr.decode("utf-8", "replace")[-3000:]
        raise SystemExit(f"benchmark: {' '.join(command)} failed ({child.returncode}):\n{tail}")
    return seconds, peak / 2**20


def job(module: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", module, *flags, "--runner=DirectRunner"]


def reference_command(stage: str, arguments: list[str]) -> list[str]:
    """This script run as the plain-library reference of a stage."""
    return [sys.executable, __file__, f"--reference={stage}", *arguments]


def manifest_counts(stage_dir: pathlib.Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())["counts"]


def _as_list_columns(batch):
    """tf.Example features are lists: each value becomes a one-item list, a null an empty one."""
    import numpy as np
    import pyarrow as pa

    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type):
            column = column.cast(pa.binary())
        offsets = np.concatenate([[0], np.cumsum(column.is_valid().to_numpy(zero_copy_only=False))])
        columns.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), column.drop_null()))
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def reference_ingest(csv_path: str, output_path: str) -> None:
    """The fast single-process conversion: pyarrow CSV → tfx_bsl tf.Example encoder → TFRecord."""
    import pyarrow.csv as pv
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from beam_jobs.lib import records

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle))
    names = [records.normalize_column_name(name, index) for index, name in enumerate(header)]
    reader = pv.open_csv(
        csv_path,
        read_options=pv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pv.ParseOptions(newlines_in_values=True),
        convert_options=pv.ConvertOptions(strings_can_be_null=True),
    )
    encoder = example_coder.RecordBatchToExamplesEncoder()
    count = 0
    with tf.io.TFRecordWriter(output_path, options="GZIP") as writer:
        for batch in reader:
            for serialized in encoder.encode(_as_list_columns(batch)):
                writer.write(serialized)
                count += 1
    print(count)


def reference_statistics(csv_path: str, output_path: str) -> None:
    """What a user would call instead of the statistics job."""
    import tensorflow_data_validation as tfdv

    tfdv.generate_statistics_from_csv(csv_path, output_path=output_path)


def _split_patterns(examples_dir: str) -> dict[str, str]:
    """Each split folder of an ingest output and the pattern of its TFRecord files."""
    root = pathlib.Path(examples_dir)
    return {
        path.name: str(path / "*.tfrecord.gz")
        for path in sorted(root.iterdir())
        if path.is_dir() and any(path.glob("*.tfrecord.gz"))
    }


def reference_transform(examples_dir: str, schema_path: str, output_dir: str) -> None:
    """The plain TFT script: TFXIO source, AnalyzeAndTransformDataset on train, TransformDataset on
    the other splits, EncodeTransformedDataset, WriteToTFRecord; the transform_fn written too."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    from model.preprocessing import preprocessing_fn  # the user's code

    schema = text_format.Parse(pathlib.Path(schema_path).read_text(), schema_pb2.Schema())
    patterns = _split_patterns(examples_dir)

    def write(dataset, split: str):
        return (
            dataset
            | f"Encode{split}" >> tft_beam.EncodeTransformedDataset()
            | f"Write{split}"
            >> beam.io.WriteToTFRecord(
                f"{output_dir}/transformed_examples/{split}/data", file_name_suffix=".tfrecord.gz"
            )
        )

    context = tft_beam.Context(temp_dir=f"{output_dir}/tmp")
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as pipeline, context:
        train = tfxio.TFExampleRecord(file_pattern=patterns["train"], schema=schema)
        raw = pipeline | "ReadTrain" >> train.BeamSource()
        transformed, transform_fn = (
            raw,
            train.TensorAdapterConfig(),
        ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn, output_record_batches=True
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(output_dir)
        write(transformed, "train")
        for split, pattern in patterns.items():
            if split == "train":
                continue
            source = tfxio.TFExampleRecord(file_pattern=pattern, schema=schema)
            data = pipeline | f"Read{split}" >> source.BeamSource()
            write(
                ((data, source.TensorAdapterConfig()), transform_fn)
                | f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True),
                split,
            )


def reference_train(transform_dir: str, output_dir: str, steps: str, eval_steps: str) -> None:
    """The plain Keras script: the demo model fitted on a plain tf.data pipeline for the same
    steps, batch and validation steps as our `model.train` run, evaluated, and exported with a
    serving signature over raw examples (TFT's layer in front of the model)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from model.model import build_model  # the user's code

    label = "consumer_disputed_xf"
    tf_output = tft.TFTransformOutput(transform_dir)
    tf.keras.utils.set_random_seed(42)
    keras_model = build_model(tf_output, {})
    full_spec = tf_output.transformed_feature_spec()
    spec = {key: full_spec[key] for key in (*keras_model.input_names, label)}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return parsed, tf.reshape(tf.cast(parsed.pop(label), tf.float32), [-1, 1])

    def dataset(split: str, training: bool):
        files = sorted(tf.io.gfile.glob(f"{transform_dir}/transformed_examples/{split}/*"))
        data = tf.data.TFRecordDataset(files, compression_type="GZIP")
        if training:
            data = data.shuffle(10_000, seed=42).repeat()
        data = data.batch(BATCH_SIZE, drop_remainder=training)
        return data.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    eval_data = dataset("eval", training=False)
    keras_model.fit(
        dataset("train", training=True),
        steps_per_epoch=int(steps),
        epochs=1,
        validation_data=eval_data,
        validation_steps=int(eval_steps),
        verbose=2,
    )
    keras_model.evaluate(eval_data, steps=int(eval_steps), verbose=0)
    keras_model.tft_layer = tf_output.transform_features_layer()
    raw_spec = tf_output.raw_feature_spec()
    serving_spec = {key: value for key, value in raw_spec.items() if key != "consumer_disputed"}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        transformed = keras_model.tft_layer(tf.io.parse_example(serialized, serving_spec))
        return {
            "outputs": keras_model({name: transformed[name] for name in keras_model.input_names})
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform(serialized):
        return keras_model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    keras_model.save(
        f"{output_dir}/serving_model",
        save_format="tf",
        signatures={"serving_default": serve, "transform_features": transform},
        include_optimizer=False,
    )


def reference_evaluate(
    model_dir: str, examples_dir: str, eval_config: str, output_dir: str
) -> None:
    """The plain TFMA call: `tfma.run_model_analysis` with the demo EvalConfig on the eval split,
    the config's serving signature and label as the export names them."""
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    config = text_format.Parse(pathlib.Path(eval_config).read_text(), tfma.EvalConfig())
    tfma.run_model_analysis(
        eval_shared_model=tfma.default_eval_shared_model(
            # No model serves yet: the change thresholds are skipped, as TFX's first run does.
            eval_saved_model_path=model_dir,
            eval_config=config,
            rubber_stamp=True,
        ),
        eval_config=config,
        data_location=_split_patterns(examples_dir)["eval"],
        output_path=output_dir,
    )


REFERENCES = {
    "ingest": reference_ingest,
    "statistics": reference_statistics,
    "transform": reference_transform,
    "train": reference_train,
    "evaluate": reference_evaluate,
}


class Benchmark:
    """Runs every stage for every size in one process tree, collecting measurements."""

    def __init__(
        self,
        workdir: pathlib.Path,
        source: pathlib.Path,
        stages: tuple[str, ...] = STAGES,
        repeats: int = 1,
    ) -> None:
        self.workdir = workdir
        self.source = source
        self.stages = stages
        self.repeats = repeats
        self.results: list[Measurement] = []
        self.model_dir: pathlib.Path | None = None

    def measure(
        self, stage: str, size: str, rows: int, command: list[str], ok_codes=(0,)
    ) -> Measurement:
        seconds, peak_mb = timed(command, ok_codes)
        return self._record(stage, size, rows, [seconds], peak_mb)

    def _record(
        self, stage: str, size: str, rows: int, runs: list[float], peak_mb: float
    ) -> Measurement:
        result = Measurement(stage, size, rows, statistics.median(runs), peak_mb)
        if len(runs) > 1:
            result.runs = runs
        self.results.append(result)
        each = f" (runs: {', '.join(f'{run:.1f}' for run in runs)})" if len(runs) > 1 else ""
        print(
            f"  {stage:<22} {size:>5} {result.seconds:8.1f} s {result.rows_per_second:10.0f} "
            f"rows/s {peak_mb:8.0f} MB{each}",
            flush=True,
        )
        return result

    def _compare(self, result: Measurement, reference: Measurement, name: str) -> None:
        result.reference, result.ratio = name, result.seconds / reference.seconds

    def compared(
        self,
        stage: str,
        size: str,
        rows: int,
        ours: Callable[[pathlib.Path], list[str]],
        name: str,
        reference: Callable[[pathlib.Path], list[str]],
        root: pathlib.Path,
        ok_codes=(0,),
    ) -> Measurement:
        """Our command and the reference's, alternated `repeats` times; each side's median.

        `ours` and `reference` build a command writing under the folder given: `root` the first
        time (its outputs are what later stages read), a scratch folder under it after that,
        deleted once measured (the benchmark's own files).
        """
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        peaks = {"ours": 0.0, "reference": 0.0}
        for attempt in range(self.repeats):
            base = root if attempt == 0 else root / f"repeat{attempt}"
            base.mkdir(parents=True, exist_ok=True)
            commands = {"ours": ours(base), "reference": reference_command(stage, reference(base))}
            for side, command in commands.items():
                seconds, peak_mb = timed(command, ok_codes if side == "ours" else (0,))
                times[side].append(seconds)
                peaks[side] = max(peaks[side], peak_mb)
            if attempt:
                shutil.rmtree(base)
        result = self._record(stage, size, rows, times["ours"], peaks["ours"])
        baseline = self._record(
            f"{stage} reference", size, rows, times["reference"], peaks["reference"]
        )
        self._compare(result, baseline, name)
        return result

    def stage(
        self,
        stage: str,
        size: str,
        rows: int,
        flags: list[str],
        output_dir: pathlib.Path,
        reference: tuple[str, Callable[[pathlib.Path], list[str]]],
    ) -> Measurement:
        """A Beam stage on one worker beside its reference tool, then on two workers.

        `reference` is the tool's name and its arguments for an output folder. Returns the
        one-worker measurement; the two workers' run must write the same counts.
        """
        module = f"beam_jobs.{stage}"
        name, arguments = reference
        single = self.compared(
            stage,
            size,
            rows,
            lambda base: job(module, *flags, f"--output_dir={base / output_dir.name}"),
            name,
            arguments,
            output_dir.parent,
        )
        parallel_dir = output_dir.with_name(output_dir.name + "_mp")
        multi = self.measure(
            f"{stage} 2 workers",
            size,
            rows,
            job(module, *flags, f"--output_dir={parallel_dir}", *MULTI_PROCESS),
        )
        counts = manifest_counts(output_dir)
        assert manifest_counts(parallel_dir) == counts, f"{stage}: 2 workers changed the counts"
        self._compare(multi, single, "1 worker")
        return single

    def train(self, label: str, transform_dir: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
        """Our `model.train` beside the plain Keras script: one epoch, the same steps and batch.

        Rows are global steps, so rows/s is steps per second (of the whole process).
        """
        counts = manifest_counts(transform_dir)
        steps = min(TRAIN_STEPS, max(1, counts["examples_transformed"]["train"] // BATCH_SIZE))
        self.compared(
            "train",
            label,
            steps,
            lambda base: [
                sys.executable,
                "-m",
                "model.train",
                f"--transform_dir={transform_dir}",
                f"--output_dir={base / 'train'}",
                f"--train_steps={steps}",
                f"--eval_steps={EVAL_STEPS}",
                f"--batch_size={BATCH_SIZE}",
            ],
            "model.fit on tf.data",
            lambda base: [str(transform_dir), str(base / "ref_train"), str(steps), str(EVAL_STEPS)],
            root,
        )
        return _newest_export(root / "train")

    def run_size(self, label: str, csv_path: pathlib.Path, rows: int) -> None:
        root = self.workdir / label
        ingest_dir, transform_dir = root / "ingest", root / "transform"
        self.stage(
            "ingest",
            label,
            rows,
            [f"--input={csv_path}", f"--schema={SCHEMA}"],
            ingest_dir,
            (
                "pyarrow+tfx_bsl converter",
                lambda base: [str(csv_path), str(base / "ref.tfrecord.gz")],
            ),
        )
        counts = manifest_counts(ingest_dir)
        assert counts["rows_read"] == rows == sum(counts["rows_written"].values()), counts
        if "statistics" in self.stages:
            self.stage(
                "statistics",
                label,
                rows,
                [f"--examples_dir={ingest_dir}"],
                root / "statistics",
                (
                    "tfdv.generate_statistics_from_csv",
                    lambda base: [str(csv_path), str(base / "ref.stats")],
                ),
            )
        if "transform" not in self.stages:
            return
        self.stage(
            "transform",
            label,
            rows,
            [
                f"--examples_dir={ingest_dir}",
                f"--schema={SCHEMA}",
                "--preprocessing_fn=model.preprocessing:preprocessing_fn",
            ],
            transform_dir,
            (
                "tft_beam.AnalyzeAndTransformDataset",
                lambda base: [str(ingest_dir), str(SCHEMA), str(base / "ref_transform")],
            ),
        )
        assert sum(manifest_counts(transform_dir)["examples_transformed"].values()) == rows
        # Training on the 100-row input would be one-step epochs; start-up evaluates 1x's model.
        model_dir = self.model_dir
        if "train" in self.stages and label != "start":
            model_dir = self.train(label, transform_dir, root)
        if "evaluate" not in self.stages:
            return
        if model_dir is None:
            model_dir = self._train(transform_dir, root / "train")
        self.model_dir = self.model_dir or model_dir
        eval_rows = counts["rows_written"]["eval"]
        eval_config = REPO_ROOT / "model" / "eval_config.pbtxt"
        self.compared(
            "evaluate",
            label,
            eval_rows,
            lambda base: job(
                "beam_jobs.evaluate",
                f"--model_dir={model_dir}",
                f"--examples_dir={ingest_dir}",
                f"--eval_config={eval_config}",
                f"--output_dir={base / 'evaluate'}",
            ),
            "tfma.run_model_analysis",
            lambda base: [
                str(model_dir),
                str(ingest_dir),
                str(eval_config),
                str(base / "ref_evaluate"),
            ],
            root,
            ok_codes=(0, 4),  # blessed or not, the evaluation ran in full
        )

    def _train(self, transform_dir: pathlib.Path, output_dir: pathlib.Path) -> pathlib.Path:
        print("  (training the model that evaluate scores; not timed)", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model.train",
                f"--transform_dir={transform_dir}",
                f"--output_dir={output_dir}",
                "--train_steps=300",
            ],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return _newest_export(output_dir)


def _newest_export(train_dir: pathlib.Path) -> pathlib.Path:
    return max((train_dir / "serving_model").iterdir(), key=lambda path: int(path.name))


def scaling_report(results: list[Measurement]) -> list[dict]:
    """Per stage and size: time beyond start-up against linear growth, and peak memory growth.

    `time_vs_linear` is (t(N) - t0) / (N * (t(1x) - t0)), t0 the run on a tiny input: at most 1
    means the time grows at most linearly with the data. It is left out (None) where the 1x run
    is not clearly longer than start-up, which would make the ratio noise.
    """
    by_stage: dict[str, dict[str, Measurement]] = {}
    for result in results:
        by_stage.setdefault(result.stage, {})[result.size] = result
    report = []
    for stage, sizes in by_stage.items():
        startup, one = sizes.get("start"), sizes.get("1x")
        if not (startup and one):
            continue
        beyond_startup = one.seconds - startup.seconds
        for label, result in sizes.items():
            if label in ("start", "1x"):
                continue
            factor = int(label.rstrip("x"))
            ratio = None
            if beyond_startup > _MIN_SECONDS_BEYOND_STARTUP:
                ratio = (result.seconds - startup.seconds) / (factor * beyond_startup)
            report.append(
                {
                    "stage": stage,
                    "size": label,
                    "time_vs_linear": ratio,
                    "time_vs_1x": result.seconds / one.seconds,
                    "peak_memory_vs_1x": result.peak_mb / one.peak_mb,
                }
            )
    return report


def print_table(results: list[Measurement], scaling: list[dict]) -> None:
    print("\n| stage | size | rows | seconds | rows/s | peak MB | ratio (time) | vs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        print(
            f"| {r.stage} | {r.size} | {r.rows:,} | {r.seconds:.1f} | {r.rows_per_second:,.0f} | "
            f"{r.peak_mb:,.0f} | {ratio} | {r.reference or ''} |"
        )
    print("\n| stage | size | time / 1x | time beyond start-up / linear | peak memory / 1x |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in scaling:
        linear = "n/a" if row["time_vs_linear"] is None else f"{row['time_vs_linear']:.2f}"
        print(
            f"| {row['stage']} | {row['size']} | {row['time_vs_1x']:.2f} | {linear} | "
            f"{row['peak_memory_vs_1x']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10", help="Multiples of the 2015 extract.")
    parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="Stages to measure; ingest always runs, train and evaluate need transform.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Runs of each stage and of its reference, alternated; medians are compared.",
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/beam-benchmark"))
    parser.add_argument("--reference", choices=sorted(REFERENCES), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        sys.path.insert(0, str(REPO_ROOT))  # the user's code (model/) of this checkout
        REFERENCES[args.reference](*args.paths)
        return
    if not args.source.exists():
        raise SystemExit(f"benchmark: no source data at {args.source} (pass --source=<CFPB csv>)")
    sizes = [int(size) for size in args.sizes.split(",")]
    stages = ("ingest", *(stage for stage in STAGES[1:] if stage in args.stages.split(",")))
    if {"train", "evaluate"} & set(stages) and "transform" not in stages:
        raise SystemExit("benchmark: --stages with train or evaluate needs transform")
    if args.repeats < 1:
        raise SystemExit("benchmark: --repeats must be at least 1")
    benchmark = Benchmark(args.workdir, args.source, stages, args.repeats)
    started = time.perf_counter()
    tiny = args.workdir / "data" / "start.csv"
    plan = [("start", tiny, replicate_csv(args.source, tiny, 1, rows=STARTUP_ROWS))]
    for size in sorted(set(sizes) | {1}):
        path = args.workdir / "data" / f"{size}x.csv"
        plan.append((f"{size}x", path, replicate_csv(args.source, path, size)))
    # 1x first: it trains the model every size's evaluate scores. Then start-up, then larger sizes.
    for label, path, rows in [plan[1], plan[0], *plan[2:]]:
        print(f"size {label}: {rows:,} rows", flush=True)
        benchmark.run_size(label, path, rows)
    scaling = scaling_report(benchmark.results)
    print_table(benchmark.results, scaling)
    output = args.workdir / "benchmark.json"
    output.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "seconds_total": time.perf_counter() - started,
                "results": [
                    dataclasses.asdict(r) | {"rows_per_second": r.rows_per_second}
                    for r in benchmark.results
                ],
                "scaling": scaling,
            },
            indent=2,
        )
    )
    print(f"\nwrote {output} ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
