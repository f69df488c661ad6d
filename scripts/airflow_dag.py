"""Apache Airflow DAG: one BashOperator per pipeline stage, running run_pipeline.sh's commands.

    ingest -> statistics -> validate -> transform -> train -> evaluate -> push

Put this file (a symlink keeps the repository default right) in Airflow's dags folder and trigger
it with the run's params, for example

    airflow dags trigger beam_ml_pipeline --conf '{"pipeline_root": "/runs/1", "input": "/in.csv"}'

Every stage writes `<pipeline_root>/<stage>/` as `scripts/run_pipeline.sh` does, with its flags,
the same schema and the same Beam options for every Beam job; evaluate and push take the newest
model under `<pipeline_root>/train/serving_model/` at run time. A failing stage fails its task with
the stage's exit code (3: validation anomalies, 4: model not blessed), there are no retries, and the
tasks after it do not run. With `resume` a stage already run on the same inputs, flags and code is
skipped by `python -m beam_jobs.resume`, sharing its records with `run_pipeline.sh --resume`.

Airflow parses this file in its own environment (`scripts/airflow_venv.sh`): it imports Airflow and
the standard library only. The stages run in the project's environment, the `python` param.
"""

from __future__ import annotations

import datetime
import itertools
import pathlib
import shlex

from airflow import DAG
from airflow.models.param import Param

try:  # Airflow 3 ships BashOperator in the standard provider; Airflow 2 in airflow.operators.
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:
    from airflow.operators.bash import BashOperator

__all__ = ["DAG_ID", "STAGES", "dag"]

DAG_ID = "beam_ml_pipeline"
STAGES = ("ingest", "statistics", "validate", "transform", "train", "evaluate", "push")
_REPO = pathlib.Path(__file__).resolve().parents[1]

# Jinja, rendered per task: the run's paths from its params (defaults as in run_pipeline.sh), the
# project's interpreter as `python`, and run_stage, which skips an up-to-date stage under resume
# and records the stage's run key after it succeeded. `set -e` makes a stage's exit code the task's.
_PRELUDE = """\
{%- set repo = params.repo -%}
{%- set root = params.pipeline_root or repo ~ '/pipeline_root' -%}
{%- set serving_dir = params.serving_dir or root ~ '/serving' -%}
{%- set schema = params.schema or repo ~ '/schemas/consumer_complaints/schema.pbtxt' -%}
{%- set beam = (['--runner=' ~ params.runner] + params.beam_options) | map('sh') | join(' ') -%}
set -euo pipefail
cd {{ repo | sh }}
python() { {{ params.python | sh }} "$@"; }
run_stage() {
  local stage=$1 stage_dir=$2
  shift 2
  if {{ params.resume | lower }} && python -m beam_jobs.resume check "$stage_dir" -- "$@"; then
    echo "==> $stage: up to date, skipped" >&2
    return
  fi
  echo "==> $stage" >&2
  "$@"
  python -m beam_jobs.resume record "$stage_dir" -- "$@"
}
"""

# The newest export of the train stage, for evaluate and push (the same choice as run_pipeline.sh).
_MODEL_DIR = (
    "model_dir={{ (root ~ '/train/serving_model') | sh }}/"
    "$(ls {{ (root ~ '/train/serving_model') | sh }} | sort -n | tail -n 1)\n"
)

