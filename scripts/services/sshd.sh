#!/usr/bin/env bash
# sshd for the ssh backend's tests: one OpenSSH server on 127.0.0.1:2222 and, when
# network namespaces can be made here, a second "host" in namespace djhost1
# (10.213.7.2:2222, reached over a veth pair whose near end is 10.213.7.1).
#
#   sshd.sh start    idempotent; prints KEY=VALUE connection settings on stdout
#   sshd.sh stop     stops only the sshd processes it recorded; removes its netns/veth
#   sshd.sh status   exit 0 when the recorded sshd processes are alive
#
# Throwaway host and client keys, root login by key only, state under
# $DASKJOB_SERVICES_DIR/sshd/.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
SERVICES_DIR="${DASKJOB_SERVICES_DIR:-$(cd "$here/../.." && pwd)/.services}"
STATE="$SERVICES_DIR/sshd"
PORT="${DASKJOB_SSHD_PORT:-2222}"
HOST=127.0.0.1
NETNS=djhost1
VETH=veth-dj0
VETH_PEER=veth-dj1
NS_DRIVER=10.213.7.1
NS_HOST=10.213.7.2
SSHD=/usr/sbin/sshd

log() { echo "sshd.sh: $*" >&2; }

alive() {  # alive PIDFILE: the pid recorded there runs sshd
  local f="$1" pid
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && grep -q sshd "/proc/$pid/cmdline" 2>/dev/null
}

write_config() {  # write_config FILE LISTEN_ADDRESS PIDFILE LOGFILE
  cat > "$1" <<EOF
Port $PORT
ListenAddress $2
HostKey $STATE/host_ed25519
PidFile $3
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
AcceptEnv no
PrintMotd no
Subsystem sftp internal-sftp
EOF
}

wait_pidfile() {  # wait_pidfile FILE: up to 5 s for a daemonised sshd to record its pid
  local i
  for i in $(seq 50); do alive "$1" && return 0; sleep 0.1; done
  return 1
}

netns_up() {
  ip netns list 2>/dev/null | grep -qw "$NETNS" && ip link show "$VETH" >/dev/null 2>&1
}

remove_netns() {
  ip link del "$VETH" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
}

make_netns() {
  # a stale pair or namespace from an earlier run would make `add` fail
  remove_netns
  ip netns add "$NETNS" \
    && ip link add "$VETH" type veth peer name "$VETH_PEER" netns "$NETNS" \
    && ip addr add "$NS_DRIVER/24" dev "$VETH" \
    && ip link set "$VETH" up \
    && ip -n "$NETNS" addr add "$NS_HOST/24" dev "$VETH_PEER" \
    && ip -n "$NETNS" link set "$VETH_PEER" up \
    && ip -n "$NETNS" link set lo up
}

print_env() {
  echo "SSH_HOST=$HOST"
  echo "SSH_PORT=$PORT"
  echo "SSH_USER=root"
  echo "SSH_KEY=$STATE/client_ed25519"
  echo "SSH_KNOWN_HOSTS=$STATE/known_hosts"
  if alive "$STATE/sshd-ns.pid"; then
    echo "SSH_NETNS_HOST=$NS_HOST"
    echo "SSH_NETNS_DRIVER_ADDRESS=$NS_DRIVER"
  fi
}

start() {
  [ -x "$SSHD" ] || { log "$SSHD not found (install openssh-server)"; return 1; }
  mkdir -p "$STATE" /run/sshd
  chmod 700 "$STATE"
  if [ ! -s "$STATE/host_ed25519" ]; then
    ssh-keygen -q -t ed25519 -N '' -C daskjob-test-host -f "$STATE/host_ed25519" || return 1
  fi
  if [ ! -s "$STATE/client_ed25519" ]; then
    ssh-keygen -q -t ed25519 -N '' -C daskjob-test-client -f "$STATE/client_ed25519" || return 1
  fi
  cp "$STATE/client_ed25519.pub" "$STATE/authorized_keys"
  chmod 600 "$STATE/authorized_keys" "$STATE/client_ed25519" "$STATE/host_ed25519"
  echo "[$HOST]:$PORT,[$NS_HOST]:$PORT $(cut -d' ' -f1,2 "$STATE/host_ed25519.pub")" \
    > "$STATE/known_hosts"

  if ! alive "$STATE/sshd.pid"; then
    write_config "$STATE/sshd_config" "$HOST" "$STATE/sshd.pid" "$STATE/sshd.log"
    rm -f "$STATE/sshd.pid"
    "$SSHD" -f "$STATE/sshd_config" -E "$STATE/sshd.log" || { log "sshd did not start"; tail -5 "$STATE/sshd.log" >&2; return 1; }
    wait_pidfile "$STATE/sshd.pid" || { log "sshd wrote no pid"; tail -5 "$STATE/sshd.log" >&2; return 1; }
  fi

  if ! alive "$STATE/sshd-ns.pid" || ! netns_up; then
    if alive "$STATE/sshd-ns.pid"; then kill "$(cat "$STATE/sshd-ns.pid")" 2>/dev/null; fi
    rm -f "$STATE/sshd-ns.pid"
    if command -v ip >/dev/null && make_netns 2>"$STATE/netns.err"; then
      touch "$STATE/netns.ours"
      write_config "$STATE/sshd_ns_config" "$NS_HOST" "$STATE/sshd-ns.pid" "$STATE/sshd-ns.log"
      if ! ip netns exec "$NETNS" "$SSHD" -f "$STATE/sshd_ns_config" -E "$STATE/sshd-ns.log" \
          || ! wait_pidfile "$STATE/sshd-ns.pid"; then
        log "sshd in netns $NETNS did not start; no second host"
        tail -5 "$STATE/sshd-ns.log" >&2
        remove_netns
        rm -f "$STATE/netns.ours"
      fi
    else
      log "no network namespace here ($(head -c 300 "$STATE/netns.err" 2>/dev/null)); no second host"
      remove_netns
    fi
  fi
  print_env
}

stop_pidfile() {  # stop_pidfile FILE: TERM then KILL the recorded sshd
  local f="$1" pid i
  if alive "$f"; then
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

stop() {
  stop_pidfile "$STATE/sshd.pid"
  stop_pidfile "$STATE/sshd-ns.pid"
  if [ -e "$STATE/netns.ours" ]; then
    remove_netns
    rm -f "$STATE/netns.ours"
  fi
  return 0
}

status() {
  local rc=0
  if alive "$STATE/sshd.pid"; then echo "sshd: running (pid $(cat "$STATE/sshd.pid"))"; else echo "sshd: stopped"; rc=1; fi
  if alive "$STATE/sshd-ns.pid"; then echo "sshd in netns $NETNS: running (pid $(cat "$STATE/sshd-ns.pid"))"; else echo "sshd in netns $NETNS: stopped"; fi
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
