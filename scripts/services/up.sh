#!/usr/bin/env bash
# Start the cluster managers the backend tests use (sshd, Slurm, dask-gateway-server),
# each on loopback. Idempotent: a service already up is left as it is. Each service
# script records the PIDs it started under $DASKJOB_SERVICES_DIR; down.sh stops those.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DASKJOB_SERVICES_DIR="${DASKJOB_SERVICES_DIR:-$(cd "$here/../.." && pwd)/.services}"
mkdir -p "$DASKJOB_SERVICES_DIR"
rc=0
for svc in sshd slurm gateway; do
  [ -x "$here/$svc.sh" ] || continue
  if ! "$here/$svc.sh" start > "$DASKJOB_SERVICES_DIR/$svc.env" 2> "$DASKJOB_SERVICES_DIR/$svc.start.log"; then
    echo "services: $svc did not start (see $DASKJOB_SERVICES_DIR/$svc.start.log):" >&2
    tail -5 "$DASKJOB_SERVICES_DIR/$svc.start.log" >&2
    rm -f "$DASKJOB_SERVICES_DIR/$svc.env"
    rc=1
  fi
done
exit $rc
