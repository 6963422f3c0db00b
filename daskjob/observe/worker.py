"""Worker side: what runs inside every worker process of a run.

`WorkerObserver` (a WorkerPlugin) forwards the log records of every logger (the user's,
the root logger, distributed) and print output as events on LOG_TOPIC, cleans the
worker's environment, makes the payload's code importable, and stops the worker's child
processes at teardown. `emit_barrier` lets the driver know every earlier event is in.

Log lines and `daskjob.event`s leave the worker in batches (`EventBuffer`): one Dask
event per batch instead of one per line. Each event Dask logs from a task's thread wakes
the worker's event loop and travels as its own message; for a task that logs often,
that cost the worker more than its work.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import os
import sys
import threading
import time
from collections import defaultdict, deque

from distributed.diagnostics.plugin import WorkerPlugin

from ..payload import recreate_module
from .events import BARRIER_TOPIC, BATCH_TOPIC, BUFFER_ATTR, LOG_TOPIC, display_name


class EventBuffer:
    """A worker's events on their way out: added from any thread, sent as one
    BATCH_TOPIC event from the worker's event loop shortly after the first of a batch."""

    delay = 0.01  # seconds the first event of a batch waits for others

    def __init__(self, worker):
        self.worker = worker
        self._events: deque = deque()
        self._scheduled = False

    def add(self, topic: str, msg: dict) -> None:
        self._events.append((time.time(), topic, msg))
        if not self._scheduled:
            self._scheduled = True
            self.worker.loop.add_callback(self._flush_soon)

    def _flush_soon(self) -> None:
        self.worker.loop.call_later(self.delay, self.flush)

    def flush(self) -> None:
        """Send what is buffered (on the worker's event loop)."""
        self._scheduled = False  # before taking: an event added from now on is sent later
        batch = []
        while self._events:
            batch.append(self._events.popleft())
        if batch:
            self.worker.log_event(BATCH_TOPIC, {"events": batch,
                                                "worker_name": str(self.worker.name)})

class _EventLogHandler(logging.Handler):
    """Turns log records on a worker into LOG_TOPIC events (re-entrancy safe)."""

    def __init__(self, worker, level: int, buffer: EventBuffer):
        super().__init__(level)
        self.worker = worker
        self.buffer = buffer
        self.name_ = str(worker.name)
        self._local = threading.local()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            text = self.format(record)
            self.buffer.add(LOG_TOPIC, {
                "worker_name": self.name_, "logger": record.name, "level": record.levelname,
                "time": record.created, "message": text,
            })
        except Exception:
            pass  # a log line must never break the worker
        finally:
            self._local.busy = False


class _LineStream(io.TextIOBase):
    """stdout/stderr replacement on workers: each complete line becomes a log record."""

    def __init__(self, original, log: logging.Logger, level: int, echo: bool):
        self.original = original
        self.log = log
        self.level = level
        self.echo = echo
        self._buf: dict[int, str] = defaultdict(str)
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.echo and self.original is not None:
            try:
                self.original.write(s)
            except Exception:
                pass
        ident = threading.get_ident()
        with self._lock:
            buf = self._buf[ident] + s
            *lines, rest = buf.split("\n")
            self._buf[ident] = rest
        for line in lines:
            self.log.log(self.level, line)
        return len(s)

    def flush(self) -> None:
        if self.echo and self.original is not None:
            try:
                self.original.flush()
            except Exception:
                pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


class WorkerObserver(WorkerPlugin):
    """Installed on every worker of a run (and on restarted workers)."""

    name = "daskjob-observer"

    def __init__(self, run_id: str, *, drop_env: list[str], sys_path: list[str],
                 level: str = "INFO", forward_logs: bool = True, echo_streams: bool = False,
                 own_workers: bool = True, stderr_dir: str | None = None,
                 modules: dict[str, tuple[str, str]] | None = None):
        self.run_id = run_id
        self.drop_env = list(drop_env)
        self.sys_path = list(sys_path)
        self.level = level
        self.forward_logs = forward_logs
        self.echo_streams = echo_streams
        self.own_workers = own_workers
        self.stderr_dir = stderr_dir
        self.modules = dict(modules or {})

    def setup(self, worker) -> None:
        if self.stderr_dir and self.own_workers:
            # A worker that crashes prints its last words to fd 2 and may die before any
            # event leaves it; on a shared filesystem keep them in the record's logs/
            # (and keep raw worker output out of the driver's own stdout/stderr).
            path = os.path.join(self.stderr_dir, f"{display_name(worker.name)}.stdio.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        if self.own_workers:
            for name in list(os.environ):
                if any(fnmatch.fnmatchcase(name, pat) for pat in self.drop_env):
                    del os.environ[name]
        for folder in reversed(self.sys_path):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        # after the environment is clean: a DAG file's top level may import airflow
        for name, (file, source) in self.modules.items():
            recreate_module(name, file, source)
        self._handler = None
        buffer = EventBuffer(worker)
        setattr(worker, BUFFER_ATTR, buffer)
        if not self.forward_logs:
            return
        level = logging.getLevelName(self.level)
        handler = _EventLogHandler(worker, level, buffer)
        self._handler = handler
        self._patched = []
        root = logging.getLogger()
        self._root_level = root.level
        if root.level > level or root.level == logging.NOTSET:
            root.setLevel(level)  # user loggers inherit WARNING otherwise: INFO would vanish
        # root sees every propagating logger; distributed may be configured not to propagate
        self._loggers = [""] + [n for n in ("distributed",) if not logging.getLogger(n).propagate]
        for name in self._loggers:
            logging.getLogger(name).addHandler(handler)
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _LineStream(sys.stdout, logging.getLogger("print"), logging.INFO, self.echo_streams)
        sys.stderr = _LineStream(sys.stderr, logging.getLogger("stderr"), logging.WARNING, self.echo_streams)

    def teardown(self, worker) -> None:
        buffer = getattr(worker, BUFFER_ATTR, None)
        if buffer is not None:
            buffer.flush()
            delattr(worker, BUFFER_ATTR)  # a borrowed worker outlives the run
        handler = getattr(self, "_handler", None)
        if handler is not None:
            for name in self._loggers:
                logging.getLogger(name).removeHandler(handler)
            logging.getLogger().setLevel(self._root_level)
            sys.stdout, sys.stderr = self._stdout, self._stderr
        if self.own_workers:
            from ..procs import stop_children
            stop_children(os.getpid(), grace=2.0)


def emit_barrier(dask_worker=None, token: str = "") -> None:
    # runs on each worker's event loop, after the log_event calls that tasks queued
    buffer = getattr(dask_worker, BUFFER_ATTR, None)
    if buffer is not None:
        buffer.flush()
    dask_worker.log_event(BARRIER_TOPIC, {"token": token, "worker_name": str(dask_worker.name)})
