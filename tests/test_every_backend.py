"""One lifecycle, checked the same way on every backend that runs here: local,
ssh (sshd on loopback), jobqueue (a one-node Slurm) and gateway (dask-gateway-server),
each against its real cluster manager (tests/services.py).

Every case runs `daskjob run JOB` as its own process, as a scheduler would, and ends it
three ways: a task that raises on a worker, the run's timeout, SIGTERM. Each time the
record says what happened, keeps the events and log lines the tasks emitted on the
workers, and once the driver is gone the reaper finds nothing of the run: neither a
process on this machine nor anything on the cluster manager (remote processes, Slurm
jobs, gateway clusters).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daskjob.reap import find_backend_leftovers, find_orphans
from daskjob.spec import ClusterSpec

from conftest import REPO, read_run, wait_for_event
from services import service

pytestmark = pytest.mark.usefixtures("no_leaks")

BACKENDS = ["local", "ssh", "jobqueue", "gateway"]
CLEAN_WITHIN = 15.0  # seconds after the driver ends until the reaper finds nothing
DASKJOB = [sys.executable, "-m", "daskjob"]


@pytest.fixture(params=BACKENDS)
def cluster(request, monkeypatch) -> dict:
    """The cluster section of a two-worker job on one backend."""
    name = request.param
    if name == "local":
        return {"backend": "local", "n_workers": 2, "threads_per_worker": 1}
    if name == "ssh":
        pytest.importorskip("asyncssh")
        from test_ssh import ssh_cluster
        sshd = service("sshd")
        return ssh_cluster(sshd, [sshd["SSH_HOST"]] * 2)
    if name == "jobqueue":
        pytest.importorskip("dask_jobqueue")
        # squeue/scancel, here and in the driver, reach the test Slurm through SLURM_CONF
        monkeypatch.setenv("SLURM_CONF", service("slurm")["SLURM_CONF"])
        return {"backend": "jobqueue", "n_workers": 2, "threads_per_worker": 1,
                "memory_per_worker": "1GiB", "options": {"walltime": "00:10:00"}}
    pytest.importorskip("dask_gateway")
    from test_gateway import cluster_section
    return cluster_section(service("gateway"), n_workers=2)


def start(tmp_path, records, cluster: dict, payload: str, params: dict, **job) -> subprocess.Popen:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "name": "every-backend", "payload": f"every_backend_jobs:{payload}", "params": params,
        "record_dir": str(records), "startup_timeout": "90s", "performance_report": False,
        "cluster": cluster, **job}))
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}
    return subprocess.Popen(DASKJOB + ["run", str(path), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the driver did not end within {timeout}s:\n{out[-3000:]}")
    assert proc.returncode == 1, f"exit code {proc.returncode}:\n{out[-3000:]}"
    return out


def assert_torn_down(rec: dict, events: list[dict]) -> None:
    assert rec["ended_at"] and "teardown" in rec["phases"], rec
    assert rec["teardown"]["cluster"] == "closed", rec["teardown"]
    steps = [e["data"]["event"] for e in events if e["topic"] == "daskjob.lifecycle"]
    assert steps.count("worker joined") == 2 and steps[-2:] == ["teardown done", "run finished"], steps


def seconds_until_nothing_left(cluster: dict, run_id: str) -> float:
    """Until the reaper, looking as `daskjob reap --older-than 0` does, finds nothing of
    the run: on the cluster manager, or among this machine's processes."""
    spec = ClusterSpec.parse(cluster)
    t = time.monotonic()
    while True:
        left = ([lo.name for lo in find_backend_leftovers(spec) if lo.run_id == run_id]
                + [o.command for o in find_orphans() if o.run_id == run_id])
        if not left:
            return time.monotonic() - t
        assert time.monotonic() - t < CLEAN_WITHIN, f"still there after {CLEAN_WITHIN}s: {left}"
        time.sleep(0.5)


def test_failing_task_is_recorded_with_its_events_and_logs(cluster, tmp_path, records):
    out = finish(start(tmp_path, records, cluster, "tasks", {"n": 6, "fail_at": 3}))
    run_dir, rec, events = read_run(records)
    assert rec["status"] == "failed" and rec["backend"] == cluster["backend"]
    assert "task 3 failed on purpose" in rec["error"]["message"], rec["error"]
    assert "_marked_task" in rec["error"]["traceback"]  # where on the worker it raised
    assert "task 3 failed on purpose" in out
    # the tasks' own events and log lines, emitted on the workers, kept after teardown
    from_workers = [e for e in events if e["topic"] == "every_backend.task"]
    assert 3 in {e["data"]["i"] for e in from_workers}, from_workers
    assert all(e["data"]["worker_name"] != "driver" for e in from_workers)
    logs = os.path.join(run_dir, "logs")
    text = "".join(open(os.path.join(logs, n)).read() for n in os.listdir(logs))
    assert "task 3 ran" in text
    assert_torn_down(rec, events)
    seconds_until_nothing_left(cluster, rec["run_id"])


def test_timeout_tears_down(cluster, tmp_path, records):
    finish(start(tmp_path, records, cluster, "sleeps", {"seconds": 300}, timeout="4s"))
    _, rec, events = read_run(records)
    assert rec["status"] == "timed_out", rec["error"]
    assert any(e["topic"] == "every_backend.sleeping" for e in events)
    assert_torn_down(rec, events)
    seconds_until_nothing_left(cluster, rec["run_id"])


def test_sigterm_tears_down(cluster, tmp_path, records):
    proc = start(tmp_path, records, cluster, "sleeps", {"seconds": 300})
    try:
        wait_for_event(records, "every_backend.sleeping", timeout=120, proc=proc)
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        finish(proc, timeout=60)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, rec, events = read_run(records)
    assert rec["status"] == "cancelled" and "SIGTERM" in rec["error"]["message"], rec["error"]
    assert_torn_down(rec, events)
    gone = seconds_until_nothing_left(cluster, rec["run_id"])
    print(f"{cluster['backend']}: SIGTERM to driver exit {took:.1f}s, "
          f"nothing left {gone:.1f}s later")
