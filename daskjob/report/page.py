"""The run report as one HTML document: the record's facts and the charts are written
here as HTML and SVG; the events and log tables are filled by the page's own script
from the JSON it carries. Nothing is fetched from the network."""

from __future__ import annotations

import datetime as dt
import html
import json
from importlib.resources import files
from typing import Any, Callable

from ..frontend import resource_text
from .charts import phase_chart, step_chart
from .load import RunData

NOT_RECORDED = "not recorded"
PHASE_ORDER = ("provision", "workers", "environment_check", "payload", "snapshot", "teardown")
ERROR_LOG_LINES = 20
STATUS_CLASS = {"succeeded": "ok", "running": "live"}

# name of a file in the run folder -> the address the page links it with (None: no link)
ArtifactLink = Callable[[str], "str | None"]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _asset(name: str) -> str:
    return files("daskjob.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(run: RunData, *, status: str | None = None,
                link: ArtifactLink = lambda name: None) -> str:
    """The whole report. `status` overrides the recorded one (a `running` record whose
    driver is gone reads `abandoned`); `link` tells how the page reaches the run's files."""
    rec = run.record
    status = status or rec.get("status") or "?"
    title = f"{rec.get('name') or 'daskjob run'} · {status}"
    sections = [header(run, status), error_section(run), phases_section(rec),
                workers_section(run), tasks_section(run), events_section(run),
                logs_section(run), artifacts_section(run, link)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_asset('report.css')}</style></head>"
            f'<body><main class="dj-report">{"".join(sections)}</main>'
            f'<script type="application/json" id="dj-data">{_json_for_script(page_data(run))}</script>'
            f"<script>{_asset('report.js')}</script></body></html>\n")


def _json_for_script(data: Any) -> str:
    # inside <script>, "</" would end the element: JSON allows "<\/" for it
    return json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")


def page_data(run: RunData) -> dict[str, Any]:
    ev = run.events
    logs = run.logs or []
    return {
        "events": {"user": ev.user, "own": ev.own},
        "logs": [{"name": f.name, "total": f.total, "crashed": f.crashed_worker,
                  "lines": f.lines} for f in logs],
    }


def _not_recorded(section_id: str, title: str) -> str:
    """A section for what an older record (or a run that ended early) does not have."""
    return f'<section id="{section_id}"><h2>{title}</h2><p class="none">{NOT_RECORDED}</p></section>'


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def header(run: RunData, status: str) -> str:
    rec = run.record
    labels = {k: v for k, v in (rec.get("labels") or {}).items() if not k.startswith("daskjob/")}
    workers = rec.get("workers")
    pairs = [
        ("run id", f"<code>{_e(rec.get('run_id'))}</code>"),
        ("payload", f"<code>{_e(rec.get('payload') or NOT_RECORDED)}</code>"),
        ("backend", _e(rec.get("backend") or NOT_RECORDED)),
        ("started", _e(_when(rec.get("started_at")))),
        ("ended", _e(_when(rec.get("ended_at")) if rec.get("ended_at") else "not yet")),
        ("duration", _e(NOT_RECORDED if rec.get("duration_s") is None else f"{rec['duration_s']} s")),
        ("workers", _e(", ".join(f"{k} {v}" for k, v in workers.items()) if workers
                       else NOT_RECORDED)),
        ("resources used", _e(resource_text(rec))),
        ("teardown", _e(_teardown_text(rec.get("teardown")))),
        ("record", f"<code>{_e(rec.get('record_path') or run.location)}</code>"),
    ]
    if status == "running" and rec.get("dashboard_link"):
        # the dashboard exists only while the run does
        url = _e(rec["dashboard_link"])
        pairs.append(("Dask dashboard", f'<a href="{url}">{url}</a>'))
    label_html = "".join(f'<span class="label"><b>{_e(k)}</b> {_e(v)}</span>'
                         for k, v in labels.items())
    return (f'<header id="dj-header"><h1>{_e(rec.get("name") or "daskjob run")} '
            f'<span id="dj-status" class="status {STATUS_CLASS.get(status, "bad")}">{_e(status)}</span></h1>'
            f'<div class="labels" id="dj-labels">{label_html or "no labels"}</div>'
            f'<table class="facts">{_rows(pairs)}</table></header>')


