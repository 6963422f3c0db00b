"""`ssh`: a scheduler and workers started over SSH on hosts you name (asyncssh).

Follows distributed's SSHCluster (same convention: the first host runs the scheduler,
the others run the workers; give one host to run everything there), built from its
SpecCluster with process classes of our own (ssh_processes.py), because a run needs
what SSHCluster does not do by itself: processes on pseudo-terminals that end with
their SSH session, output read all the time, exits confirmed on each host, labels on
every process for `daskjob reap --backend ssh` (ssh_reap.py), and a scheduler that
closes itself when no client has been connected for `client_timeout` (ssh_idle.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

from pydantic import field_validator

from ..durations import seconds
from . import ssh_reap
from .base import Backend, ClusterContext, ClusterHandle, Leftover
from .common import BackendOptions
from .ssh_processes import (START_TIMEOUT, RemoteProcess, SSHScheduler, SSHSpecCluster,
                            SSHWorker, output_summary, require_asyncssh)
from .ssh_reap import is_loopback

if TYPE_CHECKING:
    from ..groups import GroupPlan
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

CLIENT_TIMEOUT_VAR = "DASKJOB_SSH_CLIENT_TIMEOUT"
IDLE_PRELOAD = "daskjob.backends.ssh_idle"
MIN_DEATH_TIMEOUT = 15.0    # a nanny's start is bounded by it too: shorter breaks startup
DEFAULT_CLIENT_TIMEOUT = 15.0
_RESERVED_SCHEDULER = {"protocol", "security", "host", "preload", "dashboard_address",
                       "dashboard", "idle_timeout"}
_RESERVED_WORKER = {"nthreads", "memory_limit", "death_timeout", "preload", "security",
                    "protocol", "env", "n_workers", "name"}
_CREDENTIAL_KEYS = {"password", "passphrase", "client_keys_passphrase"}


def _connect_option_names() -> set[str]:
    asyncssh = require_asyncssh()
    names = set(inspect.signature(asyncssh.SSHClientConnectionOptions.prepare).parameters)
    names |= set(inspect.signature(asyncssh.connect).parameters)
    return names - {"self", "host", "options", "kwargs", "config", "sock", "last_config"}


class SSHOptions(BackendOptions):
    backend: ClassVar[str] = "ssh"
    reserved: ClassVar[frozenset[str]] = frozenset({
        "n_workers", "threads_per_worker", "nthreads", "memory_limit", "env",
        "death_timeout", "preload", "dashboard_address", "security", "protocol",
        "worker_class", "resources"})

    # the first runs the scheduler, the others the workers (round robin); one runs both
    hosts: list[str]
    connect_options: dict[str, Any] = {}     # asyncssh.connect keywords
    remote_python: str | None = None         # default: this interpreter's path
    scheduler_host: str | None = None        # address the scheduler binds (default: hosts[0])
    client_timeout: str | float = DEFAULT_CLIENT_TIMEOUT   # 0: never
    scheduler_options: dict[str, Any] = {}
    worker_options: dict[str, Any] = {}

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, v):
        if not isinstance(v, list) or not v or not all(isinstance(h, str) and h.strip() for h in v):
            raise ValueError("required, a non-empty list of host names or addresses (the "
                             "first runs the scheduler, the others the workers)")
        return [h.strip() for h in v]

    @field_validator("remote_python", "scheduler_host")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and not v.strip():
            raise ValueError("must be a non-empty string")
        return v

    @field_validator("client_timeout")
    @classmethod
    def _duration(cls, v):
        seconds(v, field="options.client_timeout")
        return v

    @field_validator("scheduler_options", "worker_options")
    @classmethod
    def _not_ours(cls, v, info):
        reserved = _RESERVED_SCHEDULER if info.field_name == "scheduler_options" else _RESERVED_WORKER
        clash = reserved & set(v)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))} set by daskjob (ClusterSpec "
                             "fields, tls, options.scheduler_host)")
        return v

    @field_validator("connect_options")
    @classmethod
    def _connect(cls, v):
        creds = _CREDENTIAL_KEYS & set(v)
        if creds:
            raise ValueError(f"{', '.join(sorted(creds))} is a credential: put it in "
                             "ClusterSpec.secrets (password, passphrase)")
        unknown = set(v) - _connect_option_names()   # also: asyncssh is there
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))} not accepted by asyncssh.connect")
        return v

    @property
    def client_timeout_s(self) -> float:
        return float(seconds(self.client_timeout, field="options.client_timeout") or 0)


@dataclass(eq=False)
class SSHHandle(ClusterHandle):
    processes: list = field(default_factory=list)  # every RemoteProcess of the cluster
    worker: dict = field(default_factory=dict)     # the default worker's spec
    bind_worker_host: bool = True


def _quiet_asyncssh() -> None:
    # asyncssh logs every connection and channel at INFO, commands included
    log = logging.getLogger("asyncssh")
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)


class SSHBackend(Backend):
    name = "ssh"
    why_not = "its workers are placed on the hosts in options.hosts"
    can_group = True   # fixed-size groups, each on hosts of its own (options.hosts)
    group_options = frozenset({"hosts", "worker_options"})
    Options = SSHOptions
    secret_names = frozenset({"password", "passphrase", "client_key"})
    tls_by_default = True
    shares_filesystem = False

    def _connect_options(self, spec: "ClusterSpec") -> dict[str, Any]:
        asyncssh = require_asyncssh()
        connect = dict(self.options(spec).connect_options)
        keys = connect.get("client_keys")
        if isinstance(keys, str):
            connect["client_keys"] = [keys]
        secrets = {k: v.get_secret_value() for k, v in spec.secrets.items()}
        if "password" in secrets:
            connect["password"] = secrets["password"]
        if "client_key" in secrets:
            connect["client_keys"] = [asyncssh.import_private_key(
                secrets["client_key"], secrets.get("passphrase"))]
        elif "passphrase" in secrets:
            connect["passphrase"] = secrets["passphrase"]
        connect.setdefault("connect_timeout", 15)
        return connect

    # -- lifecycle
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> SSHHandle:
        _quiet_asyncssh()
        opts = self.options(spec)
        registry: list = []
        scheduler, worker, security = self._process_specs(spec, ctx, opts, registry)
        cluster = SSHSpecCluster(
            workers={}, scheduler=scheduler, worker=worker, security=security,
            name=f"daskjob-ssh-{ctx.run_id}", worker_hosts=opts.hosts[1:] or opts.hosts[:1],
            registry=registry, bind_worker_host="host" not in opts.worker_options,
            silence_logs=False)
        return SSHHandle(cluster=cluster, processes=registry, worker=worker,
                         bind_worker_host="host" not in opts.worker_options)

    def validate_groups(self, spec: "ClusterSpec") -> None:
        super().validate_groups(spec)
        hosts = set(self.options(spec).hosts)
        for name, group in spec.worker_groups.items():
            # the reaper and the leak checks look on options.hosts: a group stays there
            strangers = sorted(set(group.options.get("hosts") or ()) - hosts)
            if strangers:
                raise ValueError(f"worker_groups.{name}.options.hosts: {', '.join(strangers)} "
                                 "not in the cluster's options.hosts (list every host there)")

    def check_group_options(self, group: str, options: dict[str, Any]) -> None:
        super().check_group_options(group, options)
        hosts = options.get("hosts")
        if hosts is not None and (not isinstance(hosts, list) or not hosts
                                  or not all(isinstance(h, str) and h.strip() for h in hosts)):
            raise ValueError(f"worker_groups.{group}.options.hosts: a non-empty list of hosts")
        if not isinstance(options.get("worker_options", {}), dict):
            raise ValueError(f"worker_groups.{group}.options.worker_options: a mapping")

    def scale(self, handle: SSHHandle, n: int) -> None:
        """The default workers round robin over the worker hosts; each group's on its own."""
        cluster = handle.cluster
        for plan in handle.groups[1:]:
            for i in range(int(plan.n_workers or 0)):
                cluster.worker_spec[plan.worker_name(i)] = _group_worker(handle, plan, i)
        default = handle.groups[0].n_workers if handle.groups else n
        cluster.scale(len(cluster.worker_spec) + int(default or 0))

    def _process_specs(self, spec, ctx, opts: SSHOptions, registry: list):
        """The SpecCluster specs of the scheduler and of a worker, and the run's TLS."""
        from distributed.security import Security
        tls = self.uses_tls(spec)
        security = Security.temporary() if tls else None
        common = {"connect_options": self._connect_options(spec), "registry": registry,
                  "remote_python": opts.remote_python or sys.executable,
                  "config_b64": _config_b64(ctx.worker_config, security)}
        scheduler_kwargs = {
            **opts.scheduler_options, "protocol": "tls" if tls else "tcp",
            "host": opts.scheduler_host or opts.hosts[0],
            "port": opts.scheduler_options.get("port", 0), "dashboard": bool(spec.dashboard),
            # on the scheduler host's loopback only (reach it with `ssh -L`): a dashboard
            # shows task names, code and logs to whoever can connect
            "dashboard_address": "127.0.0.1:0" if spec.dashboard else None,
            "preload": [IDLE_PRELOAD]}
        death_timeout = max(spec.death_timeout_s, MIN_DEATH_TIMEOUT)
        worker_kwargs = {
            "nthreads": spec.threads_per_worker,
            "memory_limit": spec.memory_bytes if spec.memory_bytes else "auto",
            "death_timeout": death_timeout,
            **({"preload": list(spec.preload)} if spec.preload else {}),
            **({"resources": dict(spec.resources)} if spec.resources else {}),
            **opts.worker_options}
        # the scheduler starts inside create(): give up a little before the run does
        scheduler_timeout = START_TIMEOUT
        if ctx.startup_deadline is not None:
            scheduler_timeout = max(1.0, min(START_TIMEOUT,
                                             ctx.startup_deadline - time.monotonic() - 1.0))
        env = dict(ctx.worker_env)
        scheduler = {"cls": SSHScheduler, "options": {
            **common, "start_timeout": scheduler_timeout, "host": opts.hosts[0],
            "env": {**env, CLIENT_TIMEOUT_VAR: str(opts.client_timeout_s)},
            "kwargs": scheduler_kwargs}}
        worker = {"cls": SSHWorker, "options": {
            **common, "env": env, "kwargs": worker_kwargs,
            "start_timeout": max(START_TIMEOUT, death_timeout + 15)}}
        return scheduler, worker, security

    def failure_reason(self, handle: SSHHandle) -> str | None:
        procs = list(handle.processes)
        for p in (p for p in procs if p.role == "scheduler"):
            if p._drain_task is not None and p._drain_task.done() and not p._stopped:
                return (f"the scheduler on {p.host} exited (status {p.exit_status}); its "
                        "output:\n" + output_summary(p.tail))
        workers = [p for p in procs if p.role == "worker"]
        if not workers or any(p.running or (p.startup_error is None and not p._stopped)
                              for p in workers):
            return None
        errors = sorted({p.startup_error for p in workers if p.startup_error})
        head = f"all {len(workers)} worker processes started over ssh failed or exited"
        return head + (":\n" + "\n\n".join(errors) if errors else "")

    def snapshot_logs(self, handle: SSHHandle, logs_dir: str) -> list[str]:
        """Each remote process's own output (what it printed on its terminal: startup,
        crashes, anything not sent through logging) as ssh-<role>-<name>-<host>.log.
        Written again at close, with the processes' last lines."""
        handle.logs_dir = logs_dir
        written = []
        for p in list(handle.processes):
            if not p.tail:
                continue
            name = "" if p.role == "scheduler" else f"-{p.name}"
            fname = re.sub(r"[^A-Za-z0-9_.-]", "_", f"ssh-{p.role}{name}-{p.host}") + ".log"
            with open(os.path.join(logs_dir, fname), "w") as f:
                f.write("\n".join(p.tail) + "\n")
            written.append(fname)
        return written

    def dashboard_link(self, handle: SSHHandle) -> str | None:
        # the dashboard listens on the scheduler host's loopback: a link only works when
        # that host is this one's loopback too
        try:
            link = handle.cluster.dashboard_link
        except Exception:
            return None
        return link if is_loopback(urlparse(link).hostname or "") else None

    def process_ids(self, handle: SSHHandle) -> list[int]:
        # pids are only meaningful here for processes on this machine (a loopback host)
        return [p.remote_pid for p in list(handle.processes)
                if p.remote_pid and is_loopback(p.host) and not p._stopped]

    def shut_down(self, handle: SSHHandle, timeout: float) -> None:
        cluster = handle.cluster
        # A worker still starting holds the cluster's lock, which close() waits for:
        # hang those up first (the run is ending; they are of no use any more).
        self._hang_up(handle, timeout, [p for p in list(handle.processes) if p.role == "worker"
                                        and p._drain_task is None and not p._stopped])
        scheduler = getattr(cluster, "scheduler", None)
        if isinstance(scheduler, RemoteProcess) and scheduler._drain_task is not None \
                and scheduler._drain_task.done():
            # the scheduler process is gone: asking it to shut down would only wait for
            # connect timeouts; hang up the workers instead
            cluster.shutdown_scheduler = False
        try:
            cluster.close(timeout=timeout)
        except BaseException:
            # the loop is still there after a timeout: end the sessions left
            self._hang_up(handle, timeout, [p for p in list(handle.processes)
                                            if p.connection is not None
                                            and not p.connection.is_closed()])
            raise
        finally:
            if handle.logs_dir and os.path.isdir(handle.logs_dir):
                self.snapshot_logs(handle, handle.logs_dir)

    def _hang_up(self, handle: SSHHandle, timeout: float, procs: list) -> None:
        cluster = handle.cluster
        if not procs or getattr(cluster, "loop", None) is None:
            return

        async def hang_up_all():
            await asyncio.gather(*(p._hang_up() for p in procs), return_exceptions=True)

        try:
            cluster.sync(hang_up_all, callback_timeout=min(timeout, 15))
        except Exception as e:  # each process's own exit check logs what it could not do
            logger.warning("ssh: could not hang up %d remote process(es): %s", len(procs), e)

    # -- reaper (see ssh_reap)
    def find_leftovers(self, spec: "ClusterSpec", older_than: float | None) -> list[Leftover]:
        _quiet_asyncssh()
        return ssh_reap.leftovers(self.name, self._on_hosts(spec, "list"), older_than)

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        handle = leftover.handle or {}
        host, pids = handle.get("host"), handle.get("pids")
        if not host or not pids:
            raise ValueError(f"leftover {leftover.name} has no host/pids to stop")
        self._on_hosts(spec, "stop", host=host, run_id=leftover.run_id, pids=pids)

    def _on_hosts(self, spec: "ClusterSpec", what: str, *, host: str | None = None,
                  **kwargs) -> dict[str, Any]:
        """ssh_reap.run_on_hosts on the spec's hosts (or on `host`)."""
        opts = self.options(spec)
        hosts = [host] if host else list(dict.fromkeys(opts.hosts))
        return ssh_reap.run_on_hosts(self._connect_options(spec),
                                     opts.remote_python or sys.executable, hosts, what, **kwargs)


