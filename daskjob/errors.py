"""Exceptions raised by daskjob. All failures of a run derive from JobFailed."""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """A JobSpec/ClusterSpec is invalid. Raised before any process starts."""


class JobFailed(RuntimeError):
    """A run ended without success. `.record` is the written RunRecord (a dict)."""

    status = "failed"

    def __init__(self, message: str, *, record: dict[str, Any] | None = None,
                 worker_traceback: str | None = None, log_tail: list[str] | None = None):
        super().__init__(message)
        self.record = record or {}
        self.worker_traceback = worker_traceback
        self.log_tail = log_tail or []

    @property
    def record_path(self) -> str | None:
        return self.record.get("record_path")


class StartupFailed(JobFailed):
    """Workers never came up, died on start, or the environment check failed."""

    status = "startup_failed"


class JobTimedOut(JobFailed):
    """The payload ran past `timeout`."""

    status = "timed_out"


class JobCancelled(JobFailed):
    """The run was cancelled (cancel(), SIGTERM, SIGINT, KeyboardInterrupt)."""

    status = "cancelled"
