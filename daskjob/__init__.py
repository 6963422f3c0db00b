"""daskjob: run Dask work on an ephemeral cluster that is always torn down.

>>> from daskjob import ClusterSpec, JobSpec, run_job
>>> def total(n, client):
...     return sum(client.gather(client.map(abs, range(-n, n))))
>>> result = run_job(JobSpec(name="total", payload=total, params={"n": 3}, record_dir="runs",
...                          cluster=ClusterSpec(n_workers=1)))
>>> result.value, result.record["status"], result.record["teardown"]["cluster"]
(9, 'succeeded', 'closed')
"""

from .version import __version__  # noqa: E402,F401

from . import config as _config  # noqa: E402,F401  (loads the daskjob dask.config defaults)
from .errors import (JobCancelled, JobFailed, JobTimedOut, SpecError,  # noqa: E402
                     StartupFailed)
from .lifecycle import JobResult, JobRun, run_job  # noqa: E402
from .live import cancel_all, install_signal_handlers  # noqa: E402
from .observe import event  # noqa: E402
from .spec import ClusterSpec, JobSpec  # noqa: E402

__all__ = [
    "ClusterSpec", "JobSpec", "JobRun", "JobResult", "run_job", "event", "cancel_all",
    "install_signal_handlers", "JobFailed", "JobCancelled", "JobTimedOut", "StartupFailed",
    "SpecError",
]
