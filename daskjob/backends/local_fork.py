"""Warm worker start for the local backend: a fork server per run.

With multiprocessing's spawn, every worker process starts a fresh interpreter and
imports `distributed` (and what it pulls in) before it can start: about a second of
CPU per worker, paid again by each. A run of the local backend instead starts one
fork server as the cluster is made; it imports `distributed` and daskjob's worker
side once, while the driver starts the scheduler, and every worker of the run is
forked from it, ready.

What the run guarantees holds as with spawn:
- the server is started with the run's environment: without the variables the run
  drops, with its labels (so /proc/PID/environ of every worker carries them, which is
  what teardown and `daskjob reap` read) and with Dask's pre-spawn variables
  (OMP_NUM_THREADS and friends must be set before numpy loads);
- workers do not import the driver's main script (backends/local.py hides it while
  workers start, from the fork server's children as from spawn's);
- a worker exits when its nanny (in the driver) is gone, through the pipe
  distributed's AsyncProcess holds for that; the server exits with the driver;
- the server is stopped when the cluster closes: nothing of it outlives the run.

Each run has its own server (concurrent runs in one process have different labels),
so the stdlib's single `forkserver` context is not used: `RunForkContext` is a
forkserver context bound to one `ForkServer`.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import multiprocessing.context
import multiprocessing.forkserver as stdlib_forkserver
import os
import signal
import threading
import time
import weakref
from multiprocessing import popen_forkserver, resource_tracker
from typing import Any, Iterator, Mapping

import distributed.nanny
import distributed.process
from distributed.utils import get_mp_context as _dask_mp_context

# imported once by the server, so that no worker imports them again
PRELOAD = ["distributed", "distributed.nanny", "distributed.worker", "daskjob.observe.worker"]

# the server each forked process comes from (kept off the process object, which is pickled)
_SERVER_OF: "weakref.WeakKeyDictionary[Any, stdlib_forkserver.ForkServer]" = \
    weakref.WeakKeyDictionary()
# popen_forkserver looks up `forkserver.connect_to_new_process` when it launches a
# process: pointed at the run's server for that moment, one launch at a time
_LAUNCH_LOCK = threading.Lock()
# os.environ is the server's environment while it is started: one start at a time
_ENVIRON_LOCK = threading.Lock()


class RunForkProcess(multiprocessing.context.ForkServerProcess):
    """A process forked from the server of the run that made it."""

    @staticmethod
    def _Popen(process_obj):
        server = _SERVER_OF[process_obj]
        with _LAUNCH_LOCK:
            stdlib_forkserver.connect_to_new_process = server.connect_to_new_process
            try:
                return popen_forkserver.Popen(process_obj)
            finally:
                stdlib_forkserver.connect_to_new_process = \
                    stdlib_forkserver._forkserver.connect_to_new_process


class RunForkContext(multiprocessing.context.ForkServerContext):
    """multiprocessing's forkserver context, with a fork server of its own."""

    def __init__(self, env: Mapping[str, str], drop: list[str]):
        super().__init__()
        self.server = stdlib_forkserver.ForkServer()
        self.server.set_forkserver_preload(PRELOAD)
        self._env = dict(env)
        self._drop = list(drop)
        self._stopped = False

    def Process(self, *args: Any, **kwargs: Any) -> RunForkProcess:  # type: ignore[override]
        self.start()
        process = RunForkProcess(*args, **kwargs)
        _SERVER_OF[process] = self.server
        return process

    def start(self) -> None:
        """Start the server, if not yet: with the run's environment, and without
        waiting for its imports (its first fork waits for them)."""
        if self._stopped:
            raise RuntimeError("the run's fork server is stopped: the run is over")
        if self.server._forkserver_pid is not None:
            return
        # the driver's, shared by every run (stopped with the driver): not labelled as
        # any run's, so no run's teardown stops it
        resource_tracker.ensure_running()
        with _ENVIRON_LOCK, _environ(self._env, self._drop):
            self.server.ensure_running()

    @property
    def pid(self) -> int | None:
        return self.server._forkserver_pid

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server (its forked workers are the nannies' to stop)."""
        # not ForkServer._stop: teardown may have killed and reaped the server already,
        # and a second stop must still succeed
        self._stopped = True
        server = self.server
        with server._lock:
            if server._forkserver_alive_fd is not None:
                os.close(server._forkserver_alive_fd)  # the server exits at EOF...
                server._forkserver_alive_fd = None
            if server._forkserver_pid is not None:
                _reap(server._forkserver_pid, grace)  # ...once its imports are done
                server._forkserver_pid = None
            address, server._forkserver_address = server._forkserver_address, None
            if isinstance(address, str) and not address.startswith("\0"):
                with contextlib.suppress(OSError):
                    os.unlink(address)


def drop_matching(environ: Any, patterns: list[str]) -> dict[str, str]:
    """Remove from `environ` the variables any of the glob `patterns` names; returns them."""
    dropped = {}
    for name in list(environ):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            dropped[name] = environ.pop(name)
    return dropped


def _reap(pid: int, grace: float) -> None:
    """Wait for our child `pid` to exit, killing it after `grace` seconds."""
    deadline = time.monotonic() + grace
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.02)
    except (ChildProcessError, ProcessLookupError):
        pass  # reaped already (teardown kills what a failed close leaves)


@contextlib.contextmanager
def _environ(env: Mapping[str, str], drop: list[str]) -> Iterator[None]:
    """os.environ as the run's processes get it, for the moment a process starts. Only
    what is changed here is put back (other threads may change other variables)."""
    touched = {name: os.environ.get(name) for name in env}
    touched.update(drop_matching(os.environ, drop))
    try:
        os.environ.update(env)
        yield
    finally:
        for name, value in touched.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_process_env(worker_env: Mapping[str, str]) -> dict[str, str]:
    """What a forked worker needs in its environment from the start: the run's and
    Dask's pre-spawn variables (distributed sets those in the parent, before spawning,
    which a fork server's children would miss), and the mark that lets it set its
    process title."""
    pre_spawn = distributed.nanny._get_env_variables("distributed.nanny.pre-spawn-environ")
    if pre_spawn.get("PYTHONHASHSEED") in (None, "0"):
        pre_spawn["PYTHONHASHSEED"] = "6640"  # as Nanny does: workers' hashes must agree
    # what distributed.proctitle.enable_proctitle_on_children sets in the parent: workers
    # then call themselves "dask worker [address]" in ps and /proc/PID/cmdline
    pre_spawn["__DASK_PARENT_PID"] = str(os.getpid())
    return {**pre_spawn, **worker_env}


# the fork context of the nanny starting now (a contextvar: nannies start on the
# cluster's event loop, each in its own task)
_CONTEXT: contextvars.ContextVar[RunForkContext | None] = contextvars.ContextVar(
    "daskjob_fork_context", default=None)


def _run_mp_context():
    return _CONTEXT.get() or _dask_mp_context()


@contextlib.contextmanager
def forking_from(context: RunForkContext | None) -> Iterator[None]:
    """While a nanny starts its worker: its process comes from `context` (None: spawn,
    as distributed would)."""
    token = _CONTEXT.set(context)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


# distributed asks this for the context of each worker process it starts (and of the
# queues and pipes that talk to it); outside a daskjob nanny's start it answers as before
distributed.process.get_mp_context = _run_mp_context
distributed.nanny.get_mp_context = _run_mp_context
