"""Driver side: the run's collector writes events.jsonl and logs/, calls on_event,
forwards worker log lines to the `daskjob.worker` logger, and keeps what the run needs
to know from the stream (live workers, deaths, pauses, barriers, tails of logs)."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable

from ..dask_logs import is_dask_logger
from .events import (BARRIER_TOPIC, LIFECYCLE_TOPIC, LOG_TOPIC, PROGRESS_TOPIC, display_name,
                     jsonable, marked)
from .usage import Usage

_FLUSH = "daskjob.internal.flush"
# one encoder for every line (json.dumps with `default=` builds a new one per call)
_to_json = json.JSONEncoder(default=str).encode

worker_log = logging.getLogger("daskjob.worker")
logger = logging.getLogger("daskjob")

class Collector:
    """Driver side: one writer thread for events.jsonl and logs/, callbacks, counters."""

    def __init__(self, events_path: str, logs_dir: str, *, run_id: str,
                 on_event: Callable[[dict], Any] | None = None, forward_logs: bool = True,
                 tail_lines: int = 50, dask_log_level: int = logging.WARNING,
                 usage: Usage | None = None):
        self.events_path = events_path
        self.logs_dir = logs_dir
        self.run_id = run_id
        self.on_event = on_event
        self.forward_logs = forward_logs
        self.dask_log_level = dask_log_level
        self.event_count = 0
        self.log_line_count = 0
        self.topics: dict[str, int] = defaultdict(int)
        self.tails: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=tail_lines))
        self.worker_deaths: list[dict] = []
        self.paused_since: dict[str, float] = {}  # worker address -> time it paused
        # addresses of workers up right now, kept from the event stream (no RPC needed)
        self.live_workers: set[str] = set()
        # workers per group over time, and their resource time
        self.usage = usage or Usage()
        self._barriers: dict[str, set[str]] = defaultdict(set)
        self._barrier_cv = threading.Condition()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._log_files: dict[str, Any] = {}
        os.makedirs(logs_dir, exist_ok=True)
        self._events = open(events_path, "a", buffering=1 << 16)
        self._thread = threading.Thread(target=self._drain, name=f"daskjob-collector-{run_id}",
                                        daemon=True)
        self._closed = False
        self._thread.start()

    # called from the client's event loop: must be cheap
    def on_firehose(self, event: tuple[float, dict]) -> None:
        """A batch of (time, topic, message, worker name) from the scheduler."""
        self._q.put(list(event[1]["batch"]))  # a list: what _drain takes for a batch

    def lifecycle(self, what: str, **data: Any) -> None:
        """An event from the driver itself (provisioned, payload started, ...)."""
        self._q.put((time.time(), LIFECYCLE_TOPIC, {"event": what, **jsonable(data)}, "driver"))

    def progress(self, counts: dict[str, int]) -> None:
        """Task counters read by the driver (the last ones, before teardown)."""
        self._q.put((time.time(), PROGRESS_TOPIC, jsonable(counts), None))

    def driver_log(self, source: str, line: str, level: str = "INFO") -> None:
        """A log line produced on the driver side (e.g. a script payload's output)."""
        self._q.put((time.time(), LOG_TOPIC, {"worker_name": source, "logger": source,
                                              "level": level, "message": line}, source))

    def _drain(self) -> None:
        # flush when idle or once a second, so `tail -f events.jsonl` is live
        last_flush = time.monotonic()
        while True:
            try:
                item = self._q.get(timeout=0.5)
            except queue.Empty:
                item = False
            if item is False or time.monotonic() - last_flush > 1.0:
                self._flush_files()
                last_flush = time.monotonic()
                if item is False:
                    continue
            if item is None:
                break
            for one in (item if isinstance(item, list) else [item]):
                try:
                    self._handle(*one)
                except Exception:
                    logger.exception("daskjob: could not record an event",
                                     extra=marked(self.run_id))

    def _handle(self, ts: float, topic: str, msg: Any, name: str | None) -> None:
        if topic == _FLUSH:  # rides the same queue, so everything before it is written
            self._flush_files()
            msg.set()
            return
        if topic == LOG_TOPIC:
            self._handle_log(ts, msg)
            return
        if topic == BARRIER_TOPIC:
            with self._barrier_cv:
                self._barriers[msg.get("token", "")].add(msg.get("worker_name", ""))
                self._barrier_cv.notify_all()
            return
        if topic == "all" and isinstance(msg, dict) and msg.get("action") == "worker-joined":
            self._worker_change(ts, msg, name)
            return  # ours, not the scheduler's: only the lifecycle event is kept
        if topic == "all" and isinstance(msg, dict) and msg.get("action") == "remove-worker":
            self._worker_change(ts, msg, name)
        if topic == "all" and isinstance(msg, dict) and msg.get("action") == "worker-status-change":
            self._worker_status(ts, msg, name)
            return
        worker_name = None
        if isinstance(msg, dict):
            worker_name = msg.get("worker_name") or name
        if worker_name is not None:
            worker_name = display_name(worker_name)
        record = {"time": ts, "topic": topic, "worker": worker_name, "data": msg}
        self._write_event(record)

    def _flush_files(self) -> None:
        self._events.flush()
        for f in self._log_files.values():
            f.flush()

    def _worker_change(self, ts: float, msg: dict, name: str | None) -> None:
        raw_name = name
        name = display_name(name) if name is not None else None
        if msg["action"] == "worker-joined":
            self.live_workers.add(msg.get("worker"))
            self.usage.joined(ts, msg.get("worker"), raw_name, msg.get("nthreads"),
                              msg.get("memory_limit"))
            what, data = "worker joined", {
                "worker": name, "address": msg.get("worker"),
                **{k: msg[k] for k in ("nthreads", "memory_limit", "resources") if k in msg}}
        else:
            self.live_workers.discard(msg.get("worker"))
            self.usage.left(ts, msg.get("worker"), raw_name)
            self.paused_since.pop(msg.get("worker"), None)
            died = not msg.get("expected", False) and not self._closing_cluster
            what = "worker died" if died else "worker left"
            data = {"worker": name, "address": msg.get("worker"),
                    "reason": msg.get("stimulus_id"),
                    "processing_tasks": len(msg.get("processing-tasks") or [])}
            if died:
                self.worker_deaths.append(data)
        self._write_event({"time": ts, "topic": LIFECYCLE_TOPIC, "worker": name,
                           "data": {"event": what, **data}})

    def _worker_status(self, ts: float, msg: dict, name: str | None) -> None:
        address, status = msg.get("worker"), msg.get("status")
        if status == "paused":
            self.paused_since.setdefault(address, ts)
            what = "worker paused"  # dask's memory monitor: process memory over its pause fraction
        elif status == "running" and msg.get("prev-status") == "paused":
            self.paused_since.pop(address, None)
            what = "worker resumed"
        else:
            return
        self._write_event({"time": ts, "topic": LIFECYCLE_TOPIC,
                           "worker": display_name(name) if name else None,
                           "data": {"event": what, "address": address}})

    def all_paused_since(self) -> float | None:
        """When the last live worker paused, if every live worker is paused now."""
        live = set(self.live_workers)
        if not live or not live <= set(self.paused_since):
            return None
        return max(self.paused_since[a] for a in live)

    _closing_cluster = False

    def cluster_closing(self) -> None:
        """From now on, workers leaving is the teardown, not a death."""
        self._closing_cluster = True

    def _write_event(self, record: dict) -> None:
        self._events.write(_to_json(record) + "\n")
        self.event_count += 1
        self.topics[record["topic"]] += 1
        if record["topic"] == LIFECYCLE_TOPIC:
            self._events.flush()  # rare and the ones a watcher waits for
            logger.info("[%s] %s", self.run_id, _describe_lifecycle(record),
                        extra=marked(self.run_id))
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception:
                logger.exception("daskjob: on_event callback failed",
                                 extra=marked(self.run_id))

    def _handle_log(self, ts: float, msg: dict) -> None:
        source = display_name(msg.get("worker_name") or "unknown")
        line = f"{_fmt_time(msg.get('time', ts))} {msg.get('level', 'INFO'):<7} {msg.get('logger', '')}: {msg.get('message', '')}"
        f = self._log_files.get(source)
        if f is None:
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source)
            f = self._log_files[source] = open(os.path.join(self.logs_dir, f"{safe}.log"), "a")
        f.write(line + "\n")
        self.log_line_count += 1
        level = logging.getLevelName(str(msg.get("level", "INFO")))
        level = level if isinstance(level, int) else logging.INFO
        if level < self.dask_log_level and is_dask_logger(str(msg.get("logger", ""))):
            return  # Dask's own chatter: in the file only
        self.tails[source].append(line)
        if self.forward_logs:
            worker_log.log(level, "[%s] %s: %s", source, msg.get("logger", ""),
                           msg.get("message", ""), extra=marked(self.run_id))

    # ----------------------------------------------------------------------- barrier
    def wait_barrier(self, token: str, workers: set[str], timeout: float) -> bool:
        """Wait until every worker's barrier event arrived: all earlier events are in."""
        deadline = time.monotonic() + timeout
        with self._barrier_cv:
            while not workers <= self._barriers[token]:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._barrier_cv.wait(left)
        return True

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is written."""
        done = threading.Event()
        self._q.put((0.0, _FLUSH, done, None))
        done.wait(timeout)

    def log_tail(self, n: int = 20) -> list[str]:
        lines = [(source, line) for source, tail in self.tails.items() for line in tail]
        lines.sort(key=lambda sl: sl[1][:23])
        return [f"[{source}] {line}" for source, line in lines[-n:]]

    def stderr_tail(self, n: int = 30) -> list[str]:
        """Last lines workers wrote to their stderr files (crash tracebacks)."""
        out: list[str] = []
        for name in sorted(os.listdir(self.logs_dir)):
            if name.endswith(".stdio.log"):
                with open(os.path.join(self.logs_dir, name), errors="replace") as f:
                    lines = f.read().splitlines()[-n:]
                if lines:
                    out.append(f"--- {name} ---")
                    out.extend(lines)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=60)
        self._events.close()
        for f in self._log_files.values():
            f.close()


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


def _describe_lifecycle(record: dict) -> str:
    data = dict(record["data"])
    what = data.pop("event", "?")
    detail = ", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], {}))
    return f"{what}" + (f" ({detail})" if detail else "")
