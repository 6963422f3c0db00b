"""The runs alive in this process, and the safety nets that reach them.

Signal handlers and an atexit hook cancel them; `daskjob.event()` in the driver finds the
one run's client here. This module imports nothing else of daskjob: whatever runs a
job registers it, whatever needs the live runs asks.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import weakref
from typing import Any, Iterator, Protocol

logger = logging.getLogger("daskjob")


class LiveRun(Protocol):
    run_id: str

    def cancel(self, reason: str = ...) -> None: ...

    @property
    def client(self) -> Any: ...

    def emergency_teardown(self) -> None: ...


_LIVE: "weakref.WeakSet[LiveRun]" = weakref.WeakSet()
# reentrant: cancel_all() runs in signal handlers, on the main thread, which may be
# holding it at that moment
_LIVE_LOCK = threading.RLock()


@contextlib.contextmanager
def registered(run: LiveRun) -> Iterator[None]:
    """While inside, `run` is cancelled by cancel_all() and torn down at interpreter exit."""
    with _LIVE_LOCK:
        _LIVE.add(run)
    try:
        yield
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(run)


def live_runs() -> list[LiveRun]:
    with _LIVE_LOCK:
        return list(_LIVE)


def active_clients() -> list[Any]:
    """The clients of this process's live runs that are connected."""
    return [c for c in (r.client for r in live_runs()) if c is not None]


def cancel_all(reason: str = "cancelled") -> int:
    """Cancel every run in this process (signal handlers call this). Returns how many."""
    runs = live_runs()
    for r in runs:
        r.cancel(reason)
    return len(runs)


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT cancel the runs of this process; their teardown then runs normally.

    A second SIGINT falls back to KeyboardInterrupt, which still unwinds through teardown.
    """
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and getattr(handler, "seen_int", False):
            raise KeyboardInterrupt
        handler.seen_int = signum == signal.SIGINT
        logger.warning("%s received: cancelling %d run(s)", name, cancel_all(f"received {name}"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@atexit.register
def _close_leftovers() -> None:
    # a run abandoned in another thread when the interpreter exits still gets torn down
    for run in live_runs():
        run.cancel("interpreter exit")
        run.emergency_teardown()
