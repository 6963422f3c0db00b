"""What a failed @dask_task raises.

Both carry the run record and the worker-side traceback (they are daskjob `JobFailed`s,
so code that catches the core's errors catches these too). A cluster that never came up
is a Flyte *recoverable* error: on a Flyte backend the task's `retries` then apply, as
they do to any infrastructure failure, while a payload that raised is not retried.
"""

from __future__ import annotations

from typing import Any

from flytekit.exceptions.user import FlyteRecoverableException

from daskjob import JobFailed


class DaskTaskFailed(JobFailed):
    """The task's Dask job failed, timed out or was cancelled; `.status` says which."""

    def __init__(self, message: str, *, status: str, record: dict[str, Any] | None = None,
                 worker_traceback: str | None = None, log_tail: list[str] | None = None):
        super().__init__(message, record=record, worker_traceback=worker_traceback,
                         log_tail=log_tail)
        self.status = status


class DaskTaskStartupFailed(DaskTaskFailed, FlyteRecoverableException):
    """The cluster did not come up (workers never arrived, crashed at start, env mismatch)."""

    def __init__(self, message: str, **kwargs: Any):
        super().__init__(message, status="startup_failed", **kwargs)
        # JobFailed's RuntimeError base ends the __init__ chain before FlyteException's,
        # which would have set this (flytekit reads it when it reports the error)
        self._timestamp = None


def as_task_error(error: JobFailed) -> DaskTaskFailed:
    status = error.status
    cls = DaskTaskStartupFailed if status == "startup_failed" else DaskTaskFailed
    kwargs: dict[str, Any] = {"record": error.record, "worker_traceback": error.worker_traceback,
                              "log_tail": error.log_tail}
    if cls is DaskTaskFailed:
        kwargs["status"] = status
    return cls(str(error), **kwargs)
