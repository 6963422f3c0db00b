"""The ssh backend's reaper: the labelled processes on each host, listed and stopped over
ssh by stdlib-only scripts (the remote host may not have daskjob installed)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shlex
import time
from typing import Any

from ..procs import (DRIVER_LABEL, DRIVER_PID_VAR, DRIVER_START_VAR, EXPIRES_LABEL,
                     STARTED_LABEL, STARTED_VAR, env_labels)
from .base import Leftover
from .reap import Driver, verdict

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Both remote scripts below: a pid belongs to this host only if it lives in this
# session's network namespace. (Hosts that share a kernel, such as network namespaces on
# one machine, see each other's pids in /proc; a pid belongs to the host whose network it
# lives in.)
_NETNS_PRELUDE = r"""
import os
def netns(pid):
    try:
        return os.readlink("/proc/%s/ns/net" % pid)
    except OSError:
        return None
here = netns("self")
"""

# Runs on the remote host with its own python (stdlib only): labelled processes as JSON,
# only those of this host (see _NETNS_PRELUDE).
_LIST_SCRIPT = r"""
import json, os, time
out = []
ticks = os.sysconf("SC_CLK_TCK")
with open("/proc/stat") as f:
    boot = float(next(l for l in f if l.startswith("btime")).split()[1])
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) == os.getpid():
        continue
    try:
        with open("/proc/%s/environ" % d, "rb") as f:
            raw = f.read()
        env = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
        run_id = env.get(b"DASKJOB_RUN_ID")
        if not run_id or (here is not None and netns(d) != here):
            continue
        with open("/proc/%s/cmdline" % d, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open("/proc/%s/stat" % d) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        started = boot + int(fields[19]) / ticks
    except (OSError, ValueError, IndexError):
        continue
    g = lambda k: env.get(k, b"").decode(errors="replace")
    out.append({"pid": int(d), "run_id": run_id.decode(errors="replace"),
                "driver": g(b"DASKJOB_DRIVER"), "started": g(b"DASKJOB_STARTED"),
                "expires": g(b"DASKJOB_EXPIRES"),
                "driver_pid": g(b"DASKJOB_DRIVER_PID"), "driver_start": g(b"DASKJOB_DRIVER_START"),
                "proc_started": started, "cmd": cmd[:300]})
print(json.dumps(out))
"""

# Stops the given pids, each only if it still carries the run's label. Prints JSON.
_STOP_SCRIPT = r"""
import json, os, signal, sys, time
run_id, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
def ours(pid):
    if here is not None and netns(pid) != here:
        return False
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read().split(b"\0")
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return ("DASKJOB_RUN_ID=" + run_id).encode() in env
mine = [p for p in pids if ours(p)]
for p in mine:
    try: os.kill(p, signal.SIGTERM)
    except OSError: pass
deadline = time.time() + 5
while time.time() < deadline and any(ours(p) for p in mine):
    time.sleep(0.1)
left = [p for p in mine if ours(p)]
for p in left:
    try: os.kill(p, signal.SIGKILL)
    except OSError: pass
print(json.dumps({"signalled": mine, "killed": left}))
"""


def run_on_hosts(connect: dict[str, Any], python: str, hosts: list[str], what: str, *,
                 run_id: str = "", pids: list[int] | None = None) -> dict[str, Any]:
    """Run the list script on every host (a host that cannot be reached is left out with a
    warning), or the stop script on one (failure raises). `connect`: asyncssh.connect
    keywords."""

    async def one(h: str):
        import asyncssh
        async with asyncssh.connect(h, **connect) as conn:
            if what == "list":
                cmd = f"{shlex.quote(python)} -c {shlex.quote(_NETNS_PRELUDE + _LIST_SCRIPT)}"
            else:
                cmd = (f"{shlex.quote(python)} -c {shlex.quote(_NETNS_PRELUDE + _STOP_SCRIPT)} "
                       + " ".join(shlex.quote(str(a)) for a in [run_id, *(pids or [])]))
            result = await conn.run(cmd, check=False, timeout=60)
            if result.exit_status != 0:
                raise RuntimeError(f"{what} on {h} failed (exit {result.exit_status}): "
                                   f"{(result.stderr or '').strip()[-500:]}")
            return json.loads(result.stdout)

    async def all_hosts():
        results = await asyncio.gather(*(one(h) for h in hosts), return_exceptions=True)
        out = {}
        for h, r in zip(hosts, results):
            if isinstance(r, BaseException):
                if what == "stop":
                    raise r
                logger.warning("ssh reaper: could not look at %s: %s", h, r)
                continue
            out[h] = r
        return out

    return asyncio.run(all_hosts())


def leftovers(backend: str, listing: dict[str, list[dict]],
              older_than: float | None) -> list[Leftover]:
    """The runs the reap rule calls left over, from each host's listing, one Leftover per
    run and host."""
    found: list[Leftover] = []
    now = time.time()
    for host, procs in listing.items():
        by_run: dict[str, list[dict]] = {}
        for p in procs:
            labels, driver = _labels(host, p)
            if verdict(labels, older_than=older_than, started=p["proc_started"], now=now,
                       driver=driver).leftover:
                p["age"] = now - float(labels.get(STARTED_LABEL) or p["proc_started"])
                by_run.setdefault(p["run_id"], []).append(p)
        for run_id, ps in sorted(by_run.items()):
            pids = sorted(p["pid"] for p in ps)
            found.append(Leftover(
                backend=backend, run_id=run_id,
                name=f"{host}: pid {', '.join(map(str, pids))}",
                age_s=max(p["age"] for p in ps),
                detail=ps[0]["cmd"], handle={"host": host, "pids": pids}))
    return found


def _labels(host: str, p: dict) -> tuple[dict[str, str], Driver | None]:
    """A listed process's labels for the reap rule, and what is known of its driver
    beyond them. A process started without the driver label (not by this backend) can
    be judged by its driver's pid only when it runs on this machine."""
    labels = {STARTED_LABEL: p.get("started") or "", EXPIRES_LABEL: p.get("expires") or ""}
    if p.get("driver"):
        labels[DRIVER_LABEL] = p["driver"]
        return {k: v for k, v in labels.items() if v}, None
    if is_loopback(host):
        env = {DRIVER_PID_VAR: p.get("driver_pid") or "0",
               DRIVER_START_VAR: p.get("driver_start") or "0",
               STARTED_VAR: p.get("started") or ""}
        return {**env_labels(env), **{k: v for k, v in labels.items() if v}}, None
    return {k: v for k, v in labels.items() if v}, Driver.ELSEWHERE
