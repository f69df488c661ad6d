#!/usr/bin/env bash
# Sourced by prism.sh, flink_cluster.sh and spark_cluster.sh: servers on 127.0.0.1 only, each the
# leader of a process group of its own, recorded by PID and stopped by that PID alone.
# The sourcing script defines die().

# free_port: a TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_group <pid file> <log> <command...>: runs the command in a new session, PID in the file.
start_group() {
  local pid_file=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo $! >"$pid_file"
}

# wait_listening <pid file> <port> <log> [seconds]: until 127.0.0.1:<port> accepts (default 60 s),
# or dies naming the log when the process exits first.
wait_listening() {
  local pid port=$2 log=$3 seconds=${4:-60}
  pid=$(cat "$1")
  for _ in $(seq 1 $((seconds * 2))); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "process $pid exited; log above"; }
    sleep 0.5
  done
  die "nothing listens on 127.0.0.1:$port after $seconds s; see $log"
}

# is_ours <pid file> <marker>: the PID in the file is alive and its command line names the marker.
is_ours() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

# stop_group <pid file> <marker>: TERM to the process group the PID leads, KILL after 10 s.
stop_group() {
  is_ours "$1" "$2" || return 0
  local pid
  pid=$(cat "$1")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
