"""Lifecycle overhead: run_job with a no-op payload vs. a raw LocalCluster + Client + close.

Both use the same settings (2 worker processes, 1 thread each, loopback, dashboard on
a free port); runs alternate in one process so machine noise hits both alike. Prints
the median wall times and their ratio.

    .venv/bin/python bench/overhead.py [--repeat 7] [--report]
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


def daskjob_run(n_workers: int, record_dir: str, report: bool) -> float:
    spec = JobSpec(name="overhead", payload=noop, record_dir=record_dir,
                   performance_report=report, forward_logs=True,
                   cluster=ClusterSpec(n_workers=n_workers, threads_per_worker=1))
    t = time.perf_counter()
    run_job(spec)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="also render the performance report")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as records:
        raw(args.workers)  # warm imports for both sides
        raws, ours = [], []
        for i in range(args.repeat):
            if i % 2:
                ours.append(daskjob_run(args.workers, records, args.report))
                raws.append(raw(args.workers))
            else:
                raws.append(raw(args.workers))
                ours.append(daskjob_run(args.workers, records, args.report))
    r, o = statistics.median(raws), statistics.median(ours)
    print(f"raw LocalCluster+Client+close  median {r:.3f}s  (min {min(raws):.3f}, max {max(raws):.3f})")
    print(f"daskjob run_job (no-op payload) median {o:.3f}s  (min {min(ours):.3f}, max {max(ours):.3f})")
    print(f"ratio daskjob/raw = {o / r:.3f}  (goal <= 1.05; performance report {'on' if args.report else 'off'})")


if __name__ == "__main__":
    main()
