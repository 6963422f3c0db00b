"""ETL throughput: the ETL payload vs. plain dask.dataframe code vs. pandas in one process.

All three read the same synthetic CSV drop, validate and transform it the same way, and
write the clean rows and the rejected rows to Parquet plus the daily aggregate. The two
Dask variants share one LocalCluster (2 workers x 1 thread); runs alternate so machine
noise hits all alike. Prints median rows/s and the ratios.

    .venv/bin/python bench/etl.py [--rows 500000] [--repeat 3]
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


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocksize", default="16MB")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="daskjob-bench-etl-")
    try:
        write_drop(f"{work}/raw", DATE, args.rows, seed=1)
        files = sorted(glob.glob(f"{work}/raw/date={DATE}/*.csv"))
        times: dict[str, list[float]] = {"daskjob ETL payload": [], "plain dask.dataframe": [],
                                         "pandas, one process": []}
        with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", scheduler_port=0,
                          dashboard_address=None) as cluster, Client(cluster):
            for i in range(args.repeat):
                out = f"{work}/out{i}"
                times["daskjob ETL payload"].append(timed(
                    etl.run, f"{work}/raw", f"{out}/etl", DATE, blocksize=args.blocksize))
                times["plain dask.dataframe"].append(timed(plain_dask, files, f"{out}/dask", args.blocksize))
                times["pandas, one process"].append(timed(pandas_one_process, files, f"{out}/pandas"))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {k: args.rows / statistics.median(v) for k, v in times.items()}
    base = rates["daskjob ETL payload"]
    print(f"{args.rows} rows, {args.repeat} runs each, median:")
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:>10,.0f} rows/s   (ETL payload / this = {base / rate:.2f})")


if __name__ == "__main__":
    main()
