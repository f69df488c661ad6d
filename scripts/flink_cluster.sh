#!/usr/bin/env bash
# A local Flink 1.18 session cluster (one JobManager, one TaskManager) on 127.0.0.1, from PyPI.
#
#   scripts/flink_cluster.sh start     prints the REST address (127.0.0.1:<port>, --flink_master)
#   scripts/flink_cluster.sh address   prints it again
#   scripts/flink_cluster.sh stop      ends what start started (by process group id)
#   scripts/flink_cluster.sh home      prints FLINK_HOME (the runtime, fetched on first use)
#
# The runtime comes from two sdists on PyPI, fetched with `pip download --no-deps` and never
# installed (apache-flink pins an old Beam): jars from apache-flink-libraries (about 230 MB), scripts
# and conf from apache-flink. Unpacked once into $FLINK_CACHE (default
# ~/.cache/beam-ml-pipelines/flink-<version>). Needs Java 17. Every port is bound to 127.0.0.1;
# state (conf, PIDs, logs) lives in $FLINK_RUN_DIR, by default one folder per checkout under $TMPDIR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

FLINK_VERSION=${FLINK_VERSION:-1.18.1}
cache=${FLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-ml-pipelines/flink-$FLINK_VERSION}
flink_home="$cache/flink"
run_dir=${FLINK_RUN_DIR:-${TMPDIR:-/tmp}/beam-ml-pipelines-flink-$(printf %s "$repo" | sha256sum | cut -c1-12)}

die() { echo "flink_cluster.sh: $*" >&2; exit 1; }
source "$repo/scripts/local_servers.sh"

fetch() {
  [ -f "$flink_home/lib/flink-dist-$FLINK_VERSION.jar" ] && return 0
  command -v java >/dev/null || die "java is not installed; Flink $FLINK_VERSION needs Java 17"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  [ -f "$flink_home/lib/flink-dist-$FLINK_VERSION.jar" ] && return 0
  echo "flink_cluster.sh: fetching Flink $FLINK_VERSION from PyPI (about 230 MB, once)" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$cache/sdists" \
    "apache-flink-libraries==$FLINK_VERSION" "apache-flink==$FLINK_VERSION"
  local unpacked="$cache/unpacked"
  rm -rf "$unpacked" "$flink_home.tmp"
  mkdir -p "$unpacked" "$flink_home.tmp"
  tar -xzf "$cache/sdists/apache-flink-libraries-$FLINK_VERSION.tar.gz" -C "$unpacked"
  tar -xzf "$cache/sdists/apache-flink-$FLINK_VERSION.tar.gz" -C "$unpacked"
  mv "$unpacked/apache-flink-libraries-$FLINK_VERSION/deps/lib" \
    "$unpacked/apache-flink-libraries-$FLINK_VERSION/deps/opt" "$flink_home.tmp/"
  mv "$unpacked/apache-flink-$FLINK_VERSION/deps/bin" \
    "$unpacked/apache-flink-$FLINK_VERSION/deps/conf" "$flink_home.tmp/"
  cp "$unpacked/apache-flink-libraries-$FLINK_VERSION/deps/bin/bash-java-utils.jar" \
    "$flink_home.tmp/bin/"
  chmod +x "$flink_home.tmp"/bin/*.sh "$flink_home.tmp/bin/flink"
  rm -rf "$unpacked" "$cache/sdists"
  mv "$flink_home.tmp" "$flink_home"
}

# write_conf <dir>: Flink's default conf with every server on 127.0.0.1 and ports picked now.
write_conf() {
  local conf=$1
  cp -r "$flink_home/conf/." "$conf/"
  cat >>"$conf/flink-conf.yaml" <<CONF

# scripts/flink_cluster.sh: a one-machine session cluster on loopback only.
jobmanager.rpc.address: 127.0.0.1
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.port: $(free_port)
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $(cat "$run_dir/rest_port")
blob.server.port: $(free_port)
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
taskmanager.rpc.port: $(free_port)
taskmanager.data.port: $(free_port)
taskmanager.numberOfTaskSlots: 2
taskmanager.memory.process.size: 1280m
jobmanager.memory.process.size: 1024m
io.tmp.dirs: $run_dir/tmp
CONF
}

start() {
  if is_ours "$run_dir/jobmanager.pid" "StandaloneSessionClusterEntrypoint"; then
    cat "$run_dir/address"
    return 0
  fi
  fetch
  rm -rf "$run_dir"
  mkdir -p "$run_dir/conf" "$run_dir/tmp" "$run_dir/log"
  free_port >"$run_dir/rest_port"
  write_conf "$run_dir/conf"
  export FLINK_CONF_DIR="$run_dir/conf" FLINK_LOG_DIR="$run_dir/log" FLINK_PID_DIR="$run_dir"
  start_group "$run_dir/jobmanager.pid" "$run_dir/log/jobmanager.out" \
    "$flink_home/bin/jobmanager.sh" start-foreground
  wait_listening "$run_dir/jobmanager.pid" "$(cat "$run_dir/rest_port")" \
    "$run_dir/log/jobmanager.out" 120
  start_group "$run_dir/taskmanager.pid" "$run_dir/log/taskmanager.out" \
    "$flink_home/bin/taskmanager.sh" start-foreground
  # Ready when the JobManager lists a TaskManager with free slots.
  for _ in $(seq 1 120); do
    if python3 - "$(cat "$run_dir/rest_port")" <<'PY' 2>/dev/null; then
import json, sys, urllib.request
overview = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/overview", timeout=2))
sys.exit(0 if overview["slots-available"] > 0 else 1)
PY
      echo "127.0.0.1:$(cat "$run_dir/rest_port")" >"$run_dir/address"
      cat "$run_dir/address"
      return 0
    fi
    kill -0 "$(cat "$run_dir/taskmanager.pid")" 2>/dev/null ||
      { tail -n 20 "$run_dir/log/taskmanager.out" >&2; die "the TaskManager exited; log above"; }
    sleep 1
  done
  die "no TaskManager registered after 120 s; see $run_dir/log"
}

address() {
  is_ours "$run_dir/jobmanager.pid" "StandaloneSessionClusterEntrypoint" ||
    die "not running; start it: $0 start"
  cat "$run_dir/address"
}

stop() {
  [ -d "$run_dir" ] || { echo "flink_cluster.sh: not running" >&2; return 0; }
  stop_group "$run_dir/taskmanager.pid" "TaskManagerRunner"
  stop_group "$run_dir/jobmanager.pid" "StandaloneSessionClusterEntrypoint"
  rm -rf "$run_dir"
  echo "flink_cluster.sh: stopped" >&2
}

home() {
  fetch
  echo "$flink_home"
}

case "${1:-}" in
  start | address | stop | home) "$1" ;;
  -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
