"""`gateway`: a cluster from a Dask Gateway server (dask_gateway: submit, then connect).

The gateway starts the scheduler and workers wherever its own backend runs them; this
side only talks HTTP to the gateway and TLS to the scheduler through the gateway's
proxy. The gateway always makes TLS credentials per cluster (its scheduler and workers
require encryption, the client gets the key in the cluster report), so `tls: false`
cannot be honoured.

Run labels travel in two cluster options the gateway must expose (see
scripts/services/gateway_config.py for a server configuration that does):
`labels` (stored with the cluster: the reaper reads them back from list_clusters) and
`environment` (a mapping the server's options handler turns into the processes'
environment: ClusterSpec.env, the run's DASKJOB_* labels and the workers' dask config).

A gateway stops a cluster whose scheduler has been idle for its `idle_timeout`. A run's
cluster is kept busy by a tiny task every `keepalive` seconds for as long as the run
lives, so a payload that computes on the driver for a while keeps its cluster; when the
driver is killed the keepalive stops with it, and the idle timeout becomes the safety
net behind `daskjob reap --backend gateway`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..deadline import call_with_deadline
from ..durations import seconds
from .base import Backend, ClusterContext, ClusterHandle, Leftover
from .common import BackendOptions, require_extra
from .gateway_client import KeepBusy, auth, call, close_gateway, cluster_options, connect
from .gateway_client import close_gateway as _close_gateway  # noqa: F401  (tests use it)
from .reap import describe, verdict

if TYPE_CHECKING:
    from ..spec import ClusterSpec

_OWN_CLUSTER_OPTIONS = {"labels": "the job's labels", "environment": "cluster.env"}
_STATUS_EVERY = 2.0           # how often a running cluster's state is asked for


def _config_address() -> str | None:
    import dask.config
    return dask.config.get("gateway.address", default=None)


class GatewayOptions(BackendOptions):
    backend: ClassVar[str] = "gateway"
    taken_by: ClassVar[str] = "the 'gateway' backend"
    reserved: ClassVar[frozenset[str]] = frozenset({
        "n_workers", "env", "environment", "labels", "security", "tls", "worker_cores",
        "worker_threads", "worker_memory"})

    # http(s)://... (default: dask config gateway.address)
    address: str | None = Field(default=None, validate_default=True)
    proxy_address: str | int | None = None  # gateway://host:port, or a port
    public_address: str | None = None       # as browsers see it (dashboard links)
    auth: Literal["basic", "kerberos", "jupyterhub"] = "basic"
    username: str | None = None             # basic auth (default: the local user)
    cluster_options: dict[str, Any] = {}    # the gateway's own cluster options
    keepalive: str | float | bool | None = 2.0   # seconds between keep-busy tasks; false: none

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, v):
        if v not in ("basic", "kerberos", "jupyterhub"):
            raise ValueError(f"{v!r} is not one of basic, kerberos, jupyterhub")
        return v

    @field_validator("address", mode="after")
    @classmethod
    def _address(cls, v):
        v = v or _config_address()
        if not v:
            raise ValueError("the 'gateway' backend needs the gateway's address, e.g. "
                             "http://gateway.example:8000 (or set dask config gateway.address)")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s):// address")
        return v

    @field_validator("public_address")
    @classmethod
    def _public(cls, v):
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s):// address")
        return v

    @field_validator("proxy_address", mode="before")
    @classmethod
    def _proxy(cls, v):
        if v is not None and not ((isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536)
                                  or (isinstance(v, str) and v.strip())):
            raise ValueError(f"{v!r} is neither an address (gateway://host:port) nor a port")
        return v

    @field_validator("cluster_options")
    @classmethod
    def _not_ours(cls, v):
        own = set(v) & set(_OWN_CLUSTER_OPTIONS)
        if own:
            raise ValueError(f"{', '.join(sorted(own))} set by daskjob from "
                             + ", ".join(f"{_OWN_CLUSTER_OPTIONS[k]} ({k})" for k in sorted(own))
                             + "; use those instead")
        return v

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, v):
        if v is not False and v is not None:
            seconds(v, field="options.keepalive")
        return v

    @model_validator(mode="after")
    def _basic_user(self):
        if "username" in self.model_fields_set and (self.auth != "basic" or not self.username):
            raise ValueError("options.username: a non-empty string, only with auth: basic")
        return self

    @property
    def keepalive_s(self) -> float | None:
        if self.keepalive is False or self.keepalive is None:
            return None
        return seconds(self.keepalive, field="options.keepalive")


@dataclass(eq=False)
class GatewayHandle(ClusterHandle):
    keepalive: KeepBusy | None = None
    status_at: float = 0.0


class GatewayBackend(Backend):
    name = "gateway"
    can_adapt = True  # the gateway server adapts (target_duration and interval: its own)
    why_not = "a gateway cluster has one worker group; its options set the workers' size"
    Options = GatewayOptions
    secret_names = frozenset({"password", "api_token"})
    tls_by_default = True

    def validate(self, spec: "ClusterSpec") -> None:
        if spec.tls is False:
            raise ValueError("tls: a gateway cluster always uses TLS, with credentials the "
                             "gateway makes per cluster; leave tls unset (or true)")
        require_extra("dask_gateway", "gateway", "gateway", "dask-gateway")
        super().validate(spec)
        if self.options(spec).auth == "kerberos":
            require_extra("kerberos", "gateway", "gateway", "pykerberos")

    # ------------------------------------------------------------------ lifecycle
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> GatewayHandle:
        from dask_gateway import GatewayCluster
        opts = self.options(spec)
        gw = connect(opts, spec.secrets)
        name = None
        try:
            name = call(gw, gw._submit, cluster_options=cluster_options(gw, spec, opts, ctx))
            _wait_running(gw, name, ctx)
            cluster = GatewayCluster.from_name(
                name, shutdown_on_close=True, address=opts.address,
                proxy_address=opts.proxy_address, public_address=opts.public_address,
                auth=auth(opts, spec.secrets))
        except BaseException:
            if name is not None:
                with contextlib.suppress(Exception):  # the gateway's idle timeout is the net
                    call(gw, gw._stop_cluster, name, timeout=10)
            raise
        finally:
            close_gateway(gw)
        handle = GatewayHandle(cluster=cluster)
        try:
            if cluster.security is None:
                raise RuntimeError(f"gateway cluster {cluster.name} came without TLS "
                                   "credentials")
            if opts.keepalive_s:
                handle.keepalive = KeepBusy(cluster, opts.keepalive_s)
            # ask for the workers now: the gateway starts their processes while the run
            # connects its client (the run's own scale() to the same size changes nothing)
            self.scale(handle, self.expected_workers(spec))
        except BaseException:
            self.close(handle, timeout=10)
            raise
        return handle

    def scale(self, handle: GatewayHandle, n: int) -> None:
        """A fixed size, or the gateway's own adaptive scaling (run by the server)."""
        from dask_gateway.client import GatewayClusterError
        cluster = handle.cluster
        default = handle.groups[0] if handle.groups else None
        try:
            if default is not None and default.adapt is not None:
                call(cluster.gateway, cluster.gateway._adapt_cluster, cluster.name,
                     minimum=default.adapt.minimum, maximum=default.adapt.maximum)
                return
            call(cluster.gateway, cluster.gateway._scale_cluster, cluster.name, n)
        except GatewayClusterError as e:  # 409: the gateway no longer runs it
            handle.status_at = 0.0
            raise RuntimeError(self.failure_reason(handle)
                               or f"gateway cluster {cluster.name}: {e}") from e

    def failure_reason(self, handle: GatewayHandle) -> str | None:
        from dask_gateway.client import ClusterStatus
        if handle.closed or handle.verdict is not None:
            return handle.verdict
        now = time.monotonic()
        if now - handle.status_at < _STATUS_EVERY:
            return None
        handle.status_at = now
        cluster = handle.cluster
        try:
            report = call(cluster.gateway, cluster.gateway._cluster_report, cluster.name,
                          timeout=5)
        except Exception:
            return None  # no verdict: the client's own connection check covers a lost scheduler
        if report.status == ClusterStatus.FAILED:
            handle.verdict = (f"the gateway reports cluster {cluster.name} FAILED (the "
                              "gateway server's log says why)")
        elif report.status in (ClusterStatus.STOPPING, ClusterStatus.STOPPED):
            handle.verdict = (f"the gateway stopped cluster {cluster.name} (status "
                              f"{report.status.name}: its idle timeout, an administrator "
                              "or `daskjob reap`)")
        return handle.verdict

    def shut_down(self, handle: GatewayHandle, timeout: float) -> None:
        if handle.keepalive is not None:
            handle.keepalive.stop()
        cluster = handle.cluster
        deadline = time.monotonic() + timeout
        # on failure (or a gateway that does not answer) a second close tries again
        call_with_deadline(lambda: _stop_and_wait(cluster, deadline), deadline + 1,
                           name="daskjob-gateway-close",
                           expired=lambda: TimeoutError(f"close did not finish within {timeout:.0f}s"))
        with contextlib.suppress(Exception):
            cluster.status = "closed"  # nothing left for its atexit/__del__ close to do
            close_gateway(cluster.gateway)

    # ------------------------------------------------------------------ reaper
    def find_leftovers(self, spec: "ClusterSpec", older_than: float | None) -> list[Leftover]:
        found = []
        for report in self._reports(spec):
            labels = (report.options or {}).get("labels") or {}
            if not labels.get("daskjob/run-id"):
                continue
            started = report.start_time.timestamp() if report.start_time is not None else None
            judged = verdict(labels, older_than=older_than, started=started)
            if judged.leftover:
                found.append(Leftover(
                    backend=self.name, run_id=labels["daskjob/run-id"], name=report.name,
                    age_s=None if started is None else time.time() - started,
                    detail=f"{report.status.name}, driver {describe(labels)}: {judged.why}",
                    handle=report.name))
        return found

    def _reports(self, spec: "ClusterSpec") -> list[Any]:
        """The gateway's reports of its pending and running clusters."""
        gw = connect(self.options(spec), spec.secrets)
        try:
            return call(gw, gw._clusters)
        finally:
            close_gateway(gw)

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        gw = connect(self.options(spec), spec.secrets)
        try:
            call(gw, gw._stop_cluster, leftover.handle or leftover.name)
        finally:
            close_gateway(gw)


