"""What every front end (the Airflow provider, the Flyte plugin) does with a run: name
its job, log its user events and its summary, and bring the run's log records onto the
front end's own logger, live.

The run's records are picked by the mark the core puts on them (`daskjob_run`, see
observe.events), not by thread names: records of another run in the same process are
left alone, records of no run (a warning about the process) come along.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator

from .observe.events import RUN_MARK, is_dask_internal

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.-]+")


def job_name(text: str, fallback: str, *, keep_end: bool = False) -> str:
    """A daskjob job name (1-63 of A-Za-z0-9_.-, starting with a letter or digit) from
    a front end's own name for the task; `keep_end` keeps the end of a long one (the
    most specific part of a dotted Flyte task name), else its start."""
    name = _NOT_IN_NAMES.sub("-", text)
    name = name[-63:].lstrip("_.-") if keep_end else name.strip("-.")[:63]
    return name or fallback


def summary_line(record: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v['seconds']}s" for k, v in (record.get("phases") or {}).items())
    return (f"daskjob run {record.get('run_id')} {record.get('status')} in "
            f"{record.get('duration_s')}s | phases: {phases} | workers: {record.get('workers')} "
            f"| used: {resource_text(record)} "
            f"| events: {(record.get('events') or {}).get('count')} | record: "
            f"{record.get('record_path')}")


def resource_text(record: dict[str, Any]) -> str:
    """What the run's workers used, e.g. `61.4 worker-s, 61.4 core-s, 722.8 GiB-s
    (default: peak 4 of 1-4)`; "not recorded" for records older than the figures."""
    used = record.get("resource_time")
    if not used:
        return "not recorded"
    groups = "; ".join(f"{name}: peak {g.get('peak')}, {g.get('worker_seconds')} worker-s"
                       for name, g in (record.get("groups") or {}).items())
    return (f"{used['worker_seconds']} worker-s, {used['core_seconds']} core-s, "
            f"{used['gib_seconds']} GiB-s ({groups})")


def group_summary(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per group, the figures without the timeline (for places with little room: XCom)."""
    return {name: {k: v for k, v in g.items() if k != "timeline"}
            for name, g in (record.get("groups") or {}).items()}


def log_user_event(log: Any, record: dict[str, Any]) -> None:
    """An on_event callback: the user's events (etl.partition, tpot.progress, ...) as log
    lines. Lifecycle events come through the daskjob logger; distributed's are noise."""
    if not is_dask_internal(record["topic"]):
        log.info("dask event %s [%s] %s", record["topic"], record.get("worker") or "",
                 record.get("data"))


class _RunRecords(logging.Handler):
    """Re-emits a run's records of the `daskjob` loggers on the front end's logger."""

    def __init__(self, target: Any, run_id: str):
        super().__init__(logging.INFO)
        self.target, self.run_id = target, run_id

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, RUN_MARK, self.run_id) != self.run_id:
            return  # another run's
        if isinstance(self.target, logging.Logger):
            # a new record on the target, keeping when and where the line was made
            out = self.target.makeRecord(self.target.name, record.levelno, record.pathname,
                                         record.lineno, record.getMessage(), (), None,
                                         func=record.funcName)
            out.created, out.msecs = record.created, record.msecs
            self.target.handle(out)
        else:  # a structlog or adapter logger
            self.target.log(record.levelno, "%s", record.getMessage())


@contextlib.contextmanager
def run_logs_to(target: Any, run_id: str, *, instead: bool) -> Iterator[None]:
    """While inside, the run's lifecycle and worker lines (INFO and up) also go to
    `target`; with `instead`, only there (they would reach the same log twice through
    the root logger otherwise)."""
    source = logging.getLogger("daskjob")
    handler = _RunRecords(target, run_id)
    old_level, old_propagate = source.level, source.propagate
    source.addHandler(handler)
    if source.getEffectiveLevel() > logging.INFO:
        source.setLevel(logging.INFO)  # lifecycle and worker lines are INFO
    if instead:
        source.propagate = False
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(old_level)
        source.propagate = old_propagate
