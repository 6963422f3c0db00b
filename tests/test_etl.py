"""The ETL payload and the synthetic drop, on real clusters and real files."""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from daskjob import ClusterSpec, JobFailed, JobSpec, run_job
from daskjob.datasets import COLUMNS, generate_chunk, write_drop
from daskjob.payloads import etl
from daskjob.payloads.etl import OUTPUT_DTYPES, partial_aggregate, transform, validate


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


# ------------------------------------------- the Arrow path against the pandas path
# (column, raw value) put into a drop on top of datasets.py's own malformed values
ODD_VALUES = [
    ("age", " 42 "), ("age", "42.0"), ("age", "42.5"), ("age", "1e1"), ("age", "+30"),
    ("age", ".5e2"), ("age", "0x1F"), ("age", ""), ("age", "   "), ("age", "NaN"), ("age", "inf"),
    ("age", "1e999"), ("age", "-0"), ("age", "150"), ("job", " admin. "), ("job", "Admin."),
    ("job", "admin.;x"), ("job", 'say "hi"'), ("job", "\u00a0admin.\u00a0"), ("job", "ünïcode"),
    ("job", "\t"), ("duration", "12.0"), ("duration", "1,5"), ("duration", "-20"),
    ("euribor3m", " 1.2e0 "), ("euribor3m", "1.2.3"), ("euribor3m", "11"), ("y", "YES"),
    ("y", ""), ("y", "no "), ("pdays", "1.5e9"), ("pdays", "1.5"), ("marital", "single;married"),
    ("nr.employed", "5000"), ("nr.employed", ""),
]
SEVERAL = [("age", "abc"), ("job", ""), ("pdays", "1.5"), ("y", "maybe"), ("euribor3m", "x")]


def corrupted_frame(rows: int, seed: int, chunk: int = 0) -> pd.DataFrame:
    """Rows as `write_drop` makes them, made worse: odd values for every kind of rule,
    rows breaking several rules at once, and a free-text column with `;` and quotes."""
    df = generate_chunk(rows, date=DATE, seed=seed, chunk=chunk, bad_fraction=0.03).astype(object)
    r = np.random.default_rng(seed)
    for i, row in enumerate(r.choice(rows, size=3 * len(ODD_VALUES), replace=False)):
        column, value = ODD_VALUES[i % len(ODD_VALUES)]
        df.iat[row, df.columns.get_loc(column)] = value
    several = r.choice(rows, size=5, replace=False)
    for column, value in SEVERAL:
        df.iloc[several, df.columns.get_loc(column)] = value
    df["note"] = ['free; text "quoted"' if i % 7 == 0 else "" for i in range(rows)]
    return df


