"""Payloads: a callable, a "module:function" reference, or a script path.

Checked at spec construction (the reference imports, is callable, and accepts the
params), resolved again at run time, and shipped to workers: code that lives in a file
next to the caller (not an installed package) is made importable on the workers.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import pathlib
import site
import sys
import sysconfig
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

_REF_HELP = ("a callable, a 'package.module:function' reference, or a path to a .py script")


def _is_script_ref(ref: str) -> bool:
    return ref.endswith(".py")


def import_reference(ref: str) -> Callable[..., Any]:
    """Import "module:attr.path" and return the attribute. Raises ValueError with the cause."""
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"payload {ref!r} must look like 'package.module:function' ({_REF_HELP})")
    if not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"payload {ref!r}: {module_name!r} is not a module name")
    if not all(p.isidentifier() for p in attr_path.split(".")):
        raise ValueError(f"payload {ref!r}: {attr_path!r} is not an attribute name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"payload {ref!r}: no module named {e.name!r} "
                             f"(is it installed, or on sys.path?)") from None
        raise ValueError(f"payload {ref!r}: importing {module_name!r} failed:\n"
                         + "".join(traceback.format_exception(e)).rstrip()) from None
    except BaseException as e:  # a module that raises anything on import is a bad reference
        raise ValueError(f"payload {ref!r}: importing {module_name!r} failed:\n"
                         + "".join(traceback.format_exception(e)).rstrip()) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"payload {ref!r}: module {module_name!r} has no attribute "
                             f"{attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"payload {ref!r} is a {type(obj).__name__}, not a callable")
    return obj


def _check_params(fn: Callable[..., Any], params: dict[str, Any], label: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C callables: nothing to check
    kwargs = dict(params)
    if "client" in sig.parameters and "client" not in kwargs:
        kwargs["client"] = None
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"params do not fit payload {label}{sig}: {e}") from None


def check_payload(payload: Any, params: dict[str, Any]) -> Any:
    """Validate a payload and return its normal form (scripts become absolute paths)."""
    if isinstance(payload, (str, os.PathLike)) and not isinstance(payload, str):
        payload = os.fspath(payload)
    if isinstance(payload, str):
        if _is_script_ref(payload):
            path = pathlib.Path(payload).expanduser()
            if not path.is_file():
                raise ValueError(f"payload script {payload!r} does not exist "
                                 f"(relative paths are taken from {os.getcwd()})")
            for key, value in params.items():
                if isinstance(value, (dict, list)):
                    raise ValueError(f"params.{key}: a script payload takes scalar params "
                                     "(they become --key=value arguments)")
            return str(path.resolve())
        fn = import_reference(payload)
        _check_params(fn, params, payload)
        return payload
    if callable(payload):
        _check_params(payload, params, getattr(payload, "__qualname__", repr(payload)))
        return payload
    raise ValueError(f"payload must be {_REF_HELP}; got {type(payload).__name__} {payload!r}")


@dataclass
class ResolvedPayload:
    kind: str                      # "callable" | "script"
    label: str
    fn: Callable[..., Any] | None = None
    script: str | None = None
    wants_client: bool = False
    # folders workers must have on sys.path to import the payload's module by name
    worker_sys_path: list[str] = field(default_factory=list)
    # the payload's module when it is not an installed package (None: nothing to ship)
    module: str | None = None
    # False when no folder makes the module importable by its name (e.g. a DAG file that
    # Airflow loaded as "unusual_prefix_..."): it must be pickled by value, everywhere
    importable_by_name: bool = True


def resolve(payload: Any) -> ResolvedPayload:
    if isinstance(payload, str) and _is_script_ref(payload):
        folder = str(pathlib.Path(payload).parent)
        return ResolvedPayload(kind="script", label=payload, script=payload,
                               worker_sys_path=[folder])
    fn = import_reference(payload) if isinstance(payload, str) else payload
    try:
        wants_client = "client" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wants_client = False
    module, roots = _code_roots(fn)
    return ResolvedPayload(kind="callable", label=describe_payload(payload), fn=fn,
                           wants_client=wants_client, worker_sys_path=roots, module=module,
                           importable_by_name=bool(roots) or module is None)


def describe_payload(payload: Any) -> str:
    """A payload's name in logs and records: the reference or script path as given, else
    `module:function`; for a function from a file that cannot be imported by its module
    name (a DAG file, which Airflow loads as `unusual_prefix_<sha1>_<name>`),
    `<file>.py:function`."""
    if isinstance(payload, str):
        return payload
    qualname = getattr(payload, "__qualname__", None) or type(payload).__name__
    module, roots = _code_roots(payload)
    file = _module_file(payload)
    if module is not None and not roots and file:
        return f"{os.path.basename(file)}:{qualname}"
    return f"{getattr(payload, '__module__', None) or '?'}:{qualname}"


def _installed_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    dirs.update(site.getsitepackages())
    return [os.path.realpath(d) for d in dirs if d]


def _module_file(fn: Any) -> str | None:
    # a function's globals are its module's namespace, also while the module is out of
    # sys.modules (see by_value); a wrapper's are not the wrapped function's
    try:
        fn = inspect.unwrap(fn)
    except ValueError:  # a cycle of __wrapped__
        pass
    file = (getattr(fn, "__globals__", None) or {}).get("__file__")
    if file is None:
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        file = getattr(module, "__file__", None)
    return file


def _code_roots(fn: Callable[..., Any]) -> tuple[str | None, list[str]]:
    """Where the payload's module lives, when workers could not import it by name.

    A module imported from a loose file (a DAG folder, a workflow file loaded by
    pyflyte, a script's sibling) is found by workers only if its import root is on
    their sys.path; remote workers get the module pickled by value instead. Returns
    (None, []) for installed code and __main__, and (module, []) when no folder makes
    the module importable by its name.
    """
    module_name = getattr(fn, "__module__", None)
    if not module_name or module_name == "__main__":
        return None, []  # cloudpickle already ships __main__ code by value
    file = _module_file(fn)
    if not file:
        return None, []
    real = os.path.realpath(file)
    if any(real.startswith(d + os.sep) for d in _installed_dirs()):
        return None, []
    path = pathlib.Path(real)
    depth = len(module_name.split("."))
    if path.name == "__init__.py":
        depth += 1
    root = path
    for _ in range(depth):
        root = root.parent
    # the root is right only if importing by name from it finds this same file
    candidate = root.joinpath(*module_name.split("."))
    matches = (candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists())
    return module_name, ([str(root)] if matches else [])


def recreate_module(name: str, file: str, source: str) -> None:
    """On a worker or the scheduler: make `import name` (and unpickling by reference)
    work, from the source module_source() read."""
    import types
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__file__ = file
    sys.modules[name] = module
    try:
        exec(compile(source, file, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        logging.getLogger("daskjob").exception(
            "daskjob: could not recreate the payload module %r from %s", name, file)


def module_source(name: str) -> dict[str, tuple[str, str]]:
    """{module name: (file, source)} for a module to recreate on workers."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py") or not os.path.exists(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return {name: (file, f.read())}


class UncomputedResult(TypeError):
    """A payload returned work still to be done on a cluster that is about to go."""


def check_result(value: Any) -> None:
    """Fail a payload that returns a dask collection or a Future (also inside a list,
    tuple or dict): teardown would lose what it stands for."""
    import dask
    from distributed import Future
    items = list(value.values()) if isinstance(value, dict) else (
        list(value) if isinstance(value, (list, tuple)) else [])
    for item in [value, *items]:
        if isinstance(item, Future):
            raise UncomputedResult(
                f"the payload returned a Future ({item.key!r}); its result goes with the "
                "cluster at teardown: return future.result() or client.gather(futures)")
        if dask.is_dask_collection(item):
            raise UncomputedResult(
                f"the payload returned an uncomputed dask collection ({type(item).__name__}); "
                "it cannot be computed once the cluster is torn down: return .compute() "
                "(or dask.compute(...)) of it")

