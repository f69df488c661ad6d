#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists with the project installed, and puts it first
# on PATH. `ensure_venv` installs the package; `ensure_venv dev` adds the test tools.
# PYTHON picks the interpreter (default python3.11); VENV_DIR the environment (default .venv).

ensure_venv() {
  local extras=${1:-}
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local venv=${VENV_DIR:-$repo/.venv}
  local python=${PYTHON:-python3.11}
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment $venv with $python" >&2
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip "setuptools<81" wheel
  fi
  local target="$repo"
  [ -n "$extras" ] && target="$repo[$extras]"
  echo "installing $target into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$target"
  export PATH="$venv/bin:$PATH"
  export VIRTUAL_ENV="$venv"
}
