"""The object store of the emulated API server.

What kopf and kr8s rely on, as a real API server (etcd behind it) does it:
- one global resourceVersion, bumped by every write, returned by it, and carried by the
  watch event of that write (kopf waits for exactly that version after each patch);
- an event history that watches replay from a resourceVersion (410 when it is gone);
- uid, generation (bumped when `spec` changes), creationTimestamp, generateName;
- the status subresource rule: for a kind that has one, writes to the main resource
  leave `status` alone and writes to `/status` change nothing else;
- finalizers: DELETE only marks the object (deletionTimestamp) until they are gone;
- garbage collection: removing an object deletes its dependents (ownerReferences.uid),
  in the background (gc_delay after the owner is gone), recursively.

Everything runs on one asyncio loop, so no method needs a lock; the listeners (the
in-process controllers) are called synchronously after each write."""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import random
import string
import uuid
from collections.abc import Callable
from typing import Any

import jsonpatch

from .resources import Registry, Resource, prune_object, schema_errors

HISTORY = 20000          # watch events kept for replay
Key = tuple[str, str, str]   # (resource key, namespace or "", name)


class ApiError(Exception):
    """Answered as a Status object with this HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: null deletes, objects merge, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class Store:
    def __init__(self, registry: Registry, gc_delay: float = 0.5, history: int = HISTORY):
        self.registry = registry
        self.gc_delay = gc_delay   # the garbage collector's latency, as in a cluster
        self.rv = 0
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: collections.deque = collections.deque(maxlen=history)
        self.watchers: set = set()          # objects with .offer(rv, res_key, type, obj)
        self.listeners: list[Callable[[str, Resource, dict], None]] = []
        self.hooks: dict[str, Callable[[dict[str, Any]], None]] = {}   # kind -> on create

    # -- reading -----------------------------------------------------------------------
    def get(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((res.key, ns if res.namespaced else "", name))
        if obj is None:
            what = f'{res.plural}{"." + res.group if res.group else ""}'
            raise ApiError(404, "NotFound", f'{what} "{name}" not found')
        return obj

    def find(self, res: Resource, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((res.key, ns if res.namespaced else "", name))

    def items(self, res: Resource, ns: str | None = None, match=None) -> list[dict[str, Any]]:
        return [o for (k, o_ns, _), o in sorted(self.objects.items())
                if k == res.key and (ns is None or o_ns == ns) and (match is None or match(o))]

    def oldest_rv(self) -> int:
        """The oldest resourceVersion a watch can resume from."""
        return self.history[0][0] - 1 if len(self.history) == self.history.maxlen else 0

    # -- writing -----------------------------------------------------------------------
    def _commit(self, res: Resource, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, res.key, kind, snapshot))
        for w in list(self.watchers):
            w.offer(self.rv, res.key, kind, snapshot)
        for listener in list(self.listeners):
            listener(kind, res, snapshot)
        return snapshot

    def create(self, res: Resource, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                random.choices(string.ascii_lowercase + string.digits, k=5))
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{res.kind}: metadata.name: Required value")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise ApiError(400, "BadRequest", "the namespace of the object does not "
                               "match the namespace on the request")
            meta["namespace"] = ns
            if not self.find(self.registry.find("", "v1", "namespaces"), "", ns):
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        key = (res.key, ns if res.namespaced else "", meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists')
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(k, None)
        if "status" in res.subresources:
            obj.pop("status", None)
        self._validate(res, obj)
        if res.kind in self.hooks:
            self.hooks[res.kind](obj)   # defaults and allocations (e.g. a Service's IP)
        self.objects[key] = obj
        return self._commit(res, "ADDED", obj)

    def _validate(self, res: Resource, obj: dict[str, Any]) -> None:
        """Prune (in place) and validate a custom resource against its CRD schema."""
        if res.schema is None:
            return
        pruned = prune_object(res, obj)
        obj.clear()
        obj.update(pruned)
        errors = schema_errors(res, obj)
        if errors:
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{obj["metadata"]["name"]}"'
                           f' is invalid: {"; ".join(errors)}')

    def patch(self, res: Resource, ns: str, name: str, kind: str, patch: Any,
              subresource: str = "") -> dict[str, Any]:
        """kind: "merge" (also strategic), or "json" (RFC 6902)."""
        old = self.get(res, ns, name)
        if kind == "json":
            try:
                new = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an "
                               f"error in our request: {e}") from None
        else:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(old, patch)
        return self.replace(res, old, new, subresource)

    def replace(self, res: Resource, old: dict[str, Any], new: dict[str, Any],
                subresource: str = "") -> dict[str, Any]:
        """Write `new` over `old` with the API server's rules; returns the stored object."""
        new = copy.deepcopy(new)
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif "status" in res.subresources:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._validate(res, new)
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if new == old:
            return copy.deepcopy(old)   # a no-op: no new resourceVersion, no event
        key = (res.key, old_meta.get("namespace", ""), old_meta["name"])
        self.objects[key] = new
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and res.kind != "Pod":
            return self.remove(res, new)
        return self._commit(res, "MODIFIED", new)

    def delete(self, res: Resource, ns: str, name: str, grace: int | None = None) -> dict[str, Any]:
        """Mark (finalizers, or a pod: its kubelet stops it first) or remove."""
        obj = self.get(res, ns, name)
        meta = obj["metadata"]
        if meta.get("finalizers") or res.kind == "Pod":
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(obj)
            meta["deletionTimestamp"] = now()
            if res.kind == "Pod":
                pod_grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                meta["deletionGracePeriodSeconds"] = pod_grace if grace is None else grace
            else:
                meta["deletionGracePeriodSeconds"] = 0
            return self._commit(res, "MODIFIED", obj)
        return self.remove(res, obj)

    def remove(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Take the object out of the store (a DELETED event), then delete its
        dependents: the garbage collector's background propagation."""
        meta = obj["metadata"]
        self.objects.pop((res.key, meta.get("namespace", ""), meta["name"]), None)
        gone = self._commit(res, "DELETED", obj)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.collect_garbage(meta["uid"])
        else:
            # background propagation: dependents go a little after their owner (so a
            # client that reads a pod right after its owner is gone still finds it)
            loop.call_later(self.gc_delay, self.collect_garbage, meta["uid"])
        return gone

    def collect_garbage(self, owner_uid: str) -> None:
        for (rkey, ns, name), obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == owner_uid for r in refs):
                dep = self.registry.by_key[rkey]
                if (rkey, ns, name) in self.objects:
                    self.delete(dep, ns, name)

    def update(self, res: Resource, ns: str, name: str, fn: Callable[[dict], None],
               subresource: str = "status") -> dict[str, Any] | None:
        """For the in-process controllers: apply fn to a copy of the object and write it
        (through /status by default) if it changed. None if the object is gone."""
        old = self.find(res, ns, name)
        if old is None:
            return None
        new = copy.deepcopy(old)
        fn(new)
        if new == old:
            return old
        return self.replace(res, old, new, subresource)
