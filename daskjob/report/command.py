"""`daskjob report`: write a run's report and, with --open, open it in a browser.

    daskjob report                       the newest run in the record dir
    daskjob report RUN_ID                a run under the record dir (--record-dir)
    daskjob report RUN_FOLDER | URL      a run folder, local or any fsspec URL (s3://...)
    daskjob report RUN -o report.html    somewhere else than RUN_FOLDER/run-report.html
"""

from __future__ import annotations

import argparse
import json
import os
import webbrowser

from ..record import is_local, list_records, local_path
from ..show import _default_record_dir, find_run, stdout_console
from .build import REPORT_NAME, write_report


def cmd_report(args: argparse.Namespace) -> int:
    out = stdout_console()
    record_dir = args.record_dir or _default_record_dir()
    try:
        location = _run_location(args.run or record_dir, record_dir)
        target = args.output or _default_output(location)
        written = write_report(location, target)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as e:
        out.print(f"[red]{e}[/]", highlight=False)
        return 1
    out.print(written, highlight=False, soft_wrap=True)
    if args.open and not webbrowser.open(_as_url(written)):
        out.print("no web browser found here: open the file above in one", highlight=False)
    return 0


def _run_location(target: str, record_dir: str) -> str:
    location = find_run(target, record_dir)
    if location is not None:
        return location
    runs = list_records(target)  # a record dir: its newest run
    if not runs:
        raise FileNotFoundError(f"no runs in {target}")
    return runs[0].get("record_path") or f"{target.rstrip('/')}/{runs[0]['run_id']}"


def _default_output(location: str) -> str:
    if is_local(location):
        return os.path.join(local_path(location), REPORT_NAME)
    # a remote record: the page is for the person asking, here
    return f"{location.rstrip('/').rsplit('/', 1)[-1]}-{REPORT_NAME}"


def _as_url(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write a run's report: one HTML page, no network needed",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run", nargs="?", help="a run id, a run folder or its URL, or a record dir "
                                          "(its newest run); default: the newest run")
    r.add_argument("--record-dir", help="where to look up a run id (default: daskjob's record dir)")
    r.add_argument("--output", "-o", help=f"where to write it (default: {REPORT_NAME} in a local "
                                          "run folder; for a remote one, the current folder)")
    r.add_argument("--open", action="store_true", help="open it in a web browser")
    r.set_defaults(fn=cmd_report)
