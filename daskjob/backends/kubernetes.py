"""`kubernetes`: a DaskCluster resource run by the Dask Kubernetes operator
(dask_kubernetes.operator.KubeCluster).

The backend builds the DaskCluster body itself (from dask-kubernetes' make_cluster_spec,
then: our name, labels and annotations, `dask scheduler` / `dask worker` commands, the
run's environment and worker dask config, requests/limits from the ClusterSpec) and hands
it to KubeCluster as `custom_cluster_spec`, with `shutdown_on_close=True`.

KubeCluster waits for the scheduler pod without a time limit; so the backend runs its
start on an event loop of its own and gives up at the run's startup deadline (or when the
run is cancelled), and then deletes the DaskCluster by name and by its run-id label
itself. Deleting a DaskCluster makes the operator delete its pods and services.

Traffic: the driver reaches the scheduler through a port-forward over the API server
(HTTPS) when it runs outside the cluster, or through the scheduler Service when inside.
Scheduler <-> worker and in-cluster client traffic is plain TCP: this backend does not set
up Dask TLS (ClusterSpec.tls=True is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from . import Backend, ClusterContext, Leftover, register_backend

if TYPE_CHECKING:
    from ..spec import ClusterSpec

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'daskjob[kubernetes]'"
RUN_ID_LABEL = "daskjob/run-id"
# DaskCluster names: a DNS-1123 label that leaves room for "-scheduler" (dask-kubernetes
# refuses longer ones); the operator names pods <name>-default-worker-<hex>
MAX_NAME = 53

# option: (type(s), what it is)
_OPTIONS: dict[str, tuple[tuple[type, ...], str]] = {
    "image": ((str,), "container image for scheduler and workers (required)"),
    "namespace": ((str,), "namespace (default: the kubeconfig context's)"),
    "kubeconfig": ((str,), "path of a kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                           "or the in-cluster service account)"),
    "context": ((str,), "kubeconfig context"),
    "resources": ((dict,), "extra container requests/limits: {requests: {...}, limits: {...}}"),
    "image_pull_policy": ((str,), "Always, IfNotPresent or Never"),
    "scheduler_service_type": ((str,), "ClusterIP (default), NodePort or LoadBalancer"),
    "resource_timeout": ((int, float), "seconds KubeCluster waits for the operator to act "
                                       "(default 60)"),
    "idle_timeout": ((int, float), "seconds of scheduler idleness after which the operator "
                                   "deletes the cluster (default 3600; 0: never)"),
    "scheduler_forward_port": ((int,), "local port for the dashboard port-forward"),
    "port_forward_cluster_ip": ((bool,), "port-forward a ClusterIP scheduler service "
                                         "(default: when not running inside the cluster)"),
    "service_account": ((str,), "service account of the scheduler and worker pods"),
    "node_selector": ((dict,), "nodeSelector of the scheduler and worker pods"),
    "annotations": ((dict,), "extra annotations on the DaskCluster (copied to its pods)"),
}
DEFAULT_IDLE_TIMEOUT = 3600

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")


# ---------------------------------------------------------------- names and labels
def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def cluster_name(run_id: str) -> str:
    """`daskjob-<run id>` as a valid DaskCluster name (lowercase DNS-1123 label, at most
    53 characters); a run id too long for it keeps its head and gets a hash suffix."""
    raw = f"daskjob-{run_id}"
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    if len(name) > MAX_NAME or name != raw:
        name = name[:MAX_NAME - 7].rstrip("-") + "-" + _short_hash(raw)
    return name


def label_value(value: str) -> str:
    """A Kubernetes label value: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
    Anything else is replaced; a value that had to change or be cut gets a hash suffix so
    different values stay different."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-_.")
    if clean == value and len(clean) <= 63:
        return clean
    return (clean[:56].rstrip("-_.") + "-" + _short_hash(str(value))).lstrip("-")


