"""Worker groups: how many workers of which kind a cluster has, fixed or adaptive.

A cluster has a default group (ClusterSpec's own n_workers / adapt, threads, memory) and
may have extra named groups beside it, each with its own size, threads, memory, Dask
worker resources and environment. Work annotated with a group's resources
(`dask.annotate(resources={"GPU": 1})`) runs only on that group's workers.

Worker names say their group: the default group's workers keep the backend's names,
an extra group's are `<group>-<n>` (`gpu-0`; on Kubernetes the operator's pod names,
`<cluster>-gpu-worker-<hash>`), so that the scheduler, the logs and the record all tell
them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .durations import nbytes, seconds
from .fields import EnvVars

DEFAULT = "default"
_GROUP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?")
_RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
_WORKER_OF_GROUP = re.compile(r"(?P<group>[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?)-(?P<n>\d+)")


def _whole_number(v: Any, what: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be a whole number, got {v!r}")
    return v


class Adapt(BaseModel):
    """Workers follow the load between `minimum` and `maximum` (Dask's adaptive scaling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minimum: int = 0
    maximum: int
    # how long Dask lets work queue before asking for more workers, and how often it looks
    target_duration: str | float | None = None
    interval: str | float | None = None

    @field_validator("minimum", "maximum", mode="before")
    @classmethod
    def _counts(cls, v, info):
        _whole_number(v, info.field_name)
        if v < 0:
            raise ValueError(f"{info.field_name} must not be negative, got {v}")
        return v

    @field_validator("target_duration", "interval")
    @classmethod
    def _durations(cls, v, info):
        if v is not None:
            seconds(v, field=info.field_name)
        return v

    @model_validator(mode="after")
    def _range(self):
        if self.maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {self.maximum}")
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is above maximum ({self.maximum})")
        return self

    def adapt_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for distributed's `Cluster.adapt` / `Adaptive`."""
        kw: dict[str, Any] = {"minimum": self.minimum, "maximum": self.maximum}
        if self.target_duration is not None:
            kw["target_duration"] = self.target_duration
        if self.interval is not None:
            kw["interval"] = self.interval
        return kw


def check_resources(v: Any) -> dict[str, float]:
    """Dask worker resources: {name: positive amount}."""
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping of NAME: amount, got {type(v).__name__}")
    out = {}
    for k, amount in v.items():
        if not isinstance(k, str) or not _RESOURCE_NAME.fullmatch(k):
            raise ValueError(f"{k!r} is not a valid resource name: letters, digits, '_', '.', "
                             "'-', starting with a letter or '_'")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"{k}: the amount must be a number, got {amount!r}")
        if not amount > 0:
            raise ValueError(f"{k}: the amount must be above 0, got {amount!r}")
        out[k] = amount
    return out


# Dask worker resources, checked as they are given
Resources = Annotated[dict[str, float], BeforeValidator(check_resources)]


class WorkerGroup(BaseModel):
    """An extra group of workers. Unset sizes (threads, memory) are the cluster's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_workers: int | None = None
    adapt: Adapt | None = None
    threads_per_worker: int | None = None
    memory_per_worker: str | int | None = None
    resources: Resources = Field(default_factory=dict)
    env: EnvVars = Field(default_factory=dict)
    # backend-specific: a Slurm partition, a pod's GPU limit, the hosts of an ssh group
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("n_workers", "threads_per_worker", mode="before")
    @classmethod
    def _counts(cls, v, info):
        if v is None:
            return v
        _whole_number(v, info.field_name)
        if v < (0 if info.field_name == "n_workers" else 1):
            raise ValueError(f"{info.field_name}: must be at least "
                             f"{0 if info.field_name == 'n_workers' else 1}, got {v}")
        return v

    @field_validator("memory_per_worker", mode="before")
    @classmethod
    def _memory(cls, v):
        if isinstance(v, bool):
            raise ValueError(f"expected a size such as 8GiB, got {v!r}")
        if v is not None:
            nbytes(v, field="memory_per_worker")
        return v

    @model_validator(mode="after")
    def _one_size(self):
        if self.adapt is not None and self.n_workers is not None:
            raise ValueError("give either n_workers (a fixed size) or adapt (a range), not both")
        return self


def check_group_name(name: Any) -> str:
    if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid group name: 1-30 lower-case letters, "
                         "digits and '-', starting and ending with a letter or digit")
    if name == DEFAULT:
        raise ValueError("'default' is the cluster's own group: set its size with the "
                         "cluster's n_workers or adapt")
    return name


@dataclass(frozen=True)
class GroupPlan:
    """One group as a backend builds it: every size resolved."""

    name: str
    n_workers: int | None           # None when adaptive
    adapt: Adapt | None
    threads_per_worker: int
    memory_bytes: int | None
    resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def at_start(self) -> int:
        """Workers that must be up before the payload starts."""
        return self.adapt.minimum if self.adapt is not None else int(self.n_workers or 0)

    def worker_name(self, n: int) -> str:
        return f"{self.name}-{n}"


def group_of(worker_name: Any, groups: set[str]) -> str:
    """The group a worker belongs to, by its name: `gpu-0` (local, ssh) or
    `<cluster>-gpu-worker-<hash>` (a Kubernetes pod) -> gpu; anything else: default."""
    text = str(worker_name)
    m = _WORKER_OF_GROUP.fullmatch(text)
    if m and m.group("group") in groups:
        return m.group("group")
    for group in groups:
        if f"-{group}-worker-" in text:
            return group
    return DEFAULT


def worker_index(name: Any) -> int:
    """The number at the end of a worker's name (`gpu-3` -> 3; 0 when there is none)."""
    tail = str(name).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
