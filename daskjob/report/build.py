"""Make the report of one run folder: render it, or write it to a file."""

from __future__ import annotations

import os
from typing import Callable

import fsspec

from ..record import is_local, local_path
from .load import load_run
from .page import render_page

# the report's file name in a run folder (report.html is Dask's performance report)
REPORT_NAME = "run-report.html"


def render_report(location: str, *, link: Callable[[str], str | None] | None = None,
                  embed_performance_report: bool = False) -> str:
    """The report of the run folder at `location` (a path or an fsspec URL), as HTML.
    `link(name)` gives the address the page uses for a file of the run folder; by
    default the file's own path or URL. The Dask performance report is linked, or with
    `embed_performance_report` carried inside the page (it is a few MB)."""
    from ..show import seen_status
    run = load_run(location, with_performance_report=embed_performance_report)
    return render_page(run, status=seen_status(run.record), link=link or _folder_link(location))


def write_report(location: str, output: str | None = None) -> str:
    """Write the report of a run folder; by default into the folder itself, as
    run-report.html. Returns where it went."""
    target = output or f"{location.rstrip('/')}/{REPORT_NAME}"
    inside = os.path.dirname(os.path.abspath(local_path(target))) == os.path.abspath(
        local_path(location).rstrip("/")) if is_local(target) and is_local(location) else False
    # a page inside the run folder links the run's files by their names, so the folder
    # can be moved or copied whole
    page = render_report(location, link=(lambda name: name) if inside else None)
    with fsspec.open(target, "w", encoding="utf-8") as f:
        f.write(page)
    return target


def _folder_link(location: str) -> Callable[[str], str | None]:
    base = location.rstrip("/")
    if is_local(location):
        root = os.path.abspath(local_path(base))
        return lambda name: "file://" + os.path.join(root, name)
    return lambda name: f"{base}/{name}"
