#!/usr/bin/env bash
# A dask-gateway-server on loopback for the gateway backend's tests.
#
#   gateway.sh start   start it unless it is up; print its settings as KEY=VALUE
#   gateway.sh stop    stop what `start` started (by recorded pid) and wait for it
#   gateway.sh status  exit 0 and print the settings when it is up, else exit 1
#
# State (pid, password, log, cluster working directories) lives in
# $DASKJOB_SERVICES_DIR/gateway (default <repo>/.services/gateway). The password is made
# at the first start and kept there. Ports: DASKJOB_GATEWAY_PORT (http api, 18000) and
# DASKJOB_GATEWAY_PROXY_PORT (scheduler proxy, 18786). The server comes from the repo's
# .venv when there is one, else from PATH.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
services="${DASKJOB_SERVICES_DIR:-$repo/.services}"
state="$services/gateway"
port="${DASKJOB_GATEWAY_PORT:-18000}"
proxy_port="${DASKJOB_GATEWAY_PROXY_PORT:-18786}"
idle_timeout="${DASKJOB_GATEWAY_IDLE_TIMEOUT:-10}"
user="${DASKJOB_GATEWAY_USER:-daskjob}"
pidfile="$state/gateway.pid"
log="$state/gateway.log"

find_bin() {
  if [ -x "$repo/.venv/bin/dask-gateway-server" ]; then
    echo "$repo/.venv/bin"
  elif command -v dask-gateway-server >/dev/null; then
    dirname "$(command -v dask-gateway-server)"
  else
    echo "gateway: dask-gateway-server not found in $repo/.venv/bin nor on PATH" \
         "(pip install 'dask-gateway-server[local]')" >&2
    return 1
  fi
}

# the pid in the pid file, if that process is still our dask-gateway-server
our_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "dask-gateway-server" || return 1
  echo "$pid"
}

healthy() {
  "$py" - "$port" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/health", timeout=2) as r:
        sys.exit(0 if json.load(r).get("status") == "pass" else 1)
except Exception:
    sys.exit(1)
EOF
}

port_taken() {
  "$py" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not taken
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
finally:
    s.close()
sys.exit(1)
EOF
}

settings() {
  echo "GATEWAY_ADDRESS=http://127.0.0.1:$port"
  echo "GATEWAY_PROXY_ADDRESS=gateway://127.0.0.1:$proxy_port"
  echo "GATEWAY_USER=$user"
  echo "GATEWAY_PASSWORD=$(cat "$state/password")"
  echo "GATEWAY_IDLE_TIMEOUT=$idle_timeout"
  echo "GATEWAY_PID=$(cat "$pidfile")"
  echo "GATEWAY_STATE=$state"
}

# processes of clusters the server started: they run in sessions of their own, with
# their working directory under $state/clusters
cluster_pids() {
  local d p
  for d in /proc/[0-9]*; do
    p="$(readlink "$d/cwd" 2>/dev/null)" || continue
    case "$p" in "$state/clusters/"*) echo "${d#/proc/}" ;; esac
  done
}

# the server's proxy (a child in a session of its own), by its listening address
proxy_pids() {
  ps -e -o pid=,args= | awk -v a="-address 127.0.0.1:$port " '$2 ~ /dask-gateway-proxy$/ && index($0, a) {print $1}'
}

start() {
  bin="$(find_bin)"
  py="$bin/python"
  [ -x "$py" ] || py="$(command -v python3)"
  mkdir -p "$state"
  chmod 700 "$state"
  if pid="$(our_pid)"; then
    for _ in $(seq 1 100); do
      healthy && { settings; return 0; }
      sleep 0.2
    done
    echo "gateway: pid $pid is running but not healthy on port $port (see $log)" >&2
    return 1
  fi
  for p in "$port" "$proxy_port"; do
    if port_taken "$p"; then
      echo "gateway: port $p on 127.0.0.1 is taken by another program" \
           "(set DASKJOB_GATEWAY_PORT / DASKJOB_GATEWAY_PROXY_PORT)" >&2
      return 1
    fi
  done
  if [ ! -s "$state/password" ]; then
    (umask 077; "$py" -c "import secrets; print(secrets.token_urlsafe(24))" > "$state/password")
  fi
  rm -rf "$state/clusters"
  mkdir -p "$state/clusters"
  local t0=$SECONDS
  # its own session and process group: the proxy runs as its child
  DASKJOB_GATEWAY_STATE="$state" DASKJOB_GATEWAY_BIN="$bin" \
    DASKJOB_GATEWAY_PORT="$port" DASKJOB_GATEWAY_PROXY_PORT="$proxy_port" \
    DASKJOB_GATEWAY_IDLE_TIMEOUT="$idle_timeout" \
    DASKJOB_GATEWAY_PASSWORD="$(cat "$state/password")" \
    setsid "$bin/dask-gateway-server" -f "$here/gateway_config.py" \
      > "$log" 2>&1 < /dev/null &
  local started=$!
  echo "$started" > "$pidfile"
  for _ in $(seq 1 300); do  # 60 s
    # the pid is the forked shell until it has exec'd the server: ask whether it is alive
    if [ ! -d "/proc/$started" ] || grep -q '^State:.*Z' "/proc/$started/status" 2>/dev/null; then
      echo "gateway: dask-gateway-server exited at start; last lines of $log:" >&2
      tail -20 "$log" >&2
      return 1
    fi
    if healthy; then
      echo "gateway: up in $((SECONDS - t0))s" >&2
      settings
      return 0
    fi
    sleep 0.2
  done
  echo "gateway: not healthy within 60 s; last lines of $log:" >&2
  tail -20 "$log" >&2
  stop
  return 1
}

stop() {
  local pid
  if pid="$(our_pid)"; then
    # SIGTERM: the server stops its clusters, then its proxy, then exits
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do  # 30 s
      [ -d "/proc/$pid" ] || break
      grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
      sleep 0.2
    done
  fi
  # what a server killed earlier may have left: its proxy and cluster processes
  local left
  left="$(proxy_pids) $(cluster_pids)"
  if [ -n "${left// /}" ]; then
    kill -KILL $left 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if our_pid >/dev/null; then
      bin="$(find_bin)"; py="$bin/python"
      healthy && { settings; exit 0; }
    fi
    exit 1 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
