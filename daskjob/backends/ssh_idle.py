"""Scheduler preload for the `ssh` backend: close the scheduler once no client has been
connected for a while.

A driver that dies without closing its cluster normally takes the remote processes with
it (their SSH sessions hang up). When the SSH connections survive the driver (a network
partition, a driver host that froze), this is the safety net: the scheduler closes
itself, and its workers follow (told to close, or after their death_timeout).

Unlike dask's own `distributed.scheduler.idle-timeout`, a connected client that submits
nothing for hours keeps the cluster up: a payload may be idle for long.

Runs inside the remote scheduler process, so it uses distributed and the standard
library only. Seconds come from DASKJOB_SSH_CLIENT_TIMEOUT (0 or unset: off).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

logger = logging.getLogger("daskjob.ssh_idle")

ENV_VAR = "DASKJOB_SSH_CLIENT_TIMEOUT"
_CHECK_EVERY_MS = 500
FIRST_CLIENT_GRACE = 60.0


def _real_clients(scheduler) -> list[str]:
    # the scheduler keeps a pseudo client for fire_and_forget futures
    return [c for c in scheduler.clients if c != "fire-and-forget"]


def _client_watch(scheduler):
    """A scheduler plugin noting when the last client left (and whether one ever came):
    exact, where polling scheduler.clients would miss a client that came and went
    between two checks."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class ClientWatch(SchedulerPlugin):
        name = "daskjob-ssh-client-watch"

        def __init__(self):
            self.seen_client = False
            self.alone_since: float | None = time.monotonic()

        def add_client(self, scheduler, client: str) -> None:
            if client != "fire-and-forget":
                self.seen_client = True
                self.alone_since = None

        def remove_client(self, scheduler, client: str) -> None:
            if not [c for c in _real_clients(scheduler) if c != client]:
                self.alone_since = time.monotonic()

    watch = ClientWatch()
    scheduler.add_plugin(watch)
    return watch


def dask_setup(scheduler) -> None:
    try:
        timeout = float(os.environ.get(ENV_VAR, "0") or 0)
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; no client timeout",
                       ENV_VAR, os.environ.get(ENV_VAR))
        return
    if timeout <= 0:
        return
    from tornado.ioloop import PeriodicCallback

    watch = _client_watch(scheduler)
    closing = False

    def check() -> None:
        nonlocal closing
        if closing or watch.alone_since is None:
            return
        # the driver connects right after the scheduler starts, but a busy machine may
        # take a while: more time for the first client
        limit = timeout if watch.seen_client else max(timeout, FIRST_CLIENT_GRACE)
        if time.monotonic() - watch.alone_since < limit:
            return
        closing = True
        callback.stop()
        logger.warning("no client connected for %.0fs: closing the scheduler", limit)
        asyncio.ensure_future(scheduler.close(reason="daskjob-ssh-no-client"))

    callback = PeriodicCallback(check, _CHECK_EVERY_MS)
    # started with the scheduler's other periodic callbacks (after the preloads), and
    # stopped with them when it closes
    scheduler.periodic_callbacks["daskjob-ssh-client-timeout"] = callback
