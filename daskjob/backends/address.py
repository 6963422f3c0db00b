"""`address`: a borrowed, already running scheduler. The client closes; the cluster is
never shut down, and the workers are not ours to label or clean."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import Backend, ClusterContext, register_backend

if TYPE_CHECKING:
    from ..spec import ClusterSpec


@register_backend
class AddressBackend(Backend):
    name = "address"
    owns_cluster = False

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
        unknown = set(spec.options) - {"min_workers"}
        if unknown:
            raise ValueError(f"options: {', '.join(sorted(unknown))} not accepted by the "
                             "'address' backend (accepted: min_workers)")

    def expected_workers(self, spec: "ClusterSpec") -> int:
        return int(spec.options.get("min_workers", 1))

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        return spec.address

    def client_target(self, cluster: Any) -> Any:
        return cluster

    def scale(self, cluster: Any, n: int) -> None:
        pass  # a borrowed cluster's size is not ours to change

    def dashboard_link(self, cluster: Any) -> str | None:
        return None

    def close(self, cluster: Any, timeout: float) -> None:
        pass  # never shut down a borrowed cluster
