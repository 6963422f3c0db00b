"""The `kubernetes` backend's calls to the API server (kr8s) and to KubeCluster, each a
coroutine run on an event loop of its own: start a DaskCluster under a deadline, delete
it by name and run label, read its pods' logs, list the run-labelled ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from ..deadline import call_with_deadline
from .kubernetes_body import RUN_ID_LABEL

class GaveUp(Exception):
    pass


async def _api(opts: dict[str, Any]):
    import kr8s.asyncio
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        # kr8s' client logs every request at INFO: unless asked for, keep that out of
        # the task log
        httpx_log.setLevel(logging.WARNING)
    return await kr8s.asyncio.api(kubeconfig=opts.get("kubeconfig"), context=opts.get("context"))


_CLUSTER_CLASS: list[type] = []


def _quiet_cluster_class() -> type:
    if not _CLUSTER_CLASS:
        import weakref

        from dask_kubernetes.operator import KubeCluster, networking

        from . import kubernetes_forward
        kubernetes_forward.install(networking)

        class DaskjobKubeCluster(KubeCluster):
            # not in KubeCluster._instances: dask-kubernetes' atexit reaper would close it
            # on a loop that is gone by then, and print about it; daskjob closes its own
            _instances = weakref.WeakSet()

        _CLUSTER_CLASS.append(DaskjobKubeCluster)
    return _CLUSTER_CLASS[0]


async def start_cluster(body, opts, loop, deadline, stopped, state) -> None:
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    # the first kr8s API object made on this loop is the one KubeCluster's objects use:
    # so the kubeconfig/context options reach them
    api = await _api(opts)
    state["api"] = api
    state["namespace"] = state.get("namespace") or api.namespace
    cls = _quiet_cluster_class()
    kwargs = {}
    if opts.get("resource_timeout") is not None:
        kwargs["resource_timeout"] = opts["resource_timeout"]
    if opts.get("scheduler_forward_port") is not None:
        kwargs["scheduler_forward_port"] = opts["scheduler_forward_port"]
    if opts.get("port_forward_cluster_ip") is not None:
        kwargs["port_forward_cluster_ip"] = opts["port_forward_cluster_ip"]
    cluster = cls(custom_cluster_spec=body, namespace=state["namespace"], loop=loop,
                  asynchronous=False, shutdown_on_close=True, quiet=True,
                  create_mode=CreateMode.CREATE_ONLY, **kwargs)
    state["cluster"] = cluster
    task = asyncio.ensure_future(cluster._start())
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.2)
        if done:
            task.result()
            return
        why = None
        if time.monotonic() > deadline:
            why = "within the startup deadline"
        elif stopped():
            why = "before the run was cancelled"
        if why:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise GaveUp(why)


async def delete_cluster(state, name, run_label, timeout) -> bool:
    """Delete the run's DaskCluster by name, and any other carrying its run-id label.
    True when they are gone within `timeout` (the operator removes its finalizer after
    deleting the pods); False when the deletion is still under way."""
    from dask_kubernetes.operator._objects import DaskCluster
    import kr8s

    api = state.get("api") or await _api({})
    namespace = state.get("namespace") or api.namespace
    names = {name}
    with contextlib.suppress(Exception):
        if run_label is None:
            raise LookupError  # by name only
        async for dc in api.async_get(DaskCluster, namespace=namespace,
                                      label_selector={RUN_ID_LABEL: run_label}):
            if (dc.labels or {}).get(RUN_ID_LABEL) == run_label:
                names.add(dc.name)
    for n in sorted(names):
        with contextlib.suppress(kr8s.NotFoundError):
            dc = await DaskCluster(n, namespace=namespace, api=api)
            await dc.delete()
    end = time.monotonic() + timeout
    for n in sorted(names):
        dc = await DaskCluster(n, namespace=namespace, api=api)
        while await dc.exists():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.5)
    return True


async def create_objects(state, bodies: list[dict]) -> list[tuple[str, str]]:
    """Create the run's DaskWorkerGroups and DaskAutoscaler beside its DaskCluster.
    Returns (kind, name) of each, for their deletion."""
    from dask_kubernetes.operator._objects import DaskAutoscaler, DaskWorkerGroup
    classes = {"DaskWorkerGroup": DaskWorkerGroup, "DaskAutoscaler": DaskAutoscaler}
    made = []
    for body in bodies:
        obj = await classes[body["kind"]](body, namespace=state["namespace"], api=state["api"])
        await obj.create()
        made.append((body["kind"], body["metadata"]["name"]))
        state.setdefault("made", []).append(made[-1])
    return made


async def delete_objects(state, made: list[tuple[str, str]]) -> None:
    """Delete what create_objects made (the DaskCluster's deletion would cascade to
    them through the operator; deleting them first does not depend on it)."""
    from dask_kubernetes.operator._objects import DaskAutoscaler, DaskWorkerGroup
    import kr8s
    classes = {"DaskWorkerGroup": DaskWorkerGroup, "DaskAutoscaler": DaskAutoscaler}
    for kind, name in reversed(made):
        with contextlib.suppress(kr8s.NotFoundError):
            obj = await classes[kind](name, namespace=state["namespace"], api=state["api"])
            await obj.delete()


async def fetch_pod_logs(opts, namespace, name, logs_dir) -> list[str]:
    from kr8s.asyncio.objects import Pod
    api = await _api(opts)
    written = []
    os.makedirs(logs_dir, exist_ok=True)
    async for pod in api.async_get(Pod, namespace=namespace or api.namespace,
                                   label_selector={"dask.org/cluster-name": name}):
        if (pod.labels or {}).get("dask.org/cluster-name") != name:
            continue
        phase = (pod.raw.get("status") or {}).get("phase")
        if phase != "Running":
            continue
        try:
            lines = [line async for line in pod.logs()]
        except Exception as e:  # noqa: BLE001 - one pod's logs must not stop the rest
            lines = [f"(could not read the logs of {pod.name}: {type(e).__name__}: {e})"]
        path = os.path.join(logs_dir, f"pod-{pod.name}.log")
        with open(path, "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        written.append(path)
    return written


# container states that say why a pod is not running (Kubernetes' own reasons)
STUCK_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                           "CreateContainerConfigError", "CreateContainerError",
                           "InvalidImageName", "RunContainerError"})
LOG_LINES_IN_ERROR = 20


async def pod_problems(state, name) -> list[str]:
    """Why DaskCluster `name`'s pods are not up, in Kubernetes' words: a pod Pending
    (unschedulable, and why), a container waiting (CrashLoopBackOff, ImagePullBackOff,
    ...) with the last lines of its log. Empty when every pod runs."""
    from kr8s.asyncio.objects import Pod
    api = state.get("api") or await _api({})
    problems = []
    async for pod in api.async_get(Pod, namespace=state.get("namespace") or api.namespace,
                                   label_selector={"dask.org/cluster-name": name}):
        status = pod.raw.get("status") or {}
        if (pod.labels or {}).get("dask.org/cluster-name") != name:
            continue
        for text in _pod_state(pod.name, status):
            problems.append(text)
            if "restarted" in text:
                problems.append(await _log_tail(pod))
    return problems


def _pod_state(pod: str, status: dict[str, Any]) -> list[str]:
    """What a pod's status says is wrong with it (nothing for a pod on its way up)."""
    out = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = ": ".join(filter(None, [cond.get("reason") or "not scheduled",
                                          cond.get("message")]))
            out.append(f"pod {pod} is {status.get('phase') or 'Pending'}: {why}")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            out.append(f"pod {pod}: container {cs.get('name')} {waiting['reason']} "
                       f"(restarted {cs.get('restartCount', 0)} times){detail}")
    return out