def _when(iso: Any) -> str:
    try:
        return dt.datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return NOT_RECORDED


def _teardown_text(teardown: dict | None) -> str:
    if not teardown:
        return NOT_RECORDED
    parts = [str(teardown.get("cluster"))]
    if teardown.get("killed_processes"):
        parts.append(f"killed {len(teardown['killed_processes'])} leftover processes")
    parts.extend(f"{k}: {v}" for k, v in teardown.items() if k not in ("cluster", "killed_processes"))
    return "; ".join(parts)


def error_section(run: RunData) -> str:
    error = run.record.get("error")
    if not error:
        return ""
    tb = error.get("traceback") or ""
    trace = f'<h3>Traceback</h3><pre class="traceback">{_e(tb)}</pre>' if tb.strip() else ""
    loud = [(f.name, text) for f in run.logs or () for _, level, text in f.lines
            if level in ("ERROR", "CRITICAL") or (f.crashed_worker and text.strip())]
    last = "\n".join(f"[{name}] {text}" for name, text in loud[-ERROR_LOG_LINES:])
    logs = f"<h3>Last error lines of the logs</h3><pre>{_e(last)}</pre>" if last else ""
    return (f'<section id="dj-error" class="error"><h2>Error: {_e(error.get("type") or "")}</h2>'
            f'<pre class="message">{_e(error.get("message") or "")}</pre>{trace}{logs}</section>')


def phases_section(rec: dict[str, Any]) -> str:
    phases = rec.get("phases") or {}
    if not phases:
        body = f"<p class=\"none\">{NOT_RECORDED}</p>"
    else:
        ordered = {k: phases[k] for k in PHASE_ORDER if k in phases}
        ordered.update({k: v for k, v in phases.items() if k not in ordered})
        table = "".join(f"<tr><td>{_e(k.replace('_', ' '))}</td><td>{v['start_s']:.3f}</td>"
                        f"<td>{v['seconds']:.3f}</td></tr>" for k, v in ordered.items())
        body = (phase_chart(ordered) + '<table class="small"><tr><th>phase</th><th>start (s)</th>'
                f"<th>seconds</th></tr>{table}</table>")
    return f'<section id="dj-phases"><h2>Phases</h2>{body}</section>'


def workers_section(run: RunData) -> str:
    groups = run.record.get("groups") or {}
    series = {name: [(float(t), float(n)) for t, n in g.get("timeline") or []]
              for name, g in groups.items()}
    marks = [m for m in run.events.markers if m[1] != "worker joined"]
    if not any(series.values()):
        return _not_recorded("dj-workers", "Workers over time")
    end = float(run.record.get("duration_s") or 0)
    chart = step_chart(series, end=end, y_label="workers", markers=marks, label="workers over time")
    notes = [f"{_e(what)}: <b>{_e(worker)}</b> at {t:.2f} s" for t, what, worker in marks
             if what in ("worker died", "worker paused", "worker resumed")]
    deaths = run.record.get("worker_deaths") or []
    facts = "".join(f"<li>{n}</li>" for n in notes[:50])
    more = f"<p>{len(deaths)} worker(s) died during the run.</p>" if deaths else ""
    return (f'<section id="dj-workers"><h2>Workers over time</h2>{chart}{more}'
            f'{"<ul class=marks>" + facts + "</ul>" if facts else ""}</section>')


def tasks_section(run: RunData) -> str:
    points = run.events.progress
    if not points:
        return _not_recorded("dj-tasks", "Dask tasks")
    if points[0][0] > 0:
        points = [(0.0, 0, 0, 0)] + points  # nothing was submitted before the run
    series = {"added": [(t, a) for t, a, _, _ in points], "done": [(t, d) for t, _, d, _ in points],
              "erred": [(t, e) for t, _, _, e in points]}
    end = float(run.record.get("duration_s") or points[-1][0])
    last = points[-1]
    return (f'<section id="dj-tasks"><h2>Dask tasks</h2>'
            f"<p>{last[1]} added, {last[2]} done, {last[3]} erred</p>"
            f"{step_chart(series, end=end, y_label='tasks', label='task progress')}</section>")


