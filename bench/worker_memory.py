"""Worker memory over a long streaming ETL: dask's profiler on (its defaults) vs. off.

Runs the ETL payload through `run_job` on one worker, twice per repeat, alternating:
with dask's profiler as dask ships it (every 10ms), with daskjob's profiler setting when
a run writes a performance report (every 100ms), and with the profiler off (daskjob's
default when no report is written). A thread samples the worker process's RSS every
second; prints the median growth from the first sample after warm-up to the peak, and
the ratios against the profiler-off run.

    .venv/bin/python bench/worker_memory.py [--copies 12] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time

import dask.config
import psutil

from daskjob import ClusterSpec, JobSpec, run_job
from daskjob.datasets import write_drop

DATE = "2026-11-20"
VARIANTS = {
    "profiler off (daskjob default)": {"daskjob.worker-profile": False},
    "profiler every 100ms (daskjob, with a report)": {"daskjob.worker-profile": True,
                                                      "daskjob.worker-profile-interval": "100ms"},
    "profiler every 10ms (dask default)": {"daskjob.worker-profile": True,
                                           "daskjob.worker-profile-interval": "10ms"},
}


class RssSampler(threading.Thread):
    """Largest child process of this one (the worker), sampled every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.wait(1.0):
            rss = []
            for p in me.children(recursive=True):
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            if rss and max(rss) > 150 * 2**20:  # the worker, once it has imported pandas
                self.samples.append(max(rss))


def one_run(raw: str, dest: str, records: str, settings: dict) -> tuple[float, float]:
    spec = JobSpec(name="worker-memory", payload="daskjob.payloads.etl:run",
                   params={"source": raw, "dest": dest, "date": DATE, "blocksize": "4MB"},
                   record_dir=records, performance_report=False,
                   cluster=ClusterSpec(n_workers=1, memory_per_worker="2GiB"))
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    with dask.config.set(settings):
        run_job(spec)
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    samples = sampler.samples[5:] or sampler.samples  # skip start-up
    return (max(samples) - samples[0]) / 2**20, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=12, help="copies of a 250,000-row file (~33 MB each)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="daskjob-bench-mem-")
    try:
        raw = os.path.join(work, "raw")
        first = write_drop(raw, DATE, 250_000, seed=9)[0]
        for i in range(1, args.copies):
            shutil.copyfile(first, os.path.join(raw, f"date={DATE}", f"bank-{DATE}-{i:03d}.csv"))
        size = sum(os.path.getsize(os.path.join(raw, f"date={DATE}", f))
                   for f in os.listdir(os.path.join(raw, f"date={DATE}")))
        growth: dict[str, list[float]] = {name: [] for name in VARIANTS}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeat):
            for name, settings in VARIANTS.items():
                mib, secs = one_run(raw, os.path.join(work, "wh"), os.path.join(work, "runs"), settings)
                growth[name].append(mib)
                times[name].append(secs)
        print(f"input {size / 2**20:.0f} MiB, one worker, {args.repeat} run(s) each, medians:")
        base = statistics.median(growth[next(iter(VARIANTS))])
        for name in VARIANTS:
            g, t = statistics.median(growth[name]), statistics.median(times[name])
            print(f"  {name:48s} worker RSS growth {g:7.1f} MiB  ({g / max(base, 1):5.1f}x)  "
                  f"run {t:6.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
