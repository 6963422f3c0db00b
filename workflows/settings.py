"""Where the example workflows keep their data, read when a task runs (not at import), so
the same workflow file serves `pyflyte run`, tests and a task pod.

DASKJOB_DATA_DIR   data root: raw/ drops, warehouse/ tables, models/ (default: <repo>/data)
DASKJOB_DEMO_ROWS  rows of the synthetic daily drop (default 100000)

Run records go where daskjob puts them by default: `runs/` under the current folder, or
the `daskjob.record-dir` setting (DASKJOB__RECORD_DIR).

The clusters name only what the work needs; the rest (backend, number of workers: 2)
comes from the daskjob config where the task runs, so moving every workflow to another
backend or size is configuration (DASKJOB__CLUSTER__N_WORKERS=4, a dask config YAML),
not code.
"""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIGHTLY = "0 2 * * *"
DEMO_ROWS = int(os.environ.get("DASKJOB_DEMO_ROWS", "100000"))

ETL_CLUSTER = {"threads_per_worker": 1, "memory_per_worker": "1GiB"}
SEARCH_CLUSTER = {"threads_per_worker": 1, "memory_per_worker": "1GiB"}


def data_dir(*parts: str) -> str:
    return os.path.join(os.environ.get("DASKJOB_DATA_DIR", os.path.join(REPO, "data")), *parts)
