"""The cluster managers the backend tests run against for real (sshd, Slurm,
dask-gateway-server), started by scripts/services/<name>.sh on loopback.

`make test` starts them all before pytest and stops them after. A test run started
some other way starts a missing one here (and leaves it up: scripts/services/down.sh
stops it). Where a service cannot run (not root, no apt), its tests skip and say why;
with DASKJOB_REQUIRE_SERVICES=1 (set by CI) they fail instead.
"""

from __future__ import annotations

import fcntl
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts", "services")
SERVICES_DIR = os.environ.get("DASKJOB_SERVICES_DIR", os.path.join(REPO, ".services"))
REQUIRED = os.environ.get("DASKJOB_REQUIRE_SERVICES") == "1"


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (DASKJOB_REQUIRE_SERVICES=1: these tests must run here)")
    pytest.skip(reason)


def service(name: str) -> dict[str, str]:
    """Start service `name` if it is not up; return its KEY=VALUE connection settings."""
    if os.geteuid() != 0:
        _unavailable(f"{name}: starting it needs root")
    os.makedirs(SERVICES_DIR, exist_ok=True)
    env_file = os.path.join(SERVICES_DIR, f"{name}.env")
    log_file = os.path.join(SERVICES_DIR, f"{name}.start.log")
    # one starter at a time, also across pytest-xdist workers
    with open(os.path.join(SERVICES_DIR, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["bash", os.path.join(SCRIPTS, "install.sh")], check=False)
        env = dict(os.environ, DASKJOB_SERVICES_DIR=SERVICES_DIR)
        with open(env_file, "w") as out, open(log_file, "w") as err:
            proc = subprocess.run(["bash", os.path.join(SCRIPTS, f"{name}.sh"), "start"],
                                  stdout=out, stderr=err, env=env, timeout=120)
        if proc.returncode != 0:
            with open(log_file) as f:
                tail = f.read()[-2000:]
            _unavailable(f"{name} did not start (exit {proc.returncode}):\n{tail}")
        with open(env_file) as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