def label_key(key: str) -> str:
    """A Kubernetes label key: [DNS-subdomain prefix/]name, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-_.")[:63].rstrip("-_.") or "label"
    if prefix:
        prefix = re.sub(r"[^a-z0-9.-]+", "-", prefix.lower()).strip("-.")[:253]
        return f"{prefix}/{name}" if prefix else name
    return name


def kube_labels(labels: dict[str, str]) -> dict[str, str]:
    return {label_key(k): label_value(v) for k, v in labels.items()}


def check_labels(labels: dict[str, Any]) -> None:
    """Raise ValueError naming the first label the API server would refuse."""
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (not _LABEL_NAME.fullmatch(name) or len(name) > 63
                or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)))):
            raise ValueError(f"metadata.labels: {key!r} is not a valid label key "
                             "([prefix/]name, name at most 63 of [A-Za-z0-9-_.])")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"metadata.labels.{key}: {value!r} is not a valid label value "
                             "(at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)")


def quantity_bytes(n: int) -> str:
    """Bytes as a Kubernetes quantity string (Gi/Mi when exact, else plain bytes)."""
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# ---------------------------------------------------------------------- the body
def _options(spec: "ClusterSpec") -> dict[str, Any]:
    return dict(spec.options)


def build_cluster_body(spec: "ClusterSpec", ctx: ClusterContext) -> dict[str, Any]:
    """The DaskCluster resource for this run (not validated: see validate_cluster_body)."""
    import dask.config
    from dask_kubernetes.operator import make_cluster_spec

    opts = _options(spec)
    image = opts.get("image")
    name = cluster_name(ctx.run_id)
    env: dict[str, str] = dict(ctx.worker_env)
    if ctx.worker_config:
        # the workers' dask config, as a spawned local worker would inherit it
        env["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(ctx.worker_config)
    resources = _resources(spec, opts)
    idle = opts.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    body = make_cluster_spec(
        name=name, image=image, n_workers=0, env=env, resources=resources,
        scheduler_service_type=opts.get("scheduler_service_type", "ClusterIP"),
        idle_timeout=int(idle))
    body["metadata"]["labels"] = kube_labels(ctx.labels)
    # the exact run id too (label values are cut at 63 characters)
    body["metadata"]["annotations"] = {**{str(k): str(v) for k, v in
                                          (opts.get("annotations") or {}).items()},
                                       "daskjob/run-id": ctx.run_id}

    scheduler = body["spec"]["scheduler"]["spec"]["containers"][0]
    worker = body["spec"]["worker"]["spec"]["containers"][0]
    # dask-kubernetes still writes the dask-scheduler / dask-worker scripts, which
    # current distributed no longer installs
    scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0"]
    # scheduler: no requests/limits of the workers' size
    scheduler["resources"] = None
    worker_args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)",
                   "--dashboard", "--dashboard-address", "8788",
                   "--nthreads", str(spec.threads_per_worker),
                   "--death-timeout", str(spec.death_timeout_s)]
    if spec.memory_bytes:
        worker_args += ["--memory-limit", str(spec.memory_bytes)]
    for p in spec.preload:
        worker_args += ["--preload", p]
    worker["args"] = worker_args
    for container in (scheduler, worker):
        if opts.get("image_pull_policy"):
            container["imagePullPolicy"] = opts["image_pull_policy"]
    for part in (body["spec"]["scheduler"]["spec"], body["spec"]["worker"]["spec"]):
        if opts.get("service_account"):
            part["serviceAccountName"] = opts["service_account"]
        if opts.get("node_selector"):
            part["nodeSelector"] = {str(k): str(v) for k, v in opts["node_selector"].items()}
    return body


def _resources(spec: "ClusterSpec", opts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    requests: dict[str, Any] = {"cpu": str(spec.threads_per_worker)}
    limits: dict[str, Any] = {}
    if spec.memory_bytes:
        requests["memory"] = limits["memory"] = quantity_bytes(spec.memory_bytes)
    extra = opts.get("resources") or {}
    requests.update(extra.get("requests") or {})
    limits.update(extra.get("limits") or {})
    out = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _strip_none(value: Any) -> Any:
    # the API server drops null fields before it validates against the schema
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value if v is not None]
    return value


_SCHEMAS: dict[str, dict] = {}


def crd_schema(kind: str = "daskcluster") -> dict:
    """openAPIV3Schema of the served v1 version of a dask-kubernetes CRD."""
    if kind not in _SCHEMAS:
        import dask_kubernetes
        import yaml
        path = os.path.join(os.path.dirname(dask_kubernetes.__file__), "operator", "deployment",
                            "helm", "dask-kubernetes-operator", "crds", f"{kind}.yaml")
        with open(path) as f:
            crd = yaml.safe_load(f)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1" and v.get("served"))
        _SCHEMAS[kind] = version["schema"]["openAPIV3Schema"]
    return _SCHEMAS[kind]


def validate_cluster_body(body: dict[str, Any], kind: str = "daskcluster") -> None:
    """What the API server would refuse, as a ValueError naming the field: the CRD schema
    (when jsonschema is installed), the label syntax, the image and the name."""
    meta = body.get("metadata") or {}
    check_labels(meta.get("labels") or {})
    name = meta.get("name") or ""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > MAX_NAME:
        raise ValueError(f"metadata.name: {name!r} is not a valid DaskCluster name "
                         f"(lowercase DNS-1123 label of at most {MAX_NAME} characters)")
    spec = _strip_none(body)
    for part in ("scheduler", "worker"):
        containers = (((spec.get("spec") or {}).get(part) or {}).get("spec") or {}).get("containers") or []
        for i, c in enumerate(containers):
            if not isinstance(c, dict) or not c.get("image"):
                raise ValueError(f"spec.{part}.spec.containers.{i}.image: missing (set "
                                 "options.image to a container image with daskjob's Python "
                                 "packages)")
    try:
        import jsonschema
    except ImportError:  # jsonschema is not a dependency of the kubernetes extra: skip
        return
    validator = jsonschema.Draft7Validator(crd_schema(kind))
    errors = sorted(validator.iter_errors({k: v for k, v in spec.items()
                                           if k not in ("apiVersion", "kind", "metadata")}),
                    key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
                 for e in errors[:5]]
        raise ValueError(f"the {body.get('kind', 'DaskCluster')} does not match the CRD schema:\n  "
                         + "\n  ".join(lines))


# ------------------------------------------------------------------- the backend
@register_backend
class KubernetesBackend(Backend):
    name = "kubernetes"
    shares_filesystem = False
    # the operator's pods speak plain TCP to each other; see the module docstring
    tls_by_default = False
    reserved_options = frozenset({
        "n_workers", "env", "name", "custom_cluster_spec", "shutdown_on_close",
        "worker_command", "create_mode", "asynchronous", "loop", "jupyter",
        "threads_per_worker", "memory_limit", "memory_per_worker",
    })

    def validate(self, spec: "ClusterSpec") -> None:
        super().validate(spec)
        opts = spec.options
        unknown = set(opts) - set(_OPTIONS) - self.reserved_options
        if unknown:
            raise ValueError(f"options: {', '.join(sorted(unknown))} not accepted by the kubernetes "
                             f"backend; accepted: {', '.join(sorted(_OPTIONS))}")
        for key, value in opts.items():
            types, _ = _OPTIONS[key]
            if value is not None and (not isinstance(value, types) or
                                      (isinstance(value, bool) and bool not in types)):
                raise ValueError(f"options.{key}: expected {' or '.join(t.__name__ for t in types)}, "
                                 f"got {value!r}")
        # a missing image is refused by create(), not here: `daskjob reap --backend
        # kubernetes` builds a ClusterSpec with no options just to reach the API server
        if "image" in opts and not opts["image"]:
            _require_image(opts)
        if spec.tls:
            raise ValueError("tls: the kubernetes backend does not set up Dask TLS (traffic "
                             "between the operator's pods is plain TCP); leave tls unset or false")
        res = opts.get("resources") or {}
        for part in res:
            if part not in ("requests", "limits") or not isinstance(res[part], dict):
                raise ValueError(f"options.resources.{part}: expected requests: {{...}} and/or "
                                 "limits: {...} mappings")
            for k, v in res[part].items():
                if not isinstance(v, str) or not _QUANTITY.fullmatch(v):
                    raise ValueError(f"options.resources.{part}.{k}: {v!r} is not a Kubernetes "
                                     "quantity string (e.g. '2', '500m', '4Gi')")
        for key in ("idle_timeout", "resource_timeout"):
            if opts.get(key) is not None and opts[key] < 0:
                raise ValueError(f"options.{key}: must be >= 0, got {opts[key]}")
        try:
            import dask_kubernetes.operator  # noqa: F401
        except ImportError:
            raise ValueError(f"the kubernetes backend needs dask-kubernetes: {EXTRA_HINT}") from None

    # -- start ---------------------------------------------------------------------
    def create(self, spec: "ClusterSpec", ctx: ClusterContext) -> Any:
        deadline, stopped = _startup_limits(ctx)  # first: imports below take a while
        from distributed.utils import LoopRunner, sync

        _require_image(spec.options)  # before anything is created
        body = build_cluster_body(spec, ctx)
        validate_cluster_body(body)
        name = body["metadata"]["name"]
        run_label = body["metadata"]["labels"][RUN_ID_LABEL]
        opts = _options(spec)
        runner = LoopRunner(asynchronous=False)
        runner.start()
        state: dict[str, Any] = {"namespace": opts.get("namespace")}
        try:
            sync(runner.loop, _start_cluster, body, opts, runner.loop, deadline, stopped, state)
        except BaseException as e:
            try:
                gone = sync(runner.loop, _delete_cluster, state, name, run_label, 5.0,
                            callback_timeout=30)
                outcome = "deleted it" if gone else "deleting it (still terminating)"
            except BaseException as e2:  # noqa: BLE001 - reported; the reaper can retry
                outcome = f"could not delete it ({type(e2).__name__}: {e2})"
                logger.warning("daskjob: DaskCluster %s: %s", name, outcome)
            runner.stop()
            if isinstance(e, _GaveUp):
                raise TimeoutError(f"DaskCluster {name} did not get a running scheduler "
                                   f"{e}; {outcome}") from None
            raise
        cluster = state["cluster"]
        cluster._daskjob = {"runner": runner, "api": state.get("api"), "name": name, "opts": opts,
                            "namespace": state["namespace"], "run_label": run_label,
                            "closed": False, "lock": threading.Lock()}
        return cluster

    def scale(self, cluster: Any, n: int) -> None:
        cluster.scale(n)

    def dashboard_link(self, cluster: Any) -> str | None:
        with contextlib.suppress(Exception):
            return cluster.dashboard_link
        return None

    def close(self, cluster: Any, timeout: float) -> None:
        """Delete the DaskCluster (KubeCluster's close, then by name and run label if that
        failed). Bounded by `timeout` (+5 s); a second call after success does nothing,
        after a failure it tries again."""
        from distributed.utils import sync
        info = getattr(cluster, "_daskjob", None)
        if info is None:
            cluster.close(timeout=timeout)
            return
        with info["lock"]:
            if info["closed"]:
                return
            runner = info["runner"]
            started = time.monotonic()
            try:
                # KubeCluster deletes the DaskCluster and waits for it to go
                sync(runner.loop, cluster._close, timeout=timeout, callback_timeout=timeout + 5)
            except Exception as e:  # deleted by name and label below
                left = max(5.0, timeout - (time.monotonic() - started))
                state = {"namespace": info["namespace"], "api": info["api"]}
                try:
                    if not sync(runner.loop, _delete_cluster, state, info["name"],
                                info["run_label"], left, callback_timeout=left + 5):
                        raise TimeoutError(f"still there {left:.0f}s after its deletion was "
                                           "requested (is the operator running?)")
                except Exception as e2:
                    raise RuntimeError(f"could not delete DaskCluster {info['namespace']}/"
                                       f"{info['name']}: {type(e).__name__}: {e}; then "
                                       f"{type(e2).__name__}: {e2}") from e2
            info["closed"] = True
            runner.stop()

    def snapshot_logs(self, cluster: Any, logs_dir: str) -> list[str]:
        """Write the scheduler and worker pods' logs (Running pods only: Kubernetes serves
        no logs of a pod that has not started) to logs_dir/pod-<name>.log."""
        info = getattr(cluster, "_daskjob", None)
        if info is None or info["closed"]:
            return []
        return self.fetch_pod_logs(info["opts"], info["namespace"], info["name"], logs_dir)

    def fetch_pod_logs(self, opts: dict[str, Any], namespace: str | None, name: str,
                       logs_dir: str) -> list[str]:
        """The logs of DaskCluster `name`'s Running pods into logs_dir; returns the paths."""
        return _run_async(_fetch_pod_logs, opts, namespace, name, logs_dir)

    # -- reaper --------------------------------------------------------------------
    def find_leftovers(self, spec: "ClusterSpec", older_than: float) -> list[Leftover]:
        from ..procs import DRIVER_LABEL, driver_label_alive, label_age
        items = _run_async(_list_clusters, _options(spec))
        found = []
        for item in items:
            labels = dict(item["metadata"].get("labels") or {})
            if RUN_ID_LABEL not in labels:  # the emulator (and old servers) ignore selectors
                continue
            alive = driver_label_alive(labels.get(DRIVER_LABEL))
            age = label_age(labels)
            if alive:
                continue
            if alive is None and (age is None or age < older_than):
                continue
            run_id = (item["metadata"].get("annotations") or {}).get("daskjob/run-id",
                                                                       labels[RUN_ID_LABEL])
            phase = (item.get("status") or {}).get("phase", "no status")
            found.append(Leftover(
                backend=self.name, run_id=run_id, name=item["metadata"]["name"], age_s=age,
                detail=(f"DaskCluster {item['metadata'].get('namespace')}/"
                        f"{item['metadata']['name']} ({phase}); driver "
                        f"{labels.get(DRIVER_LABEL, '?')} "
                        + ("gone" if alive is False else "on another host")),
                handle={"namespace": item["metadata"].get("namespace"),
                        "name": item["metadata"]["name"]}))
        return found

    def stop_leftover(self, spec: "ClusterSpec", leftover: Leftover) -> None:
        opts = dict(_options(spec))
        handle = leftover.handle or {}
        if handle.get("namespace"):
            opts["namespace"] = handle["namespace"]
        _run_async(_delete_named, opts, handle.get("name") or leftover.name)


