"""`daskjob run / show / reap` as real processes: signals, a killed driver, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import REPO, only_run, wait_for_event

pytestmark = pytest.mark.usefixtures("no_leaks")

DASKJOB = [sys.executable, "-m", "daskjob"]
ENV = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests"), "COLUMNS": "200"}


def job_file(tmp_path, records, payload, params=None, name="cli", **extra):
    data = {"name": name, "payload": payload, "params": params or {}, "record_dir": str(records),
            "performance_report": False, "startup_timeout": "60s",
            "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB"},
            **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_run_succeeds_and_show_summarises(tmp_path, records):
    job = job_file(tmp_path, records, "jobs:add_up", {"n": 3})
    proc = subprocess.run(DASKJOB + ["run", str(job), "--param", "n=5"], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run(records)
    assert f"record: {run_dir}" in proc.stderr
    assert "20" in proc.stdout  # sum of 2*i for i < 5
    listing = subprocess.run(DASKJOB + ["show", str(records)], env=ENV, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0
    assert os.path.basename(run_dir) in listing.stdout and "succeeded" in listing.stdout
    show = subprocess.run(DASKJOB + ["show", run_dir], env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert show.returncode == 0
    assert "succeeded" in show.stdout and "phase payload" in show.stdout


def test_workers_do_not_rerun_a_console_script(tmp_path, records):
    # `daskjob`, like `pyflyte` or `airflow`, is a console script: spawned workers would
    # re-run it (importing the whole tool) before starting
    script = os.path.join(os.path.dirname(sys.executable), "daskjob")
    job = job_file(tmp_path, records, "jobs:workers_main_file")
    proc = subprocess.run([script, "run", str(job)], env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    rec = json.load(open(os.path.join(only_run(records), "record.json")))
    assert rec["result"]["value"] == ["None"], rec["result"]


def test_failing_payload_exits_1(tmp_path, records):
    job = job_file(tmp_path, records, "jobs:raises_on_worker")
    proc = subprocess.run(DASKJOB + ["run", str(job)], env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 1
    assert "boom-from-worker 7" in proc.stderr
    rec = json.load(open(os.path.join(only_run(records), "record.json")))
    assert rec["status"] == "failed"


def test_invalid_job_file_exits_2_and_starts_nothing(tmp_path, records):
    job = job_file(tmp_path, records, "jobs:add_up", {"n": 3}, cluster={"n_workers": -1})
    proc = subprocess.run(DASKJOB + ["run", str(job)], env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "n_workers" in proc.stderr
    rec = json.load(open(os.path.join(only_run(records), "record.json")))
    assert rec["status"] == "startup_failed"


def test_sigterm_tears_down(tmp_path, records):
    job = job_file(tmp_path, records, "jobs:sleeps", {"seconds": 300})
    proc = subprocess.Popen(DASKJOB + ["run", str(job)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_dir = wait_for_event(records, "payload started")
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert took < 15, f"SIGTERM took {took:.1f}s to end the run"
    rec = json.load(open(os.path.join(run_dir, "record.json")))
    assert rec["status"] == "cancelled"
    assert "SIGTERM" in rec["error"]["message"]
    assert rec["teardown"]["cluster"] == "closed"
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive


@pytest.mark.xdist_group("reaper")  # `daskjob reap` stops every orphan on the machine
def test_sigkill_driver_leaves_nothing_for_long(tmp_path, records):
    """Workers notice a SIGKILLed driver by themselves; `reap` stops the orphaned grandchild."""
    job = job_file(tmp_path, records, "jobs:grandchild_then_sleep", {"seconds": 300})
    proc = subprocess.Popen(DASKJOB + ["run", str(job)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        run_dir = wait_for_event(records, "test.grandchild")
        events = [json.loads(line) for line in open(os.path.join(run_dir, "events.jsonl"))]
        grandchild = next(e["data"]["pid"] for e in events if e["topic"] == "test.grandchild")
        family = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.pid != grandchild]
        assert len(family) >= 2
        proc.kill()
        proc.wait()
        t = time.monotonic()
        _, alive = psutil.wait_procs(family, timeout=10)
        gone_after = time.monotonic() - t
        assert not alive, f"still running 10s after the driver was killed: {alive}"
        print(f"workers gone {gone_after:.2f}s after the driver was SIGKILLed")
        rec = json.load(open(os.path.join(run_dir, "record.json")))
        assert rec["status"] == "running"  # the driver never got to write an end
        show = subprocess.run(DASKJOB + ["show", run_dir], env=ENV, capture_output=True, text=True)
        assert "driver was killed" in show.stdout and "abandoned" in show.stdout
        listing = subprocess.run(DASKJOB + ["show", str(records), "--status", "abandoned"],
                                 env=ENV, capture_output=True, text=True)
        assert rec["run_id"] in listing.stdout and "abandoned" in listing.stdout

        # the task's own subprocess outlives its worker: the reaper finds it by its labels.
        # (A worker that closed cleanly on its parent's death stopped it already: then
        # there is nothing left, which is the point; it is a zombie of PID 1 at most.)
        if _stopped(grandchild):
            return
        dry = subprocess.run(DASKJOB + ["reap", "--dry-run"], env=ENV, capture_output=True, text=True)
        assert str(grandchild) in dry.stdout and rec["run_id"] in dry.stdout.replace("\n", "")
        assert psutil.pid_exists(grandchild)
        # it ignores SIGTERM: the reaper's SIGKILL after the grace period is what ends it
        reap = subprocess.run(DASKJOB + ["reap"], env=ENV, capture_output=True, text=True)
        assert reap.returncode == 0 and "stopped 1" in reap.stdout, \
            (reap.stdout, reap.stderr, f"grandchild {grandchild}: {_state(grandchild)}")
        assert _stopped(grandchild)
    finally:
        if proc.poll() is None:
            proc.kill()


def _state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.xdist_group("reaper")  # `daskjob reap` stops every orphan on the machine
def test_reap_older_than_spares_young_orphans(tmp_path):
    env = {**os.environ, "DASKJOB_RUN_ID": "orphan-test", "DASKJOB_DRIVER_PID": "999999999",
           "DASKJOB_DRIVER_START": "0", "DASKJOB_STARTED": repr(time.time())}
    sleeper = subprocess.Popen(["sleep", "300"], env=env)
    try:
        out = subprocess.run(DASKJOB + ["reap", "--older-than", "1h", "--dry-run"], env=ENV,
                             capture_output=True, text=True).stdout
        assert str(sleeper.pid) not in out
        out = subprocess.run(DASKJOB + ["reap", "--dry-run"], env=ENV, capture_output=True, text=True).stdout
        assert str(sleeper.pid) in out
        subprocess.run(DASKJOB + ["reap"], env=ENV, capture_output=True, text=True, check=True)
        assert sleeper.wait(10) is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_runs_at_once_in_two_processes(tmp_path, records):
    jobs = [job_file(tmp_path, records, "jobs:add_up", {"n": n}, name=f"p{n}") for n in (4, 6)]
    procs = [subprocess.Popen(DASKJOB + ["run", str(j), "-q"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for j in jobs]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    recs = [json.load(open(os.path.join(records, r, "record.json"))) for r in os.listdir(records)]
    assert sorted(r["result"]["value"] for r in recs) == [12, 30]
    assert len({r["scheduler_address"] for r in recs}) == 2


def test_script_payload_runs_like_a_daskjob_runner(tmp_path, records):
    helper = tmp_path / "helper_mod.py"
    helper.write_text("def square(x):\n    return x * x\n")
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent("""
        import argparse, json, os
        from distributed import Client
        import daskjob
        from helper_mod import square      # a module next to the script, not installed

        ap = argparse.ArgumentParser()
        ap.add_argument("--n", type=int)
        n = ap.parse_args().n
        client = Client()                  # DASK_SCHEDULER_ADDRESS, as in a runner pod
        total = sum(client.gather(client.map(square, range(n))))
        daskjob.event("script.done", total=total)
        print("script says", total)
        with open(os.environ["DASKJOB_RESULT_FILE"], "w") as f:
            json.dump({"total": total}, f)
    """))
    job = job_file(tmp_path, records, "runner.py", {"n": 4})
    proc = subprocess.run(DASKJOB + ["run", str(job)], env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(records)
    rec = json.load(open(os.path.join(run_dir, "record.json")))
    assert rec["result"]["value"] == {"total": 14}
    assert "script says 14" in open(os.path.join(run_dir, "logs", "script.log")).read()
    assert "script.done" in open(os.path.join(run_dir, "events.jsonl")).read()


def test_payload_in_a_file_next_to_the_callers_script(tmp_path, records):
    """Plain `python myflow.py` with the payload in a sibling file that workers never saw."""
    (tmp_path / "sibling_tasks.py").write_text(textwrap.dedent("""
        from distributed import get_client

        def cube(x):
            return x ** 3

        def total(n):
            c = get_client()
            return sum(c.gather(c.map(cube, range(n))))
    """))
    (tmp_path / "myflow.py").write_text(textwrap.dedent(f"""
        from daskjob import JobSpec, run_job
        from sibling_tasks import total

        if __name__ == "__main__":
            r = run_job(JobSpec(name="sib", payload=total, params={{"n": 4}},
                                record_dir={str(records)!r}, performance_report=False))
            print("RESULT", r.value)
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "myflow.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT 36" in proc.stdout