def _config_b64(worker_config: dict, security) -> str:
    """The dask config the remote processes start with: this process's, the run's worker
    config, and the run's TLS credentials (PEM text)."""
    import dask.config
    from dask.config import merge
    config = merge(dask.config.config, worker_config)
    if security is not None:
        config = merge(config, {"distributed": {"comm": {
            "require-encryption": True,
            "tls": {
                "ca-file": security.tls_ca_file,
                "scheduler": {"cert": security.tls_scheduler_cert,
                              "key": security.tls_scheduler_key},
                "worker": {"cert": security.tls_worker_cert, "key": security.tls_worker_key},
                "client": {"cert": security.tls_client_cert, "key": security.tls_client_key},
            }}}})
    return dask.config.serialize(config)


def _group_worker(handle: SSHHandle, plan: "GroupPlan", i: int) -> dict:
    """A group's i-th worker: the default worker's spec with the group's host, sizes,
    resources and environment."""
    options = dict(handle.worker["options"])
    hosts = plan.options.get("hosts") or handle.cluster._worker_hosts
    host = hosts[i % len(hosts)]
    kwargs = {**options["kwargs"], "nthreads": plan.threads_per_worker,
              "resources": dict(plan.resources) or None,
              **(plan.options.get("worker_options") or {})}
    if plan.memory_bytes:
        kwargs["memory_limit"] = plan.memory_bytes
    if handle.bind_worker_host:
        kwargs["host"] = host
    options.update(host=host, kwargs=kwargs, env={**options["env"], **plan.env})
    return {"cls": handle.worker["cls"], "options": options}
