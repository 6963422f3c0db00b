"""The run report: one self-contained HTML page of what a run did, written from its
record folder, so it can be made at any time after the cluster is gone.

    >>> from daskjob.report import write_report
    >>> write_report("runs/nightly-etl-20261204T010000Z-1a2b3c")      # doctest: +SKIP
    'runs/nightly-etl-20261204T010000Z-1a2b3c/run-report.html'

`daskjob report RUN` does the same from the command line, the Flyte Deck shows it, and
the Airflow provider's plugin serves it on the api-server.
"""

from __future__ import annotations

from .build import REPORT_NAME, render_report, write_report

__all__ = ["REPORT_NAME", "render_report", "write_report"]
