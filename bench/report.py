"""The run report of a big run: page size, time to write it, time for a browser to show it.

    python bench/report.py [--events 200000] [--log-lines 100000] [--repeat 3] [--browser]

A run folder is made up (record.json, events.jsonl, logs/) with the given number of
events (most of them the user's, as a long ETL or TPOT search logs them) and log lines
over two workers and the scheduler. Baselines, from the same process:
- writing the report is compared with reading events.jsonl line by line (json.loads),
  the least any report of every event must do;
- the browser's time to show the report is compared with its time to show the report
  of a small run (the same page with little data), and with a blank page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time

START = dt.datetime(2026, 12, 4, 1, 0, tzinfo=dt.timezone.utc)


def fake_run(path: str, *, events: int, log_lines: int, seconds: float = 1800.0) -> str:
    """A run folder as a long run leaves it. Returns its path."""
    os.makedirs(os.path.join(path, "logs"), exist_ok=True)
    rng = random.Random(0)
    t0 = START.timestamp()
    with open(os.path.join(path, "events.jsonl"), "w") as f:
        f.write(json.dumps({"time": t0, "topic": "daskjob.lifecycle", "worker": "driver",
                            "data": {"event": "run started"}}) + "\n")
        for w in range(2):
            f.write(json.dumps({"time": t0 + 1 + w * 0.1, "topic": "daskjob.lifecycle",
                                "worker": f"worker-{w}", "data": {"event": "worker joined",
                                                                  "worker": f"worker-{w}"}}) + "\n")
        for i in range(events - 4):
            t = t0 + 2 + seconds * i / events
            if i % 5 == 4:
                row = {"time": t, "topic": "scheduler", "worker": None,
                       "data": {"action": "update-graph", "stimulus_id": f"update-graph-{t}"}}
            elif i % 500 == 0:
                row = {"time": t, "topic": "daskjob.progress", "worker": None,
                       "data": {"added": i, "done": max(0, i - 400), "erred": i // 50_000}}
            else:
                row = {"time": t, "topic": "etl.partition", "worker": f"worker-{i % 2}",
                       "data": {"seq": i, "rows_read": rng.randint(1, 50_000),
                                "rows_rejected": rng.randint(0, 100), "worker_name": str(i % 2)}}
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"time": t0 + seconds + 3, "topic": "daskjob.lifecycle", "worker": "driver",
                            "data": {"event": "run finished", "status": "succeeded"}}) + "\n")
    per_file = log_lines // 2
    for w in range(2):
        with open(os.path.join(path, "logs", f"worker-{w}.log"), "w") as f:
            for i in range(per_file):
                level = "WARNING" if i % 1000 == 999 else "INFO"
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + seconds * i / per_file))
                f.write(f"{stamp}.000 {level:<7} etl.worker: line {i} of worker-{w}: partition "
                        f"{i // 100} read {rng.randint(1, 50_000)} rows\n")
    with open(os.path.join(path, "logs", "scheduler.log"), "w") as f:
        f.write("2026-12-04 01:00:00,000 - distributed.scheduler - INFO - State start\n")
    record = {
        "run_id": os.path.basename(path), "name": "big-etl", "status": "succeeded",
        "started_at": START.isoformat(), "ended_at": (START + dt.timedelta(seconds=seconds + 4)).isoformat(),
        "duration_s": seconds + 4, "record_path": path, "backend": "local", "payload": "etl:run",
        "labels": {"airflow/dag_id": "nightly", "airflow/task_id": "etl"},
        "workers": {"expected": 2, "started": 2},
        "phases": {"provision": {"start_s": 0.0, "seconds": 0.1}, "workers": {"start_s": 0.1, "seconds": 1.0},
                   "environment_check": {"start_s": 1.1, "seconds": 0.01},
                   "payload": {"start_s": 1.2, "seconds": seconds}, "snapshot": {"start_s": seconds + 1.2, "seconds": 1.0},
                   "teardown": {"start_s": seconds + 2.2, "seconds": 0.3}},
        "groups": {"default": {"expected": 2, "started": 2, "peak": 2,
                               "timeline": [[1.0, 1], [1.1, 2], [seconds + 2.2, 2]]}},
        "events": {"count": events}, "logs": {"lines": log_lines + 1},
        "teardown": {"cluster": "closed", "killed_processes": []}, "error": None}
    with open(os.path.join(path, "record.json"), "w") as f:
        json.dump(record, f)
    return path


def read_events(path: str) -> int:
    n = 0
    with open(os.path.join(path, "events.jsonl")) as f:
        for line in f:
            json.loads(line)
            n += 1
    return n


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def browser_times(pages: dict[str, str], repeat: int) -> dict[str, float]:
    """Median seconds from navigation to the page's load event plus its script's work."""
    from playwright.sync_api import sync_playwright
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from browser import chromium
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            for name, url in pages.items():
                def load():
                    page.goto(url, wait_until="load")
                    page.evaluate("() => new Promise(r => requestAnimationFrame(() => r()))")
                load()  # warm
                out[name] = timed(load, repeat)
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--log-lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--browser", action="store_true", help="also time Chromium showing the page")
    args = ap.parse_args()
    from daskjob.report import write_report
    with tempfile.TemporaryDirectory() as tmp:
        big = fake_run(os.path.join(tmp, "big"), events=args.events, log_lines=args.log_lines)
        small = fake_run(os.path.join(tmp, "small"), events=200, log_lines=100)
        folder_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(big) for f in fs) / 2 ** 20
        base = timed(lambda: read_events(big), args.repeat)
        write = timed(lambda: write_report(big), args.repeat)
        size = os.path.getsize(os.path.join(big, "run-report.html")) / 2 ** 20
        print(f"run folder: {args.events} events, {args.log_lines} log lines, {folder_mb:.1f} MiB")
        print(f"report page: {size:.2f} MiB")
        print(f"write the report: {write:.2f} s; read events.jsonl: {base:.2f} s; ratio {write / base:.2f}")
        if args.browser:
            write_report(small)
            blank = os.path.join(tmp, "blank.html")
            with open(blank, "w") as f:
                f.write("<!DOCTYPE html><title>blank</title>")
            t = browser_times({"blank": f"file://{blank}", "small": f"file://{small}/run-report.html",
                               "big": f"file://{big}/run-report.html"}, args.repeat)
            print(f"Chromium shows it: big {t['big']:.2f} s, small run {t['small']:.2f} s, "
                  f"blank page {t['blank']:.3f} s; big/small {t['big'] / t['small']:.1f}")


if __name__ == "__main__":
    main()
