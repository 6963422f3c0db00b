"""What the `jobqueue` backend asks Slurm itself (sbatch, squeue, sinfo, scancel): the
job comment that labels a run, whether a job can fit, why jobs ended, what a reaper
finds. Every call goes through `slurm()`, bounded in time."""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass

SLURM_TIMEOUT = 20.0    # seconds for one squeue/sinfo/scancel call
_LIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def slurm(args: list[str], timeout: float = SLURM_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def comment(labels: dict[str, str]) -> str:
    # Slurm's comment is free text; keep it to key=value pairs without separators in them
    return ",".join(f"{k}={v}" for k, v in labels.items()
                    if not re.search(r"[,=\s\"']", f"{k}{v}"))


def parse_comment(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def tail(path: str, n: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def short(text: str, limit: int = 2000) -> str:
    # dask-jobqueue's message holds the whole job script's path and the command's
    # stdout/stderr: keep the stderr part first, it says why
    m = re.search(r"stderr:\n(.*)", text, re.S)
    body = m.group(1).strip() if m else text
    return body[:limit]


def check_fits(queue: str | None, memory: int, cpus: int, timeout: float = SLURM_TIMEOUT) -> None:
    """A job bigger than every node of its partition would pend forever (or sbatch
    refuses it): say so before submitting anything. Best effort: no verdict when sinfo
    cannot tell."""
    args = ["sinfo", "-h", "-o", "%m|%c|%P"] if not queue else ["sinfo", "-p", queue, "-h",
                                                                "-o", "%m|%c|%P"]
    try:
        proc = slurm(args, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return
    sizes = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
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


def job_states(ids: list[str], timeout: float = SLURM_TIMEOUT,
               every_state: bool = True) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} from squeue; None when squeue cannot say."""
    args = ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"]
    if every_state:
        args[2:2] = ["--states=all"]
    try:
        proc = slurm(args, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        job, _, rest = line.partition("|")
        st, _, reason = rest.partition("|")
        states[job.strip()] = (st.strip(), reason.strip())
    return states


def ended_verdict(ids: list[str], out_dir: str) -> str | None:
    """When every job has ended (none pending or running): which, how, and the last lines
    of each job's output. None while any lives, or when squeue cannot say."""
    states = job_states(ids)
    if states is None or any(st in _LIVE_STATES for st, _ in states.values()):
        return None
    # a job squeue no longer lists ended more than MinJobAge ago
    parts = []
    for j in ids:
        st, reason = states.get(j, ("ENDED", ""))
        output = tail(os.path.join(out_dir, f"job-{j}.out"))
        parts.append(f"job {j}: {st}" + (f" ({reason})" if reason and reason != "None" else "")
                     + (f"; last lines of its output:\n{output}" if output else ""))
    return f"all {len(ids)} Slurm worker job(s) ended:\n" + "\n".join(parts)


def pending_note(ids: list[str]) -> str | None:
    """What Slurm says of jobs that are not running yet (their pending reason)."""
    states = job_states(ids, timeout=5, every_state=False) or {}
    jobs = [f"job {job} {st}" + (f" ({why})" if why and why != "None" else "")
            for job, (st, why) in states.items() if st != "RUNNING"]
    return ("Slurm says: " + ", ".join(jobs)) if jobs else None


def cancel(ids: list[str], timeout: float) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        slurm(["scancel", *ids], timeout=max(1.0, min(timeout, SLURM_TIMEOUT)))


@dataclass
class LabelledJob:
    job_id: str
    name: str
    labels: dict[str, str]
    submitted: float | None
    state: str
    user: str


def labelled_jobs() -> list[LabelledJob]:
    """Every queued or running job whose comment labels a daskjob run."""
    try:
        proc = slurm(["squeue", "-h", "-o", "%i|%j|%k|%V|%T|%u"])
    except FileNotFoundError:
        raise RuntimeError("squeue not found: the jobqueue reaper needs Slurm's "
                           "commands on PATH") from None
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed: {proc.stderr.strip()}")
    return [job for job in map(parse_squeue_line, proc.stdout.splitlines()) if job]


def parse_squeue_line(line: str) -> LabelledJob | None:
    fields = line.split("|")
    if len(fields) < 6:
        return None
    job, name, text, submitted, state, user = fields[:6]
    labels = parse_comment(text)
    if not labels.get("daskjob/run-id"):
        return None
    started = None
    with contextlib.suppress(ValueError):
        started = time.mktime(time.strptime(submitted, "%Y-%m-%dT%H:%M:%S"))
    return LabelledJob(job, name, labels, started, state, user)
