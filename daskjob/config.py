"""Defaults in the `daskjob` dask.config namespace.

Precedence: explicit argument > environment (DASKJOB__A__B=value or DASK_DASKJOB__A__B)
> user dask config YAML > the defaults shipped in daskjob.yaml.
"""

from __future__ import annotations

import ast
import os
import pathlib
from typing import Any

import dask.config
import yaml

_DEFAULTS = pathlib.Path(__file__).with_name("daskjob.yaml")
_ENV_PREFIX = "DASKJOB__"


def _parse_env_value(raw: str) -> Any:
    # same interpretation as dask.config.collect_env: literals become values
    try:
        return ast.literal_eval(raw)
    except (SyntaxError, ValueError):
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        path = [p.lower().replace("_", "-") for p in name[len(_ENV_PREFIX):].split("__") if p]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path:
            node[path[-1]] = _parse_env_value(raw)
    return {"daskjob": out} if out else {}


def _load() -> None:
    with open(_DEFAULTS) as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    overrides = _env_overrides(dict(os.environ))
    if overrides:
        dask.config.update(dask.config.config, overrides, priority="new")


def get(key: str, override_with: Any = None) -> Any:
    """`dask.config.get("daskjob." + key)`, unless an explicit value is given."""
    if override_with is not None:
        return override_with
    return dask.config.get(f"daskjob.{key}")


def worker_dask_config(*, report: bool) -> dict[str, Any]:
    """Dask config that daskjob sets for worker processes (nested, ready to merge).

    `report`: whether the run writes a performance report, the profiler's one reader.
    """
    from .durations import seconds

    enabled = get("worker-profile")
    if enabled not in (True, False, "auto"):
        raise ValueError(f"daskjob.worker-profile: expected true, false or auto, got {enabled!r}")
    profile: dict[str, Any] = {"enabled": report if enabled == "auto" else enabled}
    interval = get("worker-profile-interval")
    if interval is not None:
        seconds(interval, field="daskjob.worker-profile-interval")  # fail before any process
        profile["interval"] = interval
    return {"distributed": {"worker": {"profile": profile}}}


_load()
