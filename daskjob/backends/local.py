"""`local`: a distributed.LocalCluster of worker processes on this machine (the default)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dask.config
from dask.config import merge
from distributed import LocalCluster, Nanny, Worker
from distributed.core import Status
from distributed.security import Security

from pydantic import ConfigDict, model_validator

from ..groups import GroupPlan
from .base import Backend, ClusterContext, ClusterHandle
from .common import BackendOptions
from .adaptive import GroupAdaptive
from .local_dashboard import SCHEDULER_KWARGS as LAZY_DASHBOARD, serve_on_first_visit
from .local_fork import RunForkContext, drop_matching, forking_from, worker_process_env
from .local_groups import GroupedLocalCluster

if TYPE_CHECKING:
    from ..spec import ClusterSpec


class _WhileSpawning:
    """A change to this process that holds while nannies spawn worker processes. Nested
    and concurrent starts (clusters in one process start workers concurrently) share it:
    made by the first to enter, undone by the last to leave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self, *args: Any):
        with self._lock:
            self._depth += 1
            self._make(self._depth == 1, *args)
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._undo()

    def _make(self, first: bool, *args: Any) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError


class _ScrubbedEnviron(_WhileSpawning):
    """Variables the run drops, out of os.environ while worker processes are spawned: a
    spawned worker inherits the environment at exec time, and whatever it imports
    before daskjob's plugin cleans it would see them (under Airflow's task runner,
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:/// kills a worker that
    imports airflow)."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: dict[str, str] = {}

    def _make(self, first: bool, patterns: list[str]) -> None:
        for name, value in drop_matching(os.environ, patterns).items():
            self._saved.setdefault(name, value)

    def _undo(self) -> None:
        os.environ.update(self._saved)
        self._saved.clear()


class _MainNotRerun(_WhileSpawning):
    """Keep spawned workers from importing the parent's __main__ again.

    multiprocessing's spawn imports the parent's main script (or `-m` module) in every
    child before the worker starts. A worker needs nothing from it: code defined in
    __main__ reaches workers by value (cloudpickle). Importing it again would cost every
    worker whatever the script imports (for a tool's entry point, `pyflyte` or `airflow`,
    its whole CLI, and under Airflow's task runner an import of airflow with settings
    the worker must not have), and would run the script's top level again: a run started
    there without `if __name__ == "__main__":` would start once more in each worker. So
    __main__'s `__file__` and `__spec__` are hidden from spawn while workers start.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hidden: dict[str, Any] = {}

    def _make(self, first: bool) -> None:
        main = sys.modules.get("__main__")
        if first and main is not None:
            self._hidden = {"__file__": main.__dict__.pop("__file__", None),
                            "__spec__": main.__dict__.get("__spec__"), "main": main}
            main.__spec__ = None

    def _undo(self) -> None:
        main = self._hidden.pop("main", None)
        if main is not None:
            main.__spec__ = self._hidden["__spec__"]
            if self._hidden["__file__"] is not None:
                main.__file__ = self._hidden["__file__"]
        self._hidden = {}


_SPAWN_ENV = _ScrubbedEnviron()
_MAIN = _MainNotRerun()


class RecordingNanny(Nanny):
    """A Nanny that keeps the reason its worker process failed to start, that is
    findable while it starts (SpecCluster lists workers only once they have started),
    and that spawns its worker without the variables the run drops."""

    startup_error: str | None = None
    instances: list["RecordingNanny"] = []  # replaced by a fresh list per cluster
    drop_env: list[str] = []                # likewise
    fork_context: RunForkContext | None = None  # likewise; None: spawn
    stopping: bool = False                  # set when the run ends: no more restarts

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instances.append(self)

    async def start_unsafe(self):
        try:
            with self._starting():
                return await super().start_unsafe()
        except BaseException as e:
            self.startup_error = "".join(traceback.format_exception(e)).rstrip()
            raise

    async def _on_worker_exit(self, exitcode):
        if self.stopping:
            # the run is ending: a worker that dies now (e.g. from the SIGTERM Airflow
            # sends the task's whole process group) stays dead instead of being respawned
            return
        await super()._on_worker_exit(exitcode)

    async def kill(self, timeout: float = 5, reason: str = "nanny-kill") -> None:
        if self.stopping and self.process is not None:
            # The run is over and its tasks' results are not wanted: the worker closes
            # without waiting for running tasks. Otherwise a task that sleeps or hangs
            # holds teardown for 0.8 * timeout before the worker is killed, close to the
            # 5 s Airflow leaves between SIGTERM and SIGKILL.
            await self.process.kill(timeout=timeout, executor_wait=False, reason=reason)
            return
        await super().kill(timeout=timeout, reason=reason)

    async def instantiate(self):
        # also when the nanny restarts a worker that died mid-run
        with self._starting():
            return await super().instantiate()

    @contextlib.contextmanager
    def _starting(self):
        with _SPAWN_ENV.held(self.drop_env), _MAIN.held(), forking_from(self.fork_context):
            yield


