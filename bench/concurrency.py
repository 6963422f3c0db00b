"""Whole `daskjob run` processes: one at a time, and N at once, with today's defaults
against the defaults before warm start (workers spawned, performance report on), and
today's defaults without the dashboard (the largest cost left in a short run: bokeh).

Each process runs a trivial job (2 workers, one small task) on the local backend. The
variants alternate in one run of this script. After each batch, no process of any run
may be left (checked by the run labels every process carries, and by this process's
children). Prints the median wall time of a single run, the wall time of N at once,
and the ratios.

    .venv/bin/python bench/concurrency.py [--concurrent 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from daskjob.procs import labelled_processes

JOB = """\
name: trivial
payload: trivial_job:add
record_dir: {records}
cluster:
  n_workers: 2
  dashboard: {dashboard}
  options: {options}
"""
VARIANTS = {
    "defaults": {"options": "{}", "env": {}, "dashboard": "true"},
    "before": {"options": "{worker_start: spawn}", "dashboard": "true",
               "env": {"DASKJOB__PERFORMANCE_REPORT": "auto"}},
    "no dashboard": {"options": "{}", "env": {}, "dashboard": "false"},
}


def write_jobs(work: str) -> dict[str, str]:
    with open(os.path.join(work, "trivial_job.py"), "w") as f:
        f.write("def add(client):\n    return client.submit(sum, [1, 2]).result()\n")
    paths = {}
    for name, variant in VARIANTS.items():
        paths[name] = os.path.join(work, f"{name.replace(' ', '-')}.yaml")
        with open(paths[name], "w") as f:
            f.write(JOB.format(records=os.path.join(work, "runs"), options=variant["options"],
                               dashboard=variant["dashboard"]))
    return paths


def run_many(job: str, variant: str, n: int, work: str) -> float:
    env = {**os.environ, **VARIANTS[variant]["env"], "PYTHONPATH": work}
    daskjob = os.path.join(os.path.dirname(sys.executable), "daskjob")
    t = time.perf_counter()
    procs = [subprocess.Popen([daskjob, "run", job], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(n)]
    failed = [p.stderr.read().decode()[-2000:] for p in procs if p.wait() != 0]
    took = time.perf_counter() - t
    if failed:
        raise SystemExit(f"{len(failed)} of {n} runs failed:\n{failed[0]}")
    drivers = {str(p.pid) for p in procs}  # processes of other daskjob runs are not ours
    left = [p for p, env in labelled_processes() if env.get("DASKJOB_DRIVER_PID") in drivers]
    left += psutil.Process().children(recursive=True)
    if left:
        raise SystemExit(f"left after the runs: {[p.pid for p in left]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="daskjob-bench-concurrency-")
    try:
        jobs = write_jobs(work)
        single: dict[str, list[float]] = {v: [] for v in VARIANTS}
        many: dict[str, list[float]] = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for i in range(args.repeat):
            for variant in order[i % len(order):] + order[:i % len(order)]:
                single[variant].append(run_many(jobs[variant], variant, 1, work))
                many[variant].append(run_many(jobs[variant], variant, args.concurrent, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"`daskjob run` of a trivial job (2 workers), {args.repeat} rounds, median; "
          "0 processes left after every batch:")
    for label, table in (("1 run", single), (f"{args.concurrent} at once", many)):
        before = statistics.median(table["before"])
        now = statistics.median(table["defaults"])
        bare = statistics.median(table["no dashboard"])
        print(f"  {label:<12} before {before:6.2f}s   defaults {now:6.2f}s (ratio {now / before:.2f})"
              f"   defaults, no dashboard {bare:6.2f}s (ratio {bare / before:.2f})")


if __name__ == "__main__":
    main()
