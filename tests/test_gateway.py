"""The `gateway` backend against a real dask-gateway-server on loopback
(scripts/services/gateway.sh: local-process clusters, basic auth, a 10 s idle timeout).

The gateway's schedulers and workers are children of the gateway server, not of the test:
they are checked through the gateway's own cluster list and through the run labels in
their environment (procs.labelled_processes), which the no_leaks fixture also watches.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from daskjob import ClusterSpec, JobFailed, JobRun, JobSpec, SpecError, StartupFailed, run_job
from daskjob.datasets import write_drop
from daskjob.procs import labelled_processes

from conftest import REPO, only_run
from services import service

pytest.importorskip("dask_gateway")
pytestmark = pytest.mark.usefixtures("no_leaks")

TESTS = os.path.join(REPO, "tests")
DASKJOB = [sys.executable, "-m", "daskjob"]
ENV = {**os.environ, "PYTHONPATH": TESTS, "COLUMNS": "250"}
CLEAN_WITHIN = 15.0


@pytest.fixture(scope="module")
def gw():
    return service("gateway")


@pytest.fixture(scope="module")
def gwc(gw):
    """A dask_gateway client of the test's own, to look at the gateway's clusters."""
    with gateway_client(gw) as client:
        yield client


def cluster_section(gw, n_workers=1, env=None, **options):
    return {"backend": "gateway", "n_workers": n_workers, "threads_per_worker": 1,
            # no PYTHONPATH: the tests' payload modules reach the (gateway's) scheduler and
            # workers from their source, as on a machine that does not share our files
            "env": dict(env or {}),
            "options": {"address": gw["GATEWAY_ADDRESS"],
                        "proxy_address": gw["GATEWAY_PROXY_ADDRESS"],
                        "username": gw["GATEWAY_USER"], **options},
            "secrets": {"password": gw["GATEWAY_PASSWORD"]}}


def job(records, payload, gw, params=None, cluster=None, **kw):
    kw.setdefault("startup_timeout", "90s")
    return JobSpec(name=kw.pop("name", "gw"), payload=payload, params=params or {},
                   record_dir=str(records), performance_report=False,
                   cluster=ClusterSpec(**(cluster or cluster_section(gw))), **kw)


@contextlib.contextmanager
def gateway_client(gw):
    from dask_gateway import BasicAuth, Gateway
    from daskjob.backends.gateway import _close_gateway
    client = Gateway(gw["GATEWAY_ADDRESS"], proxy_address=gw["GATEWAY_PROXY_ADDRESS"],
                     auth=BasicAuth(gw["GATEWAY_USER"], gw["GATEWAY_PASSWORD"]))
    try:
        yield client
    finally:
        _close_gateway(client)  # Gateway.close() is not idempotent; its __del__ closes again


def clusters_of(client, run_id):
    """The gateway's pending/running clusters labelled with `run_id`."""
    return [c for c in client.list_clusters()
            if (c.options.get("labels") or {}).get("daskjob/run-id") == run_id]


