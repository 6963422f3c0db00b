"""The local scheduler's dashboard, loaded on its first visit.

Dask's dashboard is a bokeh application; importing bokeh and building it is the largest
single cost of a short local run (more than starting its workers). Most scheduled runs
are never watched, so the scheduler starts its HTTP server on the dashboard's address
without it (the link, /health, /metrics and the info pages are there from the start),
and the first request for a page the server does not have loads the dashboard, then
sends the browser to the same page again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado import web

# LocalCluster's scheduler arguments: the HTTP server on, the bokeh dashboard not yet
SCHEDULER_KWARGS = {"dashboard": False}


def serve_on_first_visit(scheduler: Any, prefix: str = "/") -> None:
    """Add the loader to `scheduler`'s HTTP server (the scheduler's http_prefix: `prefix`).
    It answers only what no other route does."""
    app = scheduler.http_application
    app.add_application(web.Application(
        [(r"/.*", _LoadDashboard, {"scheduler": scheduler, "prefix": prefix})]))


class _LoadDashboard(web.RequestHandler):
    def initialize(self, scheduler: Any, prefix: str) -> None:
        self.scheduler = scheduler
        self.prefix = prefix

    async def get(self) -> None:
        await _loaded(self.scheduler, self.application, self.prefix)
        self.redirect(self.request.uri)  # now the dashboard's own route answers


async def _loaded(scheduler: Any, loader: web.Application, prefix: str) -> None:
    """Connect the dashboard once, however many requests arrive while it loads."""
    pending = getattr(scheduler, "_daskjob_dashboard", None)
    if pending is None:
        pending = scheduler._daskjob_dashboard = asyncio.ensure_future(
            _connect(scheduler, loader, prefix))
    await asyncio.shield(pending)


async def _connect(scheduler: Any, loader: web.Application, prefix: str) -> None:
    def load() -> Any:
        import distributed.dashboard.scheduler as dashboard  # bokeh: imported off the loop
        return dashboard

    dashboard = await asyncio.get_running_loop().run_in_executor(None, load)
    app = scheduler.http_application
    dashboard.connect(app, scheduler.http_server, scheduler, prefix=prefix)
    if loader in app.applications:
        app.applications.remove(loader)
