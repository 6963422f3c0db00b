"""`ssh`: a scheduler and workers started over SSH on hosts you name (asyncssh).

Follows distributed's SSHCluster (same convention: the first host runs the scheduler,
the others run the workers; give one host to run everything there), built from its
SpecCluster with process classes of our own, because a run needs what SSHCluster does
not do by itself:

- each remote process runs on a pseudo-terminal: when its SSH session ends, for
  whatever reason (our close, a SIGKILLed driver, a dropped connection), sshd hangs the
  terminal up and the kernel sends SIGHUP to the whole process group (a nanny and its
  worker). Root sessions cannot be signalled over SSH, so this is the way to stop them;
- their output is read all the time (SSHCluster stops after startup, and a chatty
  worker then blocks on a full pipe) and kept as a tail for error messages;
- close() confirms on each host that the process group is gone, and kills it if not;
- every process carries the run's labels (DASKJOB_RUN_ID, ...) in its environment, so
  `daskjob reap --backend ssh` finds what a killed driver left on any host (ssh_reap:
  over ssh, with stdlib-only scripts, since the remote host may not have daskjob);
- the dask config (with the run's TLS credentials, PEM text) travels in the command
  line of each process, also to workers added later by scale();
- the scheduler closes itself when no client has been connected for `client_timeout`
  (preload daskjob.backends.ssh_idle).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import inspect
import json
import logging
import os
import re
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from . import Backend, ClusterContext, Leftover, register_backend, ssh_reap
from .ssh_reap import is_loopback

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'daskjob[ssh]'"
DRIVER_VAR = "DASKJOB_DRIVER"           # the daskjob/driver label: host_pid_start
CLIENT_TIMEOUT_VAR = "DASKJOB_SSH_CLIENT_TIMEOUT"
IDLE_PRELOAD = "daskjob.backends.ssh_idle"
MIN_DEATH_TIMEOUT = 15.0    # a nanny's start is bounded by it too: shorter breaks startup
DEFAULT_CLIENT_TIMEOUT = 15.0
START_TIMEOUT = 60.0        # one remote process: connect, exec, "... at: <address>"
_TAIL = 5000                # output lines kept per remote process (the record's copy)

_OPTIONS = {
    "hosts": "list of hosts: the first runs the scheduler, the others the workers "
             "(round robin); a single host runs both",
    "connect_options": "keywords for asyncssh.connect (port, username, client_keys, "
                       "known_hosts, ...)",
    "remote_python": "python on the remote hosts (default: this interpreter's path)",
    "scheduler_host": "address the scheduler binds and workers connect to "
                      "(default: the first host)",
    "client_timeout": "the scheduler closes itself when no client has been connected "
                      "this long (default 15s; 0: never)",
    "scheduler_options": "more keywords for distributed.Scheduler",
    "worker_options": "more keywords for distributed.Nanny / Worker",
}
_SECRETS = {"password", "passphrase", "client_key"}
_RESERVED_SCHEDULER = {"protocol", "security", "host", "preload", "dashboard_address",
                       "dashboard", "idle_timeout"}
_RESERVED_WORKER = {"nthreads", "memory_limit", "death_timeout", "preload", "security",
                    "protocol", "env", "n_workers", "name"}
_CREDENTIAL_KEYS = {"password", "passphrase", "client_keys_passphrase"}


def _quiet_asyncssh() -> None:
    # asyncssh logs every connection and channel at INFO, commands included
    log = logging.getLogger("asyncssh")
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)


def _require_asyncssh():
    try:
        import asyncssh
    except ImportError:
        raise ValueError(f"backend 'ssh' needs asyncssh: {EXTRA_HINT}") from None
    return asyncssh


def _connect_option_names() -> set[str]:
    asyncssh = _require_asyncssh()
    names = set(inspect.signature(asyncssh.SSHClientConnectionOptions.prepare).parameters)
    names |= set(inspect.signature(asyncssh.connect).parameters)
    return names - {"self", "host", "options", "kwargs", "config", "sock", "last_config"}


# --------------------------------------------------------------------------- processes

class _RemoteProcess:
    """One dask process started over SSH on a pseudo-terminal (base of both roles).

    Subclasses give `_command()` and `_ready(line)`. Mixed into distributed's
    ProcessInterface at runtime (see _classes) so that importing this module does not
    import distributed.deploy."""

    role = "process"
    ready_marker = ""

    def _setup(self, host: str, connect_options: dict, remote_python: str,
               env: dict[str, str], config_b64: str, registry: list | None):
        self.host = host
        self.connect_options = connect_options
        self.remote_python = remote_python
        self.env = dict(env)
        self.config_b64 = config_b64
        self.connection = None
        self.proc = None
        self.remote_pid: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self.startup_error: str | None = None
        self.exit_status: int | None = None
        self.started_at: float | None = None
        self._drain_task: asyncio.Task | None = None
        self._stopped = False
        if registry is not None:
            registry.append(self)

    # -- the command
    def _shell(self, argv: list[str], config_file: str) -> str:
        # The login shell prints its pid, then becomes the process (same pid, which is
        # also the process group and session of the terminal). The dask config (with the
        # run's TLS key) comes from a file only its user can read, removed at once: not
        # on a command line, where `ps` and logs would show it.
        f = shlex.quote(config_file)
        env = " ".join(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        return (f"echo DASKJOB_REMOTE_PID=$$; DASK_INTERNAL_INHERIT_CONFIG=$(cat {f}); "
                f"rm -f {f}; export DASK_INTERNAL_INHERIT_CONFIG; exec env {env} "
                + " ".join(shlex.quote(a) for a in [self.remote_python, *argv]))

    def _command(self, config_file: str) -> str:
        raise NotImplementedError

    # -- start
    async def start(self):
        try:
            await asyncio.wait_for(self._launch(), self._start_timeout())
        except BaseException as e:
            tail = _summary(self.tail)
            reason = ("timed out" if isinstance(e, (asyncio.TimeoutError, TimeoutError))
                      else f"{type(e).__name__}: {e}")
            self.startup_error = (f"{self.role} on {self.host} did not start: {reason}"
                                  + (f"\nlast output:\n{tail}" if tail else ""))
            from distributed.core import Status
            self.status = Status.failed
            await self._hang_up()
            if isinstance(e, (Exception, asyncio.CancelledError)):
                raise RuntimeError(self.startup_error) from e
            raise
        await super().start()

    def _start_timeout(self) -> float:
        return START_TIMEOUT

    async def _launch(self):
        asyncssh = _require_asyncssh()
        self.connection = await asyncssh.connect(self.host, **self.connect_options)
        written = await self.connection.run(
            'umask 077 && f=$(mktemp) && cat > "$f" && echo "$f"',
            input=self.config_b64, check=False)
        config_file = (written.stdout or "").strip()
        if written.exit_status != 0 or not config_file:
            raise RuntimeError(f"could not write the dask config to a temporary file "
                               f"(exit {written.exit_status}): {(written.stderr or '').strip()}")
        # a terminal: sshd hangs it up (SIGHUP to the process group) when the session ends
        self.proc = await self.connection.create_process(
            self._command(config_file), term_type="dumb", encoding="utf-8", errors="replace")
        self.started_at = time.time()
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await asyncio.sleep(0.1)  # let the exit status arrive
                raise RuntimeError(f"exited (status {self.proc.exit_status}) before it started")
            line = line.rstrip("\r\n")
            self._keep(line)
            if line.startswith("DASKJOB_REMOTE_PID=") and self.remote_pid is None:
                with contextlib.suppress(ValueError):
                    self.remote_pid = int(line.split("=", 1)[1])
                continue
            if self.ready_marker in line:
                self._ready(line.split(self.ready_marker, 1)[1].strip())
                break
        self._drain_task = asyncio.ensure_future(self._drain())

    def _ready(self, address: str) -> None:
        raise NotImplementedError

    def _keep(self, line: str) -> None:
        self.tail.append(line)
        logger.debug("%s %s: %s", self.role, self.host, line)

    async def _drain(self):
        """Read the process's output until it ends: a full pipe would block it."""
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                self._keep(line.rstrip("\r\n"))
            await self.proc.wait_closed()
        except Exception:  # the connection went away: the process went with it
            pass
        self.exit_status = self.proc.exit_status if self.proc is not None else None
        if not self._stopped:
            from distributed.core import Status
            # SpecCluster then neither asks a gone scheduler to retire workers nor waits
            self.status = Status.failed
            logger.info("%s on %s exited (status %s); last output:\n%s", self.role,
                           self.host, self.exit_status, "\n".join(list(self.tail)[-10:]))

    @property
    def running(self) -> bool:
        return (self.proc is not None and self.startup_error is None
                and (self._drain_task is None or not self._drain_task.done()))

    # -- stop
    async def close(self):
        self._stopped = True
        if self.proc is not None and self._drain_task is not None:
            # it was asked to close (scheduler terminated / worker retired): a moment
            # to exit on its own, then the hang-up
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._drain_task), self._grace())
        await self._hang_up()
        await super().close()

    def _grace(self) -> float:
        return 0.5

    async def _hang_up(self):
        """End the session (SIGHUP to the remote process group), make sure the group is
        gone on that host, close the connection. Bounded; never raises."""
        self._stopped = True
        conn, proc = self.connection, self.proc
        if conn is None:
            return
        try:
            if proc is not None:
                proc.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait_closed(), 2)
            if self.remote_pid:
                await asyncio.wait_for(conn.run(_ensure_gone_cmd(self.remote_pid), check=False), 10)
        except Exception as e:
            logger.debug("%s on %s: confirming exit failed: %s", self.role, self.host, e)
        finally:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)
            if self._drain_task is not None and not self._drain_task.done():
                self._drain_task.cancel()


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


