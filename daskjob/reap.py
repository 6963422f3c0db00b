"""Find and stop what killed runs left behind on this machine.

Local processes carry their run's labels in the environment (see procs.py). A process
is an orphan when the driver that started its run is gone. Other backends find their own
leftovers through their cluster manager (Slurm jobs by comment, gateway clusters and
DaskCluster resources by label, processes on ssh hosts by their environment): see
Backend.find_leftovers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from .backends import Leftover, get_backend
from .procs import (RUN_ID_VAR, STARTED_VAR, driver_alive, labelled_processes,
                    terminate)


@dataclass
class Orphan:
    run_id: str
    pid: int
    age_s: float
    command: str
    process: psutil.Process


def find_orphans(older_than: float = 0.0) -> list[Orphan]:
    now = time.time()
    found = []
    for proc, env in labelled_processes():
        if driver_alive(env):
            continue
        try:
            started = float(env.get(STARTED_VAR) or proc.create_time())
        except ValueError:
            started = proc.create_time()
        age = now - started
        if age < older_than:
            continue
        try:
            command = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            command = "?"
        found.append(Orphan(env[RUN_ID_VAR], proc.pid, age, command, proc))
    return found


def reap(orphans: list[Orphan], grace: float = 5.0) -> list[int]:
    return terminate([o.process for o in orphans], grace)


def find_backend_leftovers(spec, older_than: float = 0.0) -> list[Leftover]:
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
