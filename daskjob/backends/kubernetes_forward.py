"""Port-forwards to a run's scheduler Service that end with the run.

A driver outside the cluster reaches a ClusterIP scheduler Service through a
port-forward. dask-kubernetes opens each one (the scheduler's port, the dashboard's)
from a thread that runs forever: after the run, the driver would keep the thread and a
listening local port per forward. daskjob replaces that one function with kr8s'
port-forward run on the run's own event loop, and stops the forwards of a cluster when
it deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# (namespace, service name) -> the forwards open to it: their stop events and tasks
_OPEN: dict[tuple[str, str], list[tuple[asyncio.Event, asyncio.Task]]] = {}


async def port_forward_service(service_name: str, namespace: str, remote_port: int,
                               local_port: int | None = None) -> int:
    """What dask_kubernetes.operator.networking.port_forward_service does (forward a
    local port to the Service, return the local port), stoppable."""
    from kr8s.asyncio.objects import Service
    service = await Service.get(service_name, namespace=namespace)
    forward = service.portforward(remote_port, local_port or "auto")
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        async with forward as opened:
            port.set_result(opened)
            await stop.wait()

    task = asyncio.ensure_future(hold())
    # known before it opens: a start cancelled meanwhile still has it closed
    _OPEN.setdefault((namespace, service_name), []).append((stop, task))
    await asyncio.wait({port, task}, return_when=asyncio.FIRST_COMPLETED)
    if not port.done():
        task.result()  # the forward could not open: its error
        raise ConnectionError(f"port forward to {namespace}/{service_name} ended at once")
    return port.result()


async def stop_forwards(namespace: str, cluster_name: str) -> int:
    """Close the local ports forwarded to DaskCluster `cluster_name`'s scheduler Service.
    Returns how many were open."""
    forwards = _OPEN.pop((namespace, f"{cluster_name}-scheduler"), [])
    for stop, _ in forwards:
        stop.set()
    for _, task in forwards:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
    return len(forwards)


def install(networking: Any) -> None:
    """Have dask-kubernetes' networking module (which KubeCluster calls to reach a
    ClusterIP scheduler from outside the cluster) open stoppable forwards."""
    networking.port_forward_service = port_forward_service
