"""Local Flink and Spark session clusters from PyPI's runtimes run jobs of their own native APIs.

`scripts/flink_cluster.sh` and `scripts/spark_cluster.sh` start the clusters on 127.0.0.1; each
test submits a small job through the cluster's own client (Flink's `flink run` with a DataStream
job, Spark's `spark-submit` with a PySpark job) and checks its result. Beam's submissions to the
same clusters (FlinkRunner, SparkRunner) need Beam's job-server jar of the pinned version, which
these machines cannot fetch: those tests run only where the jar is named by
BEAM_FLINK_JOB_SERVER_JAR / BEAM_SPARK_JOB_SERVER_JAR, and say so otherwise.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from beam_jobs import ingest
from tests.conftest import CURATED_SCHEMA, REPO_ROOT

CLUSTERS = REPO_ROOT / "tests" / "clusters"
N = 1000
SUM_OF_SQUARES = N * (N + 1) * (2 * N + 1) // 6
# Fetching a runtime (230-320 MB) and starting its JVMs on two busy cores.
START_TIMEOUT_S = 900
JOB_TIMEOUT_S = 300
BEAM_VERSION = "2.60.0"


def _require_java() -> None:
    if shutil.which("java") is None:
        pytest.skip("java is not installed: Flink 1.18 and Spark 3.5 need Java 17")


def _script(name: str, run_dir: pathlib.Path, *args: str, env_var: str) -> str:
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / name), *args],
        env=dict(os.environ, **{env_var: str(run_dir)}),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{name} {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def spark(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running Spark cluster: its master URL and SPARK_HOME."""
    _require_java()
    run_dir = tmp_path_factory.mktemp("spark") / "run"
    url = _script("spark_cluster.sh", run_dir, "start", env_var="SPARK_RUN_DIR")
    home = _script("spark_cluster.sh", run_dir, "home", env_var="SPARK_RUN_DIR")
    yield {"url": url, "home": home}
    _script("spark_cluster.sh", run_dir, "stop", env_var="SPARK_RUN_DIR")


@pytest.fixture(scope="module")
def flink(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running Flink session cluster: its REST address and FLINK_HOME."""
    _require_java()
    run_dir = tmp_path_factory.mktemp("flink") / "run"
    address = _script("flink_cluster.sh", run_dir, "start", env_var="FLINK_RUN_DIR")
    home = _script("flink_cluster.sh", run_dir, "home", env_var="FLINK_RUN_DIR")
    yield {"address": address, "home": home}
    _script("flink_cluster.sh", run_dir, "stop", env_var="FLINK_RUN_DIR")


def _output_value(stdout: str, key: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"{key}=")]
    return line.split("=", 1)[1]


def test_spark_cluster_runs_a_pyspark_job(spark):
    home = pathlib.Path(spark["home"])
    (py4j,) = (home.parent / "lib").glob("py4j-*-src.zip")
    python_path = os.pathsep.join([str(home.parent), str(py4j)])
    done = subprocess.run(
        [
            str(home / "bin" / "spark-submit"),
            f"--master={spark['url']}",
            "--conf=spark.driver.host=127.0.0.1",
            "--conf=spark.driver.bindAddress=127.0.0.1",
            f"--conf=spark.executorEnv.PYTHONPATH={python_path}",
            str(CLUSTERS / "spark_sum_of_squares.py"),
            str(N),
        ],
        env=dict(
            os.environ,
            SPARK_HOME=str(home),
            SPARK_LOCAL_IP="127.0.0.1",
            PYTHONPATH=python_path,
            PYSPARK_PYTHON=sys.executable,
        ),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(_output_value(done.stdout, "sum_of_squares")) == SUM_OF_SQUARES
    executors = _output_value(done.stdout, "executor_pids").split(",")
    assert _output_value(done.stdout, "driver_pid") not in executors


def test_flink_cluster_runs_a_datastream_job(flink, tmp_path):
    home = pathlib.Path(flink["home"])
    (dist,) = (home / "lib").glob("flink-dist-*.jar")
    classes = tmp_path / "classes"
    javac = [
        "javac",
        "-cp",
        str(dist),
        "-d",
        str(classes),
        str(CLUSTERS / "SumOfSquares.java"),
    ]
    subprocess.run(javac, check=True, timeout=JOB_TIMEOUT_S)
    job_jar = tmp_path / "sum-of-squares.jar"
    subprocess.run(["jar", "cf", str(job_jar), "-C", str(classes), "."], check=True)
    done = subprocess.run(
        [
            str(home / "bin" / "flink"),
            "run",
            "-m",
            flink["address"],
            "-c",
            "SumOfSquares",
            str(job_jar),
            str(N),
        ],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert int(_output_value(done.stdout, "sum_of_squares")) == SUM_OF_SQUARES
    url = f"http://{flink['address']}/jobs/overview"
    with urllib.request.urlopen(url, timeout=10) as response:
        jobs = json.load(response)["jobs"]
    assert [(job["name"], job["state"]) for job in jobs] == [("SumOfSquares", "FINISHED")]


def _job_server_jar(variable: str, artifact: str) -> str:
    jar = os.environ.get(variable, "")
    if not jar or not pathlib.Path(jar).is_file():
        pytest.skip(
            f"{variable} names no jar: Beam's {artifact}-{BEAM_VERSION}.jar is not on this "
            "machine (Maven Central serves none here); on a networked machine Beam downloads it"
        )
    return jar


def _beam_ingest(csv: pathlib.Path, output_dir: pathlib.Path, runner_flags: list[str]) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions

    config = ingest.IngestConfig(
        input=str(csv), output_dir=str(output_dir), schema=str(CURATED_SCHEMA)
    )
    return ingest.run(config, PipelineOptions([*runner_flags, "--environment_type=LOOPBACK"]))


def test_beam_ingest_on_flink(flink, cfpb_2017_sample_csv, tmp_path):
    jar = _job_server_jar("BEAM_FLINK_JOB_SERVER_JAR", "beam-runners-flink-1.18-job-server")
    flags = ["--runner=FlinkRunner", f"--flink_master={flink['address']}"]
    manifest = _beam_ingest(
        cfpb_2017_sample_csv, tmp_path / "out", [*flags, f"--flink_job_server_jar={jar}"]
    )
    assert manifest.counts["rows_rejected"] == 0


def test_beam_ingest_on_spark(spark, cfpb_2017_sample_csv, tmp_path):
    jar = _job_server_jar("BEAM_SPARK_JOB_SERVER_JAR", "beam-runners-spark-3-job-server")
    flags = ["--runner=SparkRunner", f"--spark_master_url={spark['url']}"]
    manifest = _beam_ingest(
        cfpb_2017_sample_csv, tmp_path / "out", [*flags, f"--spark_job_server_jar={jar}"]
    )
    assert manifest.counts["rows_rejected"] == 0
