"""ETL throughput: the ETL payload vs. DuckDB vs. plain dask.dataframe code vs. pandas.

All of them read the same synthetic CSV drop (`daskjob demo-data`: 250,000 rows a file),
check the same 21 rules of `etl.SCHEMA` with a reason per rejected row, and write the
clean rows, the rejected rows and the daily aggregate to Parquet.

- daskjob ETL payload: `etl.run` on a LocalCluster of 2 workers x 1 thread (the payload
  phase of a job: the cluster is up before and stays up after)
- DuckDB, 2 threads: the same rules in SQL, generated from `etl.SCHEMA`
- plain dask.dataframe: `etl.validate` / `etl.transform` (pandas) in `map_partitions`,
  on the same cluster
- pandas, one process: the same functions, file by file

Runs alternate so that machine noise hits all alike. Prints the median seconds and
rows/s of each, the ETL payload against DuckDB side by side with their throughput ratio
(> 1: the payload is faster), and the row counts of both (they must be equal: both did
the same work).

    .venv/bin/python bench/etl.py [--rows 2000000] [--repeat 3] [--only etl,duckdb]

DuckDB: `pip install 'daskjob[bench]'`.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import tempfile
import time

import dask
import dask.dataframe as dd
import pandas as pd
from distributed import Client, LocalCluster

from daskjob.datasets import write_drop
from daskjob.payloads import etl

DATE = "2026-11-20"
VARIANTS = {"etl": "daskjob ETL payload", "duckdb": "DuckDB, 2 threads",
            "dask": "plain dask.dataframe", "pandas": "pandas, one process"}


# ---------------------------------------------------------------------------- DuckDB
def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_sql(files: list[str], out: str) -> dict[str, str]:
    """The statements of the DuckDB baseline: `etl.SCHEMA`'s rules, reasons as `etl.validate`
    builds them, clean rows typed and derived as `etl.transform`, the daily aggregate as
    `etl.finish_aggregate`, the rows rejected by each rule. One scan of the CSV files into
    a temporary table of the raw columns, the numbers and the reasons; the outputs from
    there. (DuckDB's trim() strips spaces only, pandas' strip() any whitespace: the same
    on this data.)"""
    raw_cols = [_ident(c) for c in etl.SCHEMA]
    numbers, parts, counts, typed = [], [], [], []
    for col, rule in etl.SCHEMA.items():
        s, n = f"trim({_ident(col)})", f"n_{rule.output}"
        missing = f"({s} IS NULL OR {s} = '')"

        def fail(name: str, cond: str, text: str, with_value: bool, col=col, s=s) -> None:
            piece = (f"{_lit(f'{col}: {text} (' + chr(39))} || {s} || {_lit(chr(39) + '); ')}"
                     if with_value else _lit(f"{col}: {text}; "))
            parts.append(f"CASE WHEN {cond} THEN {piece} ELSE '' END")
            counts.append(f"count(*) FILTER (WHERE {cond}) AS {_ident(f'{col}:{name}')}")

        if rule.required:
            fail("missing", missing, "missing", False)
        if rule.kind == "category":
            allowed = ", ".join(_lit(v) for v in rule.allowed)
            fail("not_allowed", f"(NOT {missing} AND {s} NOT IN ({allowed}))",
                 f"not one of {len(rule.allowed)} allowed values", True)
            typed.append(f"{s} AS {_ident(rule.output)}")
            continue
        numbers.append(f"CASE WHEN regexp_matches({s}, {_lit(etl._NUMBER)}) "
                       f"THEN TRY_CAST({s} AS DOUBLE) END AS {n}")
        fail("not_a_number", f"(NOT {missing} AND {n} IS NULL)", "not a number", True)
        if rule.kind == "int":
            fail("not_an_integer", f"({n} IS NOT NULL AND {n} % 1 <> 0)", "not an integer", True)
        fail("out_of_range", f"({n} IS NOT NULL AND ({n} < {rule.low} OR {n} > {rule.high}))",
             f"out of range {rule.low:g}..{rule.high:g}", True)
        cast = "INTEGER" if rule.kind == "int" else "DOUBLE"
        typed.append(f"CAST({n} AS {cast}) AS {_ident(rule.output)}")
    bands = " ".join(f"WHEN age <= {hi} THEN {_lit(label)}"
                     for hi, label in zip(etl.AGE_BANDS[1:], etl.AGE_LABELS))
    file_list = "[" + ", ".join(_lit(f) for f in files) + "]"
    clean = (f"SELECT *, CASE WHEN age <= {etl.AGE_BANDS[0]} THEN NULL {bands} END AS age_band, "
             "round(duration_s / 60, 2) AS call_minutes, pdays <> 999 AS contacted_before, "
             "y = 'yes' AS subscribed "
             f"FROM (SELECT {', '.join(typed)} FROM checked WHERE reason = '')")
    return {
        "checked": (
            "CREATE OR REPLACE TEMP TABLE checked AS "
            f"WITH u AS (SELECT *, {', '.join(numbers)} FROM read_csv({file_list}, delim=';', "
            "quote='\"', escape='\"', header=true, all_varchar=true)) "
            f"SELECT *, concat({', '.join(parts)}) AS reason FROM u"),
        "clients": f"COPY ({clean}) TO {_lit(out + '/clients.parquet')} (FORMAT parquet)",
        "rejected": (
            "COPY (SELECT " + ", ".join(f"coalesce({c}, '') AS {c}" for c in raw_cols)
            + ", rtrim(reason, '; ') AS reason FROM checked WHERE reason <> '') "
            f"TO {_lit(out + '/rejected.parquet')} (FORMAT parquet)"),
        "daily_by_job": (
            "COPY (SELECT job, count(*) AS clients, sum(subscribed::INTEGER) AS subscribed, "
            "round(sum(subscribed::INTEGER) / count(*), 4) AS subscription_rate, "
            "round(avg(age), 2) AS mean_age, round(avg(call_minutes), 3) AS mean_call_minutes "
            f"FROM ({clean}) GROUP BY job ORDER BY job) "
            f"TO {_lit(out + '/daily_by_job.parquet')} (FORMAT parquet)"),
        # a rule only fails on a rejected row
        "counts": ("SELECT (SELECT count(*) FROM checked WHERE reason = '') AS rows_written, "
                   f"count(*) AS rows_rejected, {', '.join(counts)} "
                   "FROM checked WHERE reason <> ''"),
    }


def duckdb_etl(files: list[str], out: str, threads: int = 2) -> dict:
    import duckdb

    os.makedirs(out, exist_ok=True)
    sql = duckdb_sql(files, out)
    con = duckdb.connect(config={"threads": threads})
    try:
        con.execute("SET preserve_insertion_order = false")  # row order does not matter here
        for step in ("checked", "clients", "rejected", "daily_by_job"):
            con.execute(sql[step])
        cur = con.execute(sql["counts"])
        row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
    finally:
        con.close()
    by_rule = {k: v for k, v in row.items() if ":" in k and v}
    return {"rows_written": row["rows_written"], "rows_rejected": row["rows_rejected"],
            "rejected_by_rule": by_rule}


# ------------------------------------------------------------- dask and pandas code
def plain_dask(files: list[str], out: str, blocksize: str) -> None:
    raw = dd.read_csv(files, sep=";", dtype=str, keep_default_na=False, blocksize=blocksize)

    def clean(df):
        good, _, _ = etl.validate(df)
        return etl.transform(good)

    def rejects(df):
        return etl.validate(df)[1]

    clients_meta = pd.DataFrame({c: pd.Series(dtype=t) for c, t in etl.OUTPUT_DTYPES.items()})
    rejected_meta = pd.DataFrame({c: pd.Series(dtype="str") for c in [*raw.columns, "reason"]})
    clients = raw.map_partitions(clean, meta=clients_meta)
    rejected = raw.map_partitions(rejects, meta=rejected_meta)
    agg = clients.groupby("job").agg(clients=("age", "size"), subscribed=("subscribed", "sum"))
    dask.compute(clients.to_parquet(f"{out}/clients", compute=False, write_index=False),
                 rejected.to_parquet(f"{out}/rejected", compute=False, write_index=False),
                 agg)


def pandas_one_process(files: list[str], out: str) -> None:
    os.makedirs(f"{out}/clients", exist_ok=True)
    os.makedirs(f"{out}/rejected", exist_ok=True)
    partials = []
    for i, path in enumerate(files):
        raw = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
        good, rejected, _ = etl.validate(raw)
        clients = etl.transform(good)
        clients.to_parquet(f"{out}/clients/part-{i}.parquet", index=False)
        rejected.to_parquet(f"{out}/rejected/part-{i}.parquet", index=False)
        partials.append(etl.partial_aggregate(clients))
    etl.finish_aggregate(pd.concat(partials))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocksize", default="8MB", help="the payload's and plain dask's")
    ap.add_argument("--only", default=",".join(VARIANTS),
                    help=f"comma-separated, of {','.join(VARIANTS)} (default: all)")
    args = ap.parse_args()
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = set(only) - set(VARIANTS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    work = tempfile.mkdtemp(prefix="daskjob-bench-etl-")
    times: dict[str, list[float]] = {v: [] for v in only}
    counts: dict[str, dict] = {}
    try:
        write_drop(f"{work}/raw", DATE, args.rows, seed=1)
        files = sorted(glob.glob(f"{work}/raw/date={DATE}/*.csv"))
        size = sum(os.path.getsize(f) for f in files)
        print(f"{args.rows:,} rows in {len(files)} CSV files, {size / 1e6:.0f} MB", flush=True)
        with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", scheduler_port=0,
                          dashboard_address=None) as cluster, Client(cluster):
            for i in range(args.repeat):
                out = f"{work}/out{i}"
                for v in only:
                    if v == "etl":
                        t, summary = timed(etl.run, f"{work}/raw", f"{out}/etl", DATE,
                                           blocksize=args.blocksize)
                        counts["etl"] = summary
                    elif v == "duckdb":
                        t, counts["duckdb"] = timed(duckdb_etl, files, f"{out}/duckdb")
                    elif v == "dask":
                        t, _ = timed(plain_dask, files, f"{out}/dask", args.blocksize)
                    else:
                        t, _ = timed(pandas_one_process, files, f"{out}/pandas")
                    times[v].append(t)
                    print(f"  run {i + 1}: {VARIANTS[v]:<22} {t:7.2f} s", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {v: statistics.median(ts) for v, ts in times.items()}
    print(f"\n{args.rows:,} rows, {args.repeat} runs each, median:")
    for v, t in median.items():
        print(f"  {VARIANTS[v]:<22} {t:7.2f} s {args.rows / t:>12,.0f} rows/s")
    if "etl" in median and "duckdb" in median:
        e, d = median["etl"], median["duckdb"]
        print(f"\nETL payload (2 workers x 1 thread) {e:.2f} s vs DuckDB (2 threads) {d:.2f} s: "
              f"throughput ratio payload/DuckDB = {d / e:.2f}")
        s, k = counts["etl"], counts["duckdb"]
        same = (s["rows_written"], s["rows_rejected"], s["rejected_by_rule"]) == \
            (k["rows_written"], k["rows_rejected"], k["rejected_by_rule"])
        print(f"rows written/rejected: payload {s['rows_written']:,}/{s['rows_rejected']:,}, "
              f"DuckDB {k['rows_written']:,}/{k['rows_rejected']:,}; rejected by rule "
              f"{'the same' if s['rejected_by_rule'] == k['rejected_by_rule'] else 'DIFFERENT'}"
              f"{'' if same else '  <-- NOT THE SAME WORK'}")
        if s["rejected_by_rule"] != k["rejected_by_rule"]:
            print(f"  payload {s['rejected_by_rule']}\n  DuckDB  {k['rejected_by_rule']}")
    if "etl" in median:
        for v, t in median.items():
            if v != "etl":
                print(f"  ETL payload / {VARIANTS[v]}: {t / median['etl']:.2f}x the throughput")


if __name__ == "__main__":
    main()
