"""Nightly ETL: the day's drop -> validated, typed Parquet partitions, on a Dask cluster
that exists only while the task runs."""

from __future__ import annotations

from _common import (CONN_ID, DEFAULT_ARGS, DEMO_ROWS, NIGHTLY, RAW, RECORDS, START,
                     WAREHOUSE)
from airflow.sdk import DAG, task

from airflow_provider.operators.dask import DaskOperator

with DAG(dag_id="nightly_etl", schedule=NIGHTLY, start_date=START, catchup=False,
         max_active_runs=1, default_args=DEFAULT_ARGS, tags=["dask", "etl"],
         doc_md=__doc__) as dag:

    @task
    def demo_drop(ds=None) -> str:
        """Stands in for the upstream system that delivers the day's CSV drop."""
        from daskjob.datasets import write_drop
        return write_drop(RAW, ds, DEMO_ROWS, seed=0)[0]

    etl = DaskOperator(
        task_id="etl",
        payload="daskjob.payloads.etl:run",
        op_kwargs={"source": RAW, "dest": WAREHOUSE, "date": "{{ ds }}",
                   "max_reject_ratio": 0.05},
        dask_conn_id=CONN_ID,
        job_timeout="30m",
        record_dir=RECORDS,
    )
    demo_drop() >> etl
