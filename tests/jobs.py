"""Payloads used by the tests. This module is not installed: workers import it because
daskjob puts its folder on their sys.path (the "code reaches the workers" contract)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from distributed import get_client, get_worker

import daskjob


def double(x):
    return 2 * x


def add_up(n: int, client=None):
    client = client or get_client()
    return sum(client.gather(client.map(double, range(n))))


def _boom(x):
    raise ValueError(f"boom-from-worker {x}")


def raises_on_worker():
    return get_client().submit(_boom, 7).result()


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def sleeps(seconds: float = 60, tasks: int = 2):
    client = get_client()
    return client.gather(client.map(_sleep, [seconds] * tasks, pure=False))


def _talk(i):
    logging.getLogger("user.payload").info("user-log-line %s", i)
    print(f"print-line {i}")
    daskjob.event("test.talk", i=i)
    return i


def talks(n: int = 2):
    client = get_client()
    return client.gather(client.map(_talk, range(n)))


def _emit(count, worker_tag):
    for i in range(count):
        daskjob.event("bulk", i=i, tag=worker_tag)
    return count


def many_events(per_worker: int = 100_000):
    client = get_client()
    workers = list(client.scheduler_info()["workers"])
    futs = [client.submit(_emit, per_worker, w, workers=[w], pure=False) for w in workers]
    return sum(client.gather(futs))


def _kill_my_worker_once(marker, x):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def survives_worker_kill(marker: str):
    client = get_client()
    return sum(client.gather(client.map(_kill_my_worker_once, [marker] * 4, range(4), pure=False)))


def _hog(mb):
    blocks = []
    for _ in range(mb // 50):
        blocks.append(bytearray(50 * 2**20))
        time.sleep(0.02)
    return len(blocks)


def hogs_memory(mb: int = 2000):
    return get_client().submit(_hog, mb, pure=False).result()


_KEPT: list = []


def _keep_until_paused(limit_fraction):
    """Hold memory past the worker's pause threshold, and keep holding it."""
    import psutil
    worker = get_worker()
    target = int(worker.memory_manager.memory_limit * limit_fraction)
    while psutil.Process().memory_info().rss < target:
        _KEPT.append(bytearray(8 * 2**20))
    # return only once dask's memory monitor has paused this worker
    deadline = time.monotonic() + 20
    while worker.status.name != "paused" and time.monotonic() < deadline:
        time.sleep(0.05)
    return worker.status.name


def pauses_its_worker():
    client = get_client()
    assert client.submit(_keep_until_paused, 0.88, pure=False).result() == "paused"
    # the worker is paused now: this task never starts
    return client.submit(sum, [1, 2], pure=False).result()


def _start_grandchild(_):
    proc = subprocess.Popen(["sleep", "300"])
    return proc.pid


def leaves_grandchild():
    return get_client().submit(_start_grandchild, 0, pure=False).result()


def _ignore_hangup_and_termination() -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _start_stubborn_grandchild(_):
    # ignoring SIGTERM (kept across exec) so that only a reaper that ends with SIGKILL
    # stops it, and hangups or stray signals on the way do not
    proc = subprocess.Popen(["sleep", "300"], preexec_fn=_ignore_hangup_and_termination)
    return proc.pid


def grandchild_then_sleep(seconds: float = 120):
    """Starts a subprocess that ignores SIGTERM, then sleeps: killing the driver leaves
    the subprocess behind."""
    client = get_client()
    pid = client.submit(_start_stubborn_grandchild, 0, pure=False).result()
    daskjob.event("test.grandchild", pid=pid)
    return client.submit(_sleep, seconds, pure=False).result()


def _main_file(_):
    import sys
    return getattr(sys.modules["__main__"], "__file__", None)


def workers_main_file():
    """Which main script the workers ran before starting (None: none)."""
    client = get_client()
    return sorted({str(f) for f in client.gather(client.map(_main_file, range(4), pure=False))})


def plain_tcp_is_refused():
    """From inside a TLS run: the scheduler's address, and what a client without the
    run's credentials gets when it tries to talk to it."""
    from distributed import Client
    client = get_client()
    address = client.scheduler.address
    attempts = {}
    for name, target in {"plain": address.replace("tls://", "tcp://", 1),
                         "tls-without-credentials": address}.items():
        try:
            with Client(target, timeout="3s", set_as_default=False) as other:
                attempts[name] = f"connected: {other.scheduler_info()['id']}"
        except Exception as e:  # noqa: BLE001 - any failure to talk is the point
            attempts[name] = f"refused: {type(e).__name__}"
    return {"address": address, "attempts": attempts,
            "workers": sorted(client.scheduler_info()["workers"])}


def _check_partition(i):
    logging.getLogger("user.partitions").warning("partition %s has a bad checksum", i)
    daskjob.event("partition.checked", partition=i, ok=i != 3)
    if i == 3:
        raise ValueError(f"partition {i} is corrupt")
    return i


def checks_partitions_then_fails(partitions: int = 4):
    """What a run report should make plain: a user event, a worker log line, and the
    worker-side exception that failed the run."""
    client = get_client()
    daskjob.event("partition.plan", partitions=partitions)
    return sum(client.gather(client.map(_check_partition, range(partitions))))
