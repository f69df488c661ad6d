#!/usr/bin/env bash
# Benchmarks every Beam stage against reference tools in the same run; see scripts/benchmark.py.
#   scripts/benchmark.sh [--sizes=1,10,100] [--stages=ingest,statistics,transform,train,evaluate]
#                        [--source=<CFPB 2015 csv>] [--workdir=<dir>]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_venv.sh
ensure_venv dev
exec python scripts/benchmark.py "$@"
