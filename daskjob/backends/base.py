"""What every backend is: a small class over the library made for its cluster manager.

A backend turns a ClusterSpec into a running cluster and hands the run a ClusterHandle:
the cluster manager's object plus what daskjob keeps about it (closed or not, the
verdict on its workers, the record's logs folder). Backends keep their own state on a
subclass of the handle, never as attributes of another library's objects.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..groups import GroupPlan
from .adaptive import GroupAdaptive, stop_adaptives
from .common import BackendOptions

if TYPE_CHECKING:
    from ..spec import ClusterSpec


@dataclass
class ClusterContext:
    """What a backend needs to know about the run it provisions for."""

    run_id: str
    # the run's labels plus daskjob/driver, daskjob/started and daskjob/expires (see
    # procs.driver_labels): put them wherever the cluster manager keeps labels, so the
    # reaper can find them
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


@dataclass(eq=False)
class ClusterHandle:
    """A run's cluster, as the run holds it."""

    cluster: Any
    # False for a borrowed scheduler: the run never closes it nor touches its workers
    owned: bool = True
    closed: bool = False
    # why the cluster's workers cannot run, once that is certain (kept: asked often)
    verdict: str | None = None
    # the run record's logs/ folder, once the snapshot has named it: logs the cluster
    # manager keeps are copied there (again at close, with the processes' last words)
    logs_dir: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # the worker groups (the default one first), as the run asked for them
    groups: list[GroupPlan] = field(default_factory=list)
    # the Adaptive objects sizing groups that adapt, and what they tell of each change
    adaptives: list[Any] = field(default_factory=list)
    on_scale: Callable[[str, int, int], Any] = lambda group, before, after: None


@dataclass
class Leftover:
    """A cluster (or job, or process group) a run left behind, as a reaper sees it."""

    backend: str
    run_id: str
    name: str              # what the cluster manager calls it: job id, cluster name, ...
    age_s: float | None    # None when nothing says
    detail: str = ""
    handle: Any = None     # whatever stop_leftover needs