def _summary(lines, last: int = 8) -> str:
    """A remote process's output for an error message: its exception lines (the cause
    is usually not among the last lines of a chained traceback) and its last lines."""
    lines = list(lines)
    causes = [ln for ln in lines[:-last] if _EXC_LINE.match(ln)]
    return "\n".join(dict.fromkeys(causes[-6:] + ["..."] * bool(causes) + lines[-last:]))


def _ensure_gone_cmd(pgid: int) -> str:
    # up to 3 s for the hung-up group to exit, then SIGKILL what is left of it
    return (f"i=0; while kill -0 -- -{pgid} 2>/dev/null && [ $i -lt 30 ]; do "
            f"sleep 0.1; i=$((i+1)); done; "
            f"if kill -0 -- -{pgid} 2>/dev/null; then kill -KILL -- -{pgid}; echo killed; fi")


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    """SpecCluster subclass and process classes, built on first use (distributed.deploy
    is imported only then)."""
    if _CLASSES:
        return _CLASSES
    from distributed.deploy.spec import ProcessInterface, SpecCluster

    class SSHScheduler(_RemoteProcess, ProcessInterface):
        role = "scheduler"
        ready_marker = "Scheduler at:"

        def __init__(self, host, connect_options, remote_python, env, config_b64,
                     kwargs, registry=None, start_timeout=START_TIMEOUT):
            ProcessInterface.__init__(self)
            self._setup(host, connect_options, remote_python, env, config_b64, registry)
            self.kwargs = kwargs
            self.name = "scheduler"
            self._timeout = start_timeout

        def _start_timeout(self):
            return self._timeout

        def _command(self, config_file):
            spec = json.dumps({"cls": "distributed.Scheduler", "opts": self.kwargs})
            return self._shell(["-m", "distributed.cli.dask_spec", "--spec", spec],
                               config_file)

        def _ready(self, address):
            self.address = address

        def _grace(self):
            return 1.5

    class SSHWorker(_RemoteProcess, ProcessInterface):
        role = "worker"
        ready_marker = "Start worker at:"

        def __init__(self, scheduler, host, connect_options, remote_python, env,
                     config_b64, kwargs, worker_class="distributed.Nanny",
                     registry=None, name=None, start_timeout=START_TIMEOUT):
            ProcessInterface.__init__(self)
            self._setup(host, connect_options, remote_python, env, config_b64, registry)
            self.scheduler = scheduler
            self.kwargs = dict(kwargs)
            self.worker_class = worker_class
            self.name = name
            self.worker_address: str | None = None
            self._timeout = start_timeout

        def _start_timeout(self):
            return self._timeout

        def _command(self, config_file):
            opts = {**self.kwargs, "name": self.name}
            spec = json.dumps({"0": {"cls": self.worker_class, "opts": opts}})
            return self._shell(["-m", "distributed.cli.dask_spec", self.scheduler,
                                "--spec", spec], config_file)

        def _ready(self, address):
            self.worker_address = address

    class SSHSpecCluster(SpecCluster):
        """Workers go round robin over the worker hosts."""

        def __init__(self, *args, worker_hosts: list[str], registry: list,
                     bind_worker_host: bool = True, **kwargs):
            self._worker_hosts = list(worker_hosts)
            self._bind_worker_host = bind_worker_host
            self._placed = 0
            self.remote_processes = registry
            super().__init__(*args, **kwargs)

        def new_worker_spec(self):
            name = self._new_worker_name(self._i)
            while name in self.worker_spec:
                self._i += 1
                name = self._new_worker_name(self._i)
            host = self._worker_hosts[self._placed % len(self._worker_hosts)]
            self._placed += 1
            spec = copy.copy(self.new_spec)
            spec["options"] = {**spec["options"], "host": host}
            if self._bind_worker_host:
                # the worker listens on the address it is reached at over ssh
                spec["options"]["kwargs"] = {**spec["options"]["kwargs"], "host": host}
            return {name: spec}

        async def _close(self):
            try:
                await super()._close()
            finally:
                # whatever SpecCluster did not close (a scheduler that had exited, a
                # worker that never started): end its session too
                rest = [p for p in self.remote_processes
                        if p.connection is not None and not p.connection.is_closed()]
                if rest:
                    await asyncio.gather(*(p._hang_up() for p in rest),
                                         return_exceptions=True)

    _CLASSES.update(scheduler=SSHScheduler, worker=SSHWorker, cluster=SSHSpecCluster)
    return _CLASSES


