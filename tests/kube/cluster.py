"""The emulated control plane as one process:

    python -m kube.cluster --dir DIR [--node-cpu 8] [--node-memory 32Gi]
                           [--node-resource nvidia.com/gpu=1] [--restart-backoff 10]
                           [--lb-delay SECONDS] [--status-on-endpoint] [--max-grace 5]

(with tests/ on PYTHONPATH). It serves the API on 127.0.0.1:<free port>, runs the
Deployment and Service controllers and the process kubelet, and writes into DIR:
- kubeconfig: for tests and drivers (user "tester", namespace default);
- controller.kubeconfig: for the Dask operator's controller (its service account user);
- hosts.json: the DNS shim's hosts file; pods/: pod folders and container logs;
- pods.json: the process groups of running containers;
- ready.json, last: {"url", "pid", ...} once everything listens.
On SIGTERM or SIGINT it stops every pod's processes, closes every listener and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import random
import signal
import tempfile
from typing import Any

import yaml

from .apiserver import ApiServer, serve
from .kubelet import Kubelet
from .resources import Registry
from .store import Store
from .workloads import Deployments, Services

USERS = {"tester-token": "tester",
         "controller-token": "system:serviceaccount:dask-operator:dask-kubernetes-operator"}
logger = logging.getLogger("kube.cluster")
SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns")


def write_kubeconfig(path: str, url: str, user: str, token: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": user, "namespace": "default"}}],
        }, f)


def seed(store: Store) -> None:
    namespaces = store.registry.find("", "v1", "namespaces")
    store.hooks["Namespace"] = lambda ns: ns.__setitem__("status", {"phase": "Active"})
    for name in ("default", "kube-system"):
        store.create(namespaces, "", {"metadata": {"name": name}})


def claim_subnet() -> tuple[int, Any]:
    """A third octet no other emulator on this machine uses (pods 127.10.<it>.n,
    Services 127.20.<it>.n), so that emulators of tests running side by side (xdist)
    never bind the same address: held by an flock for as long as this process lives."""
    start = random.randrange(250)
    for i in range(250):
        subnet = (start + i) % 250
        f = open(os.path.join(tempfile.gettempdir(),  # noqa: SIM115 - held while we live
                              f"kube-emulator-subnet-{subnet}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return subnet, f
        except OSError:
            f.close()
    raise RuntimeError("every emulator subnet is taken")


def write_ready(folder: str, info: dict) -> None:
    tmp = os.path.join(folder, "ready.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(folder, "ready.json"))   # whole, or not there


async def main(args: argparse.Namespace) -> None:
    folder = os.path.abspath(args.dir)
    os.makedirs(folder, exist_ok=True)
    registry = Registry()
    store = Store(registry, gc_delay=args.gc_delay, history=args.history)
    seed(store)
    hosts_file = os.path.join(folder, "hosts.json")
    capacity = {"cpu": args.node_cpu, "memory": args.node_memory, "pods": "110",
                **dict(r.split("=", 1) for r in args.node_resource)}
    subnet, lock = claim_subnet()
    services = Services(store, hosts_file, subnet=subnet, lb_delay=args.lb_delay,
                        status_on_endpoint=args.status_on_endpoint)
    deployments = Deployments(store)
    kubelet = Kubelet(store, folder, SHIM_DIR, hosts_file, capacity, subnet=subnet,
                      restart_backoff=args.restart_backoff, max_grace=args.max_grace,
                      min_terminate=args.min_terminate)
    api = ApiServer(store, registry, USERS)
    api.log_path = kubelet.log_path
    runner, url = await serve(api)
    for part in (services, deployments, kubelet):
        part.start()
    write_kubeconfig(os.path.join(folder, "kubeconfig"), url, "tester", "tester-token")
    write_kubeconfig(os.path.join(folder, "controller.kubeconfig"), url, "dask-operator",
                     "controller-token")
    write_ready(folder, {"url": url, "pid": os.getpid(), "hosts_file": hosts_file,
                         "shim_dir": SHIM_DIR, "subnet": subnet})
    logger.info("emulated cluster at %s (folder %s)", url, folder)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping: pods first, then the controllers and the API server")
    await kubelet.stop()
    await deployments.stop()
    await services.stop()
    await runner.cleanup()
    lock.close()
    logger.info("stopped")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kube.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="folder for kubeconfigs, logs and pods")
    p.add_argument("--node-cpu", default="8", help="the node's cpu capacity")
    p.add_argument("--node-memory", default="32Gi", help="the node's memory capacity")
    p.add_argument("--node-resource", action="append", default=[],
                   help="an extended resource of the node, name=quantity (repeatable)")
    p.add_argument("--restart-backoff", type=float, default=10.0,
                   help="seconds before the first restart of a container (doubling after)")
    p.add_argument("--lb-delay", type=float, default=None,
                   help="seconds after which a LoadBalancer Service gets its ingress IP "
                        "(default: once a Ready pod backs it)")
    p.add_argument("--status-on-endpoint", action="store_true",
                   help="a ClusterIP/NodePort Service gets its status once a Ready pod "
                        "backs it (default: at creation)")
    p.add_argument("--gc-delay", type=float, default=0.5,
                   help="seconds the garbage collector takes to delete an object's dependents")
    p.add_argument("--history", type=int, default=20000,
                   help="watch events kept for watches to resume from (older: 410 Gone)")
    p.add_argument("--max-grace", type=float, default=5.0,
                   help="cap on a deleted pod's termination grace period, in seconds")
    p.add_argument("--min-terminate", type=float, default=2.0,
                   help="seconds a deleted pod stays before its removal, at least")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(parse()))
