"""Scheduler side: every event of every topic goes to the run's client as it is logged.

Dask keeps only the last 1,000 events per topic, so the run does not read `get_events()`
at the end: `FirehosePlugin` forwards each event to the run's client on FIREHOSE_TOPIC,
names the worker it came from, and counts task transitions for the progress bar.

Events reach the scheduler in batches (a worker's batched stream); they leave it in
batches too: the plugin queues them and sends what queued up once the scheduler's event
loop has handled the batch at hand, as one message. Sending each event as its own
message costs the scheduler and the run's client more than everything else an event
costs together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from ..payload import recreate_module
from .events import ADDRESS_PREFIXES, BATCH_TOPIC, FIREHOSE_TOPIC, PROGRESS_TOPIC

# how often the task counters go to the run's record (only when they changed)
PROGRESS_INTERVAL_MS = 1000


def firehose_name(run_id: str) -> str:
    """The scheduler plugin's name for one run."""
    return f"daskjob-firehose-{run_id}"


def task_progress(dask_scheduler=None, plugin: str = "") -> dict[str, int]:
    """Run on the scheduler: the firehose plugin's task counters."""
    p = dask_scheduler.plugins.get(plugin)
    return dict(p.progress) if p is not None else {"added": 0, "done": 0, "erred": 0}


def group_demand(scheduler: Any, resources: list[str]) -> int:
    """Tasks that wait for, or run on, workers holding any of these resources: what a
    worker group that has them is sized by (backends/local_groups.py)."""
    wanted = set(resources or ())
    if not wanted:
        return 0
    running = sum(len(ws.processing) for ws in scheduler.workers.values()
                  if wanted & set(ws.resources or {}))
    waiting = sum(1 for ts in scheduler.unrunnable
                  if wanted & set(ts.resource_restrictions or {}))
    return running + waiting


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
        self._pending: list[tuple[float, str, Any, str | None]] = []
        # task progress for the CLI's progress bar, and over time for the run report
        self.progress = {"added": 0, "done": 0, "erred": 0}
        self._progress_sent = dict(self.progress)
        self._progress_timer = None

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
            recreate_module(module, file, source)
        for addr, ws in scheduler.workers.items():
            self.names[addr] = str(ws.name)
        scheduler.handlers["daskjob_group_demand"] = (
            lambda comm=None, resources=(): group_demand(scheduler, list(resources)))
        from tornado.ioloop import PeriodicCallback
        self._progress_timer = PeriodicCallback(self._send_progress, PROGRESS_INTERVAL_MS)
        self._progress_timer.start()

    async def close(self) -> None:
        if self._progress_timer is not None:
            self._progress_timer.stop()

    def _send_progress(self) -> None:
        if self.progress != self._progress_sent:
            self._progress_sent = dict(self.progress)
            self._send(PROGRESS_TOPIC, dict(self.progress), None)

    def add_worker(self, scheduler, worker: str) -> None:
        # the scheduler logs "add-worker" before the worker is registered, so the name is
        # only known here: announce the join from this hook instead
        ws = scheduler.workers.get(worker)
        self.names[worker] = str(ws.name) if ws is not None else worker
        size = {} if ws is None else {"nthreads": ws.nthreads, "memory_limit": ws.memory_limit,
                                      "resources": dict(ws.resources or {})}
        self._send("all", {"action": "worker-joined", "worker": worker, **size},
                   self.names[worker])

    def remove_client(self, scheduler, client: str) -> None:
        if client == self.client_id:
            self.client_id = None  # our driver left: nobody to forward to

    def log_event(self, topic: str, msg: Any) -> None:
        if (self.client_id is None or topic == FIREHOSE_TOPIC
                or self.client_id not in self.scheduler.client_comms):
            return
        if topic == BATCH_TOPIC and isinstance(msg, dict):
            # a worker's buffered events, each as if the worker had logged it alone
            worker = msg.get("worker")
            for ts, one_topic, one in msg.get("events") or ():
                if isinstance(one, dict) and worker is not None:
                    one["worker"] = worker
                self._forward(one_topic, one, ts)
            # the scheduler keeps the last events of each topic, and these hold many:
            # forwarded, they need not stay in the driver's memory
            broker = getattr(self.scheduler, "_broker", None)
            if broker is not None:
                broker.truncate(BATCH_TOPIC)
            return
        self._forward(topic, msg, time.time())

    def _forward(self, topic: str, msg: Any, ts: float) -> None:
        if topic.startswith(ADDRESS_PREFIXES):
            # per-worker topics repeat what the scheduler also logs under "all", except
            # a worker pausing at its memory limit or resuming, which only goes here
            if isinstance(msg, dict) and msg.get("action") == "worker-status-change":
                self._send("all", {**msg, "worker": topic}, self.names.get(topic, topic), ts)
            return
        name = None
        if isinstance(msg, dict) and isinstance(msg.get("worker"), str):
            addr = msg["worker"]
            name = self.names.get(addr)
            if name is None and addr in self.scheduler.workers:
                name = self.names[addr] = str(self.scheduler.workers[addr].name)
        self._send(topic, msg, name, ts)

    def _send(self, topic: str, msg: Any, name: str | None, ts: float | None = None) -> None:
        if self.client_id is None or self.client_id not in self.scheduler.client_comms:
            return
        self._pending.append((time.time() if ts is None else ts, topic, msg, name))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # not on the scheduler's event loop: send now
                self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self.client_id is None or self.client_id not in self.scheduler.client_comms:
            return
        self.scheduler.send_all(
            {self.client_id: [{"op": "event", "topic": FIREHOSE_TOPIC,
                               "event": (time.time(), {"batch": batch})}]},
            worker_msgs={})
