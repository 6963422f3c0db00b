"""The resources the `kubernetes` backend asks for (a DaskCluster, a DaskWorkerGroup per
extra worker group, a DaskAutoscaler when the default group adapts), built and checked by
pure functions (tested without a cluster, against the CRD schemas shipped in
dask-kubernetes): names, labels and annotations, the scheduler and worker commands, the
run's environment and dask config, requests and limits."""

from __future__ import annotations

import copy
import hashlib
import os
import re
from typing import TYPE_CHECKING, Any

from .common import inherited_config_env

if TYPE_CHECKING:
    from ..groups import Adapt, GroupPlan
    from ..spec import ClusterSpec
    from .base import ClusterContext

RUN_ID_LABEL = "daskjob/run-id"
# DaskCluster names: a DNS-1123 label that leaves room for "-scheduler" (dask-kubernetes
# refuses longer ones); the operator names pods <name>-default-worker-<hex>
MAX_NAME = 53
DEFAULT_IDLE_TIMEOUT = 3600
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


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
def build_cluster_body(spec: "ClusterSpec", ctx: "ClusterContext") -> dict[str, Any]:
    """The DaskCluster resource for this run (not validated: see validate_cluster_body)."""
    from dask_kubernetes.operator import make_cluster_spec

    opts = dict(spec.options)
    image = opts.get("image")
    name = cluster_name(ctx.run_id)
    # the workers' dask config, as a spawned local worker would inherit it
    env: dict[str, str] = {**ctx.worker_env, **inherited_config_env(ctx.worker_config)}
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
    if spec.resources:
        worker_args += ["--resources", _resource_arg(spec.resources)]
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


def build_group_body(cluster_body: dict[str, Any], plan: "GroupPlan") -> dict[str, Any]:
    """A DaskWorkerGroup beside the DaskCluster's default one: its workers are the
    default worker with the group's threads, memory, Dask resources, environment and
    pod resources (options.resources, e.g. limits: {nvidia.com/gpu: 1})."""
    name = cluster_body["metadata"]["name"]
    worker = copy.deepcopy(cluster_body["spec"]["worker"])
    container = worker["spec"]["containers"][0]
    args = [a for a in container["args"]]
    args = _set_arg(args, "--nthreads", str(plan.threads_per_worker))
    if plan.memory_bytes:
        args = _set_arg(args, "--memory-limit", str(plan.memory_bytes))
    if plan.resources:
        args = _set_arg(args, "--resources", _resource_arg(plan.resources))
    container["args"] = args
    env = {e["name"]: e for e in container.get("env") or []}
    env.update({k: {"name": k, "value": v} for k, v in plan.env.items()})
    container["env"] = list(env.values())
    requests = {**(container.get("resources") or {}).get("requests", {}),
                "cpu": str(plan.threads_per_worker)}
    limits = dict((container.get("resources") or {}).get("limits") or {})
    if plan.memory_bytes:
        requests["memory"] = limits["memory"] = quantity_bytes(plan.memory_bytes)
    extra = plan.options.get("resources") or {}
    requests.update({k: str(v) for k, v in (extra.get("requests") or {}).items()})
    limits.update({k: str(v) for k, v in (extra.get("limits") or {}).items()})
    container["resources"] = {"requests": requests, **({"limits": limits} if limits else {})}
    if plan.options.get("node_selector"):
        worker["spec"]["nodeSelector"] = {str(k): str(v)
                                          for k, v in plan.options["node_selector"].items()}
    worker["replicas"] = int(plan.n_workers or 0)
    return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
            "metadata": {"name": f"{name}-{plan.name}",
                         "labels": {**cluster_body["metadata"]["labels"],
                                    "dask.org/cluster-name": name,
                                    "daskjob/group": plan.name}},
            "spec": {"cluster": name, "worker": worker}}


def build_autoscaler_body(cluster_body: dict[str, Any], adapt: "Adapt") -> dict[str, Any]:
    """The operator's DaskAutoscaler: it sizes the default worker group on the
    scheduler's adaptive target, between minimum and maximum."""
    name = cluster_body["metadata"]["name"]
    return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
            "metadata": {"name": name,
                         "labels": {**cluster_body["metadata"]["labels"],
                                    "dask.org/cluster-name": name,
                                    "dask.org/component": "autoscaler"}},
            "spec": {"cluster": name, "minimum": adapt.minimum, "maximum": adapt.maximum}}


def _resource_arg(resources: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in resources.items())


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, flag, value]


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
    longest = MAX_NAME if kind == "daskcluster" else 63
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > longest:
        raise ValueError(f"metadata.name: {name!r} is not a valid {body.get('kind', 'DaskCluster')} name "
                         f"(lowercase DNS-1123 label of at most {longest} characters)")
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
