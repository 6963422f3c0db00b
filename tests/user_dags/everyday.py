"""What an Airflow user writes on day one, from the README and the docstrings: payloads
defined in this file, @task.dask called like @task, mapping, a script next to the DAG."""

import json
import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider.operators.dask import DaskOperator

RECORDS = os.environ.get("USER_RECORDS", "runs")
RESULTS = os.environ.get("USER_RESULTS", "results.json")
ONE_WORKER = {"n_workers": 1}


def square_sum(n):
    from distributed import get_client
    client = get_client()
    return sum(client.gather(client.map(lambda x: x * x, range(n))))


def double(x):
    import logging
    logging.getLogger("everyday.worker").info("doubling %d", x)
    return 2 * x


with DAG("everyday", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, default_args={"retries": 0}):

    sq = DaskOperator(task_id="sq", payload=square_sum, op_kwargs={"n": 10},
                      cluster=ONE_WORKER, record_dir=RECORDS)

    @task.dask(record_dir=RECORDS)          # no cluster: the dask_default connection
    def times_two(n: int = 1):
        return n * 2

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS)
    def add(a, b=10, *, c=100):
        return a + b + c

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS)
    def with_client(client, n=3):
        import sys
        modules = client.run(lambda: sorted(
            m for m in sys.modules if m.startswith(("airflow", "unusual_prefix"))))
        return {"total": sum(client.gather(client.map(double, range(n)))),
                "worker_modules": list(modules.values())}

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS, multiple_outputs=True)
    def info(n: int, ds=None, ti=None) -> dict:
        return {"n": n, "ds": ds, "task_id": ti.task_id, "try_number": ti.try_number}

    @task.dask(cluster=ONE_WORKER, record_dir=RECORDS)
    def tenfold(x):
        return x * 10

    script = DaskOperator(task_id="script", payload="scripts/count.py", op_kwargs={"n": 4},
                          cluster=ONE_WORKER, record_dir=RECORDS)

    @task
    def collect(sq, times_two, add, with_client, n, ds, task_id, mapped, mapped_kwargs, script):
        with open(RESULTS, "w") as f:
            json.dump({"sq": sq, "times_two": times_two, "add": add, "with_client": with_client,
                       "n": n, "ds": ds, "task_id": task_id, "mapped": list(mapped),
                       "mapped_kwargs": list(mapped_kwargs), "script": script}, f)

    two = times_two(n=5)
    parts = info(7)
    collect(sq=sq.output, times_two=two, add=add(two, 2, c=3), with_client=with_client(),
            n=parts["n"], ds=parts["ds"], task_id=parts["task_id"],
            mapped=tenfold.expand(x=[1, 2, 3]),
            mapped_kwargs=tenfold.partial().expand_kwargs([{"x": 4}]),
            script=script.output)
