"""A "process kubelet": one emulated node whose pods' containers are local processes.

The image is ignored: a container's `command`/`args` run with this machine's Python
environment (the emulator's venv bin first on PATH), each container in a session of its
own (the dask nanny forks its worker; a pod is stopped by process group), its stdout and
stderr appended to a log file the API server serves as the pod's log.

As a kubelet does:
- scheduling first (the node is its own scheduler): requests (limits where a request is
  missing) of the pods on the node must fit its capacity, extended resources such as
  nvidia.com/gpu included (capacity 0 unless configured), and the nodeSelector must match
  the node's labels; else the pod stays Pending, PodScheduled=False, Unschedulable;
- env from `env` (value, or fieldRef), `$(VAR)` expansion in env values, command and args;
- readiness and liveness probes (httpGet, tcpSocket); Ready/ContainersReady follow them;
- restarts (restartPolicy Always, or OnFailure after a failure) with back-off, the
  container waiting in CrashLoopBackOff in between, the pod phase staying Running;
- on deletion: SIGTERM to the process group, SIGKILL after the grace period (capped by
  `max_grace`, to keep tests fast), then the pod object is removed (not sooner than
  `min_terminate` after the deletion: a kubelet takes a sync or two to confirm it).

Pod network ("CNI emulation"): each pod gets its own loopback IP, 127.10.<subnet>.n (all of
127/8 reaches `lo` on Linux, no setup needed). Programs in a container would listen on
0.0.0.0, which here would mean every pod's address at once (and a clash on the same
port), so the kubelet rewrites the listen address arguments of `dask scheduler` and
`dask worker` to the pod IP; see pod_network_args.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .store import ApiError, Store, now
from .workloads import Reconciler, container_port

logger = logging.getLogger("kube.kubelet")
NODE = "emulated-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
               "kubernetes.io/arch": "amd64"}
_UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text: Any) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi", "1e3") as a number."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)([a-zA-Z]*)", str(text).strip())
    if not m or (m.group(2) and m.group(2) not in _UNITS):
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * _UNITS.get(m.group(2), 1)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, unknown ones kept,
    $$ is a literal $."""
    def repl(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        return env.get(m.group(2), m.group(0))
    return re.sub(r"\$(\$|\(([A-Za-z_][A-Za-z0-9_.-]*)\))", repl, text)


def pod_network_args(argv: list[str], ip: str) -> list[str]:
    """CNI emulation: `dask scheduler|worker` listens on (and advertises) the pod IP, and
    its dashboard too, instead of the wildcard address."""
    if len(argv) < 2 or os.path.basename(argv[0]) != "dask" or argv[1] not in ("scheduler", "worker"):
        return argv
    out, seen = list(argv), set()
    for i, arg in enumerate(out[:-1]):
        if arg == "--host":
            seen.add(arg)
            if out[i + 1] in ("0.0.0.0", "", "::"):
                out[i + 1] = ip
        elif arg == "--dashboard-address":
            seen.add(arg)
            port = out[i + 1].rpartition(":")[2]
            if out[i + 1].rpartition(":")[0] in ("", "0.0.0.0", "::", "[::]"):
                out[i + 1] = f"{ip}:{port}"
    if "--host" not in seen:
        out += ["--host", ip]
    if "--dashboard-address" not in seen:
        out += ["--dashboard-address", f"{ip}:{8787 if argv[1] == 'scheduler' else 0}"]
    return out


@dataclass(eq=False)
class Container:
    name: str
    spec: dict[str, Any]
    log_path: str
    proc: subprocess.Popen | None = None
    started_at: str | None = None
    restarts: int = 0
    ready: bool = False
    next_start: float = 0.0          # monotonic time of the next (re)start
    done: bool = False               # exited for good (no restart)
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    probes: list[asyncio.Task] = field(default_factory=list)


@dataclass(eq=False)
class PodRuntime:
    ns: str
    name: str
    uid: str
    ip: str
    dir: str
    containers: list[Container]
    requests: dict[str, float]
    start_time: str = field(default_factory=now)
    stopping: bool = False


class Kubelet(Reconciler):
    kinds = frozenset({"Pod"})
    period = 0.25   # how soon an exited container is noticed

    def __init__(self, store: Store, root: str, shim_dir: str, hosts_file: str,
                 capacity: dict[str, str], subnet: int = 0, restart_backoff: float = 10.0,
                 max_grace: float = 5.0, min_terminate: float = 2.0):
        super().__init__(store)
        self.subnet = subnet   # pod IPs are 127.10.<subnet>.<n>
        self.root, self.shim_dir, self.hosts_file = root, shim_dir, hosts_file
        self.capacity = {k: quantity(v) for k, v in capacity.items()}
        self.restart_backoff, self.max_grace = restart_backoff, max_grace
        self.min_terminate = min_terminate
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        # pods whose containers are stopped but whose object is still there (terminating):
        # their logs can still be read, as from a kubelet until the pod is removed
        self.ended: dict[tuple[str, str], PodRuntime] = {}
        self.terminating: set[tuple[str, str]] = set()   # deleted pods being stopped
        self.background: set[asyncio.Task] = set()
        self.next_ip = 0
        self.http: aiohttp.ClientSession | None = None
        store.hooks["Pod"] = self.on_create
        os.makedirs(os.path.join(root, "pods"), exist_ok=True)

    @staticmethod
    def on_create(pod: dict[str, Any]) -> None:
        """The API server's defaults for a new pod."""
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}

    async def _run(self) -> None:
        self.http = aiohttp.ClientSession()
        await super()._run()

    async def reconcile(self) -> None:
        pods_res = self.res("pods")
        seen = set()
        for pod in self.store.items(pods_res):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            seen.add(key)
            rt = self.pods.get(key)
            if rt is not None and rt.uid != pod["metadata"]["uid"]:
                await self.kill(rt, 0)   # a new pod of the same name: the old one is gone
                rt = None
            if pod["metadata"].get("deletionTimestamp"):
                if key not in self.terminating:
                    self.terminating.add(key)
                    if rt is not None:
                        rt.stopping = True
                    task = asyncio.ensure_future(self.delete_pod(rt, pod))
                    self.background.add(task)   # the loop keeps only a weak reference
                    task.add_done_callback(self.background.discard)
                continue
            if rt is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                why = self.unschedulable(pod)
                if why:
                    self.store.update(pods_res, *key, lambda p, w=why: _unschedulable(p, w))
                    continue
                rt = self.admit(pod)
            if not rt.stopping:
                self.sync(rt)
        for key in set(self.pods) - seen:
            await self.kill(self.pods[key], 0)
        for key in set(self.ended) - seen:
            del self.ended[key]

    # -- scheduling ------------------------------------------------------------------------
    def unschedulable(self, pod: dict[str, Any]) -> str | None:
        """The scheduler's message when the pod does not fit on the node, else None."""
        selector = pod["spec"].get("nodeSelector") or {}
        if any(NODE_LABELS.get(k) != v for k, v in selector.items()):
            return ("0/1 nodes are available: 1 node(s) didn't match Pod's node "
                    "affinity/selector. preemption: 0/1 nodes are available: 1 Preemption "
                    "is not helpful for scheduling.")
        used: dict[str, float] = {}
        for rt in self.pods.values():
            for k, v in rt.requests.items():
                used[k] = used.get(k, 0) + v
        short = sorted(k for k, v in pod_requests(pod).items()
                       if used.get(k, 0) + v > self.capacity.get(k, 0))
        if not short:
            return None
        return ("0/1 nodes are available: " + ", ".join(f"1 Insufficient {k}" for k in short)
                + ". preemption: 0/1 nodes are available: 1 No preemption victims found "
                "for incoming pod.")

    def admit(self, pod: dict[str, Any]) -> PodRuntime:
        """Bind the pod to the node, give it an IP and a folder; containers start in sync."""
        meta = pod["metadata"]
        self.next_ip = self.next_ip % 254 + 1   # reused after 254 pods: long gone by then
        ip = f"127.10.{self.subnet}.{self.next_ip}"
        folder = os.path.join(self.root, "pods", f"{meta['namespace']}_{meta['name']}")
        os.makedirs(folder, exist_ok=True)
        containers = [Container(c["name"], c, os.path.join(folder, f"{c['name']}.log"))
                      for c in pod["spec"].get("containers") or []]
        rt = PodRuntime(meta["namespace"], meta["name"], meta["uid"], ip, folder, containers,
                        pod_requests(pod))
        self.pods[(rt.ns, rt.name)] = rt
        self.store.update(self.res("pods"), rt.ns, rt.name,
                          lambda p: p["spec"].__setitem__("nodeName", NODE), subresource="")
        return rt

    # -- containers ------------------------------------------------------------------------
    def sync(self, rt: PodRuntime) -> None:
        pod = self.store.find(self.res("pods"), rt.ns, rt.name)
        policy = pod["spec"].get("restartPolicy", "Always")
        for c in rt.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self.exited(rt, c, policy)
            if c.proc is None and not c.done and time.monotonic() >= c.next_start:
                self.start_container(rt, c, pod)
        self.store.update(self.res("pods"), rt.ns, rt.name, lambda p: self.write_status(rt, p))
        self.save_pids()

    def start_container(self, rt: PodRuntime, c: Container, pod: dict[str, Any]) -> None:
        if c.started_at is not None:
            c.restarts += 1
        if c.started_at is not None and os.path.exists(c.log_path):
            # as a kubelet keeps them: the log of this instance and of the one before
            os.replace(c.log_path, previous_log(c.log_path))
        env = self.container_env(rt, c.spec, pod)
        argv = [expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        argv = pod_network_args(argv, rt.ip)
        with open(c.log_path, "ab") as log:
            try:
                c.proc = subprocess.Popen(argv, env=env, cwd=rt.dir, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
            except OSError as e:
                log.write(f"kubelet: cannot start {argv}: {e}\n".encode())
                c.started_at = now()
                c.last_state = {"terminated": {"exitCode": 128, "reason": "StartError",
                                               "message": str(e), "finishedAt": now()}}
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": str(e)}}
                c.next_start = time.monotonic() + self.backoff(c)
                return
        c.started_at = now()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        c.probes = self.start_probes(rt, c)
        logger.info("pod %s/%s: container %s started (pid %s): %s", rt.ns, rt.name, c.name,
                    c.proc.pid, " ".join(argv))

    def backoff(self, c: Container) -> float:
        return min(300.0, self.restart_backoff * 2 ** max(0, c.restarts - 1))

    def exited(self, rt: PodRuntime, c: Container, policy: str) -> None:
        code = c.proc.returncode
        _killpg(c.proc.pid, signal.SIGKILL)   # what the container left running goes too
        for task in c.probes:
            task.cancel()
        c.proc, c.ready = None, False
        c.last_state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0
                                       else "Error", "startedAt": c.started_at,
                                       "finishedAt": now()}}
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart:
            c.done, c.state, c.last_state = True, c.last_state, {}
            return
        delay = self.backoff(c)
        c.next_start = time.monotonic() + delay
        c.state = {"waiting": {"reason": "CrashLoopBackOff",
                               "message": f"back-off {delay:.0f}s restarting failed "
                                          f"container={c.name} pod={rt.name}_{rt.ns}({rt.uid})"}}
        logger.info("pod %s/%s: container %s exited with %s; restart in %.0fs",
                    rt.ns, rt.name, c.name, code, delay)

    def container_env(self, rt: PodRuntime, spec: dict[str, Any],
                      pod: dict[str, Any]) -> dict[str, str]:
        """A container's environment: a base (PATH to this venv, the DNS shim), then the
        container's `env` in order, each value expanded against what came before."""
        venv_bin = os.path.dirname(sys.executable)
        env = {"PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": rt.dir, "HOSTNAME": rt.name, "LANG": "C.UTF-8",
               "PYTHONPATH": self.shim_dir, "KUBE_EMULATOR_HOSTS": self.hosts_file}
        fields = {"metadata.name": rt.name, "metadata.namespace": rt.ns,
                  "metadata.uid": rt.uid, "status.podIP": rt.ip, "spec.nodeName": NODE,
                  "status.hostIP": "127.0.0.1"}
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            elif ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") in fields:
                env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        if self.shim_dir not in env["PYTHONPATH"].split(os.pathsep):
            # the cluster's DNS stays, whatever PYTHONPATH the container sets
            env["PYTHONPATH"] = os.pathsep.join([self.shim_dir, env["PYTHONPATH"]])
        return env

    # -- probes ------------------------------------------------------------------------------
    def start_probes(self, rt: PodRuntime, c: Container) -> list[asyncio.Task]:
        tasks = []
        readiness, liveness = c.spec.get("readinessProbe"), c.spec.get("livenessProbe")
        if readiness:
            tasks.append(asyncio.ensure_future(self.probe_loop(rt, c, readiness, "ready")))
        else:
            c.ready = True
        if liveness:
            tasks.append(asyncio.ensure_future(self.probe_loop(rt, c, liveness, "live")))
        return tasks

    async def probe_loop(self, rt: PodRuntime, c: Container, probe: dict, kind: str) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        fails, oks = 0, 0
        while c.proc is not None:
            ok = await self.check(rt, c, probe)
            fails, oks = (0, oks + 1) if ok else (fails + 1, 0)
            if kind == "ready":
                if ok and oks >= int(probe.get("successThreshold", 1)) and not c.ready:
                    c.ready = True
                    self.changed.set()
                elif not ok and fails >= int(probe.get("failureThreshold", 3)) and c.ready:
                    c.ready = False
                    self.changed.set()
            elif fails >= int(probe.get("failureThreshold", 3)) and c.proc is not None:
                logger.info("pod %s/%s: %s failed its liveness probe", rt.ns, rt.name, c.name)
                _killpg(c.proc.pid, signal.SIGKILL)   # restarted by sync, as a kubelet does
                return
            await asyncio.sleep(period)

    async def check(self, rt: PodRuntime, c: Container, probe: dict) -> bool:
        pod = {"metadata": {"name": rt.name}, "spec": {"containers": [c.spec]}}
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = container_port(pod, get.get("port"))
                url = f"http://{get.get('host') or rt.ip}:{port}{get.get('path', '/')}"
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                port = container_port(pod, probe["tcpSocket"].get("port"))
                _, w = await asyncio.wait_for(asyncio.open_connection(rt.ip, port), timeout)
                w.close()
                return True
        except (TimeoutError, OSError, LookupError, aiohttp.ClientError):
            return False
        return True   # exec probes and others are not emulated: they pass

    # -- status --------------------------------------------------------------------------------
    def write_status(self, rt: PodRuntime, pod: dict[str, Any]) -> None:
        old = pod.get("status") or {}
        running = [c for c in rt.containers if c.proc is not None]
        done = [c for c in rt.containers if c.done]
        if rt.containers and len(done) == len(rt.containers):
            ok = all(c.state["terminated"]["exitCode"] == 0 for c in done)
            phase = "Succeeded" if ok else "Failed"
        elif running or any(c.started_at for c in rt.containers):
            phase = "Running"
        else:
            phase = "Pending"
        ready = bool(rt.containers) and all(c.ready and c.proc is not None for c in rt.containers)
        conds = {"PodReadyToStartContainers": True, "Initialized": True, "Ready": ready,
                 "ContainersReady": ready, "PodScheduled": True}
        pod["status"] = {
            "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": rt.ip, "podIPs": [{"ip": rt.ip}], "startTime": rt.start_time,
            "qosClass": old.get("qosClass", "Burstable"),
            "conditions": [_condition(old, t, v) for t, v in conds.items()],
            "containerStatuses": [_container_status(c) for c in rt.containers]}

    def log_path(self, ns: str, name: str, container: str | None,
                 previous: bool = False) -> str:
        """The API server's pod log route asks here (400 as a kubelet that has not
        started the container yet answers). `previous`: the instance before the
        current (or last) one."""
        rt = self.pods.get((ns, name)) or self.ended.get((ns, name))
        names = [c.name for c in rt.containers] if rt else []
        if container is None and len(names) > 1:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod "
                           f"{name}, choose one of: {names}")
        c = next((c for c in rt.containers if container in (None, c.name)), None) if rt else None
        if c is None or c.started_at is None or not os.path.exists(c.log_path):
            raise ApiError(400, "BadRequest", f'container "{container or "?"}" in pod '
                           f'"{name}" is waiting to start: ContainerCreating')
        if previous:
            if not os.path.exists(previous_log(c.log_path)):
                raise ApiError(400, "BadRequest", f'previous terminated container "{c.name}"'
                               f' in pod "{name}" not found')
            return previous_log(c.log_path)
        return c.log_path

    # -- stopping --------------------------------------------------------------------------------
    async def delete_pod(self, rt: PodRuntime | None, pod: dict[str, Any]) -> None:
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        began = time.monotonic()
        if rt is not None:
            await self.kill(rt, min(grace, self.max_grace))
        # a kubelet confirms a termination a sync or two later, even with nothing left
        # to stop: a deleted pod stays readable (its logs too) for a moment
        await asyncio.sleep(max(0.0, self.min_terminate - (time.monotonic() - began)))
        meta = pod["metadata"]
        current = self.store.find(self.res("pods"), meta["namespace"], meta["name"])
        if current is not None and current["metadata"]["uid"] == meta["uid"]:
            self.store.remove(self.res("pods"), current)
            self.ended.pop((meta["namespace"], meta["name"]), None)
        self.terminating.discard((meta["namespace"], meta["name"]))

    async def kill(self, rt: PodRuntime, grace: float) -> None:
        """SIGTERM each container's process group, SIGKILL what is left after `grace`."""
        rt.stopping = True
        procs = [c.proc for c in rt.containers if c.proc is not None]
        for c in rt.containers:
            for task in c.probes:
                task.cancel()
        for p in procs:
            _killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while any(p.poll() is None for p in procs) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        for p in procs:
            _killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for c in rt.containers:
            c.proc = None
        self.pods.pop((rt.ns, rt.name), None)
        self.ended[(rt.ns, rt.name)] = rt
        self.save_pids()

    async def stop(self) -> None:
        await super().stop()
        await asyncio.gather(*(self.kill(rt, 3.0) for rt in list(self.pods.values())))
        if self.http:
            await self.http.close()

    def save_pids(self) -> None:
        """The process groups of running containers, for the harness to clean up should
        the emulator itself be killed."""
        groups = {f"{rt.ns}/{rt.name}/{c.name}": c.proc.pid for rt in self.pods.values()
                  for c in rt.containers if c.proc is not None}
        path = os.path.join(self.root, "pods.json")
        with open(path + ".tmp", "w") as f:
            json.dump(groups, f)
        os.replace(path + ".tmp", path)


