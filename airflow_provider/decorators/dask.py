"""@task.dask: the decorated function is the payload, run on an ephemeral Dask cluster.

>>> from airflow.sdk import DAG, task
>>> with DAG("total_example", schedule=None):
...     @task.dask(cluster={"n_workers": 2}, job_timeout="10m")
...     def total(n: int, scale: int = 1, *, client) -> int:   # client: the task's cluster
...         return scale * sum(client.gather(client.map(lambda x: x * x, range(n))))
...     result = total(10, scale=2)
>>> result.operator.payload_kwargs()
{'n': 10, 'scale': 2}

Arguments work as with `@task`: positional and keyword arguments, defaults, XCom
inputs, `.partial()` / `.expand()` / `.expand_kwargs()`, `multiple_outputs`, and context
values by name (`ds`, `ti`, `logical_date`, ...). A parameter named `client` gets the
run's Dask client and is not an argument of the task.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS

from ..operators.dask import DaskOperator

CLIENT_PARAMETER = "client"


def _task_arguments(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as Airflow should see it when it checks the task's arguments: without the
    `client` parameter, which daskjob fills in."""
    sig = inspect.signature(fn)
    if CLIENT_PARAMETER not in sig.parameters:
        return fn

    @functools.wraps(fn)
    def arguments(*args, **kwargs):  # never called: it only carries the signature
        raise RuntimeError(f"{fn.__qualname__} runs as a daskjob payload")

    arguments.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
        p for p in sig.parameters.values() if p.name != CLIENT_PARAMETER])
    return arguments


class _DaskDecoratedOperator(DecoratedOperator, DaskOperator):
    custom_operator_name = "@task.dask"
    template_fields: Sequence[str] = ("op_args", "op_kwargs", "record_dir")

    def __init__(self, *, python_callable: Callable[..., Any], **kwargs) -> None:
        # the function itself is the payload; daskjob ships what it submits to the workers
        super().__init__(python_callable=_task_arguments(python_callable),
                         kwargs_to_upstream={"payload": python_callable}, **kwargs)

    def execute(self, context) -> Any:
        self._context = context
        return super().execute(context)

    def payload_kwargs(self) -> dict[str, Any]:
        # positional op_args become keywords: a daskjob payload is called as fn(**params)
        sig = inspect.signature(self.python_callable)
        kwargs: dict[str, Any] = {}
        for name, value in sig.bind_partial(*self.op_args, **self.op_kwargs).arguments.items():
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{self.task_id}: a daskjob payload is called with keyword "
                                    f"arguments only, so *{name} cannot take {value!r}")
            else:
                kwargs[name] = value
        # context values the function asks for by name, as @task passes them: the
        # payload runs in this process, so any value can be handed over
        context = getattr(self, "_context", None) or {}
        for name in sig.parameters:
            if name not in kwargs and name in KNOWN_CONTEXT_KEYS and name in context:
                kwargs[name] = context[name]
        return kwargs


def dask_task(python_callable: Callable | None = None, multiple_outputs: bool | None = None,
              **kwargs) -> TaskDecorator:
    """`@task.dask(...)`: every DaskOperator argument (cluster, dask_conn_id, job_timeout, ...)."""
    return task_decorator_factory(python_callable=python_callable,
                                  multiple_outputs=multiple_outputs,
                                  decorated_operator_class=_DaskDecoratedOperator, **kwargs)
