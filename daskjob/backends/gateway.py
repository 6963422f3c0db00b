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

import asyncio
import contextlib
import getpass
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import Backend, ClusterContext, Leftover, register_backend

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

_EXTRA = "pip install 'daskjob[gateway]'"
_AUTHS = ("basic", "kerberos", "jupyterhub")
_OPTIONS = {
    "address": "the gateway's http(s) address (or dask config gateway.address)",
    "proxy_address": "the scheduler proxy, gateway://host:port or a port",
    "public_address": "the gateway's address as browsers see it (dashboard links)",
    "auth": "basic | kerberos | jupyterhub",
    "username": "basic auth user (default: the local user)",
    "cluster_options": "mapping of the gateway's own cluster options",
    "keepalive": "seconds between keep-busy tasks (false: none)",
}
_SECRETS = {"password": "basic auth password", "api_token": "jupyterhub api token"}
# cluster options daskjob fills in itself
_OWN_CLUSTER_OPTIONS = {"labels": "the job's labels", "environment": "cluster.env"}
_CALL_TIMEOUT = 30.0          # any single request to the gateway
_STATUS_EVERY = 2.0           # how often a running cluster's state is asked for
_DEFAULT_KEEPALIVE = 2.0


def _require_library() -> None:
    try:
        import dask_gateway  # noqa: F401
    except ImportError:
        raise ValueError(f"backend 'gateway' needs dask-gateway: {_EXTRA}") from None


def _gateway_config_address() -> str | None:
    import dask.config
    return dask.config.get("gateway.address", default=None)


def _call(gateway: Any, fn: Callable[..., Any], *args: Any, timeout: float = _CALL_TIMEOUT,
          **kwargs: Any) -> Any:
    """Run one of the gateway client's coroutines on its loop, bounded by `timeout`
    (the client's own sync() waits forever on an unresponsive server)."""
    future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), gateway.loop.asyncio_loop)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


def _bounded(fn: Callable[[], Any], timeout: float, what: str) -> None:
    """Run fn in a helper thread; give up waiting (not the thread) after `timeout`."""
    box: dict[str, BaseException] = {}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"daskjob-gateway-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]


def _close_gateway(gw: Any) -> None:
    """Close a dask_gateway.Gateway once. Its close() is not idempotent and __del__ calls
    it again, which raises once the loop is stopped: mark it closed for __del__."""
    if getattr(gw, "_daskjob_closed", False):
        return
    gw._daskjob_closed = True
    try:
        gw.close()
    finally:
        gw._asynchronous = True  # __del__ does nothing for an asynchronous client


def _auth(spec: "ClusterSpec") -> Any:
    from dask_gateway.auth import BasicAuth, JupyterHubAuth, KerberosAuth
    kind = spec.options.get("auth", "basic")
    if kind == "basic":
        password = spec.secrets.get("password")
        return BasicAuth(spec.options.get("username") or getpass.getuser(),
                         password.get_secret_value() if password is not None else None)
    if kind == "kerberos":
        return KerberosAuth()
    token = spec.secrets.get("api_token")
    return JupyterHubAuth(token.get_secret_value() if token is not None else None)


def _connect(spec: "ClusterSpec") -> Any:
    from dask_gateway import Gateway
    o = spec.options
    return Gateway(o.get("address"), proxy_address=o.get("proxy_address"),
                   public_address=o.get("public_address"), auth=_auth(spec))


def _keepalive_seconds(spec: "ClusterSpec") -> float | None:
    from ..durations import seconds
    value = spec.options.get("keepalive", _DEFAULT_KEEPALIVE)
    if value is False or value is None:
        return None
    return seconds(value, field="options.keepalive")


