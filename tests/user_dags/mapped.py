"""Mapped Dask tasks under the real task runner: every instance its own cluster."""

import json
import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider.operators.dask import DaskOperator

RECORDS = os.environ.get("USER_RECORDS", "runs")
RESULTS = os.environ.get("USER_RESULTS", "results.json")
ONE_WORKER = {"n_workers": 1}


def cube_sum(n):
    from distributed import get_client
    client = get_client()
    return sum(client.gather(client.map(lambda x: x ** 3, range(n))))


with DAG("mapped", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, default_args={"retries": 0}):

    cubes = DaskOperator.partial(task_id="cubes", payload=cube_sum, cluster=ONE_WORKER,
                                 record_dir=RECORDS, startup_timeout="4m").expand(
        op_kwargs=[{"n": 2}, {"n": 3}, {"n": 4}])

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS, startup_timeout="4m")
    def plus_one(x, client):
        return client.submit(lambda v: v + 1, x).result()

    @task
    def collect(cubes, plus):
        with open(RESULTS, "w") as f:
            json.dump({"cubes": list(cubes), "plus": list(plus)}, f)

    collect(cubes.output, plus_one.expand(x=[10, 20, 30]))
