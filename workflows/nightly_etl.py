"""Nightly ETL as a Flyte workflow: the day's drop -> validated, typed Parquet partitions,
on a Dask cluster that exists only while the ETL task runs.

    pyflyte run workflows/nightly_etl.py nightly_etl --date 2026-11-20

`nightly_etl_nightly` is the LaunchPlan that runs it every night at 02:00 (UTC) for the
day the schedule fires.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import NamedTuple

from flytekit import CronSchedule, LaunchPlan, task, workflow
from flytekit.types.directory import FlyteDirectory

from flyte_plugin import dask_task
from workflows.settings import DEMO_ROWS, ETL_CLUSTER, NIGHTLY, data_dir

# "not given": Flyte inputs have no None for datetimes, so the epoch stands for it
NO_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass
class EtlSummary:
    date: str
    rows_read: int
    rows_rejected: int
    rows_written: int
    reject_ratio: float


class EtlOutputs(NamedTuple):
    summary: EtlSummary
    clients: FlyteDirectory      # the day's partition of the clients table


@task
def pick_date(date: str, run_time: dt.datetime) -> str:
    """The day to process: `date` when given, else the day the schedule fired, else today (UTC)."""
    if date:
        return dt.date.fromisoformat(date).isoformat()
    when = run_time if run_time != NO_TIME else dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).date().isoformat()


@task
def demo_drop(date: str, rows: int) -> FlyteDirectory:
    """Stands in for the upstream system that delivers the day's CSV drop (synthetic data)."""
    from daskjob.datasets import write_drop
    files = write_drop(data_dir("raw"), date, rows, seed=0)
    return FlyteDirectory(os.path.dirname(files[0]))


@dask_task(cluster=ETL_CLUSTER, timeout="30m", startup_timeout="5m",
           labels={"pipeline": "nightly"}, enable_deck=True, retries=2)
def etl(drop: FlyteDirectory, date: str, max_reject_ratio: float = 0.05) -> EtlOutputs:
    """Validate, type and publish one day's drop (daskjob.payloads.etl) on this task's cluster."""
    from daskjob.payloads.etl import run

    warehouse = data_dir("warehouse")
    s = run(source=drop.download(), dest=warehouse, date=date, max_reject_ratio=max_reject_ratio)
    summary = EtlSummary(date=s["date"], rows_read=s["rows_read"], rows_rejected=s["rows_rejected"],
                         rows_written=s["rows_written"], reject_ratio=s["reject_ratio"])
    return EtlOutputs(summary=summary,
                      clients=FlyteDirectory(os.path.join(warehouse, "clients", f"date={date}")))


@workflow
def nightly_etl(date: str = "", rows: int = DEMO_ROWS, max_reject_ratio: float = 0.05,
                run_time: dt.datetime = NO_TIME) -> EtlSummary:
    day = pick_date(date=date, run_time=run_time)
    drop = demo_drop(date=day, rows=rows)
    return etl(drop=drop, date=day, max_reject_ratio=max_reject_ratio).summary


nightly_etl_nightly = LaunchPlan.get_or_create(
    workflow=nightly_etl,
    name="nightly_etl_nightly",
    schedule=CronSchedule(schedule=NIGHTLY, kickoff_time_input_arg="run_time"),
    # the schedule picks the day (a backfill runs the workflow itself with --date), and the
    # nightly's reject threshold is not for the caller to loosen
    fixed_inputs={"date": "", "max_reject_ratio": 0.05},
)
