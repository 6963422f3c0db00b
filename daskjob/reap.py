"""Find and stop what killed runs left behind: processes on this machine, and clusters
on the cluster manager a job reaches. Both by the one rule of backends/reap.py.

Local processes carry their run's labels in their environment (see procs.py); other
backends list their clusters through their cluster manager (Slurm jobs by comment,
gateway clusters and DaskCluster resources by label, processes on ssh hosts by their
environment): see Backend.find_leftovers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from .backends import Leftover, get_backend
from .backends.reap import age_of, verdict
from .procs import RUN_ID_VAR, env_labels, labelled_processes, terminate


@dataclass
class Orphan:
    run_id: str
    pid: int
    age_s: float
    command: str
    process: psutil.Process


def find_orphans(older_than: float | None = None) -> list[Orphan]:
    """Processes on this machine whose run the reap rule calls left over."""
    now = time.time()
    found = []
    for proc, env in labelled_processes():
        labels = env_labels(env)
        if not verdict(labels, older_than=older_than, started=proc.create_time(),
                       now=now).leftover:
            continue
        try:
            command = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            command = "?"
        age = age_of(labels, started=proc.create_time(), now=now) or 0.0
        found.append(Orphan(env[RUN_ID_VAR], proc.pid, age, command, proc))
    return found


def reap(orphans: list[Orphan], grace: float = 5.0) -> list[int]:
    return terminate([o.process for o in orphans], grace)


def find_backend_leftovers(spec, older_than: float | None = None) -> list[Leftover]:
    """Leftovers of killed runs on the cluster manager `spec` (a ClusterSpec) reaches."""
    return get_backend(spec.backend).find_leftovers(spec, older_than)


def stop_backend_leftovers(spec, leftovers: list[Leftover]) -> list[tuple[Leftover, str | None]]:
    """Stop each; returns (leftover, error or None) so one failure does not hide the rest."""
    backend = get_backend(spec.backend)
    done = []
    for leftover in leftovers:
        try:
            backend.stop_leftover(spec, leftover)
            done.append((leftover, None))
        except Exception as e:  # keep going: report every one
            done.append((leftover, f"{type(e).__name__}: {e}"))
    return done
