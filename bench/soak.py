"""Fault soak: many `daskjob run` processes on the local backend, a few at a time, each
with a fault drawn at random, then a look for anything left behind.

Faults: none; the payload raises on a worker; the payload runs past its timeout; SIGTERM
to the driver mid-payload; SIGKILL of the driver mid-payload, then `daskjob reap`;
SIGKILL of the worker running the payload's task; a payload whose task cannot be
imported on the workers. Afterwards every record must be in the state its fault calls
for (a SIGKILLed driver's record says `running`, which `daskjob show` calls
`abandoned`), hold its events and logs, and no process of any run, nor a port one
listened on, may be left.

    .venv/bin/python bench/soak.py [--runs 100] [--parallel 4] [--seed 0]

Not a test (minutes long): it prints its figures; bench/RESULTS.md keeps them.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from daskjob.procs import labelled_processes  # noqa: E402
from daskjob.show import seen_status  # noqa: E402

# fault: (payload, params, timeout, expected status)
FAULTS = {
    "none": ("soak_jobs:fine", {}, "2m", "succeeded"),
    "raises": ("soak_jobs:raises_on_worker", {}, "2m", "failed"),
    "timeout": ("soak_jobs:sleeps", {"seconds": 120}, "3s", "timed_out"),
    "sigterm": ("soak_jobs:sleeps", {"seconds": 120}, "2m", "cancelled"),
    "sigkill_driver": ("soak_jobs:grandchild_then_sleeps", {"seconds": 120}, "2m", "abandoned"),
    "kill_worker": ("soak_jobs:survives_a_worker_kill", {}, "2m", "succeeded"),
    "unimportable": ("soak_jobs:unimportable_on_workers", {}, "2m", "failed"),
}
DAKJOB = [sys.executable, "-m", "daskjob"]


def job_file(folder: str, i: int, fault: str, records: str) -> tuple[str, str]:
    payload, params, timeout, _ = FAULTS[fault]
    marker = os.path.join(folder, f"marker-{i}.json")
    if fault == "kill_worker":
        params = {**params, "marker": marker}
    spec = {"name": f"soak-{i:03d}-{fault}", "payload": payload, "params": params,
            "timeout": timeout, "startup_timeout": "3m", "record_dir": records,
            "performance_report": False,
            "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB"}}
    path = os.path.join(folder, f"job-{i:03d}.yaml")
    with open(path, "w") as f:
        json.dump(spec, f)  # JSON is YAML
    return path, marker


def run_dir_of(records: str, name: str) -> str | None:
    for run in os.listdir(records):
        if run.startswith(name + "-"):
            return os.path.join(records, run)
    return None


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def payload_started(records: str, name: str) -> bool:
    run = run_dir_of(records, name)
    path = os.path.join(run, "events.jsonl") if run else ""
    return bool(path) and os.path.exists(path) and '"payload started"' in open(path).read()


def one_run(i: int, fault: str, folder: str, records: str) -> dict:
    job, marker = job_file(folder, i, fault, records)
    name = f"soak-{i:03d}-{fault}"
    env = {**os.environ, "PYTHONPATH": HERE}
    t0 = time.monotonic()
    proc = subprocess.Popen(DAKJOB + ["run", job, "-q"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        act(fault, proc, records, name, marker)
        proc.wait(240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if fault == "sigkill_driver":
        subprocess.run(DAKJOB + ["reap"], env=env, capture_output=True, timeout=120)
    return {"i": i, "fault": fault, "name": name, "seconds": time.monotonic() - t0,
            "exit": proc.returncode}


def act(fault: str, proc: subprocess.Popen, records: str, name: str, marker: str) -> None:
    """Do the fault to the running job, from outside."""
    if fault in ("sigterm", "sigkill_driver"):
        if wait_for(lambda: payload_started(records, name), 180, proc):
            time.sleep(1.0)  # the payload's task is running on a worker
            proc.send_signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
    elif fault == "kill_worker":
        if wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker), 180, proc):
            with open(marker) as f:
                pid = json.load(f)["pid"]
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def check(result: dict, records: str) -> list[str]:
    """What is wrong with the run's record, given its fault."""
    run = run_dir_of(records, result["name"])
    if run is None:
        return ["no record folder"]
    with open(os.path.join(run, "record.json")) as f:
        record = json.load(f)
    result["run_id"] = record["run_id"]
    problems = []
    expected = FAULTS[result["fault"]][3]
    if seen_status(record) != expected:
        problems.append(f"status {seen_status(record)}, expected {expected}: "
                        f"{(record.get('error') or {}).get('message', '')[:200]}")
    events = open(os.path.join(run, "events.jsonl")).read()
    if '"run started"' not in events:
        problems.append("events.jsonl lacks the run's start")
    if expected != "abandoned" and '"run finished"' not in events:
        problems.append("events.jsonl lacks the run's end")
    logs = os.listdir(os.path.join(run, "logs"))
    if not any(n.startswith("worker-") for n in logs):
        problems.append(f"no worker log in logs/: {logs}")
    if result["fault"] == "kill_worker" and not record.get("worker_deaths"):
        problems.append("the killed worker is not among the record's worker deaths")
    return problems


def leftovers(run_ids: set[str]) -> dict[str, list]:
    """Processes of the soak's runs still here, and their listening ports."""
    procs = [p for p, env in labelled_processes() if env.get("DASKJOB_RUN_ID") in run_ids]
    procs += [p for p in psutil.Process().children(recursive=True) if p.is_running()]
    ports = []
    for p in procs:
        try:
            ports += [c.laddr for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return {"processes": [(p.pid, " ".join(p.cmdline())[:80]) for p in procs
                          if p.is_running()], "ports": ports}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    faults = [rng.choice(list(FAULTS)) for _ in range(args.runs)]
    folder = tempfile.mkdtemp(prefix="daskjob-soak-")
    records = os.path.join(folder, "runs")
    os.makedirs(records)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda a: one_run(a[0], a[1], folder, records), enumerate(faults)))
    wall = time.monotonic() - t0
    problems = {r["name"]: check(r, records) for r in results}
    time.sleep(5)  # what a run's teardown stops gets a moment to be gone
    left = leftovers({r["run_id"] for r in results if "run_id" in r})
    report(results, problems, left, wall, args, records)
    return 0 if not any(problems.values()) and not any(left.values()) else 1


def report(results, problems, left, wall, args, records) -> None:
    by_fault = collections.defaultdict(list)
    for r in results:
        by_fault[r["fault"]].append(r)
    print(f"{len(results)} runs, {args.parallel} at a time, seed {args.seed}: {wall:.0f} s "
          f"(records in {records})")
    print(f"{'fault':<16}{'runs':>6}{'as expected':>13}{'median s':>10}   expected")
    for fault, rs in sorted(by_fault.items()):
        ok = sum(1 for r in rs if not problems[r["name"]])
        print(f"{fault:<16}{len(rs):>6}{ok:>13}{statistics.median(r['seconds'] for r in rs):>10.1f}"
              f"   {FAULTS[fault][3]}")
    bad = {name: p for name, p in problems.items() if p}
    print(f"records not as expected: {len(bad)}")
    for name, p in sorted(bad.items()):
        print(f"  {name}: {'; '.join(p)}")
    print(f"left behind: {len(left['processes'])} processes, {len(left['ports'])} listening ports")
    for pid, cmd in left["processes"]:
        print(f"  pid {pid}: {cmd}")


if __name__ == "__main__":
    sys.exit(main())
