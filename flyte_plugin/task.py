"""@dask_task: a Flyte task whose function runs with an ephemeral Dask cluster of its own.

>>> from daskjob import ClusterSpec
>>> from flyte_plugin import dask_task
>>> @dask_task(cluster=ClusterSpec(n_workers=1, memory_per_worker="1GiB"), timeout="30m",
...            record_dir="runs", retries=2)
... def total(n: int, client) -> int:          # client: this execution's own cluster
...     return sum(client.gather(client.map(abs, range(-n, n))))
>>> total(n=3)                                 # local execution
9

Shape as flytekitplugins-dask/-ray: a task-config dataclass (`DaskJob`) and a
`PythonFunctionTask` subclass (`DaskJobTask`) registered for it with
`TaskPlugins.register_pythontask_plugin`. Unlike flytekitplugins-dask, which needs the
Dask operator of a Flyte backend and does nothing in local execution, the cluster is
started by daskjob inside the task itself: in `pyflyte run`, a unit test, or a task pod.

The whole run (provision, payload, snapshot, teardown) happens inside `execute`:
flytekit's `dispatch_execute` skips `post_execute` when the task raises, so a teardown
there would leak the cluster on exactly the runs that fail.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import flytekit
from flytekit.configuration import SerializationSettings
from flytekit.core.python_function_task import PythonFunctionTask
from flytekit.core.task import TaskPlugins
from flytekit.deck import DeckField

from daskjob import JobFailed, JobRun, JobSpec
from daskjob.frontend import job_name as frontend_job_name
from daskjob.frontend import summary_line

from . import deck as deck_page
from .errors import as_task_error
from .execution import (WORKER_DROP_ENV, execution_labels, in_flyte_context, log, log_event,
                        logs_to_flytekit, sigterm_cancels)
from .flytekit_dask import cluster_from_flytekit_dask, is_flytekit_dask_config

# JobSpec fields a task config sets; name, payload, params and labels come per execution
_SETTINGS = ("cluster", "timeout", "startup_timeout", "record_dir", "labels", "version_check",
             "performance_report", "forward_logs", "worker_log_level")

# flytekit's default deck fields less DEPENDENCIES, which shells out to `pip list`:
# virtualenvs made by uv have no pip, and the task log would show an ERROR for it
DEFAULT_DECK_FIELDS = (DeckField.SOURCE_CODE, DeckField.TIMELINE, DeckField.INPUT, DeckField.OUTPUT)


def _placeholder() -> None:
    """Stands in for the task function when the settings are checked on their own."""


@dataclass
class DaskJob:
    """Task config of a @dask_task: the cluster and the run's limits.

    `None` means the daskjob default (the `daskjob` dask.config namespace, read when the
    task runs). Checked when the task is defined, so a bad size or duration fails at
    import, not at 2 a.m.
    """

    cluster: Optional[Any] = None                 # ClusterSpec, or a dict of some of its fields
    timeout: Optional[Any] = None                 # payload runtime limit, e.g. "30m" or seconds
    startup_timeout: Optional[Any] = None         # provision + workers + environment check
    record_dir: Optional[str] = None              # local path or fsspec URL
    labels: dict[str, str] = field(default_factory=dict)
    version_check: Optional[str] = None           # error | warn | off
    performance_report: Optional[Any] = None      # True | False | "auto"
    forward_logs: Optional[bool] = None
    worker_log_level: Optional[str] = None

    def __post_init__(self):
        # a dict stays a dict: its missing fields take the defaults of the run's time and
        # place (DASKJOB__CLUSTER__N_WORKERS in a task pod, say), not of the import's
        self.resolve()

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _SETTINGS if getattr(self, k) not in (None, {})}

    def resolve(self) -> JobSpec:
        """The settings as the run would get them now (defaults filled in), validated."""
        return JobSpec.parse({"name": "dask-task", "payload": _placeholder, **self.settings()})

    def serialized(self) -> dict[str, Any]:
        """JSON-safe settings with every secret hidden: what goes into the task template."""
        data = self.resolve().redacted()
        return json.loads(json.dumps({k: data[k] for k in _SETTINGS}, default=str))


class DaskJobTask(PythonFunctionTask[DaskJob]):
    """Runs the task function as a daskjob payload on an ephemeral cluster.

    The task type stays "python-task": the cluster lives inside the task's own
    container, so any Flyte backend runs it as a plain container task, no Dask
    operator needed. The settings travel in the template's custom field ("daskjob").
    """

    def __init__(self, task_config: DaskJob, task_function: Callable, **kwargs):
        mode = kwargs.get("execution_mode", PythonFunctionTask.ExecutionBehavior.DEFAULT)
        if mode != PythonFunctionTask.ExecutionBehavior.DEFAULT:
            raise ValueError("@dask_task runs one function on one cluster: dynamic and "
                             "eager tasks are not supported")
        # a `client` parameter gets the run's Dask client: it is not one of the task's inputs
        self.payload_function = task_function
        super().__init__(task_config=task_config, task_function=_without_client(task_function),
                         **kwargs)

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        return {"daskjob": self.task_config.serialized()}

    # ------------------------------------------------------------------- execution
    def job_spec(self, inputs: dict[str, Any]) -> JobSpec:
        config = self.task_config
        return JobSpec.parse({
            **config.settings(),
            "name": job_name(self.name),
            "payload": in_flyte_context(self.payload_function),
            "params": inputs,
            "labels": {**execution_labels(self.name), **config.labels},
        })

    def execute(self, **kwargs) -> Any:
        spec = self.job_spec(kwargs)
        run = JobRun(spec, on_event=log_event, drop_env=WORKER_DROP_ENV)
        with logs_to_flytekit(run), sigterm_cancels(run):
            log.info("daskjob run %s: backend %s, %d workers, record in %s", run.run_id,
                     spec.cluster.backend, spec.cluster.n_workers, spec.record_dir)
            try:
                return run.run().value
            except JobFailed as e:
                raise as_task_error(e) from None
            finally:
                self._after(run)

    def _after(self, run: JobRun) -> None:
        """Summary line and Deck, on every path: a failed run's deck is the useful one."""
        record = run.last_record
        if not record:
            return
        log.info("%s", summary_line(record))
        if not self.enable_deck:
            return
        try:
            page = deck_page.render(record)
            flytekit.Deck(deck_page.DECK_NAME, page)
            copy = deck_page.save_copy(record)
            if copy:
                log.info("daskjob run report: %s", copy)
        except Exception:  # a deck must never hide the run's own outcome
            log.warning("could not build the daskjob deck for %s", record.get("run_id"),
                        exc_info=True)


