#!/usr/bin/env bash
# Runs the pipeline's stages in order, each a standalone program, every artifact under one root:
# ingest -> statistics -> validate -> transform [-> tune] -> train -> evaluate -> push.
#
#   scripts/run_pipeline.sh [--input=<pattern>] [--pipeline_root=<dir>] [--serving_dir=<dir>]
#                           [--runner=DirectRunner|portable|<Beam runner>] [--resume]
#                           [--tune] [--tune_options="<model.tune flags>"]
#                           [-- <Beam options for every stage>]
#
# With no --input it generates the demo's consumer-complaint data first. Stops at the first failing
# stage with its exit code: 3 when validation finds anomalies, 4 when the model is not blessed.
# --resume skips a stage that already ran on the same inputs, flags and code (content fingerprints)
# and whose output is still there as it left it (a deleted serving dir is pushed again).
# --runner=portable runs every Beam job on Prism (scripts/prism.sh): the one already started, or one
# started here and stopped at the end. --tune searches the model's hyper-parameters (model.tune,
# with --tune_options such as "--max_trials=4 --train_steps=300", which imply --tune) and trains
# with the best. Every stage's status goes to <pipeline_root>/run_status/, and the run page,
# <pipeline_root>/index.html, is written at the end, also when a stage fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

input=""
pipeline_root="$repo/pipeline_root"
serving_dir=""
runner="DirectRunner"
resume=0
tune=0
tune_options=()
beam_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input=*) input="${1#*=}" ;;
    --pipeline_root=*) pipeline_root="${1#*=}" ;;
    --serving_dir=*) serving_dir="${1#*=}" ;;
    --runner=*) runner="${1#*=}" ;;
    --resume) resume=1 ;;
    --tune) tune=1 ;;
    --tune_options=*) tune=1; read -r -a tune_options <<<"${1#*=}" ;;
    --) shift; beam_options=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_pipeline.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
serving_dir=${serving_dir:-$pipeline_root/serving}

source "$repo/scripts/ensure_venv.sh"
ensure_venv
cd "$repo"

