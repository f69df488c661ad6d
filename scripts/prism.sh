#!/usr/bin/env bash
# Beam's portable runner on this machine: Prism, with Python SDK workers in processes of their own.
#
#   scripts/prism.sh start [--environment_type=EXTERNAL|PROCESS]   (default EXTERNAL)
#   scripts/prism.sh options [--environment_type=PROCESS]   the Beam flags that submit to it
#   scripts/prism.sh stop        ends what start started (by process group id), removes its state
#   scripts/prism.sh build       only builds Prism (start does it on first use)
#
#   python -m beam_jobs.ingest ... $(scripts/prism.sh options)
#
# Prism is built once from the Go module proxy (`go` needed; GOTOOLCHAIN=auto fetches a newer Go
# through the proxy when Prism needs one) into $PRISM_CACHE (default ~/.cache/beam-ml-pipelines),
# with its job server listening on 127.0.0.1 instead of every interface (Prism has no flag for it).
# EXTERNAL starts a worker pool on 127.0.0.1 too; PROCESS lets Prism start each worker itself.
# Either way a worker is scripts/beam_worker_boot.sh (see beam_jobs/lib/beam_compat.py for why).
# State (PIDs, ports, logs) lives in $PRISM_RUN_DIR, by default one folder per checkout under
# $TMPDIR, so two checkouts, or the tests, can each run their own. VENV_DIR picks the virtualenv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

# Prism of Beam 2.77: 2.60's Prism fails on Flattens of differently coded inputs (apache/beam#34587,
# fixed in 2.65), and 2.77 is the release the pinned Python SDK 2.60 was verified against here.
PRISM_VERSION=${PRISM_VERSION:-v2.77.0}
PRISM_MODULE=github.com/apache/beam/sdks/v2
cache=${PRISM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-ml-pipelines}
prism_bin="$cache/prism-$PRISM_VERSION-loopback/prism"
run_dir=${PRISM_RUN_DIR:-${TMPDIR:-/tmp}/beam-ml-pipelines-prism-$(printf %s "$repo" | sha256sum | cut -c1-12)}
boot="$repo/scripts/beam_worker_boot.sh"

die() { echo "prism.sh: $*" >&2; exit 1; }
source "$repo/scripts/local_servers.sh"

# Go's official archive installs to /usr/local/go, which a non-login shell may lack on its PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

# build: the Prism binary at $prism_bin, built from the module's source with the job server's
# listen address changed from ":<port>" to "127.0.0.1:<port>". One build at a time (flock).
build() {
  [ -x "$prism_bin" ] && return 0
  command -v go >/dev/null || die "go is not installed; install Go 1.22+ to build Prism"
  mkdir -p "$(dirname "$prism_bin")"
  exec 9>"$(dirname "$prism_bin")/.lock"
  flock 9
  [ -x "$prism_bin" ] && return 0
  echo "prism.sh: building Prism $PRISM_VERSION from the Go module proxy (a few minutes, once)" >&2
  (
    src=$(GOTOOLCHAIN=auto go mod download -json "$PRISM_MODULE@$PRISM_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$src/go/cmd/prism" ] || die "go mod download gave no source of $PRISM_MODULE@$PRISM_VERSION"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp -r "$src/go" "$src/go.mod" "$src/go.sum" "$work/"
    chmod -R u+w "$work"
    server="$work/go/pkg/beam/runners/prism/internal/jobservices/server.go"
    sed -i 's/net.Listen("tcp", fmt.Sprintf(":%d", port))/net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))/' \
      "$server"
    grep -q '"127.0.0.1:%d"' "$server" || die "Prism $PRISM_VERSION: job server's listen line not found"
    cd "$work"
    GOTOOLCHAIN=auto go build -trimpath -o "$prism_bin.tmp" ./go/cmd/prism
  )
  mv "$prism_bin.tmp" "$prism_bin"
  echo "prism.sh: built $prism_bin" >&2
}

