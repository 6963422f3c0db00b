"""A module only the driver can import (bench/soak.py's "cannot be imported on workers"
fault): in a process that multiprocessing started (a local worker), importing it fails,
as a module missing from a worker's image would."""

import multiprocessing

if multiprocessing.parent_process() is not None:
    raise ImportError("soak_driver_only is not installed on this worker")


def twice(x: int) -> int:
    return 2 * x
