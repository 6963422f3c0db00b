"""The lifecycle contract on real LocalClusters: teardown always, never hang, record kept."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import dask
import psutil
import pytest

import daskjob
from daskjob import (ClusterSpec, JobCancelled, JobFailed, JobRun, JobSpec, JobTimedOut,
                     StartupFailed, run_job)

from conftest import REPO, LogLines, only_run

pytestmark = pytest.mark.usefixtures("no_leaks")

SMALL = dict(n_workers=2, threads_per_worker=1, memory_per_worker="1GiB")


def spec(records, payload, **kw):
    cluster = ClusterSpec(**{**SMALL, **kw.pop("cluster", {})})
    kw.setdefault("startup_timeout", "60s")
    kw.setdefault("performance_report", False)
    return JobSpec(name=kw.pop("name", "t"), payload=payload, record_dir=str(records),
                   cluster=cluster, **kw)


def load(run_dir):
    with open(os.path.join(run_dir, "record.json")) as f:
        rec = json.load(f)
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return rec, events


def lifecycle(events):
    return [e["data"]["event"] for e in events if e["topic"] == "daskjob.lifecycle"]


def check_failed_record(records, status, *, teardown=True):
    run_dir = only_run(records)
    rec, events = load(run_dir)
    assert rec["status"] == status
    assert rec["error"]["message"]
    assert "run started" in lifecycle(events)
    if teardown:
        assert "teardown done" in lifecycle(events)
        assert rec["teardown"]["cluster"].startswith(("closed", "not started", "borrowed"))
    assert os.path.isdir(os.path.join(run_dir, "logs"))
    return rec, events


def test_success_writes_full_record(records):
    result = run_job(spec(records, "jobs:add_up", params={"n": 10}))
    assert result.value == 90
    rec, events = load(only_run(records))
    assert rec["status"] == "succeeded"
    assert rec["result"] == {"type": "int", "json": True, "value": 90}
    assert rec["workers"] == {"expected": 2, "started": 2}
    assert set(rec["phases"]) >= {"provision", "workers", "environment_check", "payload",
                                  "snapshot", "teardown"}
    assert rec["environment_check"]["ok"] is True
    assert rec["dashboard_link"].startswith("http://127.0.0.1:")
    steps = lifecycle(events)
    assert steps.index("provisioned") < steps.index("payload started") < \
        steps.index("payload finished") < steps.index("teardown done")
    assert steps.count("worker joined") == 2
    assert rec["labels"]["daskjob/run-id"] == rec["run_id"]


def test_the_dashboard_link_serves_dasks_dashboard_while_the_run_lasts(records):
    import urllib.request

    def payload(client):
        client.submit(sum, [1, 2]).result()
        pages = {}
        for page in ("status", "workers"):
            url = client.dashboard_link.replace("/status", f"/{page}")
            with urllib.request.urlopen(url, timeout=60) as response:
                body = response.read().decode()
                pages[page] = (response.status, response.url, "Bokeh" in body)
        return client.dashboard_link, pages

    result = run_job(spec(records, payload))
    link, pages = result.value
    assert link == result.record["dashboard_link"]
    for page, (status, url, bokeh) in pages.items():
        assert status == 200 and url.endswith(f"/{page}") and bokeh, (page, status, url)


def test_payload_raises_on_worker(records):
    with pytest.raises(JobFailed) as info:
        run_job(spec(records, "jobs:raises_on_worker"))
    err = info.value
    assert type(err) is JobFailed
    assert "boom-from-worker 7" in str(err)
    assert "_boom" in err.worker_traceback  # the worker-side frame
    rec, _ = check_failed_record(records, "failed")
    assert "boom-from-worker" in rec["error"]["message"]
    assert "_boom" in rec["error"]["traceback"]


def test_payload_timeout(records):
    t = time.monotonic()
    with pytest.raises(JobTimedOut):
        run_job(spec(records, "jobs:sleeps", params={"seconds": 120}, timeout="3s"))
    assert time.monotonic() - t < 40
    rec, _ = check_failed_record(records, "timed_out")
    assert rec["phases"]["payload"]["seconds"] < 6


def test_workers_never_start(records, tmp_path):
    slow = tmp_path / "slow_preload.py"
    slow.write_text("import time\ntime.sleep(120)\n")
    t = time.monotonic()
    with pytest.raises(StartupFailed) as info:
        run_job(spec(records, "jobs:add_up", params={"n": 1}, startup_timeout="4s",
                     cluster={"preload": [str(slow)]}))
    assert time.monotonic() - t < 30
    assert "0 of 2 workers arrived within startup_timeout" in str(info.value)
    check_failed_record(records, "startup_failed")


def test_workers_crash_at_start(records, tmp_path):
    bad = tmp_path / "bad_preload.py"
    bad.write_text("raise RuntimeError('cannot start here: missing driver xyz')\n")
    t = time.monotonic()
    with pytest.raises(StartupFailed) as info:
        run_job(spec(records, "jobs:add_up", params={"n": 1}, startup_timeout="60s",
                     cluster={"preload": [str(bad)]}))
    assert time.monotonic() - t < 30, "must fail promptly, not wait for startup_timeout"
    assert "missing driver xyz" in str(info.value)
    check_failed_record(records, "startup_failed")


def test_grandchildren_are_stopped(records):
    result = run_job(spec(records, "jobs:leaves_grandchild"))
    pid = result.value
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    rec, _ = load(only_run(records))
    assert rec["teardown"]["cluster"] == "closed"


def test_cancel_from_another_thread(records):
    run = JobRun(spec(records, "jobs:sleeps", params={"seconds": 120}))
    timer = threading.Timer(8, run.cancel, kwargs={"reason": "operator asked"})
    timer.start()
    # the nannies run in this process: their warnings say whether a worker was killed
    nanny_log = LogLines(logging.WARNING)
    logging.getLogger("distributed.nanny").addHandler(nanny_log)
    t = time.monotonic()
    try:
        with pytest.raises(JobCancelled) as info:
            run.run()
    finally:
        timer.cancel()
        logging.getLogger("distributed.nanny").removeHandler(nanny_log)
    assert "operator asked" in str(info.value)
    assert time.monotonic() - t < 40
    check_failed_record(records, "cancelled")
    # workers busy in a task close without waiting for it: none had to be killed after
    # the nanny's grace (which held teardown for 4 s, near Airflow's 5 s to SIGKILL)
    assert not [m for m in nanny_log.lines if "killing" in m], nanny_log.lines


def test_cancel_takes_no_lock_so_signal_handlers_cannot_deadlock(records):
    """Airflow's on_kill and daskjob's own SIGTERM handler call cancel() in a signal
    handler, on the main thread, between two bytecodes: maybe while that thread holds a
    lock inside a wait. A lock taken by cancel() could then never be released (once,
    threading.Event.set() hung a run until Airflow's SIGKILL)."""
    import daskjob.live as live
    run = JobRun(spec(records, "jobs:sleeps"))
    taken = []

    def watch(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") in ("acquire", "__enter__"):
            taken.append(repr(arg))

    sys.setprofile(watch)
    try:
        run.cancel("from a signal handler")
    finally:
        sys.setprofile(None)
    assert not taken, taken
    assert run.cancelled

    # cancel_all() takes the registry's lock: reentrant, so a handler that interrupts
    # the main thread while it holds the lock does not wait for itself
    done = threading.Event()

    def holder():
        with live._LIVE_LOCK:
            live.cancel_all("nested")
            done.set()

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    t.join(5)
    assert done.is_set(), "cancel_all() blocked on a lock its own thread holds"


def test_cancel_while_workers_start_closes_promptly(records):
    # the nannies are mid-start: a plain close waits on them, then times out
    holder = {}

    def on_event(ev):
        if ev["topic"] == "daskjob.lifecycle" and ev["data"].get("event") == "provisioned":
            holder["run"].cancel(reason="stop now")

    run = holder["run"] = JobRun(spec(records, "jobs:sleeps", params={"seconds": 120}),
                                 on_event=on_event)
    t = time.monotonic()
    with pytest.raises(JobCancelled):
        run.run()
    took = time.monotonic() - t
    rec, _ = check_failed_record(records, "cancelled")
    assert rec["teardown"]["cluster"] == "closed"
    assert took < 15, f"cancel during worker start took {took:.1f}s"


def test_keyboard_interrupt_tears_down(records):
    timer = threading.Timer(8, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_job(spec(records, "jobs:sleeps", params={"seconds": 120}))
    finally:
        timer.cancel()
    check_failed_record(records, "cancelled")


def test_worker_killed_mid_run_recomputes(records, tmp_path):
    marker = str(tmp_path / "killed-once")
    result = run_job(spec(records, "jobs:survives_worker_kill", params={"marker": marker}))
    assert result.value == sum(range(1, 5))
    assert os.path.exists(marker)
    rec, events = load(only_run(records))
    assert rec["status"] == "succeeded"
    assert "worker died" in lifecycle(events)
    assert rec["worker_deaths"], "the killed worker is recorded"


def test_worker_over_memory_limit(records):
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with pytest.raises(JobFailed) as info:
            run_job(spec(records, "jobs:hogs_memory", params={"mb": 3000},
                         cluster={"memory_per_worker": "400MiB"}))
    assert "KilledWorker" in str(info.value) or "died" in str(info.value)
    rec, events = check_failed_record(records, "failed")
    assert "worker died" in lifecycle(events)


def test_workers_paused_at_memory_limit_are_named_in_the_timeout(records):
    with pytest.raises(JobTimedOut, match="paused at their memory limit"):
        run_job(spec(records, "jobs:pauses_its_worker", timeout="6s",
                     cluster={"n_workers": 1, "memory_per_worker": "400MiB"}))
    rec, events = check_failed_record(records, "timed_out")
    assert "worker paused" in lifecycle(events)


def test_reference_that_does_not_import(records, tmp_path, monkeypatch):
    (tmp_path / "broken_dep_mod.py").write_text("import not_installed_anywhere_abc\n\ndef f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = psutil.Process().children(recursive=True)
    with pytest.raises(daskjob.SpecError) as info:
        run_job({"name": "bad-import", "payload": "broken_dep_mod:f", "record_dir": str(records)})
    assert "not_installed_anywhere_abc" in str(info.value)
    assert psutil.Process().children(recursive=True) == before
    rec, events = load(only_run(records))
    assert rec["status"] == "startup_failed"
    assert "not_installed_anywhere_abc" in rec["error"]["message"]
    assert lifecycle(events) == ["spec rejected"]


def test_workers_crash_importing_payload_module(records, tmp_path, monkeypatch):
    # imports fine in the driver; on a worker the import kills the process (as a worker
    # importing airflow under the task runner does)
    (tmp_path / "crash_on_worker.py").write_text(textwrap.dedent("""
        import os
        from distributed import get_client
        if os.environ.get("DASKJOB_RUN_ID"):
            os._exit(3)

        def task(x):
            return x

        def main():
            return get_client().submit(task, 1).result()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    t = time.monotonic()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with pytest.raises(JobFailed) as info:
            run_job(spec(records, "crash_on_worker:main"))
    assert time.monotonic() - t < 90
    assert "KilledWorker" in str(info.value) or "died" in str(info.value)
    rec, events = check_failed_record(records, "failed")
    assert "worker died" in lifecycle(events)


def test_worker_import_error_is_reported(records, tmp_path, monkeypatch):
    (tmp_path / "raise_on_worker.py").write_text(textwrap.dedent("""
        import os
        from distributed import get_client
        if os.environ.get("DASKJOB_RUN_ID"):
            raise ImportError("this module cannot be imported on workers: libfoo missing")

        def task(x):
            return x

        def main():
            return get_client().submit(task, 1).result()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(JobFailed) as info:
        run_job(spec(records, "raise_on_worker:main"))
    assert "libfoo missing" in str(info.value)
    check_failed_record(records, "failed")


def test_scheduler_killed_mid_run(records):
    """A borrowed scheduler (a real `dask scheduler` process) dies: fail promptly."""
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    worker = None
    try:
        address = None
        for line in sched.stdout:
            if "Scheduler at:" in line:
                address = line.split("Scheduler at:")[1].strip()
                break
        assert address
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                   "--nthreads", "1", "--no-dashboard", "--death-timeout", "5"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        threading.Timer(10, sched.kill).start()
        t = time.monotonic()
        with pytest.raises(JobFailed) as info:
            run_job(spec(records, "jobs:sleeps", params={"seconds": 120, "tasks": 1},
                         cluster={"backend": "address", "address": address, "memory_per_worker": None}))
        assert time.monotonic() - t < 60
        assert "scheduler" in str(info.value).lower()
        rec, _ = check_failed_record(records, "failed")
        assert rec["teardown"]["cluster"] == "borrowed (left running)"
    finally:
        for p in (sched, worker):
            if p is not None:
                p.kill()
                p.wait()


def test_borrowed_cluster_is_never_shut_down(records):
    from distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", scheduler_port=0,
                      dashboard_address=None) as cluster:
        result = run_job(spec(records, "jobs:add_up", params={"n": 3},
                              cluster={"backend": "address", "address": cluster.scheduler_address,
                                       "memory_per_worker": None}))
        assert result.value == 6
        assert cluster.status.name == "running"
        assert len(cluster.scheduler.workers) == 1
        # our plugins came off again
        assert not [n for n in cluster.scheduler.plugins if n.startswith("daskjob")]


def test_close_twice_is_harmless(records):
    run = JobRun(spec(records, "jobs:add_up", params={"n": 2}))
    run.run()
    run.emergency_teardown()
    run.emergency_teardown()
    rec, events = load(only_run(records))
    assert lifecycle(events).count("teardown done") == 1


@pytest.fixture
def mismatched_toolz(tmp_path):
    """A preload that makes workers report toolz 0.0.1 (a stale image, a bad venv)."""
    fake = tmp_path / "fake_site"
    dist = fake / "toolz-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toolz\nVersion: 0.0.1\n")
    preload = tmp_path / "stale_env.py"
    preload.write_text(f"import sys\nsys.path.insert(0, {str(fake)!r})\n")
    return str(preload)


def test_environment_check_fails_fast_with_the_table(records, mismatched_toolz):
    with pytest.raises(StartupFailed) as info:
        run_job(spec(records, "jobs:add_up", params={"n": 2},
                     cluster={"preload": [mismatched_toolz]}))
    message = str(info.value)
    assert "toolz" in message and "0.0.1" in message and "version_check='warn'" in message
    rec, events = check_failed_record(records, "startup_failed")
    assert "payload started" not in lifecycle(events)


def test_environment_check_warn_and_off(records, mismatched_toolz):
    warned = run_job(spec(records, "jobs:add_up", params={"n": 2}, version_check="warn",
                          cluster={"preload": [mismatched_toolz]}))
    assert warned.value == 2
    assert warned.record["environment_check"]["ok"] is False
    assert "0.0.1" in warned.record["environment_check"]["mismatch"]
    off = run_job(spec(records, "jobs:add_up", params={"n": 2}, version_check="off",
                       cluster={"preload": [mismatched_toolz]}))
    assert off.record["environment_check"] == {"policy": "off"}


def test_worker_env_and_config_are_applied_and_dropped(records, monkeypatch):
    monkeypatch.setenv("SECRET_DRIVER_ONLY", "do-not-leak")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")

    def payload(client):
        def on_worker():
            import dask.config
            seen = {k: os.environ.get(k) for k in
                    ("MY_FLAG", "SECRET_DRIVER_ONLY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")}
            seen["profile"] = dask.config.get("distributed.worker.profile")
            return seen
        return client.submit(on_worker).result()

    user_config = {"distributed": {"worker": {"profile": {"cycle": "5s"}}}}
    result = run_job(spec(records, payload, cluster={"env": {"MY_FLAG": 1},
                                                     "drop_env": ["SECRET_*"],
                                                     "options": {"config": user_config}}),
                     drop_env=["AIRFLOW__*"])
    profile = result.value.pop("profile")
    assert result.value == {"MY_FLAG": "1", "SECRET_DRIVER_ONLY": None,
                            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": None}
    # daskjob's worker default, the user's option, and the rest of dask's config intact
    assert profile["interval"] == "100ms" and profile["cycle"] == "5s"
    assert profile["enabled"] is False  # no performance report in these tests: no profiler


@pytest.mark.parametrize("worker_start", ["forkserver", "spawn"])
def test_worker_processes_carry_the_run_labels_where_the_reaper_reads_them(
        records, monkeypatch, worker_start):
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    monkeypatch.setenv("SET_JUST_BEFORE", "seen")

    def payload(client):
        def on_worker():
            me = psutil.Process()
            return {"pid": me.pid, "environ": me.environ(), "os.environ": dict(os.environ),
                    "cmdline": " ".join(me.cmdline())}
        return client.run(on_worker)

    result = run_job(spec(records, payload, cluster={
        "drop_env": ["SECRET_*"], "env": {"MY_FLAG": "1"},
        "options": {"worker_start": worker_start}}))
    run_id = result.record["run_id"]
    driver = psutil.Process()
    assert len(result.value) == 2
    for seen in result.value.values():
        # inside the worker; and with forkserver also in /proc/PID/environ, where the
        # reaper looks (a spawned worker gets the run's variables only after exec)
        envs = [seen["os.environ"]] + ([seen["environ"]] if worker_start == "forkserver" else [])
        assert "SECRET_TOKEN" not in seen["environ"]
        for env in envs:
            assert env["DASKJOB_RUN_ID"] == run_id
            assert env["DASKJOB_DRIVER_PID"] == str(driver.pid)
            assert env["SET_JUST_BEFORE"] == "seen"
            assert "SECRET_TOKEN" not in env
        assert seen["os.environ"]["MY_FLAG"] == "1"
        assert seen["cmdline"].startswith("dask worker [")  # as `ps` shows Dask's workers
        assert not psutil.pid_exists(seen["pid"])  # and stopped at teardown
    assert os.environ["SECRET_TOKEN"] == "do-not-leak"  # the driver's own is untouched


def test_tls_cluster_refuses_a_client_without_its_credentials(records):
    result = run_job(spec(records, "jobs:plain_tcp_is_refused", cluster={"tls": True}))
    value = result.value
    assert value["address"].startswith("tls://127.0.0.1:")
    assert all(w.startswith("tls://") for w in value["workers"]) and len(value["workers"]) == 2
    for name, outcome in value["attempts"].items():
        assert outcome.startswith("refused"), (name, outcome)
    assert result.record["scheduler_address"].startswith("tls://")


def test_payload_from_a_file_loaded_under_another_name(records, tmp_path):
    """Airflow loads DAG files as `unusual_prefix_<hash>_<file>`: no folder makes that
    name importable on workers, so the module must travel by value."""
    import importlib.util
    (tmp_path / "my_dag_file.py").write_text(textwrap.dedent("""
        from distributed import get_client

        def helper(x):
            return x + 100

        def payload():
            return get_client().submit(helper, 1).result()
    """))
    spec_ = importlib.util.spec_from_file_location("unusual_prefix_1234_my_dag_file",
                                                   tmp_path / "my_dag_file.py")
    module = importlib.util.module_from_spec(spec_)
    sys.modules[spec_.name] = module
    spec_.loader.exec_module(module)
    try:
        assert run_job(spec(records, module.payload)).value == 101
    finally:
        del sys.modules[spec_.name]
