"""An in-process Kubernetes API (kmock's emulator) on 127.0.0.1, for contract tests.

The emulator keeps objects in memory and answers create/get/list/patch/delete like an
API server, but runs no controllers: no operator acts on a DaskCluster, no pod ever
starts. It ignores label and field selectors (callers filter client-side). It runs on
its own event loop in a thread, so synchronous code (KubeCluster, the daskjob backend)
talks to it over HTTP exactly as it would to a real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any, Iterator

import yaml

DASK_GROUP = "kubernetes.dask.org/v1"
DASK_RESOURCES = {
    "daskclusters": ("DaskCluster", "daskcluster", {"status"}),
    "daskworkergroups": ("DaskWorkerGroup", "daskworkergroup", {"scale", "status"}),
    "daskjobs": ("DaskJob", "daskjob", {"status"}),
    "daskautoscalers": ("DaskAutoscaler", "daskautoscaler", set()),
}
CORE_RESOURCES = {
    "pods": ("Pod", "pod", {"log", "status"}),
    "services": ("Service", "service", {"status"}),
}
VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}


class Emulator:
    """Start with `with Emulator(tmp_path) as emu:`; `emu.kubeconfig` is a file that
    points at it. `emu.requests()` lists (method, path, body) of what it was sent."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = str(folder)
        self.kubeconfig = os.path.join(self.folder, "kubeconfig")
        self.url: str | None = None
        self.emu: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> "Emulator":
        self._thread = threading.Thread(target=self._serve, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30s")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator failed: {self._error!r}")
        with open(self.kubeconfig, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "emulator", "context": {
                    "cluster": "emulator", "user": "tester", "namespace": "default"}}],
            }, f)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to __enter__
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        import kmock
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emu = kmock.KubernetesEmulator()
        for plural, (kind, singular, subs) in DASK_RESOURCES.items():
            emu.resources[f"{DASK_GROUP}/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=singular, namespaced=True, verbs=VERBS, subresources=subs)
        for plural, (kind, singular, subs) in CORE_RESOURCES.items():
            emu.resources[f"v1/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=singular, namespaced=True, verbs=VERBS, subresources=subs)
        emu["get /version/"] << {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
        # kr8s asks with a trailing slash, which kmock's discovery does not answer
        emu["get /api/"] << {"kind": "APIVersions", "versions": ["v1"]}
        group = {"groupVersion": DASK_GROUP, "version": "v1"}
        emu["get /apis/"] << {"apiVersion": "v1", "kind": "APIGroupList", "groups": [
            {"name": DASK_GROUP.split("/")[0], "preferredVersion": group, "versions": [group]}]}
        self.emu = emu
        async with emu, kmock.Server(emu) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    # -- access from the test's thread -----------------------------------------------
    def call(self, fn, *args) -> Any:
        """Run fn(emulator, *args) on the emulator's loop (its state is not thread-safe)."""
        async def run():
            return fn(self.emu, *args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(15)

    def requests(self) -> list[tuple[str, str, Any]]:
        def collect(emu):
            out = []
            for req in list(emu):
                method = str(getattr(req, "method", "")).upper()
                method = method.rsplit(".", 1)[-1]
                body = None
                with contextlib.suppress(Exception):
                    body = req.data
                out.append((method, str(req.url.path) if hasattr(req, "url") else str(req), body))
            return out
        return self.call(collect)

    def objects(self, plural: str, group: str = DASK_GROUP) -> dict[tuple[str, str], dict]:
        """Live (not deleted) objects of a resource: {(namespace, name): raw object}."""
        def collect(emu):
            out = {}
            for (resource, ns, name), obj in emu.objects.items():
                if resource.plural == plural and (resource.group or "") == group.rpartition("/")[0] \
                        and not obj.deleted:
                    out[(ns, name)] = obj.raw
            return out
        return self.call(collect)

    def add_object(self, plural: str, namespace: str, name: str, body: dict,
                   group: str = DASK_GROUP) -> None:
        key = f"{group}/{plural}" if group else f"v1/{plural}"

        def put(emu):
            emu.objects[key, namespace, name] = body
        self.call(put)

    def on(self, selector: str, payload: Any) -> None:
        """Add a reaction, e.g. on('get /api/v1/namespaces/default/pods/p/log', b'text')."""
        def add(emu):
            emu[selector] << payload
        self.call(add)


@contextlib.contextmanager
def kubeconfig_env(path: str) -> Iterator[None]:
    """KUBECONFIG pointing at the emulator for the block (kr8s and KubeCluster read it)."""
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PlayedOperator:
    """What the Dask operator and the kubelet would do, played on loopback.

    For each DaskCluster created in the emulator: run its scheduler container's args as a
    local process (`dask` -> `python -m dask`, listening on 127.0.0.1), mark the
    DaskCluster Running, add a Ready scheduler Pod and a LoadBalancer Service whose
    ingress is 127.0.0.1, and a DaskWorkerGroup; when the worker group's replicas change,
    run that many worker containers' args as local processes (with the container env and
    DASK_SCHEDULER_ADDRESS, as the operator sets it); when the DaskCluster is deleted,
    stop all of them (the operator's cascade). The container args, env and resources are
    the backend's, unchanged apart from the listening addresses.
    """

    def __init__(self, emulator: Emulator, python: str):
        self.em = emulator
        self.python = python
        self.procs: dict[str, list] = {}      # cluster name -> Popen list (scheduler first)
        self.ports: dict[str, int] = {}
        self.workers: dict[str, int] = {}
        self.log_dir = os.path.join(emulator.folder, "pods")
        os.makedirs(self.log_dir, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="played-operator", daemon=True)

    def __enter__(self) -> "PlayedOperator":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for name in list(self.procs):
            self._stop_cluster(name)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - shown to the test through stop errors
                print(f"played operator: {type(e).__name__}: {e}", flush=True)

    def _command(self, container: dict, extra_env: dict[str, str], replace: dict[str, str],
                 add: list[str], log: str):
        import subprocess
        args = [replace.get(a, a) for a in container["args"]]
        if args[0] == "dask":
            args = [self.python, "-m", "dask", *args[1:]]
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env") or []},
               **extra_env}
        env.pop("KUBECONFIG", None)
        return subprocess.Popen(args + add, env=env, stdout=open(log, "ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _tick(self) -> None:
        clusters = self.em.objects("daskclusters")
        live = {name for _, name in clusters}
        for name in list(self.procs):
            if name not in live:
                self._stop_cluster(name)
        for (ns, name), body in clusters.items():
            if name not in self.procs:
                self._start_cluster(ns, name, body)
        for (ns, wg_name), wg in self.em.objects("daskworkergroups").items():
            cluster = wg["spec"]["cluster"]
            if cluster in self.procs:
                want = int(wg["spec"]["worker"].get("replicas") or 0)
                while self.workers.get(wg_name, 0) < want:
                    self._start_worker(cluster, wg_name, wg)

    def _start_cluster(self, ns: str, name: str, body: dict) -> None:
        port, dash = _free_port(), _free_port()
        sched = body["spec"]["scheduler"]["spec"]["containers"][0]
        p = self._command(sched, {}, {"0.0.0.0": "127.0.0.1"},
                          ["--port", str(port), "--dashboard-address", f"127.0.0.1:{dash}"],
                          os.path.join(self.log_dir, f"{name}-scheduler.log"))
        self.procs[name] = [p]
        self.ports[name] = port
        labels = {**(body["metadata"].get("labels") or {}),
                  "dask.org/cluster-name": name, "dask.org/component": "scheduler"}

        def apply(emu):
            emu.objects[f"{DASK_GROUP}/daskclusters", ns, name].patch(
                {"status": {"phase": "Running"}})
            emu.objects["v1/pods", ns, f"{name}-scheduler"] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{name}-scheduler", "namespace": ns, "labels": labels},
                "status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"}]}}
            emu.objects["v1/services", ns, f"{name}-scheduler"] = {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": f"{name}-scheduler", "namespace": ns, "labels": labels},
                "spec": {"type": "LoadBalancer", "selector": {
                    "dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "port": port, "targetPort": "tcp-comm"},
                              {"name": "http-dashboard", "port": dash,
                               "targetPort": "http-dashboard"}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}}
            emu.objects[f"{DASK_GROUP}/daskworkergroups", ns, f"{name}-default"] = {
                "apiVersion": DASK_GROUP, "kind": "DaskWorkerGroup",
                "metadata": {"name": f"{name}-default", "namespace": ns,
                             "labels": {"dask.org/cluster-name": name}},
                "spec": {"cluster": name, "worker": body["spec"]["worker"]}}
        self.em.call(apply)

    def _start_worker(self, cluster: str, wg_name: str, wg: dict) -> None:
        # the operator names a group's pods (and so its workers) <group>-worker-<hash>
        n = self.workers.get(wg_name, 0)
        wname = f"{wg_name}-worker-{n}"
        container = wg["spec"]["worker"]["spec"]["containers"][0]
        p = self._command(container,
                          {"DASK_WORKER_NAME": wname,
                           "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{self.ports[cluster]}"},
                          {"$(DASK_WORKER_NAME)": wname, "8788": "127.0.0.1:0"},
                          ["--host", "127.0.0.1"], os.path.join(self.log_dir, f"{wname}.log"))
        self.procs[cluster].append(p)
        self.workers[wg_name] = n + 1

    def _stop_cluster(self, name: str) -> None:
        from daskjob.procs import process_tree, terminate
        procs = self.procs.pop(name, [])
        for group in [g for g in self.workers if g.startswith(f"{name}-")]:
            del self.workers[group]
        terminate([p for p in process_tree([p.pid for p in procs]) if p.is_running()], grace=5)
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(5)
