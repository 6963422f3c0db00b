"""Extra links on DaskOperator task instances: the Dask dashboard and the run record."""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

RECORD_XCOM_KEY = "daskjob_record"


def _record(ti_key) -> dict:
    value = XCom.get_value(ti_key=ti_key, key=RECORD_XCOM_KEY)
    return value if isinstance(value, dict) else {}


class DaskDashboardLink(BaseOperatorLink):
    name = "Dask dashboard"

    def get_link(self, operator, *, ti_key) -> str:
        return _record(ti_key).get("dashboard_link") or ""


class DaskRunRecordLink(BaseOperatorLink):
    name = "Dask run record"

    def get_link(self, operator, *, ti_key) -> str:
        path = _record(ti_key).get("record_path") or ""
        return path if "://" in path or not path else f"file://{path}"