# Per stage: shell lines to run first, then the stage's command on one `run_stage` line.
_STAGE_COMMANDS = {
    "ingest": (
        "{%- set input = params.input or root ~ '/data/complaints.csv' %}\n"
        "{% if not params.input %}[ -f {{ input | sh }} ] || "
        "python scripts/generate_demo_data.py --output={{ input | sh }}\n{% endif %}",
        "python -m beam_jobs.ingest --input={{ input | sh }} --schema={{ schema | sh }}"
        " --output_dir={{ (root ~ '/ingest') | sh }} {{ beam }}",
    ),
    "statistics": (
        "",
        "python -m beam_jobs.statistics --examples_dir={{ (root ~ '/ingest') | sh }}"
        " --output_dir={{ (root ~ '/statistics') | sh }} {{ beam }}",
    ),
    "validate": (
        "",
        "python -m beam_jobs.validate --statistics_dir={{ (root ~ '/statistics') | sh }}"
        " --schema={{ schema | sh }} --output_dir={{ (root ~ '/validate') | sh }} {{ beam }}",
    ),
    "transform": (
        "",
        "python -m beam_jobs.transform --examples_dir={{ (root ~ '/ingest') | sh }}"
        " --schema={{ schema | sh }} --preprocessing_fn=model.preprocessing:preprocessing_fn"
        " --output_dir={{ (root ~ '/transform') | sh }} {{ beam }}",
    ),
    "train": (
        "",
        "python -m model.train --transform_dir={{ (root ~ '/transform') | sh }}"
        " --output_dir={{ (root ~ '/train') | sh }}"
        "{% if params.train_steps %} --train_steps={{ params.train_steps }}{% endif %}",
    ),
    "evaluate": (
        _MODEL_DIR,
        'python -m beam_jobs.evaluate --model_dir="$model_dir"'
        " --examples_dir={{ (root ~ '/ingest') | sh }} --eval_config=model/eval_config.pbtxt"
        " --serving_dir={{ serving_dir | sh }} --output_dir={{ (root ~ '/evaluate') | sh }}"
        " {{ beam }}",
    ),
    "push": (
        _MODEL_DIR,
        'python -m beam_jobs.push --model_dir="$model_dir"'
        " --evaluation_dir={{ (root ~ '/evaluate') | sh }} --serving_dir={{ serving_dir | sh }}",
    ),
}


def bash_command(stage: str) -> str:
    """The Jinja template of one stage's task: the prelude, its set-up lines, its run_stage line.

    Args:
        stage: One of `STAGES`.

    Returns:
        A bash script template, rendered by Airflow with the DAG run's params.
    """
    setup, command = _STAGE_COMMANDS[stage]
    stage_dir = f"{{{{ (root ~ '/{stage}') | sh }}}}"
    return f"{_PRELUDE}{setup}run_stage {stage} {stage_dir} {command}\n"


def _params() -> dict[str, Param]:
    """The DAG's params: where the run's artifacts go, its input, interpreter and Beam options."""
    return {
        "repo": Param(str(_REPO), type="string", description="The project's checkout."),
        "python": Param(
            str(_REPO / ".venv" / "bin" / "python"),
            type="string",
            description="The project's interpreter, in its .venv (scripts/ensure_venv.sh).",
        ),
        "pipeline_root": Param(
            "",
            type="string",
            description="Artifacts go to <root>/<stage>/ [default: <repo>/pipeline_root].",
        ),
        "input": Param(
            "",
            type="string",
            description="Raw input file or pattern [default: the demo's data, generated once].",
        ),
        "serving_dir": Param(
            "", type="string", description="Where push puts versions [default: <root>/serving]."
        ),
        "schema": Param(
            "",
            type="string",
            description="TFDV schema [default: schemas/consumer_complaints/schema.pbtxt].",
        ),
        "runner": Param(
            "DirectRunner", type="string", description="Beam runner of every Beam job."
        ),
        "beam_options": Param(
            [],
            type="array",
            items={"type": "string"},
            description="More Beam options for every Beam job, as --flag=value.",
        ),
        "train_steps": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="model.train --train_steps [default: model.train's].",
        ),
        "resume": Param(
            False, type="boolean", description="Skip stages already run on the same inputs."
        ),
    }


with DAG(
    dag_id=DAG_ID,
    description="Beam ML pipeline: ingest, statistics, validate, transform, train, evaluate, push.",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,  # runs of one pipeline root must not interleave
    params=_params(),
    user_defined_filters={"sh": shlex.quote},
    default_args={"retries": 0},  # a failed validation or blessing must fail the run, not retry
    tags=["beam-ml-pipelines"],
) as dag:
    tasks = [BashOperator(task_id=stage, bash_command=bash_command(stage)) for stage in STAGES]
    for upstream, downstream in itertools.pairwise(tasks):
        upstream >> downstream
