"""Backends: one small module per cluster manager, each over the library made for it.

`base` says what a backend is, `common` holds what several share, and `reap` the one
rule for what a reaper may stop; `daskjob.backend_registry` finds backends by name (the
`daskjob.backends` entry point group, built-ins included).
"""

from .base import Backend, ClusterContext, ClusterHandle, Leftover
from ..backend_registry import ENTRY_POINT_GROUP, backend_names, get_backend, register_backend

__all__ = ["Backend", "ClusterContext", "ClusterHandle", "Leftover", "ENTRY_POINT_GROUP",
           "backend_names", "get_backend", "register_backend"]
