"""The "daskjob" Flyte Deck: one run's record rendered as HTML.

Sections: summary, phase timeline, events table, worker logs, Dask performance report.
Everything comes from the run record folder (local path or fsspec URL), so the same page
can be rebuilt later from any record: `render(record)`.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

import fsspec

from daskjob.frontend import resource_text
from daskjob.observe import LIFECYCLE_TOPIC, is_dask_internal

DECK_NAME = "daskjob"
MAX_EVENTS = 2000        # rows in the events table (the newest; all are in events.jsonl)
MAX_LOG_LINES = 400      # last lines shown per log file
MAX_CELL = 400           # characters of an event's data shown in a cell

_STYLE = """
<style>
.dj table {border-collapse: collapse; font-size: 12px; width: 100%}
.dj th, .dj td {border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top}
.dj td.data {font-family: monospace; word-break: break-all}
.dj .bar {position: relative; height: 16px; background: #f3f3f3; margin: 2px 0}
.dj .bar span {position: absolute; height: 16px; background: #fdb863}
.dj pre {background: #f7f7f7; padding: 6px; max-height: 400px; overflow: auto; font-size: 11px}
.dj .failed {color: #b00}
</style>
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _read(fs, path: str) -> str | None:
    try:
        with fs.open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def summary_html(record: dict[str, Any]) -> str:
    status = record.get("status", "?")
    rows = [("status", f'<b class="{"" if status == "succeeded" else "failed"}">{_e(status)}</b>'),
            ("run id", _e(record.get("run_id"))),
            ("duration", f"{_e(record.get('duration_s'))} s"),
            ("backend", _e(record.get("backend"))),
            ("workers", _e(record.get("workers"))),
            ("resources used", _e(resource_text(record))),
            ("record", f"<code>{_e(record.get('record_path'))}</code>"),
            ("dashboard (while it ran)", _e(record.get("dashboard_link"))),
            ("labels", "<br>".join(f"{_e(k)} = {_e(v)}" for k, v in (record.get("labels") or {}).items())),
            ("teardown", _e((record.get("teardown") or {}).get("cluster")))]
    error = record.get("error")
    if error:
        rows.append(("error", f"<pre>{_e(error.get('message', ''))}</pre>"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<h3>daskjob run</h3><table id="daskjob-summary">{body}</table>'


def timeline_html(record: dict[str, Any]) -> str:
    phases = record.get("phases") or {}
    if not phases:
        return "<h3>Phases</h3><p>no phase timings recorded</p>"
    total = max((p["start_s"] + p["seconds"] for p in phases.values()), default=0) or 1.0
    rows = []
    for name, p in phases.items():
        left, width = 100 * p["start_s"] / total, max(100 * p["seconds"] / total, 0.3)
        bar = (f'<div class="bar"><span style="left:{left:.2f}%;width:{width:.2f}%"></span></div>')
        rows.append(f"<tr><td>{_e(name)}</td><td>{p['start_s']:.3f}</td>"
                    f"<td>{p['seconds']:.3f}</td><td style='width:60%'>{bar}</td></tr>")
    return ('<h3>Phase timeline</h3><table id="daskjob-phases"><tr><th>phase</th>'
            "<th>start (s)</th><th>seconds</th><th></th></tr>" + "".join(rows) + "</table>")


def events_html(events_text: str | None) -> str:
    """Lifecycle and user events; distributed's own bookkeeping stays in events.jsonl."""
    if events_text is None:
        return "<h3>Events</h3><p>no events.jsonl in the record</p>"
    shown, internal, t0 = [], 0, None
    for line in events_text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        t0 = ev["time"] if t0 is None else t0
        if ev["topic"] != LIFECYCLE_TOPIC and is_dask_internal(ev["topic"]):
            internal += 1
            continue
        shown.append(ev)
    total = len(shown)
    shown = shown[-MAX_EVENTS:]
    rows = []
    for ev in shown:
        data = json.dumps(ev.get("data"), default=str)
        if len(data) > MAX_CELL:
            data = data[:MAX_CELL] + " …"
        rows.append(f"<tr><td>{ev['time'] - t0:+.3f}</td><td>{_e(ev['topic'])}</td>"
                    f"<td>{_e(ev.get('worker') or '')}</td><td class='data'>{_e(data)}</td></tr>")
    note = (f"{total} events" + (f" (the last {len(shown)} shown)" if len(shown) < total else "")
            + f"; {internal} of Dask's own events are in events.jsonl only")
    return (f'<h3>Events</h3><p>{note}</p><table id="daskjob-events"><tr><th>t (s)</th>'
            "<th>topic</th><th>worker</th><th>data</th></tr>" + "".join(rows) + "</table>")


def logs_html(fs, record_path: str) -> str:
    logs_dir = f"{record_path}/logs"
    try:
        names = sorted(os.path.basename(p) for p in fs.ls(logs_dir, detail=False))
    except (FileNotFoundError, OSError):
        names = []
    parts = []
    for name in names:
        text = _read(fs, f"{logs_dir}/{name}") or ""
        lines = text.splitlines()
        if not lines:
            continue
        tail = lines[-MAX_LOG_LINES:]
        more = f", last {len(tail)} shown" if len(tail) < len(lines) else ""
        parts.append(f"<details open><summary>{_e(name)} ({len(lines)} lines{more})</summary>"
                     f"<pre>{_e(chr(10).join(tail))}</pre></details>")
    return '<h3>Worker logs</h3><div id="daskjob-logs">' + ("".join(parts) or "<p>no log lines</p>") + "</div>"


def report_html(fs, record: dict[str, Any]) -> str:
    if not record.get("report"):
        reason = record.get("report_error") or "no performance report for this run"
        return f"<h3>Performance report</h3><p>{_e(reason)}</p>"
    text = _read(fs, f"{record['record_path']}/{record['report']}")
    if text is None:
        return "<h3>Performance report</h3><p>report.html is missing from the record</p>"
    # a whole Bokeh document: isolated in an iframe so its scripts and styles stay its own
    return ('<h3>Performance report</h3><iframe id="daskjob-report" style="width:100%;height:900px;'
            f'border:0" srcdoc="{_e(text)}"></iframe>')


def render(record: dict[str, Any]) -> str:
    """The deck's HTML for a finished run (its record.json content)."""
    path = record["record_path"]
    fs, root = fsspec.core.url_to_fs(path)
    return "".join(['<div class="dj">', _STYLE, summary_html(record), timeline_html(record),
                    events_html(_read(fs, f"{root}/events.jsonl")), logs_html(fs, root),
                    report_html(fs, {**record, "record_path": root}), "</div>"])


def save_copy(record: dict[str, Any], page: str) -> str | None:
    """Keep the deck next to the record (deck.html), where `daskjob show` users look."""
    target = f"{record['record_path']}/deck.html"
    title = _e(f"daskjob run {record.get('run_id')}")
    try:
        with fsspec.open(target, "w", encoding="utf-8") as f:
            f.write(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>'
                    f"</head><body>{page}</body></html>")
    except OSError:
        return None
    return target
