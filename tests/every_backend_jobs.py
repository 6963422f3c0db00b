"""Payloads for tests/test_every_backend.py. This module is recreated on remote
schedulers and workers from its source, so it imports only what every host has."""

from __future__ import annotations

import logging
import time

import daskjob

TASK_LOGGER = "every_backend.task"


def _marked_task(i: int, fail_at: int | None) -> int:
    # runs on a worker: one structured event and one log line from inside the task
    daskjob.event("every_backend.task", i=i)
    logging.getLogger(TASK_LOGGER).warning("task %d ran", i)
    if i == fail_at:
        raise ValueError(f"task {i} failed on purpose")
    return i * i


def tasks(n: int = 6, fail_at: int | None = None, client=None) -> int:
    futures = client.map(_marked_task, range(n), fail_at=fail_at, pure=False)
    return sum(client.gather(futures))


def sleeps(seconds: float = 300, client=None) -> list:
    futures = client.map(time.sleep, [seconds] * 2, pure=False)
    daskjob.event("every_backend.sleeping", n=len(futures))
    return client.gather(futures)
