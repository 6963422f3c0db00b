"""Seeing what workers did: structured events and log lines, live and kept.

Three parts:
- `WorkerObserver` (a WorkerPlugin): on every worker of the run, forwards log records
  of all loggers (user loggers, root, distributed) and print output as events on the
  LOG_TOPIC, cleans the worker environment, and stops the worker's child processes on
  teardown.
- `FirehosePlugin` (a SchedulerPlugin): dask keeps only the last 1,000 events per topic,
  so instead of reading `get_events()` at the end, the scheduler forwards every event of
  every topic to our client as it is logged.
- `Collector` (driver side): writes events.jsonl and logs/<worker>.log, calls on_event,
  and forwards worker log lines to the `daskjob.worker` logger with the worker's name.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from .dask_logs import is_dask_logger

LOG_TOPIC = "daskjob.log"
FIREHOSE_TOPIC = "daskjob.firehose"
BARRIER_TOPIC = "daskjob.barrier"
LIFECYCLE_TOPIC = "daskjob.lifecycle"
_FLUSH = "daskjob.internal.flush"

worker_log = logging.getLogger("daskjob.worker")
logger = logging.getLogger(__name__)

_ADDRESS_PREFIXES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


# topics distributed logs events on for itself
_DASK_TOPICS = frozenset({"all", "scheduler", "worker", "stealing", "worker-fail-hard",
                          "worker-restart-memory", "invalid-worker-transition",
                          "worker-transition-counter-warning", "worker-get-client"})


def is_dask_internal(topic: str) -> bool:
    """Topics of daskjob's and distributed's own events (kept in events.jsonl, not worth
    a log line): not the user's `daskjob.event` topics, nor `print`."""
    return (topic in _DASK_TOPICS or topic.startswith(("Client-", "daskjob."))
            or topic.startswith(_ADDRESS_PREFIXES))


def _jsonable(value: Any) -> Any:
    """Events must be msgpack-serialisable: keep JSON types, stringify the rest."""
    return json.loads(json.dumps(value, default=str))


def event(topic: str, **data: Any) -> None:
    """Emit a structured event from anywhere: a task on a worker, or the payload itself.

    >>> from daskjob import JobSpec, event, run_job
    >>> def job(client):
    ...     event("etl.rows_read", partition=3, rows=1000)             # in the payload
    ...     return client.submit(event, "etl.done", ok=True).result()  # in a task
    >>> topics = run_job(JobSpec(name="events", payload=job, record_dir="runs",
    ...                          cluster={"n_workers": 1})).record["events"]["topics"]
    >>> topics["etl.rows_read"], topics["etl.done"]
    (1, 1)
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError("event topic must be a non-empty string")
    msg = _jsonable(data)
    try:
        from distributed import get_worker
        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None:
        msg.setdefault("worker_name", str(worker.name))
        worker.log_event(topic, msg)
        return
    client = _driver_client()
    if client is None:
        raise RuntimeError("daskjob.event() needs a running daskjob job (no Dask client or worker found)")
    msg.setdefault("worker_name", "driver")
    client.log_event(topic, msg)


def _driver_client():
    from distributed import Client
    client = Client.current(allow_global=True) if _has_current_client() else None
    if client is not None:
        return client
    from .run import active_clients
    clients = active_clients()
    if len(clients) == 1:
        return clients[0]
    if os.environ.get("DASK_SCHEDULER_ADDRESS"):
        # a script payload: the same process-wide client a DaskJob runner pod would use
        from distributed import get_client
        return get_client()
    return None


def _has_current_client() -> bool:
    from distributed import Client
    try:
        Client.current(allow_global=True)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- workers
class _EventLogHandler(logging.Handler):
    """Turns log records on a worker into LOG_TOPIC events (re-entrancy safe)."""

    def __init__(self, worker, level: int):
        super().__init__(level)
        self.worker = worker
        self.name_ = str(worker.name)
        self._local = threading.local()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            text = self.format(record)
            self.worker.log_event(LOG_TOPIC, {
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
            _recreate_module(name, file, source)
        self._handler = None
        if not self.forward_logs:
            return
        level = logging.getLevelName(self.level)
        handler = _EventLogHandler(worker, level)
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
        handler = getattr(self, "_handler", None)
        if handler is not None:
            for name in self._loggers:
                logging.getLogger(name).removeHandler(handler)
            logging.getLogger().setLevel(self._root_level)
            sys.stdout, sys.stderr = self._stdout, self._stderr
        if self.own_workers:
            from .procs import stop_children
            stop_children(os.getpid(), grace=2.0)


def task_progress(dask_scheduler=None, plugin: str = "") -> dict[str, int]:
    """Run on the scheduler: the firehose plugin's task counters."""
    p = dask_scheduler.plugins.get(plugin)
    return dict(p.progress) if p is not None else {"added": 0, "done": 0, "erred": 0}


