"""Running the payload: a callable in a thread of the driver with the run's client as
the default client, or a script as `__main__` in a process of its own (as a
dask-kubernetes DaskJob runner pod would run it). Either way the run's own thread waits,
watching the timeout, cancel() and the cluster's health."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from distributed import Client

from ..deadline import call_with_deadline
from ..errors import JobFailed
from ..observe.collector import Collector
from ..payload import ResolvedPayload, check_result
from .teardown import Releases


class ScriptFailed(JobFailed):
    """A script payload exited non-zero."""


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def run_callable(payload: ResolvedPayload, params: dict[str, Any], client: Client, *,
                 timeout: float | None, check: Callable[[], None],
                 expired: Callable[[], BaseException], run_id: str) -> Any:
    """The payload's return value. On timeout or cancel the run tears the cluster down,
    which makes the payload's next Dask call fail and ends its thread."""
    kwargs = dict(params)
    if payload.wants_client and "client" not in kwargs:
        kwargs["client"] = client

    def call() -> Any:
        with client.as_current():
            value = payload.fn(**kwargs)
            check_result(value)  # while the cluster can still say what a Future is
        return value

    return call_with_deadline(call, _deadline(timeout), check=check, expired=expired,
                              name=f"daskjob-payload-{run_id}")


def run_script(payload: ResolvedPayload, params: dict[str, Any], env: dict[str, str],
               collector: Collector, releases: Releases, *, timeout: float | None,
               check: Callable[[], None], expired: Callable[[], BaseException],
               run_id: str) -> Any:
    """Run the script with DASK_SCHEDULER_ADDRESS (in `env`) pointing at the run's
    cluster; its output goes to logs/script.log and the live log; its result is the JSON
    it writes to $DASKJOB_RESULT_FILE, if it writes one."""
    result_file = os.path.abspath(os.path.join(collector.logs_dir, os.pardir, ".result.json"))
    env = {**os.environ, **env, "DASKJOB_PARAMS": json.dumps(params, default=str),
           "DASKJOB_RESULT_FILE": result_file, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, payload.script] + [f"--{k}={v}" for k, v in params.items()]
    proc = subprocess.Popen(args, env=env, cwd=os.path.dirname(payload.script),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    releases.add("stop the script payload", lambda: _kill_group(proc))
    tail: list[str] = []
    reader = threading.Thread(target=_pump, args=(proc, tail, collector), daemon=True,
                              name=f"daskjob-script-{run_id}")
    reader.start()
    code = call_with_deadline(proc.wait, _deadline(timeout), check=check, expired=expired,
                              name=f"daskjob-script-{run_id}")
    reader.join(5)
    if code != 0:
        raise ScriptFailed(f"script {os.path.basename(payload.script)} exited with code "
                           f"{code}; last output:\n" + "\n".join(tail[-20:]))
    if os.path.exists(result_file):
        with open(result_file) as f:
            return json.load(f)
    return {"exit_code": 0}


def _pump(proc: subprocess.Popen, tail: list[str], collector: Collector) -> None:
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        del tail[:-50]
        collector.driver_log("script", line)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(5)
