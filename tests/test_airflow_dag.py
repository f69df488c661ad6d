"""scripts/airflow_dag.py loaded and run by Apache Airflow, in the environment of its own that
scripts/airflow_venv.sh makes: the task order, run_pipeline.sh's commands, and real DAG runs."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from beam_jobs.lib import artifacts
from tests.conftest import REPO_ROOT

DAG_FILE = REPO_ROOT / "scripts" / "airflow_dag.py"
DAG_ID = "beam_ml_pipeline"
STAGES = ("ingest", "statistics", "validate", "transform", "train", "evaluate", "push")
SCHEMA = REPO_ROOT / "schemas" / "consumer_complaints" / "schema.pbtxt"

# Run by Airflow's interpreter: loads the DAG file with DagBag and prints each task's neighbours,
# retries, trigger rule and bash_command rendered with the DAG's own Jinja environment and params.
_PROBE = """
import json, sys
from airflow.models import DagBag

bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
dag = bag.dags[sys.argv[2]]  # as parsed from the file: no database needed
params = {**dag.params.dump(), **json.loads(sys.argv[3])}
env = dag.get_template_env()
print(json.dumps({
    "import_errors": {path: str(error) for path, error in bag.import_errors.items()},
    "tasks": {
        task.task_id: {
            "upstream": sorted(task.upstream_task_ids),
            "downstream": sorted(task.downstream_task_ids),
            "retries": task.retries,
            "trigger_rule": str(task.trigger_rule),
            "bash_command": env.from_string(task.bash_command).render(params=params),
        }
        for task in dag.tasks
    },
}))
"""

# Run by Airflow's interpreter: the task states of the DAG's one run.
_STATES_PROBE = """
import json, sys
from airflow.models import DagRun

(run,) = DagRun.find(dag_id=sys.argv[1])
print(json.dumps({ti.task_id: ti.state for ti in run.get_task_instances()}))
"""


@pytest.fixture(scope="module")
def airflow_venv() -> pathlib.Path:
    """Airflow's own virtual environment, made once and reused by later runs."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "airflow_venv.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def airflow_env(home: pathlib.Path) -> dict[str, str]:
    """An isolated Airflow: its own home, SQLite database and dags folder holding the DAG file."""
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    if not (dags / DAG_FILE.name).exists():
        (dags / DAG_FILE.name).symlink_to(DAG_FILE)
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
    }


def stage_line(bash_command: str, stage: str) -> list[str]:
    """A rendered task's run_stage line (stage dir, command), split into words as the shell does."""
    lines = [line for line in bash_command.splitlines() if line.startswith(f"run_stage {stage} ")]
    assert len(lines) == 1, bash_command
    return shlex.split(lines[0])[2:]