# ----------------------------------------------------------------------------- backend

@register_backend
class SSHBackend(Backend):
    name = "ssh"
    tls_by_default = True
    shares_filesystem = False
    reserved_options = frozenset({
        "n_workers", "threads_per_worker", "nthreads", "memory_limit", "env",
        "death_timeout", "preload", "dashboard_address", "security", "protocol",
        "worker_class",
    })

    # -- spec
    def validate(self, spec: "ClusterSpec") -> None:
        super().validate(spec)
        opts = spec.options
        unknown = set(opts) - set(_OPTIONS)
        if unknown:
            accepted = "; ".join(f"{k}: {v}" for k, v in _OPTIONS.items())
            raise ValueError(f"options: {', '.join(sorted(unknown))} not accepted by the ssh "
                             f"backend; accepted: {accepted}")
        hosts = opts.get("hosts")
        if (not isinstance(hosts, list) or not hosts
                or not all(isinstance(h, str) and h.strip() for h in hosts)):
            raise ValueError("options.hosts: required, a non-empty list of host names or "
                             "addresses (the first runs the scheduler, the others the workers)")
        for key in ("remote_python", "scheduler_host"):
            if key in opts and not (isinstance(opts[key], str) and opts[key].strip()):
                raise ValueError(f"options.{key}: must be a non-empty string")
        if "client_timeout" in opts:
            from ..durations import seconds
            seconds(opts["client_timeout"], field="options.client_timeout")
        for key, reserved in (("scheduler_options", _RESERVED_SCHEDULER),
                              ("worker_options", _RESERVED_WORKER)):
            value = opts.get(key, {})
            if not isinstance(value, dict):
                raise ValueError(f"options.{key}: must be a mapping")
            clash = reserved & set(value)
            if clash:
                raise ValueError(f"options.{key}: {', '.join(sorted(clash))} set by daskjob "
                                 "(ClusterSpec fields, tls, options.scheduler_host)")
        bad_secrets = set(spec.secrets) - _SECRETS
        if bad_secrets:
            raise ValueError(f"secrets: {', '.join(sorted(bad_secrets))} not used by the ssh "
                             f"backend; accepted: {', '.join(sorted(_SECRETS))}")
        connect = opts.get("connect_options", {})
        if not isinstance(connect, dict):
            raise ValueError("options.connect_options: must be a mapping")
        creds = _CREDENTIAL_KEYS & set(connect)
        if creds:
            raise ValueError(f"options.connect_options: {', '.join(sorted(creds))} is a "
                             "credential: put it in ClusterSpec.secrets (password, passphrase)")
        unknown = set(connect) - _connect_option_names()   # also: asyncssh is there
        if unknown:
            raise ValueError(f"options.connect_options: {', '.join(sorted(unknown))} not "
                             "accepted by asyncssh.connect")

    def _connect_options(self, spec: "ClusterSpec") -> dict[str, Any]:
        asyncssh = _require_asyncssh()
        connect = dict(spec.options.get("connect_options", {}))
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

    @staticmethod
    def _client_timeout(spec: "ClusterSpec") -> float:
        from ..durations import seconds
        value = spec.options.get("client_timeout", DEFAULT_CLIENT_TIMEOUT)
        return float(seconds(value, field="options.client_timeout") or 0)

    # -- lifecycle
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        _quiet_asyncssh()
        import dask.config
        from dask.config import merge
        from distributed.security import Security

        classes = _classes()
        opts = spec.options
        hosts = [h.strip() for h in opts["hosts"]]
        worker_hosts = hosts[1:] or hosts[:1]
        scheduler_host = opts.get("scheduler_host") or hosts[0]
        remote_python = opts.get("remote_python") or sys.executable
        connect = self._connect_options(spec)

        tls = self.uses_tls(spec)
        security = Security.temporary() if tls else None
        config = merge(dask.config.config, ctx.worker_config)
        if security is not None:
            config = merge(config, {"distributed": {"comm": {
                "require-encryption": True,
                "tls": {
                    "ca-file": security.tls_ca_file,
                    "scheduler": {"cert": security.tls_scheduler_cert,
                                  "key": security.tls_scheduler_key},
                    "worker": {"cert": security.tls_worker_cert,
                               "key": security.tls_worker_key},
                    "client": {"cert": security.tls_client_cert,
                               "key": security.tls_client_key},
                }}}})
        config_b64 = dask.config.serialize(config)

        env = {**ctx.worker_env}
        driver = ctx.labels.get("daskjob/driver")
        if driver:
            env[DRIVER_VAR] = driver
        registry: list = []

        scheduler_kwargs = {
            **opts.get("scheduler_options", {}),
            "protocol": "tls" if tls else "tcp",
            "host": scheduler_host,
            "port": opts.get("scheduler_options", {}).get("port", 0),
            "dashboard": bool(spec.dashboard),
            # on the scheduler host's loopback only (reach it with `ssh -L`): a dashboard
            # shows task names, code and logs to whoever can connect
            "dashboard_address": "127.0.0.1:0" if spec.dashboard else None,
            "preload": [IDLE_PRELOAD],
        }
        death_timeout = max(spec.death_timeout_s, MIN_DEATH_TIMEOUT)
        worker_kwargs = {
            "nthreads": spec.threads_per_worker,
            "memory_limit": spec.memory_bytes if spec.memory_bytes else "auto",
            "death_timeout": death_timeout,
            **({"preload": list(spec.preload)} if spec.preload else {}),
            **opts.get("worker_options", {}),
        }
        bind_worker_host = "host" not in opts.get("worker_options", {})
        # the scheduler starts inside create(): give up a little before the run does
        scheduler_timeout = START_TIMEOUT
        deadline = getattr(ctx, "startup_deadline", None)
        if deadline is not None:
            scheduler_timeout = max(1.0, min(START_TIMEOUT, deadline - time.monotonic() - 1.0))
        scheduler = {"cls": classes["scheduler"], "options": {
            "start_timeout": scheduler_timeout,
            "host": hosts[0], "connect_options": connect, "remote_python": remote_python,
            "env": {**env, CLIENT_TIMEOUT_VAR: str(self._client_timeout(spec))},
            "config_b64": config_b64, "kwargs": scheduler_kwargs, "registry": registry}}
        worker = {"cls": classes["worker"], "options": {
            "connect_options": connect, "remote_python": remote_python, "env": env,
            "config_b64": config_b64, "kwargs": worker_kwargs, "registry": registry,
            "start_timeout": max(START_TIMEOUT, death_timeout + 15)}}
        return classes["cluster"](
            workers={}, scheduler=scheduler, worker=worker, security=security,
            name=f"daskjob-ssh-{ctx.run_id}", worker_hosts=worker_hosts, registry=registry,
            bind_worker_host=bind_worker_host, silence_logs=False)

    def scale(self, cluster: Any, n: int) -> None:
        cluster.scale(n)

    def failure_reason(self, cluster: Any) -> str | None:
        procs = list(getattr(cluster, "remote_processes", []))
        sched = [p for p in procs if p.role == "scheduler"]
        for p in sched:
            if p._drain_task is not None and p._drain_task.done() and not p._stopped:
                return (f"the scheduler on {p.host} exited (status {p.exit_status}); its "
                        "output:\n" + _summary(p.tail))
        workers = [p for p in procs if p.role == "worker"]
        if not workers or any(p.running or (p.startup_error is None and not p._stopped)
                              for p in workers):
            return None
        errors = sorted({p.startup_error for p in workers if p.startup_error})
        head = f"all {len(workers)} worker processes started over ssh failed or exited"
        return head + (":\n" + "\n\n".join(errors) if errors else "")

    def snapshot_logs(self, cluster: Any, logs_dir: str) -> list[str]:
        """Each remote process's own output (what it printed on its terminal: startup,
        crashes, anything not sent through logging) as ssh-<role>-<name>-<host>.log."""
        cluster._daskjob_logs_dir = logs_dir  # written again after close, with the ends
        written = []
        for p in list(getattr(cluster, "remote_processes", [])):
            if not p.tail:
                continue
            name = "" if p.role == "scheduler" else f"-{p.name}"
            fname = re.sub(r"[^A-Za-z0-9_.-]", "_", f"ssh-{p.role}{name}-{p.host}") + ".log"
            path = os.path.join(logs_dir, fname)
            with open(path, "w") as f:
                f.write("\n".join(p.tail) + "\n")
            written.append(fname)
        return written

    def dashboard_link(self, cluster: Any) -> str | None:
        # the dashboard listens on the scheduler host's loopback: a link only works when
        # that host is this one's loopback too
        try:
            link = cluster.dashboard_link
        except Exception:
            return None
        from urllib.parse import urlparse
        return link if is_loopback(urlparse(link).hostname or "") else None

    def process_ids(self, cluster: Any) -> list[int]:
        # pids are only meaningful here for processes on this machine (a loopback host)
        return [p.remote_pid for p in list(getattr(cluster, "remote_processes", []))
                if p.remote_pid and is_loopback(p.host) and not p._stopped]

    def close(self, cluster: Any, timeout: float) -> None:
        # A worker still starting holds the cluster's lock, which close() waits for:
        # hang those up first (the run is ending; they are of no use any more).
        starting = [p for p in list(getattr(cluster, "remote_processes", []))
                    if p.role == "worker" and p._drain_task is None and not p._stopped]
        loop = getattr(cluster, "loop", None)
        if starting and loop is not None and getattr(cluster, "status", None) is not None:
            async def hang_up_all():
                await asyncio.gather(*(p._hang_up() for p in starting),
                                     return_exceptions=True)
            with contextlib.suppress(Exception):
                cluster.sync(hang_up_all, callback_timeout=min(timeout, 15))
        scheduler = getattr(cluster, "scheduler", None)
        if isinstance(scheduler, _RemoteProcess) and scheduler._drain_task is not None \
                and scheduler._drain_task.done():
            # the scheduler process is gone: asking it to shut down would only wait for
            # connect timeouts; hang up the workers instead
            cluster.shutdown_scheduler = False
        try:
            cluster.close(timeout=timeout)
        except BaseException:
            self._hang_up_rest(cluster, timeout)  # the loop is still there after a timeout
            raise
        finally:
            logs_dir = getattr(cluster, "_daskjob_logs_dir", None)
            if logs_dir and os.path.isdir(logs_dir):
                with contextlib.suppress(Exception):
                    self.snapshot_logs(cluster, logs_dir)

    def _hang_up_rest(self, cluster: Any, timeout: float) -> None:
        rest = [p for p in list(getattr(cluster, "remote_processes", []))
                if p.connection is not None and not p.connection.is_closed()]
        if not rest:
            return
        loop = getattr(cluster, "loop", None)
        if loop is None:
            return

        async def hang_up_all():
            await asyncio.gather(*(p._hang_up() for p in rest), return_exceptions=True)

        try:
            cluster.sync(hang_up_all, callback_timeout=min(timeout, 15))
        except Exception as e:
            logger.warning("ssh: could not hang up %d remote process(es): %s", len(rest), e)

    # -- reaper (see ssh_reap)
    def find_leftovers(self, spec: "ClusterSpec", older_than: float) -> list[Leftover]:
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
        python = spec.options.get("remote_python") or sys.executable
        hosts = [host] if host else list(dict.fromkeys(h.strip() for h in spec.options["hosts"]))
        return ssh_reap.run_on_hosts(self._connect_options(spec), python, hosts, what, **kwargs)
