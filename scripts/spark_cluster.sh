#!/usr/bin/env bash
# A local Spark 3.5 standalone session cluster (one master, one worker) on 127.0.0.1, from PyPI.
#
#   scripts/spark_cluster.sh start     prints the master URL (spark://127.0.0.1:<port>)
#   scripts/spark_cluster.sh url       prints it again
#   scripts/spark_cluster.sh stop      ends what start started (by process group id)
#   scripts/spark_cluster.sh home      prints SPARK_HOME (the runtime, fetched on first use)
#
# The runtime is the pyspark sdist from PyPI (`pip download --no-deps`, about 320 MB, never
# installed), unpacked once into $SPARK_CACHE (default ~/.cache/beam-ml-pipelines/spark-<version>).
# Needs Java 17 (`java` on the PATH). State lives in $SPARK_RUN_DIR (default one folder per checkout
# under $TMPDIR). Beam submission: see README "Runners".
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

SPARK_VERSION=${SPARK_VERSION:-3.5.3}
cache=${SPARK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-ml-pipelines/spark-$SPARK_VERSION}
spark_home="$cache/pyspark-$SPARK_VERSION/deps"
run_dir=${SPARK_RUN_DIR:-${TMPDIR:-/tmp}/beam-ml-pipelines-spark-$(printf %s "$repo" | sha256sum | cut -c1-12)}

die() { echo "spark_cluster.sh: $*" >&2; exit 1; }
source "$repo/scripts/local_servers.sh"

fetch() {
  [ -x "$spark_home/bin/spark-class" ] && return 0
  command -v java >/dev/null || die "java is not installed; Spark $SPARK_VERSION needs Java 17"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  [ -x "$spark_home/bin/spark-class" ] && return 0
  echo "spark_cluster.sh: fetching pyspark $SPARK_VERSION from PyPI (about 320 MB, once)" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$cache" "pyspark==$SPARK_VERSION"
  tar -xzf "$cache/pyspark-$SPARK_VERSION.tar.gz" -C "$cache"
  rm -f "$cache/pyspark-$SPARK_VERSION.tar.gz"
  chmod +x "$spark_home"/bin/* "$spark_home"/sbin/*
}

start() {
  if is_ours "$run_dir/master.pid" "deploy.master.Master"; then
    cat "$run_dir/url"
    return 0
  fi
  fetch
  rm -rf "$run_dir"
  mkdir -p "$run_dir/work"
  local port ui_port worker_ui_port url
  port=$(free_port)
  ui_port=$(free_port)
  worker_ui_port=$(free_port)
  url="spark://127.0.0.1:$port"
  # SPARK_LOCAL_IP binds every Spark server (RPC, block manager, web UIs) to loopback.
  export SPARK_HOME="$spark_home" SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR="$run_dir"
  start_group "$run_dir/master.pid" "$run_dir/master.log" \
    "$spark_home/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$port" --webui-port "$ui_port"
  wait_listening "$run_dir/master.pid" "$port" "$run_dir/master.log" 120
  start_group "$run_dir/worker.pid" "$run_dir/worker.log" \
    "$spark_home/bin/spark-class" org.apache.spark.deploy.worker.Worker \
    --host 127.0.0.1 --webui-port "$worker_ui_port" --cores 2 --memory 2g \
    --work-dir "$run_dir/work" "$url"
  wait_listening "$run_dir/worker.pid" "$worker_ui_port" "$run_dir/worker.log" 120
  echo "$url" >"$run_dir/url"
  echo "$url"
}

url() {
  is_ours "$run_dir/master.pid" "deploy.master.Master" || die "not running; start it: $0 start"
  cat "$run_dir/url"
}

stop() {
  [ -d "$run_dir" ] || { echo "spark_cluster.sh: not running" >&2; return 0; }
  stop_group "$run_dir/worker.pid" "deploy.worker.Worker"
  stop_group "$run_dir/master.pid" "deploy.master.Master"
  rm -rf "$run_dir"
  echo "spark_cluster.sh: stopped" >&2
}

home() {
  fetch
  echo "$spark_home"
}

case "${1:-}" in
  start | url | stop | home) "$1" ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
