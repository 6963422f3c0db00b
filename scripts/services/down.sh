#!/usr/bin/env bash
# Stop what up.sh started (only the PIDs the service scripts recorded).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DASKJOB_SERVICES_DIR="${DASKJOB_SERVICES_DIR:-$(cd "$here/../.." && pwd)/.services}"
for svc in gateway slurm sshd; do
  [ -x "$here/$svc.sh" ] || continue
  "$here/$svc.sh" stop || echo "services: $svc did not stop cleanly" >&2
  rm -f "$DASKJOB_SERVICES_DIR/$svc.env"
done
