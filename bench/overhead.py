"""Cluster start and run overhead: run_job with a no-op payload, with the settings a user
gets by default, against a raw LocalCluster + Client + close with the same settings.

Same settings: N worker processes of 1 thread, loopback, the dashboard on a free port.
Three variants alternate in one process, so machine noise hits all alike:

- raw:            distributed.LocalCluster (spawn) + Client + one task + close
- daskjob default: run_job(JobSpec(payload=noop, cluster=ClusterSpec(n_workers=N)))
- daskjob before:  the same with the defaults before warm start (workers spawned, the
                   performance report on: `worker_start: spawn`, `performance_report: auto`)

Prints the median wall times and the ratios to raw.

    .venv/bin/python bench/overhead.py [--repeat 7] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from distributed import Client, LocalCluster

from daskjob import ClusterSpec, JobSpec, run_job


def noop(client):
    return client.submit(lambda: 1).result()


def raw(n_workers: int) -> float:
    t = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", scheduler_port=0,
                      dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            noop(client)
    return time.perf_counter() - t


def daskjob_run(n_workers: int, record_dir: str, before: bool) -> float:
    cluster = ClusterSpec(n_workers=n_workers, threads_per_worker=1,
                          options={"worker_start": "spawn"} if before else {})
    extra = {"performance_report": "auto"} if before else {}
    spec = JobSpec(name="overhead", payload=noop, record_dir=record_dir, cluster=cluster, **extra)
    t = time.perf_counter()
    result = run_job(spec)
    took = time.perf_counter() - t
    assert result.record["status"] == "succeeded", result.record.get("error")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    variants = {
        "raw LocalCluster+Client+close": lambda d: raw(args.workers),
        "daskjob run_job, defaults": lambda d: daskjob_run(args.workers, d, before=False),
        "daskjob run_job, before": lambda d: daskjob_run(args.workers, d, before=True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as records:
        raw(args.workers)  # warm imports for every variant
        order = list(variants)
        for i in range(args.repeat):
            for name in order[i % len(order):] + order[:i % len(order)]:
                times[name].append(variants[name](records))
    base = statistics.median(times["raw LocalCluster+Client+close"])
    print(f"{args.workers} workers, {args.repeat} runs each, no-op payload:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:<32} median {m:6.3f}s  (min {min(ts):.3f}, max {max(ts):.3f})"
              f"  ratio to raw {m / base:.2f}")


if __name__ == "__main__":
    main()
