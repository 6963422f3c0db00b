"""Events and logs: live and kept, none lost."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from daskjob import ClusterSpec, JobSpec, run_job

from conftest import only_run

pytestmark = pytest.mark.usefixtures("no_leaks")


def spec(records, payload, **kw):
    return JobSpec(name=kw.pop("name", "cap"), payload=payload, record_dir=str(records),
                   cluster=ClusterSpec(n_workers=2, threads_per_worker=1, memory_per_worker="1GiB"),
                   performance_report=kw.pop("performance_report", False), **kw)


def test_200k_events_none_lost(records):
    seen = []
    result = run_job(spec(records, "jobs:many_events", params={"per_worker": 100_000}),
                     on_event=lambda e: seen.append(e["topic"]) if e["topic"] == "bulk" else None)
    assert result.value == 200_000
    run_dir = only_run(records)
    by_worker: dict[str, set[int]] = {}
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e["topic"] == "bulk":
                by_worker.setdefault(e["data"]["tag"], set()).add(e["data"]["i"])
    assert len(by_worker) == 2
    for tag, ids in by_worker.items():
        assert ids == set(range(100_000)), f"{tag}: {100_000 - len(ids)} events missing"
    assert seen.count("bulk") == 200_000  # delivered live to on_event too
    with open(os.path.join(run_dir, "record.json")) as f:
        rec = json.load(f)
    assert rec["events"]["topics"]["bulk"] == 200_000


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record):
        self.seen.append((record.created, record.getMessage()))


def test_user_logs_and_prints_are_captured_live_and_kept(records):
    keep = _Keep()
    live_logger = logging.getLogger("daskjob.worker")
    live_logger.addHandler(keep)
    old_level = live_logger.level
    live_logger.setLevel(logging.INFO)
    try:
        result = run_job(spec(records, "jobs:talks", params={"n": 4}))
    finally:
        live_logger.removeHandler(keep)
        live_logger.setLevel(old_level)
    run_dir = only_run(records)
    kept = ""
    for name in os.listdir(os.path.join(run_dir, "logs")):
        with open(os.path.join(run_dir, "logs", name)) as f:
            kept += f.read()
    for i in range(4):
        assert f"user.payload: user-log-line {i}" in kept
        assert f"print: print-line {i}" in kept
    live = [m for _, m in keep.seen]
    assert any("user-log-line 0" in m and m.startswith("[worker-") for m in live), live[:5]
    assert any("print-line 1" in m for m in live)
    # live: the line reached the caller's logger before teardown started
    first = min(t for t, m in keep.seen if "user-log-line" in m)
    payload_end = result.record["phases"]["payload"]
    started = __import__("datetime").datetime.fromisoformat(result.record["started_at"]).timestamp()
    assert first < started + payload_end["start_s"] + payload_end["seconds"] + 0.5
    # scheduler log snapshotted before teardown
    assert os.path.getsize(os.path.join(run_dir, "logs", "scheduler.log")) > 0
    events = [json.loads(line) for line in open(os.path.join(run_dir, "events.jsonl"))]
    talk = [e for e in events if e["topic"] == "test.talk"]
    assert sorted(e["data"]["i"] for e in talk) == [0, 1, 2, 3]
    assert all(e["worker"].startswith("worker-") for e in talk)


def test_distributed_print_and_raw_log_event_are_captured(records):
    def payload(client):
        from distributed import get_worker, print as dprint

        def task():
            dprint("hello via distributed.print")
            get_worker().log_event("raw.topic", {"x": 1})
            return 1
        return client.submit(task).result()

    run_job(spec(records, payload))
    events = [json.loads(line) for line in open(os.path.join(only_run(records), "events.jsonl"))]
    topics = {e["topic"] for e in events}
    assert {"print", "raw.topic"} <= topics


def test_performance_report_is_written(records):
    result = run_job(spec(records, "jobs:add_up", params={"n": 20}, performance_report=True))
    assert result.record["report"] == "report.html"
    with open(os.path.join(only_run(records), "report.html")) as f:
        head = f.read(20000)
    assert "<html" in head.lower() and "bokeh" in head.lower()


def test_two_runs_at_once_in_one_process(records):
    results, errors = {}, []

    def go(n):
        try:
            results[n] = run_job(spec(records, "jobs:add_up", params={"n": n}, name=f"c{n}"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n,)) for n in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert results[10].value == 90 and results[20].value == 380
    links = {r.record["dashboard_link"] for r in results.values()}
    schedulers = {r.record["scheduler_address"] for r in results.values()}
    assert len(links) == 2 and len(schedulers) == 2
    assert all(link.startswith("http://127.0.0.1:") for link in links)
