"""Mistakes a user makes, and a flaky task. Jobs that cannot run as written fail at once,
without the retries the DAG asks for; a run that fails is retried with a fresh cluster."""

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from airflow_provider.operators.dask import DaskOperator

RECORDS = os.environ.get("USER_RECORDS", "runs")
FLAKY_MARK = os.environ.get("USER_FLAKY_MARK", "flaky.mark")
ONE_WORKER = {"n_workers": 1}


def fails_on_a_worker(value):
    raise ValueError(f"bad value {value}")  # the traceback must point at this line


with DAG("mistakes", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, default_args={"retries": 2, "retry_delay": timedelta(minutes=5)}):

    DaskOperator(task_id="bad_timeout", payload="daskjob.payloads.etl:run",
                 op_kwargs={"source": "raw", "dest": "out", "date": "2026-11-20"},
                 job_timeout="soon", cluster=ONE_WORKER, record_dir=RECORDS)

    DaskOperator(task_id="bad_payload", payload="no_such_module_xyz:run",
                 cluster=ONE_WORKER, record_dir=RECORDS)

    DaskOperator(task_id="missing_script", payload="scripts/missing.py",
                 cluster=ONE_WORKER, record_dir=RECORDS)

    DaskOperator(task_id="bad_connection", payload="daskjob.payloads.etl:run",
                 op_kwargs={"source": "raw", "dest": "out", "date": "2026-11-20"},
                 dask_conn_id="dask_typo", record_dir=RECORDS)

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS, retries=0)
    def boom(client):
        return client.submit(fails_on_a_worker, 42).result()

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS, retries=1,
               retry_delay=timedelta(seconds=0))
    def flaky(ti=None):
        if not os.path.exists(FLAKY_MARK):
            open(FLAKY_MARK, "w").close()
            raise RuntimeError("the first try fails")
        return ti.try_number

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS, retries=0)
    def returns_lazy(client):
        import dask.array as da
        return da.ones(10).sum()

    boom()
    flaky()
    returns_lazy()
