"""The emulated cluster's DNS, for the processes that run "inside" it (the Dask operator's
controller, pod containers): this folder is put first on their PYTHONPATH, so Python
imports this module at startup (site.py), and it makes socket.getaddrinfo,
gethostbyname and gethostbyname_ex answer Service names (<svc>.<ns>,
<svc>.<ns>.svc, <svc>.<ns>.svc.cluster.local) from the JSON hosts file named by
$KUBE_EMULATOR_HOSTS, which the emulator rewrites as Services come and go. This stands
in for the resolv.conf a kubelet gives a pod. Everything else resolves as usual.

asyncio's loop.getaddrinfo (so tornado, aiohttp, httpx/anyio) calls socket.getaddrinfo
by attribute at each call, so they all see the wrapper; uvloop's loop resolves in C, so
its class is wrapped too (see _wrap_uvloop).

A sitecustomize.py later on sys.path (e.g. the distribution's) is still run: this
module shadows it, so it runs it itself."""

import json
import os
import socket

_VAR = "KUBE_EMULATOR_HOSTS"
_seen = {"stamp": None, "hosts": {}}


def _hosts():
    path = os.environ.get(_VAR)
    if not path:
        return {}
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != _seen["stamp"]:
            with open(path) as f:
                _seen["hosts"], _seen["stamp"] = json.load(f), stamp
    except (OSError, ValueError):
        pass  # mid-rewrite or gone: the last good answer stands
    return _seen["hosts"]


def _resolve(host):
    if isinstance(host, bytes):
        try:
            host = host.decode()
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str):
        return None
    return _hosts().get(host.rstrip(".").lower())


_getaddrinfo = socket.getaddrinfo
_gethostbyname = socket.gethostbyname
_gethostbyname_ex = socket.gethostbyname_ex


def getaddrinfo(host, *args, **kwargs):
    return _getaddrinfo(_resolve(host) or host, *args, **kwargs)


def gethostbyname(host):
    return _resolve(host) or _gethostbyname(host)


def gethostbyname_ex(host):
    ip = _resolve(host)
    return (host, [], [ip]) if ip else _gethostbyname_ex(host)


socket.getaddrinfo = getaddrinfo
socket.gethostbyname = gethostbyname
socket.gethostbyname_ex = gethostbyname_ex


def _wrap_uvloop():
    """uvloop (kopf runs on it when it is installed) resolves names in C, without
    socket.getaddrinfo: its loop class gets the same lookup in front, for
    loop.getaddrinfo (aiohttp's and tornado's resolvers, dask-kubernetes' own check)
    and loop.create_connection (asyncio.open_connection)."""
    try:
        import uvloop
    except ImportError:
        return

    class Loop(uvloop.Loop):
        async def getaddrinfo(self, host, port, *args, **kwargs):
            return await super().getaddrinfo(_resolve(host) or host, port, *args, **kwargs)

        async def create_connection(self, protocol_factory, host=None, port=None, *args, **kwargs):
            return await super().create_connection(protocol_factory, _resolve(host) or host,
                                                   port, *args, **kwargs)

    uvloop.Loop = Loop   # uvloop.new_event_loop() and its policy make a `Loop()`


if os.environ.get(_VAR):
    _wrap_uvloop()


def _run_shadowed():
    import importlib.util
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in sys.path:
        folder = os.path.abspath(folder or os.getcwd())
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - as site.py does: report, go on
                print(f"Error in the shadowed sitecustomize {candidate}: {e!r}", file=sys.stderr)
            return


_run_shadowed()