def write_corrupted_drop(fs, folder: str, files: int = 2, rows: int = 3000) -> list[str]:
    """CSV files as `write_drop` writes them; the first also has lines pyarrow's parser
    refuses and pandas reads (a short row, a line of blanks, an empty line)."""
    paths = []
    for i in range(files):
        text = corrupted_frame(rows, seed=11 + i, chunk=i).to_csv(
            sep=";", index=False, quoting=csv.QUOTE_NONNUMERIC)
        if i == 0:
            lines = text.split("\n")
            lines[rows // 2:rows // 2] = ['"46";"admin."', "   ", ""]
            text = "\n".join(lines)
        paths.append(f"{folder}/bank-{DATE}-{i:03d}.csv")
        fs.pipe(paths[-1], text.encode())
    return paths


def pandas_path(fs, paths: list[str]) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """What the pandas path makes of whole files: clean rows, rejected rows, counts."""
    clean, rejected, by_rule = [], [], Counter()
    for path in paths:
        with fs.open(path, "rb") as f:
            good, bad, rules = validate(pd.read_csv(f, sep=";", dtype=str, keep_default_na=False))
        clean.append(transform(good))
        rejected.append(bad)
        by_rule.update(rules)
    return (pa.Table.from_pandas(pd.concat(clean), preserve_index=False),
            pa.Table.from_pandas(pd.concat(rejected), preserve_index=False), dict(by_rule))


def as_the_driver_got_it(partial: pd.DataFrame) -> pd.DataFrame:
    """A pandas partial aggregate as the pandas path sent it to the driver (JSON)."""
    return pd.DataFrame(json.loads(partial.reset_index().to_json(orient="records"))).set_index("job")


def test_arrow_path_gives_what_the_pandas_path_gives_on_a_corrupted_drop(tmp_path):
    fs = fsspec.filesystem("file")
    folder = tmp_path / f"date={DATE}"
    folder.mkdir()
    paths = write_corrupted_drop(fs, str(folder))
    urls, kind, _ = etl.find_inputs(str(tmp_path), DATE)
    splits = etl.plan_splits(urls, kind, fs, "64KB")
    assert len(splits) >= 3 * len(paths)  # byte ranges of each file

    raws, clean, rejected, by_rule, partials, partials_pd = [], [], [], Counter(), [], []
    for split in splits:
        raw = etl.read_split(split)
        good, bad, rules = etl.validate_arrow(raw)
        clients = etl.transform_arrow(good)
        # the pandas path on the same rows, part by part: the same tables, Parquet
        # schemas (pandas metadata included), counts in the same order, partials
        good_pd, bad_pd, rules_pd = validate(raw.to_pandas())
        clients_pd = transform(good_pd)
        assert clients.equals(pa.Table.from_pandas(clients_pd, preserve_index=False),
                              check_metadata=True)
        assert bad.equals(pa.Table.from_pandas(bad_pd, preserve_index=False), check_metadata=True)
        assert list(rules.items()) == list(rules_pd.items())
        partials.append(etl.partial_aggregate_arrow(clients))
        partials_pd.append(as_the_driver_got_it(partial_aggregate(clients_pd)))
        pd.testing.assert_frame_equal(partials[-1], partials_pd[-1], check_exact=True,
                                      check_index_type=False)
        raws.append(raw)
        clean.append(clients)
        rejected.append(bad)
        by_rule.update(rules)
    pd.testing.assert_frame_equal(etl.finish_aggregate(pd.concat(partials)),
                                  etl.finish_aggregate(pd.concat(partials_pd)), check_exact=True)

    # the parts together are the files, read whole by pandas, and what pandas makes of them
    whole = []
    for path in paths:
        with open(path, "rb") as f:
            whole.append(pd.read_csv(f, sep=";", dtype=str, keep_default_na=False))
    pd.testing.assert_frame_equal(pa.concat_tables(raws).to_pandas(),
                                  pd.concat(whole, ignore_index=True))
    clean_pd, rejected_pd, by_rule_pd = pandas_path(fs, paths)
    assert pa.concat_tables(clean).equals(clean_pd, check_metadata=True)
    assert pa.concat_tables(rejected).equals(rejected_pd, check_metadata=True)
    assert dict(by_rule) == by_rule_pd

    # ... and the drop has what it should: every kind of rule broken, several at once
    reasons = pa.concat_tables(rejected).column("reason").to_pylist()
    assert sum(len(p) for p in whole) == 2 * 3000 + 1  # the short row is a row
    for text in ("missing", "not one of", "not a number", "not an integer", "out of range"):
        assert any(text in r for r in reasons), text
    assert any(r.count("; ") >= 4 for r in reasons)
    assert "job: not one of 12 allowed values ('admin.;x')" in "\n".join(reasons)
    assert 42 in pa.concat_tables(clean).column("age").to_pylist()


def test_arrow_path_reads_parquet_as_the_pandas_path_does(tmp_path):
    import dask.dataframe as dd

    typed = generate_chunk(2000, date=DATE, seed=6, bad_fraction=0.0)
    typed["euribor3m"] = typed["euribor3m"].astype(float)
    typed.loc[::50, "euribor3m"] = np.nan
    typed.loc[::61, "job"] = None
    typed["pdays"] = typed["pdays"].astype("Int64")
    typed.loc[::71, "pdays"] = pd.NA
    typed.index = np.random.default_rng(0).permutation(len(typed))  # stored as a column
    typed.to_parquet(tmp_path / "typed.parquet", row_group_size=300)
    strings = corrupted_frame(2000, seed=5).astype(str)
    strings.iloc[::97, 1] = None
    strings.to_parquet(tmp_path / "strings.parquet", index=False, row_group_size=500)
    for name in ("typed", "strings"):
        url = str(tmp_path / f"{name}.parquet")
        splits = etl.plan_splits([url], "parquet", fsspec.filesystem("file"), "8KB")
        assert len(splits) > 1  # runs of row groups
        raw = pa.concat_tables([etl.read_split(s) for s in splits])
        expected = dd.read_parquet([url]).astype(str).compute(scheduler="sync")
        pd.testing.assert_frame_equal(raw.to_pandas(), expected.reset_index(drop=True),
                                      check_dtype=False)
        good, bad, by_rule = etl.validate_arrow(raw)
        good_pd, bad_pd, by_rule_pd = validate(expected)
        assert etl.transform_arrow(good).equals(
            pa.Table.from_pandas(transform(good_pd), preserve_index=False), check_metadata=True)
        assert bad.equals(pa.Table.from_pandas(bad_pd, preserve_index=False), check_metadata=True)
        assert by_rule == by_rule_pd and bad.num_rows > 0


def test_etl_run_splits_one_file_for_every_worker_on_any_fsspec_url():
    from distributed import Client, LocalCluster

    fs = fsspec.filesystem("memory")
    root = f"/etl-{uuid.uuid4().hex[:8]}"
    try:
        paths = write_corrupted_drop(fs, f"{root}/raw/date={DATE}", files=1, rows=4000)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            s = etl.run(f"memory://{root}/raw", f"memory://{root}/wh", DATE,
                        max_reject_ratio=0.5, blocksize="128KB")
            events = [e for _, e in client.get_events("etl.partition")]
        assert s["files"] == 1 and s["partitions"] >= 4
        assert len(events) == s["partitions"]
        assert sum(e["rows_read"] for e in events) == s["rows_read"] == 4001

        def published(table):
            files = sorted(fs.glob(f"{root}/wh/{table}/date={DATE}/part-*.parquet"))
            assert fs.exists(f"{root}/wh/{table}/date={DATE}/_SUCCESS")
            return pa.concat_tables([pq.read_table(fs.open(f, "rb")) for f in files])

        clean_pd, rejected_pd, by_rule_pd = pandas_path(fs, paths)
        assert published("clients").equals(clean_pd, check_metadata=True)
        assert published("_rejected").equals(rejected_pd, check_metadata=True)
        assert s["rejected_by_rule"] == by_rule_pd
        assert s["rows_rejected"] == rejected_pd.num_rows
        assert not fs.glob(f"{root}/wh/*/_staging-*")
    finally:
        fs.rm(root, recursive=True)


def test_default_blocksize_gives_every_worker_of_the_demo_two_parts(tmp_path):
    """`make demo`: `daskjob demo-data --rows 200000`, then examples/nightly_etl.yaml."""
    write_drop(str(tmp_path / "sample"), DATE, 5_000, seed=0)
    sample = tmp_path / "sample" / f"date={DATE}" / f"bank-{DATE}-000.csv"
    demo = tmp_path / "demo.csv"  # a file of the demo's size (only its size is read)
    with open(sample, "rb") as f, open(demo, "wb") as out:
        out.write(f.readline())
    os.truncate(demo, os.path.getsize(sample) * 200_000 // 5_000)
    with open(os.path.join(REPO, "examples", "nightly_etl.yaml")) as f:
        workers = yaml.safe_load(f)["cluster"]["n_workers"]
    default = inspect.signature(etl.run).parameters["blocksize"].default
    splits = etl.plan_splits([str(demo)], "csv", fsspec.filesystem("file"), default)
    assert len(splits) >= 2 * workers
    assert {s["length"] for s in splits} == {splits[0]["length"]}  # equal parts


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
