"""The api-server side of the "Dask run report" link.

    GET /daskjob/runs/{dag_id}/{run_id}/{task_id}?map_index=-1          the report page
    GET /daskjob/runs/{dag_id}/{run_id}/{task_id}/files/{name}?map_index=-1   a file of the run

The task instance's `daskjob_record` XCom says where its run record is: a path the
api-server can read, or any fsspec URL (s3://, gs://, ...), which is where records
belong when workers are ephemeral. A caller needs Airflow's permission to read that
DAG's task logs (the same login as the UI: its session cookie, or a bearer token); an
anonymous request gets 401 and learns nothing of the run.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag

from ..links import RECORD_XCOM_KEY

can_read_logs = Depends(requires_access_dag("GET", DagAccessEntity.TASK_LOGS))
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json",
               ".jsonl": "application/x-ndjson", ".log": "text/plain; charset=utf-8"}


def create_app() -> FastAPI:
    app = FastAPI(title="daskjob run reports", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/runs/{dag_id}/{run_id}/{task_id}", dependencies=[can_read_logs],
             response_class=HTMLResponse)
    async def run_report(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> HTMLResponse:
        location = await run_in_threadpool(record_location, dag_id, run_id, task_id, map_index)
        base = f"{quote(task_id, safe='')}/files/"
        suffix = f"?map_index={map_index}" if map_index >= 0 else ""

        def link(name: str) -> str:
            return base + quote(name) + suffix

        from daskjob.report import render_report
        page = await run_in_threadpool(readable, render_report, location, link=link)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/runs/{dag_id}/{run_id}/{task_id}/files/{name:path}", dependencies=[can_read_logs])
    async def run_file(dag_id: str, run_id: str, task_id: str, name: str,
                       map_index: int = -1) -> Response:
        location = await run_in_threadpool(record_location, dag_id, run_id, task_id, map_index)
        data = await run_in_threadpool(readable, read_run_file, location, name)
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        return Response(data, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                        headers={"Cache-Control": "no-store"})

    return app


def record_location(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The record path the task instance's last try left in XCom."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.task_id == task_id, XComModel.map_index == map_index,
            XComModel.key == RECORD_XCOM_KEY)).first()
        summary: Any = XComModel.deserialize_value(row) if row is not None else None
    path = summary.get("record_path") if isinstance(summary, dict) else None
    if not path:
        raise HTTPException(404, f"no daskjob run recorded for {dag_id}/{run_id}/{task_id}"
                                 + (f"[{map_index}]" if map_index >= 0 else ""))
    return path


def readable(read, location: str, *args, **kwargs):
    """`read(location, ...)`, with a record the api-server cannot read said plainly."""
    try:
        return read(location, *args, **kwargs)
    except FileNotFoundError as e:
        raise HTTPException(404, f"the run record is not there, seen from the api-server: {e}") from None
    except (ImportError, ValueError, OSError) as e:  # no fsspec driver, no credentials, ...
        raise HTTPException(502, f"the api-server cannot read the run record at {location}: "
                                 f"{type(e).__name__}: {e}") from None


def read_run_file(location: str, name: str) -> bytes:
    """A file of the run folder, by a name the folder really holds (never a path the
    caller made up: no `..`, no absolute paths)."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/")
    names = {path[len(root):].lstrip("/") for path in fs.find(root)}
    if name not in names:
        raise HTTPException(404, f"no file {name!r} in this run's record")
    return fs.cat_file(f"{root}/{name}")
