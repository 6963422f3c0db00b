"""Adaptive scaling of one worker group, with distributed's own Adaptive.

`GroupAdaptive` is distributed's Adaptive pointed at one group of a SpecCluster (a
LocalCluster, a dask-jobqueue cluster): it sees only that group's workers, asks the
scheduler for that group's demand (tasks that need its resources) or, for the default
group, for Dask's own adaptive target, closes only that group's workers, and tells the
run each time the group's size changes. On a cluster without groups, the group is the
whole cluster.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from distributed.deploy.adaptive import Adaptive

from ..groups import DEFAULT, GroupPlan, worker_index

# tells the run a group's size changed: (group, from, to)
OnScale = Callable[[str, int, int], Any]


class GroupAdaptive(Adaptive):
    """distributed's Adaptive for one worker group (see the module docstring)."""

    def __init__(self, cluster: Any, plan: GroupPlan, on_scale: OnScale,
                 **kwargs: Any) -> None:
        self.group = plan
        self.on_scale = on_scale
        self.halted = False  # set from signal handlers: no scaling from then on
        super().__init__(cluster, **kwargs)

    def _mine(self, names: Any) -> set:
        if hasattr(self.cluster, "group_names"):
            return self.cluster.group_names(self.group.name, names)
        return set(names)

    @property
    def plan(self):
        return self._mine(self.cluster.plan)

    @property
    def requested(self):
        return self._mine(self.cluster.requested)

    @property
    def observed(self):
        return self._mine(self.cluster.observed)

    async def adapt(self) -> None:
        if not self.halted:
            await super().adapt()

    async def target(self) -> int:
        if self.group.name == DEFAULT:
            # Dask's own target, for the workers that are not in a group of their own
            others = len(self.cluster.plan) - len(self.plan)
            return max(0, await super().target() - others)
        # answered by the run's scheduler plugin (observe/scheduler.py); none yet: no demand
        try:
            demand = await self.scheduler.daskjob_group_demand(
                resources=list(self.group.resources))
        except Exception:  # noqa: BLE001 - the plugin is not there yet; Adaptive retries
            demand = 0
        return math.ceil((demand or 0) / self.group.threads_per_worker)

    async def workers_to_close(self, target: int) -> list:
        others = len(self.cluster.observed) - len(self.observed)
        names = await self.scheduler.workers_to_close(target=target + others, attribute="name")
        return sorted(self._mine(names), key=worker_index)

    async def scale_up(self, n: int) -> None:
        before = len(self.plan)
        if hasattr(self.cluster, "scale_group"):
            self.cluster.scale_group(self.group.name, n)
        else:
            self.cluster.scale(n)
        if n > before:
            self.on_scale(self.group.name, before, n)

    async def scale_down(self, workers) -> None:
        before = len(self.plan)
        await super().scale_down(workers)
        after = len(self.plan)
        if after < before:
            self.on_scale(self.group.name, before, after)


def stop_adaptives(adaptives: list[GroupAdaptive], loop: Any) -> None:
    """Stop them on their event loop (Adaptive is not thread-safe), before the cluster
    closes; waits a moment for it."""
    if not adaptives or loop is None:
        return
    done = threading.Event()

    def stop() -> None:
        try:
            for adaptive in adaptives:
                adaptive.stop(reason="the run is ending")
        finally:
            done.set()

    loop.add_callback(stop)
    done.wait(5)
