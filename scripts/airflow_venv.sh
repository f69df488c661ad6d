#!/usr/bin/env bash
# Creates, or reuses, a virtual environment of its own for Apache Airflow, away from the project's
# pinned stack in .venv, and prints its directory:
#
#   scripts/airflow_venv.sh        # -> ~/.cache/beam-ml-pipelines/airflow-2.10.5-py3.11
#   "$(scripts/airflow_venv.sh)/bin/airflow" version
#
# Installs apache-airflow (AIRFLOW_VERSION) from PyPI under scripts/airflow_constraints.txt, and
# again only when the version or the constraints changed. AIRFLOW_VENV_DIR picks the directory,
# PYTHON the interpreter (default python3.11). Safe to call from several processes at once.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=${AIRFLOW_VERSION:-2.10.5}
python=${PYTHON:-python3.11}
constraints="$repo/scripts/airflow_constraints.txt"
venv=${AIRFLOW_VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-ml-pipelines/airflow-$version-py3.11}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
stamp="$venv/.installed-$version-$(sha256sum "$constraints" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating Airflow's virtual environment $venv with $python" >&2
    "$python" -m venv "$venv"
  fi
  echo "installing apache-airflow==$version into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "apache-airflow==$version" --constraint="$constraints" >&2
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
echo "$venv"
