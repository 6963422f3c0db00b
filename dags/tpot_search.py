"""Nightly AutoML: the ETL for the day, then a short TPOT search on the warehouse table,
the best score to XCom."""

from __future__ import annotations

from _common import (CONN_ID, DEFAULT_ARGS, DEMO_ROWS, MODELS, NIGHTLY, RAW, RECORDS, START,
                     TPOT_BUDGET, WAREHOUSE)
from airflow.sdk import DAG, task

from airflow_provider.operators.dask import DaskOperator

with DAG(dag_id="tpot_search", schedule=NIGHTLY, start_date=START, catchup=False,
         max_active_runs=1, default_args=DEFAULT_ARGS, tags=["dask", "automl"],
         doc_md=__doc__) as dag:

    @task
    def demo_drop(ds=None) -> str:
        from daskjob.datasets import write_drop
        return write_drop(RAW, ds, DEMO_ROWS, seed=0)[0]

    etl = DaskOperator(
        task_id="etl", payload="daskjob.payloads.etl:run",
        op_kwargs={"source": RAW, "dest": WAREHOUSE, "date": "{{ ds }}"},
        dask_conn_id=CONN_ID, job_timeout="30m", record_dir=RECORDS)

    search = DaskOperator(
        task_id="search", payload="daskjob.payloads.tpot_search:run",
        op_kwargs={"data": WAREHOUSE + "/clients", "target": "y",
                   "drop_columns": ["subscribed"], "scoring": "balanced_accuracy",
                   "output": MODELS + "/{{ ds }}", "cv": 3, "random_state": 0, **TPOT_BUDGET},
        dask_conn_id=CONN_ID, job_timeout="15m", startup_timeout="5m", record_dir=RECORDS)

    @task
    def best_score(summary: dict) -> float:
        return summary["holdout_score"]

    demo_drop() >> etl >> search
    best_score(search.output)
