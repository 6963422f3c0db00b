"""What the run report shows, read from a run folder (a local path or any fsspec URL).

A big run keeps every event and log line in its folder; the page keeps a bounded share
of them, so that it stays small enough to open: all lifecycle events, the first and the
last of the user's events, the last of Dask's own, and per log file its first and last
lines plus its warnings and errors. What was left out is counted, and the page says so.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec

from ..observe.events import LIFECYCLE_TOPIC, PROGRESS_TOPIC, is_dask_internal

# how much of a big run the page keeps
USER_EVENTS_HEAD = 1_000
USER_EVENTS_TAIL = 4_000
DASK_EVENTS_TAIL = 1_000
LIFECYCLE_EVENTS_MAX = 5_000
PROGRESS_POINTS_MAX = 600
LOG_LINES_TOTAL = 20_000
LOG_HEAD = 500
LOG_WARNINGS_MAX = 2_000
MAX_CELL = 500            # characters of an event's data kept
MAX_LOG_LINE = 2_000      # characters of a log line kept

_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
MARKED_EVENTS = {"worker died", "worker paused", "worker resumed", "worker joined", "worker left"}


@dataclass
class Events:
    """The events the page carries, and what it left out."""
    total: int = 0
    user: list[dict] = field(default_factory=list)        # the user's topics
    own: list[dict] = field(default_factory=list)         # daskjob's and Dask's
    user_total: int = 0
    own_total: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    progress: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, added, done, erred
    markers: list[tuple[float, str, str]] = field(default_factory=list)        # t, what, worker
    found: bool = True


@dataclass
class LogFile:
    name: str
    lines: list[tuple[int, str, str]]   # (line number, level, text)
    total: int
    crashed_worker: bool = False        # the stdio log of a worker that died

    @property
    def is_stdio(self) -> bool:
        return self.name.endswith(".stdio.log")


@dataclass
class RunData:
    location: str
    record: dict[str, Any]
    t0: float                            # the run's start, seconds since the epoch
    events: Events
    logs: list[LogFile] | None           # None: no logs/ folder
    artifacts: list[tuple[str, int]]     # (name, bytes) of the run folder's files
    performance_report: str | None = None  # its HTML, when asked to carry it


def load_run(location: str, *, with_performance_report: bool = False) -> RunData:
    """Read a run folder. Raises FileNotFoundError when it holds no record.json."""
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/")
    try:
        record = json.loads(fs.cat_file(f"{root}/record.json"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no record.json in {location}") from None
    t0 = _start_time(record)
    events = read_events(fs, f"{root}/events.jsonl", t0)
    dead = {str(m[2]) for m in events.markers if m[1] == "worker died"}
    perf = None
    if with_performance_report and record.get("report"):
        try:
            perf = fs.cat_file(f"{root}/{record['report']}").decode("utf-8", errors="replace")
        except FileNotFoundError:
            pass
    return RunData(location=location, record=record, t0=t0, events=events,
                   logs=read_logs(fs, f"{root}/logs", dead), artifacts=_artifacts(fs, root),
                   performance_report=perf)


def _start_time(record: dict[str, Any]) -> float:
    try:
        return dt.datetime.fromisoformat(record["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


def read_events(fs, path: str, t0: float) -> Events:
    out = Events()
    try:
        f = fs.open(path, "r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Events(found=False)
    user_tail: list[dict] = []
    own_tail: list[dict] = []
    with f:
        for line in f:
            try:
                ev = json.loads(line)
                topic = str(ev["topic"])
            except (ValueError, KeyError, TypeError):
                continue
            t0 = t0 or float(ev.get("time") or 0)
            out.total += 1
            out.topics[topic] = out.topics.get(topic, 0) + 1
            _take(out, ev, topic, t0, user_tail, own_tail)
    out.user.extend(user_tail[-USER_EVENTS_TAIL:])
    out.own = sorted(out.own + own_tail[-DASK_EVENTS_TAIL:], key=lambda row: row["t"])
    for row in out.user + out.own:
        row["data"] = _cell(row["data"])
    out.progress = _thin(out.progress, PROGRESS_POINTS_MAX)
    return out


def _take(out: Events, ev: dict, topic: str, t0: float, user_tail: list, own_tail: list) -> None:
    """Keep one event, or count it as left out."""
    t = round(float(ev.get("time") or t0) - t0, 3)
    data = ev.get("data")
    if topic == PROGRESS_TOPIC and isinstance(data, dict):
        out.progress.append((t, int(data.get("added", 0)), int(data.get("done", 0)),
                             int(data.get("erred", 0))))
        return
    if topic == LIFECYCLE_TOPIC and isinstance(data, dict) and data.get("event") in MARKED_EVENTS:
        out.markers.append((t, str(data["event"]), str(ev.get("worker") or data.get("worker") or "")))
    # the data cell is made for the rows kept only (see read_events)
    row = {"t": t, "topic": topic, "worker": ev.get("worker") or "", "data": data}
    if not is_dask_internal(topic):
        out.user_total += 1
        if len(out.user) < USER_EVENTS_HEAD:
            out.user.append(row)
        else:
            _push(user_tail, row, USER_EVENTS_TAIL)
    else:
        out.own_total += 1
        if topic == LIFECYCLE_TOPIC and len(out.own) < LIFECYCLE_EVENTS_MAX:
            out.own.append(row)  # the run's own story: kept whole, up to a bound
        else:
            _push(own_tail, row, DASK_EVENTS_TAIL)


def _push(tail: list, row: dict, keep: int) -> None:
    tail.append(row)
    if len(tail) > 2 * keep:  # trim now and then, not on every append
        del tail[:-keep]


def _cell(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data, default=str)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL] + " …"


def _thin(points: list, most: int) -> list:
    """At most `most` points, evenly spread, the last one always kept."""
    if len(points) <= most:
        return points
    step = len(points) / most
    return [points[int(i * step)] for i in range(most - 1)] + [points[-1]]


def read_logs(fs, logs_dir: str, dead_workers: set[str]) -> list[LogFile] | None:
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(logs_dir, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return None
    files = []
    texts = {}
    for name in names:
        try:
            texts[name] = fs.cat_file(f"{logs_dir}/{name}").decode("utf-8", errors="replace").splitlines()
        except (FileNotFoundError, IsADirectoryError):
            continue
    share = max(LOG_HEAD * 2, LOG_LINES_TOTAL // max(len(texts), 1))
    for name, lines in texts.items():
        worker = name.split(".", 1)[0]
        files.append(LogFile(name=name, lines=_sample_lines(lines, share), total=len(lines),
                             crashed_worker=name.endswith(".stdio.log") and worker in dead_workers))
    return files


def _sample_lines(lines: list[str], share: int) -> list[tuple[int, str, str]]:
    """Every line of a small file; of a big one its head, its tail and its warnings."""
    keep = set(range(len(lines))) if len(lines) <= share else (
        set(range(LOG_HEAD)) | set(range(len(lines) - (share - LOG_HEAD), len(lines))))
    levels = [_level(line) for line in lines]
    if len(keep) < len(lines):
        loud = [i for i, lv in enumerate(levels) if lv in ("WARNING", "ERROR", "CRITICAL")]
        keep |= set(loud[:LOG_WARNINGS_MAX])
    return [(i + 1, levels[i], lines[i][:MAX_LOG_LINE]) for i in sorted(keep)]


def _level(line: str) -> str:
    m = _LEVEL.search(line[:120])
    if m is None:
        return ""
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(m.group(1), m.group(1))


def _artifacts(fs, root: str) -> list[tuple[str, int]]:
    out = []
    try:
        entries = fs.find(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for path, info in sorted(entries.items()):
        name = path[len(root):].lstrip("/")
        out.append((name, int(info.get("size") or 0)))
    return out
