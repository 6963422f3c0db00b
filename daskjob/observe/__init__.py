"""Seeing what a run's workers did: structured events and log lines, live and kept.

One module per process that runs its code: `worker` (in every worker), `scheduler` (in
the scheduler), `collector` (in the driver); `events` holds the topics and `event()`.
"""

from .events import LIFECYCLE_TOPIC, display_name, event, is_dask_internal

__all__ = ["event", "is_dask_internal", "display_name", "LIFECYCLE_TOPIC"]
