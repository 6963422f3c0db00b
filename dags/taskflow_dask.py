"""The same kind of work written with @task.dask: the decorated function is the payload,
defined right here in the DAG file, and runs with the task's own cluster as its client."""

from __future__ import annotations

from _common import CONN_ID, DEFAULT_ARGS, NIGHTLY, RECORDS, START
from airflow.sdk import DAG, task


def _score(n: int) -> int:
    import logging
    logging.getLogger("taskflow.worker").info("scoring %d", n)
    return n * n


with DAG(dag_id="taskflow_dask", schedule=NIGHTLY, start_date=START, catchup=False,
         max_active_runs=1, default_args=DEFAULT_ARGS, tags=["dask", "taskflow"],
         doc_md=__doc__) as dag:

    @task.dask(dask_conn_id=CONN_ID, job_timeout="10m", record_dir=RECORDS)
    def sum_of_squares(n: int, ds=None) -> dict:
        from distributed import get_client

        import daskjob
        client = get_client()
        total = sum(client.gather(client.map(_score, range(n))))
        daskjob.event("taskflow.total", total=total, date=ds)
        return {"date": ds, "n": n, "total": total}

    @task
    def report(result: dict) -> int:
        return result["total"]

    report(sum_of_squares(100))
