"""Start the emulated cluster (kube.cluster) and the real Dask operator controller
(`kopf run --standalone -A -m dask_kubernetes.operator.controller`, unmodified) from a
test, and stop both, leaving no process or port behind:

    with emulated_cluster(tmp_path) as kube:
        ... KUBECONFIG=kube.kubeconfig ...
        kube.objects("pods")

The controller runs as it would in a cluster: with its own service-account kubeconfig,
and the DNS shim first on its PYTHONPATH (it resolves <cluster>-scheduler.<ns>).
It is ready when the emulator has seen it open its watches."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROLLER_USER = "system:serviceaccount:dask-operator:dask-kubernetes-operator"
CONTROLLER_WATCHES = {"kubernetes.dask.org/v1/daskclusters",
                      "kubernetes.dask.org/v1/daskworkergroups", "v1/services", "v1/pods"}
GROUPS = {"deployments": "apps/v1", "pods": "v1", "services": "v1", "events": "v1",
          "namespaces": "v1"}


class EmulatedCluster:
    def __init__(self, folder: str):
        self.dir = folder
        self.kubeconfig = os.path.join(folder, "kubeconfig")
        self.controller_kubeconfig = os.path.join(folder, "controller.kubeconfig")
        self.cluster_log = os.path.join(folder, "cluster.log")
        self.controller_log = os.path.join(folder, "controller.log")
        self.url = ""
        self.info: dict[str, Any] = {}
        self.emulator: subprocess.Popen | None = None
        self.controller: subprocess.Popen | None = None

    # -- the API, as the test sees it ---------------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Bearer tester-token", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw, code = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, code = e.read(), e.code
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        code, body = self.request("GET", path)
        assert code == 200, (path, code, body)
        return body

    def objects(self, plural: str, namespace: str | None = "default",
                selector: str | None = None) -> list[dict[str, Any]]:
        gv = GROUPS.get(plural, "kubernetes.dask.org/v1")
        base = "/api/v1" if gv == "v1" else f"/apis/{gv}"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        if selector:
            path += "?" + urllib.parse.urlencode({"labelSelector": selector})
        return self.get(path)["items"]

    def audit(self) -> list[dict[str, Any]]:
        return self.get("/debug/audit")

    def watches(self) -> list[dict[str, Any]]:
        return self.get("/debug/watches")

    def pod_groups(self) -> dict[str, int]:
        """The process groups of running containers, as the kubelet last wrote them."""
        with contextlib.suppress(OSError, ValueError), \
                open(os.path.join(self.dir, "pods.json")) as f:
            return json.load(f)
        return {}

    def wait_all_gone(self, timeout: float = 30.0) -> None:
        """Wait until no DaskCluster, nothing the controller made, no pod and no pod
        process is left. Deletion cascades in the background, as in Kubernetes: the
        owner goes first, what it owns a moment later."""
        deadline = time.monotonic() + timeout
        plurals = ("daskclusters", "daskworkergroups", "daskautoscalers", "deployments",
                   "services", "pods")
        while True:
            left = {p: [o["metadata"]["name"] for o in self.objects(p)] for p in plurals}
            left = {p: names for p, names in left.items() if names}
            if not left and self.pod_groups() == {}:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"still there {timeout}s after the run: {left}, "
                                     f"pod processes {self.pod_groups()}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The emulator's and the controller's logs, for failure messages."""
        out = []
        for path in (self.cluster_log, self.controller_log):
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                out.append(f"==> {path} <==\n{f.read()[-6000:]}")
        return "\n".join(out)

    # -- starting and stopping --------------------------------------------------------------
    def start_emulator(self, args: list[str], timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [TESTS_DIR, *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("KUBECONFIG", None)
        with open(self.cluster_log, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "kube.cluster", "--dir", self.dir,
                                     *args], cwd=TESTS_DIR, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        self.emulator = proc
        ready = os.path.join(self.dir, "ready.json")
        self._wait(lambda: os.path.exists(ready), proc, timeout, "the emulator did not start")
        with open(ready) as f:
            self.info = json.load(f)
        self.url = self.info["url"]

    def start_controller(self, timeout: float = 90.0) -> None:
        env = {**os.environ, "KUBECONFIG": self.controller_kubeconfig,
               "PYTHONPATH": self.info["shim_dir"],
               "KUBE_EMULATOR_HOSTS": self.info["hosts_file"]}
        with open(self.controller_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "--standalone", "-A",
                 "-m", "dask_kubernetes.operator.controller"],
                cwd=self.dir, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.controller = proc

        def watching() -> bool:
            have = {w["resource"] for w in self.watches() if w["user"] == CONTROLLER_USER}
            return CONTROLLER_WATCHES <= have
        self._wait(watching, proc, timeout, "the controller did not open its watches")

    def _wait(self, ready, proc: subprocess.Popen, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} (exit code {proc.poll()}):\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """The controller (SIGTERM, SIGKILL after 10 s), then the emulator, which stops
        the pods; then any container process group it may have left."""
        for proc, grace in ((self.controller, 10), (self.emulator, 20)):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for pgid in self.pod_groups().values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self.controller = self.emulator = None


@contextlib.contextmanager
def emulated_cluster(folder: str | os.PathLike, *, controller: bool = True,
                     node_cpu: str = "8", node_memory: str = "32Gi",
                     node_resources: dict[str, str] | None = None,
                     restart_backoff: float | None = None,
                     lb_delay: float | None = None,
                     extra_args: list[str] = ()) -> Iterator[EmulatedCluster]:
    """The emulator (and, unless controller=False, the Dask operator's controller) for
    the block; their files go in `folder`."""
    folder = os.path.abspath(str(folder))
    os.makedirs(folder, exist_ok=True)
    args = ["--node-cpu", node_cpu, "--node-memory", node_memory]
    for name, q in (node_resources or {}).items():
        args += ["--node-resource", f"{name}={q}"]
    if restart_backoff is not None:
        args += ["--restart-backoff", str(restart_backoff)]
    if lb_delay is not None:
        args += ["--lb-delay", str(lb_delay)]
    args += list(extra_args)   # e.g. ["--history", "5"]
    kube = EmulatedCluster(folder)
    try:
        kube.start_emulator(args)
        if controller:
            kube.start_controller()
        yield kube
    finally:
        kube.stop()
