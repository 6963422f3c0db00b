"""The controllers a cluster runs besides the kubelet, in the emulator's process:

- Deployments: keep `spec.replicas` pods made from the template (owned by the Deployment
  directly: nothing the Dask operator, kr8s or KubeCluster does reads ReplicaSets), and
  the Deployment's status counts.
- Services: a loopback cluster IP (127.20.<subnet>.n) allocated at creation, with
  `status.loadBalancer: {}` as a real API server writes it (the Dask operator's Service
  status handler only fires on a non-empty status); kube-proxy, a TCP proxy per port to
  a Ready pod's podIP:targetPort; the cloud load balancer: a LoadBalancer Service gets
  its ingress IP (its cluster IP) once a Ready pod backs it, or after a provisioning
  delay (lb_delay); with status_on_endpoint, a ClusterIP or NodePort Service gets its
  (empty) status only once a Ready pod backs it, not at creation (see Services); and the
  hosts file of the DNS shim
  (dns/sitecustomize.py), the cluster's DNS: <svc>.<ns>[.svc[.cluster.local]].

Both reconcile level-triggered: on any change of their kinds, and every second."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import string
import time
from typing import Any

from .selectors import match_labels
from .store import ApiError, Store, now

logger = logging.getLogger("kube.workloads")


class Reconciler:
    """Runs reconcile() after every store change of `kinds`, and every `period` s."""
    kinds: frozenset[str] = frozenset()
    period = 1.0

    def __init__(self, store: Store):
        self.store = store
        self.changed = asyncio.Event()
        store.listeners.append(self._on_change)
        self.task: asyncio.Task | None = None

    def _on_change(self, kind: str, res, obj) -> None:
        if res.kind in self.kinds:
            self.changed.set()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.period)
            self.changed.clear()
            try:
                await self.reconcile()
            except Exception:
                logger.exception("%s: reconcile failed", type(self).__name__)

    async def reconcile(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def res(self, plural: str):
        group = "apps" if plural == "deployments" else ""
        return self.store.registry.find(group, "v1", plural)


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return (any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            and not pod["metadata"].get("deletionTimestamp"))


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


class Deployments(Reconciler):
    kinds = frozenset({"Deployment", "Pod"})

    async def reconcile(self) -> None:
        pods_res, deps = self.res("pods"), self.res("deployments")
        for dep in self.store.items(deps):
            if dep["metadata"].get("deletionTimestamp"):
                continue
            ns = dep["metadata"]["namespace"]
            pods = [p for p in self.store.items(pods_res, ns) if owned_by(p, dep)]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            want = int((dep.get("spec") or {}).get("replicas", 1))
            for _ in range(want - len(live)):
                self.store.create(pods_res, ns, self.pod_from(dep))
            newest_first = sorted(live, key=lambda p: int(p["metadata"]["resourceVersion"]),
                                  reverse=True)
            for pod in newest_first[:max(0, len(live) - want)]:
                self.store.delete(pods_res, ns, pod["metadata"]["name"])
            counts = (len(live), sum(pod_ready(p) for p in live))
            self.store.update(deps, ns, dep["metadata"]["name"],
                              lambda d, c=counts: _deployment_status(d, *c))

    def pod_from(self, dep: dict[str, Any]) -> dict[str, Any]:
        template = dep["spec"].get("template") or {}
        meta = template.get("metadata") or {}
        spec = json.loads(json.dumps(template.get("spec") or {}))
        digest = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{dep['metadata']['name']}-{digest}-{suffix}",
                             "labels": {**(meta.get("labels") or {}),
                                        "pod-template-hash": digest},
                             "annotations": dict(meta.get("annotations") or {}),
                             "ownerReferences": [{
                                 "apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": dep["metadata"]["name"],
                                 "uid": dep["metadata"]["uid"], "controller": True,
                                 "blockOwnerDeletion": True}]},
                "spec": spec}


def _deployment_status(dep: dict[str, Any], replicas: int, ready: int) -> None:
    want = int((dep.get("spec") or {}).get("replicas", 1))
    status = {"observedGeneration": dep["metadata"].get("generation", 1),
              "replicas": replicas, "updatedReplicas": replicas,
              "readyReplicas": ready, "availableReplicas": ready,
              "unavailableReplicas": max(0, want - ready)}
    old = dep.get("status") or {}
    available = "True" if ready >= want else "False"
    cond = next((c for c in old.get("conditions") or [] if c["type"] == "Available"), None)
    if cond is None or cond["status"] != available:
        cond = {"type": "Available", "status": available, "lastTransitionTime": now(),
                "reason": "MinimumReplicasAvailable" if available == "True"
                else "MinimumReplicasUnavailable"}
    dep["status"] = {k: v for k, v in status.items() if v or k == "observedGeneration"}
    dep["status"]["conditions"] = [cond]


class Services(Reconciler):
    """Cluster IPs, kube-proxy, the cloud load balancer and the DNS hosts file."""
    kinds = frozenset({"Service", "Pod"})

    def __init__(self, store: Store, hosts_file: str, subnet: int = 0,
                 lb_delay: float | None = None, status_on_endpoint: bool = False):
        super().__init__(store)
        self.hosts_file = hosts_file
        self.subnet = subnet   # cluster IPs are 127.20.<subnet>.<n>
        # None: a LoadBalancer gets its ingress once a Ready pod backs it (this avoids
        # dask/dask-kubernetes#968: the operator's "Pending" overwriting "Running");
        # a number: that many seconds after creation, whatever the pods (as a cloud
        # load balancer, which is provisioned whether or not its pods are up)
        self.lb_delay = lb_delay
        # False: a ClusterIP/NodePort Service has its status from creation, as a real API
        # server writes it. The installed operator then races itself (#968 again: its
        # Service status handler's "Running" can land before its own "Pending", which
        # then stays); True moves that status to when a Ready pod backs the Service.
        self.status_on_endpoint = status_on_endpoint
        self.created: dict[str, float] = {}   # Service uid -> monotonic creation time
        self.next_ip = 0
        self.next_node_port = 30000
        self.proxies: dict[tuple[str, str, int], asyncio.AbstractServer] = {}
        self.conns: set[asyncio.StreamWriter] = set()
        self.hosts: dict[str, str] = {}
        store.hooks["Service"] = self.on_create
        self.write_hosts()

    def on_create(self, svc: dict[str, Any]) -> None:
        """What the API server fills in: IP, port defaults, an empty LB status."""
        spec = svc.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            self.next_ip += 1
            if self.next_ip > 254:
                raise ApiError(500, "InternalError", "the emulator's service IPs are used up")
            spec["clusterIP"] = f"127.20.{self.subnet}.{self.next_ip}"
            spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer"):
                self.next_node_port += 1
                port.setdefault("nodePort", self.next_node_port)
        if not self.status_on_endpoint or spec["type"] == "LoadBalancer":
            svc["status"] = {"loadBalancer": {}}
        self.created[svc["metadata"]["uid"]] = time.monotonic()

    async def reconcile(self) -> None:
        services = [s for s in self.store.items(self.res("services"))
                    if not s["metadata"].get("deletionTimestamp")]
        wanted = set()
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            ip = svc["spec"].get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in svc["spec"].get("ports") or []:
                key = (ns, name, int(port["port"]))
                wanted.add(key)
                if key not in self.proxies:
                    await self.open_proxy(key, ip, port)
            if svc["spec"]["type"] == "LoadBalancer" and self.lb_ready(svc):
                self.store.update(self.res("services"), ns, name, _give_ingress)
            elif "status" not in svc and self.endpoints(svc):
                self.store.update(self.res("services"), ns, name, _give_status)
        for key in set(self.proxies) - wanted:
            self.proxies.pop(key).close()
        hosts = {}
        for svc in services:
            ip, ns, name = (svc["spec"].get("clusterIP"), svc["metadata"]["namespace"],
                            svc["metadata"]["name"])
            if ip and ip != "None":
                for suffix in ("", ".svc", ".svc.cluster.local"):
                    hosts[f"{name}.{ns}{suffix}"] = ip
        if hosts != self.hosts:
            self.hosts = hosts
            self.write_hosts()

    def lb_ready(self, svc: dict[str, Any]) -> bool:
        """Has the emulated cloud provisioned this LoadBalancer yet?"""
        if self.lb_delay is None:
            return bool(self.endpoints(svc))
        born = self.created.get(svc["metadata"]["uid"], 0.0)
        return time.monotonic() - born >= self.lb_delay

    def write_hosts(self) -> None:
        tmp = f"{self.hosts_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.hosts, f, indent=1)
        os.replace(tmp, self.hosts_file)   # readers never see half a file

    def endpoints(self, svc: dict[str, Any]) -> list[dict[str, Any]]:
        """The Ready pods the Service's selector matches."""
        ns = svc["metadata"]["namespace"]
        selector = svc["spec"].get("selector")
        return [p for p in self.store.items(self.res("pods"), ns)
                if match_labels(selector, p["metadata"].get("labels")) and pod_ready(p)
                and (p.get("status") or {}).get("podIP")]

    async def open_proxy(self, key: tuple[str, str, int], ip: str, port: dict) -> None:
        async def on_connect(reader, writer):
            await self.forward(key, port.get("targetPort"), reader, writer)
        try:
            self.proxies[key] = await asyncio.start_server(on_connect, ip, key[2])
        except OSError as e:
            logger.error("service %s/%s: cannot listen on %s:%s: %s", *key[:2], ip, key[2], e)

    async def forward(self, key, target, reader, writer) -> None:
        """kube-proxy for one connection: to a Ready endpoint, else closed (as a
        connection to a Service without endpoints is refused)."""
        svc = self.store.find(self.res("services"), key[0], key[1])
        pods = self.endpoints(svc) if svc else []
        if not pods:
            writer.close()
            return
        pod = random.choice(pods)
        try:
            port = container_port(pod, target)
        except LookupError:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(pod["status"]["podIP"], port)
        except OSError:
            writer.close()
            return
        self.conns.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                                 return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self.conns.discard(w)
                w.close()

    async def stop(self) -> None:
        await super().stop()
        for server in self.proxies.values():
            server.close()
        for w in list(self.conns):
            w.close()
        self.proxies.clear()


def _give_status(svc: dict[str, Any]) -> None:
    svc.setdefault("status", {"loadBalancer": {}})


def _give_ingress(svc: dict[str, Any]) -> None:
    lb = svc.setdefault("status", {}).setdefault("loadBalancer", {})
    if not lb.get("ingress"):
        lb["ingress"] = [{"ip": svc["spec"]["clusterIP"], "ipMode": "VIP"}]


def container_port(pod: dict[str, Any], target: Any) -> int:
    """A Service's targetPort: a number, or the name of a container port."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    raise LookupError(f"pod {pod['metadata']['name']} has no port named {target!r}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