def _accepted_kwargs() -> set[str]:
    names: set[str] = set()
    for fn in (LocalCluster.__init__, Nanny.__init__, Worker.__init__):
        names.update(p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs"))
    return names


class LocalOptions(BackendOptions):
    """Any other argument of distributed.LocalCluster, Nanny or Worker; `config` (nested
    dask config for the workers, over what daskjob gives them); and `worker_start`:
    `forkserver` (the default: workers are forked from one process per run that has
    imported distributed once, see local_fork.py) or `spawn` (a fresh interpreter per
    worker, as distributed.LocalCluster does)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    backend: ClassVar[str] = "local"
    reserved: ClassVar[frozenset[str]] = frozenset({
        "n_workers", "threads_per_worker", "memory_limit", "processes", "host",
        "scheduler_port", "dashboard_address", "env", "worker_class", "death_timeout",
        "preload", "asynchronous", "silence_logs", "security", "protocol", "resources",
    })

    config: dict[str, Any] | None = None
    worker_start: Literal["forkserver", "spawn"] = "forkserver"

    @model_validator(mode="after")
    def _known(self):
        unknown = sorted(set(self.model_extra or {}) - _accepted_kwargs())
        if unknown:
            raise ValueError(f"options: {', '.join(unknown)} not accepted by "
                             "distributed.LocalCluster / Nanny / Worker")
        return self


@dataclass(eq=False)
class LocalHandle(ClusterHandle):
    # the cluster's own Nanny class: its instances, and the flag that stops restarts
    nanny_class: type[RecordingNanny] = RecordingNanny
    # the fork server its workers come from (None: spawned)
    fork_context: RunForkContext | None = None


# a group's own settings: the rest of a group's worker comes from the cluster's
_GROUP_KEYS = frozenset({"name", "nthreads", "memory_limit", "resources", "env"})


class LocalBackend(Backend):
    name = "local"
    Options = LocalOptions
    shares_filesystem = True
    can_adapt = True
    can_group = True

    def check_group_options(self, group: str, options: dict[str, Any]) -> None:
        # any other argument of the group's Nanny / Worker
        worker_kwargs = _accepted_kwargs() - set(inspect.signature(LocalCluster.__init__).parameters)
        bad = sorted(set(options) - worker_kwargs | set(options) & _GROUP_KEYS)
        if bad:
            raise ValueError(f"worker_groups.{group}.options: {', '.join(bad)} not accepted "
                             "(a group takes arguments of distributed.Nanny / Worker; its "
                             "threads, memory, resources and env are keys of the group)")

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> LocalHandle:
        # Workers start through scale() so that a worker that never arrives cannot block
        # here: the caller watches the startup deadline and can always close the cluster.
        options = dict(spec.options)
        # the Nanny hands its worker process this config, merged shallowly over the
        # driver's: so pass the whole of it. A user's own `config` option wins.
        worker_config = merge(dask.config.config, ctx.worker_config,
                              options.pop("config", None) or {})
        fork_context = None
        if options.pop("worker_start", "forkserver") == "forkserver":
            # started first: it imports while the scheduler starts
            fork_context = RunForkContext(worker_process_env(ctx.worker_env), list(ctx.drop_env))
            fork_context.start()
        nanny_class = type("RecordingNanny", (RecordingNanny,),
                           {"instances": [], "drop_env": list(ctx.drop_env),
                            "fork_context": fork_context})
        try:
            cluster = _local_cluster(spec, ctx, nanny_class, worker_config, options,
                                     tls=self.uses_tls(spec))
        except BaseException:
            if fork_context is not None:
                fork_context.stop()
            raise
        plans = spec.group_plans()
        for plan in plans[1:]:
            cluster.extra_groups[plan.name] = _group_worker_spec(cluster.new_spec, plan)
        return LocalHandle(cluster=cluster, nanny_class=nanny_class, fork_context=fork_context)

    def shut_down(self, handle: LocalHandle, timeout: float) -> None:
        try:
            super().shut_down(handle, timeout)
        finally:
            if handle.fork_context is not None:
                handle.fork_context.stop()

    def scale(self, handle: LocalHandle, n: int) -> None:
        """Each group to its fixed size, or adapting between its minimum and maximum."""
        if not handle.groups:  # a cluster started outside a run: one group of n
            handle.cluster.scale(n)
        for plan in handle.groups:
            if plan.adapt is None:
                handle.cluster.scale_group(plan.name, int(plan.n_workers or 0))
            else:
                handle.adaptives.append(GroupAdaptive(handle.cluster, plan, handle.on_scale,
                                                      **plan.adapt.adapt_kwargs()))

    def stop_restarts(self, handle: LocalHandle) -> None:
        handle.nanny_class.stopping = True
        super().stop_restarts(handle)

    def process_ids(self, handle: LocalHandle) -> list[int]:
        # a nanny's pid is None before its process exists and after it is gone
        pids = [n.pid for n in list(handle.nanny_class.instances) if n.pid]
        server = handle.fork_context.pid if handle.fork_context else None
        return pids + ([server] if server else [])

    def failure_reason(self, handle: LocalHandle) -> str | None:
        nannies = list(handle.nanny_class.instances)
        if not nannies:
            return None
        gone = (Status.failed, Status.closed, Status.closing, Status.closing_gracefully)
        if not all(n.status in gone for n in nannies):
            return None
        errors = {getattr(n, "startup_error", None) for n in nannies} - {None}
        if all(n.status == Status.failed for n in nannies):
            head = f"all {len(nannies)} worker processes failed to start"
        else:
            head = (f"all {len(nannies)} worker processes exited and will not be restarted "
                    "(a worker that crashes while loading a task closes its nanny)")
        detail = "\n\n".join(sorted(errors))
        return head + (f":\n{detail}" if detail else "")


def _local_cluster(spec: "ClusterSpec", ctx: ClusterContext, nanny_class: type[RecordingNanny],
                   worker_config: dict, options: dict[str, Any], tls: bool) -> GroupedLocalCluster:
    # the dashboard loads on its first visit (local_dashboard.py), unless asked otherwise
    scheduler_kwargs = {**(LAZY_DASHBOARD if spec.dashboard else {}),
                        **(options.pop("scheduler_kwargs", None) or {})}
    cluster = GroupedLocalCluster(
        n_workers=0,
        threads_per_worker=spec.threads_per_worker,
        memory_limit=spec.memory_bytes if spec.memory_bytes else "auto",
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0" if spec.dashboard else None,
        worker_class=nanny_class,
        env=dict(ctx.worker_env),
        death_timeout=spec.death_timeout_s,
        preload=list(spec.preload) or None,
        silence_logs=logging.WARNING,
        config=worker_config,
        # loopback only, so plain TCP unless asked: then a key pair made for this run
        security=Security.temporary() if tls else None,
        **({"resources": dict(spec.resources)} if spec.resources else {}),
        scheduler_kwargs=scheduler_kwargs,
        **options,
    )
    if spec.dashboard and scheduler_kwargs.get("dashboard") is False:
        serve_on_first_visit(cluster.scheduler, scheduler_kwargs.get("http_prefix") or "/")
    return cluster


def _group_worker_spec(default: dict, plan: GroupPlan) -> dict:
    """A group's worker: the cluster's default worker with the group's sizes, resources,
    env and options."""
    options = dict(default["options"])
    options.update(nthreads=plan.threads_per_worker, resources=dict(plan.resources) or None,
                   env={**(options.get("env") or {}), **plan.env}, **plan.options)
    if plan.memory_bytes:
        options["memory_limit"] = plan.memory_bytes
    return {"cls": default["cls"], "options": options}
