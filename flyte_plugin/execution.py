"""What a @dask_task takes from the Flyte execution it runs in, and gives back to it.

- labels: the execution id, node id, task name and retry attempt, on every run (the
  reaper and `daskjob show` key on them);
- the payload thread: the core runs the task function in a thread of its own, which must
  see the same Flyte context (`flytekit.current_context()`, Decks, FlyteFile uploads)
  as the thread flytekit called `execute` in;
- logs: the run's lifecycle lines, worker log lines and user events go to flytekit's
  logger tree (`flytekit.daskjob`), live (daskjob.frontend);
- SIGTERM (how Flyte stops a task pod) cancels the run, so teardown runs before exit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import threading
from typing import Any, Callable, Iterator

from flytekit.core.context_manager import FlyteContextManager, flyte_context_Var

from daskjob import JobRun
from daskjob.frontend import log_user_event, run_logs_to

# flytekit's own logger stays at WARNING unless asked otherwise; a child logger at INFO
# still reaches flytekit's handler (pod log, `pyflyte run` console) through propagation.
log = logging.getLogger("flytekit.daskjob")
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)

# Variables of the task process that must not reach Dask workers: a worker is not a Flyte
# task execution, and flytekit imported there (to unpickle code from a workflow file) must
# not take the pod's execution identity or serialization settings for its own.
WORKER_DROP_ENV = ["FLYTE_INTERNAL_*", "_F_*", "FLYTE_ATTEMPT_NUMBER", "FLYTE_EXECUTION_URL"]

_NODE_IN_URL = re.compile(r"/nodeId/([^/]+)/")


def execution_labels(task_name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Labels naming this execution of the task.

    Locally flytekit makes up an execution id and there is no node id ("local"). In a
    task pod the execution comes from flytekit's context; the attempt from
    FLYTE_ATTEMPT_NUMBER; the node id from FLYTE_EXECUTION_URL when the backend has a
    console URL, else from the pod name, which Flyte builds as <execution>-<node>-<attempt>.
    """
    env = os.environ if environ is None else environ
    labels = {"flyte/task": task_name, "flyte/retry_attempt": env.get("FLYTE_ATTEMPT_NUMBER", "0")}
    execution = None
    params = FlyteContextManager.current_context().user_space_params
    if params is not None:
        with contextlib.suppress(Exception):
            execution = params.execution_id
    name = env.get("FLYTE_INTERNAL_EXECUTION_ID", "") or getattr(execution, "name", "") or "local"
    labels["flyte/execution_id"] = name
    for key in ("project", "domain"):
        value = getattr(execution, key, "") if execution is not None else ""
        if value:
            labels[f"flyte/{key}"] = value
    labels["flyte/node_id"] = _node_id(name, labels["flyte/retry_attempt"], env)
    return labels


def _node_id(execution: str, attempt: str, env) -> str:
    match = _NODE_IN_URL.search(env.get("FLYTE_EXECUTION_URL", "") + "/")
    if match:
        return match.group(1)
    pod = env.get("HOSTNAME", "")
    prefix, suffix = f"{execution}-", f"-{attempt}"
    if "FLYTE_INTERNAL_EXECUTION_ID" in env and pod.startswith(prefix) and pod.endswith(suffix):
        return pod[len(prefix):-len(suffix)] or "unknown"
    return "local" if "FLYTE_INTERNAL_EXECUTION_ID" not in env else "unknown"


def in_flyte_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, callable from another thread with this thread's Flyte context.

    flytekit keeps its context stack in a ContextVar, and a new thread starts with none.
    The copy of the stack is the payload thread's own: flytekit pushes and pops on it in
    place, and a payload still running after a timeout must not touch the caller's.
    `functools.wraps` keeps the function's module and name, which the core uses to make
    the module importable on workers (a workflow file is not an installed package).
    """
    stack = list(flyte_context_Var.get())

    @functools.wraps(fn)
    def call(**kwargs):
        flyte_context_Var.set(list(stack))
        return fn(**kwargs)

    return call


def logs_to_flytekit(run: JobRun):
    """The run's lifecycle lines, worker lines and warnings on `flytekit.daskjob`, live."""
    return run_logs_to(log, run.run_id, instead=False)


def log_event(record: dict) -> None:
    """on_event: user events (etl.partition, tpot.progress, ...) as log lines."""
    log_user_event(log, record)


@contextlib.contextmanager
def sigterm_cancels(run: JobRun) -> Iterator[None]:
    """Flyte stops a task pod with SIGTERM: cancel the run so its teardown completes.

    Only the main thread may set signal handlers; elsewhere the caller's own handling
    (and the workers' watch on their parent) applies.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        log.warning("SIGTERM: cancelling daskjob run %s", run.run_id)
        run.cancel("received SIGTERM")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
