"""Bringing a run's cluster up: start it under the startup deadline, connect the client,
put the observers on it, wait for the workers, check the software on them; and the
health watch that tells, while the run lives, that the cluster can no longer work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable

from distributed import Client

from ..backends import Backend, ClusterContext, ClusterHandle
from ..deadline import POLL, call_with_deadline
from ..errors import JobFailed, StartupFailed
from ..observe.collector import Collector
from ..observe.events import FIREHOSE_TOPIC, marked
from ..observe.scheduler import FirehosePlugin, firehose_name
from ..observe.worker import WorkerObserver
from ..payload import ResolvedPayload, module_source
from .outcome import one_line
from .state import Cancelled

logger = logging.getLogger("daskjob")

SCHEDULER_LOST_AFTER = 10.0   # seconds without a scheduler before a run fails


def start_cluster(backend: Backend, spec: Any, ctx: ClusterContext, deadline: float,
                  check_cancel: Callable[[], None]) -> ClusterHandle:
    """The backend's create(), bounded by the startup deadline and cancel(). A cluster
    that comes up after the run stopped waiting is closed."""
    def close_late(handle: ClusterHandle) -> None:
        backend.close(handle, timeout=10)

    try:
        return call_with_deadline(
            lambda: backend.create(spec.cluster, ctx), deadline, check=check_cancel,
            expired=lambda: StartupFailed(f"the {spec.cluster.backend} cluster did not start "
                                          f"within startup_timeout ({spec.startup_timeout})"),
            on_late_result=close_late, name=f"daskjob-provision-{ctx.run_id}")
    except (Cancelled, StartupFailed):
        raise
    except Exception as e:
        raise StartupFailed(f"could not start the {spec.cluster.backend} cluster: "
                            f"{one_line(e)}") from e


def connect(backend: Backend, handle: ClusterHandle, deadline: float) -> Client:
    return Client(backend.client_target(handle), set_as_default=False,
                  timeout=max(1.0, deadline - time.monotonic()))


def attach_observers(client: Client, run_id: str, payload: ResolvedPayload, backend: Backend,
                     handle: ClusterHandle, ctx: ClusterContext, collector: Collector,
                     spec: Any) -> None:
    """The scheduler plugin that forwards every event to the collector, and the worker
    plugin that forwards every log line (and, on workers the run owns, cleans their
    environment and makes the payload's code importable)."""
    # A loose module that workers could import by name if they shared our files is
    # recreated on each remote worker, and on the scheduler, which unpickles task
    # graphs, from its source. (cloudpickle's pickle-by-value is not enough here:
    # distributed decides per top-level object, so a function from such a module
    # inside a task is still pickled by reference.) A module that no worker can
    # import by name, such as a DAG file, travels by value instead: see by_value.
    shared = backend.shares_filesystem
    ship = module_source(payload.module) if (
        payload.module and payload.importable_by_name and not shared) else {}
    client.subscribe_topic(FIREHOSE_TOPIC, collector.on_firehose)
    client.register_plugin(FirehosePlugin(client.id, name=firehose_name(run_id),
                                          modules=ship))
    client.register_plugin(WorkerObserver(
        run_id, drop_env=ctx.drop_env, sys_path=payload.worker_sys_path if shared else [],
        modules=ship, level=spec.worker_log_level, forward_logs=spec.forward_logs,
        echo_streams=not shared, own_workers=handle.owned,
        stderr_dir=collector.logs_dir if shared else None), name=f"daskjob-observer-{run_id}")


def detach_observers(client: Client, run_id: str) -> None:
    """A borrowed cluster keeps running: take the run's plugins back off it."""
    if client.status == "running":
        client.unregister_worker_plugin(f"daskjob-observer-{run_id}")
        client.unregister_scheduler_plugin(firehose_name(run_id))


def wait_for_workers(client: Client, n: int, deadline: float, check: Callable[[], None],
                     startup_timeout: Any, note: Callable[[], str | None],
                     log_tail: Callable[[], list[str]]) -> None:
    """Until n workers are up; `check` raises when waiting is pointless (cancel, a
    verdict on the workers). At the deadline: StartupFailed with what is known. With
    n == 0 (groups that adapt from a minimum of 0) there is nothing to wait for."""
    while n > 0:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            have = len(client.scheduler_info(n_workers=-1)["workers"])
            said, tail = note(), "\n".join(log_tail())
            raise StartupFailed(
                f"only {have} of {n} workers arrived within startup_timeout ({startup_timeout})"
                + (f"; {said}" if said else "") + (f"; last worker log lines:\n{tail}" if tail else ""))
        try:
            client.wait_for_workers(n, timeout=min(left, 0.5))
            return
        except (TimeoutError, asyncio.TimeoutError):
            continue


def check_environment(client: Client, policy: str, run_id: str) -> dict[str, Any]:
    """The software on scheduler, workers and driver compared (distributed's own check)."""
    if policy == "off":
        return {"policy": "off"}
    from distributed.versions import error_message
    versions = client.get_versions(check=False)
    msg = error_message(versions["scheduler"], versions["workers"], versions["client"])
    # distributed reports any mismatch of its checked packages as a "warning"
    mismatch = (msg["error"] + "\n" + msg["warning"]).strip()
    if mismatch:
        text = ("software on the workers does not match the driver "
                "(set version_check='warn' to run anyway):\n" + mismatch)
        if policy == "error":
            raise StartupFailed(text)
        logger.warning(text, extra=marked(run_id))
    return {"policy": policy, "ok": not mismatch, "mismatch": mismatch or None}


class HealthWatch:
    """Tells, when asked, that the cluster can no longer run the payload: the scheduler
    lost, the cluster stopped, the cluster manager's verdict on the workers, or (on a
    cluster the run owns) every worker gone for longer than the startup timeout."""

    def __init__(self, backend: Backend, handle: ClusterHandle, client: Client,
                 live_workers: Callable[[], int], regrow_within: float, regrow_text: str):
        self.backend, self.handle, self.client = backend, handle, client
        self.live_workers = live_workers
        self.regrow_within, self.regrow_text = regrow_within, regrow_text
        self._disconnected_since: float | None = None
        self._no_workers_since: float | None = None

    def failure(self) -> str | None:
        status = self.client.status
        if status == "running":
            self._disconnected_since = None
        elif status in ("connecting", "newly-created"):
            # distributed retries for a minute; a scheduler gone this long is gone
            now = time.monotonic()
            self._disconnected_since = self._disconnected_since or now
            if now - self._disconnected_since > SCHEDULER_LOST_AFTER:
                return (f"lost the connection to the scheduler at {self.client.scheduler.address} "
                        f"for more than {SCHEDULER_LOST_AFTER:.0f}s")
        else:
            return f"lost the connection to the scheduler (client status {status!r})"
        if not self.handle.owned:
            return None
        cluster_status = getattr(getattr(self.handle.cluster, "status", None), "name", "")
        if cluster_status in ("closed", "failed", "closing"):
            return f"the cluster stopped unexpectedly (status {cluster_status})"
        return self.backend.failure_reason(self.handle)

    def during_payload(self) -> None:
        """Raise JobFailed when the payload cannot continue on this cluster."""
        reason = self.failure()
        if reason:
            raise JobFailed(f"{reason}; the payload cannot continue")
        if not self.handle.owned or self.live_workers():
            self._no_workers_since = None
            return
        now = time.monotonic()
        self._no_workers_since = self._no_workers_since or now
        if now - self._no_workers_since > self.regrow_within:
            raise JobFailed("all workers are gone and none came back within "
                            f"startup_timeout ({self.regrow_text})")


def every(seconds: float, fn: Callable[[], None]) -> Callable[[], None]:
    """fn, called at most once per `seconds` (the health checks ask the cluster
    manager; the waits that call them look every POLL seconds)."""
    last = [0.0]

    def throttled() -> None:
        now = time.monotonic()
        if now - last[0] >= max(seconds, POLL):
            last[0] = now
            fn()
    return throttled


@contextlib.contextmanager
def quietly(what: str, run_id: str):
    """A best-effort step: when it fails, the run goes on, and the log says so."""
    try:
        yield
    except Exception as e:
        logger.warning("daskjob: run %s: %s failed: %s", run_id, what, one_line(e),
                       extra=marked(run_id))