class _KeepBusy:
    """Submits a no-op task every `period` seconds through a client of its own, so the
    gateway's idle timeout never takes a live run's cluster (its check counts any task
    transition as activity). Stops on close, or when the driver dies."""

    def __init__(self, cluster: Any, period: float):
        self.period = period
        self.stopped = threading.Event()
        self.client = cluster.get_client(set_as_default=False)
        self.thread = threading.Thread(target=self._run, name="daskjob-gateway-keepalive",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = None
        while not self.stopped.wait(self.period):
            try:
                # replacing the last future releases it: that is a transition too
                last = self.client.submit(int, 0, pure=False)  # noqa: F841
            except Exception:
                if self.client.status in ("closing", "closed"):
                    return

    def stop(self) -> None:
        self.stopped.set()


@register_backend
class GatewayBackend(Backend):
    name = "gateway"
    tls_by_default = True
    reserved_options = frozenset({"n_workers", "env", "environment", "labels",
                                  "security", "tls", "worker_cores", "worker_threads",
                                  "worker_memory"})

    # ------------------------------------------------------------------ validation
    def validate(self, spec: "ClusterSpec") -> None:
        super().validate(spec)
        o = spec.options
        unknown = set(o) - set(_OPTIONS) - self.reserved_options
        if unknown:
            raise ValueError(
                f"options: {', '.join(sorted(unknown))} not accepted by the 'gateway' backend "
                "(accepted: " + "; ".join(f"{k}: {v}" for k, v in _OPTIONS.items()) + ")")
        bad_secrets = set(spec.secrets) - set(_SECRETS)
        if bad_secrets:
            raise ValueError(f"secrets: {', '.join(sorted(bad_secrets))} not used by the "
                             "'gateway' backend (accepted: "
                             + ", ".join(f"{k} ({v})" for k, v in _SECRETS.items()) + ")")
        if spec.tls is False:
            raise ValueError("tls: a gateway cluster always uses TLS, with credentials the "
                             "gateway makes per cluster; leave tls unset (or true)")
        _require_library()
        address = o.get("address", _gateway_config_address())
        if not address:
            raise ValueError("options.address: the 'gateway' backend needs the gateway's "
                             "address, e.g. http://gateway.example:8000 (or set dask config "
                             "gateway.address)")
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            raise ValueError(f"options.address: {address!r} is not an http(s):// address")
        proxy = o.get("proxy_address")
        if proxy is not None and not (
                (isinstance(proxy, int) and not isinstance(proxy, bool) and 0 < proxy < 65536)
                or (isinstance(proxy, str) and proxy.strip())):
            raise ValueError(f"options.proxy_address: {proxy!r} is neither an address "
                             "(gateway://host:port) nor a port")
        public = o.get("public_address")
        if public is not None and not (isinstance(public, str)
                                       and public.startswith(("http://", "https://"))):
            raise ValueError(f"options.public_address: {public!r} is not an http(s):// address")
        auth = o.get("auth", "basic")
        if auth not in _AUTHS:
            raise ValueError(f"options.auth: {auth!r} is not one of {', '.join(_AUTHS)}")
        if "username" in o and (auth != "basic" or not isinstance(o["username"], str)
                                or not o["username"]):
            raise ValueError("options.username: a non-empty string, only with auth: basic")
        if auth == "kerberos":
            try:
                import kerberos  # noqa: F401
            except ImportError:
                raise ValueError("options.auth: kerberos needs the kerberos package "
                                 "(pip install pykerberos)") from None
        cluster_options = o.get("cluster_options", {})
        if not isinstance(cluster_options, dict) or not all(
                isinstance(k, str) for k in cluster_options):
            raise ValueError("options.cluster_options: must be a mapping of the gateway's "
                             f"cluster option names to values, got {cluster_options!r}")
        own = set(cluster_options) & set(_OWN_CLUSTER_OPTIONS)
        if own:
            raise ValueError(
                f"options.cluster_options: {', '.join(sorted(own))} set by daskjob from "
                + ", ".join(f"{_OWN_CLUSTER_OPTIONS[k]} ({k})" for k in sorted(own))
                + "; use those instead")
        _keepalive_seconds(spec)

    # ------------------------------------------------------------------ lifecycle
    def _cluster_options(self, gw: Any, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        import dask.config
        opts = _call(gw, gw._cluster_options)
        offered = set(opts)
        wanted = dict(spec.options.get("cluster_options", {}))
        missing = set(wanted) - offered
        if missing:
            raise ValueError(f"options.cluster_options: {', '.join(sorted(missing))} not "
                             f"offered by the gateway at {gw.address} (it offers: "
                             f"{', '.join(sorted(offered)) or 'none'})")
        env = dict(ctx.worker_env)
        worker_config = dict(ctx.worker_config)
        if spec.preload:
            worker_config = dask.config.merge(
                worker_config, {"distributed": {"worker": {"preload": list(spec.preload)}}})
        if worker_config:
            # read by dask.config on import, under any DASK_* variable the gateway sets
            env["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(worker_config)
        if "environment" not in offered:
            raise ValueError(
                f"the gateway at {gw.address} offers no 'environment' cluster option, so "
                "the run's environment (cluster.env and its DASKJOB_* labels) cannot reach "
                "its workers; add Mapping('environment') to the server's "
                "c.Backend.cluster_options with a handler that returns it as "
                "'environment' (see scripts/services/gateway_config.py)")
        opts["environment"] = env
        if "labels" in offered:
            opts["labels"] = dict(ctx.labels)
        else:
            logger.warning("the gateway at %s offers no 'labels' cluster option: "
                           "`daskjob reap --backend gateway` cannot find this run's cluster "
                           "(the gateway's idle timeout still stops it)", gw.address)
        sizes: dict[str, Any] = {}
        if "worker_threads" in offered:
            sizes["worker_threads"] = spec.threads_per_worker
        elif "worker_cores" in offered:
            sizes["worker_cores"] = spec.threads_per_worker
        if spec.memory_bytes:
            gib = round(spec.memory_bytes / 2**30, 3)
            for key in ("worker_memory_gib", "worker_memory"):
                if key in offered:
                    sizes[key] = gib
                    break
        for key, value in {**sizes, **wanted}.items():
            opts[key] = value
        return opts

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        from dask_gateway import GatewayCluster
        from dask_gateway.client import ClusterStatus

        o = spec.options
        gw = _connect(spec)
        name = None
        try:
            opts = self._cluster_options(gw, spec, ctx)
            name = _call(gw, gw._submit, cluster_options=opts)
            # the scheduler starts on the gateway's side: wait for it here, watching the
            # run's deadline (a second early, to clean up and say why) and cancel()
            give_up = ctx.startup_deadline - 1.0 if ctx.startup_deadline else None
            while True:
                report = _call(gw, gw._cluster_report, name)
                if report.status == ClusterStatus.RUNNING:
                    break
                if report.status != ClusterStatus.PENDING:
                    # the gateway's API says no more than this; its server log says why
                    raise RuntimeError(
                        f"gateway cluster {name} failed to start (status "
                        f"{report.status.name}; the gateway server's log says why)")
                if ctx.is_cancelled():
                    raise RuntimeError(f"cancelled while gateway cluster {name} was starting")
                if give_up is not None and time.monotonic() > give_up:
                    raise TimeoutError(f"gateway cluster {name} was still PENDING at "
                                       "startup_timeout")
                time.sleep(0.25)
            cluster = GatewayCluster.from_name(
                name, shutdown_on_close=True, address=o.get("address"),
                proxy_address=o.get("proxy_address"), public_address=o.get("public_address"),
                auth=_auth(spec))
        except BaseException:
            if name is not None:
                with contextlib.suppress(Exception):
                    _call(gw, gw._stop_cluster, name, timeout=10)
            raise
        finally:
            _close_gateway(gw)
        try:
            if cluster.security is None:
                raise RuntimeError(f"gateway cluster {cluster.name} came without TLS "
                                   "credentials")
            cluster._daskjob = {"closed": False, "status_at": 0.0, "verdict": None,
                                "keepalive": None}
            period = _keepalive_seconds(spec)
            if period:
                cluster._daskjob["keepalive"] = _KeepBusy(cluster, period)
            # ask for the workers now: the gateway starts their processes while the run
            # connects its client (the run's own scale() to the same size changes nothing)
            self.scale(cluster, self.expected_workers(spec))
        except BaseException:
            with contextlib.suppress(Exception):
                self.close(cluster, timeout=10)
            raise
        return cluster

    def scale(self, cluster: Any, n: int) -> None:
        from dask_gateway.client import GatewayClusterError
        try:
            _call(cluster.gateway, cluster.gateway._scale_cluster, cluster.name, n)
        except GatewayClusterError as e:  # 409: the gateway no longer runs it
            state = getattr(cluster, "_daskjob", None)
            if state is not None:
                state["status_at"] = 0.0
            reason = self.failure_reason(cluster)
            raise RuntimeError(reason or f"gateway cluster {cluster.name}: {e}") from e

    def failure_reason(self, cluster: Any) -> str | None:
        from dask_gateway.client import ClusterStatus
        state = getattr(cluster, "_daskjob", None)
        if state is None or state["closed"]:
            return None
        if state["verdict"] is not None:
            return state["verdict"]
        now = time.monotonic()
        if now - state["status_at"] < _STATUS_EVERY:
            return None
        state["status_at"] = now
        try:
            report = _call(cluster.gateway, cluster.gateway._cluster_report, cluster.name,
                           timeout=5)
        except Exception:
            return None  # no verdict: the client's own connection check covers a lost scheduler
        if report.status == ClusterStatus.FAILED:
            state["verdict"] = (f"the gateway reports cluster {cluster.name} FAILED (the "
                                "gateway server's log says why)")
        elif report.status in (ClusterStatus.STOPPING, ClusterStatus.STOPPED):
            state["verdict"] = (f"the gateway stopped cluster {cluster.name} (status "
                                f"{report.status.name}: its idle timeout, an administrator "
                                "or `daskjob reap`)")
        return state["verdict"]

    def close(self, cluster: Any, timeout: float) -> None:
        from dask_gateway.client import ClusterStatus
        state = getattr(cluster, "_daskjob", None)
        if state is None:
            state = cluster._daskjob = {"closed": False, "keepalive": None}
        if state["closed"]:
            return
        deadline = time.monotonic() + timeout
        keepalive = state.get("keepalive")
        if keepalive is not None:
            keepalive.stop()
        gw = cluster.gateway

        def shut_down():
            if cluster.status != "closed":
                # closes its clients (the keepalive's too) and asks the gateway to stop it
                _call(gw, cluster._stop_internal, shutdown=True,
                      timeout=max(1.0, deadline - time.monotonic()))
            # the gateway stops processes after answering: wait for it, so that the run
            # ends with its cluster gone
            status = "unknown"
            while time.monotonic() < deadline:
                report = _call(gw, gw._cluster_report, cluster.name,
                               timeout=max(0.5, deadline - time.monotonic()))
                status = report.status.name
                if report.status in (ClusterStatus.STOPPED, ClusterStatus.FAILED):
                    return
                time.sleep(0.2)
            raise TimeoutError(f"gateway cluster {cluster.name} still {status} "
                               f"after {timeout:.0f}s")

        _bounded(shut_down, timeout + 1, "close")  # on failure a second close tries again
        state["closed"] = True
        with contextlib.suppress(Exception):
            cluster.status = "closed"  # nothing left for its atexit/__del__ close to do
            _close_gateway(gw)

    # ------------------------------------------------------------------ reaper
    def find_leftovers(self, spec: "ClusterSpec", older_than: float) -> list[Leftover]:
        from ..procs import DRIVER_LABEL, driver_label_alive, label_age
        gw = _connect(spec)
        try:
            reports = _call(gw, gw._clusters)  # pending and running
        finally:
            _close_gateway(gw)
        found = []
        now = time.time()
        for report in reports:
            labels = (report.options or {}).get("labels") or {}
            run_id = labels.get("daskjob/run-id")
            if not run_id:
                continue
            alive = driver_label_alive(labels.get(DRIVER_LABEL))
            if alive:
                continue
            age = label_age(labels, now)
            if age is None and report.start_time is not None:
                age = now - report.start_time.timestamp()
            if alive is None:
                # driven from another host (or unlabelled): only age can tell, and a
                # shared gateway's live runs must not go by default
                if older_than <= 0 or age is None or age < older_than:
                    continue
                why = f"driver {labels.get(DRIVER_LABEL) or '?'} on another host"
            else:
                if age is not None and age < older_than:
                    continue
                why = f"driver {labels.get(DRIVER_LABEL)} is gone"
            found.append(Leftover(backend=self.name, run_id=run_id, name=report.name,
                                  age_s=age, detail=f"{report.status.name}, {why}",
                                  handle=report.name))
        return found

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        gw = _connect(spec)
        try:
            _call(gw, gw._stop_cluster, leftover.handle or leftover.name)
        finally:
            _close_gateway(gw)
