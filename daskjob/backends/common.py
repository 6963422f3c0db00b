"""What several backends need alike: their options as a pydantic model with one error
shape, the workers' dask config as an environment variable, and the "extra not
installed" message."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

# keys of `options` that ClusterSpec fields control, with the fields to use instead
CLUSTER_FIELDS = ("n_workers, threads_per_worker, memory_per_worker, env, dashboard, tls, preload, "
                  "resources, adapt, worker_groups")

_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "dict_type": "a mapping",
    "list_type": "a list", "missing": None,
}


class BackendOptions(BaseModel):
    """Base of every backend's `Options`: unknown keys refused with the accepted ones,
    keys that ClusterSpec fields control refused with those fields, and every error as
    `options.<key>: <what is wrong>`."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)
    backend: ClassVar[str] = "?"
    # who takes these options, as the unknown-key message says it
    taken_by: ClassVar[str] = ""
    # options ClusterSpec fields control (e.g. n_workers): refused, naming those fields
    reserved: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _not_reserved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            clash = sorted(cls.reserved & set(data))
            if clash:
                raise ValueError(f"options: {', '.join(clash)} set by ClusterSpec fields "
                                 f"({CLUSTER_FIELDS}); use those instead")
        return data

    @classmethod
    def accepted(cls) -> str:
        return ", ".join(sorted(cls.model_fields))

    @classmethod
    def parse(cls, data: Any) -> "BackendOptions":
        if not isinstance(data, dict):
            raise ValueError(f"options: expected a mapping, got {data!r}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(cls._message(e)) from None

    @classmethod
    def _message(cls, error: ValidationError) -> str:
        unknown = [str(e["loc"][0]) for e in error.errors() if e["type"] == "extra_forbidden"
                   and len(e["loc"]) == 1]
        lines = []
        if unknown:
            taken_by = cls.taken_by or f"the {cls.backend} backend"
            lines.append(f"options: {', '.join(unknown)} not accepted by {taken_by} "
                         f"(accepted: {cls.accepted()})")
        for e in error.errors():
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                continue
            lines.append(_one_error(e))
        return "\n".join(lines)


def _one_error(e: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in e["loc"])
    if e["type"] == "missing":
        return f"options.{where}: required"
    if e["type"] == "extra_forbidden":
        return f"options.{where}: not accepted"
    expected = _EXPECTED.get(e["type"])
    if expected:
        return f"options.{where}: expected {expected}, got {e.get('input')!r}"
    message = str(e["msg"]).removeprefix("Value error, ")
    if message.startswith("options"):  # a model-level check that names its own keys
        return message
    return f"options.{where}: {message}" if where else message


def require_extra(module: str, backend: str, extra: str, package: str | None = None) -> Any:
    """Import the library a backend is made over, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"backend {backend!r} needs {package or module.split('.')[0]}: "
                         f"pip install 'daskjob[{extra}]'") from None


def inherited_config_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment variable through which a worker process started elsewhere (a
    batch job, a pod, a gateway's process) reads the dask config a local worker would
    inherit: read by dask.config when the worker imports it."""
    if not config:
        return {}
    import dask.config
    return {"DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(config)}