def wait_gone(client, run_id, timeout=CLEAN_WITHIN) -> float:
    """Seconds until no cluster and no labelled process of `run_id` is left."""
    t = time.monotonic()
    while True:
        left = clusters_of(client, run_id)
        procs = [p for p, _ in labelled_processes(run_id)
                 if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left and not procs:
            return time.monotonic() - t
        if time.monotonic() - t > timeout:
            raise AssertionError(f"{timeout:.0f}s on, run {run_id} still has clusters {left} "
                                 f"and processes {procs}")
        time.sleep(0.2)


def read_events(records) -> str:
    for run in os.listdir(records):
        path = os.path.join(records, run, "events.jsonl")
        if os.path.exists(path):
            return open(path).read()
    return ""


def test_bad_input_fails_before_anything_starts():
    base = {"backend": "gateway", "options": {"address": "http://127.0.0.1:9"}}
    cases = [
        ({"backend": "gateway"}, "options.address"),
        ({**base, "tls": False}, "always uses TLS"),
        ({**base, "options": {**base["options"], "workers_max": 3}},
         "workers_max not accepted by the 'gateway' backend (accepted: address"),
        ({**base, "options": {**base["options"], "auth": "token"}}, "basic, kerberos, jupyterhub"),
        ({**base, "options": {"address": "127.0.0.1:8000"}}, "not an http(s):// address"),
        ({**base, "options": {**base["options"], "cluster_options": {"environment": {}}}},
         "environment set by daskjob from cluster.env"),
        ({**base, "secrets": {"pasword": "x"}}, "pasword not used by the 'gateway' backend"),
        ({**base, "options": {**base["options"], "keepalive": "soon"}}, "options.keepalive"),
    ]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    for cluster, message in cases:
        with pytest.raises(SpecError) as info:
            JobSpec.parse({"name": "bad", "payload": "jobs:add_up", "cluster": cluster})
        assert message in str(info.value), (cluster, str(info.value))
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_etl_runs_on_a_labelled_gateway_cluster_and_leaves_nothing(gw, gwc, tmp_path, records):
    raw, dest = tmp_path / "raw", tmp_path / "wh"
    write_drop(str(raw), "2026-11-20", 3_000, seed=4, bad_fraction=0.02, rows_per_file=1_000)
    spec = job(records, "daskjob.payloads.etl:run", gw, name="gw-etl",
               params={"source": str(raw), "dest": str(dest), "date": "2026-11-20",
                       "blocksize": "64KB"},
               labels={"team": "data"}, cluster=cluster_section(gw, n_workers=2))
    run = JobRun(spec)
    box = {}
    t0 = time.monotonic()
    runner = threading.Thread(target=lambda: box.setdefault("result", run.run()), daemon=True)
    runner.start()
    client = gwc
    try:
        # during the run: the gateway holds the run's labels; its scheduler and workers
        # (the gateway's processes, not ours) carry the run's identity in their environment
        # (the scheduler retitles itself, which overwrites its /proc environ: only the
        # workers are findable that way)
        seen, workers = None, []
        while runner.is_alive() and not (seen and len(workers) == 2):
            seen = seen or next(iter(clusters_of(client, run.run_id)), None)
            workers = [" ".join(p.cmdline()) for p, _ in labelled_processes(run.run_id)
                       if " worker " in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert seen is not None, "the run's cluster never showed in list_clusters"
        labels = seen.options["labels"]
        assert labels["daskjob/name"] == "gw-etl" and labels["team"] == "data"
        assert labels["daskjob/driver"].split("_")[1] == str(os.getpid())
        assert seen.options["environment"]["DASKJOB_RUN_ID"] == run.run_id
        assert len(workers) == 2, workers
        assert all(" tls://127.0.0.1:" in c for c in workers), workers  # always TLS
        runner.join(120)
        took = time.monotonic() - t0
        assert "result" in box, "the run failed: see the record"
        summary = box["result"].value
        assert summary["rows_read"] == 3_000 and summary["partitions"] >= 3
        assert summary["rows_written"] == summary["rows_read"] - summary["rows_rejected"] > 2_800

        rec = json.load(open(os.path.join(only_run(records), "record.json")))
        assert rec["status"] == "succeeded" and rec["teardown"]["cluster"] == "closed"
        assert rec["scheduler_address"] == f"{gw['GATEWAY_PROXY_ADDRESS']}/{seen.name}"
        assert rec["dashboard_link"].startswith(gw["GATEWAY_ADDRESS"])
        assert rec["environment_check"]["ok"] is True
        logs = os.path.join(only_run(records), "logs")
        worker_logs = [f for f in os.listdir(logs) if f != "scheduler.log"]
        assert len(worker_logs) == 2, worker_logs
        text = "".join(open(os.path.join(logs, f)).read() for f in worker_logs)
        assert "tls://" in text  # the workers' own start-up lines, forwarded live
        assert "etl.partition" in open(os.path.join(only_run(records), "events.jsonl")).read()
        # teardown waited for the gateway to stop it: nothing left at once
        assert client.get_cluster(seen.name).status.name == "STOPPED"
        assert wait_gone(client, run.run_id, timeout=2) < 2
        print(f"gateway ETL run: {took:.1f}s; phases "
              + ", ".join(f"{k} {v['seconds']}s" for k, v in rec["phases"].items()))
    finally:
        if runner.is_alive():
            run.cancel("test cleanup")
            runner.join(60)


def test_failures_leave_no_cluster(gw, gwc, tmp_path, records):
    client = gwc
    # a scheduler that cannot start: the gateway marks the cluster FAILED, the run says so
    broken = tmp_path / "broken" / "dask_gateway"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    t = time.monotonic()
    with pytest.raises(StartupFailed) as info:
        run_job(job(records, "jobs:add_up", gw, params={"n": 3}, startup_timeout="60s",
                    cluster=cluster_section(gw, env={"PYTHONPATH": str(broken.parent)})))
    assert "failed to start (status FAILED; the gateway server's log says why)" in str(info.value)
    assert time.monotonic() - t < 30, "a failed start must not wait for startup_timeout"
    rec = info.value.record
    assert rec["status"] == "startup_failed"
    assert not clusters_of(client, rec["run_id"])
    # a cluster option this gateway does not offer: refused before a cluster exists
    with pytest.raises(StartupFailed) as info:
        run_job(job(records, "jobs:add_up", gw, params={"n": 3},
                    cluster=cluster_section(gw, cluster_options={"gpus": 1})))
    assert "gpus not offered by the gateway" in str(info.value)
    assert "labels" in str(info.value)  # names what it does offer

    # a payload that raises on a worker: the error comes back, the cluster goes
    t = time.monotonic()
    with pytest.raises(JobFailed) as info:
        run_job(job(records, "jobs:raises_on_worker", gw))
    assert "boom-from-worker 7" in str(info.value)
    rec = info.value.record
    assert rec["status"] == "failed" and rec["teardown"]["cluster"] == "closed"
    gone = wait_gone(client, rec["run_id"])
    print(f"failed run: {time.monotonic() - t:.1f}s; nothing left {gone:.1f}s after it")


@pytest.mark.xdist_group("reaper")  # `daskjob reap` stops every orphan on the machine
def test_killed_driver_cluster_is_reaped(gw, gwc, tmp_path, records):
    """A payload that computes on the driver keeps its cluster past the gateway's idle
    timeout; once the driver is SIGKILLed, `daskjob reap --backend gateway` stops it."""
    (tmp_path / "driver_side.py").write_text(
        "import time\n\ndef think(seconds):\n    time.sleep(seconds)\n    return seconds\n")
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "name": "gw-kill", "payload": "driver_side:think", "params": {"seconds": 300},
        "record_dir": str(records), "performance_report": False, "startup_timeout": "90s",
        "cluster": cluster_section(gw)}))

    def reap(*args):
        # from the job's folder, like `run`: parsing the job file resolves its payload
        return subprocess.run(DASKJOB + ["reap", "--backend", "gateway", "--job", str(path),
                                         *args], env=ENV, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)

    driver = subprocess.Popen(DASKJOB + ["run", str(path)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = gwc
    try:
        deadline = time.monotonic() + 120
        while "payload started" not in read_events(records):
            assert driver.poll() is None, "the driver ended before its payload started"
            assert time.monotonic() < deadline, "the payload never started"
            time.sleep(0.2)
        run_id = json.load(open(os.path.join(only_run(records), "record.json")))["run_id"]
        [cluster] = clusters_of(client, run_id)
        # the gateway runs its processes on this machine: all carry the run's labels, also
        # those distributed retitles "dask scheduler [address]" / "dask worker [address]"
        titles = [" ".join(p.cmdline()) for p, _ in labelled_processes(run_id)]
        assert any(t.startswith("dask scheduler [") for t in titles), titles
        assert any(t.startswith("dask worker [") for t in titles), titles
        # no task of the payload's own runs: only the keepalive stops the idle timeout
        time.sleep(float(gw["GATEWAY_IDLE_TIMEOUT"]) + 3)
        assert [c.name for c in clusters_of(client, run_id)] == [cluster.name]
        assert driver.poll() is None
        driver.kill()
        driver.wait()

        dry = reap("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert cluster.name in dry.stdout and "would be stopped" in dry.stdout, dry.stdout
        assert clusters_of(client, run_id), "--dry-run must not stop it"

        t = time.monotonic()
        done = reap()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"stopped gateway {cluster.name} (run {run_id})" in done.stdout, done.stdout
        gone = wait_gone(client, run_id)
        print(f"killed driver: cluster and processes gone {time.monotonic() - t:.1f}s after "
              f"`daskjob reap` started ({gone:.1f}s after it returned)")

        again = reap("--dry-run")
        assert cluster.name not in again.stdout
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for c in [c for c in client.list_clusters()
                  if (c.options.get("labels") or {}).get("daskjob/name") == "gw-kill"]:
            client.stop_cluster(c.name)


def test_adapt_is_the_gateways_own_and_grows_under_load(gw, gwc, records):
    """`adapt` on a gateway cluster: the gateway server's adaptive scaling, between the
    spec's minimum and maximum; nothing is left after the run."""
    section = {**cluster_section(gw), "adapt": {"minimum": 1, "maximum": 3}}
    del section["n_workers"]
    result = run_job(job(records, "group_jobs:queue_then_idle", gw, cluster=section,
                         params={"n": 20, "seconds": 1.0, "idle": 1}, timeout="300s"))
    rec = result.record
    assert rec["groups"]["default"]["expected"] == 1
    assert rec["groups"]["default"]["peak"] >= 2, rec["groups"]
    assert len(result.value) >= 2
    wait_gone(gwc, rec["run_id"])