def test_dag_orders_the_stages_and_runs_run_pipelines_commands(airflow_venv, tmp_path):
    root, data, serving = tmp_path / "root", tmp_path / "in.csv", tmp_path / "serving"
    conf = {
        "pipeline_root": str(root),
        "input": str(data),
        "serving_dir": str(serving),
        "python": sys.executable,
        "beam_options": ["--direct_num_workers=1"],
        "train_steps": 50,
    }
    result = subprocess.run(
        [
            str(airflow_venv / "bin" / "python"),
            "-c",
            _PROBE,
            str(DAG_FILE),
            DAG_ID,
            json.dumps(conf),
        ],
        env=airflow_env(tmp_path / "airflow"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["import_errors"] == {}
    tasks = loaded["tasks"]
    assert sorted(tasks) == sorted(STAGES)
    for before, stage, after in zip(("", *STAGES[:-1]), STAGES, (*STAGES[1:], ""), strict=True):
        assert tasks[stage]["upstream"] == ([before] if before else [])
        assert tasks[stage]["downstream"] == ([after] if after else [])
        assert tasks[stage]["retries"] == 0
        assert tasks[stage]["trigger_rule"] == "all_success"

    beam = ["--runner=DirectRunner", "--direct_num_workers=1"]
    ingested, schema = f"--examples_dir={root}/ingest", f"--schema={SCHEMA}"
    expected = {
        "ingest": ["beam_jobs.ingest", f"--input={data}", schema, f"--output_dir={root}/ingest"],
        "statistics": ["beam_jobs.statistics", ingested, f"--output_dir={root}/statistics"],
        "validate": [
            *("beam_jobs.validate", f"--statistics_dir={root}/statistics", schema),
            f"--output_dir={root}/validate",
        ],
        "transform": [
            *("beam_jobs.transform", ingested, schema),
            "--preprocessing_fn=model.preprocessing:preprocessing_fn",
            f"--output_dir={root}/transform",
        ],
        "evaluate": [
            *("beam_jobs.evaluate", "--model_dir=$model_dir", ingested),
            *("--eval_config=model/eval_config.pbtxt", f"--serving_dir={serving}"),
            f"--output_dir={root}/evaluate",
        ],
    }
    expected = {stage: ["-m", *words, *beam] for stage, words in expected.items()}
    expected["train"] = [
        *("-m", "model.train", f"--transform_dir={root}/transform"),
        *(f"--output_dir={root}/train", "--train_steps=50"),
    ]
    expected["push"] = [
        *("-m", "beam_jobs.push", "--model_dir=$model_dir"),
        *(f"--evaluation_dir={root}/evaluate", f"--serving_dir={serving}"),
    ]
    for stage in STAGES:
        command = tasks[stage]["bash_command"]
        assert stage_line(command, stage) == [str(root / stage), "python", *expected[stage]]
        assert f'python() {{ {sys.executable} "$@"; }}' in command
    newest = f"model_dir={root}/train/serving_model/$(ls {root}/train/serving_model | sort -n"
    assert newest in tasks["evaluate"]["bash_command"]
    assert newest in tasks["push"]["bash_command"]


def demo_csv(path: pathlib.Path, rows: int) -> pathlib.Path:
    """The demo generator's consumer complaints, `rows` of them."""
    generator = REPO_ROOT / "scripts" / "generate_demo_data.py"
    subprocess.run([sys.executable, generator, f"--output={path}", f"--rows={rows}"], check=True)
    return path


def dags_test(venv: pathlib.Path, home: pathlib.Path, conf: dict) -> subprocess.CompletedProcess:
    """`airflow dags test` of the DAG, in an Airflow home of its own (database migrated first)."""
    env = airflow_env(home)
    airflow = str(venv / "bin" / "airflow")
    migrated = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return subprocess.run(
        [airflow, "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def task_states(venv: pathlib.Path, home: pathlib.Path) -> dict[str, str]:
    """Each task's state in the DAG's one run, read from Airflow's database by Airflow's models.

    (`airflow dags list-runs` will not do: `dags test` leaves the DAG out of the `dag` table.)
    """
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _STATES_PROBE, DAG_ID],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    return json.loads(listed.stdout.strip().splitlines()[-1])


def test_dags_test_runs_every_stage_pushes_a_version_and_resumes(airflow_venv, tmp_path):
    root, serving = tmp_path / "root", tmp_path / "serving"
    conf = {
        "pipeline_root": str(root),
        "input": str(demo_csv(tmp_path / "complaints.csv", rows=4000)),
        "serving_dir": str(serving),
        "python": sys.executable,
        "train_steps": 300,
    }
    result = dags_test(airflow_venv, tmp_path / "airflow", conf)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert set(task_states(airflow_venv, tmp_path / "airflow").values()) == {"success"}
    assert len(artifacts.serving_versions(str(serving))) == 1
    for stage in ("ingest", "statistics", "validate", "transform", "train", "evaluate"):
        assert (root / stage / artifacts.MANIFEST_FILE).exists(), stage

    # resume: every stage is up to date (run keys recorded by the tasks), so nothing runs again.
    again = dags_test(airflow_venv, tmp_path / "airflow-resume", {**conf, "resume": True})
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert set(task_states(airflow_venv, tmp_path / "airflow-resume").values()) == {"success"}
    assert len(list((root / "train" / "serving_model").iterdir())) == 1
    assert len(artifacts.serving_versions(str(serving))) == 1


def test_validation_anomalies_fail_the_run_before_transform(airflow_venv, tmp_path):
    data = demo_csv(tmp_path / "complaints.csv", rows=500)
    with data.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # a product the curated schema's domain does not know: an anomaly
        row["product"] = "Space travel"
    with data.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    root = tmp_path / "root"
    conf = {"pipeline_root": str(root), "input": str(data), "python": sys.executable}
    result = dags_test(airflow_venv, tmp_path / "airflow", conf)
    assert result.returncode != 0
    assert "exit code 3" in result.stdout + result.stderr
    states = task_states(airflow_venv, tmp_path / "airflow")
    assert states["ingest"] == states["statistics"] == "success"
    assert states["validate"] == "failed"
    for stage in ("transform", "train", "evaluate", "push"):
        assert states[stage] == "upstream_failed", stage
    assert not (root / "transform").exists()
