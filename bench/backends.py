"""Time to a result on each backend: run_job with a one-task payload, start to teardown.

The same job (2 workers, 1 thread each) runs on `local` and on every scale-out backend
whose service is up (`make services` starts sshd, Slurm and the gateway on loopback and
writes their settings to .services/<name>.env). Runs alternate between backends in one
process, so machine noise hits all alike. Prints the median of each phase and of the
whole run, and the whole run's ratio to `local`.

    make services && .venv/bin/python bench/backends.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from daskjob import run_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = os.environ.get("DASKJOB_SERVICES_DIR", os.path.join(REPO, ".services"))


def one_task(client):
    return client.submit(sum, [1, 2, 3]).result()


def settings(name: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(SERVICES, f"{name}.env")) as f:
            found = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
    return found or None


def clusters() -> dict[str, dict]:
    base = {"n_workers": 2, "threads_per_worker": 1, "memory_per_worker": "1GiB"}
    out = {"local": {**base, "backend": "local"}}
    ssh = settings("sshd")
    if ssh:
        out["ssh"] = {**base, "backend": "ssh", "options": {
            "hosts": [ssh["SSH_HOST"]],
            "connect_options": {"port": int(ssh["SSH_PORT"]), "username": ssh["SSH_USER"],
                                "client_keys": [ssh["SSH_KEY"]],
                                "known_hosts": ssh["SSH_KNOWN_HOSTS"]}}}
    slurm = settings("slurm")
    if slurm:
        os.environ["SLURM_CONF"] = slurm["SLURM_CONF"]
        out["jobqueue"] = {**base, "backend": "jobqueue", "options": {"scheduler": "slurm"}}
    gateway = settings("gateway")
    if gateway:
        out["gateway"] = {**base, "backend": "gateway", "options": {
            "address": gateway["GATEWAY_ADDRESS"],
            "proxy_address": gateway["GATEWAY_PROXY_ADDRESS"],
            "username": gateway["GATEWAY_USER"]},
            "secrets": {"password": gateway["GATEWAY_PASSWORD"]}}
    return out


def run_once(cluster: dict, record_dir: str) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    result = run_job({"name": "bench-backends", "payload": one_task, "cluster": cluster,
                      "record_dir": record_dir, "startup_timeout": "120s",
                      "performance_report": False})
    wall = time.perf_counter() - t
    assert result.value == 6
    return wall, {phase: v["seconds"] for phase, v in result.record["phases"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    targets = clusters()
    walls: dict[str, list[float]] = {name: [] for name in targets}
    phases: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    with tempfile.TemporaryDirectory() as records:
        for _ in range(args.repeat):
            for name, cluster in targets.items():
                wall, took = run_once(cluster, records)
                walls[name].append(wall)
                for phase, seconds in took.items():
                    phases[name].setdefault(phase, []).append(seconds)
    local = statistics.median(walls["local"])
    names = ["provision", "workers", "payload", "teardown"]
    print(f"median of {args.repeat} runs, seconds (2 workers, one task):")
    print(f"{'backend':10} " + " ".join(f"{p:>10}" for p in names) + f" {'whole':>8} {'vs local':>9}")
    for name in targets:
        cells = " ".join(f"{statistics.median(phases[name].get(p, [0.0])):10.2f}" for p in names)
        whole = statistics.median(walls[name])
        print(f"{name:10} {cells} {whole:8.2f} {whole / local:8.2f}x")
    missing = {"ssh", "jobqueue", "gateway"} - set(targets)
    if missing:
        print(f"not measured (service not up: run `make services`): {', '.join(sorted(missing))}")


if __name__ == "__main__":
    main()
