"""Flyte plugin for daskjob: `@dask_task` runs a Flyte task with an ephemeral Dask cluster
that exists only while the task runs, wherever it runs (pyflyte run, tests, task pods).

    from daskjob import ClusterSpec
    from flyte_plugin import dask_task

    @dask_task(cluster=ClusterSpec(n_workers=2), timeout="10m", enable_deck=True)
    def total(n: int) -> int:
        from distributed import get_client
        client = get_client()
        return sum(client.gather(client.map(abs, range(n))))
"""

from .deck import DECK_NAME
from .errors import DaskTaskFailed, DaskTaskStartupFailed
from .execution import WORKER_DROP_ENV, execution_labels
from .task import DaskJob, DaskJobTask, dask_task

__all__ = ["dask_task", "DaskJob", "DaskJobTask", "DaskTaskFailed", "DaskTaskStartupFailed",
           "DECK_NAME", "WORKER_DROP_ENV", "execution_labels"]
