#!/usr/bin/env bash
# A one-node Slurm cluster on loopback for the jobqueue backend's tests.
#
#   slurm.sh start   start munged (if not running), slurmctld and slurmd; idempotent.
#                    Prints KEY=VALUE lines: SLURM_CONF=..., SLURM_PARTITION=..., ...
#   slurm.sh stop    stop only what `start` started: `scontrol shutdown` with our
#                    SLURM_CONF, then the munged it started (by its recorded pid).
#   slurm.sh status  say whether it is up (exit 0) or not (exit 1).
#
# State lives under $DASKJOB_SERVICES_DIR/slurm (default <repo>/.services/slurm).
# Slurm listens on the fixed ports 6817 (slurmctld) and 6818 (slurmd): if another Slurm
# already has them, start says so and fails. Needs root.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
base="${DASKJOB_SERVICES_DIR:-$repo/.services}"
S="$base/slurm"
conf="$S/slurm.conf"
host="$(hostname -s)"
partition=debug

log() { echo "slurm: $*" >&2; }

pid_alive() {  # pid file -> 0 when that process runs
  local f="$1" pid
  [ -s "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # a zombie has exited (its parent, maybe gone, has not collected it)
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

is_up() {
  pid_alive "$S/slurmctld.pid" && pid_alive "$S/slurmd.pid" || return 1
  local state
  state="$(SLURM_CONF="$conf" timeout 5 sinfo -h -o %T 2>/dev/null | head -1)"
  [ -n "$state" ] && [[ "$state" != *down* ]] && [[ "$state" != *drain* ]]
}

print_settings() {
  echo "SLURM_CONF=$conf"
  echo "SLURM_PARTITION=$partition"
  echo "SLURM_NODE=$host"
  echo "SLURM_CPUS=8"
  echo "SLURM_MEMORY_MB=8192"
}

port_owner() {  # who listens on a TCP port (empty when nobody)
  ss -Hltnp "sport = :$1" 2>/dev/null | head -1
}

write_conf() {
  mkdir -p "$S/state" "$S/spool"
  cat > "$conf.tmp" <<EOF
# written by scripts/services/slurm.sh: a one-node cluster on loopback for tests
ClusterName=daskjob
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
DefMemPerCPU=512
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 RealMemory=8192 State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
}

start_munge() {
  if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1; then
    return 0  # a munged is serving (ours from an earlier start, or the system's)
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    elif command -v create-munge-key >/dev/null; then
      create-munge-key -f
    else
      log "no /etc/munge/munge.key and no tool to make one"; return 1
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged 9>&- || { log "munged did not start"; return 1; }
  for _ in $(seq 100); do
    [ -S /run/munge/munge.socket.2 ] && break
    sleep 0.05
  done
  [ -S /run/munge/munge.socket.2 ] || { log "munged: no socket after 5s"; return 1; }
  # munged forks into the background and writes its pid file: that is ours to stop
  for _ in $(seq 40); do [ -s /run/munge/munged.pid ] && break; sleep 0.05; done
  cp /run/munge/munged.pid "$S/munged.pid"
}

cmd_start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
  for tool in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged; do
    [ -x "$tool" ] || { log "$tool is not installed (scripts/services/install.sh)"; exit 1; }
  done
  mkdir -p "$S"
  # the lock is fd 9: the daemons started below must not inherit it (see 9>&-)
  exec 9>"$S/start.lock"
  flock 9
  if is_up; then
    print_settings
    exit 0
  fi
  # ours half up (one daemon died)? stop what is left, then start over
  if pid_alive "$S/slurmctld.pid" || pid_alive "$S/slurmd.pid"; then
    log "restarting a half-running Slurm"
    stop_daemons
  fi
  for port in 6817 6818; do
    owner="$(port_owner $port)"
    if [ -n "$owner" ]; then
      log "port $port is taken by another process (another Slurm?): $owner"
      log "stop it first: this one-node test Slurm needs the fixed ports 6817 and 6818"
      exit 1
    fi
  done
  start_munge || exit 1
  write_conf
  rm -f "$S/slurmctld.pid" "$S/slurmd.pid"
  # -c: a clean start (no jobs from an earlier life of this test cluster)
  /usr/sbin/slurmctld -c -f "$conf" 9>&- || { log "slurmctld did not start:"; tail -5 "$S/slurmctld.log" >&2; exit 1; }
  /usr/sbin/slurmd -f "$conf" 9>&- || { log "slurmd did not start:"; tail -5 "$S/slurmd.log" >&2; stop_daemons; exit 1; }
  local state=""
  for _ in $(seq 300); do  # up to 30 s
    state="$(SLURM_CONF="$conf" timeout 5 sinfo -h -o %T 2>/dev/null | head -1)"
    [ "$state" = idle ] && break
    sleep 0.1
  done
  if [ "$state" != idle ]; then
    log "node not idle after 30s (state: ${state:-none}); logs:"
    tail -5 "$S/slurmctld.log" "$S/slurmd.log" >&2
    stop_daemons
    exit 1
  fi
  print_settings
}

stop_daemons() {
  if pid_alive "$S/slurmctld.pid"; then
    SLURM_CONF="$conf" timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  fi
  for f in slurmctld slurmd; do
    for _ in $(seq 100); do
      pid_alive "$S/$f.pid" || break
      sleep 0.1
    done
    if pid_alive "$S/$f.pid"; then
      log "$f still running 10s after scontrol shutdown: SIGKILL"
      kill -9 "$(cat "$S/$f.pid")" 2>/dev/null || true
    fi
    rm -f "$S/$f.pid"
  done
}

cmd_stop() {
  [ -d "$S" ] || exit 0
  exec 9>"$S/start.lock"
  flock 9
  stop_daemons
  if pid_alive "$S/munged.pid"; then
    kill "$(cat "$S/munged.pid")" 2>/dev/null || true
    for _ in $(seq 50); do pid_alive "$S/munged.pid" || break; sleep 0.1; done
  fi
  rm -f "$S/munged.pid"
}

cmd_status() {
  if is_up; then
    echo "slurm: up ($(SLURM_CONF="$conf" sinfo -h -o '%P %T %C' 2>/dev/null | head -1))"
    print_settings
  else
    echo "slurm: down"
    exit 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
