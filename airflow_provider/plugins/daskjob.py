"""The provider's Airflow plugin: the run report of any DaskOperator / @task.dask task
instance, served by the api-server at /daskjob/..., behind Airflow's own login.

Installing the provider is enough. Airflow loads providers' plugins (get_provider_info,
`plugins`) only when `[core] lazy_discover_providers` is off, and entry-point plugins
(`airflow.plugins`) always: the entry point offers the plugin only while the provider's
own registration is not read, so it is loaded once either way.

Every Airflow process loads plugins (task processes too), so this module imports
nothing heavy: the FastAPI app is built on its first request (see report_app.py).
"""

from __future__ import annotations

from typing import Any

from airflow.configuration import conf
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


# what the `airflow.plugins` entry point loads (None: Airflow skips it)
ENTRY_POINT_PLUGIN = (DaskjobPlugin if conf.getboolean("core", "lazy_discover_providers", fallback=True)
                      else None)
