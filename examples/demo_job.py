"""The demo payload: a small dask.dataframe aggregation with events and worker logs."""

import logging

import dask
import dask.dataframe as dd
import pandas as pd

import daskjob

log = logging.getLogger("demo")


def summarise_partition(df: pd.DataFrame) -> pd.DataFrame:
    log.info("partition with %d rows", len(df))
    daskjob.event("demo.partition", rows=len(df))
    return df


def build_report(date: str, rows: int = 200_000, partitions: int = 8) -> dict:
    ddf = dask.datasets.timeseries(start="2000-01-01", end="2000-01-31", freq="10s",
                                   partition_freq="4d", seed=42)
    ddf = ddf.head(rows, npartitions=-1, compute=False).repartition(npartitions=partitions)
    ddf = ddf.map_partitions(summarise_partition, meta=ddf._meta)
    by_name = ddf.groupby("name").x.mean().compute()
    daskjob.event("demo.done", date=date, names=len(by_name))
    return {"date": date, "rows": int(ddf.shape[0].compute()), "names": len(by_name),
            "mean_x": round(float(by_name.mean()), 6)}
