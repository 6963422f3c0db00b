#!/usr/bin/env bash
# Install the system packages the backend tests start for real: an OpenSSH server,
# Slurm and munge; and Chromium, the browser the run report is tested in. Idempotent; does nothing when they are there. Needs root and apt.
set -euo pipefail
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] || need+=(slurm-wlm)
[ -x /usr/sbin/munged ] || need+=(munge)
command -v ip >/dev/null || need+=(iproute2)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "services: cannot install ${need[*]} (needs root and apt-get); their tests will skip" >&2
  exit 0
fi
echo "services: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
