"""ClusterSpec and JobSpec: validated once, at construction, before any process starts.

Every error names the field and what is allowed. A job is a file: `JobSpec.from_yaml`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Callable, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SecretStr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from . import config
from .backend_registry import backend_names, get_backend
from .config import worker_dask_config
from .dask_logs import dask_log_level
from .durations import nbytes, seconds
from .errors import SpecError
from .fields import EnvVars, no_bool, string_mapping
from .groups import DEFAULT, Adapt, GroupPlan, Resources, WorkerGroup, check_group_name
from .payload import check_payload, describe_payload
from .record import redact

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _default(key: str) -> Any:
    return config.get(key)


class _Strict(BaseModel):
    # validated once, at construction; assigning later is not re-validated
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                              validate_default=True)  # defaults from dask.config are input too
    _whole_model_label: ClassVar[str] = "spec"

    def __init__(self, /, **data: Any) -> None:
        # `JobSpec(...)` fails like `JobSpec.parse(...)`: one SpecError naming the fields
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SpecError(format_validation_error(type(self).__name__, e,
                                                    self._whole_model_label)) from None

    # as pydantic marks BaseModel.__init__ (and RootModel's): a spec nested in another is
    # still validated in one pass, so its errors keep their whole path (cluster.n_workers)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def parse(cls, data: Any):
        """Validate `data` and turn pydantic's errors into one readable SpecError."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(cls.__name__, e, cls._whole_model_label)) from None


def format_validation_error(model: str, error: ValidationError, whole: str = "spec") -> str:
    lines = [f"invalid {model}:"]
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or whole
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the ClusterSpec/JobSpec fields in the README)"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


class ClusterSpec(_Strict):
    """Where and how big the ephemeral cluster is. Backend-specific keys go in `options`."""

    _whole_model_label: ClassVar[str] = "cluster"

    backend: str = Field(default_factory=lambda: _default("cluster.backend"))
    n_workers: int = Field(default_factory=lambda: _default("cluster.n-workers"))
    threads_per_worker: int = Field(default_factory=lambda: _default("cluster.threads-per-worker"))
    memory_per_worker: str | int | None = Field(
        default_factory=lambda: _default("cluster.memory-per-worker"))
    env: EnvVars = Field(default_factory=dict)
    drop_env: list[str] = Field(default_factory=lambda: list(_default("cluster.drop-env")))
    address: str | None = None
    dashboard: bool = Field(default_factory=lambda: _default("cluster.dashboard"))
    worker_death_timeout: str | float = Field(
        default_factory=lambda: _default("cluster.worker-death-timeout"))
    preload: list[str] = Field(default_factory=list)
    # instead of n_workers: the default group follows the load between minimum and maximum
    adapt: Adapt | None = None
    # Dask worker resources of the default group's workers ({"GPU": 1})
    resources: Resources = Field(default_factory=dict)
    # extra groups beside the default one, each with its own size, resources and env
    worker_groups: dict[str, WorkerGroup] = Field(default_factory=dict)
    # TLS between client, scheduler and workers with temporary credentials made per run;
    # None: the backend's default (on for every backend whose processes talk over a network)
    tls: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # credentials for the backend (a gateway password, a TLS key): never logged, never
    # written to the record (they dump as "***")
    secrets: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("n_workers", "threads_per_worker", "memory_per_worker",
                     "worker_death_timeout", mode="before")
    @classmethod
    def _numbers_not_bools(cls, v):
        return no_bool(v)

    @field_validator("n_workers", "threads_per_worker")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("memory_per_worker", "worker_death_timeout")
    @classmethod
    def _size_or_duration(cls, v, info: ValidationInfo):
        check = nbytes if info.field_name == "memory_per_worker" else seconds
        check(v, field=info.field_name)
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        names = backend_names()
        if v not in names:
            raise ValueError(f"unknown backend {v!r}; available: {', '.join(sorted(names))}")
        return v

    @field_validator("worker_groups", mode="before")
    @classmethod
    def _group_names(cls, v):
        if isinstance(v, dict):
            for name in v:
                check_group_name(name)
        return v

    @model_validator(mode="after")
    def _one_size(self):
        if self.adapt is not None and "n_workers" in self.model_fields_set:
            raise ValueError("give either n_workers (a fixed size) or adapt (a range), not both")
        return self

    @model_validator(mode="after")
    def _backend_rules(self):
        get_backend(self.backend).validate(self)
        return self

    @property
    def memory_bytes(self) -> int | None:
        return nbytes(self.memory_per_worker, field="memory_per_worker")

    @property
    def death_timeout_s(self) -> float:
        return seconds(self.worker_death_timeout, field="worker_death_timeout")

    def group_plans(self) -> list[GroupPlan]:
        """The default group first, then the extra ones, with every size resolved."""
        default = GroupPlan(DEFAULT, None if self.adapt else self.n_workers, self.adapt,
                            self.threads_per_worker, self.memory_bytes, dict(self.resources))
        extra = [GroupPlan(name, None if g.adapt else (1 if g.n_workers is None else g.n_workers),
                           g.adapt, g.threads_per_worker or self.threads_per_worker,
                           nbytes(g.memory_per_worker, field="memory_per_worker")
                           if g.memory_per_worker is not None else self.memory_bytes,
                           dict(g.resources), dict(g.env), dict(g.options))
                 for name, g in self.worker_groups.items()]
        return [default, *extra]