class Backend:
    """Base class. Subclasses set `name` (and `Options`) and implement `create`."""

    name: ClassVar[str]
    # the backend's `ClusterSpec.options`, validated before anything starts
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    # the `ClusterSpec.secrets` a backend reads, when it reads any: others are refused
    secret_names: ClassVar[frozenset[str] | None] = None
    # True when workers see the driver's filesystem (payload code by path, not by value)
    shares_filesystem: ClassVar[bool] = False
    # TLS when ClusterSpec.tls is None: on for backends whose processes talk over a network
    tls_by_default: ClassVar[bool] = False
    # what the backend can build (ClusterSpec.adapt, a group's adapt; worker_groups):
    # a spec asking for more is refused when it is built, naming the backend and the key
    can_adapt: ClassVar[bool] = False
    can_group: ClassVar[bool] = False
    # why not, when it cannot (said in the refusal)
    why_not: ClassVar[str] = ""
    # the keys a worker group's `options` may have on this backend
    group_options: ClassVar[frozenset[str]] = frozenset()

    def uses_tls(self, spec: "ClusterSpec") -> bool:
        return self.tls_by_default if spec.tls is None else spec.tls

    def options(self, spec: "ClusterSpec") -> Any:
        """`spec.options` as this backend's Options model (validated)."""
        return self.Options.parse(spec.options)

    def validate(self, spec: "ClusterSpec") -> None:
        """Raise ValueError naming the field when the spec cannot work on this backend."""
        if spec.address is not None:
            raise ValueError(f"address: only the 'address' backend takes a scheduler address "
                             f"(backend is {self.name!r})")
        unknown = sorted(set(spec.secrets) - (self.secret_names or set(spec.secrets)))
        if unknown:
            raise ValueError(f"secrets: {', '.join(unknown)} not used by the {self.name!r} "
                             f"backend (it reads: {', '.join(sorted(self.secret_names or ()))})")
        self.options(spec)
        self.validate_groups(spec)

    def validate_groups(self, spec: "ClusterSpec") -> None:
        """Refuse sizes and groups this backend cannot build; check each group's options."""
        why = f" ({self.why_not})" if self.why_not else ""
        if spec.adapt is not None and not self.can_adapt:
            raise ValueError(f"adapt: the {self.name!r} backend cannot scale adaptively{why}; "
                             "give n_workers instead")
        if spec.resources and not self.can_group:
            raise ValueError(f"resources: the {self.name!r} backend does not give its workers "
                             f"Dask resources{why}")
        if spec.worker_groups and not self.can_group:
            raise ValueError(f"worker_groups: the {self.name!r} backend has one group of "
                             f"workers only{why}")
        for name, group in spec.worker_groups.items():
            if group.adapt is not None and not self.can_adapt:
                raise ValueError(f"worker_groups.{name}.adapt: the {self.name!r} backend "
                                 f"cannot scale adaptively{why}; give n_workers instead")
            self.check_group_options(name, group.options)

    def check_group_options(self, group: str, options: dict[str, Any]) -> None:
        """A group's backend-specific options (ValueError naming the key when wrong):
        only `group_options` are taken; subclasses check their values."""
        unknown = sorted(set(options) - self.group_options)
        if not unknown:
            return
        if not self.group_options:
            raise ValueError(f"worker_groups.{group}.options: the {self.name!r} backend takes "
                             f"no options per group (got {', '.join(unknown)})")
        raise ValueError(f"worker_groups.{group}.options: {', '.join(unknown)} not accepted "
                         f"(groups on the {self.name!r} backend take "
                         f"{' and '.join(sorted(self.group_options))})")

    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> ClusterHandle:
        """Start the scheduler (workers come with `scale`)."""
        raise NotImplementedError

    def expected_workers(self, spec: "ClusterSpec") -> int:
        """How many workers must be up before the payload starts: every group's fixed
        size or adaptive minimum."""
        return sum(g.at_start for g in spec.group_plans())

    def scale(self, handle: ClusterHandle, n: int) -> None:
        """Start the workers: `n` when the default group is fixed, else Dask's Adaptive
        between its minimum and maximum (a SpecCluster's; other backends override)."""
        default = handle.groups[0] if handle.groups else None
        if default is None or default.adapt is None:
            handle.cluster.scale(n)
        else:
            handle.adaptives.append(GroupAdaptive(handle.cluster, default, handle.on_scale,
                                                  **default.adapt.adapt_kwargs()))

    def client_target(self, handle: ClusterHandle) -> Any:
        """What to hand to distributed.Client: the cluster itself or an address."""
        return handle.cluster

    def failure_reason(self, handle: ClusterHandle) -> str | None:
        """Why the workers cannot start, once that is certain (None: no verdict yet)."""
        return None

    def dashboard_link(self, handle: ClusterHandle) -> str | None:
        return getattr(handle.cluster, "dashboard_link", None)

    def startup_note(self, handle: ClusterHandle) -> str | None:
        """When workers did not all arrive in time: what the cluster manager says about
        them (a batch job still pending, and why), for the error message."""
        return None

    def stop_restarts(self, handle: ClusterHandle) -> None:
        """The run is ending: workers that die from now on are not replaced, and groups
        that adapt stop scaling. Called from signal handlers (must only set flags)."""
        for adaptive in list(handle.adaptives):
            adaptive.halted = True

    def snapshot_logs(self, handle: ClusterHandle, logs_dir: str) -> list[str]:
        """Before teardown: copy into logs_dir the logs only the cluster manager keeps
        (pod logs, batch job output), which are gone after it. Returns the files written."""
        handle.logs_dir = logs_dir
        return []

    def process_ids(self, handle: ClusterHandle) -> list[int]:
        """Pids of processes this machine runs for the cluster (killed if close fails)."""
        return []

    def close(self, handle: ClusterHandle, timeout: float) -> None:
        """Shut the cluster down. Closing twice is harmless; after a failed close, a
        second one tries again."""
        with handle.lock:
            if handle.closed or not handle.owned:
                return
            stop_adaptives(handle.adaptives, getattr(handle.cluster, "loop", None))
            self.shut_down(handle, timeout)
            handle.closed = True

    def shut_down(self, handle: ClusterHandle, timeout: float) -> None:
        handle.cluster.close(timeout=timeout)

    # -- reaper: clusters left by killed runs (`daskjob reap --backend NAME`) --

    def find_leftovers(self, spec: "ClusterSpec", older_than: float | None) -> list[Leftover]:
        """Clusters labelled by daskjob that the reap rule (backends/reap.py) calls
        leftovers. `spec` says how to reach the cluster manager. Processes on this
        machine are found by daskjob.reap itself."""
        return []

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        raise NotImplementedError(f"backend {self.name!r} cannot stop {leftover.name}")
