"""The resource types the emulated API server serves, and its discovery documents.

The Dask custom resources are read from the CRDs that dask-kubernetes ships in its Helm
chart (names, scope, subresources, openAPIV3Schema), so that discovery tells kopf and
kr8s exactly what a cluster with the operator installed would: e.g. DaskCluster has a
`scale` but no `status` subresource, which decides where kopf writes its status."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str            # "" for the core group
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.api_version}/{self.plural}"

    def discovery(self) -> list[dict[str, Any]]:
        """APIResourceList entries: the resource, then one per subresource."""
        main = {"name": self.plural, "singularName": self.singular, "kind": self.kind,
                "namespaced": self.namespaced, "verbs": VERBS,
                "shortNames": list(self.short_names), "categories": ["all"]}
        subs = [{"name": f"{self.plural}/{sub}", "singularName": "", "kind": self.kind,
                 "namespaced": self.namespaced,
                 "verbs": ["get"] if sub in ("log", "portforward") else ["get", "patch", "update"]}
                for sub in sorted(self.subresources)]
        return [main, *subs]


BUILTIN = [
    Resource("", "v1", "namespaces", "Namespace", "namespace", namespaced=False,
             subresources=frozenset({"status"}), short_names=("ns",)),
    Resource("", "v1", "pods", "Pod", "pod",
             subresources=frozenset({"status", "log", "portforward"}), short_names=("po",)),
    Resource("", "v1", "services", "Service", "service",
             subresources=frozenset({"status"}), short_names=("svc",)),
    Resource("", "v1", "events", "Event", "event", short_names=("ev",)),
    Resource("apps", "v1", "deployments", "Deployment", "deployment",
             subresources=frozenset({"status", "scale"}), short_names=("deploy",)),
]


def crd_dir() -> str:
    import dask_kubernetes
    return os.path.join(os.path.dirname(dask_kubernetes.__file__), "operator", "deployment",
                        "helm", "dask-kubernetes-operator", "crds")


def dask_resources() -> list[Resource]:
    """One Resource per served version of each CRD in dask-kubernetes' chart."""
    import yaml
    out = []
    for path in sorted(glob.glob(os.path.join(crd_dir(), "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            out.append(Resource(
                spec["group"], version["name"], names["plural"], names["kind"],
                names.get("singular") or names["kind"].lower(),
                namespaced=spec["scope"] == "Namespaced",
                subresources=frozenset((version.get("subresources") or {}).keys()),
                short_names=tuple(names.get("shortNames") or ()),
                schema=version["schema"]["openAPIV3Schema"]))
    return out


class Registry:
    """All served resources, by (group, version, plural) and by key."""

    def __init__(self) -> None:
        self.all = [*BUILTIN, *dask_resources()]
        self.by_path = {(r.group, r.version, r.plural): r for r in self.all}
        self.by_key = {r.key: r for r in self.all}

    def find(self, group: str, version: str, plural: str) -> Resource | None:
        return self.by_path.get((group, version, plural))

    def groups(self) -> dict[str, list[str]]:
        """{group: [versions]} of the named groups (not the core group)."""
        out: dict[str, list[str]] = {}
        for r in self.all:
            if r.group and r.version not in out.setdefault(r.group, []):
                out[r.group].append(r.version)
        return out

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        entries = [e for r in self.all if (r.group, r.version) == (group, version)
                   for e in r.discovery()]
        if not entries:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": entries}

    def group_list(self) -> dict[str, Any]:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self.group_doc(g) for g in self.groups()]}

    def group_doc(self, group: str) -> dict[str, Any] | None:
        versions = self.groups().get(group)
        if not versions:
            return None
        docs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": docs,
                "preferredVersion": docs[0]}


def schema_errors(resource: Resource, obj: dict[str, Any]) -> list[str]:
    """What the API server's openAPIV3Schema validation of a custom resource refuses
    ("spec.worker.replicas: 'two' is not of type 'integer'"), first five."""
    if resource.schema is None:
        return []
    import jsonschema
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator(resource.schema)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in errors[:5]]


def prune(schema: dict[str, Any] | None, value: Any) -> Any:
    """What the API server does to a custom resource before validating it: nulls are
    dropped where the schema does not say `nullable: true`, and fields the structural
    schema does not know are dropped unless it says x-kubernetes-preserve-unknown-fields."""
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            sub = (props or {}).get(k)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub is None and props is not None and extra is not True:
                continue   # unknown field: pruned
            if v is None and not (sub or {}).get("nullable"):
                continue
            out[k] = prune(sub, v)
        return out
    if isinstance(value, list):
        return [prune(schema.get("items"), v) for v in value
                if v is not None or (schema.get("items") or {}).get("nullable")]
    return value


def prune_object(resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """prune() on a custom resource's body (apiVersion, kind and metadata stay)."""
    if resource.schema is None:
        return obj
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    schema = {**resource.schema, "properties": {
        k: v for k, v in (resource.schema.get("properties") or {}).items()
        if k not in ("apiVersion", "kind", "metadata")}}
    return {**{k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj},
            **prune(schema, body)}
