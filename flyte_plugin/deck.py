"""The "daskjob" Flyte Deck: the run's report (daskjob.report), the same page
`daskjob report` writes and the Airflow plugin serves.

The report is a whole HTML document with its own style and script, so the deck holds it
in an iframe, where neither touches flytekit's page. The Dask performance report, when
the run took one, is embedded too: a deck is often viewed far from the run's files.
"""

from __future__ import annotations

import html
from typing import Any

import fsspec

from daskjob.report import REPORT_NAME, render_report

DECK_NAME = "daskjob"


def render(record: dict[str, Any]) -> str:
    """The deck's HTML for a finished run (its record.json content)."""
    page = render_report(record["record_path"], embed_performance_report=True)
    return (f'<iframe id="daskjob-run-report" title="daskjob run {html.escape(str(record.get("run_id")))}" '
            'style="width:100%;height:90vh;border:0" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


def save_copy(record: dict[str, Any]) -> str | None:
    """Keep the report next to the record (run-report.html), where `daskjob show` and
    `daskjob report` users look; also for a failed task, which flytekit gives no deck."""
    target = f"{record['record_path'].rstrip('/')}/{REPORT_NAME}"
    try:
        page = render_report(record["record_path"], link=lambda name: name)
        with fsspec.open(target, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError:
        return None
    return target