TaskPlugins.register_pythontask_plugin(DaskJob, DaskJobTask)


def _without_client(fn: Callable) -> Callable:
    """`fn` as flytekit should see it to build the task's interface: without `client`."""
    sig = inspect.signature(fn)
    if "client" not in sig.parameters:
        return fn

    @functools.wraps(fn)
    def task_function(**kwargs):
        return fn(**kwargs)

    task_function.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
        p for p in sig.parameters.values() if p.name != "client"])
    return task_function


def job_name(task_name: str) -> str:
    """A daskjob name from a Flyte task name; the end is kept, which is the most specific
    part ("workflows.nightly_etl.etl")."""
    return frontend_job_name(task_name, "flyte-task", keep_end=True)


def dask_task(_task_function: Callable | None = None, *, cluster: Any = None,
              timeout: Any = None, startup_timeout: Any = None, record_dir: str | None = None,
              labels: dict[str, str] | None = None, version_check: str | None = None,
              performance_report: Any = None, forward_logs: bool | None = None,
              worker_log_level: str | None = None, flyte_timeout: Any = None,
              **task_kwargs: Any):
    """`@dask_task(...)`: `@flytekit.task` whose function gets an ephemeral Dask cluster.

    The daskjob settings are named as in `JobSpec` (`timeout` is the payload's runtime
    limit, enforced by daskjob everywhere the task runs); every other keyword goes to
    `flytekit.task` (cache, cache_version, retries, requests, limits, container_image,
    enable_deck, ...). flytekit's own `timeout` (enforced by a Flyte backend only) is
    `flyte_timeout` here. A task written for flytekitplugins-dask keeps its
    `task_config=Dask(...)`: its workers' count, cpu, memory and GPU become the cluster's
    (flyte_plugin/flytekit_dask.py).
    """
    if "task_config" in task_kwargs:
        given = task_kwargs.pop("task_config")
        if not is_flytekit_dask_config(given):
            raise TypeError("@dask_task makes its own task_config; pass the daskjob settings "
                            "(cluster=, timeout=, ...) instead (a flytekitplugins-dask "
                            "Dask(...) config is also taken)")
        cluster = cluster_from_flytekit_dask(given, _as_dict(cluster))
    config = DaskJob(cluster=cluster, timeout=timeout, startup_timeout=startup_timeout,
                     record_dir=record_dir, labels=dict(labels or {}),
                     version_check=version_check, performance_report=performance_report,
                     forward_logs=forward_logs, worker_log_level=worker_log_level)
    if flyte_timeout is not None:
        task_kwargs["timeout"] = flyte_timeout
    task_kwargs.setdefault("deck_fields", DEFAULT_DECK_FIELDS)
    return flytekit.task(_task_function, task_config=config, **task_kwargs)


def _as_dict(cluster: Any) -> dict[str, Any]:
    if cluster is None:
        return {}
    if hasattr(cluster, "model_dump"):  # a ClusterSpec: only what was set
        return cluster.model_dump(exclude_unset=True)
    return dict(cluster)
