"""@task.dask: the decorated function is the payload, run on an ephemeral Dask cluster.

    @task.dask(cluster={"n_workers": 2}, job_timeout="10m")
    def total(n: int) -> int:
        from distributed import get_client
        client = get_client()                       # the task's own cluster
        return sum(client.gather(client.map(lambda x: x * x, range(n))))
"""

from __future__ import annotations

import datetime
import inspect
from typing import Any, Callable, Sequence

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS

from ..operators.dask import DaskOperator


class _DaskDecoratedOperator(DecoratedOperator, DaskOperator):
    custom_operator_name = "@task.dask"
    template_fields: Sequence[str] = ("op_args", "op_kwargs", "record_dir")

    def __init__(self, *, python_callable: Callable[..., Any], **kwargs) -> None:
        # the function is the payload; daskjob ships it to workers by value when its
        # module (a DAG file) cannot be imported there by name
        super().__init__(python_callable=python_callable,
                         kwargs_to_upstream={"payload": python_callable}, **kwargs)

    def execute(self, context) -> Any:
        self._context = context
        return super().execute(context)

    def payload_kwargs(self) -> dict[str, Any]:
        # positional op_args become keywords: a daskjob payload is called as fn(**params)
        sig = inspect.signature(self.python_callable)
        kwargs = dict(sig.bind_partial(*self.op_args, **self.op_kwargs).arguments)
        # context values the function asks for by name (ds, logical_date, run_id, ...),
        # as PythonOperator does; only plain values can travel with the job
        context = getattr(self, "_context", None) or {}
        for name in sig.parameters:
            if name in kwargs or name not in KNOWN_CONTEXT_KEYS or name not in context:
                continue
            value = context[name]
            if value is None or isinstance(value, (str, int, float, bool, datetime.datetime)):
                kwargs[name] = value
        return kwargs


def dask_task(python_callable: Callable | None = None, multiple_outputs: bool | None = None,
              **kwargs) -> TaskDecorator:
    """`@task.dask(...)`: every DaskOperator argument (cluster, dask_conn_id, job_timeout, ...)."""
    return task_decorator_factory(python_callable=python_callable,
                                  multiple_outputs=multiple_outputs,
                                  decorated_operator_class=_DaskDecoratedOperator, **kwargs)