start() {
  local env_type=EXTERNAL
  for arg in "$@"; do
    case "$arg" in
      --environment_type=EXTERNAL | --environment_type=PROCESS) env_type=${arg#*=} ;;
      *) die "unknown argument $arg (see --help)" ;;
    esac
  done
  if is_ours "$run_dir/prism.pid" "$prism_bin"; then
    echo "prism.sh: already running ($(cat "$run_dir/environment_type")); see: $0 options" >&2
    return 0
  fi
  build
  rm -rf "$run_dir"
  mkdir -p "$run_dir/tmp"
  local job_port
  job_port=$(free_port)
  # Each server leads a process group of its own, so stop ends it with the workers it started.
  TMPDIR="$run_dir/tmp" BEAM_WORKER_PYTHON="$(command -v python)" start_group \
    "$run_dir/prism.pid" "$run_dir/prism.log" \
    "$prism_bin" --job_port="$job_port" --serve_http=false --log_kind=text
  echo "$job_port" >"$run_dir/job_port"
  wait_listening "$run_dir/prism.pid" "$job_port" "$run_dir/prism.log"
  if [ "$env_type" = EXTERNAL ]; then
    local pool_port
    pool_port=$(free_port)
    TMPDIR="$run_dir/tmp" BEAM_WORKER_PYTHON="$(command -v python)" PYTHONPATH="$repo" \
      start_group "$run_dir/pool.pid" "$run_dir/pool.log" \
      python -m beam_jobs.lib.beam_compat pool --port="$pool_port" --boot_command="$boot"
    echo "$pool_port" >"$run_dir/pool_port"
    wait_listening "$run_dir/pool.pid" "$pool_port" "$run_dir/pool.log"
  fi
  echo "$env_type" >"$run_dir/environment_type"
  echo "prism.sh: Prism on 127.0.0.1:$job_port ($env_type workers); state in $run_dir" >&2
}

options() {
  is_ours "$run_dir/prism.pid" "$prism_bin" || die "Prism is not running; start it: $0 start"
  local env_type
  env_type=$(cat "$run_dir/environment_type")
  for arg in "$@"; do
    case "$arg" in
      --environment_type=PROCESS) env_type=PROCESS ;;
      --environment_type=EXTERNAL)
        [ "$env_type" = EXTERNAL ] || die "no worker pool: start with --environment_type=EXTERNAL"
        ;;
      *) die "unknown argument $arg (see --help)" ;;
    esac
  done
  # SDK 2.60 bounds the job's state stream by --job_server_timeout (default 60 s), so a job running
  # longer fails with DEADLINE_EXCEEDED (apache/beam#35867; later SDKs default to 5 minutes).
  local line="--runner=PortableRunner --job_endpoint=127.0.0.1:$(cat "$run_dir/job_port")"
  line+=" --job_server_timeout=86400"
  if [ "$env_type" = EXTERNAL ]; then
    line+=" --environment_type=EXTERNAL --environment_config=127.0.0.1:$(cat "$run_dir/pool_port")"
  else
    line+=" --environment_type=PROCESS --environment_options=process_command=$boot"
    line+=" --environment_options=process_variables=BEAM_WORKER_PYTHON=$(command -v python)"
  fi
  echo "$line"
}

stop() {
  [ -d "$run_dir" ] || { echo "prism.sh: not running" >&2; return 0; }
  stop_group "$run_dir/pool.pid" "beam_jobs.lib.beam_compat pool"
  stop_group "$run_dir/prism.pid" "$prism_bin"
  rm -rf "$run_dir"
  echo "prism.sh: stopped" >&2
}

case "${1:-}" in
  start | options | stop | build) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
command=$1
shift
if [ "$command" != build ]; then
  source "$repo/scripts/ensure_venv.sh"
  ensure_venv >&2
fi
"$command" "$@"
