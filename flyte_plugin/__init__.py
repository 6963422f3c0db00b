"""Flyte plugin for daskjob: `@dask_task` runs a Flyte task with an ephemeral Dask cluster
that exists only while the task runs, wherever it runs (pyflyte run, tests, task pods).
See `flyte_plugin.task`.
"""

from .deck import DECK_NAME
from .errors import DaskTaskFailed, DaskTaskStartupFailed
from .execution import WORKER_DROP_ENV, execution_labels
from .task import DaskJob, DaskJobTask, dask_task

__all__ = ["dask_task", "DaskJob", "DaskJobTask", "DaskTaskFailed", "DaskTaskStartupFailed",
           "DECK_NAME", "WORKER_DROP_ENV", "execution_labels"]
