"""Nightly AutoML as a Flyte workflow: the day's ETL, then a short TPOT search on the clients
table it produced, each on a Dask cluster of its own; the workflow returns the best
pipeline's holdout score.

    pyflyte run workflows/tpot_search.py tpot_search --date 2026-11-20
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import NamedTuple

from flytekit import CronSchedule, LaunchPlan, task, workflow
from flytekit.types.directory import FlyteDirectory

from flyte_plugin import dask_task
from workflows.nightly_etl import NO_TIME, demo_drop, etl, pick_date
from workflows.settings import DEMO_ROWS, NIGHTLY, SEARCH_CLUSTER, data_dir


@dataclass
class SearchResult:
    scoring: str
    best_score: float            # cross-validated, on the training split
    holdout_score: float         # on rows the search never saw
    pipeline: str
    n_evaluated: int


class SearchOutputs(NamedTuple):
    result: SearchResult
    model: FlyteDirectory        # pipeline.joblib, leaderboard.csv, best_pipeline.txt


@dask_task(cluster=SEARCH_CLUSTER, timeout="15m", startup_timeout="5m",
           labels={"pipeline": "nightly"}, enable_deck=True)
def search(clients: FlyteDirectory, date: str, max_time_mins: float = 0.5,
           generations: int = 0, population_size: int = 8, max_rows: int = 5000) -> SearchOutputs:
    """TPOT search (daskjob.payloads.tpot_search) for the target `y` on this task's cluster.

    `generations` 0 means "as many as `max_time_mins` allows".
    """
    from daskjob.payloads.tpot_search import run

    output = data_dir("models", date)
    r = run(data=clients.download(), target="y", output=output, drop_columns=["subscribed"],
            max_rows=max_rows, scoring="balanced_accuracy", cv=3, max_time_mins=max_time_mins,
            generations=generations or None, population_size=population_size, random_state=0)
    result = SearchResult(scoring=r["scoring"], best_score=float(r["best_score"]),
                          holdout_score=float(r["holdout_score"]), pipeline=r["pipeline"],
                          n_evaluated=int(r["n_evaluated"]))
    return SearchOutputs(result=result, model=FlyteDirectory(os.path.abspath(output)))


@task
def best_score(result: SearchResult) -> float:
    return result.holdout_score


@workflow
def tpot_search(date: str = "", rows: int = DEMO_ROWS, max_time_mins: float = 0.5,
                generations: int = 0, population_size: int = 8,
                run_time: dt.datetime = NO_TIME) -> float:
    day = pick_date(date=date, run_time=run_time)
    drop = demo_drop(date=day, rows=rows)
    tables = etl(drop=drop, date=day)
    found = search(clients=tables.clients, date=day, max_time_mins=max_time_mins,
                   generations=generations, population_size=population_size)
    return best_score(result=found.result)


tpot_search_nightly = LaunchPlan.get_or_create(
    workflow=tpot_search,
    name="tpot_search_nightly",
    schedule=CronSchedule(schedule=NIGHTLY, kickoff_time_input_arg="run_time"),
    fixed_inputs={"date": ""},
)
