"""Worker groups on a LocalCluster.

A LocalCluster has one kind of worker. `GroupedLocalCluster` keeps extra named groups in
the same `worker_spec` (workers `gpu-0`, `gpu-1`, ...) and sizes each group on its own;
its `scale(n)` sizes the default group only (backends/adaptive.py sizes a group that
adapts).
"""

from __future__ import annotations

from typing import Any

from distributed import LocalCluster
from distributed.core import Status

from ..groups import DEFAULT, group_of, worker_index


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
        """The default group's size (what `Cluster.adapt` and a fixed n_workers use).
        While the cluster closes (SpecCluster's close scales to 0), every group goes."""
        if self.status == Status.closing:
            for group in [DEFAULT, *self.extra_groups]:
                self.scale_group(group, 0)
            return
        self.scale_group(DEFAULT, n)

    def scale_group(self, group: str, n: int) -> None:
        members = sorted(self.group_names(group, self.worker_spec), key=worker_index)
        if len(members) > n:
            launched = {v["name"] for v in self.scheduler_info["workers"].values()}
            # workers not yet started go first, then the newest
            doomed = sorted(members, key=lambda k: (k in launched, -worker_index(k)))
            for name in doomed[:len(members) - n]:
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
