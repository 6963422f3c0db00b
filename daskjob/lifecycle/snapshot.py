"""What a run keeps of its cluster before the cluster goes: the logs only the cluster
manager holds, every event the workers have logged (a barrier makes sure), the
scheduler's log, and the Dask performance report."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from distributed import Client

from ..backends import Backend, ClusterHandle
from ..observe.collector import Collector
from ..observe.events import marked
from ..observe.scheduler import firehose_name, task_progress
from ..observe.worker import emit_barrier
from ..record import RecordDir
from .outcome import one_line

logger = logging.getLogger("daskjob")

BARRIER_TIMEOUT = 10.0


def snapshot(record: dict[str, Any], collector: Collector, logs_dir: str,
             backend: Backend | None, handle: ClusterHandle | None,
             client: Client | None) -> None:
    """Before teardown: the cluster manager's logs, every event and log line the workers
    have sent, the scheduler's log. What cannot be had is said in the record."""
    if handle is not None:
        try:
            backend.snapshot_logs(handle, logs_dir)
        except Exception as e:  # the rest of the snapshot still matters
            record["snapshot_warning"] = f"cluster manager logs incomplete: {one_line(e)}"
    if client is not None and client.status == "running":
        try:
            _barrier(client, collector, record)
            with open(os.path.join(logs_dir, "scheduler.log"), "w") as f:
                for _level, line in client.get_scheduler_logs(n=100_000):
                    f.write(f"{line}\n")
            _final_progress(client, collector, record)
        except Exception as e:
            record["snapshot_warning"] = f"snapshot incomplete: {one_line(e)}"
    collector.flush()


def _final_progress(client: Client, collector: Collector, record: dict[str, Any]) -> None:
    """The task counters as the payload left them: the last point of the report's
    progress chart (the scheduler sends them only once a second)."""
    counts = client.run_on_scheduler(task_progress, plugin=firehose_name(collector.run_id))
    record["tasks"] = counts
    collector.progress(counts)


def _barrier(client: Client, collector: Collector, record: dict[str, Any]) -> None:
    """Every worker logs a barrier event after the events its tasks have queued: once
    each barrier is in, so is everything before it."""
    workers = {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    if not workers:
        return
    token = uuid.uuid4().hex
    client.run(emit_barrier, token=token)
    if not collector.wait_barrier(token, workers, BARRIER_TIMEOUT):
        record["snapshot_warning"] = "not every worker confirmed its last events"


def start_report(client: Client, recdir: RecordDir, run_id: str) -> Any:
    from distributed import performance_report
    report = performance_report(filename=recdir.report_path, mode="inline")
    try:
        with client.as_current():
            report.__enter__()
        return report
    except Exception:
        logger.warning("performance report could not start", exc_info=True,
                       extra=marked(run_id))
        return None


def finish_report(report: Any, client: Client, record: dict[str, Any], cancelled: bool) -> None:
    if report is None or cancelled or client.status != "running":
        return  # not worth delaying a cancelled run's teardown for a report
    try:
        with client.as_current():
            report.__exit__(None, None, None)
        record["report"] = "report.html"
    except Exception as e:
        record["report_error"] = one_line(e)
