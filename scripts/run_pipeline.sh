#!/usr/bin/env bash
# Runs the pipeline's stages in order, each a standalone program, every artifact under one root:
# ingest -> statistics -> validate -> transform -> train -> evaluate -> push.
#
#   scripts/run_pipeline.sh [--input=<pattern>] [--pipeline_root=<dir>] [--serving_dir=<dir>]
#                           [--runner=DirectRunner|portable|<Beam runner>] [--resume]
#                           [-- <Beam options for every Beam job>]
#
# With no --input it generates the demo's consumer-complaint data first. Stops at the first failing
# stage with its exit code: 3 when validation finds anomalies, 4 when the model is not blessed.
# --resume skips a stage that already ran on the same inputs, flags and code (content fingerprints)
# and whose output is still there as it left it (a deleted serving dir is pushed again).
# --runner=portable runs every Beam job on Prism (scripts/prism.sh): the one already started, or one
# started here and stopped at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

input=""
pipeline_root="$repo/pipeline_root"
serving_dir=""
runner="DirectRunner"
resume=0
beam_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input=*) input="${1#*=}" ;;
    --pipeline_root=*) pipeline_root="${1#*=}" ;;
    --serving_dir=*) serving_dir="${1#*=}" ;;
    --runner=*) runner="${1#*=}" ;;
    --resume) resume=1 ;;
    --) shift; beam_options=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_pipeline.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
serving_dir=${serving_dir:-$pipeline_root/serving}

source "$repo/scripts/ensure_venv.sh"
ensure_venv
cd "$repo"

if [ "$runner" = portable ]; then
  if ! portable_options=$("$repo/scripts/prism.sh" options 2>/dev/null); then
    "$repo/scripts/prism.sh" start
    trap '"$repo/scripts/prism.sh" stop' EXIT
    portable_options=$("$repo/scripts/prism.sh" options)
  fi
  read -r -a runner_options <<<"$portable_options"
  beam_options=("${runner_options[@]}" "${beam_options[@]}")
else
  beam_options=("--runner=$runner" "${beam_options[@]}")
fi

schema="$repo/schemas/consumer_complaints/schema.pbtxt"
if [ -z "$input" ]; then
  input="$pipeline_root/data/complaints.csv"
  [ -f "$input" ] || python scripts/generate_demo_data.py --output="$input"
fi

# run_stage <name> <stage dir> <command...>: skips it under --resume when it is up to date, else
# runs it; on failure names the stage and exits with its exit code.
run_stage() {
  local stage=$1 stage_dir=$2
  shift 2
  if [ "$resume" = 1 ] && python -m beam_jobs.resume check "$stage_dir" -- "$@"; then
    echo "==> $stage: up to date, skipped" >&2
    return
  fi
  echo "==> $stage" >&2
  local status=0
  "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "pipeline stopped at $stage (exit $status): see the message above" >&2
    exit "$status"
  fi
  python -m beam_jobs.resume record "$stage_dir" -- "$@"
}

root=$pipeline_root
run_stage ingest "$root/ingest" \
  python -m beam_jobs.ingest --input="$input" --schema="$schema" --output_dir="$root/ingest" \
  "${beam_options[@]}"
run_stage statistics "$root/statistics" \
  python -m beam_jobs.statistics --examples_dir="$root/ingest" --output_dir="$root/statistics" \
  "${beam_options[@]}"
run_stage validate "$root/validate" \
  python -m beam_jobs.validate --statistics_dir="$root/statistics" --schema="$schema" \
  --output_dir="$root/validate" "${beam_options[@]}"
run_stage transform "$root/transform" \
  python -m beam_jobs.transform --examples_dir="$root/ingest" --schema="$schema" \
  --preprocessing_fn=model.preprocessing:preprocessing_fn --output_dir="$root/transform" \
  "${beam_options[@]}"
run_stage train "$root/train" \
  python -m model.train --transform_dir="$root/transform" --output_dir="$root/train"
model_dir="$root/train/serving_model/$(ls "$root/train/serving_model" | sort -n | tail -n 1)"
run_stage evaluate "$root/evaluate" \
  python -m beam_jobs.evaluate --model_dir="$model_dir" --examples_dir="$root/ingest" \
  --eval_config=model/eval_config.pbtxt --serving_dir="$serving_dir" --output_dir="$root/evaluate" \
  "${beam_options[@]}"
run_stage push "$root/push" \
  python -m beam_jobs.push --model_dir="$model_dir" --evaluation_dir="$root/evaluate" \
  --serving_dir="$serving_dir"

cat >&2 <<SUMMARY
pipeline finished; artifacts:
  ingested examples   $root/ingest
  statistics          $root/statistics/<split>/stats.html
  validation report   $root/validate
  transform           $root/transform
  trained model       $model_dir
  evaluation report   $root/evaluate/report.html
  serving models      $serving_dir (newest version: $(ls "$serving_dir" | grep -E '^[0-9]+$' | sort -n | tail -n 1))
SUMMARY
