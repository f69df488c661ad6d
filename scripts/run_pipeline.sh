#!/usr/bin/env bash
# Runs the pipeline's stages in order, each a standalone job, every artifact under one root.
#
#   scripts/run_pipeline.sh [--input=<pattern>] [--pipeline_root=<dir>] [--runner=DirectRunner]
#                           [-- <more Beam options for every Beam job>]
#
# With no arguments: generates the demo's consumer-complaint data and runs every stage on
# DirectRunner. Stops at the first failing stage with that stage's exit code.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

input=""
pipeline_root="$repo/pipeline_root"
runner="DirectRunner"
beam_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input=*) input="${1#*=}" ;;
    --pipeline_root=*) pipeline_root="${1#*=}" ;;
    --runner=*) runner="${1#*=}" ;;
    --) shift; beam_options=("$@"); break ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_pipeline.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
beam_options=("--runner=$runner" "${beam_options[@]}")

source "$repo/scripts/ensure_venv.sh"
ensure_venv

schema="$repo/schemas/consumer_complaints/schema.pbtxt"
if [ -z "$input" ]; then
  input="$pipeline_root/data/complaints.csv"
  python "$repo/scripts/generate_demo_data.py" --output="$input"
fi

# Runs one stage; on failure says which stage, its exit code and where to look, then exits with it.
run_stage() {
  local stage=$1; shift
  echo "==> $stage" >&2
  local status=0
  "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "pipeline stopped at $stage (exit $status); see the message above" >&2
    exit "$status"
  fi
}

run_stage ingest python -m beam_jobs.ingest --input="$input" --output_dir="$pipeline_root/ingest" \
  --schema="$schema" "${beam_options[@]}"

echo "artifacts:" >&2
echo "  ingested examples  $pipeline_root/ingest" >&2
