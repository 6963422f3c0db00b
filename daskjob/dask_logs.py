"""Keep Dask's own chatter out of the caller's log; keep it in the run's files.

A run's scheduler (local backend) logs in the driver process, and distributed logs an
INFO line for every connection, plugin and worker it sees, plus a CommClosedError
traceback (at INFO) whenever a connection closes at teardown. Under Airflow and Flyte
those lines land in the task log between the user's own. While a run lives, records of
Dask's loggers below `daskjob.dask-log-level` (default WARNING) do not reach the handlers
of the root logger, nor the stream handler distributed may have put on its own logger;
the scheduler's in-memory log, which the record keeps, still gets them. Worker lines
below that level are kept in logs/ but not forwarded live.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

DASK_LOGGERS = ("distributed", "dask", "tornado", "bokeh")


def dask_log_level() -> int:
    from . import config
    value = config.get("dask-log-level")
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ValueError(f"daskjob.dask-log-level: expected DEBUG, INFO, WARNING or ERROR, "
                         f"got {value!r}")
    return level


def is_dask_logger(name: str) -> bool:
    return name.split(".", 1)[0] in DASK_LOGGERS


class _BelowLevelFromDask(logging.Filter):
    def __init__(self):
        super().__init__()
        self.level = logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not is_dask_logger(record.name)


_filter = _BelowLevelFromDask()
_lock = threading.Lock()
_users = 0
_filtered: list[logging.Handler] = []


def _output_handlers() -> list[logging.Handler]:
    from distributed.utils import DequeHandler
    handlers = list(logging.getLogger().handlers)
    for name in DASK_LOGGERS:
        handlers += [h for h in logging.getLogger(name).handlers
                     if not isinstance(h, DequeHandler)]
    return handlers


@contextlib.contextmanager
def quiet_dask_logs(level: int) -> Iterator[None]:
    """While inside, the root logger's handlers drop Dask's records below `level`.
    Nested and concurrent runs share the filter (reference counted)."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            _filter.level = level
            _filtered[:] = [h for h in _output_handlers() if _filter not in h.filters]
            for handler in _filtered:
                handler.addFilter(_filter)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                for handler in _filtered:
                    handler.removeFilter(_filter)
                _filtered.clear()
