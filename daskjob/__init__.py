"""daskjob: run Dask work on an ephemeral cluster that is always torn down.

>>> from daskjob import ClusterSpec, JobSpec, run_job
>>> def total(n, client):
...     return sum(client.gather(client.map(abs, range(-n, n))))
>>> result = run_job(JobSpec(name="total", payload=total, params={"n": 3}, record_dir="runs",
...                          cluster=ClusterSpec(n_workers=1)))
>>> result.value, result.record["status"], result.record["teardown"]["cluster"]
(9, 'succeeded', 'closed')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__  # noqa: F401

from . import config as _config  # noqa: F401  (loads the daskjob dask.config defaults)
from .errors import JobCancelled, JobFailed, JobTimedOut, SpecError, StartupFailed
from .observe import event

# The driver's side is imported when first used: a worker process imports daskjob for
# `daskjob.event` and its observer plugin, and needs neither the lifecycle nor the spec.
_LAZY = {
    "ClusterSpec": ".spec", "JobSpec": ".spec", "JobRun": ".lifecycle",
    "JobResult": ".lifecycle", "run_job": ".lifecycle", "cancel_all": ".live",
    "install_signal_handlers": ".live",
}

if TYPE_CHECKING:
    from .lifecycle import JobResult, JobRun, run_job
    from .live import cancel_all, install_signal_handlers
    from .spec import ClusterSpec, JobSpec


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in ("backends", "lifecycle", "spec", "live", "procs", "record", "reap", "cli"):
        # `import daskjob` used to import these: `daskjob.backends.x` keeps working
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'daskjob' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ClusterSpec", "JobSpec", "JobRun", "JobResult", "run_job", "event", "cancel_all",
    "install_signal_handlers", "JobFailed", "JobCancelled", "JobTimedOut", "StartupFailed",
    "SpecError",
]
