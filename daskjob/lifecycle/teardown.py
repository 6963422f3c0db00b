"""Teardown: what a run acquired, released in the reverse order, every release tried
even when another fails; and the release of a cluster the run started itself, which
makes sure none of its processes survive it."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

from ..observe.events import marked
from ..procs import process_tree, stop_run_processes, terminate
from .outcome import one_line

logger = logging.getLogger("daskjob")


class Releases:
    """Each acquisition registers its release here as it happens; `close()` runs them
    in reverse. A release that fails is logged and kept (it ends up in the record's
    teardown section): never dropped without a trace, never stopping the others."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._stack = contextlib.ExitStack()
        self.errors: list[str] = []
        self.outcome: dict[str, Any] = {"cluster": "not started", "killed_processes": []}
        # set when the run ends before its workers arrived: workers stuck in their start
        # block a clean close, so they are stopped first
        self.workers_hung = False

    def add(self, what: str, release: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                release()
            except Exception as e:
                logger.warning("daskjob: run %s: %s failed: %s", self.run_id, what, one_line(e),
                               exc_info=True, extra=marked(self.run_id))
                self.errors.append(f"{what}: {one_line(e)}")
        self._stack.callback(guarded)

    def close(self) -> dict[str, Any]:
        self._stack.close()
        self.outcome["killed_processes"] = sorted(set(self.outcome["killed_processes"]))
        if self.errors:
            self.outcome["errors"] = list(self.errors)
        return self.outcome


def release_cluster(backend: Any, handle: Any, run_id: str, grace: float,
                    workers_hung: Callable[[], bool], outcome: dict[str, Any]) -> None:
    """Close a cluster the run started, and stop every process it leaves: workers a
    close could not stop, and whatever their tasks started (labelled with the run id)."""
    killed: list[int] = outcome["killed_processes"]
    # remember the process tree now: after close, orphans have no parent to find
    tree = process_tree(backend.process_ids(handle))
    if workers_hung():
        # workers stuck in start block a clean close: stop them first
        killed += terminate(tree, grace=1.0)
    try:
        backend.close(handle, timeout=grace)
        outcome["cluster"] = "closed"
    except Exception as e:
        # kill what is there now (a nanny may have started a new process), retry
        tree += process_tree(backend.process_ids(handle))
        killed += terminate([p for p in tree if p.is_running()], grace=1.0)
        try:
            backend.close(handle, timeout=grace)
            outcome["cluster"] = f"closed after killing its processes ({one_line(e)})"
        except Exception as e2:
            outcome["cluster"] = f"close failed, processes killed: {one_line(e2)}"
    killed += terminate([p for p in tree if p.is_running()], grace=2.0)
    # grandchildren (a task's subprocess) survive a plain cluster close
    killed += stop_run_processes(run_id, grace=2.0)
