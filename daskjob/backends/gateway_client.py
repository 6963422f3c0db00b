"""Talking to a Dask Gateway for the `gateway` backend: bounded calls on the client's
loop, a client closed exactly once, the cluster options a run asks for, and the
keepalive that keeps a live run's cluster busy."""

from __future__ import annotations

import asyncio
import getpass
import logging
import threading
from typing import Any, Callable

from .common import inherited_config_env

logger = logging.getLogger("daskjob.backends.gateway")

CALL_TIMEOUT = 30.0          # any single request to the gateway


def call(gateway: Any, fn: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT,
         **kwargs: Any) -> Any:
    """Run one of the gateway client's coroutines on its loop, bounded by `timeout`
    (the client's own sync() waits forever on an unresponsive server)."""
    future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), gateway.loop.asyncio_loop)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


def close_gateway(gw: Any) -> None:
    """Close a dask_gateway.Gateway once. Its close() is not idempotent and __del__ calls
    it again, which raises once the loop is stopped: mark it closed for __del__."""
    if getattr(gw, "_daskjob_closed", False):
        return
    gw._daskjob_closed = True
    try:
        gw.close()
    finally:
        gw._asynchronous = True  # __del__ does nothing for an asynchronous client


def connect(opts: Any, secrets: dict[str, Any]) -> Any:
    from dask_gateway import Gateway
    return Gateway(opts.address, proxy_address=opts.proxy_address,
                   public_address=opts.public_address, auth=auth(opts, secrets))


def auth(opts: Any, secrets: dict[str, Any]) -> Any:
    from dask_gateway.auth import BasicAuth, JupyterHubAuth, KerberosAuth
    if opts.auth == "basic":
        password = secrets.get("password")
        return BasicAuth(opts.username or getpass.getuser(),
                         password.get_secret_value() if password is not None else None)
    if opts.auth == "kerberos":
        return KerberosAuth()
    token = secrets.get("api_token")
    return JupyterHubAuth(token.get_secret_value() if token is not None else None)


def cluster_options(gw: Any, spec: Any, opts: Any, ctx: Any) -> Any:
    """The gateway's cluster options for this run: its environment (ClusterSpec.env, the
    run's DASKJOB_* labels, the workers' dask config), its labels, the workers' size
    where the gateway offers them, and the user's own cluster_options."""
    import dask.config
    offered_options = call(gw, gw._cluster_options)
    offered = set(offered_options)
    missing = set(opts.cluster_options) - offered
    if missing:
        raise ValueError(f"options.cluster_options: {', '.join(sorted(missing))} not "
                         f"offered by the gateway at {gw.address} (it offers: "
                         f"{', '.join(sorted(offered)) or 'none'})")
    if "environment" not in offered:
        raise ValueError(
            f"the gateway at {gw.address} offers no 'environment' cluster option, so "
            "the run's environment (cluster.env and its DASKJOB_* labels) cannot reach "
            "its workers; add Mapping('environment') to the server's "
            "c.Backend.cluster_options with a handler that returns it as "
            "'environment' (see scripts/services/gateway_config.py)")
    worker_config = dict(ctx.worker_config)
    if spec.preload:
        worker_config = dask.config.merge(
            worker_config, {"distributed": {"worker": {"preload": list(spec.preload)}}})
    offered_options["environment"] = {**ctx.worker_env, **inherited_config_env(worker_config)}
    if "labels" in offered:
        offered_options["labels"] = dict(ctx.labels)
    else:
        logger.warning("the gateway at %s offers no 'labels' cluster option: "
                       "`daskjob reap --backend gateway` cannot find this run's cluster "
                       "(the gateway's idle timeout still stops it)", gw.address)
    for key, value in {**_sizes(spec, offered), **opts.cluster_options}.items():
        offered_options[key] = value
    return offered_options


def _sizes(spec: Any, offered: set[str]) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    if "worker_threads" in offered:
        sizes["worker_threads"] = spec.threads_per_worker
    elif "worker_cores" in offered:
        sizes["worker_cores"] = spec.threads_per_worker
    if spec.memory_bytes:
        key = next((k for k in ("worker_memory_gib", "worker_memory") if k in offered), None)
        if key:
            sizes[key] = round(spec.memory_bytes / 2**30, 3)
    return sizes


class KeepBusy:
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
