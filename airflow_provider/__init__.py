"""Apache Airflow provider for daskjob: DaskOperator, @task.dask, the `dask` connection.

Registered through the `apache_airflow_provider` entry point, which points at
`get_provider_info` below. Everything here is thin: the lifecycle lives in `daskjob`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("daskjob")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def get_provider_info() -> dict:
    # `package-name` must equal the distribution name: Airflow matches the two, and a
    # bad dict here breaks every `airflow` command (tests/airflow/test_provider.py)
    return {
        "package-name": "daskjob",
        "name": "Dask (daskjob)",
        "description": "Run Dask work on an ephemeral cluster per task, torn down always, "
                       "with worker logs and events kept.",
        "versions": [_version()],
        "hooks": [{"integration-name": "Dask",
                   "python-modules": ["airflow_provider.hooks.dask"]}],
        "operators": [{"integration-name": "Dask",
                       "python-modules": ["airflow_provider.operators.dask"]}],
        "connection-types": [{"connection-type": "dask",
                              "hook-class-name": "airflow_provider.hooks.dask.DaskHook",
                              "hook-name": "Dask"}],
        "task-decorators": [{"name": "dask",
                             "class-name": "airflow_provider.decorators.dask.dask_task"}],
        "extra-links": ["airflow_provider.links.DaskDashboardLink",
                        "airflow_provider.links.DaskRunReportLink"],
        # the api-server serves each task's run report (airflow_provider/plugins)
        "plugins": [{"name": "daskjob",
                     "plugin-class": "airflow_provider.plugins.daskjob.DaskjobPlugin"}],
    }
