"""Where a run is: one explicit state, and the wall-clock time of each phase."""

from __future__ import annotations

import contextlib
import enum
import time
from typing import Iterator


class RunState(enum.IntEnum):
    """The phases of a run, in order (a run only moves forward)."""

    CREATED = 0
    PROVISIONING = 1
    WAITING_FOR_WORKERS = 2
    CHECKING_ENVIRONMENT = 3
    RUNNING_PAYLOAD = 4
    SNAPSHOT = 5
    TEARING_DOWN = 6
    FINISHED = 7

    @property
    def workers_arrived(self) -> bool:
        return self >= RunState.CHECKING_ENVIRONMENT


class Phases:
    """Wall-clock phase timings for the record."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, float]] = {}
        self._t0 = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.data[name] = {"start_s": round(start - self._t0, 3),
                               "seconds": round(time.monotonic() - start, 3)}


class Cancelled(Exception):
    """Raised inside a run when cancel() was called (the reason is the message)."""