PayloadRef = str | Callable[..., Any]


class JobSpec(_Strict):
    """One run: a payload, its params, the cluster it runs on, and its limits."""

    _whole_model_label: ClassVar[str] = "payload"

    name: str
    payload: Any
    params: dict[str, Any] = Field(default_factory=dict)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    startup_timeout: str | float = Field(default_factory=lambda: _default("startup-timeout"))
    timeout: str | float | None = Field(default_factory=lambda: _default("timeout"))
    record_dir: str = Field(default_factory=lambda: str(_default("record-dir")))
    labels: dict[str, str] = Field(default_factory=dict)
    version_check: Literal["error", "warn", "off"] = Field(
        default_factory=lambda: _default("version-check"))
    performance_report: bool | Literal["auto"] = Field(
        default_factory=lambda: _default("performance-report"))
    forward_logs: bool = Field(default_factory=lambda: _default("forward-logs"))
    worker_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default_factory=lambda: _default("worker-log-level"))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid job name: 1-63 letters, digits, '_', '.', '-', "
                "starting with a letter or digit")
        return v

    @field_validator("startup_timeout", "timeout", mode="before")
    @classmethod
    def _durations_not_bools(cls, v):
        return no_bool(v)

    @field_validator("startup_timeout", "timeout")
    @classmethod
    def _durations(cls, v, info: ValidationInfo):
        seconds(v, field=info.field_name)
        return v

    @field_validator("record_dir")
    @classmethod
    def _record_dir(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v):
        return string_mapping(v, _LABEL_KEY, "key",
                               "is not a valid label key: 1-63 letters, digits, '_', '.', '/', '-'")

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping of keyword arguments, got {type(v).__name__}")
        for k in v:
            if not isinstance(k, str) or not k.isidentifier():
                raise ValueError(f"{k!r} is not a valid keyword argument name")
        return v

    @field_validator("performance_report")
    @classmethod
    def _report(cls, v):
        if v is True:
            try:
                import bokeh  # noqa: F401
            except ImportError:
                raise ValueError("needs bokeh: pip install 'daskjob[report]', or set it to false") from None
        return v

    @model_validator(mode="after")
    def _worker_settings(self):
        worker_dask_config(report=False)  # daskjob.worker-profile*: checked before any process
        dask_log_level()
        return self

    @model_validator(mode="after")
    def _payload(self):
        self.payload = check_payload(self.payload, self.params)
        return self

    # -- convenience ------------------------------------------------------------------
    @property
    def startup_timeout_s(self) -> float:
        return seconds(self.startup_timeout, field="startup_timeout")

    @property
    def timeout_s(self) -> float | None:
        return seconds(self.timeout, field="timeout")

    @property
    def report_enabled(self) -> bool:
        if self.performance_report == "auto":
            try:
                import bokeh  # noqa: F401
                return True
            except ImportError:
                return False
        return bool(self.performance_report)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, params: dict[str, Any] | None = None) -> "JobSpec":
        """Load a job file. A relative script payload is resolved against the file's folder."""
        return cls.parse(load_yaml(path, params=params))

    def redacted(self) -> dict[str, Any]:
        """The spec as JSON-safe data, with secret-looking values hidden."""
        # params may hold any object (a front end passes e.g. Airflow's task instance):
        # they are recorded as JSON where they are JSON, else as their repr
        data = self.model_dump(mode="python", exclude={"payload", "params"})
        data["payload"] = describe_payload(self.payload)
        data["params"] = {k: _as_json(v) for k, v in self.params.items()}
        return redact(data)


def _as_json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)[:500]


def load_yaml(path: str | os.PathLike, *, params: dict[str, Any] | None = None) -> dict[str, Any]:
    p = pathlib.Path(path)
    if not p.is_file():
        raise SpecError(f"job file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"job file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"job file {str(path)!r} must hold a mapping (name:, payload:, ...)")
    payload = data.get("payload")
    if isinstance(payload, str) and payload.endswith(".py") and not os.path.isabs(payload):
        candidate = p.parent / payload
        if candidate.exists():
            data["payload"] = str(candidate.resolve())
    if params:
        data["params"] = {**(data.get("params") or {}), **params}
    return data
