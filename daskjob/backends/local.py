"""`local`: a distributed.LocalCluster of worker processes on this machine (the default)."""

from __future__ import annotations

import inspect
import logging
import traceback
from typing import TYPE_CHECKING, Any

from distributed import LocalCluster, Nanny, Worker
from distributed.core import Status

from . import Backend, ClusterContext, register_backend

if TYPE_CHECKING:
    from ..spec import ClusterSpec


class RecordingNanny(Nanny):
    """A Nanny that keeps the reason its worker process failed to start."""

    startup_error: str | None = None

    async def start_unsafe(self):
        try:
            return await super().start_unsafe()
        except BaseException as e:
            self.startup_error = "".join(traceback.format_exception(e)).rstrip()
            raise


def _accepted_kwargs() -> set[str]:
    names: set[str] = set()
    for fn in (LocalCluster.__init__, Nanny.__init__, Worker.__init__):
        names.update(p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs"))
    return names


@register_backend
class LocalBackend(Backend):
    name = "local"
    shares_filesystem = True
    reserved_options = frozenset({
        "n_workers", "threads_per_worker", "memory_limit", "processes", "host",
        "scheduler_port", "dashboard_address", "env", "worker_class", "death_timeout",
        "preload", "asynchronous", "silence_logs",
    })

    def validate(self, spec: "ClusterSpec") -> None:
        super().validate(spec)
        unknown = set(spec.options) - _accepted_kwargs() - self.reserved_options
        if unknown:
            raise ValueError(f"options: {', '.join(sorted(unknown))} not accepted by "
                             "distributed.LocalCluster / Nanny / Worker")

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        # Workers start through scale() so that a worker that never arrives cannot block
        # here: the caller watches the startup deadline and can always close the cluster.
        return LocalCluster(
            n_workers=0,
            threads_per_worker=spec.threads_per_worker,
            memory_limit=spec.memory_bytes if spec.memory_bytes else "auto",
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address="127.0.0.1:0" if spec.dashboard else None,
            worker_class=RecordingNanny,
            env=dict(ctx.worker_env),
            death_timeout=spec.death_timeout_s,
            preload=list(spec.preload) or None,
            silence_logs=logging.WARNING,
            **spec.options,
        )

    def process_ids(self, cluster: Any) -> list[int]:
        pids = []
        for nanny in list(getattr(cluster, "workers", {}).values()):
            proc = getattr(getattr(nanny, "process", None), "process", None)
            pid = getattr(proc, "pid", None)
            if pid:
                pids.append(pid)
        return pids

    def failure_reason(self, cluster: Any) -> str | None:
        nannies = list(getattr(cluster, "workers", {}).values())
        if not nannies or not all(n.status == Status.failed for n in nannies):
            return None
        errors = {getattr(n, "startup_error", None) for n in nannies} - {None}
        detail = "\n\n".join(sorted(errors)) or "(the worker process gave no reason)"
        return f"all {len(nannies)} worker processes failed to start:\n{detail}"
