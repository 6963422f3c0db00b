"""The one reap rule (daskjob/backends/reap.py), as a table, through every backend's own
reaper: each backend is handed a listing of its cluster manager's kind (Slurm jobs,
gateway reports, DaskCluster resources, processes on ssh hosts, processes here) with the
table's labels, and must call exactly the table's rows leftovers.

The listings are made up here (a cluster manager cannot be asked for a driver on
another host, or for an expired run, on demand); the tests of each backend run the real
listings against real services."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

import psutil
import pytest

from daskjob.backends import get_backend
from daskjob.backends.reap import Driver, driver_of, verdict
from daskjob.procs import DRIVER_LABEL, EXPIRES_LABEL, STARTED_LABEL

NOW = time.time()
HOST = socket.gethostname().split(".")[0][:40]
ME = psutil.Process()
ALIVE = f"{HOST}_{ME.pid}_{int(ME.create_time())}"          # this process: a live driver here
_dead = psutil.Popen(["true"])
_dead.wait()
GONE = f"{HOST}_{_dead.pid}_{int(NOW)}"                      # a driver here that is gone
ELSEWHERE = "otherhost_4242_1700000000"                      # a driver on another host

# driver, expiry (seconds from now; None: no expiry label), --older-than, age -> leftover?
TABLE = [
    ("alive-young", ALIVE, 3600, None, 10, False),
    ("alive-expired", ALIVE, -60, None, 7200, False),
    ("alive-expired-older-than", ALIVE, -60, 3600, 7200, False),
    ("gone-young", GONE, 3600, None, 10, True),
    ("gone-younger-than-older-than", GONE, 3600, 3600, 10, False),
    ("gone-older-than", GONE, 3600, 3600, 7200, True),
    ("gone-expired", GONE, -60, None, 7200, True),
    ("gone-no-expiry", GONE, None, None, 7200, True),
    ("elsewhere-not-expired", ELSEWHERE, 3600, None, 7200, False),
    ("elsewhere-not-expired-older-than", ELSEWHERE, 3600, 3600, 7200, True),
    ("elsewhere-not-expired-younger-than-older-than", ELSEWHERE, 3600, 3600, 10, False),
    ("elsewhere-expired", ELSEWHERE, -60, None, 7200, True),
    ("elsewhere-expired-younger-than-older-than", ELSEWHERE, -60, 3600, 10, False),
    ("elsewhere-no-expiry", ELSEWHERE, None, None, 7200, False),
    ("elsewhere-no-expiry-older-than", ELSEWHERE, None, 3600, 7200, True),
]


def labels_of(row) -> dict[str, str]:
    name, driver, expires_in, _, age, _ = row
    labels = {"daskjob/run-id": name, DRIVER_LABEL: driver, STARTED_LABEL: str(int(NOW - age))}
    if expires_in is not None:
        labels[EXPIRES_LABEL] = str(int(NOW + expires_in))
    return labels


def test_the_drivers_of_the_table_are_what_they_say():
    assert driver_of({DRIVER_LABEL: ALIVE}) is Driver.ALIVE
    assert driver_of({DRIVER_LABEL: GONE}) is Driver.GONE
    assert driver_of({DRIVER_LABEL: ELSEWHERE}) is Driver.ELSEWHERE
    assert driver_of({}) is Driver.ELSEWHERE  # no label: cannot be checked from here


@pytest.mark.parametrize("row", TABLE, ids=[r[0] for r in TABLE])
def test_the_rule(row):
    assert verdict(labels_of(row), older_than=row[3], now=NOW).leftover is row[5]


# ---------------------------------------------------------- through each backend
def _jobqueue(monkeypatch, rows):
    from daskjob.backends import jobqueue_slurm
    jobs = [jobqueue_slurm.LabelledJob(r[0], f"daskjob-{r[0]}", labels_of(r), None, "RUNNING",
                                       "u") for r in rows]
    monkeypatch.setattr(jobqueue_slurm, "labelled_jobs", lambda: jobs)
    return {"backend": "jobqueue"}


def _gateway(monkeypatch, rows):
    backend = get_backend("gateway")
    reports = [SimpleNamespace(name=r[0], options={"labels": labels_of(r)}, start_time=None,
                               status=SimpleNamespace(name="RUNNING")) for r in rows]
    monkeypatch.setattr(type(backend), "_reports", lambda self, spec: reports)
    return {"backend": "gateway", "options": {"address": "http://127.0.0.1:9"}}


def _kubernetes(monkeypatch, rows):
    backend = get_backend("kubernetes")
    items = [{"metadata": {"name": r[0], "namespace": "default", "labels": labels_of(r)},
              "status": {"phase": "Running"}} for r in rows]
    monkeypatch.setattr(type(backend), "_clusters", lambda self, spec: items)
    return {"backend": "kubernetes"}


def _ssh(monkeypatch, rows):
    backend = get_backend("ssh")
    procs = [{"pid": 1000 + i, "run_id": r[0], "driver": labels_of(r)[DRIVER_LABEL],
              "started": labels_of(r)[STARTED_LABEL],
              "expires": labels_of(r).get(EXPIRES_LABEL, ""), "proc_started": NOW - r[4],
              "cmd": "dask worker"} for i, r in enumerate(rows)]
    monkeypatch.setattr(type(backend), "_on_hosts", lambda self, spec, what, **kw: {"node1": procs})
    return {"backend": "ssh", "options": {"hosts": ["node1"]}}


def _leftovers(backend: str, monkeypatch, rows, older_than) -> set[str]:
    from daskjob import ClusterSpec
    from daskjob.reap import find_backend_leftovers
    setup = {"jobqueue": _jobqueue, "gateway": _gateway, "kubernetes": _kubernetes,
             "ssh": _ssh}[backend]
    spec = ClusterSpec.parse(setup(monkeypatch, rows))
    return {lo.run_id for lo in find_backend_leftovers(spec, older_than)}


@pytest.mark.parametrize("backend", ["jobqueue", "gateway", "kubernetes", "ssh"])
@pytest.mark.parametrize("older_than", [None, 3600])
def test_every_backend_reaps_by_the_rule(backend, older_than, monkeypatch):
    rows = [r for r in TABLE if r[3] == older_than]
    expected = {r[0] for r in rows if r[5]}
    assert _leftovers(backend, monkeypatch, rows, older_than) == expected


@pytest.mark.parametrize("older_than", [None, 3600])
def test_processes_here_are_reaped_by_the_rule(older_than, monkeypatch):
    """Processes on this machine carry the labels in their environment."""
    import daskjob.reap as reap
    rows = [r for r in TABLE if r[3] == older_than]
    fakes = []
    for i, r in enumerate(rows):
        labels = labels_of(r)
        env = {"DASKJOB_RUN_ID": r[0], "DASKJOB_DRIVER": labels[DRIVER_LABEL],
               "DASKJOB_STARTED": labels[STARTED_LABEL],
               **({"DASKJOB_EXPIRES": labels[EXPIRES_LABEL]} if EXPIRES_LABEL in labels else {})}
        proc = SimpleNamespace(pid=2000 + i, create_time=lambda a=r[4]: NOW - a,
                               cmdline=lambda: ["sleep", "300"], name=lambda: "sleep")
        fakes.append((proc, env))
    monkeypatch.setattr(reap, "labelled_processes", lambda: fakes)
    expected = {r[0] for r in rows if r[5]}
    assert {o.run_id for o in reap.find_orphans(older_than)} == expected
    assert os.getpid() == ME.pid
