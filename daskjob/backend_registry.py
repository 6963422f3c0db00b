"""Backends by name. Every backend, built-in or not, is named in the `daskjob.backends`
entry point group (`name = "module:BackendClass"`): a backend's module, and the library
it is made over, is imported only when that backend is used. The registry refuses two
classes under one name.

The built-in backends are loaded from BUILT_IN without listing the group: listing entry
points reads the metadata of every installed distribution, a noticeable part of the
start of a short `daskjob run`."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

logger = logging.getLogger("daskjob")

ENTRY_POINT_GROUP = "daskjob.backends"
# as pyproject.toml names them in ENTRY_POINT_GROUP (tests/test_structure.py checks)
BUILT_IN = {
    "local": "daskjob.backends.local:LocalBackend",
    "address": "daskjob.backends.address:AddressBackend",
    "ssh": "daskjob.backends.ssh:SSHBackend",
    "jobqueue": "daskjob.backends.jobqueue:JobqueueBackend",
    "gateway": "daskjob.backends.gateway:GatewayBackend",
    "kubernetes": "daskjob.backends.kubernetes:KubernetesBackend",
}

# name -> a Backend class (backends/base.py; this module imports nothing of daskjob, so
# that the spec can look backends up without an import cycle)
_REGISTRY: dict[str, type] = {}


def register_backend(cls: type) -> type:
    """Add a backend class. Refuses a second, different class under the same name."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"backend {cls.name!r} is already registered by "
                         f"{existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_backend(name: str) -> Any:
    if name not in _REGISTRY:
        _load(name)
    return _REGISTRY[name]()


def _load(name: str) -> None:
    ep = EntryPoint(name, BUILT_IN[name], ENTRY_POINT_GROUP) if name in BUILT_IN \
        else _entry_points().get(name)
    if ep is None:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    try:
        cls = ep.load()
    except ImportError as e:  # the module itself does not import: a broken plugin
        raise ValueError(f"backend {name!r} ({ep.value}) could not be imported: {e}") from None
    if getattr(cls, "name", None) != name:
        raise ValueError(f"entry point {name!r} names {ep.value}, whose name is "
                         f"{getattr(cls, 'name', None)!r}")
    register_backend(cls)