def _recreate_module(name: str, file: str, source: str) -> None:
    """Make `import name` (and unpickling by reference) work on this worker."""
    import types
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__file__ = file
    sys.modules[name] = module
    try:
        exec(compile(source, file, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        logger.exception("daskjob: could not recreate the payload module %r from %s", name, file)


def _emit_barrier(dask_worker=None, token: str = "") -> None:
    # runs on each worker's event loop, after the log_event calls that tasks queued
    dask_worker.log_event(BARRIER_TOPIC, {"token": token, "worker_name": str(dask_worker.name)})


# --------------------------------------------------------------------------- scheduler
class FirehosePlugin(SchedulerPlugin):
    """Forwards every event of every topic to one client, as it is logged."""

    def __init__(self, client_id: str, name: str,
                 modules: dict[str, tuple[str, str]] | None = None):
        self.client_id = client_id
        self.name = name
        # payload modules the scheduler cannot import by name: it unpickles task graphs
        # too, so it needs them as much as the workers do (see WorkerObserver)
        self.modules = dict(modules or {})
        self.names: dict[str, str] = {}
        # task progress for the CLI's progress bar
        self.progress = {"added": 0, "done": 0, "erred": 0}

    def transition(self, key, start: str, finish: str, *args, **kwargs) -> None:
        if start == "released" and finish in ("waiting", "queued", "processing", "no-worker"):
            self.progress["added"] += 1
        elif finish == "memory":
            self.progress["done"] += 1
        elif finish == "erred":
            self.progress["erred"] += 1

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        for module, (file, source) in self.modules.items():
            _recreate_module(module, file, source)
        for addr, ws in scheduler.workers.items():
            self.names[addr] = str(ws.name)

    def add_worker(self, scheduler, worker: str) -> None:
        # the scheduler logs "add-worker" before the worker is registered, so the name is
        # only known here: announce the join from this hook instead
        ws = scheduler.workers.get(worker)
        self.names[worker] = str(ws.name) if ws is not None else worker
        self._send("all", {"action": "worker-joined", "worker": worker}, self.names[worker])

    def remove_client(self, scheduler, client: str) -> None:
        if client == self.client_id:
            self.client_id = None  # our driver left: nobody to forward to

    def log_event(self, topic: str, msg: Any) -> None:
        if (self.client_id is None or topic == FIREHOSE_TOPIC
                or self.client_id not in self.scheduler.client_comms):
            return
        if topic.startswith(_ADDRESS_PREFIXES):
            # per-worker topics repeat what the scheduler also logs under "all", except
            # a worker pausing at its memory limit or resuming, which only goes here
            if isinstance(msg, dict) and msg.get("action") == "worker-status-change":
                self._send("all", {**msg, "worker": topic}, self.names.get(topic, topic))
            return
        name = None
        if isinstance(msg, dict) and isinstance(msg.get("worker"), str):
            addr = msg["worker"]
            name = self.names.get(addr)
            if name is None and addr in self.scheduler.workers:
                name = self.names[addr] = str(self.scheduler.workers[addr].name)
        self._send(topic, msg, name)

    def _send(self, topic: str, msg: Any, name: str | None) -> None:
        if self.client_id is None or self.client_id not in self.scheduler.client_comms:
            return
        wrapped = {"topic": topic, "msg": msg, "name": name}
        self.scheduler.send_all(
            {self.client_id: [{"op": "event", "topic": FIREHOSE_TOPIC,
                               "event": (time.time(), wrapped)}]},
            worker_msgs={})


# ------------------------------------------------------------------------------ driver
class Collector:
    """Driver side: one writer thread for events.jsonl and logs/, callbacks, counters."""

    def __init__(self, events_path: str, logs_dir: str, *, run_id: str,
                 on_event: Callable[[dict], Any] | None = None, forward_logs: bool = True,
                 tail_lines: int = 50, dask_log_level: int = logging.WARNING):
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
        ts, wrapped = event
        self._q.put((ts, wrapped["topic"], wrapped["msg"], wrapped.get("name")))

    def lifecycle(self, what: str, **data: Any) -> None:
        """An event from the driver itself (provisioned, payload started, ...)."""
        self._q.put((time.time(), LIFECYCLE_TOPIC, {"event": what, **_jsonable(data)}, "driver"))

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
            try:
                self._handle(*item)
            except Exception:
                logger.exception("daskjob: could not record an event")

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
        name = display_name(name) if name is not None else None
        if msg["action"] == "worker-joined":
            self.live_workers.add(msg.get("worker"))
            what, data = "worker joined", {"worker": name, "address": msg.get("worker")}
        else:
            self.live_workers.discard(msg.get("worker"))
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
        self._events.write(json.dumps(record, default=str) + "\n")
        self.event_count += 1
        self.topics[record["topic"]] += 1
        if record["topic"] == LIFECYCLE_TOPIC:
            self._events.flush()  # rare and the ones a watcher waits for
            logger.info("[%s] %s", self.run_id, _describe_lifecycle(record))
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception:
                logger.exception("daskjob: on_event callback failed")

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
                           msg.get("message", ""))

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


def display_name(name: Any) -> str:
    """LocalCluster names workers 0, 1, ...: show them as worker-0, worker-1."""
    text = str(name)
    return f"worker-{text}" if text.isdigit() else text


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


def _describe_lifecycle(record: dict) -> str:
    data = dict(record["data"])
    what = data.pop("event", "?")
    detail = ", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], {}))
    return f"{what}" + (f" ({detail})" if detail else "")
