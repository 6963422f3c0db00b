"""`kubernetes`: a DaskCluster resource run by the Dask Kubernetes operator
(dask_kubernetes.operator.KubeCluster).

The backend builds the DaskCluster body itself (kubernetes_body.py: from dask-kubernetes'
make_cluster_spec, then our name, labels and annotations, `dask scheduler` / `dask
worker` commands, the run's environment and worker dask config, requests/limits from the
ClusterSpec) and hands it to KubeCluster as `custom_cluster_spec`, with
`shutdown_on_close=True`.

KubeCluster waits for the scheduler pod without a time limit; so the backend runs its
start on an event loop of its own and gives up at the run's startup deadline (or when the
run is cancelled), and then deletes the DaskCluster by name and by its run-id label
itself. Deleting a DaskCluster makes the operator delete its pods and services.

Traffic: the driver reaches the scheduler through a port-forward over the API server
(HTTPS) when it runs outside the cluster, or through the scheduler Service when inside.
Scheduler <-> worker and in-cluster client traffic is plain TCP: this backend does not set
up Dask TLS (ClusterSpec.tls=True is refused).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator

from .base import Backend, ClusterContext, ClusterHandle, Leftover
from .common import BackendOptions, require_extra
from .kubernetes_api import (GaveUp, create_objects, delete_cluster, delete_named,
                             delete_objects, fetch_pod_logs, list_clusters, pod_problems,
                             run_async, start_cluster)
from .kubernetes_forward import stop_forwards
from .kubernetes_body import (QUANTITY, RUN_ID_LABEL, build_autoscaler_body,  # noqa: F401
                              build_cluster_body, build_group_body,
                              cluster_name, label_value, validate_cluster_body)
from .reap import describe, verdict

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

IMAGE_REQUIRED = ("required for the kubernetes backend: a container image with Python, dask, "
                  "distributed and daskjob at the driver's versions (e.g. options: {image: "
                  "ghcr.io/me/etl:1.4})")


def _quantity(v: Any) -> str:
    if not isinstance(v, str) or not QUANTITY.fullmatch(v):
        raise ValueError(f"{v!r} is not a Kubernetes quantity string (e.g. '2', '500m', '4Gi')")
    return v


Quantity = Annotated[str, BeforeValidator(_quantity)]


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class KubernetesOptions(BackendOptions):
    backend: ClassVar[str] = "kubernetes"
    reserved: ClassVar[frozenset[str]] = frozenset({
        "n_workers", "env", "name", "custom_cluster_spec", "shutdown_on_close",
        "worker_command", "create_mode", "asynchronous", "loop", "jupyter",
        "threads_per_worker", "memory_limit", "memory_per_worker"})

    # an image with Python, dask, distributed and daskjob at the driver's versions:
    # required to start a cluster (not to reap: `daskjob reap` only reaches the API server)
    image: str | None = None
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    resources: Resources = Resources()      # over those made from the ClusterSpec sizes
    image_pull_policy: str | None = None
    scheduler_service_type: str = "ClusterIP"
    resource_timeout: float | None = None   # seconds KubeCluster waits for the operator
    idle_timeout: float = 3600              # the operator deletes an idle cluster (0: never)
    scheduler_forward_port: int | None = None
    port_forward_cluster_ip: bool | None = None
    service_account: str | None = None
    node_selector: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("image")
    @classmethod
    def _image(cls, v):
        if v is not None and not v:
            raise ValueError(IMAGE_REQUIRED)
        return v

    @field_validator("resource_timeout", "idle_timeout")
    @classmethod
    def _not_negative(cls, v):
        if v is not None and v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v


@dataclass(eq=False)
class KubernetesHandle(ClusterHandle):
    runner: Any = None        # the event loop KubeCluster runs on
    state: dict[str, Any] = field(default_factory=dict)   # the kr8s api and namespace
    name: str = ""
    run_label: str = ""
    opts: dict[str, Any] = field(default_factory=dict)
    # DaskWorkerGroups and DaskAutoscaler to create beside the DaskCluster, and made
    extra: list[dict[str, Any]] = field(default_factory=list)
    made: list[tuple[str, str]] = field(default_factory=list)


class KubernetesBackend(Backend):
    name = "kubernetes"
    # the default group adapts with the operator's DaskAutoscaler; extra groups are
    # DaskWorkerGroups of a fixed size (the autoscaler sizes the default group only)
    can_adapt = True
    can_group = True
    why_not = "the operator's DaskAutoscaler sizes the default worker group only"
    group_options = frozenset({"resources", "node_selector"})
    Options = KubernetesOptions
    shares_filesystem = False
    # the operator's pods speak plain TCP to each other; see the module docstring
    tls_by_default = False

    def validate(self, spec: "ClusterSpec") -> None:
        if spec.tls:
            raise ValueError("tls: the kubernetes backend does not set up Dask TLS (traffic "
                             "between the operator's pods is plain TCP); leave tls unset or false")
        super().validate(spec)
        require_extra("dask_kubernetes.operator", "kubernetes", "kubernetes", "dask-kubernetes")

    def validate_groups(self, spec: "ClusterSpec") -> None:
        super().validate_groups(spec)
        for name, group in spec.worker_groups.items():
            if group.adapt is not None:
                raise ValueError(f"worker_groups.{name}.adapt: {self.why_not}; give the "
                                 "group n_workers")

    def check_group_options(self, group: str, options: dict[str, Any]) -> None:
        super().check_group_options(group, options)
        try:
            Resources.model_validate(options.get("resources") or {})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"worker_groups.{group}.options.resources.{where}: "
                             f"{err['msg'].removeprefix('Value error, ')}") from None

    # -- start ---------------------------------------------------------------------
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> KubernetesHandle:
        give_up = _give_up_at(ctx)  # first: imports below take a while
        from distributed.utils import LoopRunner, sync

        if not self.options(spec).image:  # before anything is created
            raise ValueError(f"options.image: {IMAGE_REQUIRED}")
        body = build_cluster_body(spec, ctx)
        validate_cluster_body(body)
        extra = _extra_bodies(spec, body)  # checked before anything is created
        handle = KubernetesHandle(cluster=None, name=body["metadata"]["name"],
                                  run_label=body["metadata"]["labels"][RUN_ID_LABEL],
                                  opts=dict(spec.options), extra=extra,
                                  state={"namespace": spec.options.get("namespace")})
        handle.runner = LoopRunner(asynchronous=False)
        handle.runner.start()
        try:
            sync(handle.runner.loop, start_cluster, body, handle.opts, handle.runner.loop,
                 give_up, ctx.is_cancelled, handle.state)
        except BaseException as e:
            why = self.startup_note(handle) if isinstance(e, GaveUp) else None  # before deleting
            outcome = self._delete_after_failed_start(handle)
            if isinstance(e, GaveUp):
                why = f"\n{why}" if why else ""
                raise TimeoutError(f"DaskCluster {handle.name} did not get a running "
                                   f"scheduler {e}; {outcome}{why}") from None
            raise
        handle.cluster = handle.state["cluster"]
        return handle

    def _delete_after_failed_start(self, handle: KubernetesHandle) -> str:
        from distributed.utils import sync
        try:
            gone = sync(handle.runner.loop, delete_cluster, handle.state, handle.name,
                        handle.run_label, 5.0, callback_timeout=30)
            outcome = "deleted it" if gone else "deleting it (still terminating)"
        except BaseException as e:  # noqa: BLE001 - reported; the reaper can retry
            outcome = f"could not delete it ({type(e).__name__}: {e})"
            logger.warning("daskjob: DaskCluster %s: %s", handle.name, outcome)
        self._close_forwards(handle)
        handle.runner.stop()
        return outcome

    def scale(self, handle: KubernetesHandle, n: int) -> None:
        """The default worker group to its size (or its DaskAutoscaler), then the extra
        DaskWorkerGroups."""
        from distributed.utils import sync
        default = handle.groups[0] if handle.groups else None
        if default is None or default.adapt is None:
            handle.cluster.scale(n if default is None else int(default.n_workers or 0))
        if handle.extra and not handle.made:
            handle.made = sync(handle.runner.loop, create_objects, handle.state, handle.extra)

    def startup_note(self, handle: KubernetesHandle) -> str | None:
        """What the cluster's pods say about why they are not up: Pending and
        unschedulable, a container in CrashLoopBackOff (with its log's last lines), ..."""
        from distributed.utils import sync
        try:
            problems = sync(handle.runner.loop, pod_problems, handle.state, handle.name,
                            callback_timeout=15)
        except Exception as e:  # noqa: BLE001 - a note, not the failure itself
            return f"(could not read the pods' status: {type(e).__name__}: {e})"
        return "\n".join(problems) or None

    def dashboard_link(self, handle: KubernetesHandle) -> str | None:
        with contextlib.suppress(Exception):  # a port-forward that is not up: no link
            return handle.cluster.dashboard_link
        return None

    def shut_down(self, handle: KubernetesHandle, timeout: float) -> None:
        """Delete the DaskCluster (KubeCluster's close, then by name and run label if that
        failed). Bounded by `timeout` (+5 s)."""
        from distributed.utils import sync
        started = time.monotonic()
        made = handle.state.get("made") or []
        if made:
            try:
                sync(handle.runner.loop, delete_objects, handle.state, made,
                     callback_timeout=timeout)
            except Exception as e:  # noqa: BLE001 - the DaskCluster's deletion cascades
                logger.warning("daskjob: deleting %s: %s (the DaskCluster's deletion "
                               "removes them too)", made, e)
        try:
            self._delete(handle, timeout, started)
        finally:
            self._close_forwards(handle)  # the run is over, whether or not it is deleted
        handle.runner.stop()

    def _delete(self, handle: KubernetesHandle, timeout: float, started: float) -> None:
        from distributed.utils import sync
        try:
            # KubeCluster deletes the DaskCluster and waits for it to go
            sync(handle.runner.loop, handle.cluster._close, timeout=timeout,
                 callback_timeout=timeout + 5)
        except Exception as e:  # deleted by name and label below
            left = max(5.0, timeout - (time.monotonic() - started))
            try:
                if not sync(handle.runner.loop, delete_cluster, handle.state, handle.name,
                            handle.run_label, left, callback_timeout=left + 5):
                    raise TimeoutError(f"still there {left:.0f}s after its deletion was "
                                       "requested (is the operator running?)")
            except Exception as e2:
                raise RuntimeError(f"could not delete DaskCluster {handle.state['namespace']}/"
                                   f"{handle.name}: {type(e).__name__}: {e}; then "
                                   f"{type(e2).__name__}: {e2}") from e2

    def _close_forwards(self, handle: KubernetesHandle) -> None:
        """Close the local ports forwarded to the run's scheduler, if it needed any."""
        from distributed.utils import sync
        namespace = handle.state.get("namespace")
        if not namespace or not handle.runner.loop.asyncio_loop.is_running():
            return
        try:
            sync(handle.runner.loop, stop_forwards, namespace, handle.name, callback_timeout=15)
        except Exception as e:  # noqa: BLE001 - a teardown step: said, not raised
            logger.warning("daskjob: closing the port-forwards to %s: %s", handle.name, e)

    def snapshot_logs(self, handle: KubernetesHandle, logs_dir: str) -> list[str]:
        """Write the scheduler and worker pods' logs (Running pods only: Kubernetes serves
        no logs of a pod that has not started) to logs_dir/pod-<name>.log."""
        handle.logs_dir = logs_dir
        if handle.closed:
            return []
        return self.fetch_pod_logs(handle.opts, handle.state["namespace"], handle.name, logs_dir)

    def fetch_pod_logs(self, opts: dict[str, Any], namespace: str | None, name: str,
                       logs_dir: str) -> list[str]:
        """The logs of DaskCluster `name`'s Running pods into logs_dir; returns the paths."""
        return run_async(fetch_pod_logs, opts, namespace, name, logs_dir)

    # -- reaper --------------------------------------------------------------------
    def find_leftovers(self, spec: "ClusterSpec", older_than: float | None) -> list[Leftover]:
        found = []
        for item in self._clusters(spec):
            meta = item["metadata"]
            labels = dict(meta.get("labels") or {})
            if RUN_ID_LABEL not in labels:  # the emulator (and old servers) ignore selectors
                continue
            judged = verdict(labels, older_than=older_than)
            if not judged.leftover:
                continue
            run_id = (meta.get("annotations") or {}).get("daskjob/run-id", labels[RUN_ID_LABEL])
            phase = (item.get("status") or {}).get("phase", "no status")
            found.append(Leftover(
                backend=self.name, run_id=run_id, name=meta["name"], age_s=None,
                detail=(f"DaskCluster {meta.get('namespace')}/{meta['name']} ({phase}); "
                        f"driver {describe(labels)}: {judged.why}"),
                handle={"namespace": meta.get("namespace"), "name": meta["name"]}))
        return found

    def _clusters(self, spec: "ClusterSpec") -> list[dict[str, Any]]:
        """The run-labelled DaskCluster resources, as the API server returns them."""
        return run_async(list_clusters, dict(spec.options))

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        opts = dict(spec.options)
        handle = leftover.handle or {}
        if handle.get("namespace"):
            opts["namespace"] = handle["namespace"]
        run_async(delete_named, opts, handle.get("name") or leftover.name)


def _extra_bodies(spec: "ClusterSpec", cluster_body: dict[str, Any]) -> list[dict[str, Any]]:
    """The DaskWorkerGroups of the extra groups and, when the default group adapts, its
    DaskAutoscaler: each checked against its CRD."""
    plans = spec.group_plans()
    bodies = [build_group_body(cluster_body, plan) for plan in plans[1:]]
    if plans[0].adapt is not None:
        bodies.append(build_autoscaler_body(cluster_body, plans[0].adapt))
    for body in bodies:
        validate_cluster_body(body, kind=body["kind"].lower())
    return bodies


def _give_up_at(ctx: ClusterContext) -> float:
    """When the backend gives up starting: a little before the run's own startup
    deadline, so that the run reports this backend's reason (and that the DaskCluster was
    deleted) rather than a bare timeout. Without a deadline (a caller other than the
    lifecycle), the configured startup timeout counts from now."""
    now = time.monotonic()
    deadline = ctx.startup_deadline
    if deadline is None:
        from .. import config
        from ..durations import seconds
        deadline = now + seconds(config.get("startup-timeout"), field="startup_timeout")
    return deadline - min(3.0, max(0.5, 0.1 * (deadline - now)))
