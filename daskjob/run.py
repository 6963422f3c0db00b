"""run_job(): the one lifecycle every front end uses.

validate -> provision -> wait for workers (startup_timeout) -> environment check ->
run payload (timeout) -> snapshot logs/events/report -> teardown.

One ExitStack owns everything that was acquired; teardown runs in its unwinding on
every path (success, payload error, timeouts, cancel(), KeyboardInterrupt, SIGTERM via
the CLI's handlers). Closing twice is harmless.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from distributed import Client

from . import __version__, config
from .backends import ClusterContext, get_backend
from .errors import JobCancelled, JobFailed, JobTimedOut, SpecError, StartupFailed
from .observe import (FIREHOSE_TOPIC, Collector, FirehosePlugin, WorkerObserver,
                      _emit_barrier)
from .by_value import shipped_by_value
from .dask_logs import dask_log_level, quiet_dask_logs
from .main_guard import refuse_while_bootstrapping, warn_if_unguarded
from .payload import ResolvedPayload, check_result, describe_payload, module_source, resolve
from .procs import driver_labels, label_env, process_tree, stop_run_processes, terminate
from .record import RecordDir, redact
from .spec import JobSpec, load_yaml

logger = logging.getLogger("daskjob")

_POLL = 0.05            # how often waits look at cancel flags and deadlines
_HEALTH_EVERY = 0.5     # how often a running payload's cluster is checked
_BARRIER_TIMEOUT = 10.0
_SCHEDULER_LOST_AFTER = 10.0  # seconds without a scheduler before a run fails


@dataclass
class JobResult:
    value: Any
    record: dict[str, Any]

    @property
    def record_path(self) -> str:
        return self.record["record_path"]


class _Cancelled(Exception):
    pass


class _Phases:
    """Wall-clock phase timings for the record."""

    def __init__(self):
        self.data: dict[str, dict[str, float]] = {}
        self._t0 = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.data[name] = {"start_s": round(start - self._t0, 3),
                               "seconds": round(time.monotonic() - start, 3)}


_LIVE: "weakref.WeakSet[JobRun]" = weakref.WeakSet()
# reentrant: cancel_all() runs in signal handlers, on the main thread, which may be
# holding it at that moment
_LIVE_LOCK = threading.RLock()


def active_clients() -> list[Client]:
    with _LIVE_LOCK:
        return [r._client for r in _LIVE if r._client is not None]


def cancel_all(reason: str = "cancelled") -> int:
    """Cancel every run in this process (signal handlers call this). Returns how many."""
    with _LIVE_LOCK:
        runs = list(_LIVE)
    for r in runs:
        r.cancel(reason)
    return len(runs)


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT cancel the runs of this process; their teardown then runs normally.

    A second SIGINT falls back to KeyboardInterrupt, which still unwinds through teardown.
    """
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and getattr(handler, "seen_int", False):
            raise KeyboardInterrupt
        handler.seen_int = signum == signal.SIGINT
        logger.warning("%s received: cancelling %d run(s)", name, cancel_all(f"received {name}"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@atexit.register
def _close_leftovers() -> None:
    # a run abandoned in another thread when the interpreter exits still gets torn down
    with _LIVE_LOCK:
        runs = list(_LIVE)
    for r in runs:
        r.cancel("interpreter exit")
        r._emergency_teardown()


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


class JobRun:
    """One execution of a JobSpec. `run()` blocks; `cancel()` may be called from anywhere."""

    def __init__(self, spec: JobSpec | Mapping[str, Any], *,
                 on_event: Callable[[dict], Any] | None = None,
                 worker_env: Mapping[str, str] | None = None,
                 drop_env: list[str] | None = None,
                 run_id: str | None = None,
                 passthrough: tuple[type[BaseException], ...] = ()):
        """`passthrough`: exception types of the caller's own deadline (e.g. Airflow's
        AirflowTaskTimeout, raised into this thread by execution_timeout). They tear the
        run down, are recorded as `timed_out`, and are re-raised unchanged."""
        self.spec = JobSpec.parse(spec)
        self.passthrough = tuple(passthrough)
        self.last_record: dict[str, Any] | None = None
        self.on_event = on_event
        self.extra_worker_env = dict(worker_env or {})
        self.extra_drop_env = list(drop_env or [])
        self.run_id = run_id or new_run_id(self.spec.name)
        self.backend = get_backend(self.spec.cluster.backend)
        self.dashboard_link: str | None = None  # once the cluster is up
        self._cancel_reason: str | None = None  # set by cancel(); waits poll it
        self._client: Client | None = None
        self._cluster: Any = None
        self._script: subprocess.Popen | None = None
        self._torn_down = threading.Event()
        self._workers_hung = False
        self._workers_arrived = False
        self._disconnected_since: float | None = None  # set when startup failed: workers are killed, not asked
        self._teardown_lock = threading.Lock()

    # ------------------------------------------------------------------ control
    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop; run() then tears down and raises JobCancelled.

        Safe from signal handlers and other threads: it takes no lock and only sets
        flags, which every wait looks at every _POLL seconds. (A signal handler runs on
        the main thread between two bytecodes, maybe while that thread holds a lock:
        threading.Event.set() there deadlocked a run waiting in Event.wait() until
        Airflow's SIGKILL.)"""
        if self._cancel_reason is None:
            self._cancel_reason = reason or "cancelled"
        cluster = self._cluster
        if cluster is not None:
            with contextlib.suppress(Exception):
                self.backend.stop_restarts(cluster)

    def task_progress(self) -> dict[str, int] | None:
        """Tasks added/done/erred so far on the run's scheduler (None before it exists)."""
        client = self._client
        if client is None or client.status != "running":
            return None
        from .observe import task_progress
        try:
            return client.run_on_scheduler(task_progress, plugin=f"daskjob-firehose-{self.run_id}")
        except Exception:
            return None

    @property
    def cancelled(self) -> bool:
        return self._cancel_reason is not None

    def _check_cancel(self) -> None:
        if self._cancel_reason is not None:
            raise _Cancelled(self._cancel_reason)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        self._check_cancel()

    # --------------------------------------------------------------------- run
    def run(self) -> JobResult:
        refuse_while_bootstrapping()
        warn_if_unguarded()
        spec = self.spec
        recdir = RecordDir(spec.record_dir, self.run_id)
        phases = _Phases()
        started = dt.datetime.now(dt.timezone.utc)
        record: dict[str, Any] = {
            "run_id": self.run_id, "name": spec.name, "status": "running",
            "started_at": started.isoformat(), "ended_at": None, "duration_s": None,
            "record_path": recdir.location, "backend": spec.cluster.backend,
            "payload": describe_payload(spec.payload), "labels": self._labels(),
            "spec": spec.redacted(),
            "driver": _driver(),
            "versions": _versions(),
        }
        recdir.write_json("record.json", record)
        collector = Collector(recdir.events_path, recdir.logs_dir, run_id=self.run_id,
                              on_event=self.on_event, forward_logs=spec.forward_logs,
                              dask_log_level=dask_log_level())
        self._collector = collector
        value: Any = None
        failure: BaseException | None = None
        reraise: BaseException | None = None
        with _LIVE_LOCK:
            _LIVE.add(self)
        collector.lifecycle("run started", run_id=self.run_id, backend=spec.cluster.backend,
                            payload=record["payload"])
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(quiet_dask_logs(collector.dask_log_level))
                stack.callback(self._teardown, record, phases, collector)
                try:
                    value = self._lifecycle(record, phases, collector, recdir)
                except BaseException as e:  # noqa: BLE001 - classified and recorded below
                    failure = e
                    # stopped while workers were still starting (failed start, cancel,
                    # signal): a nanny mid-start blocks a clean close, so stop them first
                    self._workers_hung = (isinstance(e, StartupFailed)
                                          or not self._workers_arrived)
                    if isinstance(e, (KeyboardInterrupt, SystemExit, *self.passthrough)):
                        reraise = e
                finally:
                    with phases.phase("snapshot"):
                        self._snapshot(record, collector, recdir)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
        status, error = self._classify(failure)
        collector.lifecycle("run finished", status=status)
        collector.close()
        ended = dt.datetime.now(dt.timezone.utc)
        record.update({
            "status": status, "ended_at": ended.isoformat(),
            "duration_s": round((ended - started).total_seconds(), 3),
            "phases": phases.data,
            "events": {"count": collector.event_count, "topics": dict(collector.topics)},
            "logs": {"lines": collector.log_line_count,
                     "files": sorted(os.listdir(recdir.logs_dir)) if os.path.isdir(recdir.logs_dir) else []},
            "worker_deaths": collector.worker_deaths,
            "result": _summarise(value) if failure is None else None,
            "error": error,
        })
        recdir.write_json("record.json", record)
        recdir.publish()
        self.last_record = record
        if reraise is not None:
            raise reraise
        if failure is not None:
            raise self._as_job_failed(failure, status, error, record, collector) from (
                None if isinstance(failure, (_Cancelled, JobFailed)) else failure)
        return JobResult(value=value, record=record)

    def _labels(self) -> dict[str, str]:
        return {"daskjob/run-id": self.run_id, "daskjob/name": self.spec.name,
                **self.spec.labels}

    def _lifecycle(self, record, phases, collector: Collector, recdir: RecordDir) -> Any:
        spec = self.spec
        deadline = time.monotonic() + spec.startup_timeout_s
        payload = resolve(spec.payload)
        ctx = ClusterContext(
            run_id=self.run_id, labels={**self._labels(), **driver_labels()},
            worker_env={**spec.cluster.env, **self.extra_worker_env,
                        **label_env(self.run_id, self._labels())},
            drop_env=[*spec.cluster.drop_env, *self.extra_drop_env],
            worker_config=config.worker_dask_config(report=spec.report_enabled),
            startup_deadline=deadline, is_cancelled=lambda: self.cancelled)

        with phases.phase("provision"):
            self._cluster = self._provision(ctx, deadline)
            target = self.backend.client_target(self._cluster)
            self._client = Client(target, set_as_default=False,
                                  timeout=max(1.0, deadline - time.monotonic()))
            record["scheduler_address"] = self._client.scheduler.address
            record["dashboard_link"] = (self.backend.dashboard_link(self._cluster)
                                        if spec.cluster.dashboard else None)
            self.dashboard_link = record["dashboard_link"]
            self._attach_observers(payload, ctx, collector)
            collector.lifecycle("provisioned", scheduler=record["scheduler_address"],
                                dashboard=record["dashboard_link"])

        expected = self.backend.expected_workers(spec.cluster)
        with phases.phase("workers"):
            self.backend.scale(self._cluster, expected)
            self._wait_for_workers(expected, deadline, collector)
            self._workers_arrived = True
        workers_now = self._client.scheduler_info(n_workers=-1)["workers"]
        collector.live_workers.update(workers_now)  # a borrowed cluster's workers joined earlier
        record["workers"] = {"expected": expected, "started": len(workers_now)}

        with phases.phase("environment_check"):
            record["environment_check"] = self._check_environment()

        timeout = spec.timeout_s
        with phases.phase("payload"):
            collector.lifecycle("payload started", payload=payload.label, timeout_s=timeout)
            report = self._start_report(recdir) if spec.report_enabled else None
            try:
                if payload.kind == "script":
                    value = self._run_script(payload, collector, timeout)
                else:
                    with shipped_by_value(None if payload.importable_by_name else payload.module):
                        value = self._run_callable(payload, timeout)
            finally:
                self._finish_report(report, record)
            collector.lifecycle("payload finished")
        return value

    # --------------------------------------------------------------- provisioning
    def _provision(self, ctx: ClusterContext, deadline: float) -> Any:
        """Create the cluster in a helper thread so cancel and the deadline stay live.

        If we stop waiting, a cluster that appears later is closed by the helper."""
        box: dict[str, Any] = {}
        abandoned = threading.Event()

        def create():
            try:
                cluster = self.backend.create(self.spec.cluster, ctx)
            except BaseException as e:  # noqa: BLE001
                box["error"] = e
                return
            if abandoned.is_set():
                with contextlib.suppress(Exception):
                    self.backend.close(cluster, timeout=10)
                return
            box["cluster"] = cluster

        t = threading.Thread(target=create, name=f"daskjob-provision-{self.run_id}", daemon=True)
        t.start()
        try:
            while t.is_alive():
                self._check_cancel()
                if time.monotonic() > deadline:
                    raise StartupFailed(f"the {self.spec.cluster.backend} cluster did not start "
                                        f"within startup_timeout ({self.spec.startup_timeout})")
                t.join(_POLL)
        except BaseException:
            abandoned.set()
            if "cluster" in box:  # finished at the last moment: still ours to close
                self._cluster = box["cluster"]
            raise
        if "error" in box:
            raise StartupFailed(f"could not start the {self.spec.cluster.backend} cluster: "
                                f"{_one_line(box['error'])}") from box["error"]
        return box["cluster"]

    def _attach_observers(self, payload: ResolvedPayload, ctx: ClusterContext,
                          collector: Collector) -> None:
        client = self._client
        # A loose module that workers could import by name if they shared our files is
        # recreated on each remote worker, and on the scheduler, which unpickles task
        # graphs, from its source. (cloudpickle's pickle-by-value is not enough here:
        # distributed decides per top-level object, so a function from such a module
        # inside a task is still pickled by reference.) A module that no worker can
        # import by name, such as a DAG file, travels by value instead: see by_value.
        ship = {}
        if payload.module and payload.importable_by_name and not self.backend.shares_filesystem:
            ship = module_source(payload.module)
        client.subscribe_topic(FIREHOSE_TOPIC, collector.on_firehose)
        client.register_plugin(FirehosePlugin(client.id, name=f"daskjob-firehose-{self.run_id}",
                                              modules=ship))
        client.register_plugin(WorkerObserver(
            self.run_id, drop_env=ctx.drop_env,
            sys_path=payload.worker_sys_path if self.backend.shares_filesystem else [],
            modules=ship,
            level=self.spec.worker_log_level, forward_logs=self.spec.forward_logs,
            echo_streams=not self.backend.shares_filesystem,
            own_workers=self.backend.owns_cluster,
            stderr_dir=self._collector.logs_dir if self.backend.shares_filesystem else None),
            name=f"daskjob-observer-{self.run_id}")

    def _wait_for_workers(self, n: int, deadline: float, collector: Collector) -> None:
        while True:
            self._check_cancel()
            reason = self._cluster_failure()
            if reason:
                raise StartupFailed(reason)
            left = deadline - time.monotonic()
            if left <= 0:
                have = len(self._client.scheduler_info(n_workers=-1)["workers"])
                tail = "\n".join(collector.log_tail(10))
                note = None
                if self.backend.owns_cluster:
                    with contextlib.suppress(Exception):  # a hint, not worth a second error
                        note = self.backend.startup_note(self._cluster)
                raise StartupFailed(
                    f"only {have} of {n} workers arrived within startup_timeout "
                    f"({self.spec.startup_timeout})" + (f"; {note}" if note else "")
                    + (f"; last worker log lines:\n{tail}" if tail else ""))
            try:
                self._client.wait_for_workers(n, timeout=min(left, 0.5))
                return
            except (TimeoutError, asyncio.TimeoutError):
                continue

    def _paused_note(self) -> str:
        """Why a run made no progress, when the reason is memory."""
        since = self._collector.all_paused_since() if self._collector else None
        if since is None:
            return ""
        n = len(self._collector.live_workers)
        return (f"; all {n} worker(s) paused at their memory limit for the last "
                f"{time.time() - since:.0f}s, so no task could start (give workers more "
                "memory: memory_per_worker, or smaller partitions)")

    def _cluster_failure(self) -> str | None:
        client = self._client
        if client is not None:
            if client.status == "running":
                self._disconnected_since = None
            elif client.status in ("connecting", "newly-created"):
                # distributed retries for a minute; a scheduler gone this long is gone
                now = time.monotonic()
                self._disconnected_since = self._disconnected_since or now
                if now - self._disconnected_since > _SCHEDULER_LOST_AFTER:
                    return (f"lost the connection to the scheduler at {client.scheduler.address} "
                            f"for more than {_SCHEDULER_LOST_AFTER:.0f}s")
            else:
                return f"lost the connection to the scheduler (client status {client.status!r})"
        if self.backend.owns_cluster and self._cluster is not None:
            status = getattr(self._cluster, "status", None)
            if status is not None and getattr(status, "name", "") in ("closed", "failed", "closing"):
                return f"the cluster stopped unexpectedly (status {status.name})"
            return self.backend.failure_reason(self._cluster)
        return None

    def _check_environment(self) -> dict[str, Any]:
        policy = self.spec.version_check
        if policy == "off":
            return {"policy": "off"}
        from distributed.versions import error_message
        versions = self._client.get_versions(check=False)
        msg = error_message(versions["scheduler"], versions["workers"], versions["client"])
        # distributed reports any mismatch of its checked packages as a "warning"
        mismatch = (msg["error"] + "\n" + msg["warning"]).strip()
        result = {"policy": policy, "ok": not mismatch, "mismatch": mismatch or None}
        if mismatch:
            text = ("software on the workers does not match the driver "
                    "(set version_check='warn' to run anyway):\n" + mismatch)
            if policy == "error":
                raise StartupFailed(text)
            logger.warning(text)
        return result

    # ------------------------------------------------------------------ payload
    def _run_callable(self, payload: ResolvedPayload, timeout: float | None) -> Any:
        client = self._client
        kwargs = dict(self.spec.params)
        if payload.wants_client and "client" not in kwargs:
            kwargs["client"] = client
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call():
            try:
                with client.as_current():
                    value = payload.fn(**kwargs)
                    check_result(value)  # while the cluster can still say what a Future is
                future.set_result(value)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(e)

        # The payload runs in its own thread so that this thread can enforce the
        # timeout and honour cancel(); on either, teardown closes the cluster and the
        # payload's next Dask call fails, which ends that thread.
        threading.Thread(target=call, name=f"daskjob-payload-{self.run_id}", daemon=True).start()
        return self._await(future.done, future.result, timeout)

    def _run_script(self, payload: ResolvedPayload, collector: Collector,
                    timeout: float | None) -> Any:
        """Run a script as __main__ with DASK_SCHEDULER_ADDRESS set (a DaskJob runner)."""
        result_file = os.path.join(collector.logs_dir, os.pardir, ".result.json")
        env = {**os.environ, **self.spec.cluster.env,
               **label_env(self.run_id, self._labels()),
               "DASK_SCHEDULER_ADDRESS": self._client.scheduler.address,
               "DASKJOB_PARAMS": json.dumps(self.spec.params, default=str),
               "DASKJOB_RESULT_FILE": os.path.abspath(result_file),
               "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, payload.script] + [f"--{k}={v}" for k, v in self.spec.params.items()]
        proc = subprocess.Popen(args, env=env, cwd=os.path.dirname(payload.script),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self._script = proc
        tail: list[str] = []

        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                del tail[:-50]
                collector.driver_log("script", line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        def outcome():
            reader.join(5)
            if proc.returncode != 0:
                raise ScriptFailed(f"script {os.path.basename(payload.script)} exited with code "
                                   f"{proc.returncode}; last output:\n" + "\n".join(tail[-20:]))
            if os.path.exists(result_file):
                with open(result_file) as f:
                    return json.load(f)
            return {"exit_code": 0}

        return self._await(lambda: proc.poll() is not None, outcome, timeout)

    def _await(self, done: Callable[[], bool], outcome: Callable[[], Any],
               timeout: float | None) -> Any:
        """Wait for the payload, watching cancel(), the timeout and the cluster's health."""
        start = time.monotonic()
        next_health = start + _HEALTH_EVERY
        no_workers_since: float | None = None
        while not done():
            self._check_cancel()
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                raise JobTimedOut(f"payload ran longer than timeout ({self.spec.timeout})"
                                  + self._paused_note())
            if now >= next_health:
                next_health = now + _HEALTH_EVERY
                reason = self._cluster_failure()
                if reason:
                    raise JobFailed(f"{reason}; the payload cannot continue")
                n = len(self._collector.live_workers)
                if n == 0 and self.backend.owns_cluster:
                    no_workers_since = no_workers_since or now
                    if now - no_workers_since > self.spec.startup_timeout_s:
                        raise JobFailed("all workers are gone and none came back within "
                                        f"startup_timeout ({self.spec.startup_timeout})")
                else:
                    no_workers_since = None
            self._sleep(_POLL)
        return outcome()

    # ------------------------------------------------------------ report, snapshot
    def _start_report(self, recdir: RecordDir):
        from distributed import performance_report
        report = performance_report(filename=recdir.report_path, mode="inline")
        try:
            with self._client.as_current():
                report.__enter__()
            return report
        except Exception:
            logger.warning("performance report could not start", exc_info=True)
            return None

    def _finish_report(self, report, record) -> None:
        if report is None:
            return
        if self.cancelled or self._client.status != "running":
            return  # not worth delaying a cancelled run's teardown for a report
        try:
            with self._client.as_current():
                report.__exit__(None, None, None)
            record["report"] = "report.html"
        except Exception as e:
            record["report_error"] = _one_line(e)

    def _snapshot(self, record, collector: Collector, recdir: RecordDir) -> None:
        """Before teardown: make sure every event and log line is in, fetch scheduler logs."""
        client = self._client
        if self._cluster is not None and self.backend.owns_cluster:
            try:
                self.backend.snapshot_logs(self._cluster, recdir.logs_dir)
            except Exception as e:  # the rest of the snapshot still matters
                record["snapshot_warning"] = f"cluster manager logs incomplete: {_one_line(e)}"
        if client is None or client.status != "running":
            collector.flush()
            return
        try:
            workers = {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}
            if workers and self.backend.owns_cluster:
                token = uuid.uuid4().hex
                client.run(_emit_barrier, token=token)
                if not collector.wait_barrier(token, workers, _BARRIER_TIMEOUT):
                    record["snapshot_warning"] = "not every worker confirmed its last events"
            logs = client.get_scheduler_logs(n=100_000)
            with open(os.path.join(recdir.logs_dir, "scheduler.log"), "w") as f:
                for level, line in logs:
                    f.write(f"{line}\n")
        except Exception as e:
            record["snapshot_warning"] = f"snapshot incomplete: {_one_line(e)}"
        collector.flush()

    # ----------------------------------------------------------------- teardown
    def _teardown(self, record, phases: _Phases, collector: Collector) -> None:
        with self._teardown_lock:
            if self._torn_down.is_set():
                return
            with phases.phase("teardown"):
                try:
                    outcome = self._close_everything(collector)
                except Exception as e:  # the record must still be written
                    logger.exception("daskjob: teardown of %s failed", self.run_id)
                    outcome = {"cluster": f"teardown failed: {_one_line(e)}", "killed_processes": []}
            record["teardown"] = outcome
            collector.lifecycle("teardown done", **outcome)
            self._torn_down.set()

    def _close_everything(self, collector: Collector | None) -> dict[str, Any]:
        grace = float(_config_seconds("teardown.grace"))
        outcome: dict[str, Any] = {"cluster": "not started", "killed_processes": []}
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self.backend.stop_restarts(self._cluster)
        if collector is not None:
            collector.cluster_closing()
        if self._script is not None and self._script.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._script.pid, signal.SIGKILL)
            self._script.wait(5)
        if self._client is not None:
            if not self.backend.owns_cluster and self._client.status == "running":
                # a borrowed cluster keeps running: take our plugins back off it
                with contextlib.suppress(Exception):
                    self._client.unregister_worker_plugin(f"daskjob-observer-{self.run_id}")
                with contextlib.suppress(Exception):
                    self._client.unregister_scheduler_plugin(f"daskjob-firehose-{self.run_id}")
            with contextlib.suppress(Exception):
                self._client.close(timeout=grace)
        killed: list[int] = []
        if self._cluster is not None:
            if self.backend.owns_cluster:
                # remember the process tree now: after close, orphans have no parent to find
                tree = process_tree(self.backend.process_ids(self._cluster))
                if self._workers_hung:
                    # workers stuck in start block a clean close: stop them first
                    killed += terminate(tree, grace=1.0)
                try:
                    self.backend.close(self._cluster, timeout=grace)
                    outcome["cluster"] = "closed"
                except Exception as e:
                    # kill what is there now (a nanny may have started a new process), retry
                    tree += process_tree(self.backend.process_ids(self._cluster))
                    killed += terminate([p for p in tree if p.is_running()], grace=1.0)
                    try:
                        self.backend.close(self._cluster, timeout=grace)
                        outcome["cluster"] = f"closed after killing its processes ({_one_line(e)})"
                    except Exception as e2:
                        outcome["cluster"] = f"close failed, processes killed: {_one_line(e2)}"
                killed += terminate([p for p in tree if p.is_running()], grace=2.0)
            else:
                outcome["cluster"] = "borrowed (left running)"
        if self.backend.owns_cluster:
            # grandchildren (a task's subprocess) survive a plain cluster close
            killed += stop_run_processes(self.run_id, grace=2.0)
        outcome["killed_processes"] = sorted(set(killed))
        return outcome

    def _emergency_teardown(self) -> None:
        with self._teardown_lock:
            if not self._torn_down.is_set():
                with contextlib.suppress(Exception):
                    self._close_everything(None)
                self._torn_down.set()

    # ------------------------------------------------------------------ results
    def _classify(self, failure: BaseException | None) -> tuple[str, dict | None]:
        if failure is None:
            return "succeeded", None
        if isinstance(failure, (_Cancelled, JobCancelled, KeyboardInterrupt)):
            status = "cancelled"
        elif self.passthrough and isinstance(failure, self.passthrough):
            status = "timed_out"
        elif isinstance(failure, JobFailed):
            status = failure.status
        elif isinstance(failure, SystemExit):
            status = "cancelled"
        else:
            status = "failed"
        if isinstance(failure, _Cancelled):
            message = f"run cancelled: {failure}"
        elif isinstance(failure, KeyboardInterrupt):
            message = "run cancelled: KeyboardInterrupt"
        else:
            message = str(failure) or type(failure).__name__
        cause = failure.__cause__ if isinstance(failure, JobFailed) and failure.__cause__ else failure
        tb = "".join(traceback.format_exception(cause))
        error = {"type": type(failure).__name__, "message": message, "traceback": tb}
        return status, error

    def _as_job_failed(self, failure, status, error, record, collector) -> JobFailed:
        cls = {"cancelled": JobCancelled, "timed_out": JobTimedOut,
               "startup_failed": StartupFailed}.get(status, JobFailed)
        tail = collector.log_tail(20)
        crash = collector.stderr_tail(30) if status in ("failed", "startup_failed") else []
        if isinstance(failure, (_Cancelled, JobFailed)):
            headline = error["message"]
            worker_tb = None if isinstance(failure, _Cancelled) else _remote_traceback(failure)
        else:
            headline = f"payload raised {type(failure).__name__}: {failure}"
            worker_tb = error["traceback"]
        parts = [f"daskjob run {self.run_id} {status}: {headline}"]
        if worker_tb:
            where = "cluster start" if status == "startup_failed" else "payload / worker side"
            parts.append(f"Traceback ({where}):\n" + worker_tb.rstrip())
        if tail:
            parts.append("Last worker log lines:\n" + "\n".join(tail))
        if crash:
            parts.append("Worker stderr (last lines):\n" + "\n".join(crash))
        parts.append(f"Run record: {record['record_path']}")
        return cls("\n\n".join(parts), record=record, worker_traceback=worker_tb, log_tail=tail)


class ScriptFailed(JobFailed):
    """A script payload exited non-zero."""


def _remote_traceback(failure: BaseException) -> str | None:
    cause = failure.__cause__
    if cause is None:
        return None
    return "".join(traceback.format_exception(cause))


def _config_seconds(key: str) -> float:
    from . import config
    from .durations import seconds
    return seconds(config.get(key), field=f"daskjob.{key}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _driver() -> dict[str, Any]:
    """The process driving the run: `daskjob show` tells a run whose driver is gone."""
    import psutil
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": psutil.Process().create_time(), "python": platform.python_version()}


def _versions() -> dict[str, str]:
    import dask
    import distributed
    return {"daskjob": __version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "python": platform.python_version()}


def _summarise(value: Any) -> dict[str, Any]:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return {"type": type(value).__name__, "json": False, "repr": repr(value)[:500]}
    if len(text) > 1_000_000:
        return {"type": type(value).__name__, "json": False,
                "repr": f"JSON value of {len(text)} characters (not stored)"}
    return {"type": type(value).__name__, "json": True, "value": value}


def run_job(spec: JobSpec | Mapping[str, Any] | str | os.PathLike, *,
            on_event: Callable[[dict], Any] | None = None,
            worker_env: Mapping[str, str] | None = None,
            drop_env: list[str] | None = None) -> JobResult:
    """Run one job on an ephemeral cluster and tear it down, whatever happens.

    `spec` is a JobSpec, a mapping, or the path of a job YAML file. Raises SpecError for
    an invalid spec (before any process starts; a startup_failed record is still written
    when the spec names its record_dir), and JobFailed (or a subclass) when the run fails.
    """
    refuse_while_bootstrapping()
    if not isinstance(spec, JobSpec):
        raw = load_yaml(spec) if isinstance(spec, (str, os.PathLike)) else dict(spec)
        try:
            spec = JobSpec.parse(raw)
        except SpecError as e:
            write_rejected_record(raw, e)
            raise
    return JobRun(spec, on_event=on_event, worker_env=worker_env, drop_env=drop_env).run()


def write_rejected_record(raw: Mapping[str, Any], error: Exception) -> str | None:
    """Nothing is lost: a spec that fails validation still leaves a record, if it says where."""
    from .spec import valid_name
    record_dir = raw.get("record_dir")
    name = raw.get("name")
    if not isinstance(record_dir, str) or not record_dir:
        return None
    run_id = new_run_id(name if valid_name(name) else "invalid")
    try:
        recdir = RecordDir(record_dir, run_id)
    except Exception:
        return None
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    spec_view = {k: (describe_payload(v) if k == "payload" else v) for k, v in raw.items()}
    labels = raw.get("labels") if isinstance(raw.get("labels"), Mapping) else {}
    record = {"run_id": run_id, "name": name, "status": "startup_failed",
              "started_at": now, "ended_at": now, "duration_s": 0.0,
              "record_path": recdir.location,
              "payload": None if raw.get("payload") is None else describe_payload(raw["payload"]),
              "labels": {"daskjob/run-id": run_id, **{str(k): str(v) for k, v in labels.items()}},
              "spec": redact(json.loads(json.dumps(spec_view, default=str))),
              "driver": _driver(),
              "error": {"type": type(error).__name__, "message": str(error), "traceback": ""},
              "teardown": {"cluster": "not started", "killed_processes": []},
              "versions": _versions()}
    with open(recdir.events_path, "w") as f:
        f.write(json.dumps({"time": time.time(), "topic": "daskjob.lifecycle", "worker": "driver",
                            "data": {"event": "spec rejected", "error": str(error)}}) + "\n")
    recdir.write_json("record.json", record)
    recdir.publish()
    return recdir.location