# The run's record for the run page: run_status/run.json, and <stage>.json per stage reached. Each
# file is written beside its place and renamed over it, so a reader never sees half of one.
status_dir="$pipeline_root/run_status"
now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; }
json_string() {
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\t'/\\t}
  text=${text//$'\n'/\\n}
  printf '"%s"' "$text"
}
# A gs:// or s3:// root is reached through Beam's file systems (beam_jobs.lib.store), with the
# Beam options every stage gets; ls, rm and mv reach only local paths.
remote_root=0
case "$pipeline_root" in *://*) remote_root=1 ;; esac
store() { python -m beam_jobs.lib.store "$@" "${store_options[@]}"; }
write_status() { # write_status <file name> <JSON object>
  if [ "$remote_root" = 1 ]; then
    printf '%s\n' "$2" | store --action=write --path="$status_dir/$1"
    return
  fi
  local temporary="$status_dir/.$1.tmp-$$"
  printf '%s\n' "$2" >"$temporary"
  mv -f "$temporary" "$status_dir/$1"
}
# newest_version <dir>: the largest numbered entry of a model export or serving dir.
newest_version() {
  if [ "$remote_root" = 1 ] || [[ "$1" == *://* ]]; then
    store --action=newest_version --path="$1"
  else
    ls "$1" | grep -E '^[0-9]+$' | sort -n | tail -n 1
  fi
}
# stage_status <stage> <status> <exit code|null> <started at> <finished at|null> <command...>
stage_status() {
  local stage=$1 status=$2 code=$3 started=$4 finished=$5 command="" argument
  shift 5
  for argument in "$@"; do
    case "$argument" in # Credentials given as flags are not recorded.
      --s3_access_key_id=* | --s3_secret_access_key=* | --s3_session_token=*)
        argument="${argument%%=*}=<redacted>" ;;
    esac
    command+="${command:+, }$(json_string "$argument")"
  done
  [ "$finished" = null ] || finished=$(json_string "$finished")
  write_status "$stage.json" "{\"stage\": $(json_string "$stage"), \"status\": \"$status\", \
\"exit_code\": $code, \"started_at\": \"$started\", \"finished_at\": $finished, \
\"command\": [$command]}"
}
# The options every stage gets, also for the root's status files (the runner's are added below).
store_options=("${beam_options[@]}")
if [ "$remote_root" = 1 ]; then
  store --action=clear --path="$status_dir/*.json"
else
  mkdir -p "$status_dir"
  rm -f "$status_dir"/*.json # A new run: stages it does not reach show as not run.
fi
run_started=$(now)
run_status() { # run_status <exit code|null> <finished at|null>
  local finished=$2
  [ "$finished" = null ] || finished=$(json_string "$finished")
  write_status run.json "{\"started_at\": \"$run_started\", \"finished_at\": $finished, \
\"exit_code\": $1, \"serving_dir\": $(json_string "$serving_dir")}"
}
run_status null null

prism_started=0
current_stage=""
# On any exit: the stage interrupted (if one was), the run's end, the run page; then Prism stops.
on_exit() {
  local code=$?
  if [ -n "$current_stage" ]; then
    stage_status "$current_stage" failed "$code" "$current_started" "$(now)" "${current_command[@]}"
  fi
  run_status "$code" "$(now)"
  python -m beam_jobs.run_page --pipeline_root="$pipeline_root" --serving_dir="$serving_dir" \
    "${beam_options[@]}" >&2 || echo "run_pipeline.sh: the run page could not be written" >&2
  if [ "$prism_started" = 1 ]; then "$repo/scripts/prism.sh" stop; fi
  exit "$code"
}
trap on_exit EXIT

if [ "$runner" = portable ]; then
  if ! portable_options=$("$repo/scripts/prism.sh" options 2>/dev/null); then
    "$repo/scripts/prism.sh" start
    prism_started=1
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
  if [ "$remote_root" = 1 ]; then
    echo "run_pipeline.sh: give --input with a --pipeline_root on an object store" >&2
    exit 2
  fi
  [ -f "$input" ] || python scripts/generate_demo_data.py --output="$input"
fi

# run_stage <name> <stage dir> <command...>: skips it under --resume when it is up to date (unless
# called as force=1 run_stage ...), else runs it; on failure names the stage and exits with its exit
# code. Records its status either way; stage_ran says whether it ran.
stage_ran=0
run_stage() {
  local stage=$1 stage_dir=$2 started
  shift 2
  started=$(now)
  stage_ran=0
  if [ "$resume" = 1 ] && [ "${force:-0}" = 0 ] &&
    python -m beam_jobs.resume check "$stage_dir" -- "$@"; then
    echo "==> $stage: up to date, skipped" >&2
    stage_status "$stage" skipped null "$started" "$(now)" "$@"
    return
  fi
  stage_ran=1
  echo "==> $stage" >&2
  current_stage=$stage current_started=$started current_command=("$@")
  stage_status "$stage" running null "$started" null "$@"
  local status=0
  "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "pipeline stopped at $stage (exit $status): see the message above" >&2
    exit "$status" # on_exit records the failure.
  fi
  current_stage=""
  stage_status "$stage" ran 0 "$started" "$(now)" "$@"
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
train_options=()
retrain=0
if [ "$tune" = 1 ]; then
  run_stage tune "$root/tune" \
    python -m model.tune --transform_dir="$root/transform" --output_dir="$root/tune" \
    "${tune_options[@]}" "${beam_options[@]}"
  train_options=("--hparams=@$root/tune/best_hparams.json")
  # Train's run key sees the file's name, not its content: a search that ran again retrains.
  retrain=$stage_ran
fi
force=$retrain run_stage train "$root/train" \
  python -m model.train --transform_dir="$root/transform" --output_dir="$root/train" \
  "${train_options[@]}" "${beam_options[@]}"
model_dir="$root/train/serving_model/$(newest_version "$root/train/serving_model")"
run_stage evaluate "$root/evaluate" \
  python -m beam_jobs.evaluate --model_dir="$model_dir" --examples_dir="$root/ingest" \
  --eval_config=model/eval_config.pbtxt --serving_dir="$serving_dir" --output_dir="$root/evaluate" \
  "${beam_options[@]}"
run_stage push "$root/push" \
  python -m beam_jobs.push --model_dir="$model_dir" --evaluation_dir="$root/evaluate" \
  --serving_dir="$serving_dir" "${beam_options[@]}"

tuned=""
[ "$tune" = 0 ] || tuned=$'\n'"  best hparams        $root/tune/best_hparams.json"
cat >&2 <<SUMMARY
pipeline finished; artifacts:
  ingested examples   $root/ingest
  statistics          $root/statistics/<split>/stats.html
  validation report   $root/validate
  transform           $root/transform${tuned}
  trained model       $model_dir
  evaluation report   $root/evaluate/report.html
  serving models      $serving_dir (newest version: $(newest_version "$serving_dir"))
  run page            $root/index.html
SUMMARY
