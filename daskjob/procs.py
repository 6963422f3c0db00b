"""Process labels and cleanup.

Every process a run starts on this machine (workers, a script payload, and whatever
they start in turn) inherits DASKJOB_RUN_ID and friends in its environment. Teardown
uses that to find grandchildren that a plain cluster close leaves behind, and the
reaper uses it to find what a killed driver left.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Iterable

import psutil

RUN_ID_VAR = "DASKJOB_RUN_ID"
LABELS_VAR = "DASKJOB_LABELS"
DRIVER_PID_VAR = "DASKJOB_DRIVER_PID"
DRIVER_START_VAR = "DASKJOB_DRIVER_START"
STARTED_VAR = "DASKJOB_STARTED"
EXPIRES_VAR = "DASKJOB_EXPIRES"
DRIVER_VAR = "DASKJOB_DRIVER"


# Labels on clusters that live outside this machine's process table (Slurm jobs, gateway
# clusters, DaskCluster resources). Values fit a Kubernetes label value.
DRIVER_LABEL = "daskjob/driver"    # host_pid_start of the process driving the run
STARTED_LABEL = "daskjob/started"  # unix seconds
EXPIRES_LABEL = "daskjob/expires"  # unix seconds by which the run has ended (see reap rule)


def _host() -> str:
    return socket.gethostname().split(".")[0][:40] or "host"


def driver_labels(expires_in: float | None = None) -> dict[str, str]:
    """The labels naming this process as a run's driver, from now on; with the run's
    expiry when it has one (`expires_in` seconds from now)."""
    me = psutil.Process()
    now = time.time()
    labels = {DRIVER_LABEL: f"{_host()}_{me.pid}_{int(me.create_time())}",
              STARTED_LABEL: str(int(now))}
    if expires_in is not None:
        labels[EXPIRES_LABEL] = str(int(now + expires_in))
    return labels


def env_labels(env: dict[str, str]) -> dict[str, str]:
    """The reap rule's labels of a process on this machine, from its environment."""
    labels = {STARTED_LABEL: env.get(STARTED_VAR, ""), EXPIRES_LABEL: env.get(EXPIRES_VAR, "")}
    if env.get(DRIVER_VAR):
        labels[DRIVER_LABEL] = env[DRIVER_VAR]
    else:  # started before processes carried the driver label: pid and start time
        try:
            start = int(float(env.get(DRIVER_START_VAR, "0")))
        except ValueError:
            start = 0
        labels[DRIVER_LABEL] = f"{_host()}_{env.get(DRIVER_PID_VAR, '0')}_{start}"
    return {k: v for k, v in labels.items() if v}


def driver_label_alive(value: str | None) -> bool | None:
    """Is the driver a DRIVER_LABEL names still running? None when it ran on another
    host (or the label is missing): then only the age tells."""
    try:
        host, pid, start = (value or "").rsplit("_", 2)
        pid_n, start_n = int(pid), int(start)
    except ValueError:
        return None
    if host != _host():
        return None
    try:
        proc = psutil.Process(pid_n)
        return (abs(int(proc.create_time()) - start_n) <= 1
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def label_env(run_id: str, labels: dict[str, str]) -> dict[str, str]:
    """The environment every process of the run carries: its id, its labels (with the
    driver's, see driver_labels) and the driver's pid."""
    me = psutil.Process()
    env = {EXPIRES_VAR: labels[EXPIRES_LABEL]} if EXPIRES_LABEL in labels else {}
    if DRIVER_LABEL in labels:
        env[DRIVER_VAR] = labels[DRIVER_LABEL]
    return {
        **env,
        RUN_ID_VAR: run_id,
        LABELS_VAR: json.dumps(labels, sort_keys=True),
        DRIVER_PID_VAR: str(me.pid),
        DRIVER_START_VAR: repr(me.create_time()),
        STARTED_VAR: labels.get(STARTED_LABEL) or repr(time.time()),
        # distributed sets process titles ("dask worker [...]") with setproctitle, which
        # by default overwrites the memory /proc/PID/environ is read from: the labels
        # would vanish from exactly the processes the reaper looks for.
        "SPT_NOENV": "1",
    }


def _environ(proc: psutil.Process) -> dict[str, str] | None:
    try:
        return proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def labelled_processes(run_id: str | None = None) -> list[tuple[psutil.Process, dict[str, str]]]:
    """All processes carrying a daskjob run label (of `run_id`, if given), except us."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        env = _environ(proc)
        if not env or RUN_ID_VAR not in env:
            continue
        if run_id is not None and env[RUN_ID_VAR] != run_id:
            continue
        found.append((proc, env))
    return found


def driver_alive(env: dict[str, str]) -> bool:
    try:
        pid = int(env.get(DRIVER_PID_VAR, "0"))
        start = float(env.get(DRIVER_START_VAR, "0"))
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate(procs: Iterable[psutil.Process], grace: float) -> list[int]:
    """SIGTERM, wait up to `grace`, then SIGKILL. Returns the pids that were signalled."""
    procs = [p for p in procs if p.is_running()]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    alive = _wait_gone(procs, grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(alive, 5)
    return [p.pid for p in procs]


def _gone(proc: psutil.Process) -> bool:
    # a zombie has exited; only its parent (maybe not us) can collect it
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    psutil.wait_procs(procs, timeout=0)  # reaps those that are our own children
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        psutil.wait_procs(alive, timeout=0)
        alive = [p for p in alive if not _gone(p)]
    return alive


def process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes and all their descendants, as they are now."""
    tree: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            tree[pid] = proc
            for child in proc.children(recursive=True):
                tree[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(tree.values())


def stop_children(pid: int, grace: float) -> list[int]:
    """Stop every descendant of `pid` (used by workers on teardown)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    # multiprocessing's resource tracker is a child too; stopping it early is harmless
    return terminate(children, grace)


def stop_run_processes(run_id: str, grace: float) -> list[int]:
    """Stop every process still labelled with `run_id` (grandchildren, orphans)."""
    return terminate([p for p, _ in labelled_processes(run_id)], grace)
