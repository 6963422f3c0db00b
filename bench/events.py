"""Event throughput: daskjob.event from tasks, with everything daskjob adds (forwarding,
events.jsonl, the live on_event callback, the run's lifecycle), against distributed's own
`Worker.log_event` + `Client.subscribe_topic` on a raw LocalCluster.

Both: 2 worker processes x 1 thread, one task per worker logging N events each; the time
runs from submitting the tasks until the last event has reached the driver (raw: the
subscriber's handler has seen all; daskjob: the payload returned and the run's snapshot
confirmed every event written, i.e. the payload and snapshot phases). Variants alternate
in one process. Prints events/s, the ratio, and whether any event was lost.

    .venv/bin/python bench/events.py [--events 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

from distributed import Client, LocalCluster, get_client, get_worker

import daskjob
from daskjob import ClusterSpec, JobSpec, run_job

TOPIC = "bulk"


def _raw_emit(count: int, tag: str) -> int:
    worker = get_worker()
    for i in range(count):
        worker.log_event(TOPIC, {"i": i, "tag": tag})
    return count


def _daskjob_emit(count: int, tag: str) -> int:
    for i in range(count):
        daskjob.event(TOPIC, i=i, tag=tag)
    return count


def _submit_per_worker(client: Client, fn, per_worker: int) -> int:
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(fn, per_worker, w, workers=[w], pure=False) for w in workers]
    return sum(client.gather(futures))


def raw(total: int) -> tuple[float, int]:
    seen = 0
    all_in = threading.Event()

    def handler(event):
        nonlocal seen
        seen += 1
        if seen == total:
            all_in.set()

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      scheduler_port=0, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        client.subscribe_topic(TOPIC, handler)
        t = time.perf_counter()
        _submit_per_worker(client, _raw_emit, total // 2)
        all_in.wait(300)
        took = time.perf_counter() - t
    return took, seen


def emit_payload(per_worker: int) -> int:
    return _submit_per_worker(get_client(), _daskjob_emit, per_worker)


def daskjob_run(total: int, record_dir: str) -> tuple[float, int]:
    live = 0

    def on_event(record):
        nonlocal live
        if record["topic"] == TOPIC:
            live += 1

    spec = JobSpec(name="events", payload=emit_payload, params={"per_worker": total // 2},
                   record_dir=record_dir, cluster=ClusterSpec(n_workers=2, threads_per_worker=1))
    result = run_job(spec, on_event=on_event)
    phases = result.record["phases"]
    took = phases["payload"]["seconds"] + phases["snapshot"]["seconds"]
    run_dir = result.record_path  # the run's folder
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        written = sum(1 for line in f if json.loads(line)["topic"] == TOPIC)
    assert written == live, (written, live)  # the callback saw what the file holds
    return took, written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000, help="in all, half per worker")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"raw subscribe_topic": [], "daskjob.event": []}
    lost = {name: 0 for name in times}
    with tempfile.TemporaryDirectory() as records:
        for i in range(args.repeat):
            runs = [("raw subscribe_topic", lambda: raw(args.events)),
                    ("daskjob.event", lambda: daskjob_run(args.events, records))]
            for name, fn in (runs if i % 2 == 0 else runs[::-1]):
                took, got = fn()
                times[name].append(took)
                lost[name] += args.events - got
    base = statistics.median(times["raw subscribe_topic"])
    print(f"{args.events} events from 2 workers, {args.repeat} runs each, median:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:<20} {m:6.2f}s  {args.events / m:>9,.0f} events/s  "
              f"throughput ratio to raw {base / m:.2f}  lost {lost[name]}")


if __name__ == "__main__":
    main()
