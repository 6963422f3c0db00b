"""`address`: a borrowed, already running scheduler. The run connects a client and
never shuts the cluster down; the workers are not its to label or clean."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import Backend, ClusterContext, ClusterHandle
from .common import BackendOptions

if TYPE_CHECKING:
    from ..spec import ClusterSpec


class AddressOptions(BackendOptions):
    backend: ClassVar[str] = "address"

    min_workers: int = 1   # how many workers to wait for before the payload starts


class AddressBackend(Backend):
    name = "address"
    why_not = "the cluster is borrowed: its workers are not the run's to size"
    Options = AddressOptions

    def validate(self, spec: "ClusterSpec") -> None:
        if not spec.address:
            raise ValueError("address: the 'address' backend needs the scheduler address, "
                             "e.g. tcp://scheduler:8786")
        if "://" not in spec.address and ":" not in spec.address:
            raise ValueError(f"address: {spec.address!r} is not a scheduler address "
                             "(expected e.g. tcp://host:8786)")
        if spec.tls:
            raise ValueError("tls: a borrowed scheduler has its own certificates; give a "
                             "tls:// address and set them in dask's distributed.comm.tls "
                             "config, leaving tls unset")
        self.options(spec)
        self.validate_groups(spec)

    def expected_workers(self, spec: "ClusterSpec") -> int:
        return self.options(spec).min_workers

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> ClusterHandle:
        return ClusterHandle(cluster=spec.address, owned=False)

    def scale(self, handle: ClusterHandle, n: int) -> None:
        pass  # a borrowed cluster's size is not ours to change

    def dashboard_link(self, handle: ClusterHandle) -> str | None:
        return None
