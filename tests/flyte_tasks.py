"""@dask_task tasks and workflows the Flyte plugin tests execute (module level, as flytekit
wants them); what they send to workers lives in flyte_workerside."""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
from flytekit import workflow
from flytekit.types.file import FlyteFile

from daskjob import ClusterSpec
from flyte_plugin import dask_task

import flyte_workerside as ws

ONE_WORKER = ClusterSpec(n_workers=1, threads_per_worker=2, memory_per_worker="1GiB",
                         dashboard=False)
QUIET = {"cluster": ONE_WORKER, "performance_report": False, "startup_timeout": "3m"}


class FrameOutputs(NamedTuple):
    scaled: pd.DataFrame
    scheduler: str               # the address of the client get_client() returned
    workers: list[str]           # where a dask collection computed


@dask_task(**QUIET, timeout="5m")
def scale_frame(frame: pd.DataFrame, factor_file: FlyteFile) -> FrameOutputs:
    """DataFrame and FlyteFile in, DataFrame out; the work runs on the task's cluster."""
    import dask
    import dask.dataframe as dd
    from distributed import get_client

    client = get_client()
    with open(factor_file) as f:
        factor = float(f.read().strip())
    squares = client.gather(client.map(ws.square, frame["value"].astype(int).tolist()))
    ddf = dd.from_pandas(frame.assign(square=squares), npartitions=2)
    scaled = ddf.assign(scaled=ddf.value * factor).compute().sort_index()  # default scheduler
    workers = set(dask.compute(*[dask.delayed(ws.worker_name)(i) for i in range(4)]))
    return FrameOutputs(scaled=scaled, scheduler=client.scheduler.address, workers=sorted(workers))


@dask_task(**QUIET, timeout="5m", enable_deck=True)
def fails_on_worker(row: int) -> int:
    from distributed import get_client
    return get_client().submit(ws.explode_on_worker, row).result()


@workflow
def failing_workflow(row: int = 7) -> int:
    return fails_on_worker(row=row)


@dask_task(cluster=ONE_WORKER, performance_report=False, timeout=3)
def outlives_timeout(seconds: float) -> float:
    from distributed import get_client
    return get_client().submit(ws.sleep_on_worker, seconds).result()


@dask_task(**QUIET, timeout="5m", cache=True, cache_version="1")
def cached_sum(n: int, tag: str) -> int:
    from distributed import get_client
    return sum(get_client().gather(get_client().map(ws.square, range(n))))


@dask_task(cluster=ONE_WORKER, performance_report=False, timeout="5m")
def waits_on_worker(seconds: float) -> float:
    from distributed import get_client
    return get_client().submit(ws.sleep_on_worker, seconds).result()
