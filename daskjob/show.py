"""`daskjob show`: the runs under a record dir, or one run.

    daskjob show [RECORD_DIR]                  runs, newest first (default: the record dir
                                               from the daskjob config, `runs`)
    daskjob show RECORD_DIR --status failed --name nightly --limit 5
    daskjob show RUN_ID | RUN_FOLDER           one run
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import socket
from typing import Any

from rich.console import Console
from rich.table import Table

from .observe import is_dask_internal
from .record import list_records, read_record

STATUS_COLOURS = {"succeeded": "green", "running": "yellow", "abandoned": "magenta"}
ABANDONED_NOTE = ("its driver was killed before it could write an end: see `daskjob reap` "
                  "for what it may have left")


def seen_status(record: dict[str, Any]) -> str:
    """The record's status, except that a `running` run whose driver process is gone
    (on this host) is `abandoned`."""
    status = record.get("status") or "?"
    if status == "running" and driver_gone(record.get("driver") or {}) is True:
        return "abandoned"
    return status


def driver_gone(driver: dict[str, Any]) -> bool | None:
    """None when it cannot be told from here (another host, an old record)."""
    import psutil
    if driver.get("host") != socket.gethostname() or not isinstance(driver.get("pid"), int):
        return None
    try:
        proc = psutil.Process(driver["pid"])
        started = driver.get("started")
        if started is not None and abs(proc.create_time() - float(started)) > 1:
            return True  # the pid now belongs to another process
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stdout_console() -> Console:
    console = Console()
    # piped or redirected: whole lines, never wrapped at 80 columns
    return console if console.is_terminal else Console(width=100_000, soft_wrap=True)


def cmd_show(args: argparse.Namespace) -> int:
    out = stdout_console()
    target = args.record or _default_record_dir()
    try:
        run = _one_run(target, args)
        if run is None:
            return _show_list(out, target, args)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as e:
        out.print(f"[red]{e}[/]", highlight=False)
        return 1
    if args.json:
        out.print_json(data={**run, "status": seen_status(run), "recorded_status": run["status"]})
        return 0
    out.print(run_table(run))
    return 0


def _default_record_dir() -> str:
    from . import config
    return str(config.get("record-dir"))


def _one_run(target: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The run `target` names (a run folder, or a run id under the record dir); None
    when `target` is a record dir."""
    location = find_run(target, args.record_dir or _default_record_dir())
    return None if location is None else read_record(location)


def find_run(target: str, record_dir: str) -> str | None:
    """Where the run `target` names is: `target` itself when it is a run folder (path or
    fsspec URL), the run of that id under `record_dir`; None when `target` is a record
    dir. FileNotFoundError when it is none of these."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(target)
    if fs.exists(f"{root.rstrip('/')}/record.json"):
        return target
    if fs.isdir(root):
        return None
    candidate = f"{record_dir.rstrip('/')}/{target}"
    fs, root = fsspec.core.url_to_fs(candidate)
    if "/" not in target and fs.exists(f"{root}/record.json"):
        return candidate
    raise FileNotFoundError(f"no run {target!r}: not a run folder, not a record dir, and no "
                            f"run of that id in {record_dir} (--record-dir sets where to look)")


def _show_list(out: Console, record_dir: str, args: argparse.Namespace) -> int:
    runs = [r for r in list_records(record_dir) if _matches(r, args)][:args.limit]
    if args.json:
        out.print_json(data=[{**r, "status": seen_status(r), "recorded_status": r.get("status")}
                             for r in runs])
        return 0
    if not runs:
        out.print(f"no runs in {record_dir}" + (" match" if args.status or args.name else ""))
        return 0
    t = Table("run id", "status", "started", "duration", "workers", "error",
              title=f"runs in {record_dir}, newest first")
    for r in runs:
        status = seen_status(r)
        workers = r.get("workers") or {}
        t.add_row(r.get("run_id"), f"[{STATUS_COLOURS.get(status, 'red')}]{status}[/]",
                  str(r.get("started_at") or "")[:19].replace("T", " "),
                  "" if r.get("duration_s") is None else f"{r['duration_s']}s",
                  str(workers.get("started", "")),
                  _first_line((r.get("error") or {}).get("message"), 100))
    out.print(t)
    return 0


def _matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.status and seen_status(record) not in args.status:
        return False
    if args.name:
        name = str(record.get("name") or "")
        return fnmatch.fnmatchcase(name, args.name) or args.name in name
    return True


def run_table(rec: dict[str, Any]) -> Table:
    status = seen_status(rec)
    t = Table(title=f"{rec['run_id']}", show_header=False)
    t.add_row("status", f"[{STATUS_COLOURS.get(status, 'red')}]{status}[/]")
    for key in ("name", "payload", "backend", "started_at", "duration_s", "record_path"):
        if rec.get(key) is not None:
            t.add_row(key, str(rec[key]))
    if status == "running" and rec.get("dashboard_link"):
        t.add_row("dashboard", str(rec["dashboard_link"]))  # only while the run lives
    labels = {k: v for k, v in (rec.get("labels") or {}).items() if not k.startswith("daskjob/")}
    if labels:
        t.add_row("labels", ", ".join(f"{k}={v}" for k, v in labels.items()))
    if rec.get("workers"):
        t.add_row("workers", ", ".join(f"{k}={v}" for k, v in rec["workers"].items()))
    for name, ph in (rec.get("phases") or {}).items():
        t.add_row(f"phase {name}", f"{ph['seconds']}s")
    _add_events(t, rec.get("events"))
    if rec.get("logs"):
        t.add_row("logs", f"{rec['logs']['lines']} lines in {', '.join(rec['logs']['files'])}")
    for death in rec.get("worker_deaths") or []:
        t.add_row("worker died", f"{death.get('worker')} ({death.get('reason')})")
    if rec.get("teardown"):
        t.add_row("teardown", json.dumps(rec["teardown"]))
    if rec.get("result"):
        t.add_row("result", json.dumps(rec["result"].get("value", rec["result"].get("repr")))[:500])
    if rec.get("error"):
        t.add_row("error", rec["error"]["message"][:2000])
    if status == "abandoned":
        t.add_row("note", ABANDONED_NOTE)
    elif status == "running":
        t.add_row("note", "no end recorded yet: the run is still going (on this host, or on "
                          f"{(rec.get('driver') or {}).get('host')})")
    return t


def _add_events(t: Table, events: dict[str, Any] | None) -> None:
    if not events:
        return
    topics = events.get("topics") or {}
    own = sorted(((k, v) for k, v in topics.items() if not is_dask_internal(k)),
                 key=lambda kv: -kv[1])
    dask = sum(v for k, v in topics.items() if is_dask_internal(k))
    parts = [f"{k}: {v}" for k, v in own[:8]] + ([f"daskjob and Dask's own: {dask}"] if dask else [])
    t.add_row("events", f"{events.get('count')} ({', '.join(parts)})")


def _first_line(text: str | None, width: int) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def add_parser(sub) -> None:
    s = sub.add_parser("show", help="list runs in a record dir, or show one run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("record", nargs="?",
                   help="a record dir (lists its runs), a run folder, or a run id")
    s.add_argument("--record-dir", help="where to look up a run id (default: daskjob's record dir)")
    s.add_argument("--status", action="append", metavar="STATUS",
                   help="only runs with this status (repeatable): succeeded, failed, timed_out, "
                        "cancelled, startup_failed, running, abandoned")
    s.add_argument("--name", help="only runs whose job name matches (glob or substring)")
    s.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    s.add_argument("--json", action="store_true", help="print the record(s) as JSON")
    s.set_defaults(fn=cmd_show)
