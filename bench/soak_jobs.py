"""Payloads of the fault soak (bench/soak.py). Each runs on the job's cluster; the soak
does to it, from outside, what its fault says."""

from __future__ import annotations

import json
import os
import subprocess
import time

from distributed import get_client, get_worker

import daskjob


def _square(x: int) -> int:
    return x * x


def fine(n: int = 20) -> int:
    client = get_client()
    return sum(client.gather(client.map(_square, range(n))))


def _boom(x: int) -> int:
    raise ValueError(f"soak: boom on a worker ({x})")


def raises_on_worker() -> int:
    return get_client().submit(_boom, 7).result()


def _nap(seconds: float, marker: str = "") -> int:
    if marker:  # tell the soak which worker holds the task, then hold it
        with open(marker, "w") as f:
            json.dump({"pid": os.getpid(), "worker": str(get_worker().name)}, f)
    daskjob.event("soak.napping", seconds=seconds)
    time.sleep(seconds)
    return os.getpid()


def sleeps(seconds: float = 120) -> int:
    return get_client().submit(_nap, seconds, pure=False).result()


def grandchild_then_sleeps(seconds: float = 120) -> int:
    def start_child(s: float) -> int:
        child = subprocess.Popen(["sleep", str(int(s) + 60)])
        daskjob.event("soak.grandchild", pid=child.pid)
        time.sleep(s)
        return child.pid
    return get_client().submit(start_child, seconds, pure=False).result()


def survives_a_worker_kill(marker: str, seconds: float = 4) -> int:
    """The task's worker is SIGKILLed while it naps: the scheduler runs it again on the
    worker the nanny brings back (or the other one)."""
    return get_client().submit(_nap, seconds, marker, pure=False).result()


def unimportable_on_workers() -> int:
    from soak_driver_only import twice   # importable in the driver process only
    return get_client().submit(twice, 21).result()
