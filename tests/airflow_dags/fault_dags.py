"""DAGs for the provider's fault tests (loaded by tests/test_airflow.py, not examples)."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider.operators.dask import DaskOperator

RECORDS = os.environ.get("DASKJOB_RECORD_DIR", "runs")
ONE_WORKER = {"n_workers": 1, "threads_per_worker": 1}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, catchup=False,
               start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))


with _dag("dask_fails"):
    DaskOperator(task_id="job", payload="jobs:raises_on_worker", cluster=ONE_WORKER,
                 record_dir=RECORDS, retries=0)

with _dag("dask_times_out"):
    DaskOperator(task_id="job", payload="jobs:sleeps", op_kwargs={"seconds": 300},
                 cluster=ONE_WORKER, record_dir=RECORDS, retries=0,
                 execution_timeout=timedelta(seconds=12))

with _dag("dask_secret"):
    # the cluster (and a password) come from the connection, not from the operator
    DaskOperator(task_id="job", payload="jobs:add_up", op_kwargs={"n": 3},
                 dask_conn_id="dask_secret", record_dir=RECORDS, retries=0)

with _dag("dask_six_at_once"):
    # six ephemeral clusters side by side: free ports only, nothing shared
    for i in range(6):
        DaskOperator(task_id=f"job_{i}", payload="jobs:add_up", op_kwargs={"n": 10 + i},
                     cluster=ONE_WORKER, record_dir=RECORDS, retries=0, job_timeout="5m",
                     startup_timeout="4m")

with _dag("dask_killed"):
    # set to failed from outside while it runs (the kill test): the run must be cancelled
    DaskOperator(task_id="job", payload="jobs:sleeps", op_kwargs={"seconds": 300},
                 cluster=ONE_WORKER, record_dir=RECORDS, retries=0)

with _dag("dask_report"):
    # a run whose report has something to show: events, worker logs, a worker-side error
    DaskOperator(task_id="check", payload="jobs:checks_partitions_then_fails",
                 cluster={"n_workers": 2}, record_dir=RECORDS, retries=0)
