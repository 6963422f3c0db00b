"""Tasks written for flytekitplugins-dask run under `@dask_task` unchanged but for the
decorator: its `Dask(scheduler=Scheduler(...), workers=WorkerGroup(...))` task config
becomes the cluster section of a daskjob spec.

What maps: `workers.number_of_workers` -> n_workers; the workers' cpu (limits, else
requests) -> threads_per_worker (rounded up, at least 1); their memory -> memory_per_worker;
a GPU limit -> the Dask resource `GPU` on every worker (annotate GPU work with
`dask.annotate(resources={"GPU": 1})`); an image -> options.image on the kubernetes
backend. The scheduler's requests and limits have no counterpart on an ephemeral
cluster of this machine and are ignored.
"""

from __future__ import annotations

import math
from typing import Any

from dask.utils import parse_bytes


def is_flytekit_dask_config(config: Any) -> bool:
    """A flytekitplugins.dask.Dask (told by its shape: that plugin need not be installed)."""
    workers = getattr(config, "workers", None)
    return hasattr(config, "scheduler") and hasattr(workers, "number_of_workers")


def cluster_from_flytekit_dask(config: Any, cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cluster section for a flytekitplugins-dask `Dask` config, over `cluster` (the
    backend and anything else `@dask_task(cluster=...)` gave)."""
    workers = config.workers
    out = dict(cluster or {})
    out["n_workers"] = int(workers.number_of_workers or 1)
    cpu = _resource(workers, "cpu")
    if cpu is not None:
        out["threads_per_worker"] = max(1, math.ceil(_cpus(cpu)))
    mem = _resource(workers, "mem")
    if mem is not None:
        out["memory_per_worker"] = parse_bytes(str(mem))
    gpu = _resource(workers, "gpu")
    if gpu is not None and float(gpu) > 0:
        out["resources"] = {**(out.get("resources") or {}), "GPU": float(gpu)}
    if workers.image and out.get("backend") == "kubernetes":
        out["options"] = {"image": workers.image, **(out.get("options") or {})}
    return out


def _resource(group: Any, name: str) -> Any:
    for resources in (group.limits, group.requests):
        value = getattr(resources, name, None) if resources is not None else None
        if value not in (None, ""):
            return value
    return None


def _cpus(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
