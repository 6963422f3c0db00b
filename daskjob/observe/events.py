"""Structured events: the topics daskjob uses, and `event()` for payloads and tasks.

A task on a worker logs its event on that worker (distributed's `log_event`); the
payload itself, in the driver, logs it through the run's client. Either way the
scheduler forwards it to the run's collector (see scheduler.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

# log records the core makes for a run carry this attribute with the run's id, so that a
# front end can pick its run's lines out of the `daskjob` loggers (see daskjob.frontend)
RUN_MARK = "daskjob_run"

LOG_TOPIC = "daskjob.log"
FIREHOSE_TOPIC = "daskjob.firehose"
BARRIER_TOPIC = "daskjob.barrier"
# a worker's events, sent together (see observe/worker.py EventBuffer)
BATCH_TOPIC = "daskjob.batch"
# the Worker attribute holding the run's EventBuffer, once the run's plugin set it up
BUFFER_ATTR = "daskjob_event_buffer"
LIFECYCLE_TOPIC = "daskjob.lifecycle"
# the scheduler's task counters {added, done, erred}, each time they changed
PROGRESS_TOPIC = "daskjob.progress"
_FLUSH = "daskjob.internal.flush"
ADDRESS_PREFIXES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


# topics distributed logs events on for itself
_DASK_TOPICS = frozenset({"all", "scheduler", "worker", "stealing", "worker-fail-hard",
                          "worker-restart-memory", "invalid-worker-transition",
                          "worker-transition-counter-warning", "worker-get-client"})


def is_dask_internal(topic: str) -> bool:
    """Topics of daskjob's and distributed's own events (kept in events.jsonl, not worth
    a log line): not the user's `daskjob.event` topics, nor `print`."""
    return (topic in _DASK_TOPICS or topic.startswith(("Client-", "daskjob."))
            or topic.startswith(ADDRESS_PREFIXES))


_SCALARS = (str, int, float, bool, type(None))


def jsonable(value: Any) -> Any:
    """Events must be msgpack-serialisable: keep JSON types, stringify the rest."""
    if type(value) is dict and all(type(k) is str and type(v) in _SCALARS
                                   for k, v in value.items()):
        return dict(value)  # the usual event: nothing to convert
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
    msg = jsonable(data)
    try:
        from distributed import get_worker
        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None:
        msg.setdefault("worker_name", str(worker.name))
        buffer = getattr(worker, BUFFER_ATTR, None)
        if buffer is not None:
            buffer.add(topic, msg)
        else:  # a worker no run observes
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
    from ..live import active_clients
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



def display_name(name: Any) -> str:
    """LocalCluster names workers 0, 1, ...: show them as worker-0, worker-1."""
    text = str(name)
    return f"worker-{text}" if text.isdigit() else text


def marked(run_id: str) -> dict[str, str]:
    """`extra=` for a log call about one run."""
    return {RUN_MARK: run_id}
