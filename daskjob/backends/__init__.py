"""Backend registry: one small module per cluster manager.

A backend turns a ClusterSpec into a running Dask cluster and knows how to grow it,
how to tell that its workers failed, and how to stop it. Third parties register more
through the `daskjob.backends` entry point group (value: "module:BackendClass").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "daskjob.backends"


@dataclass
class Leftover:
    """A cluster (or job, or resource) a run left behind, as a backend's reaper sees it."""

    backend: str
    run_id: str
    name: str              # what the cluster manager calls it: job id, cluster name, ...
    age_s: float | None    # None when the manager does not say
    detail: str = ""
    handle: Any = None     # whatever stop_leftover needs


@dataclass
class ClusterContext:
    """What a backend needs to know about the run it provisions for."""

    run_id: str
    # the run's labels plus daskjob/driver and daskjob/started (see procs.driver_labels):
    # put them wherever the cluster manager keeps labels, so the reaper can find them
    labels: dict[str, str]
    # environment for worker processes: ClusterSpec.env plus the run's identity labels
    worker_env: dict[str, str] = field(default_factory=dict)
    drop_env: list[str] = field(default_factory=list)
    # dask config for worker processes (nested dict), over what they would read otherwise
    worker_config: dict[str, Any] = field(default_factory=dict)
    # time.monotonic() at which the run gives up starting: a backend whose create() waits
    # gives up a little earlier, cleans up, and says why
    startup_deadline: float | None = None
    # True once the run is cancelled (a create() that waits stops waiting)
    is_cancelled: Callable[[], bool] = lambda: False


class Backend:
    """Base class. Subclasses set `name` and implement `create`."""

    name: ClassVar[str]
    # False for a borrowed scheduler: the client closes, the cluster is never shut down
    owns_cluster: ClassVar[bool] = True
    # True when workers see the driver's filesystem (payload code by path, not by value)
    shares_filesystem: ClassVar[bool] = False
    # options keys that ClusterSpec fields already control
    reserved_options: ClassVar[frozenset[str]] = frozenset()
    # TLS when ClusterSpec.tls is None: on for backends whose processes talk over a network
    tls_by_default: ClassVar[bool] = False

    def uses_tls(self, spec: "ClusterSpec") -> bool:
        return self.tls_by_default if spec.tls is None else spec.tls

    def validate(self, spec: "ClusterSpec") -> None:
        """Raise ValueError naming the field when the spec cannot work on this backend."""
        if spec.address is not None:
            raise ValueError(f"address: only the 'address' backend takes a scheduler address "
                             f"(backend is {self.name!r})")
        clash = self.reserved_options & set(spec.options)
        if clash:
            raise ValueError(f"options: {', '.join(sorted(clash))} set by ClusterSpec fields "
                             "(n_workers, threads_per_worker, memory_per_worker, env, dashboard); "
                             "use those instead")

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        """Start the scheduler (workers come with `scale`). Returns a Cluster object."""
        raise NotImplementedError

    def expected_workers(self, spec: "ClusterSpec") -> int:
        """How many workers must be up before the payload starts."""
        return spec.n_workers

    def scale(self, cluster: Any, n: int) -> None:
        cluster.scale(n)

    def client_target(self, cluster: Any) -> Any:
        """What to hand to distributed.Client: the cluster itself or an address."""
        return cluster

    def failure_reason(self, cluster: Any) -> str | None:
        """Why the workers cannot start, once that is certain (None: no verdict yet)."""
        return None

    def dashboard_link(self, cluster: Any) -> str | None:
        return getattr(cluster, "dashboard_link", None)

    def startup_note(self, cluster: Any) -> str | None:
        """When workers did not all arrive in time: what the cluster manager says about
        them (a batch job still pending, and why), for the error message."""
        return None

    def stop_restarts(self, cluster: Any) -> None:
        """The run is ending: workers that die from now on are not replaced. Called from
        signal handlers (must only set flags)."""

    def snapshot_logs(self, cluster: Any, logs_dir: str) -> list[str]:
        """Before teardown: copy into logs_dir the logs only the cluster manager keeps
        (pod logs, batch job output), which are gone after it. Returns the files written."""
        return []

    def process_ids(self, cluster: Any) -> list[int]:
        """Pids of processes this machine runs for the cluster (killed if close fails)."""
        return []

    def close(self, cluster: Any, timeout: float) -> None:
        cluster.close(timeout=timeout)

    # -- reaper: clusters left by killed runs (`daskjob reap --backend NAME`) --

    def find_leftovers(self, spec: "ClusterSpec", older_than: float) -> list[Leftover]:
        """Clusters labelled by daskjob whose driver is gone (or runs on another host and
        they are at least `older_than` seconds old). `spec` says how to reach the
        cluster manager. Processes on this machine are found by daskjob.reap itself."""
        return []

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        raise NotImplementedError(f"backend {self.name!r} cannot stop {leftover.name}")


_REGISTRY: dict[str, type[Backend]] = {}
_entry_points_loaded = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add a backend class. Refuses a second, different class under the same name."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"backend {cls.name!r} is already registered by "
                         f"{existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception:  # a broken plugin must not break every other backend
            logger.warning("could not load daskjob backend %r from %s", ep.name, ep.value,
                           exc_info=True)
            continue
        if getattr(cls, "name", None) != ep.name:
            logger.warning("entry point %r names class %s whose name is %r; skipped",
                           ep.name, ep.value, getattr(cls, "name", None))
            continue
        register_backend(cls)


def backend_names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    _load_entry_points()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backend_names())}") from None


# built-in backends register themselves on import; each imports its cluster manager's
# library (an optional extra) only when it is used
from . import address as _address  # noqa: E402,F401
from . import gateway as _gateway  # noqa: E402,F401
from . import jobqueue as _jobqueue  # noqa: E402,F401
from . import kubernetes as _kubernetes  # noqa: E402,F401
from . import local as _local  # noqa: E402,F401
from . import ssh as _ssh  # noqa: E402,F401