def _show(*args: str) -> str:
    env = {k: v for k, v in ENV.items() if k != "COLUMNS"}  # piped, as in a script or a file
    proc = subprocess.run(DASKJOB + ["show", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_show_lists_and_finds_runs(tmp_path, records):
    for job in (job_file(tmp_path, records, "jobs:add_up", {"n": 3}, name="nightly-sum"),
                job_file(tmp_path, records, "jobs:raises_on_worker", name="nightly-boom")):
        subprocess.run(DASKJOB + ["run", str(job), "-q"], env=ENV, capture_output=True,
                       timeout=180)
    runs = [json.load(open(os.path.join(records, r, "record.json"))) for r in os.listdir(records)]
    ok = next(r for r in runs if r["status"] == "succeeded")
    boom = next(r for r in runs if r["status"] == "failed")

    listing = _show(str(records))
    lines = listing.splitlines()
    assert [i for i, line in enumerate(lines) if boom["run_id"] in line] < \
        [i for i, line in enumerate(lines) if ok["run_id"] in line]  # newest first, one line each
    assert "boom-from-worker" in listing  # the error's first line
    failed = _show(str(records), "--status", "failed")
    assert boom["run_id"] in failed and ok["run_id"] not in failed
    assert ok["run_id"] in _show(str(records), "--name", "nightly-sum")
    assert len([ln for ln in _show(str(records), "--limit", "1").splitlines() if "nightly-" in ln]) == 1
    as_json = json.loads(_show(str(records), "--json"))
    assert [r["run_id"] for r in as_json] == [boom["run_id"], ok["run_id"]]

    # one run, by its id: from the record dir it is in
    one = _show(ok["run_id"], "--record-dir", str(records))
    assert "phase payload" in one and "succeeded" in one
    assert "dashboard" not in one  # the run is over: its dashboard is gone
    events = one[one.index("events"):].splitlines()[0]
    assert "stealing" not in events and "Client-" not in events
    proc = subprocess.run(DASKJOB + ["show", "no-such-run"], env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no run 'no-such-run'" in proc.stdout


def test_a_script_without_a_main_guard_runs_once_and_is_told(tmp_path, records):
    """The README's first example saved without `if __name__ == "__main__":`. Worker
    processes start with spawn, which imports the main script again in each of them."""
    (tmp_path / "unguarded.py").write_text(textwrap.dedent(f"""
        from daskjob import JobSpec, run_job

        def total(n, client):
            return sum(client.gather(client.map(abs, range(n))))

        result = run_job(JobSpec(name="unguarded", payload=total, params={{"n": 5}},
                                 record_dir={str(records)!r}, performance_report=False))
        print("RESULT", result.value)
    """))
    proc = subprocess.run([sys.executable, "unguarded.py"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RESULT 10") == 1
    assert proc.stderr.count('if __name__ == "__main__":') == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    rec = json.load(open(os.path.join(only_run(records), "record.json")))  # one run only
    assert rec["status"] == "succeeded"


def test_a_run_started_by_a_bootstrapping_child_process_is_refused(tmp_path, records):
    """A process pool of the script's own, started with spawn, imports the unguarded script
    again: the run it would start there is refused with the advice, nothing starts."""
    (tmp_path / "pool.py").write_text(textwrap.dedent(f"""
        import multiprocessing
        from daskjob import JobSpec, run_job

        def total(n, client):
            return n

        print("starting", multiprocessing.current_process().name, flush=True)
        if multiprocessing.current_process().name != "MainProcess":
            run_job(JobSpec(name="child", payload=total, params={{"n": 1}},
                            record_dir={str(records)!r}))

        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=print)
            p.start()
            p.join()
            print("child exit code", p.exitcode)
    """))
    proc = subprocess.run([sys.executable, "pool.py"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert "child exit code 1" in proc.stdout, proc.stdout + proc.stderr
    assert "nothing was started" in proc.stderr and '__name__ == "__main__"' in proc.stderr
    assert os.listdir(records) == []
