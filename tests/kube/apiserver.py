"""The emulated Kubernetes API server: aiohttp on loopback, plain HTTP, bearer tokens
naming users (not checked: any token is let in, an unknown one as "anonymous").

Routes: discovery (with and without a trailing slash, as kr8s asks for `/version/`,
`/api/`, `/apis/`), resource collections and objects under `/api/v1` and
`/apis/<group>/<version>` (namespaced or not), list/watch with selectors, create, get,
patch (merge, strategic-as-merge, JSON patch), delete, the status subresource, pod logs
and pod port-forward (websocket). Debug routes for the harness: `/debug/watches` (open
watches, by user), `/debug/audit` (every request: user, verb, path, code, object)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .resources import Registry, Resource
from .selectors import SelectorError, object_matcher
from .store import ApiError, Store

logger = logging.getLogger("kube.apiserver")
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64",
           "goVersion": "go1.24.0", "compiler": "gc", "buildDate": "2026-01-01T00:00:00Z"}
BOOKMARK_EVERY = 30.0     # seconds; kopf reconnects a watch silent for 70 s
PATCH_KINDS = {"application/merge-patch+json": "merge",
               "application/strategic-merge-patch+json": "merge",
               "application/json-patch+json": "json"}


class Watch:
    """One open watch: the events of a resource (namespace, selectors) to stream."""

    def __init__(self, res: Resource, ns: str | None, match: Callable, user: str):
        self.res, self.ns, self.match, self.user = res, ns, match, user
        self.queue: asyncio.Queue = asyncio.Queue()
        self.opened = time.time()

    def wants(self, res_key: str, obj: dict[str, Any]) -> bool:
        ns = obj["metadata"].get("namespace", "")
        return res_key == self.res.key and (self.ns is None or ns == self.ns) and self.match(obj)

    def offer(self, rv: int, res_key: str, kind: str, obj: dict[str, Any]) -> None:
        if self.wants(res_key, obj):
            self.queue.put_nowait({"type": kind, "object": obj})


class ApiServer:
    def __init__(self, store: Store, registry: Registry, tokens: dict[str, str]):
        self.store, self.registry, self.tokens = store, registry, tokens
        self.audit: list[dict[str, Any]] = []
        self.log_path: Callable[[str, str, str | None, bool], str] | None = None  # kubelet's
        self.app = web.Application(client_max_size=64 * 2**20)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    # -- dispatch ------------------------------------------------------------------------
    def user(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return self.tokens.get(auth.removeprefix("Bearer ").strip(), "anonymous")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = {"time": time.time(), "user": self.user(request), "verb": request.method,
                 "path": request.path, "query": dict(request.query),
                 "agent": request.headers.get("User-Agent", "")}
        self.audit.append(entry)
        try:
            response = await self.route(request, entry)
        except ApiError as e:
            response = web.json_response(e.status(), status=e.code)
        except SelectorError as e:
            response = web.json_response(ApiError(400, "BadRequest", str(e)).status(), status=400)
        entry["code"] = response.status
        return response

    async def route(self, request: web.Request, entry: dict) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts and parts[0] == "debug":
            return self.debug(parts[1:])
        if not parts or parts[0] in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if parts == ["version"]:
            return web.json_response(VERSION)
        doc = self.discovery(parts)
        if doc is not None:
            return web.json_response(doc)
        if parts[0] == "api" and len(parts) > 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find {request.path}")
        return await self.resource_request(request, entry, group, version, rest)

    def discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return self.registry.group_list()
        if len(parts) == 2 and parts[0] == "api":
            return self.registry.resource_list("", parts[1]) or _missing()
        if len(parts) == 2 and parts[0] == "apis":
            return self.registry.group_doc(parts[1]) or _missing()
        if len(parts) == 3 and parts[0] == "apis":
            return self.registry.resource_list(parts[1], parts[2]) or _missing()
        return None

    def debug(self, parts: list[str]) -> web.Response:
        if parts == ["watches"]:
            return web.json_response([{"user": w.user, "resource": w.res.key,
                                       "namespace": w.ns, "since": w.opened}
                                      for w in self.store.watchers])
        if parts == ["audit"]:
            return web.json_response(self.audit)
        raise ApiError(404, "NotFound", "no such debug route")

    async def resource_request(self, request: web.Request, entry: dict, group: str,
                               version: str, rest: list[str]) -> web.StreamResponse:
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns: str | None = rest[1]
            plural, name, sub = rest[2], _at(rest, 3), _at(rest, 4)
        else:
            ns, plural, name, sub = None, rest[0], _at(rest, 1), _at(rest, 2)
        res = self.registry.find(group, version, plural)
        if res is None or (sub and sub not in res.subresources):
            raise ApiError(404, "NotFound", f"the server could not find the requested "
                           f"resource ({request.path})")
        if not res.namespaced:
            ns = ""
        entry["resource"] = res.key
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self.watch(request, res, ns, entry["user"])
                return self.list(request, res, ns)
            if method == "POST":
                if ns is None:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
                obj = self.store.create(res, ns, await _body(request))
                entry["object"] = f'{res.kind}/{ns}/{obj["metadata"]["name"]}'
                return web.json_response(obj, status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        return await self.object_request(request, entry, res, ns or "", name, sub or "")

    async def object_request(self, request: web.Request, entry: dict, res: Resource,
                             ns: str, name: str, sub: str) -> web.StreamResponse:
        method = request.method
        entry["object"] = f"{res.kind}/{ns}/{name}"
        if sub == "log" and method == "GET":
            return self.pod_log(request, res, ns, name)
        if sub == "portforward" and method in ("GET", "POST"):
            return await self.port_forward(request, res, ns, name)
        if sub not in ("", "status"):
            raise ApiError(405, "MethodNotAllowed", f"{method} {sub} is not emulated")
        if method == "GET":
            return web.json_response(self.store.get(res, ns, name))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype not in PATCH_KINDS:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
            obj = self.store.patch(res, ns, name, PATCH_KINDS[ctype], await _body(request), sub)
            return web.json_response(obj)
        if method == "PUT":
            body, old = await _body(request), self.store.get(res, ns, name)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified; please apply "
                               "your changes to the latest version and try again")
            return web.json_response(self.store.replace(res, old, body, sub))
        if method == "DELETE":
            body = await _body(request, default={})
            grace = (body or {}).get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
            obj = self.store.delete(res, ns, name, None if grace is None else int(grace))
            return web.json_response(obj)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    # -- list and watch -------------------------------------------------------------------
    def list(self, request: web.Request, res: Resource, ns: str | None) -> web.Response:
        match = object_matcher(request.query.get("labelSelector"),
                               request.query.get("fieldSelector"))
        items = self.store.items(res, ns or None, match)
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                  "metadata": {"resourceVersion": str(self.store.rv)},
                                  "items": items})

    async def watch(self, request: web.Request, res: Resource, ns: str | None,
                    user: str) -> web.StreamResponse:
        match = object_matcher(request.query.get("labelSelector"),
                               request.query.get("fieldSelector"))
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        since = request.query.get("resourceVersion") or "0"
        w = Watch(res, ns or None, match, user)
        # the replay and the registration happen without an await between them: no
        # write can fall in between (one event loop)
        first = self.replay(w, int(since) if since.isdigit() else 0)
        self.store.watchers.add(w)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await resp.prepare(request)
            for event in first:
                await _send(resp, event)
            if first and first[-1]["type"] == "ERROR":
                return resp
            await self.stream(resp, w, time.monotonic() + timeout, bookmarks)
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.store.watchers.discard(w)
        return resp

    def replay(self, w: Watch, since: int) -> list[dict[str, Any]]:
        """What a watch gets before the live events: ADDED for every object (no
        resourceVersion), the history after `since`, or 410 Expired if it is gone."""
        if since == 0:
            return [{"type": "ADDED", "object": o}
                    for o in self.store.items(w.res, w.ns) if w.match(o)]
        if since < self.store.oldest_rv():
            return [{"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                "reason": "Expired", "message": f"too old resource version: {since}"}}]
        return [{"type": kind, "object": obj} for rv, key, kind, obj in self.store.history
                if rv > since and w.wants(key, obj)]

    async def stream(self, resp: web.StreamResponse, w: Watch, end: float,
                     bookmarks: bool) -> None:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                event = await asyncio.wait_for(w.queue.get(), min(left, BOOKMARK_EVERY))
            except TimeoutError:
                if not bookmarks or time.monotonic() >= end:
                    continue
                event = {"type": "BOOKMARK", "object": {
                    "kind": w.res.kind, "apiVersion": w.res.api_version,
                    "metadata": {"resourceVersion": str(self.store.rv)}}}
            await _send(resp, event)

    # -- pods ------------------------------------------------------------------------------
    def pod_log(self, request: web.Request, res: Resource, ns: str, name: str) -> web.Response:
        self.store.get(res, ns, name)
        if self.log_path is None:
            raise ApiError(400, "BadRequest", "no kubelet")
        previous = request.query.get("previous", "").lower() in ("true", "1")
        path = self.log_path(ns, name, request.query.get("container"), previous)
        with open(path, "rb") as f:
            data = f.read()
        tail = request.query.get("tailLines")
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-int(tail):]) if int(tail) else b""
        return web.Response(body=data, content_type="text/plain")

    async def port_forward(self, request: web.Request, res: Resource, ns: str,
                           name: str) -> web.StreamResponse:
        """The websocket port-forward protocol (v4.channel.k8s.io) as kr8s speaks it:
        per port a data channel (0) and an error channel (1), each opened by a frame
        carrying the port number; then data frames prefixed with their channel."""
        pod = self.store.get(res, ns, name)
        ip = (pod.get("status") or {}).get("podIP")
        port = int(request.query.get("ports", "0").split(",")[0])
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io", "channel.k8s.io"))
        await ws.prepare(request)
        header = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + header)
        await ws.send_bytes(b"\x01" + header)
        try:
            reader, writer = await asyncio.open_connection(ip, port)
        except OSError as e:
            await ws.send_bytes(b"\x01" + f"error forwarding port {port}: {e}".encode())
            await ws.close()
            return ws
        pump = asyncio.ensure_future(_tcp_to_ws(reader, ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except ConnectionResetError:
            pass
        finally:
            pump.cancel()
            writer.close()
            await ws.close()
        return ws


async def _tcp_to_ws(reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            await ws.close()
            return
        await ws.send_bytes(b"\x00" + data)


async def _send(resp: web.StreamResponse, event: dict[str, Any]) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")


async def _body(request: web.Request, default: Any = None) -> Any:
    raw = await request.read()
    if not raw.strip():
        if default is not None:
            return default
        raise ApiError(400, "BadRequest", "the request has no body")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {e}") from None


def _at(parts: list[str], i: int) -> str | None:
    return parts[i] if len(parts) > i else None


def _missing() -> dict[str, Any]:
    raise ApiError(404, "NotFound", "the server could not find the requested resource")


async def serve(server: ApiServer, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start listening; returns the runner (to clean up) and the base URL."""
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)  # open watches end at once
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0]  # the port the kernel picked
    return runner, f"http://{host}:{sock.getsockname()[1]}"
