"""The run report as a user meets it: `daskjob report` after a run, opened in a real
headless Chromium (tests/browser.py), for a failed run, a big run, an old record and a
record kept under an fsspec URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from browser import open_page
from conftest import REPO, only_run

pytestmark = pytest.mark.usefixtures("no_leaks")

DASKJOB = [sys.executable, "-m", "daskjob"]
ENV = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}


def run_cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(DASKJOB + list(args), env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert (proc.returncode == 0) == ok, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def search(page, box_index: int, text: str) -> str:
    """Type into one of the page's search boxes (0, 1: the event tables; 2: the logs)
    and give back the text of the table under it."""
    box = page.locator('input[type="search"]').nth(box_index)
    box.fill(text)
    return page.locator("table.rows").nth(box_index).inner_text()


def test_report_of_a_failed_run_in_a_browser(tmp_path, records):
    job = tmp_path / "check.yaml"
    job.write_text(json.dumps({"name": "check-partitions", "payload": "jobs:checks_partitions_then_fails",
                               "record_dir": str(records), "labels": {"team": "data"},
                               "cluster": {"n_workers": 2}}))
    run_cli("run", str(job), "-q", ok=False)
    run_dir = only_run(records)

    out = run_cli("report", os.path.basename(run_dir), "--record-dir", str(records))
    page_path = out.stdout.strip()
    assert page_path == os.path.join(run_dir, "run-report.html")
    html = open(page_path, encoding="utf-8").read()
    # self-contained: nothing to fetch
    assert "<script src" not in html and "<link " not in html and "@import" not in html

    with open_page("file://" + page_path, str(tmp_path / "failed-run.png")) as shown:
        requests = []
        shown.page.on("request", lambda r: requests.append(r.url))
        text = shown.text
        head = text.split("Phases", 1)[0]
        # what failed comes first: the status and the worker's exception
        assert "check-partitions" in head and "failed" in head
        assert "ValueError: partition 3 is corrupt" in head
        assert "team" in head and "data" in head
        for phase in ("provision", "workers", "environment check", "payload", "snapshot", "teardown"):
            assert phase in text
        assert "Workers over time" in text and "Dask tasks" in text
        assert "partition.checked" in search(shown.page, 0, "partition.checked")
        assert "partition.plan" in text
        assert "partition 3 has a bad checksum" in search(shown.page, 2, "bad checksum")
        # the level filter leaves warnings and errors only
        shown.page.locator('select[aria-label="level"]').select_option("3")
        search(shown.page, 2, "")
        levels = shown.page.locator("table.rows").nth(2).locator("tr").all_inner_texts()
        assert levels and not any(" INFO " in row for row in levels[1:])
        assert not [u for u in requests if not u.startswith(("file:", "data:", "about:"))]
    assert os.path.getsize(tmp_path / "failed-run.png") > 10_000


def test_report_of_an_old_record_says_what_was_not_recorded(tmp_path):
    # a record as the first releases wrote it: no phases, no groups, no events, no logs
    run_dir = tmp_path / "runs" / "old-20260101T000000Z-abcdef"
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({
        "run_id": run_dir.name, "name": "old", "status": "succeeded",
        "started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T00:01:00+00:00",
        "duration_s": 60.0, "backend": "local", "record_path": str(run_dir)}))
    out = run_cli("report", str(run_dir), "-o", str(tmp_path / "old.html"))
    assert out.stdout.strip() == str(tmp_path / "old.html")
    with open_page(f"file://{tmp_path / 'old.html'}", str(tmp_path / "old.png")) as shown:
        assert "succeeded" in shown.text
        for section in ("Phases", "Workers over time", "Dask tasks", "Events", "Logs"):
            part = shown.text.split(section, 1)[1]
            assert part.lstrip().startswith("not recorded"), (section, part[:80])


def test_report_of_a_record_under_an_fsspec_url(tmp_path, records):
    import fsspec

    from daskjob import JobSpec, run_job
    from daskjob.report import write_report
    result = run_job(JobSpec(name="remote", payload="jobs:add_up", params={"n": 4},
                             record_dir="memory://daskjob-report-test/runs",
                             cluster={"n_workers": 1}))
    location = result.record["record_path"]
    assert location.startswith("memory://")
    out = write_report(location, str(tmp_path / "remote.html"))
    html = open(out, encoding="utf-8").read()
    assert "remote" in html and "succeeded" in html
    assert f'href="{location}/logs/' in html  # its files, where they are
    fsspec.filesystem("memory").rm("/daskjob-report-test", recursive=True)


def test_a_big_run_gives_a_page_that_says_what_it_left_out(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from report import fake_run
    run_dir = fake_run(str(tmp_path / "big"), events=200_000, log_lines=100_000)
    out = run_cli("report", run_dir)
    page_path = out.stdout.strip()
    assert os.path.getsize(page_path) < 10 * 2 ** 20
    with open_page("file://" + page_path, str(tmp_path / "big.png")) as shown:
        assert "200000 events in all" in shown.text.replace(",", "")
        assert "This page keeps" in shown.text and "every one is in events.jsonl" in shown.text
        assert "every line is in the run's logs/ folder" in shown.text
        # the last user event and the last log line are there
        assert "rows_read" in search(shown.page, 0, '"seq": 199')
        assert "line 49999 of worker-1" in search(shown.page, 2, "line 49999 of worker-1")


def test_dashboard_link_only_while_the_run_lives(tmp_path):
    from daskjob.report import render_report
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    record = {"run_id": "live", "name": "live", "status": "running", "record_path": str(run_dir),
              "started_at": "2026-12-04T00:00:00+00:00", "dashboard_link": "http://127.0.0.1:8787/status",
              "driver": {"pid": os.getpid(), "host": os.uname().nodename}}
    (run_dir / "record.json").write_text(json.dumps(record))
    assert "http://127.0.0.1:8787/status" in render_report(str(run_dir))
    (run_dir / "record.json").write_text(json.dumps({**record, "status": "succeeded"}))
    assert "http://127.0.0.1:8787/status" not in render_report(str(run_dir))


def test_a_worker_that_died_is_marked_on_the_workers_chart(tmp_path, records):
    job = tmp_path / "kill.yaml"
    job.write_text(json.dumps({"name": "survivor", "payload": "jobs:survives_worker_kill",
                               "params": {"marker": str(tmp_path / "killed-once")},
                               "record_dir": str(records), "cluster": {"n_workers": 2}}))
    run_cli("run", str(job), "-q")
    out = run_cli("report", only_run(records))
    with open_page("file://" + out.stdout.strip(), str(tmp_path / "died.png")) as shown:
        workers = shown.page.locator("#dj-workers")
        assert "worker died: worker-" in workers.inner_text()
        assert workers.locator("svg line.marker").count() >= 1
        assert "succeeded" in shown.text.split("Phases", 1)[0]