def events_section(run: RunData) -> str:
    ev = run.events
    if not ev.found:
        return _not_recorded("dj-events", "Events")
    user_note = _kept_note(len(ev.user), ev.user_total, "events.jsonl")
    own_note = _kept_note(len(ev.own), ev.own_total, "events.jsonl")
    return (f'<section id="dj-events"><h2>Events</h2><p>{ev.total} events in all.</p>'
            f"<h3>Your events (<code>daskjob.event</code>) — {ev.user_total}</h3>"
            f'<p class="note">{user_note}</p>'
            '<div class="table-tool" data-events="user"></div>'
            f"<h3>daskjob's and Dask's own — {ev.own_total}</h3><p class=\"note\">{own_note}</p>"
            '<div class="table-tool" data-events="own"></div>'
            "<noscript><p>The event tables need JavaScript; every event is in events.jsonl.</p>"
            "</noscript></section>")


def _kept_note(kept: int, total: int, where: str) -> str:
    if kept >= total:
        return "All are shown."
    return (f"This page keeps {kept} of {total} (the first and the last ones; the run's own "
            f"lifecycle events whole); every one is in {where}.")


def logs_section(run: RunData) -> str:
    if run.logs is None:
        return _not_recorded("dj-logs", "Logs")
    kept = sum(len(f.lines) for f in run.logs)
    total = sum(f.total for f in run.logs)
    note = ("All lines are shown." if kept >= total else
            f"This page keeps {kept} of {total} lines: each file's first and last lines and its "
            "warnings and errors; every line is in the run's logs/ folder.")
    crashed = [f.name for f in run.logs if f.crashed_worker and f.total]
    crash_note = (f'<p class="crashed">Output of workers that died: {_e(", ".join(crashed))}</p>'
                  if crashed else "")
    return (f'<section id="dj-logs"><h2>Logs</h2><p class="note">{note}</p>{crash_note}'
            '<div class="log-tool"></div>'
            "<noscript><p>The log viewer needs JavaScript; the logs are in the run's logs/ folder.</p>"
            "</noscript></section>")


def artifacts_section(run: RunData, link: ArtifactLink) -> str:
    rec = run.record
    if run.performance_report is not None:
        # a whole Bokeh document: its scripts and styles stay in their own frame
        perf = ('<h3>Dask performance report</h3><iframe id="dj-perf" title="Dask performance report" '
                f'style="width:100%;height:900px;border:0" srcdoc="{_e(run.performance_report)}"></iframe>')
    elif rec.get("report"):
        href = link(rec["report"])
        perf = (f'<p>Dask performance report: <a id="dj-perf" href="{_e(href)}">{_e(rec["report"])}</a></p>'
                if href else f"<p>Dask performance report: {_e(rec['report'])} in the run folder</p>")
    else:
        perf = f"<p>Dask performance report: {_e(rec.get('report_error') or 'not taken for this run')}</p>"
    rows = []
    for name, size in run.artifacts:
        href = link(name)
        shown = f'<a href="{_e(href)}">{_e(name)}</a>' if href else _e(name)
        rows.append(f"<tr><td>{shown}</td><td>{_size(size)}</td></tr>")
    table = ('<table class="small"><tr><th>file</th><th>size</th></tr>' + "".join(rows) + "</table>"
             if rows else f'<p class="none">{NOT_RECORDED}</p>')
    result = rec.get("result")
    result_html = (f"<p>Result: <code>{_e(json.dumps(result.get('value', result.get('repr')), default=str)[:2000])}</code></p>"
                   if result else "")
    return f'<section id="dj-artifacts"><h2>Files of the run</h2>{perf}{result_html}{table}</section>'


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
