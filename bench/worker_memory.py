"""Worker memory over a long streaming ETL: dask's profiler on (its defaults) vs. off.

Runs the ETL payload through `run_job` on one worker, twice per repeat, alternating:
with dask's profiler as dask ships it (every 10ms), with daskjob's profiler setting when
a run writes a performance report (every 100ms), and with the profiler off (daskjob's
default when no report is written). A thread samples the worker process's RSS every
second; prints the median growth from the first sample after warm-up to the peak, and
the ratios against the profiler-off run.

    .venv/bin/python bench/worker_memory.py [--copies 12] [--repeat 1]

With `--minutes N`: one run instead, daskjob's defaults, that repeats the ETL over the
drop for N minutes on one worker of 1 GiB (the drop is several times that: the worker
streams it, out of core). Prints the worker's RSS slope after warm-up (least squares,
MiB per minute) and its change from the first to the last minute after warm-up.

    .venv/bin/python bench/worker_memory.py --minutes 30
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
        self.times: list[float] = []
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
                self.times.append(time.monotonic())


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


def etl_for(minutes: float, **params) -> int:
    """The payload of the soak: the ETL again and again until `minutes` have passed."""
    from daskjob.payloads import etl
    rounds, end = 0, time.monotonic() + minutes * 60
    while time.monotonic() < end:
        etl.run(**params)
        rounds += 1
    return rounds


def soak(raw: str, work: str, minutes: float, size: int) -> None:
    spec = JobSpec(name="worker-memory-soak", payload=etl_for, timeout=None,
                   params={"minutes": minutes, "source": raw, "dest": os.path.join(work, "wh"),
                           "date": DATE},
                   record_dir=os.path.join(work, "runs"),
                   cluster=ClusterSpec(n_workers=1, memory_per_worker="1GiB"))
    sampler = RssSampler()
    sampler.start()
    rounds = run_job(spec).value
    sampler.stop.set()
    sampler.join()
    t0 = sampler.times[0]
    warm = minutes * 60 * 0.1  # the first tenth is warm-up
    pts = [((t - t0) / 60, rss / 2**20) for t, rss in zip(sampler.times, sampler.samples)
           if t - t0 >= warm]
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    first = statistics.median(y for x, y in pts if x <= pts[0][0] + 1)
    last = statistics.median(y for x, y in pts if x >= pts[-1][0] - 1)
    print(f"input {size / 2**20:.0f} MiB, one worker of 1 GiB, {minutes:g} min, {rounds} ETL "
          f"rounds; after {warm / 60:.1f} min of warm-up: worker RSS {first:.0f} -> {last:.0f} "
          f"MiB ({(last - first) / first:+.1%}), slope {slope:+.2f} MiB/min")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=12, help="copies of a 250,000-row file (~33 MB each)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=None, help="a soak of this length instead")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="daskjob-bench-mem-")
    try:
        raw = os.path.join(work, "raw")
        first = write_drop(raw, DATE, 250_000, seed=9)[0]
        for i in range(1, args.copies):
            shutil.copyfile(first, os.path.join(raw, f"date={DATE}", f"bank-{DATE}-{i:03d}.csv"))
        size = sum(os.path.getsize(os.path.join(raw, f"date={DATE}", f))
                   for f in os.listdir(os.path.join(raw, f"date={DATE}")))
        if args.minutes:
            soak(raw, work, args.minutes, size)
            return
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
