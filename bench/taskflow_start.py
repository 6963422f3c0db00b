"""Cluster start of a `@task.dask` payload (a function in the DAG file) against a string
payload ("module:function"), both under `airflow dags test`.

A function from a DAG file once made every worker rebuild the DAG module, importing
Airflow there; now it travels by value and workers import nothing of it. Each
`airflow dags test` runs both tasks, one after the other, with the same cluster (2
workers); the order flips every repeat so that warm caches favour neither. "Start" is
what a run spends before its payload can begin: provision + workers + environment check.

    .venv/bin/python bench/taskflow_start.py [--repeat 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

DAG = '''
import os
import pendulum
from airflow.sdk import DAG, task
from airflow_provider.operators.dask import DaskOperator

RECORDS = os.environ["BENCH_RECORDS"]
CLUSTER = {"n_workers": 2, "threads_per_worker": 1}


def shout(x):
    return x + 1


for dag_id, taskflow_first in (("start_taskflow_first", True), ("start_string_first", False)):
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        string = DaskOperator(task_id="string", payload="bench_noop:run", cluster=CLUSTER,
                              record_dir=RECORDS, performance_report=False)

        @task.dask(cluster=CLUSTER, record_dir=RECORDS, performance_report=False)
        def taskflow():
            from distributed import get_client
            return get_client().submit(shout, 1).result()

        first, second = (taskflow(), string) if taskflow_first else (string, taskflow())
        first >> second
'''

NOOP = '''
def shout(x):
    return x + 1


def run(client):
    return client.submit(shout, 1).result()
'''


def start_seconds(record: dict) -> float:
    phases = record["phases"]
    return sum(phases[p]["seconds"] for p in ("provision", "workers", "environment_check"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="daskjob-bench-")
    dags, records = os.path.join(root, "dags"), os.path.join(root, "runs")
    os.makedirs(dags)
    with open(os.path.join(dags, "start_bench.py"), "w") as f:
        f.write(DAG)
    with open(os.path.join(dags, "bench_noop.py"), "w") as f:
        f.write(NOOP)
    env = {**os.environ, "AIRFLOW_HOME": os.path.join(root, "home"),
           "AIRFLOW__CORE__DAGS_FOLDER": dags, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "BENCH_RECORDS": records}
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(airflow + ["db", "migrate"], env=env, check=True, capture_output=True)
    for i in range(args.repeat):
        dag_id = "start_taskflow_first" if i % 2 == 0 else "start_string_first"
        subprocess.run(airflow + ["dags", "test", dag_id], env=env, cwd=root, check=True,
                       capture_output=True)
    times: dict[str, list[float]] = {"taskflow": [], "string": []}
    for run in os.listdir(records):
        with open(os.path.join(records, run, "record.json")) as f:
            record = json.load(f)
        assert record["status"] == "succeeded", record.get("error")
        times[record["labels"]["airflow/task_id"]].append(start_seconds(record))
    taskflow, string = statistics.median(times["taskflow"]), statistics.median(times["string"])
    print(f"start (provision + workers + environment check), median of {args.repeat} each:")
    print(f"  string payload      {string:.2f} s   {sorted(round(t, 2) for t in times['string'])}")
    print(f"  @task.dask payload  {taskflow:.2f} s   {sorted(round(t, 2) for t in times['taskflow'])}")
    print(f"  ratio @task.dask / string: {taskflow / string:.2f}")


if __name__ == "__main__":
    main()
