"""The provider's Airflow plugin: the run report of any DaskOperator / @task.dask task
instance, served by the api-server at /daskjob/..., behind Airflow's own login.

Registered in get_provider_info (`plugins`), so installing the provider is enough. Every
Airflow process loads plugins (task processes too), so this module imports nothing
heavy: the FastAPI app is built on its first request (see report_app.py).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/daskjob"


class _AppOnFirstRequest:
    """An ASGI app that builds the real one when the first request comes."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from .report_app import create_app
            self._app = create_app()
        await self._app(scope, receive, send)


class DaskjobPlugin(AirflowPlugin):
    name = "daskjob"
    fastapi_apps = [{"app": _AppOnFirstRequest(), "url_prefix": URL_PREFIX,
                     "name": "daskjob run reports"}]
