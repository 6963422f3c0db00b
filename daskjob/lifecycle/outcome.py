"""How a run ended, in words: its status, the error for the record, the exception the
caller gets (with the worker traceback and the last worker log lines), the result's
summary, and the record of a spec that was rejected before any run."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import time
import traceback
import uuid
from typing import Any, Mapping

from ..version import __version__
from ..errors import JobCancelled, JobFailed, JobTimedOut, StartupFailed
from ..payload import describe_payload
from ..record import RecordDir, redact
from .state import Cancelled

_RAISED = {"cancelled": JobCancelled, "timed_out": JobTimedOut,
           "startup_failed": StartupFailed}


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


def classify(failure: BaseException | None,
             passthrough: tuple[type[BaseException], ...]) -> tuple[str, dict | None]:
    """(status, the record's error) of a run that ended with `failure` (None: succeeded).
    `passthrough`: the caller's own deadline exceptions, which mean timed_out."""
    if failure is None:
        return "succeeded", None
    if isinstance(failure, (Cancelled, JobCancelled, KeyboardInterrupt, SystemExit)):
        status = "cancelled"
    elif passthrough and isinstance(failure, passthrough):
        status = "timed_out"
    elif isinstance(failure, JobFailed):
        status = failure.status
    else:
        status = "failed"
    if isinstance(failure, Cancelled):
        message = f"run cancelled: {failure}"
    elif isinstance(failure, KeyboardInterrupt):
        message = "run cancelled: KeyboardInterrupt"
    else:
        message = str(failure) or type(failure).__name__
    cause = failure.__cause__ if isinstance(failure, JobFailed) and failure.__cause__ else failure
    return status, {"type": type(failure).__name__, "message": message,
                    "traceback": "".join(traceback.format_exception(cause))}


def as_job_failed(failure: BaseException, status: str, error: dict, record: dict,
                  log_tail: list[str], stderr_tail: list[str]) -> JobFailed:
    """The exception the caller gets: what happened first, then the worker-side
    traceback, the last worker log lines, crashed workers' stderr, the record's path."""
    if isinstance(failure, (Cancelled, JobFailed)):
        headline = error["message"]
        worker_tb = None if isinstance(failure, Cancelled) else _remote_traceback(failure)
    else:
        headline = f"payload raised {type(failure).__name__}: {failure}"
        worker_tb = error["traceback"]
    parts = [f"daskjob run {record['run_id']} {status}: {headline}"]
    if worker_tb:
        where = "cluster start" if status == "startup_failed" else "payload / worker side"
        parts.append(f"Traceback ({where}):\n" + worker_tb.rstrip())
    if log_tail:
        parts.append("Last worker log lines:\n" + "\n".join(log_tail))
    if stderr_tail and status in ("failed", "startup_failed"):
        parts.append("Worker stderr (last lines):\n" + "\n".join(stderr_tail))
    parts.append(f"Run record: {record['record_path']}")
    return _RAISED.get(status, JobFailed)("\n\n".join(parts), record=record,
                                          worker_traceback=worker_tb, log_tail=log_tail)


def _remote_traceback(failure: BaseException) -> str | None:
    cause = failure.__cause__
    return None if cause is None else "".join(traceback.format_exception(cause))


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def summarise(value: Any) -> dict[str, Any]:
    """The payload's result as the record keeps it: the value itself when it is JSON
    (up to a million characters), else its type and repr."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return {"type": type(value).__name__, "json": False, "repr": repr(value)[:500]}
    if len(text) > 1_000_000:
        return {"type": type(value).__name__, "json": False,
                "repr": f"JSON value of {len(text)} characters (not stored)"}
    return {"type": type(value).__name__, "json": True, "value": value}


def versions() -> dict[str, str]:
    import dask
    import distributed
    return {"daskjob": __version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "python": platform.python_version()}


def driver() -> dict[str, Any]:
    """The process driving the run: `daskjob show` tells a run whose driver is gone."""
    import psutil
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": psutil.Process().create_time(), "python": platform.python_version()}


def write_rejected_record(raw: Mapping[str, Any], error: Exception) -> str | None:
    """Nothing is lost: a spec that fails validation still leaves a record, if it says where."""
    from ..spec import valid_name
    record_dir, name = raw.get("record_dir"), raw.get("name")
    if not isinstance(record_dir, str) or not record_dir:
        return None
    run_id = new_run_id(name if valid_name(name) else "invalid")
    try:
        recdir = RecordDir(record_dir, run_id)
    except Exception:  # no record dir to write to: the caller has the error itself
        return None
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    spec_view = {k: (describe_payload(v) if k == "payload" else v) for k, v in raw.items()}
    labels = raw.get("labels") if isinstance(raw.get("labels"), Mapping) else {}
    record = {"run_id": run_id, "name": name, "status": "startup_failed",
              "started_at": now, "ended_at": now, "duration_s": 0.0,
              "record_path": recdir.location,
              "payload": None if raw.get("payload") is None else describe_payload(raw["payload"]),
              "labels": {"daskjob/run-id": run_id, **{str(k): str(v) for k, v in labels.items()}},
              "spec": redact(json.loads(json.dumps(spec_view, default=str))),
              "driver": driver(),
              "error": {"type": type(error).__name__, "message": str(error), "traceback": ""},
              "teardown": {"cluster": "not started", "killed_processes": []},
              "versions": versions()}
    with open(recdir.events_path, "w") as f:
        f.write(json.dumps({"time": time.time(), "topic": "daskjob.lifecycle", "worker": "driver",
                            "data": {"event": "spec rejected", "error": str(error)}}) + "\n")
    recdir.write_json("record.json", record)
    recdir.publish()
    return recdir.location
