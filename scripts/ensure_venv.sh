#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists with the project installed, and puts it first
# on PATH. `ensure_venv` installs the package; `ensure_venv dev` adds the test tools. Installs again
# only when setup.py (or the extras asked for) changed since the last install.
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
  local stamp="$venv/.installed-$(sha256sum "$repo/setup.py" | cut -c1-16)-${extras:-base}"
  if [ ! -f "$stamp" ] && [ ! -f "$venv/.installed-$(sha256sum "$repo/setup.py" | cut -c1-16)-dev" ]; then
    echo "installing $target into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$target"
    touch "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
  export VIRTUAL_ENV="$venv"
}
