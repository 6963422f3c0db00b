"""Payloads for the worker-group and adaptive-scaling tests (tests/test_groups.py)."""

from __future__ import annotations

import os
import time

import dask
from distributed import get_client, get_worker


def _where(i: int, seconds: float) -> dict:
    time.sleep(seconds)
    w = get_worker()
    return {"name": str(w.name), "gpu_env": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "host": w.address.split("://")[-1].rsplit(":", 1)[0],
            "resources": dict(w.state.total_resources)}


def queue_then_idle(n: int = 40, seconds: float = 1.0, idle: float = 10.0) -> list[str]:
    """n tasks of `seconds` each, all queued at once, then nothing for `idle` seconds."""
    client = get_client()
    done = client.gather(client.map(_where, range(n), seconds=seconds, pure=False))
    time.sleep(idle)
    return sorted({d["name"] for d in done})


def annotated_and_plain(n: int = 20, seconds: float = 0.2) -> dict:
    """n tasks that need a GPU, then n that need nothing: where each ran."""
    client = get_client()
    with dask.annotate(resources={"GPU": 1}):
        gpu = client.map(_where, range(n), seconds=seconds, pure=False)
    gpu = client.gather(gpu)
    plain = client.gather(client.map(_where, range(n, 2 * n), seconds=seconds, pure=False))
    return {"gpu": gpu, "plain": plain}


def gpu_burst(n: int = 12, seconds: float = 1.0) -> list[str]:
    """Work for the GPU group only, submitted with `resources=`."""
    client = get_client()
    futures = [client.submit(_where, i, seconds, resources={"GPU": 1}, pure=False)
               for i in range(n)]
    return sorted({d["name"] for d in client.gather(futures)})
