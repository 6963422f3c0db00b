"""Extra links on DaskOperator task instances: the Dask dashboard and the run record.

Airflow 3 computes extra links in the task process when the task ends and keeps them as
XComs. The links here come from the operator itself, not from another XCom, so a task
that failed before its run existed shows no link (and logs no "XCom not found"). The
dashboard exists only while the run does: its link is published when the cluster is up
and cleared when the task ends.
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink

RECORD_XCOM_KEY = "daskjob_record"


class DaskDashboardLink(BaseOperatorLink):
    name = "Dask dashboard"

    def get_link(self, operator, *, ti_key) -> str:
        run = getattr(operator, "_run", None)  # set only while the run lives
        return (getattr(run, "dashboard_link", None) or "") if run is not None else ""


class DaskRunRecordLink(BaseOperatorLink):
    name = "Dask run record"

    def get_link(self, operator, *, ti_key) -> str:
        path = (getattr(operator, "record_summary", None) or {}).get("record_path") or ""
        return path if "://" in path or not path else f"file://{path}"
