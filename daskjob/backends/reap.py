"""THE rule for what a reaper may stop, used for every backend and for this machine's
processes.

Every cluster a run starts carries its labels: `daskjob/driver` (host, pid and start
time of the process driving the run), `daskjob/started` and, for a run with a timeout,
`daskjob/expires` (start + startup timeout + timeout + grace: the run has ended by then,
whatever happened). A cluster is a leftover when

- its driver is known to be gone: it ran on this host and that process is no more; or
- its expiry has passed.

A cluster whose driver ran on another host (its process cannot be looked at from here)
and that has not expired may be a live run: it is never touched, unless `--older-than`
is given, which says that runs that old are dead. `--older-than` also spares every
younger cluster, whatever its driver.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Mapping

from ..procs import DRIVER_LABEL, EXPIRES_LABEL, STARTED_LABEL, driver_label_alive


class Driver(enum.Enum):
    ALIVE = "alive"
    GONE = "gone"
    ELSEWHERE = "on another host"


@dataclass(frozen=True)
class Verdict:
    leftover: bool
    why: str


def driver_of(labels: Mapping[str, str]) -> Driver:
    alive = driver_label_alive(labels.get(DRIVER_LABEL))
    return Driver.ELSEWHERE if alive is None else Driver.ALIVE if alive else Driver.GONE


def _number(labels: Mapping[str, str], key: str) -> float | None:
    try:
        return float(labels[key])
    except (KeyError, TypeError, ValueError):
        return None


def verdict(labels: Mapping[str, str], *, older_than: float | None = None,
            started: float | None = None, now: float | None = None,
            driver: Driver | None = None) -> Verdict:
    """Is the cluster these labels describe a leftover? `started`: when the cluster
    manager says it started, for clusters whose labels do not say; `driver`: the
    driver's state when the caller knows it better than the label (a process's own
    environment on this machine)."""
    now = time.time() if now is None else now
    driver = driver_of(labels) if driver is None else driver
    started = _number(labels, STARTED_LABEL) or started
    expires = _number(labels, EXPIRES_LABEL)
    age = None if started is None else now - started
    if older_than and (age is None or age < older_than):
        return Verdict(False, f"younger than {older_than:.0f}s")
    if driver is Driver.ALIVE:
        return Verdict(False, "its driver is alive")
    if driver is Driver.GONE:
        return Verdict(True, "its driver is gone")
    if expires is not None and now > expires:
        return Verdict(True, "past its expiry (driver on another host)")
    if older_than:
        return Verdict(True, f"driver on another host, older than {older_than:.0f}s")
    return Verdict(False, "driver on another host and not expired: maybe a live run")


def age_of(labels: Mapping[str, str], started: float | None = None,
           now: float | None = None) -> float | None:
    started = _number(labels, STARTED_LABEL) or started
    return None if started is None else (time.time() if now is None else now) - started


def describe(labels: Mapping[str, Any]) -> str:
    return str(labels.get(DRIVER_LABEL) or "?")
