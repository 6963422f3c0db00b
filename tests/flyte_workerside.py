"""Functions the Flyte test tasks run on Dask workers. Kept apart from the task module so
a worker unpickling them imports only this small file, not flytekit."""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def worker_name(_=None) -> str:
    from distributed import get_worker
    return str(get_worker().name)


def explode_on_worker(row: int) -> int:
    raise ValueError(f"bad row {row} on the worker")


def sleep_on_worker(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
