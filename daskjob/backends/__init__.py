"""Backends: one small module per cluster manager, each over the library made for it.

`base` says what a backend is, `registry` finds them by name (the `daskjob.backends`
entry point group, built-ins included), `common` holds what several share, and `reap`
the one rule for what a reaper may stop.
"""

from .base import Backend, ClusterContext, ClusterHandle, Leftover
from .registry import ENTRY_POINT_GROUP, backend_names, get_backend, register_backend

__all__ = ["Backend", "ClusterContext", "ClusterHandle", "Leftover", "ENTRY_POINT_GROUP",
           "backend_names", "get_backend", "register_backend"]
