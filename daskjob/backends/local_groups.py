"""Worker groups and adaptive scaling on a LocalCluster.

A LocalCluster has one kind of worker. `GroupedLocalCluster` keeps extra named groups in
the same `worker_spec` (workers `gpu-0`, `gpu-1`, ...) and sizes each group on its own;
its `scale(n)` sizes the default group only. `GroupAdaptive` is distributed's Adaptive
pointed at one group: it sees only that group's workers, asks the scheduler for that
group's demand (tasks that need its resources) or, for the default group, for Dask's own
adaptive target, and closes only that group's workers.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from distributed import LocalCluster
from distributed.core import Status
from distributed.deploy.adaptive import Adaptive

from ..groups import DEFAULT, GroupPlan, group_of

# tells the run a group's size changed: (group, from, to)
OnScale = Callable[[str, int, int], Any]


class GroupedLocalCluster(LocalCluster):
    """A LocalCluster whose workers come in named groups (see the module docstring)."""

    def __init__(self, *args: Any, extra_groups: dict[str, dict] | None = None,
                 **kwargs: Any) -> None:
        # group name -> its worker spec ({"cls": ..., "options": {...}})
        self.extra_groups: dict[str, dict] = dict(extra_groups or {})
        super().__init__(*args, **kwargs)

    def group_names(self, group: str, names: Any) -> set:
        return {n for n in names if group_of(n, set(self.extra_groups)) == group}

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> None:
        """The default group's size (what `Cluster.adapt` and a fixed n_workers use)."""
        self.scale_group(DEFAULT, n)

    def scale_group(self, group: str, n: int) -> None:
        members = sorted(self.group_names(group, self.worker_spec), key=_index)
        if len(members) > n:
            launched = {v["name"] for v in self.scheduler_info["workers"].values()}
            # workers not yet started go first, then the newest
            doomed = sorted(members, key=lambda k: (k in launched, _index(k)))[:len(members) - n]
            for name in doomed:
                del self.worker_spec[name]
        elif self.status not in (Status.closing, Status.closed):
            for _ in range(n - len(members)):
                self.worker_spec.update(self._new_member(group))
        self.loop.add_callback(self._correct_state)

    def _new_member(self, group: str) -> dict:
        if group == DEFAULT:
            return self.new_worker_spec()
        i = 0
        while f"{group}-{i}" in self.worker_spec:
            i += 1
        return {f"{group}-{i}": self.extra_groups[group]}


def _index(name: Any) -> int:
    tail = str(name).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class GroupAdaptive(Adaptive):
    """distributed's Adaptive for one group of a GroupedLocalCluster."""

    def __init__(self, cluster: GroupedLocalCluster, plan: GroupPlan, on_scale: OnScale,
                 **kwargs: Any) -> None:
        self.group = plan
        self.on_scale = on_scale
        self.halted = False  # set from signal handlers: no scaling from then on
        super().__init__(cluster, **kwargs)

    @property
    def plan(self):
        return self.cluster.group_names(self.group.name, self.cluster.plan)

    @property
    def requested(self):
        return self.cluster.group_names(self.group.name, self.cluster.requested)

    @property
    def observed(self):
        return self.cluster.group_names(self.group.name, self.cluster.observed)

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
        return sorted(self.cluster.group_names(self.group.name, names), key=_index)

    async def scale_up(self, n: int) -> None:
        before = len(self.plan)
        self.cluster.scale_group(self.group.name, n)
        if n > before:
            self.on_scale(self.group.name, before, n)

    async def scale_down(self, workers) -> None:
        before = len(self.plan)
        await super().scale_down(workers)
        after = len(self.plan)
        if after < before:
            self.on_scale(self.group.name, before, after)