def previous_log(path: str) -> str:
    return path.removesuffix(".log") + ".previous.log"


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """What a pod asks of its node: per resource, the sum over its containers of the
    request (the limit where there is no request, as the API server defaults it)."""
    total: dict[str, float] = {"pods": 1}
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for k, v in asked.items():
            total[k] = total.get(k, 0) + quantity(v)
    return total


def _unschedulable(pod: dict[str, Any], message: str) -> None:
    old = pod.get("status") or {}
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message}
    same = next((c for c in old.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    cond["lastTransitionTime"] = (same.get("lastTransitionTime") if same.get("status") == "False"
                                  else None) or now()
    pod["status"] = {"phase": "Pending", "qosClass": old.get("qosClass", "Burstable"),
                     "conditions": [cond]}


def _condition(old_status: dict[str, Any], kind: str, value: bool) -> dict[str, Any]:
    status = "True" if value else "False"
    old = next((c for c in old_status.get("conditions") or [] if c.get("type") == kind), {})
    when = old.get("lastTransitionTime") if old.get("status") == status else None
    return {"type": kind, "status": status, "lastProbeTime": None,
            "lastTransitionTime": when or now()}


def _container_status(c: Container) -> dict[str, Any]:
    out = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
           "ready": bool(c.ready and c.proc is not None), "started": c.proc is not None,
           "restartCount": c.restarts, "state": c.state, "lastState": c.last_state}
    if c.proc is not None:
        out["containerID"] = f"process://{c.proc.pid}"
    return out


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
