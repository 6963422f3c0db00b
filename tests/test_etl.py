"""The ETL payload and the synthetic drop, on real clusters and real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from daskjob import ClusterSpec, JobFailed, JobSpec, run_job
from daskjob.datasets import COLUMNS, generate_chunk, write_drop
from daskjob.payloads.etl import OUTPUT_DTYPES, validate


pytestmark = pytest.mark.usefixtures("no_leaks")
DATE = "2026-11-20"


def etl_spec(records, source, dest, date=DATE, cluster=None, **params):
    return JobSpec(name="etl", payload="daskjob.payloads.etl:run",
                   params={"source": str(source), "dest": str(dest), "date": date, **params},
                   record_dir=str(records), performance_report=False,
                   cluster=ClusterSpec(**(cluster or {"n_workers": 2, "memory_per_worker": "1GiB"})))


def read_partition(dest, table, date=DATE) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(dest, table, f"date={date}"))


# ---------------------------------------------------------------------- demo data
def test_demo_data_is_deterministic_and_shaped_like_uci(tmp_path):
    a = generate_chunk(5000, date=DATE, seed=3)
    b = generate_chunk(5000, date=DATE, seed=3)
    c = generate_chunk(5000, date="2026-11-21", seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert list(a.columns) == COLUMNS
    good, rejected, _ = validate(a.astype(str).replace("nan", ""))
    assert 0.01 < len(rejected) / len(a) < 0.03  # default bad_fraction 0.02
    # the target depends on the features: long calls convert far more often
    long_calls = good[good.duration_s > 600].y.eq("yes").mean()
    short_calls = good[good.duration_s < 120].y.eq("yes").mean()
    assert long_calls > 3 * short_calls


def test_demo_data_cli_writes_uci_csv(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daskjob", "demo-data", "--dest", str(tmp_path),
                           "--date", DATE, "--rows", "1000", "--bad-fraction", "0.1", "--seed", "7"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    files = os.listdir(tmp_path / f"date={DATE}")
    assert files == [f"bank-{DATE}-000.csv"]
    text = (tmp_path / f"date={DATE}" / files[0]).read_text()
    assert text.splitlines()[0].startswith('"age";"job";"marital"')
    raw = pd.read_csv(tmp_path / f"date={DATE}" / files[0], sep=";", dtype=str, keep_default_na=False)
    assert len(raw) == 1000
    _, rejected, _ = validate(raw)
    assert len(rejected) == 100


# ----------------------------------------------------------------------------- ETL
def test_etl_counts_types_reasons_and_idempotent_rerun(tmp_path, records):
    raw_dir, dest = tmp_path / "raw", tmp_path / "wh"
    write_drop(str(raw_dir), DATE, 30_000, seed=1, bad_fraction=0.03, rows_per_file=10_000)
    events = []
    result = run_job(etl_spec(records, raw_dir, dest, blocksize="512KB"), on_event=events.append)
    s = result.value
    assert s["rows_read"] == 30_000
    assert s["rows_rejected"] == 900
    assert s["rows_written"] == s["rows_read"] - s["rows_rejected"]
    assert sum(s["rejected_by_rule"].values()) >= 900
    clients = read_partition(dest, "clients")
    assert len(clients) == s["rows_written"]
    assert {c: str(t) for c, t in clients.dtypes.items()} == \
        {c: str(pd.Series([], dtype=t).dtype) for c, t in OUTPUT_DTYPES.items()}
    assert clients.age.between(17, 100).all() and clients.y.isin(["yes", "no"]).all()
    rejected = read_partition(dest, "_rejected")
    assert len(rejected) == 900 and rejected.reason.str.len().gt(0).all()
    agg = read_partition(dest, "daily_by_job")
    assert agg.clients.sum() == s["rows_written"]
    # events from the workers, per partition
    parts = [e for e in events if e["topic"] == "etl.partition"]
    assert len(parts) == s["partitions"] > 1
    assert all(e["worker"].startswith("worker-") for e in parts)
    assert sum(e["data"]["rows_read"] for e in parts) == 30_000
    assert sum(e["data"]["bytes_written"] for e in parts) > 0
    manifest = json.loads((dest / "clients" / f"date={DATE}" / "_SUCCESS").read_text())
    assert manifest["rows_written"] == s["rows_written"]

    # rerun for the same date: the partition is replaced, not appended to
    before = clients.sort_values(list(clients.columns)).reset_index(drop=True)
    run_job(etl_spec(records, raw_dir, dest, blocksize="512KB"))
    after = read_partition(dest, "clients")
    after = after.sort_values(list(after.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert not [p for p in os.listdir(dest / "clients") if p.startswith("_")], "staging left behind"

    # a second day, and the whole table read as a Hive-partitioned dataset
    write_drop(str(raw_dir), "2026-11-21", 5_000, seed=1)
    run_job(etl_spec(records, raw_dir, dest, date="2026-11-21"))
    table = pd.read_parquet(dest / "clients")
    assert len(table) == len(after) + len(read_partition(dest, "clients", "2026-11-21"))
    assert set(table["date"].astype(str)) == {DATE, "2026-11-21"}


def test_too_many_rejects_fail_and_publish_only_the_rejects(tmp_path, records):
    raw_dir, dest = tmp_path / "raw", tmp_path / "wh"
    write_drop(str(raw_dir), DATE, 4_000, seed=2, bad_fraction=0.2)
    with pytest.raises(JobFailed) as info:
        run_job(etl_spec(records, raw_dir, dest, max_reject_ratio=0.05))
    assert "max_reject_ratio" in str(info.value)
    assert not (dest / "clients" / f"date={DATE}").exists()
    assert len(read_partition(dest, "_rejected")) == 800


def test_missing_input_is_a_clear_failure(tmp_path, records):
    with pytest.raises(JobFailed) as info:
        run_job(etl_spec(records, tmp_path / "nowhere", tmp_path / "wh"))
    assert "no input for 2026-11-20" in str(info.value)


def _etl_job_file(tmp_path, records, raw_dir, dest):
    job = tmp_path / "etl.yaml"
    job.write_text(json.dumps({
        "name": "etl-kill", "payload": "daskjob.payloads.etl:run",
        "params": {"source": str(raw_dir), "dest": str(dest), "date": DATE, "blocksize": "256KB"},
        "record_dir": str(records), "performance_report": False,
        "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_per_worker": "1GiB"}}))
    return job


def _kill_mid_write(job, dest):
    """Start the ETL in a driver process; SIGKILL it once some, not all, parts are staged."""
    proc = subprocess.Popen([sys.executable, "-m", "daskjob", "run", str(job), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging_root = dest / "clients"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            staged = [f for d in (staging_root.glob("_staging-*") if staging_root.exists() else [])
                      for f in d.glob("part-*.parquet")]
            if len(staged) >= 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return len(staged)
            if proc.poll() is not None:
                raise AssertionError("the ETL finished before it could be killed mid-write")
            time.sleep(0.02)
        raise AssertionError("no staged part appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("first_run", [True, False], ids=["no-previous", "previous-kept"])
def test_killed_mid_write_never_exposes_a_partial_partition(tmp_path, records, first_run):
    raw_dir, dest = tmp_path / "raw", tmp_path / "wh"
    previous = None
    if not first_run:
        write_drop(str(raw_dir), DATE, 3_000, seed=5)
        run_job(etl_spec(records, raw_dir, dest))
        previous = read_partition(dest, "clients")
    write_drop(str(raw_dir), DATE, 24_000, seed=6, rows_per_file=1_200)  # 20 files, many parts
    staged = _kill_mid_write(_etl_job_file(tmp_path, records, raw_dir, dest), dest)
    assert staged >= 2
    final = dest / "clients" / f"date={DATE}"
    if first_run:
        assert not final.exists(), "a partition appeared from a killed run"
    else:
        pd.testing.assert_frame_equal(read_partition(dest, "clients"), previous)
        assert json.loads((final / "_SUCCESS").read_text())["rows_written"] == len(previous)
    # readers of the whole table skip the killed run's staging folder
    if not first_run:
        assert len(pd.read_parquet(dest / "clients")) == len(previous)
    # the next run cleans up and publishes
    result = run_job(etl_spec(records, raw_dir, dest, blocksize="1MB"))
    assert len(read_partition(dest, "clients")) == result.value["rows_written"]
    assert not [p for p in os.listdir(dest / "clients") if p.startswith("_")]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_input_four_times_worker_memory_finishes_without_a_killed_worker(tmp_path, records):
    memory = 512 * 2**20  # a worker with pandas+pyarrow loaded rests near 300 MiB
    raw_dir, dest = tmp_path / "raw", tmp_path / "wh"
    day = raw_dir / f"date={DATE}"
    first = write_drop(str(raw_dir), DATE, 250_000, seed=9)[0]
    size = os.path.getsize(first)
    copies = -(-4 * memory // size)  # ceil: at least 4x the cluster's memory
    for i in range(1, copies):
        shutil.copyfile(first, day / f"bank-{DATE}-{i:03d}.csv")
    total = sum(os.path.getsize(p) for p in day.iterdir())
    assert total >= 4 * memory
    result = run_job(etl_spec(records, raw_dir, dest, blocksize="4MB",
                              cluster={"n_workers": 1, "memory_per_worker": memory}))
    assert result.value["rows_read"] == 250_000 * copies
    assert result.record["worker_deaths"] == []
    print(f"{total / 2**20:.0f} MiB input through one {memory / 2**20:.0f} MiB worker in "
          f"{result.record['phases']['payload']['seconds']}s")
