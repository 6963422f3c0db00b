"""Extra links on DaskOperator task instances: the Dask dashboard and the run report.

Airflow 3 computes extra links in the task process when the task ends and keeps them as
XComs. The links here come from the operator itself, not from another XCom, so a task
that failed before its run existed shows no link (and logs no "XCom not found"). The
dashboard exists only while the run does: its link is published when the cluster is up
and cleared when the task ends. The run report is served by the provider's plugin on
the api-server (plugins/report_app.py), from the run's record, for as long as the record
is kept.
"""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

RECORD_XCOM_KEY = "daskjob_record"
REPORT_ROUTE = "/daskjob/runs"


class DaskDashboardLink(BaseOperatorLink):
    name = "Dask dashboard"

    def get_link(self, operator, *, ti_key) -> str:
        run = getattr(operator, "_run", None)  # set only while the run lives
        return (getattr(run, "dashboard_link", None) or "") if run is not None else ""


class DaskRunReportLink(BaseOperatorLink):
    name = "Dask run report"

    def get_link(self, operator, *, ti_key) -> str:
        if not (getattr(operator, "record_summary", None) or {}).get("record_path"):
            return ""  # no run record: the task failed before its run began
        return report_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)


def report_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The report page of one task instance, under the api-server's base URL."""
    from airflow.configuration import conf
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    path = "/".join(quote(part, safe="") for part in (dag_id, run_id, task_id))
    query = f"?map_index={map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{base}{REPORT_ROUTE}/{path}{query}"