async def _log_tail(pod) -> str:
    """The container's last lines: of the run that crashed, when it is waiting again."""
    for previous in (False, True):
        try:
            lines = [line async for line in pod.logs(tail_lines=LOG_LINES_IN_ERROR,
                                                     previous=previous)]
        except Exception:  # noqa: BLE001 - no log is said so below
            continue
        if lines:
            return f"last lines of {pod.name}'s log:\n" + "\n".join(lines)
    return f"(no log of {pod.name} could be read)"


async def list_clusters(opts) -> list[dict]:
    from dask_kubernetes.operator._objects import DaskCluster
    api = await _api(opts)
    namespace = opts.get("namespace") or api.namespace
    return [dc.raw async for dc in api.async_get(DaskCluster, namespace=namespace,
                                                 label_selector=RUN_ID_LABEL)]


async def delete_named(opts, name) -> None:
    api = await _api(opts)
    if not await delete_cluster({"api": api, "namespace": opts.get("namespace") or api.namespace},
                                 name, None, 30.0):
        raise TimeoutError(f"DaskCluster {name} still exists 30s after its deletion was "
                           "requested (is the operator running?)")


def run_async(fn, *args) -> Any:
    """Run a coroutine function on a fresh loop in a thread of its own (the caller may
    already be inside an event loop, e.g. under Airflow's triggerer or a notebook)."""
    return call_with_deadline(lambda: asyncio.run(fn(*args)), None, name="daskjob-kubernetes")
