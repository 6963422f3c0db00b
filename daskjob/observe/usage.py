"""What the run's workers cost in resource time, group by group.

Fed by the scheduler's worker joins and leaves (as the collector hears them), it keeps
each group's worker count over time and integrates it: worker-seconds, core-seconds
(threads) and GiB-seconds (memory limit). Every figure is the sum over the timeline it
reports, so a reader can check one against the other.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..groups import DEFAULT, group_of

GIB = 2 ** 30


@dataclass
class _Group:
    expected: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)   # (time, workers)
    # the live workers' (threads, GiB): workers of one group may differ in size
    sizes: dict[str, tuple[int, float]] = field(default_factory=dict)  # address -> size
    peak: int = 0
    started: int = 0


class Usage:
    """Worker counts over time per group, and the resource time they add up to."""

    def __init__(self, groups: dict[str, int] | None = None, start: float | None = None):
        self._lock = threading.Lock()
        self.start = time.time() if start is None else start
        self._groups = {name: _Group(expected=n) for name, n in (groups or {DEFAULT: 0}).items()}
        self._points: dict[str, list[tuple[float, int, float]]] = {g: [] for g in self._groups}
        self._ended: float | None = None

    def _group(self, name: Any) -> tuple[str, _Group]:
        g = group_of(name, set(self._groups) - {DEFAULT})
        return g, self._groups.setdefault(g, _Group())

    def joined(self, ts: float, address: str, name: Any, nthreads: int | None,
               memory_limit: int | None) -> None:
        with self._lock:
            if self._ended is not None:
                return
            g, group = self._group(name)
            group.sizes[address] = (int(nthreads or 0), (memory_limit or 0) / GIB)
            group.started += 1
            self._mark(g, group, ts)

    def left(self, ts: float, address: str, name: Any) -> None:
        with self._lock:
            if self._ended is not None:
                return
            g, group = self._group(name)
            if group.sizes.pop(address, None) is not None:
                self._mark(g, group, ts)

    def end(self, ts: float | None = None) -> None:
        """The cluster is going: the workers still live count until now."""
        with self._lock:
            if self._ended is None:
                self._ended = time.time() if ts is None else ts

    def _mark(self, name: str, group: _Group, ts: float) -> None:
        n = len(group.sizes)
        group.peak = max(group.peak, n)
        group.timeline.append((ts, n))
        cores = sum(c for c, _ in group.sizes.values())
        gib = sum(m for _, m in group.sizes.values())
        self._points.setdefault(name, []).append((ts, cores, gib))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per group: expected, started, peak, timeline [[seconds since start, workers]],
        worker_seconds, core_seconds, gib_seconds."""
        with self._lock:
            end = self._ended if self._ended is not None else time.time()
            return {name: self._one(name, group, end) for name, group in self._groups.items()}

    def _one(self, name: str, group: _Group, end: float) -> dict[str, Any]:
        timeline = [(t, n) for t, n in group.timeline if t <= end]
        points = [p for p in self._points.get(name, []) if p[0] <= end]
        ws = cs = gs = 0.0
        for i, (t, n) in enumerate(timeline):
            until = timeline[i + 1][0] if i + 1 < len(timeline) else end
            span = max(0.0, until - t)
            ws += n * span
            cs += points[i][1] * span
            gs += points[i][2] * span
        return {"expected": group.expected, "started": group.started, "peak": group.peak,
                "timeline": [[round(t - self.start, 3), n] for t, n in timeline]
                + ([[round(end - self.start, 3), timeline[-1][1]]] if timeline else []),
                "worker_seconds": round(ws, 3), "core_seconds": round(cs, 3),
                "gib_seconds": round(gs, 3)}


def resource_time(usage: Usage) -> dict[str, Any]:
    """The record's `groups` (per group) and `resource_time` (the groups added up)."""
    groups = usage.summary()
    keys = ("worker_seconds", "core_seconds", "gib_seconds")
    return {"groups": groups,
            "resource_time": {k: round(sum(g[k] for g in groups.values()), 3) for k in keys}}
