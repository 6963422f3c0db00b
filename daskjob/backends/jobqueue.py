"""`jobqueue`: workers as batch jobs through dask-jobqueue (Slurm by default; PBS, SGE,
LSF, HTCondor, Moab and OAR by name). The scheduler runs in the driver's process; each
worker is one job (one process of `threads_per_worker` threads).

Only Slurm is exercised for real (a one-node Slurm in tests/test_jobqueue.py). For the
others the names and options are validated and create() builds the matching
dask-jobqueue cluster class, but job labels, failure reasons and the reaper use Slurm's
commands (jobqueue_slurm.py) and are Slurm-only.

How a run is labelled on Slurm, so `daskjob reap --backend jobqueue` finds what a killed
driver left: job name `daskjob-<run id>` and the job comment
`daskjob/run-id=<id>,daskjob/driver=<host_pid_start>,daskjob/started=<unix s>,...`.
Slurm reads SLURM_CONF (and the usual Slurm environment) from the driver's environment.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator, model_validator

from . import jobqueue_slurm as slurm
from .base import Backend, ClusterContext, ClusterHandle, Leftover
from .common import BackendOptions, inherited_config_env, require_extra
from .reap import describe, verdict

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

# scheduler name -> (dask_jobqueue class, options only that system's jobs take)
SCHEDULERS: dict[str, tuple[str, frozenset[str]]] = {
    "slurm": ("SLURMCluster", frozenset({"queue", "account", "walltime", "job_cpu", "job_mem"})),
    "pbs": ("PBSCluster", frozenset({"queue", "account", "walltime", "resource_spec"})),
    "sge": ("SGECluster", frozenset({"queue", "project", "walltime", "resource_spec"})),
    "lsf": ("LSFCluster", frozenset({"queue", "project", "walltime", "ncpus", "mem",
                                     "lsf_units", "use_stdin"})),
    "htcondor": ("HTCondorCluster", frozenset({"disk", "submit_command_extra",
                                               "cancel_command_extra"})),
    "moab": ("MoabCluster", frozenset({"queue", "account", "walltime", "resource_spec"})),
    "oar": ("OARCluster", frozenset({"queue", "project", "walltime", "resource_spec",
                                     "memory_per_core_property_name"})),
}
# Slurm job directives daskjob writes itself (the reaper needs the name and comment)
_OWN_DIRECTIVES = re.compile(r"^\s*(--comment|--job-name|-J\b|--output|-o\b|--error|-e\b)")

MIN_DEATH_TIMEOUT = 10.0  # below this a busy node's worker gives up on a live scheduler
_JOBS_POLL_EVERY = 2.0    # failure_reason asks squeue at most this often while jobs start,
_JOBS_POLL_LATER = 15.0   # and this often once the first minute is over (spare slurmctld)
_RUN_DIR_PREFIX = "daskjob-jobqueue-"
_IMPORT_LOCK = threading.Lock()


def _import_jobqueue():
    # dask_jobqueue.runner installs a SIGINT handler that raises SystemExit when it is
    # imported: the driver would lose Ctrl-C's KeyboardInterrupt (and with it the run's
    # own SIGINT handling), and outside the main thread the import fails outright
    # ("signal only works in main thread"). So SIGINT is left alone while it imports.
    with _IMPORT_LOCK:
        if "dask_jobqueue" in sys.modules:
            return sys.modules["dask_jobqueue"]
        real_signal = signal.signal

        def keep_sigint(signum, handler):
            if signum == signal.SIGINT:
                return signal.getsignal(signum)
            return real_signal(signum, handler)

        signal.signal = keep_sigint
        try:
            return require_extra("dask_jobqueue", "jobqueue", "slurm", "dask-jobqueue")
        finally:
            signal.signal = real_signal


class JobqueueOptions(BackendOptions):
    backend: ClassVar[str] = "jobqueue"
    reserved: ClassVar[frozenset[str]] = frozenset({
        "n_workers", "cores", "memory", "processes", "job_name", "name", "security",
        "scheduler_options", "death_timeout", "nanny", "protocol", "silence_logs",
        "asynchronous", "dashboard_address", "host", "env_extra", "job_extra", "extra",
        "header_skip", "job_cls", "config_name", "worker_command", "preload", "env"})

    scheduler: str = "slurm"
    # every scheduler
    job_extra_directives: list[str] | dict[str, Any] | None = None
    job_script_prologue: list[str] | None = None
    job_directives_skip: list[str] | None = None
    interface: str | None = None
    python: str | None = None
    shared_temp_directory: str | None = None
    log_directory: str | None = None
    local_directory: str | None = None
    worker_extra_args: list[str] | None = None
    # some schedulers (SCHEDULERS says which)
    queue: str | None = None
    account: str | None = None
    project: str | None = None
    walltime: str | None = None
    job_cpu: int | None = None
    job_mem: str | None = None
    resource_spec: str | None = None
    ncpus: int | None = None
    mem: str | None = None
    lsf_units: str | None = None
    use_stdin: bool | None = None
    disk: str | None = None
    submit_command_extra: list[str] | None = None
    cancel_command_extra: list[str] | None = None
    memory_per_core_property_name: str | None = None

    @field_validator("scheduler")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown job scheduler {v!r}; one of {', '.join(SCHEDULERS)}")
        return v

    @model_validator(mode="after")
    def _for_this_scheduler(self):
        own = {k for k, (_, keys) in SCHEDULERS.items() for k in keys}
        given = {k for k in self.model_fields_set if k in own}
        wrong = sorted(given - SCHEDULERS[self.scheduler][1])
        if wrong:
            accepted = sorted((set(self.model_fields) - own) | SCHEDULERS[self.scheduler][1])
            raise ValueError(f"options: {', '.join(wrong)} not accepted by the jobqueue backend "
                             f"with scheduler {self.scheduler!r} (accepted: {', '.join(accepted)})")
        self._check_directives()
        return self

    def _check_directives(self) -> None:
        directives = self.job_extra_directives
        if directives is None:
            return
        if self.scheduler == "htcondor":
            if not isinstance(directives, dict):
                raise ValueError("options.job_extra_directives: HTCondor takes a mapping of "
                                 f"submit-file keys, got {directives!r}")
        elif not isinstance(directives, list):
            raise ValueError("options.job_extra_directives: expected a list of strings "
                             f"(e.g. ['--constraint=ssd']), got {directives!r}")
        elif self.scheduler == "slurm":
            own = [d for d in directives if _OWN_DIRECTIVES.match(d)]
            if own:
                raise ValueError(
                    f"options.job_extra_directives: {', '.join(own)} set by daskjob (the job "
                    "name and comment label the run for the reaper; job output goes to "
                    "options.log_directory or the run's temporary folder)")

    def cluster_kwargs(self) -> dict[str, Any]:
        """The dask-jobqueue keywords given as they are."""
        taken = {"scheduler", "job_extra_directives", "job_script_prologue", "interface",
                 "python", "shared_temp_directory", "log_directory", "worker_extra_args"}
        return {k: getattr(self, k) for k in self.model_fields_set - taken}


@dataclass(eq=False)
class JobqueueHandle(ClusterHandle):
    scheduler: str = "slurm"
    job_cls: Any = None     # the cluster's own Job class: its job ids and submit errors
    run_dir: str = ""       # TLS key files for the workers (and job output by default)
    out_dir: str = ""       # where the jobs write their output
    first_poll: float | None = None
    last_poll: float = 0.0


def _run_dir(base: str | None, run_id: str) -> str:
    return os.path.join(os.path.expanduser(os.path.expandvars(base or tempfile.gettempdir())),
                        _RUN_DIR_PREFIX + run_id)


def _recording_job_class(base: type) -> type:
    """The scheduler's Job class, keeping what each submission did: the job ids (for
    failure_reason and close) and the submit command's error when it fails (SpecCluster
    only logs that)."""

    class RecordingJob(base):
        job_ids: list[str] = []       # replaced by a fresh list per cluster
        submit_errors: list[str] = []

        async def start(self):
            try:
                await super().start()
            except Exception as e:  # sbatch rejected the job: keep its message
                self.submit_errors.append(str(e).strip())
                # SpecCluster's close asserts that every worker it created has ended;
                # one left "created" makes close fail, and a second close then hang
                from distributed.core import Status
                self.status = Status.failed
                raise
            if self.job_id:
                self.job_ids.append(self.job_id)

    RecordingJob.__name__ = RecordingJob.__qualname__ = f"Recording{base.__name__}"
    return RecordingJob


class JobqueueBackend(Backend):
    name = "jobqueue"
    can_adapt = True
    why_not = "each run's workers are one batch job class; use a second job for other resources"
    Options = JobqueueOptions
    # the scheduler talks to workers on other machines: TLS unless told otherwise
    tls_by_default = True
    shares_filesystem = False

    def validate(self, spec: "ClusterSpec") -> None:
        _import_jobqueue()
        super().validate(spec)

    # -------------------------------------------------------------------- create
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> JobqueueHandle:
        from distributed.security import Security
        opts = self.options(spec)
        cluster_cls = getattr(_import_jobqueue(), SCHEDULERS[opts.scheduler][0])
        memory = spec.memory_bytes or 2**30
        if opts.scheduler == "slurm":
            left = ctx.startup_deadline - time.monotonic() if ctx.startup_deadline else None
            slurm.check_fits(opts.queue, memory, opts.job_cpu or spec.threads_per_worker,
                             timeout=max(1.0, min(slurm.SLURM_TIMEOUT, left or slurm.SLURM_TIMEOUT)))
        # one folder per run for the TLS key files dask-jobqueue writes for the workers
        # and (unless log_directory is set) the jobs' output; it must be visible from the
        # nodes (shared_temp_directory on a real cluster). A SIGKILLed driver leaves it:
        # the reaper removes it with the run's jobs.
        run_dir = _run_dir(opts.shared_temp_directory, ctx.run_id)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        out_dir = opts.log_directory or run_dir
        os.makedirs(out_dir, exist_ok=True)
        job_cls = _recording_job_class(cluster_cls.job_cls)
        job_cls.job_ids, job_cls.submit_errors = [], []
        cluster = cluster_cls(
            n_workers=0, job_cls=job_cls, name=f"daskjob-{ctx.run_id}",
            job_name=f"daskjob-{ctx.run_id}", cores=spec.threads_per_worker, processes=1,
            memory=memory, python=opts.python or sys.executable,
            death_timeout=max(spec.death_timeout_s, MIN_DEATH_TIMEOUT),
            job_script_prologue=_environment_lines(ctx) + list(opts.job_script_prologue or []),
            security=Security.temporary() if self.uses_tls(spec) else None,
            shared_temp_directory=run_dir, interface=opts.interface,
            **_network(spec, opts), **_directives(opts, ctx, run_dir, out_dir),
            **opts.cluster_kwargs())
        # Deliberately no scheduler idle_timeout: it would close a connected, idle cluster.
        return JobqueueHandle(cluster=cluster, scheduler=opts.scheduler, job_cls=job_cls,
                              run_dir=run_dir, out_dir=out_dir)

    # ------------------------------------------------------------------- health
    def failure_reason(self, handle: JobqueueHandle) -> str | None:
        if handle.verdict:
            return handle.verdict
        job_cls = handle.job_cls
        if job_cls.submit_errors and not job_cls.job_ids:
            handle.verdict = ("the job scheduler refused the worker jobs:\n"
                              + slurm.short(job_cls.submit_errors[0]))
            return handle.verdict
        if handle.scheduler != "slurm" or not job_cls.job_ids:
            return None
        now = time.monotonic()
        handle.first_poll = handle.first_poll or now
        every = _JOBS_POLL_EVERY if now - handle.first_poll < 60 else _JOBS_POLL_LATER
        if now - handle.last_poll < every:
            return None
        handle.last_poll = now
        handle.verdict = slurm.ended_verdict(list(job_cls.job_ids), handle.out_dir)
        return handle.verdict

    def startup_note(self, handle: JobqueueHandle) -> str | None:
        if handle.scheduler != "slurm" or not handle.job_cls.job_ids:
            return None
        return slurm.pending_note(list(handle.job_cls.job_ids))

    def snapshot_logs(self, handle: JobqueueHandle, logs_dir: str) -> list[str]:
        """The jobs' own output (sbatch --output) into the run record as
        slurm-job-<id>.out; copied again after close, when the jobs have ended."""
        handle.logs_dir = logs_dir
        return _keep_outputs(handle)

    # -------------------------------------------------------------------- close
    def shut_down(self, handle: JobqueueHandle, timeout: float) -> None:
        try:
            handle.cluster.close(timeout=timeout)
        finally:
            # jobs the cluster no longer tracks (a worker spec removed while its job pended)
            if handle.scheduler == "slurm" and handle.job_cls.job_ids:
                slurm.cancel(list(handle.job_cls.job_ids), timeout)
            _keep_outputs(handle)
            # the workers' key files: dask-jobqueue keeps them open on the cluster
            for attr, value in list(vars(handle.cluster).items()):
                if attr.startswith("_job_") and hasattr(value, "close"):
                    with contextlib.suppress(OSError):
                        value.close()
            shutil.rmtree(handle.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------- reaper
    def find_leftovers(self, spec: "ClusterSpec", older_than: float | None) -> list[Leftover]:
        if self.options(spec).scheduler != "slurm":
            logger.warning("jobqueue reaper: only Slurm jobs are looked for; look for jobs "
                           "named daskjob-<run id> with your scheduler's tools")
            return []
        found = []
        for job in slurm.labelled_jobs():
            judged = verdict(job.labels, older_than=older_than, started=job.submitted)
            if judged.leftover:
                found.append(Leftover(
                    backend=self.name, run_id=job.labels["daskjob/run-id"], name=job.job_id,
                    age_s=None if job.submitted is None else time.time() - job.submitted,
                    detail=(f"Slurm job {job.job_id} {job.name} ({job.state}, user "
                            f"{job.user}); driver {describe(job.labels)}: {judged.why}"),
                    handle={"job_id": job.job_id, "run_id": job.labels["daskjob/run-id"]}))
        return found

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        job = (leftover.handle or {}).get("job_id", leftover.name)
        proc = slurm.slurm(["scancel", str(job)])
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise RuntimeError(f"scancel {job} failed: {proc.stderr.strip()}")
        # the killed run's TLS key files, if they are on this machine
        shutil.rmtree(_run_dir(self.options(spec).shared_temp_directory, leftover.run_id),
                      ignore_errors=True)


def _environment_lines(ctx: ClusterContext) -> list[str]:
    """The job inherits the submitting environment (sbatch --export=ALL): take out what
    the run drops, then set what every worker must carry (the run's labels, its config)."""
    dropped = sorted(n for n in os.environ if any(fnmatch.fnmatchcase(n, p) for p in ctx.drop_env))
    env = {**ctx.worker_env, **inherited_config_env(ctx.worker_config)}
    return ([f"unset {name}" for name in dropped]
            + [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()])


def _network(spec: "ClusterSpec", opts: JobqueueOptions) -> dict[str, Any]:
    scheduler_options: dict[str, Any] = {
        "port": 0, "dashboard_address": "127.0.0.1:0" if spec.dashboard else None}
    worker_args = list(opts.worker_extra_args or [])
    if opts.interface:
        # workers on other machines: scheduler and workers on that network interface
        scheduler_options["interface"] = opts.interface
        if spec.dashboard:
            scheduler_options["dashboard_address"] = ":0"
    else:
        # no interface: everything on loopback, which is right only when the jobs run
        # on this machine (a one-node Slurm, a laptop); a real cluster sets `interface`
        scheduler_options["host"] = "127.0.0.1"
        worker_args += ["--host", "127.0.0.1"]
    for path in spec.preload:
        worker_args += ["--preload", path]
    return {"scheduler_options": scheduler_options, "worker_extra_args": worker_args}


def _directives(opts: JobqueueOptions, ctx: ClusterContext, run_dir: str,
                out_dir: str) -> dict[str, Any]:
    directives = opts.job_extra_directives
    if opts.scheduler == "slurm":
        labels = {k: v for k, v in ctx.labels.items() if k in (
            "daskjob/driver", "daskjob/started", "daskjob/expires", "daskjob/name")}
        directives = [f"--comment={slurm.comment({'daskjob/run-id': ctx.run_id, **labels})}",
                      f"--output={os.path.join(out_dir, 'job-%j.out')}", *(directives or [])]
        return {"job_extra_directives": directives}
    kwargs: dict[str, Any] = {"job_extra_directives": directives if directives is not None
                              else {} if opts.scheduler == "htcondor" else []}
    if out_dir != run_dir:
        kwargs["log_directory"] = out_dir
    return kwargs


def _keep_outputs(handle: JobqueueHandle) -> list[str]:
    written = []
    if not handle.logs_dir or not os.path.isdir(handle.logs_dir):
        return written
    for job in list(handle.job_cls.job_ids):
        src = os.path.join(handle.out_dir, f"job-{job}.out")
        dst = os.path.join(handle.logs_dir, f"slurm-job-{job}.out")
        if os.path.exists(src):
            with contextlib.suppress(OSError):
                shutil.copy(src, dst)
                written.append(dst)
    return written
