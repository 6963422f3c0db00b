"""DaskOperator: run a payload on an ephemeral Dask cluster for the length of one task.

>>> from airflow.sdk import DAG
>>> with DAG("etl_example", schedule=None):
...     etl = DaskOperator(
...         task_id="etl",
...         payload="daskjob.payloads.etl:run",     # callable, "module:function" or script.py
...         op_kwargs={"source": "data/raw", "dest": "data/warehouse", "date": "{{ ds }}"},
...         cluster={"n_workers": 2, "memory_per_worker": "2GiB"},  # or dask_conn_id="..."
...         job_timeout="30m",
...     )
>>> etl.cluster_spec().n_workers
2

The operator owns the lifecycle for the task: the daskjob run is created and torn down
inside `execute`, `on_kill` cancels it (Airflow's task runner calls `on_kill` on SIGTERM
and then lets `execute` carry on, so cancelling is what makes `execute` end), and an
`execution_timeout` unwinds through the same teardown.

A job that cannot run as written (an invalid spec or connection, a payload that does
not import, a missing script) fails the task without retries (`InvalidDaskJob`, an
`AirflowFailException`) and leaves a `startup_failed` record; a run that fails is an
ordinary task failure (`DaskJobFailed`), retried as the task says.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (AirflowException, AirflowFailException,
                                    AirflowNotFoundException)

from daskjob import ClusterSpec, JobFailed, JobRun, JobSpec, SpecError
from daskjob import config as daskjob_config
from daskjob.frontend import (group_summary, job_name, log_user_event, run_logs_to,
                              summary_line)
from daskjob.observe import LIFECYCLE_TOPIC
from daskjob.lifecycle import write_rejected_record

from ..links import RECORD_XCOM_KEY, DaskDashboardLink, DaskRunReportLink

# Variables of the Airflow task process that must not reach Dask workers: the task
# runner sets AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///, and a
# worker that imports airflow (to unpickle a payload defined in a DAG file) dies on it.
WORKER_DROP_ENV = ["AIRFLOW__*", "AIRFLOW_CTX_*", "_AIRFLOW_*", "SUPERVISOR_COMMS*"]


class DaskJobFailed(AirflowException):
    """The Dask job failed; the message carries the worker traceback and last log lines."""

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record or {}


class InvalidDaskJob(AirflowFailException):
    """The job cannot run as written: failed without retries (a retry would fail the same)."""


class DaskOperator(BaseOperator):
    # `payload` is not a template field: Airflow calls a callable template field with the
    # context, and a callable payload is the function to run. A string payload with "{{"
    # is rendered in execute.
    template_fields: Sequence[str] = ("op_kwargs", "record_dir")
    template_fields_renderers = {"op_kwargs": "py"}
    ui_color = "#fdb863"
    operator_extra_links = (DaskDashboardLink(), DaskRunReportLink())

    def __init__(self, *, payload: str | Callable[..., Any] | None = None,
                 op_kwargs: dict[str, Any] | None = None,
                 cluster: ClusterSpec | dict[str, Any] | None = None,
                 dask_conn_id: str | None = None,
                 job_timeout: str | float | None = None,
                 startup_timeout: str | float | None = None,
                 record_dir: str | None = None,
                 job_labels: dict[str, str] | None = None,
                 version_check: str | None = None,
                 performance_report: bool | str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if cluster is not None and dask_conn_id is not None:
            raise ValueError("give either `cluster` or `dask_conn_id`, not both")
        self.payload = payload
        # under @task.dask, DecoratedOperator has already set op_kwargs from the call
        self.op_kwargs = dict(op_kwargs or {}) if op_kwargs is not None or not hasattr(
            self, "op_kwargs") else self.op_kwargs
        self.cluster = cluster.model_dump() if isinstance(cluster, ClusterSpec) else cluster
        if self.cluster is not None:
            ClusterSpec.parse(self.cluster)  # fail at DAG parse time, not at 2 a.m.
        self.dask_conn_id = dask_conn_id
        self.job_timeout = job_timeout
        self.startup_timeout = startup_timeout
        self.record_dir = record_dir
        self.job_labels = dict(job_labels or {})
        self.version_check = version_check
        self.performance_report = performance_report
        self._run: JobRun | None = None
        self._killed = False
        self._ti = None
        self.record_summary: dict[str, Any] | None = None  # of the last run, for the links

    # ----------------------------------------------------------------------- spec
    def cluster_spec(self) -> ClusterSpec:
        """`cluster`, else the `dask_conn_id` connection, else `dask_default` if it is
        defined, else the daskjob defaults (a local cluster)."""
        if self.cluster is not None:
            return ClusterSpec.parse(self.cluster)
        from ..hooks.dask import DaskHook
        conn_id = self.dask_conn_id or DaskHook.default_conn_name
        try:
            return DaskHook(conn_id).get_cluster_spec()
        except AirflowNotFoundException:
            if conn_id != DaskHook.default_conn_name:
                raise
            self.log.info("no %s connection: using the daskjob defaults", conn_id)
        return ClusterSpec()

    def job_fields(self, context) -> dict[str, Any]:
        """What JobSpec is built from (unvalidated: a rejected job keeps them in its record)."""
        ti = context["ti"]
        labels = {
            "airflow/dag_id": ti.dag_id, "airflow/task_id": ti.task_id,
            "airflow/run_id": ti.run_id, "airflow/try_number": ti.try_number,
            "airflow/map_index": ti.map_index, **self.job_labels,
        }
        fields: dict[str, Any] = {
            "name": job_name(f"{ti.dag_id}.{ti.task_id}", "airflow-task"), "payload": self._payload(context),
            "params": self.payload_kwargs(), "labels": labels,
        }
        for key, value in (("timeout", self.job_timeout), ("startup_timeout", self.startup_timeout),
                           ("record_dir", self.record_dir), ("version_check", self.version_check),
                           ("performance_report", self.performance_report)):
            if value is not None:
                fields[key] = value
        return fields

    def job_spec(self, context) -> JobSpec:
        fields = self.job_fields(context)
        try:
            fields["cluster"] = self.cluster_spec()
            return JobSpec.parse(fields)
        except SpecError as e:
            # where this task's runs would have gone, as run_job would write it
            where = write_rejected_record({"record_dir": daskjob_config.get("record-dir"),
                                           **fields}, e)
            raise InvalidDaskJob(f"invalid Dask job (not retried): {e}"
                                 + (f"\nRun record: {where}" if where else "")) from None

    def _payload(self, context) -> Any:
        """The payload as given; a string with "{{" rendered; a relative script path taken
        from the DAG file's folder when the script is there (Airflow runs tasks in
        another working folder)."""
        payload = self.payload
        if not isinstance(payload, str):
            return payload
        if "{{" in payload:
            payload = self.render_template(payload, context)
        if payload.endswith(".py") and not os.path.isabs(payload) and self.has_dag():
            candidate = os.path.join(os.path.dirname(self.dag.fileloc), payload)
            if os.path.isfile(candidate):
                return candidate
        return payload

    def payload_kwargs(self) -> dict[str, Any]:
        return dict(self.op_kwargs)

    # -------------------------------------------------------------------- execute
    def execute(self, context) -> Any:
        self._killed = False
        self._ti = context["ti"]
        spec = self.job_spec(context)
        run = JobRun(spec, on_event=self._log_event, drop_env=WORKER_DROP_ENV,
                     passthrough=(_task_timeout_class(),))
        self._run = run
        if self._killed:
            # SIGTERM came before the run existed (while the spec was built, e.g. during
            # the connection lookup): on_kill had nothing to cancel, so do it now
            run.cancel("Airflow task killed (on_kill)")
        with run_logs_to(self.log, run.run_id, instead=True):
            return self._execute_run(run, spec, context)

    def _execute_run(self, run: JobRun, spec: JobSpec, context) -> Any:
        self.log.info("daskjob run %s: backend %s, %d workers, record in %s",
                      run.run_id, spec.cluster.backend, spec.cluster.n_workers, spec.record_dir)
        try:
            result = run.run()
        except JobFailed as e:
            self._push_record(context, e.record)
            self.log.info("%s", summary_line(e.record))
            raise DaskJobFailed(str(e), record=e.record) from None
        except BaseException:
            self._push_record(context, getattr(run, "last_record", None) or {})
            raise
        finally:
            self._run = None
        self._push_record(context, result.record)
        self.log.info("%s", summary_line(result.record))
        return result.value

    def on_kill(self) -> None:
        # never creates a client: only flags the run, whose own thread tears it down
        self._killed = True
        run = self._run
        if run is not None:
            self.log.warning("task killed: cancelling daskjob run %s", run.run_id)
            run.cancel("Airflow task killed (on_kill)")

    # -------------------------------------------------------------------- output
    def _log_event(self, record: dict) -> None:
        if record["topic"] == LIFECYCLE_TOPIC and record["data"].get("event") == "provisioned":
            self._publish_dashboard_link(record["data"].get("dashboard"))
        log_user_event(self.log, record)

    def _publish_dashboard_link(self, link: str | None) -> None:
        """While the run lives, the UI's "Dask dashboard" link points at it (Airflow sets
        the extra links again, from get_link, when the task ends)."""
        if not link or self._ti is None:
            return
        try:
            self._ti.xcom_push(key=DaskDashboardLink().xcom_key, value=link)
        except Exception:
            self.log.warning("could not publish the dashboard link", exc_info=True)

    def _push_record(self, context, record: dict) -> None:
        if not record:
            return
        summary = {k: record.get(k) for k in (
            "run_id", "status", "record_path", "dashboard_link", "duration_s", "phases",
            "workers", "teardown", "resource_time")}
        summary["groups"] = group_summary(record)
        summary["events"] = (record.get("events") or {}).get("count")
        summary["error"] = (record.get("error") or {}).get("message")
        self.record_summary = summary
        context["ti"].xcom_push(key=RECORD_XCOM_KEY, value=summary)


def _task_timeout_class() -> type[BaseException]:
    from airflow.sdk.exceptions import AirflowTaskTimeout
    return AirflowTaskTimeout
