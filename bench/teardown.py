"""Teardown of a cancelled run: workers busy in tasks vs. idle workers.

Both runs use the local backend (2 worker processes, 1 thread each) and are cancelled
(as SIGTERM or Airflow's on_kill do) once their payload is under way: one while both
workers are inside a 300 s task, the other while its payload waits in the driver and
the workers are idle. Runs alternate in one process so machine noise hits both alike.
Prints the median time from cancel() to the run's end, the teardown phase the record
measured, and the busy/idle ratio. Airflow sends SIGKILL 5 s after its SIGTERM, so a
busy run must end well within that.

    .venv/bin/python bench/teardown.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import daskjob
from daskjob import ClusterSpec, JobFailed, JobRun, JobSpec


def busy(client):
    futures = client.map(time.sleep, [300] * 2, pure=False)
    daskjob.event("bench.started")
    return client.gather(futures)


def idle(client):
    daskjob.event("bench.started")
    time.sleep(300)


def cancelled_run(payload, record_dir: str) -> tuple[float, float]:
    """(seconds from cancel() to the end of run(), the record's teardown phase)."""
    started = threading.Event()
    run = JobRun(JobSpec(name=f"teardown-{payload.__name__}", payload=payload,
                         record_dir=record_dir, performance_report=False,
                         cluster=ClusterSpec(n_workers=2, threads_per_worker=1)),
                 on_event=lambda e: started.set() if e["topic"] == "bench.started" else None)
    cancelled_at: list[float] = []

    def cancel_once_started():
        started.wait(120)
        if payload is busy:
            time.sleep(0.5)  # let both tasks reach their worker threads
        cancelled_at.append(time.perf_counter())
        run.cancel("bench")

    threading.Thread(target=cancel_once_started, daemon=True).start()
    try:
        run.run()
        raise RuntimeError("the run was meant to be cancelled")
    except JobFailed as e:
        assert e.status == "cancelled", e.status
        return time.perf_counter() - cancelled_at[0], e.record["phases"]["teardown"]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"idle": [], "busy": []}
    with tempfile.TemporaryDirectory() as records:
        cancelled_run(idle, records)  # warm imports
        for i in range(args.repeat):
            order = (idle, busy) if i % 2 == 0 else (busy, idle)
            for payload in order:
                results[payload.__name__].append(cancelled_run(payload, records))
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
           for k, v in results.items()}
    for name in ("idle", "busy"):
        print(f"{name:>5} workers: cancel -> run ended {med[name][0]:.2f}s "
              f"(teardown phase {med[name][1]:.2f}s), median of {args.repeat}")
    print(f"busy/idle: {med['busy'][0] / med['idle'][0]:.2f}x")


if __name__ == "__main__":
    main()
