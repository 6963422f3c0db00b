"""The `jobqueue` backend on a real one-node Slurm (scripts/services/slurm.sh): workers
are Slurm jobs, the scheduler runs in the driver, TLS by default.

Other schedulers (PBS, SGE, LSF, HTCondor, Moab, OAR) cannot run here: their names and
options are validated, and create() is checked to build the right dask-jobqueue class
(its job script), but no job of theirs is ever submitted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daskjob import ClusterSpec, JobFailed, JobSpec, StartupFailed, run_job
from daskjob.backends import ClusterContext, get_backend
from daskjob.datasets import write_drop
from daskjob.errors import SpecError

from conftest import REPO, wait_for_event
from services import service

pytestmark = pytest.mark.usefixtures("no_leaks")

DATE = "2026-11-20"
DASKJOB = [sys.executable, "-m", "daskjob"]
CLEAN_WITHIN = 15.0  # seconds after a run ends (or its driver is killed) until no job is left


@pytest.fixture(scope="module")
def slurm_settings():
    return service("slurm")


@pytest.fixture
def slurm(slurm_settings, monkeypatch):
    """Slurm's commands (in the test, in the backend, in daskjob subprocesses) reach the
    test cluster through SLURM_CONF."""
    monkeypatch.setenv("SLURM_CONF", slurm_settings["SLURM_CONF"])
    return slurm_settings


def squeue(run_id: str | None = None) -> list[dict[str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%k|%T"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    jobs = []
    for line in out.splitlines():
        job, name, comment, state = line.split("|", 3)
        if run_id is None or name == f"daskjob-{run_id}":
            jobs.append({"id": job, "name": name, "comment": comment, "state": state})
    return jobs


def seconds_until_no_jobs(run_id: str, timeout: float = CLEAN_WITHIN) -> float:
    t = time.monotonic()
    while squeue(run_id):
        if time.monotonic() - t > timeout:
            raise AssertionError(f"jobs of {run_id} still queued {timeout:.0f}s later: "
                                 f"{squeue(run_id)}")
        time.sleep(0.2)
    return time.monotonic() - t


def cluster(**kw):
    options = kw.pop("options", {})
    sizes = {"n_workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB", **kw}
    return ClusterSpec(backend="jobqueue", options={"walltime": "00:10:00", **options},
                       **{k: v for k, v in sizes.items() if v is not None})


def etl_spec(records, raw, dest, **params):
    return JobSpec(name="slurm-etl", payload="daskjob.payloads.etl:run",
                   params={"source": str(raw), "dest": str(dest), "date": DATE,
                           "blocksize": "64KB", **params},
                   record_dir=str(records), performance_report=False,
                   startup_timeout="90s", timeout="120s", cluster=cluster())


def lifecycle(run_dir):
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        return [e["data"]["event"] for e in map(json.loads, f)
                if e["topic"] == "daskjob.lifecycle"]


def test_importing_dask_jobqueue_keeps_ctrl_c():
    """dask_jobqueue sets a SIGINT handler that exits when imported; the backend's import
    keeps the driver's, also from a thread other than the main one."""
    code = (
        "import signal, threading\n"
        "from daskjob.backends import jobqueue\n"
        "box = {}\n"
        "t = threading.Thread(target=lambda: box.update(m=jobqueue._import_jobqueue()))\n"
        "t.start(); t.join()\n"
        "assert box['m'].SLURMCluster\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "print('kept')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "kept" in proc.stdout, proc.stderr[-2000:]


def test_etl_on_slurm_jobs_with_tls_then_a_failing_payload(tmp_path, slurm):
    raw, dest = tmp_path / "raw", tmp_path / "wh"
    write_drop(str(raw), DATE, 3000, seed=1, bad_fraction=0.03, rows_per_file=1500)

    # --- success: 2 workers as Slurm jobs, labelled for the reaper, over TLS
    seen: dict[str, list] = {}

    def on_event(record):
        if record["topic"] == "daskjob.lifecycle" and record["data"].get("event") == "payload started":
            seen["jobs"] = squeue()  # the jobs while the payload runs

    ok_records = tmp_path / "ok"
    ok_records.mkdir()
    t = time.monotonic()
    result = run_job(etl_spec(ok_records, raw, dest), on_event=on_event)
    took = time.monotonic() - t
    s = result.value
    assert s["rows_read"] == 3000
    assert s["rows_rejected"] == 90
    assert s["rows_written"] == 2910
    rec = result.record
    run_id = rec["run_id"]
    assert rec["status"] == "succeeded"
    assert rec["scheduler_address"].startswith("tls://127.0.0.1:")
    assert rec["workers"] == {"expected": 2, "started": 2}
    ours = [j for j in seen["jobs"] if j["name"] == f"daskjob-{run_id}"]
    assert len(ours) == 2, seen["jobs"]
    for job in ours:
        assert job["state"] == "RUNNING"
        labels = dict(p.split("=", 1) for p in job["comment"].split(","))
        assert labels["daskjob/run-id"] == run_id
        assert labels["daskjob/driver"].split("_")[1] == str(os.getpid())
        assert abs(float(labels["daskjob/started"]) - time.time()) < 300
    # worker logs forwarded into the record while the jobs ran
    run_dir = rec["record_path"]
    logs = os.listdir(os.path.join(run_dir, "logs"))
    worker_logs = [f for f in logs if f.startswith(f"daskjob-{run_id}-")]
    assert len(worker_logs) == 2, logs
    assert any(os.path.getsize(os.path.join(run_dir, "logs", f)) for f in worker_logs)
    assert "scheduler.log" in logs
    # and each job's own output (sbatch --output), kept by the backend
    for job in ours:
        with open(os.path.join(run_dir, "logs", f"slurm-job-{job['id']}.out")) as f:
            assert "Start worker at" in f.read()
    steps = lifecycle(run_dir)
    assert steps.count("worker joined") == 2 and "teardown done" in steps
    assert rec["teardown"]["cluster"] == "closed"
    gone = seconds_until_no_jobs(run_id)
    # the per-run folder with the workers' TLS key files and job output is removed
    assert not os.path.exists(f"/tmp/daskjob-jobqueue-{run_id}")
    print(f"\nETL run {took:.1f}s (provision {rec['phases']['provision']['seconds']}s, "
          f"workers {rec['phases']['workers']['seconds']}s, teardown "
          f"{rec['phases']['teardown']['seconds']}s); jobs gone {gone:.2f}s after it returned")

    # --- a failing payload (too many rejected rows): run fails, no job left
    bad_records = tmp_path / "bad"
    bad_records.mkdir()
    with pytest.raises(JobFailed) as info:
        run_job(etl_spec(bad_records, raw, tmp_path / "wh2", max_reject_ratio=0.0))
    assert "max_reject_ratio" in str(info.value)
    rec = info.value.record
    assert rec["status"] == "failed" and rec["teardown"]["cluster"] == "closed"
    gone = seconds_until_no_jobs(rec["run_id"])
    print(f"failed run's jobs gone {gone:.2f}s after it returned")


def test_bad_input_fails_clearly_before_or_at_submission(tmp_path, records, slurm):
    # --- spec errors: nothing starts
    with pytest.raises(SpecError, match=r"options\.scheduler: unknown job scheduler 'torque'"):
        JobSpec.parse({"name": "x", "payload": "jobs:add_up",
                       "cluster": {"backend": "jobqueue", "options": {"scheduler": "torque"}}})
    with pytest.raises(SpecError, match=r"partition not accepted .*accepted: .*queue"):
        JobSpec.parse({"name": "x", "payload": "jobs:add_up",
                       "cluster": {"backend": "jobqueue", "options": {"partition": "debug"}}})
    with pytest.raises(SpecError, match="job_cpu not accepted by the jobqueue backend with scheduler 'pbs'"):
        JobSpec.parse({"name": "x", "payload": "jobs:add_up",
                       "cluster": {"backend": "jobqueue",
                                   "options": {"scheduler": "pbs", "job_cpu": 2}}})
    with pytest.raises(SpecError, match="cores set by ClusterSpec fields"):
        JobSpec.parse({"name": "x", "payload": "jobs:add_up",
                       "cluster": {"backend": "jobqueue", "options": {"cores": 4}}})
    with pytest.raises(SpecError, match="--comment=x set by daskjob"):
        JobSpec.parse({"name": "x", "payload": "jobs:add_up",
                       "cluster": {"backend": "jobqueue",
                                   "options": {"job_extra_directives": ["--comment=x"]}}})

    # --- PBS cannot run here, but create() builds a PBSCluster with our settings
    backend = get_backend("jobqueue")
    pbs = ClusterSpec(backend="jobqueue", n_workers=1, memory_per_worker="2GiB",
                      options={"scheduler": "pbs", "queue": "batch", "walltime": "01:00:00"})
    ctx = ClusterContext(run_id="pbs-check", labels={}, worker_env={"DASKJOB_RUN_ID": "pbs check"})
    pbs_handle = backend.create(pbs, ctx)
    pbs_cluster = pbs_handle.cluster
    try:
        assert type(pbs_cluster).__name__ == "PBSCluster"
        script = pbs_cluster.job_script()
        assert "#PBS -q batch" in script and "#PBS -l walltime=01:00:00" in script
        assert "export DASKJOB_RUN_ID='pbs check'" in script
        assert "--protocol tls://" in script and "--death-timeout" in script
    finally:
        backend.close(pbs_handle, timeout=10)
        backend.close(pbs_handle, timeout=10)  # twice is harmless
    assert not os.path.exists("/tmp/daskjob-jobqueue-pbs-check")

    def failing_run(name, **kw):
        spec = JobSpec(name=name, payload="jobs:add_up", params={"n": 2},
                       record_dir=str(records), performance_report=False,
                       startup_timeout="60s", cluster=cluster(n_workers=1, **kw))
        t = time.monotonic()
        with pytest.raises(StartupFailed) as info:
            run_job(spec)
        took = time.monotonic() - t
        rec = info.value.record
        assert rec["status"] == "startup_failed"
        assert rec["teardown"]["cluster"] in ("closed", "not started"), rec["teardown"]
        assert rec["phases"]["teardown"]["seconds"] < 5, rec["phases"]
        assert not squeue(rec["run_id"]) or seconds_until_no_jobs(rec["run_id"]) < CLEAN_WITHIN
        assert took < 30, f"{name}: took {took:.0f}s, must not wait for startup_timeout"
        return str(info.value), rec, took

    # --- a job bigger than the node: refused before anything is submitted
    before = {j["id"] for j in squeue()}
    msg, rec, took = failing_run("too-big", memory_per_worker="20GiB")
    assert "memory_per_worker" in msg and "8192 MiB" in msg and "nothing was submitted" in msg
    assert {j["id"] for j in squeue()} - before == set()

    # --- sbatch refuses the job: its own error message is the reason
    msg, rec, took = failing_run("no-partition", options={"queue": "nosuchpartition"})
    assert "refused the worker jobs" in msg and "invalid partition" in msg.lower(), msg
    print(f"\nsbatch refusal reported in {took:.1f}s")

    # --- the worker cannot start in its job: the job's output says why
    msg, rec, took = failing_run("bad-python", options={"python": "/nonexistent/python3"})
    assert "Slurm worker job(s) ended" in msg and "/nonexistent/python3" in msg, msg
    outputs = [f for f in rec["logs"]["files"] if f.startswith("slurm-job-")]
    assert len(outputs) == 1, rec["logs"]
    with open(os.path.join(rec["record_path"], "logs", outputs[0])) as f:
        assert "/nonexistent/python3: No such file or directory" in f.read()
    print(f"worker that cannot start reported in {took:.1f}s")

    # --- a job that cannot start yet (the node has room for one 5 GiB worker, not two):
    # no verdict until startup_timeout, and then Slurm's own word for the pending job
    spec = JobSpec(name="pending", payload="jobs:add_up", params={"n": 2},
                   record_dir=str(records), performance_report=False, startup_timeout="12s",
                   cluster=cluster(n_workers=2, memory_per_worker="5GiB"))
    with pytest.raises(StartupFailed) as info:
        run_job(spec)
    msg = str(info.value)
    assert "workers arrived within startup_timeout" in msg and "Slurm says: job " in msg, msg
    assert "PENDING" in msg, msg
    assert seconds_until_no_jobs(info.value.record["run_id"]) < CLEAN_WITHIN
    print("pending job: " + msg.split("Slurm says: ", 1)[1].split(";", 1)[0])


def _job_file(tmp_path, records):
    data = {"name": "slurm-kill", "payload": "jobs:sleeps", "params": {"seconds": 300},
            "record_dir": str(records), "performance_report": False,
            "startup_timeout": "90s",
            "cluster": {"backend": "jobqueue", "n_workers": 2, "threads_per_worker": 1,
                        "memory_per_worker": "1GiB", "worker_death_timeout": "10s",
                        "options": {"walltime": "00:10:00"}}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.xdist_group("reaper")  # `daskjob reap` stops every orphan on the machine
def test_sigkilled_driver_reap_stops_its_jobs(tmp_path, records, slurm):
    job = _job_file(tmp_path, records)
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests"), "COLUMNS": "250"}
    proc = subprocess.Popen(DASKJOB + ["run", str(job)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        run_dir = wait_for_event(records, "payload started", timeout=120, proc=proc)
        run_id = os.path.basename(run_dir)
        jobs = squeue(run_id)
        assert len(jobs) == 2 and all(j["state"] == "RUNNING" for j in jobs), jobs
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()

        dry = subprocess.run(DASKJOB + ["reap", "--backend", "jobqueue", "--job", str(job),
                                        "--dry-run"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert dry.returncode == 0, dry.stderr
        listed = dry.stdout.replace("\n", " ")
        # a task blocked in sleep keeps each worker process (and so its job) alive for
        # a while after the scheduler is gone: the reaper is what ends them promptly
        still = {j["id"] for j in squeue(run_id)}
        assert still, "the jobs ended by themselves before the reaper looked"
        assert "jobqueue: clusters left behind by killed runs" in listed, dry.stdout
        for job_id in still:
            assert f"Slurm job {job_id}" in listed, dry.stdout
        assert squeue(run_id), "--dry-run must not stop anything"

        reaping = time.monotonic()
        reap = subprocess.run(DASKJOB + ["reap", "--backend", "jobqueue", "--job", str(job)],
                              env=env, capture_output=True, text=True, timeout=60)
        assert reap.returncode == 0, reap.stdout + reap.stderr
        out = reap.stdout.replace("\n", " ")
        for job_id in still:
            assert f"stopped jobqueue {job_id} (run {run_id})" in out, reap.stdout
        # (the dry run before it is a person looking first: its CLI start is not counted)
        gone = seconds_until_no_jobs(run_id, timeout=CLEAN_WITHIN - (time.monotonic() - reaping))
        total = time.monotonic() - killed
        assert not os.path.exists(f"/tmp/daskjob-jobqueue-{run_id}")  # TLS keys removed
        rec = json.load(open(os.path.join(run_dir, "record.json")))
        assert rec["status"] == "running"  # the driver never wrote its end
        print(f"\nSIGKILLed driver: jobs gone {total:.1f}s after the kill, "
              f"{time.monotonic() - reaping:.1f}s after `reap` started "
              f"({gone:.1f}s after it returned)")
        again = subprocess.run(DASKJOB + ["reap", "--backend", "jobqueue", "--job", str(job),
                                          "--dry-run"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert run_id not in again.stdout.replace("\n", "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for j in squeue():
            if j["name"].startswith("daskjob-slurm-kill-"):
                subprocess.run(["scancel", j["id"]], timeout=30)


def test_adapt_submits_more_worker_jobs_under_load_and_none_are_left(tmp_path, records, slurm):
    """`adapt` on Slurm: Dask's Adaptive asks for worker jobs while tasks queue and
    cancels them when idle; whatever it submitted is gone after the run."""
    spec = JobSpec(name="slurm-adapt", payload="group_jobs:queue_then_idle",
                   params={"n": 20, "seconds": 1.0, "idle": 1}, record_dir=str(records),
                   performance_report=False, startup_timeout="90s", timeout="300s",
                   cluster=cluster(n_workers=None, adapt={"minimum": 1, "maximum": 3,
                                                          "interval": "500ms"}))
    result = run_job(spec)
    rec = result.record
    assert rec["groups"]["default"]["expected"] == 1
    assert rec["groups"]["default"]["peak"] >= 2, rec["groups"]
    assert len(result.value) >= 2  # tasks ran on more than the first worker job
    assert "scaled up" in lifecycle(rec["record_path"])
    seconds_until_no_jobs(rec["run_id"])
