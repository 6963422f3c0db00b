"""The one way daskjob waits on code it does not control: in a helper thread, while the
waiting thread keeps watching a deadline and whatever else may end the wait (a cancel,
a verdict on the cluster's health). So a cluster manager that hangs, a payload that
never returns or a process that never exits cannot hold a run past its limits."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")
POLL = 0.05   # how often a wait looks at the deadline and the checks
_MISSING = object()

logger = logging.getLogger("daskjob")


def call_with_deadline(fn: Callable[[], T], deadline: float | None, *,
                       check: Callable[[], None] = lambda: None,
                       expired: Callable[[], BaseException] | None = None,
                       on_late_result: Callable[[T], Any] | None = None,
                       name: str = "daskjob-call") -> T:
    """fn(), run in a daemon thread; its result, or the exception it raised.

    While it runs, `check()` is called every POLL seconds (it raises to stop waiting) and
    past `deadline` (time.monotonic()) the wait ends with `expired()` (default: a
    TimeoutError). When the wait ends before fn does, fn keeps running in its thread,
    and a result it returns later is handed to `on_late_result` (to close a cluster that
    came up too late, say)."""
    done = threading.Event()
    lock = threading.Lock()
    box: dict[str, Any] = {}
    waiting = [True]

    def run() -> None:
        try:
            value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        else:
            with lock:
                late = not waiting[0]
                if not late:
                    box["value"] = value
            if late:
                _hand_over(on_late_result, value, name)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while not done.wait(POLL):
            check()
            if deadline is not None and time.monotonic() > deadline:
                raise (expired or (lambda: TimeoutError(f"{name}: past its deadline")))()
    except BaseException:
        with lock:
            waiting[0] = False
            value = box.pop("value", _MISSING)  # finished at the very last moment
        if value is not _MISSING:
            _hand_over(on_late_result, value, name)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hand_over(on_late_result: Callable[[Any], Any] | None, value: Any, name: str) -> None:
    if on_late_result is None:
        return
    try:
        on_late_result(value)
    except Exception:  # the caller has moved on: nobody else would hear of it
        logger.warning("daskjob: %s finished after its wait ended, and cleaning up what it "
                       "returned failed", name, exc_info=True)
