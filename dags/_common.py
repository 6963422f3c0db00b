"""Settings shared by the example DAGs: where data and run records live, which cluster.

Each DAG takes its cluster from the `dask_default` connection (or the one named in
DASKJOB_CONN_ID): move every DAG to another backend by editing that connection only.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("DASKJOB_DATA_DIR", os.path.join(REPO, "data"))
RAW = os.path.join(DATA, "raw")
WAREHOUSE = os.path.join(DATA, "warehouse")
MODELS = os.path.join(DATA, "models")
RECORDS = os.environ.get("DASKJOB_RECORD_DIR", os.path.join(REPO, "runs"))
CONN_ID = os.environ.get("DASKJOB_CONN_ID", "dask_default")
DEMO_ROWS = int(os.environ.get("DASKJOB_DEMO_ROWS", "100000"))
# The size of tpot_search's search: rows sampled, time budget, pipelines per generation
# and (unset: as many as the budget allows) generations. Smaller for a quick try-out.
TPOT_BUDGET = {
    "max_rows": int(os.environ.get("DASKJOB_TPOT_ROWS", "5000")),
    "max_time_mins": float(os.environ.get("DASKJOB_TPOT_MINUTES", "0.5")),
    "population_size": int(os.environ.get("DASKJOB_TPOT_POPULATION", "8")),
    "generations": (int(os.environ["DASKJOB_TPOT_GENERATIONS"])
                    if os.environ.get("DASKJOB_TPOT_GENERATIONS") else None),
}

START = pendulum.datetime(2026, 11, 1, tz="UTC")
NIGHTLY = "0 2 * * *"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=5)}
