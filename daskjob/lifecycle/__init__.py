"""The lifecycle of a run: `run` drives it, one screen, over one module per step:
`provision` (cluster, client, observers, workers, health), `payload` (callable or
script), `snapshot` (what is kept before teardown), `teardown` (releases in reverse),
`outcome` (status, errors, records), `state` (where a run is)."""

from .outcome import new_run_id, write_rejected_record
from .run import JobResult, JobRun, run_job

__all__ = ["JobRun", "JobResult", "run_job", "new_run_id", "write_rejected_record"]
