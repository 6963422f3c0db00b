"""The processes of an `ssh` cluster: a scheduler and workers, each started over SSH on
a pseudo-terminal, and the SpecCluster that places workers on hosts.

- each remote process runs on a pseudo-terminal: when its SSH session ends, for
  whatever reason (our close, a SIGKILLed driver, a dropped connection), sshd hangs the
  terminal up and the kernel sends SIGHUP to the whole process group (a nanny and its
  worker). Root sessions cannot be signalled over SSH, so this is the way to stop them;
- their output is read all the time (SSHCluster stops after startup, and a chatty
  worker then blocks on a full pipe) and kept as a tail for error messages and the record;
- close() confirms on each host that the process group is gone, and kills it if not;
- the dask config (with the run's TLS credentials, PEM text) reaches each process in a
  file only its user can read, also for workers added later by scale().
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import logging
import re
import shlex
import time

from distributed.core import Status
from distributed.deploy.spec import ProcessInterface, SpecCluster

logger = logging.getLogger("daskjob.backends.ssh")

START_TIMEOUT = 60.0        # one remote process: connect, exec, "... at: <address>"
_TAIL = 5000                # output lines kept per remote process (the record's copy)


def require_asyncssh():
    from .common import require_extra
    return require_extra("asyncssh", "ssh", "ssh")

class RemoteProcess(ProcessInterface):
    """One dask process started over SSH on a pseudo-terminal (base of both roles).

    Subclasses give `_command()` and `_ready(line)`."""

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
            tail = output_summary(self.tail)
            reason = ("timed out" if isinstance(e, (asyncio.TimeoutError, TimeoutError))
                      else f"{type(e).__name__}: {e}")
            self.startup_error = (f"{self.role} on {self.host} did not start: {reason}"
                                  + (f"\nlast output:\n{tail}" if tail else ""))
            self.status = Status.failed
            await self._hang_up()
            if isinstance(e, (Exception, asyncio.CancelledError)):
                raise RuntimeError(self.startup_error) from e
            raise
        await super().start()

    def _start_timeout(self) -> float:
        return START_TIMEOUT

    async def _launch(self):
        asyncssh = require_asyncssh()
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


def output_summary(lines, last: int = 8) -> str:
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


class SSHScheduler(RemoteProcess):
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

class SSHWorker(RemoteProcess):
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
