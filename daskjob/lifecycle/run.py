"""run_job(): the one lifecycle every front end uses.

validate -> provision -> wait for workers (startup_timeout) -> environment check ->
run payload (timeout) -> snapshot logs/events/report -> teardown.

Each step registers the release of what it acquires as it acquires it (a cluster the run
started, the client, the script process; the plugins it put on a borrowed cluster), and
teardown runs them in reverse on every path: success, payload error, timeouts,
cancel(), KeyboardInterrupt, SIGTERM. A borrowed cluster is never closed: closing it is
never registered. Closing twice is harmless.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from distributed import Client

from .. import config
from ..live import registered
from ..backends import ClusterContext, ClusterHandle, get_backend
from ..by_value import shipped_by_value
from ..dask_logs import dask_log_level, quiet_dask_logs
from ..durations import seconds
from ..errors import JobFailed, JobTimedOut, SpecError, StartupFailed
from ..main_guard import refuse_while_bootstrapping, warn_if_unguarded
from ..observe.collector import Collector
from ..observe.usage import Usage, resource_time
from ..payload import ResolvedPayload, describe_payload, resolve
from ..procs import driver_labels, label_env
from ..record import RecordDir
from ..spec import JobSpec, load_yaml
from .outcome import (as_job_failed, classify, driver, new_run_id, summarise, versions,
                      write_rejected_record)
from .payload import run_callable, run_script
from .provision import (HealthWatch, attach_observers, check_environment, connect,
                        detach_observers, every, quietly, start_cluster, wait_for_workers)
from .snapshot import finish_report, snapshot, start_report
from .state import Cancelled, Phases, RunState
from .teardown import Releases, release_cluster

HEALTH_EVERY = 0.5     # how often a running payload's cluster is checked
# a run's expiry label: past startup timeout + timeout, the run has ended, and its
# teardown (closing a busy cluster) has had this long, with room to spare
EXPIRY_GRACE = 300.0


@dataclass
class JobResult:
    value: Any
    record: dict[str, Any]

    @property
    def record_path(self) -> str:
        return self.record["record_path"]


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
        self.on_event = on_event
        self.extra_worker_env = dict(worker_env or {})
        self.extra_drop_env = list(drop_env or [])
        self.run_id = run_id or new_run_id(self.spec.name)
        self.backend = get_backend(self.spec.cluster.backend)
        self.state = RunState.CREATED
        self.last_record: dict[str, Any] | None = None
        self.dashboard_link: str | None = None  # once the cluster is up
        self._cancel_reason: str | None = None  # set by cancel(); every wait looks at it
        self._ctx: ClusterContext | None = None
        self._handle: ClusterHandle | None = None
        self._client: Client | None = None
        self._collector: Collector | None = None
        self._releases: Releases | None = None
        self._health: HealthWatch | None = None
        self._teardown_lock = threading.Lock()

    # ------------------------------------------------------------------ control
    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop; run() then tears down and raises JobCancelled.

        Safe from signal handlers and other threads: it takes no lock and only sets
        flags, which every wait looks at every few milliseconds. (A signal handler runs
        on the main thread between two bytecodes, maybe while that thread holds a lock:
        threading.Event.set() there deadlocked a run waiting in Event.wait() until
        Airflow's SIGKILL.)"""
        if self._cancel_reason is None:
            self._cancel_reason = reason or "cancelled"
        handle = self._handle
        if handle is not None:
            try:
                self.backend.stop_restarts(handle)
            except Exception:  # noqa: BLE001 - in a signal handler: not even a log call
                pass            # (it takes locks); teardown stops restarts again, logged

    @property
    def cancelled(self) -> bool:
        return self._cancel_reason is not None

    @property
    def client(self) -> Client | None:
        return self._client

    def task_progress(self) -> dict[str, int] | None:
        """Tasks added/done/erred so far on the run's scheduler (None before it exists)."""
        client = self._client
        if client is None or client.status != "running":
            return None
        from ..observe.scheduler import firehose_name, task_progress
        try:
            return client.run_on_scheduler(task_progress, plugin=firehose_name(self.run_id))
        except Exception:  # a progress bar's question: no answer is an answer
            return None

    def _check_cancel(self) -> None:
        if self._cancel_reason is not None:
            raise Cancelled(self._cancel_reason)

    # --------------------------------------------------------------------- run
    def run(self) -> JobResult:
        refuse_while_bootstrapping()
        warn_if_unguarded()
        recdir = RecordDir(self.spec.record_dir, self.run_id)
        record = self._start_record(recdir)
        collector = self._collector = Collector(
            recdir.events_path, recdir.logs_dir, run_id=self.run_id, on_event=self.on_event,
            forward_logs=self.spec.forward_logs, dask_log_level=dask_log_level(),
            usage=Usage({g.name: g.at_start for g in self.spec.cluster.group_plans()}))
        phases, value, failure = Phases(), None, None
        with registered(self):
            collector.lifecycle("run started", run_id=self.run_id,
                                backend=self.spec.cluster.backend, payload=record["payload"])
            try:
                value = self._lifecycle(record, phases, recdir)
            except BaseException as e:  # noqa: BLE001 - classified and recorded below
                failure = e
        return self._finish(record, phases, recdir, value, failure)

    def _lifecycle(self, record: dict, phases: Phases, recdir: RecordDir) -> Any:
        releases = self._releases = Releases(self.run_id)
        error: BaseException | None = None
        try:
            with quiet_dask_logs(self._collector.dask_log_level):
                try:
                    return self._phases(record, phases, recdir, releases)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    # stopped while workers were still starting (failed start, cancel,
                    # signal): a nanny mid-start blocks a clean close, so stop them first
                    releases.workers_hung = (isinstance(error, StartupFailed)
                                             or not self.state.workers_arrived)
                    self.state = RunState.SNAPSHOT
                    with phases.phase("snapshot"):
                        snapshot(record, self._collector, recdir.logs_dir, self.backend,
                                 self._handle, self._client)
                    self._teardown(record, phases)
        finally:
            self._releases = None

    def _phases(self, record: dict, phases: Phases, recdir: RecordDir, releases: Releases) -> Any:
        """The run, top to bottom."""
        spec, collector = self.spec, self._collector
        deadline = time.monotonic() + spec.startup_timeout_s
        payload = resolve(spec.payload)
        with phases.phase("provision"):
            self.state = RunState.PROVISIONING
            handle = self._provision(deadline, releases)
            client = self._connect(handle, deadline, releases)
            record["scheduler_address"] = client.scheduler.address
            record["dashboard_link"] = self.dashboard_link = (
                self.backend.dashboard_link(handle) if spec.cluster.dashboard else None)
            self._observe(client, payload, handle, releases)
            collector.lifecycle("provisioned", scheduler=record["scheduler_address"],
                                dashboard=record["dashboard_link"])
        with phases.phase("workers"):
            self.state = RunState.WAITING_FOR_WORKERS
            record["workers"] = self._workers(handle, client, deadline)
        with phases.phase("environment_check"):
            self.state = RunState.CHECKING_ENVIRONMENT
            record["environment_check"] = check_environment(client, spec.version_check,
                                                            self.run_id)
        with phases.phase("payload"):
            self.state = RunState.RUNNING_PAYLOAD
            return self._payload(payload, record, recdir, releases)

    # --------------------------------------------------------------- the steps
    def _provision(self, deadline: float, releases: Releases) -> ClusterHandle:
        spec = self.spec
        labels = {**self._labels(), **driver_labels(expires_in=self._expires_in())}
        self._ctx = ClusterContext(
            run_id=self.run_id, labels=labels,
            worker_env={**spec.cluster.env, **self.extra_worker_env,
                        **label_env(self.run_id, labels)},
            drop_env=[*spec.cluster.drop_env, *self.extra_drop_env],
            worker_config=config.worker_dask_config(report=spec.report_enabled),
            startup_deadline=deadline, is_cancelled=lambda: self.cancelled)
        handle = start_cluster(self.backend, spec, self._ctx, deadline, self._check_cancel)
        handle.groups, handle.on_scale = spec.cluster.group_plans(), self._scaled
        self._handle = handle
        if handle.owned:  # a borrowed cluster is never ours to close
            releases.add("close the cluster", lambda: release_cluster(
                self.backend, handle, self.run_id, _grace(), lambda: releases.workers_hung,
                releases.outcome))
        else:
            releases.outcome["cluster"] = "borrowed (left running)"
        return handle

    def _scaled(self, group: str, before: int, after: int) -> None:
        self._collector.lifecycle("scaled up" if after > before else "scaled down",
                                  group=group, **{"from": before, "to": after})

    def _connect(self, handle: ClusterHandle, deadline: float, releases: Releases) -> Client:
        client = connect(self.backend, handle, deadline)
        self._client = client
        releases.add("close the client", lambda: client.close(timeout=_grace()))
        self._health = HealthWatch(self.backend, handle, client,
                                   lambda: len(self._collector.live_workers),
                                   self.spec.startup_timeout_s, str(self.spec.startup_timeout))
        return client

    def _observe(self, client: Client, payload: ResolvedPayload, handle: ClusterHandle,
                 releases: Releases) -> None:
        attach_observers(client, self.run_id, payload, self.backend, handle, self._ctx,
                         self._collector, self.spec)
        if not handle.owned:
            releases.add("take the run's plugins off the borrowed cluster",
                         lambda: detach_observers(client, self.run_id))

    def _workers(self, handle: ClusterHandle, client: Client, deadline: float) -> dict[str, int]:
        expected = self.backend.expected_workers(self.spec.cluster)
        self.backend.scale(handle, expected)
        wait_for_workers(client, expected, deadline, self._startup_check,
                         self.spec.startup_timeout, lambda: self.backend.startup_note(handle),
                         lambda: self._collector.log_tail(10))
        workers_now = client.scheduler_info(n_workers=-1)["workers"]
        self._collector.live_workers.update(workers_now)  # a borrowed cluster's joined earlier
        return {"expected": expected, "started": len(workers_now)}

    def _startup_check(self) -> None:
        self._check_cancel()
        reason = self._health.failure()
        if reason:
            raise StartupFailed(reason)

    def _payload(self, payload: ResolvedPayload, record: dict, recdir: RecordDir,
                 releases: Releases) -> Any:
        spec, client, collector = self.spec, self._client, self._collector
        collector.lifecycle("payload started", payload=payload.label, timeout_s=spec.timeout_s)
        health = every(HEALTH_EVERY, self._health.during_payload)

        def check() -> None:
            self._check_cancel()
            health()

        def expired() -> BaseException:
            return JobTimedOut(f"payload ran longer than timeout ({spec.timeout})"
                               + self._paused_note())

        report = start_report(client, recdir, self.run_id) if spec.report_enabled else None
        limits = {"timeout": spec.timeout_s, "check": check, "expired": expired,
                  "run_id": self.run_id}
        try:
            if payload.kind == "script":
                env = {**spec.cluster.env, **label_env(self.run_id, self._ctx.labels),
                       "DASK_SCHEDULER_ADDRESS": client.scheduler.address}
                value = run_script(payload, spec.params, env, collector, releases, **limits)
            else:
                with shipped_by_value(None if payload.importable_by_name else payload.module):
                    value = run_callable(payload, spec.params, client, **limits)
        finally:
            finish_report(report, client, record, self.cancelled)
        collector.lifecycle("payload finished")
        return value

    def _paused_note(self) -> str:
        """Why a run made no progress, when the reason is memory."""
        since = self._collector.all_paused_since()
        if since is None:
            return ""
        n = len(self._collector.live_workers)
        return (f"; all {n} worker(s) paused at their memory limit for the last "
                f"{time.time() - since:.0f}s, so no task could start (give workers more "
                "memory: memory_per_worker, or smaller partitions)")

    # ----------------------------------------------------------------- teardown
    def _teardown(self, record: dict, phases: Phases) -> None:
        with phases.phase("teardown"):
            outcome = self._release_all()
        if outcome is not None:
            record["teardown"] = outcome
            self._collector.lifecycle("teardown done", **outcome)

    def _release_all(self) -> dict[str, Any] | None:
        """Release what the run holds, once (the run's own thread and the interpreter's
        exit may both get here)."""
        with self._teardown_lock:
            releases = self._releases
            if self.state is RunState.FINISHED or releases is None:
                return None
            self.state = RunState.TEARING_DOWN
            if self._handle is not None:
                with quietly("stopping worker restarts", self.run_id):
                    self.backend.stop_restarts(self._handle)
            self._collector.cluster_closing()  # from now on, workers leaving is no death
            self._collector.usage.end()  # resource time counts until the teardown
            outcome = releases.close()
            self.state = RunState.FINISHED
            return outcome

    def emergency_teardown(self) -> None:
        """At interpreter exit, for a run left going in another thread."""
        self._release_all()

    # ------------------------------------------------------------------ results
    def _labels(self) -> dict[str, str]:
        return {"daskjob/run-id": self.run_id, "daskjob/name": self.spec.name,
                **self.spec.labels}

    def _expires_in(self) -> float | None:
        if self.spec.timeout_s is None:
            return None
        return self.spec.startup_timeout_s + self.spec.timeout_s + EXPIRY_GRACE

    def _start_record(self, recdir: RecordDir) -> dict[str, Any]:
        spec = self.spec
        record = {
            "run_id": self.run_id, "name": spec.name, "status": "running",
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(), "ended_at": None,
            "duration_s": None, "record_path": recdir.location, "backend": spec.cluster.backend,
            "payload": describe_payload(spec.payload), "labels": self._labels(),
            "spec": spec.redacted(), "driver": driver(), "versions": versions()}
        recdir.write_json("record.json", record)
        return record

    def _finish(self, record: dict, phases: Phases, recdir: RecordDir, value: Any,
                failure: BaseException | None) -> JobResult:
        collector = self._collector
        status, error = classify(failure, self.passthrough)
        collector.lifecycle("run finished", status=status)
        collector.close()
        ended = dt.datetime.now(dt.timezone.utc)
        started = dt.datetime.fromisoformat(record["started_at"])
        logs = recdir.logs_dir
        record.update({
            "status": status, "ended_at": ended.isoformat(),
            "duration_s": round((ended - started).total_seconds(), 3), "phases": phases.data,
            "events": {"count": collector.event_count, "topics": dict(collector.topics)},
            "logs": {"lines": collector.log_line_count,
                     "files": sorted(os.listdir(logs)) if os.path.isdir(logs) else []},
            "worker_deaths": collector.worker_deaths,
            **resource_time(collector.usage),
            "result": summarise(value) if failure is None else None, "error": error})
        recdir.write_json("record.json", record)
        recdir.publish()
        self.last_record = record
        if isinstance(failure, (KeyboardInterrupt, SystemExit, *self.passthrough)):
            raise failure
        if failure is not None:
            raise as_job_failed(failure, status, error, record, collector.log_tail(20),
                                collector.stderr_tail(30)) from (
                None if isinstance(failure, (Cancelled, JobFailed)) else failure)
        return JobResult(value=value, record=record)


def _grace() -> float:
    return seconds(config.get("teardown.grace"), field="daskjob.teardown.grace")


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