def _require_image(opts: dict[str, Any]) -> None:
    if not opts.get("image"):
        raise ValueError("options.image: required for the kubernetes backend: a container "
                         "image with Python, dask, distributed and daskjob at the driver's "
                         "versions (e.g. options: {image: ghcr.io/me/etl:1.4})")


# --------------------------------------------------------------- async helpers
class _GaveUp(Exception):
    pass


def _startup_limits(ctx: ClusterContext) -> tuple[float, Any]:
    """(monotonic time to give up at, callable telling that the run was cancelled).

    The backend gives up a little before the run's own startup deadline, so that the run
    reports this backend's reason (and that the DaskCluster was deleted) rather than a
    bare timeout. Without a deadline (a caller other than the lifecycle), the configured
    startup timeout counts from now."""
    now = time.monotonic()
    deadline = ctx.startup_deadline
    if deadline is None:
        from .. import config
        from ..durations import seconds
        deadline = now + seconds(config.get("startup-timeout"), field="startup_timeout")
    margin = min(3.0, max(0.5, 0.1 * (deadline - now)))
    return deadline - margin, ctx.is_cancelled


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

        from dask_kubernetes.operator import KubeCluster

        class DaskjobKubeCluster(KubeCluster):
            # not in KubeCluster._instances: dask-kubernetes' atexit reaper would close it
            # on a loop that is gone by then, and print about it; daskjob closes its own
            _instances = weakref.WeakSet()

        _CLUSTER_CLASS.append(DaskjobKubeCluster)
    return _CLUSTER_CLASS[0]


async def _start_cluster(body, opts, loop, deadline, stopped, state) -> None:
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
            raise _GaveUp(why)


async def _delete_cluster(state, name, run_label, timeout) -> bool:
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


async def _fetch_pod_logs(opts, namespace, name, logs_dir) -> list[str]:
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


async def _list_clusters(opts) -> list[dict]:
    from dask_kubernetes.operator._objects import DaskCluster
    api = await _api(opts)
    namespace = opts.get("namespace") or api.namespace
    return [dc.raw async for dc in api.async_get(DaskCluster, namespace=namespace,
                                                 label_selector=RUN_ID_LABEL)]


async def _delete_named(opts, name) -> None:
    api = await _api(opts)
    if not await _delete_cluster({"api": api, "namespace": opts.get("namespace") or api.namespace},
                                 name, None, 30.0):
        raise TimeoutError(f"DaskCluster {name} still exists 30s after its deletion was "
                           "requested (is the operator running?)")


def _run_async(fn, *args) -> Any:
    """Run a coroutine function on a fresh loop in a thread of its own (the caller may
    already be inside an event loop, e.g. under Airflow's triggerer or a notebook)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="daskjob-kubernetes", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
