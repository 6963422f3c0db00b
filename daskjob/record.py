"""The run record: what happened, kept after the cluster is gone.

<record_dir>/<run_id>/
    record.json    status, phase timings, workers, versions, error, result summary
    events.jsonl   every event, one JSON object a line
    logs/          one file per worker (and scheduler, driver)
    report.html    Dask performance report (optional)

record.json is written atomically (temp file + rename) when the run starts, and again
when it ends on every path, so a reader never sees half a file. Remote record dirs (any
fsspec URL) are written locally first and uploaded when the run ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import fsspec

_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|credential|private[_-]?key|api[_-]?key|auth)",
                         re.IGNORECASE)
REDACTED = "***"


def redact(value: Any, _key: str = "") -> Any:
    """Hide values whose key looks secret, at any depth."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "", {}, [])
                    else redact(v, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return REDACTED
    return value


def is_local(url: str) -> bool:
    protocol = fsspec.utils.get_protocol(url)
    return protocol in ("file", "local")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


class RecordDir:
    """Where one run's record lives, locally while running."""

    def __init__(self, record_dir: str, run_id: str):
        self.url = record_dir.rstrip("/") + "/" + run_id
        self.remote = not is_local(record_dir)
        if self.remote:
            self.path = tempfile.mkdtemp(prefix=f"daskjob-{run_id}-")
        else:
            self.path = os.path.abspath(os.path.join(local_path(record_dir), run_id))
            if os.path.exists(self.path):
                raise FileExistsError(f"record folder {self.path} already exists")
            os.makedirs(self.path)
        os.makedirs(self.logs_dir, exist_ok=True)

    @property
    def location(self) -> str:
        return self.url if self.remote else self.path

    @property
    def events_path(self) -> str:
        return os.path.join(self.path, "events.jsonl")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.path, "logs")

    @property
    def report_path(self) -> str:
        return os.path.join(self.path, "report.html")

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        target = os.path.join(self.path, name)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def publish(self) -> None:
        """Upload a remote record: everything else first, record.json last."""
        if not self.remote:
            return
        fs, root = fsspec.core.url_to_fs(self.url)
        fs.makedirs(root, exist_ok=True)
        for dirpath, _, files in os.walk(self.path):
            rel = os.path.relpath(dirpath, self.path)
            for name in files:
                if rel == "." and name == "record.json":
                    continue
                dest = root if rel == "." else f"{root}/{rel}"
                fs.makedirs(dest, exist_ok=True)
                fs.put_file(os.path.join(dirpath, name), f"{dest}/{name}")
        fs.put_file(os.path.join(self.path, "record.json"), f"{root}/record.json")
        shutil.rmtree(self.path, ignore_errors=True)


def read_record(location: str) -> dict[str, Any]:
    """Load record.json from a run folder (or from the newest run under a record_dir)."""
    fs, root = fsspec.core.url_to_fs(location)
    candidate = f"{root.rstrip('/')}/record.json"
    if fs.exists(candidate):
        return json.loads(fs.cat_file(candidate))
    runs = list_records(location)
    if not runs:
        raise FileNotFoundError(f"no run record in {location}")
    return runs[0]


def list_records(record_dir: str) -> list[dict[str, Any]]:
    """Every run's record under a record dir, newest first. A run folder whose first
    record.json is not written yet, or that cannot be read, is skipped."""
    fs, root = fsspec.core.url_to_fs(record_dir)
    if not fs.isdir(root):
        raise FileNotFoundError(f"{record_dir} is not a folder of run records")
    records = []
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        try:
            records.append(json.loads(fs.cat_file(f"{path.rstrip('/')}/record.json")))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: str(r.get("started_at") or ""), reverse=True)
