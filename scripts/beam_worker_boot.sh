#!/usr/bin/env bash
# Starts one Python SDK worker: the command of Prism's PROCESS environment and of the worker pool
# that scripts/prism.sh starts for EXTERNAL mode. Takes the runner's `--id=... --provision_endpoint=...`.
# BEAM_WORKER_PYTHON names the interpreter (scripts/prism.sh passes its virtual environment's); the
# worker imports this checkout's beam_jobs and model, as the submitting process does.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${BEAM_WORKER_PYTHON:-python3}" -m beam_jobs.lib.beam_compat boot "$@"
