"""`jobqueue`: workers as batch jobs through dask-jobqueue (Slurm by default; PBS, SGE,
LSF, HTCondor, Moab and OAR by name). The scheduler runs in the driver's process; each
worker is one job (one process of `threads_per_worker` threads).

Only Slurm is exercised for real (a one-node Slurm in tests/test_jobqueue.py). For the
others the names and options are validated and create() builds the matching
dask-jobqueue cluster class, but job labels, failure reasons and the reaper use Slurm's
commands (sbatch/squeue/scancel) and are Slurm-only.

How a run is labelled on Slurm, so `daskjob reap --backend jobqueue` finds what a killed
driver left: job name `daskjob-<run id>` and the job comment
`daskjob/run-id=<id>,daskjob/driver=<host_pid_start>,daskjob/started=<unix s>`.
Slurm reads SLURM_CONF (and the usual Slurm environment) from the driver's environment.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from . import Backend, ClusterContext, Leftover, register_backend

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'daskjob[slurm]'"

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

# options every scheduler takes
COMMON_OPTIONS = frozenset({
    "scheduler", "job_extra_directives", "job_script_prologue", "job_directives_skip",
    "interface", "python", "shared_temp_directory", "log_directory", "local_directory",
    "worker_extra_args",
})

_STRING_LIST_OPTIONS = ("job_script_prologue", "job_directives_skip", "worker_extra_args")
_STRING_OPTIONS = ("queue", "account", "project", "walltime", "interface", "python",
                   "shared_temp_directory", "log_directory", "local_directory",
                   "resource_spec", "job_mem", "mem", "disk", "lsf_units")

# Slurm job directives daskjob writes itself (the reaper needs the name and comment)
_OWN_DIRECTIVES = re.compile(r"^\s*(--comment|--job-name|-J\b|--output|-o\b|--error|-e\b)")

MIN_DEATH_TIMEOUT = 10.0  # below this a busy node's worker gives up on a live scheduler
_JOBS_POLL_EVERY = 2.0    # failure_reason asks squeue at most this often while jobs start,
_JOBS_POLL_LATER = 15.0   # and this often once the first minute is over (spare slurmctld)
_SLURM_TIMEOUT = 20.0     # seconds for one squeue/sinfo/scancel call
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
            import dask_jobqueue
        except ImportError:
            raise ValueError("backend 'jobqueue' needs dask-jobqueue: " + EXTRA_HINT) from None
        finally:
            signal.signal = real_signal
        return dask_jobqueue


def _run_dir(base: str | None, run_id: str) -> str:
    return os.path.join(os.path.expanduser(os.path.expandvars(base or tempfile.gettempdir())),
                        _RUN_DIR_PREFIX + run_id)


def _slurm(args: list[str], timeout: float = _SLURM_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _comment(labels: dict[str, str]) -> str:
    # Slurm's comment is free text; keep it to key=value pairs without separators in them
    return ",".join(f"{k}={v}" for k, v in labels.items()
                    if not re.search(r"[,=\s\"']", f"{k}{v}"))


def _parse_comment(comment: str) -> dict[str, str]:
    out = {}
    for part in comment.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


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


@register_backend
class JobqueueBackend(Backend):
    name = "jobqueue"
    # the scheduler talks to workers on other machines: TLS unless told otherwise
    tls_by_default = True
    shares_filesystem = False
    reserved_options = frozenset({
        "n_workers", "cores", "memory", "processes", "job_name", "name", "security",
        "scheduler_options", "death_timeout", "nanny", "protocol", "silence_logs",
        "asynchronous", "dashboard_address", "host", "env_extra", "job_extra", "extra",
        "header_skip", "job_cls", "config_name", "worker_command", "preload", "env",
    })

    # ------------------------------------------------------------------ validate
    def validate(self, spec: "ClusterSpec") -> None:
        super().validate(spec)
        _import_jobqueue()
        options = spec.options
        scheduler = options.get("scheduler", "slurm")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"options.scheduler: unknown job scheduler {scheduler!r}; one of "
                             f"{', '.join(SCHEDULERS)}")
        accepted = COMMON_OPTIONS | SCHEDULERS[scheduler][1]
        unknown = set(options) - accepted - self.reserved_options
        if unknown:
            raise ValueError(
                f"options: {', '.join(sorted(unknown))} not accepted by the jobqueue backend "
                f"with scheduler {scheduler!r}; accepted: {', '.join(sorted(accepted))}")
        for key in _STRING_OPTIONS:
            if key in options and not isinstance(options[key], str):
                raise ValueError(f"options.{key}: expected a string, got {options[key]!r}")
        for key in _STRING_LIST_OPTIONS:
            value = options.get(key)
            if value is not None and not (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)):
                raise ValueError(f"options.{key}: expected a list of strings, got {value!r}")
        directives = options.get("job_extra_directives")
        if directives is not None:
            if scheduler == "htcondor":
                if not isinstance(directives, dict):
                    raise ValueError("options.job_extra_directives: HTCondor takes a mapping "
                                     f"of submit-file keys, got {directives!r}")
            elif not (isinstance(directives, list) and all(isinstance(v, str) for v in directives)):
                raise ValueError("options.job_extra_directives: expected a list of strings "
                                 f"(e.g. ['--constraint=ssd']), got {directives!r}")
            elif scheduler == "slurm":
                own = [d for d in directives if _OWN_DIRECTIVES.match(d)]
                if own:
                    raise ValueError(
                        f"options.job_extra_directives: {', '.join(own)} set by daskjob (the job "
                        "name and comment label the run for the reaper; job output goes to "
                        "options.log_directory or the run's temporary folder)")
        if spec.threads_per_worker < 1:  # pragma: no cover - ClusterSpec refuses it already
            raise ValueError("threads_per_worker: must be at least 1")

    # -------------------------------------------------------------------- create
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        import dask.config
        from distributed.security import Security

        dask_jobqueue = _import_jobqueue()
        options = dict(spec.options)
        scheduler = options.pop("scheduler", "slurm")
        cluster_cls = getattr(dask_jobqueue, SCHEDULERS[scheduler][0])
        memory = spec.memory_bytes or 2**30
        if scheduler == "slurm":
            left = (ctx.startup_deadline - time.monotonic()
                    if getattr(ctx, "startup_deadline", None) else _SLURM_TIMEOUT)
            self._check_fits(options.get("queue"), memory, options.get("job_cpu")
                             or spec.threads_per_worker,
                             timeout=max(1.0, min(_SLURM_TIMEOUT, left)))

        # one folder per run for the TLS key files dask-jobqueue writes for the workers
        # and (unless log_directory is set) the jobs' output; it must be visible from the
        # nodes (shared_temp_directory on a real cluster). A SIGKILLed driver leaves it:
        # the reaper removes it with the run's jobs.
        run_dir = _run_dir(options.pop("shared_temp_directory", None), ctx.run_id)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        out_dir = options.pop("log_directory", None) or run_dir
        os.makedirs(out_dir, exist_ok=True)

        interface = options.pop("interface", None)
        scheduler_options: dict[str, Any] = {
            "port": 0, "dashboard_address": "127.0.0.1:0" if spec.dashboard else None}
        worker_args = list(options.pop("worker_extra_args", None) or [])
        if interface:
            # workers on other machines: scheduler and workers on that network interface
            scheduler_options["interface"] = interface
            if spec.dashboard:
                scheduler_options["dashboard_address"] = ":0"
        else:
            # no interface: everything on loopback, which is right only when the jobs run
            # on this machine (a one-node Slurm, a laptop); a real cluster sets `interface`
            scheduler_options["host"] = "127.0.0.1"
            worker_args += ["--host", "127.0.0.1"]
        for path in spec.preload:
            worker_args += ["--preload", path]

        prologue = list(options.pop("job_script_prologue", None) or [])
        # the job inherits the submitting environment (sbatch --export=ALL): take out what
        # the run drops, then set what every worker must carry (the run's labels)
        import fnmatch
        dropped = sorted(n for n in os.environ
                         if any(fnmatch.fnmatchcase(n, p) for p in ctx.drop_env))
        env_lines = [f"unset {name}" for name in dropped]
        env = dict(ctx.worker_env)
        if ctx.worker_config:
            env["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(ctx.worker_config)
        env_lines += [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]

        directives = options.pop("job_extra_directives", None)
        kwargs: dict[str, Any] = {}
        if scheduler == "slurm":
            comment = _comment({"daskjob/run-id": ctx.run_id,
                                **{k: v for k, v in ctx.labels.items()
                                   if k in ("daskjob/driver", "daskjob/started", "daskjob/name")}})
            directives = [f"--comment={comment}",
                          f"--output={os.path.join(out_dir, 'job-%j.out')}",
                          *(directives or [])]
        elif directives is None:
            directives = {} if scheduler == "htcondor" else []
        if scheduler != "slurm" and out_dir != run_dir:
            kwargs["log_directory"] = out_dir

        security = Security.temporary() if self.uses_tls(spec) else None
        job_cls = _recording_job_class(cluster_cls.job_cls)
        job_cls.job_ids, job_cls.submit_errors = [], []
        cluster = cluster_cls(
            n_workers=0,
            job_cls=job_cls,
            name=f"daskjob-{ctx.run_id}",
            job_name=f"daskjob-{ctx.run_id}",
            cores=spec.threads_per_worker,
            processes=1,
            memory=memory,
            python=options.pop("python", None) or sys.executable,
            death_timeout=max(spec.death_timeout_s, MIN_DEATH_TIMEOUT),
            job_extra_directives=directives,
            job_script_prologue=env_lines + prologue,
            worker_extra_args=worker_args,
            interface=interface,
            security=security,
            shared_temp_directory=run_dir,
            scheduler_options=scheduler_options,
            **kwargs,
            **options,
        )
        # Deliberately no scheduler idle_timeout: it would close a connected, idle cluster.
        cluster._daskjob = {
            "scheduler": scheduler, "job_cls": job_cls, "run_dir": run_dir,
            "out_dir": out_dir, "own_out_dir": out_dir == run_dir,
            "logs_dir": None, "run_id": ctx.run_id,
            "last_poll": 0.0, "verdict": None, "closed": False, "lock": threading.Lock(),
        }
        return cluster

    def _check_fits(self, queue: str | None, memory: int, cpus: int,
                    timeout: float = _SLURM_TIMEOUT) -> None:
        """A job bigger than every node of its partition would pend forever (or sbatch
        refuses it): say so before submitting anything. Best effort: no verdict when
        sinfo cannot tell."""
        args = ["sinfo", "-h", "-o", "%m|%c|%P"]
        if queue:
            args[1:1] = ["-p", queue]
        try:
            proc = _slurm(args, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return
        if proc.returncode != 0:
            return
        sizes = []
        for line in proc.stdout.splitlines():
            mem, _, rest = line.partition("|")
            cpu, _, _ = rest.partition("|")
            with contextlib.suppress(ValueError):
                sizes.append((int(mem.rstrip("+")), int(cpu.rstrip("+"))))
        if not sizes:
            return
        need_mb = math.ceil(memory / 2**20)
        where = f"partition {queue!r}" if queue else "the default partition"
        if not any(need_mb <= mem for mem, _ in sizes):
            raise ValueError(
                f"memory_per_worker: each worker job asks Slurm for {need_mb} MiB but the "
                f"largest node of {where} has {max(m for m, _ in sizes)} MiB; nothing was "
                "submitted")
        if not any(cpus <= cpu for _, cpu in sizes):
            raise ValueError(
                f"threads_per_worker: each worker job asks Slurm for {cpus} CPUs but the "
                f"largest node of {where} has {max(c for _, c in sizes)}; nothing was submitted")

    # ------------------------------------------------------------------- health
    def failure_reason(self, cluster: Any) -> str | None:
        state = getattr(cluster, "_daskjob", None)
        if state is None:
            return None
        if state["verdict"]:
            return state["verdict"]
        job_cls = state["job_cls"]
        if job_cls.submit_errors and not job_cls.job_ids:
            state["verdict"] = ("the job scheduler refused the worker jobs:\n"
                                + _short(job_cls.submit_errors[0]))
            return state["verdict"]
        if state["scheduler"] != "slurm" or not job_cls.job_ids:
            return None
        now = time.monotonic()
        state.setdefault("first_poll", now)
        every = _JOBS_POLL_EVERY if now - state["first_poll"] < 60 else _JOBS_POLL_LATER
        if now - state["last_poll"] < every:
            return None
        state["last_poll"] = now
        ids = list(job_cls.job_ids)
        try:
            proc = _slurm(["squeue", "-h", "--states=all", "-j", ",".join(ids),
                           "-o", "%i|%T|%r"])
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            return None
        states = {}
        for line in proc.stdout.splitlines():
            job, _, rest = line.partition("|")
            st, _, reason = rest.partition("|")
            states[job.strip()] = (st.strip(), reason.strip())
        live = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")
        if any(st in live for st, _ in states.values()):
            return None
        # every job ended (a job squeue no longer lists ended more than MinJobAge ago)
        parts = []
        for j in ids:
            st, reason = states.get(j, ("ENDED", ""))
            tail = _tail(os.path.join(state["out_dir"], f"job-{j}.out"))
            parts.append(f"job {j}: {st}" + (f" ({reason})" if reason and reason != "None" else "")
                         + (f"; last lines of its output:\n{tail}" if tail else ""))
        state["verdict"] = (f"all {len(ids)} Slurm worker job(s) ended:\n" + "\n".join(parts))
        return state["verdict"]

    def startup_note(self, cluster: Any) -> str | None:
        state = getattr(cluster, "_daskjob", None)
        if state is None or state["scheduler"] != "slurm" or not state["job_cls"].job_ids:
            return None
        ids = list(state["job_cls"].job_ids)
        try:
            proc = _slurm(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"], timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        jobs = []
        for line in proc.stdout.splitlines():
            job, state_, reason = (line.split("|") + ["", ""])[:3]
            if state_.strip() != "RUNNING":
                why = reason.strip()
                jobs.append(f"job {job.strip()} {state_.strip()}"
                            + (f" ({why})" if why and why != "None" else ""))
        return ("Slurm says: " + ", ".join(jobs)) if jobs else None

    def snapshot_logs(self, cluster: Any, logs_dir: str) -> list[str]:
        """The jobs' own output (sbatch --output) into the run record as
        slurm-job-<id>.out; copied again after close, when the jobs have ended."""
        state = getattr(cluster, "_daskjob", None)
        if state is None:
            return []
        state["logs_dir"] = logs_dir
        return self._keep_outputs(state)

    def dashboard_link(self, cluster: Any) -> str | None:
        return getattr(cluster, "dashboard_link", None)

    # -------------------------------------------------------------------- close
    def close(self, cluster: Any, timeout: float) -> None:
        state = getattr(cluster, "_daskjob", None)
        try:
            cluster.close(timeout=timeout)
        finally:
            if state is not None:
                with state["lock"]:
                    first = not state["closed"]
                    state["closed"] = True
                if first:
                    self._cancel_left(state, timeout)
                    self._keep_outputs(state)
                    # the workers' key files: dask-jobqueue keeps them open on the cluster
                    for attr, value in list(vars(cluster).items()):
                        if attr.startswith("_job_") and hasattr(value, "close"):
                            with contextlib.suppress(OSError):
                                value.close()
                    shutil.rmtree(state["run_dir"], ignore_errors=True)

    def _cancel_left(self, state: dict, timeout: float) -> None:
        # jobs the cluster no longer tracks (a worker spec removed while its job pended)
        ids = list(state["job_cls"].job_ids)
        if not ids or state["scheduler"] != "slurm":
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _slurm(["scancel", *ids], timeout=max(1.0, min(timeout, _SLURM_TIMEOUT)))

    def _keep_outputs(self, state: dict) -> list[str]:
        logs_dir = state.get("logs_dir")
        written = []
        if not logs_dir or not os.path.isdir(logs_dir):
            return written
        for job in list(state["job_cls"].job_ids):
            src = os.path.join(state["out_dir"], f"job-{job}.out")
            dst = os.path.join(logs_dir, f"slurm-job-{job}.out")
            if os.path.exists(src):
                with contextlib.suppress(OSError):
                    shutil.copy(src, dst)
                    written.append(dst)
        return written

    # ------------------------------------------------------------------- reaper
    def find_leftovers(self, spec: "ClusterSpec", older_than: float) -> list[Leftover]:
        from ..procs import DRIVER_LABEL, driver_label_alive, label_age

        scheduler = spec.options.get("scheduler", "slurm")
        if scheduler != "slurm":
            logger.warning("jobqueue reaper: only Slurm jobs are looked for (scheduler is %r); "
                           "look for jobs named daskjob-<run id> with your scheduler's tools",
                           scheduler)
            return []
        try:
            proc = _slurm(["squeue", "-h", "-o", "%i|%j|%k|%V|%T|%u"])
        except FileNotFoundError:
            raise RuntimeError("squeue not found: the jobqueue reaper needs Slurm's "
                               "commands on PATH") from None
        if proc.returncode != 0:
            raise RuntimeError(f"squeue failed: {proc.stderr.strip()}")
        found = []
        now = time.time()
        for line in proc.stdout.splitlines():
            fields = line.split("|")
            if len(fields) < 6:
                continue
            job, name, comment, submitted, st, user = fields[:6]
            labels = _parse_comment(comment)
            run_id = labels.get("daskjob/run-id")
            if not run_id:
                continue
            age = label_age(labels, now)
            if age is None:
                with contextlib.suppress(ValueError):
                    age = now - time.mktime(time.strptime(submitted, "%Y-%m-%dT%H:%M:%S"))
            alive = driver_label_alive(labels.get(DRIVER_LABEL))
            if alive:
                continue
            if alive is None and not older_than:
                continue  # a driver on another host: only its age tells (--older-than)
            if older_than and (age is None or age < older_than):
                continue
            why = "driver gone" if alive is False else "driver on another host"
            found.append(Leftover(backend=self.name, run_id=run_id, name=job, age_s=age,
                                  detail=f"Slurm job {job} {name} ({st}, user {user}); {why}",
                                  handle={"job_id": job, "run_id": run_id}))
        return found

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        job = (leftover.handle or {}).get("job_id", leftover.name)
        proc = _slurm(["scancel", str(job)])
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise RuntimeError(f"scancel {job} failed: {proc.stderr.strip()}")
        # the killed run's TLS key files, if they are on this machine
        shutil.rmtree(_run_dir(spec.options.get("shared_temp_directory"), leftover.run_id),
                      ignore_errors=True)


def _short(text: str, limit: int = 2000) -> str:
    # dask-jobqueue's message holds the whole job script's path and the command's
    # stdout/stderr: keep the stderr part first, it says why
    m = re.search(r"stderr:\n(.*)", text, re.S)
    body = m.group(1).strip() if m else text
    return body[:limit]