def _wait_running(gw: Any, name: str, ctx: ClusterContext) -> None:
    """The scheduler starts on the gateway's side: wait for it, watching the run's
    deadline (a second early, to clean up and say why) and cancel()."""
    from dask_gateway.client import ClusterStatus
    give_up = ctx.startup_deadline - 1.0 if ctx.startup_deadline else None
    while True:
        report = call(gw, gw._cluster_report, name)
        if report.status == ClusterStatus.RUNNING:
            return
        if report.status != ClusterStatus.PENDING:
            # the gateway's API says no more than this; its server log says why
            raise RuntimeError(f"gateway cluster {name} failed to start (status "
                               f"{report.status.name}; the gateway server's log says why)")
        if ctx.is_cancelled():
            raise RuntimeError(f"cancelled while gateway cluster {name} was starting")
        if give_up is not None and time.monotonic() > give_up:
            raise TimeoutError(f"gateway cluster {name} was still PENDING at startup_timeout")
        time.sleep(0.25)


def _stop_and_wait(cluster: Any, deadline: float) -> None:
    """Ask the gateway to stop the cluster, and wait until it has: the gateway stops
    processes after answering, and the run must end with its cluster gone."""
    from dask_gateway.client import ClusterStatus
    gw = cluster.gateway
    if cluster.status != "closed":
        # closes its clients (the keepalive's too) and asks the gateway to stop it
        call(gw, cluster._stop_internal, shutdown=True,
             timeout=max(1.0, deadline - time.monotonic()))
    status = "unknown"
    while time.monotonic() < deadline:
        report = call(gw, gw._cluster_report, cluster.name,
                      timeout=max(0.5, deadline - time.monotonic()))
        status = report.status.name
        if report.status in (ClusterStatus.STOPPED, ClusterStatus.FAILED):
            return
        time.sleep(0.2)
    raise TimeoutError(f"gateway cluster {cluster.name} still {status} after the close's "
                       "time limit")
