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
