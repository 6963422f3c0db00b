"""Payload code from a module that no worker can import by name travels by value.

Airflow loads a DAG file as a module named `unusual_prefix_<sha1>_<file>`. A worker
cannot import that name, and importing the DAG file there instead would build the whole
DAG on every worker (importing Airflow, with the task's settings). So while a run uses
such a module it is taken out of this process's `sys.modules`: pickle can then no longer
refer to the module's functions and classes by name, and distributed falls back to
cloudpickle, which ships each of them, with what it references, by value. Nothing of the
module is imported on workers, on any backend.

cloudpickle names the file of the code it ships "<dynamic-code>"; for these modules the
real file is kept, so that a traceback from a worker points at the DAG file and line.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import threading
import types
from typing import Iterator

logger = logging.getLogger(__name__)

_lock = threading.Lock()
# module name -> (the module, how many live runs have it out of sys.modules)
_detached: dict[str, tuple[types.ModuleType, int]] = {}
_files: collections.Counter[str] = collections.Counter()
_DYNAMIC = "<dynamic-code>"


@contextlib.contextmanager
def shipped_by_value(module_name: str | None) -> Iterator[None]:
    """While inside, everything from `module_name` that reaches a worker goes by value."""
    module = _detach(module_name) if module_name else None
    try:
        yield
    finally:
        if module is not None:
            _restore(module_name, module)


def _detach(name: str) -> types.ModuleType | None:
    with _lock:
        module, users = _detached.get(name) or (sys.modules.get(name), 0)
        if module is None:
            return None
        _detached[name] = (module, users + 1)
        sys.modules.pop(name, None)
        file = getattr(module, "__file__", None)
        if file:
            _files[file] += 1
        _keep_code_file_names()
        return module


def _restore(name: str, module: types.ModuleType) -> None:
    with _lock:
        users = _detached[name][1] - 1
        if users:
            _detached[name] = (module, users)
        else:
            del _detached[name]
            sys.modules.setdefault(name, module)
        file = getattr(module, "__file__", None)
        if file:
            _files[file] -= 1
            if _files[file] <= 0:
                del _files[file]


def _keep_code_file_names() -> None:
    """Make cloudpickle keep the file name of code from a shipped module (once)."""
    import cloudpickle
    table = getattr(cloudpickle.Pickler, "_dispatch_table", None)
    original = table.get(types.CodeType) if isinstance(table, dict) else None
    if original is None:
        logger.debug("cloudpickle has no code reducer to wrap: worker tracebacks of "
                     "shipped code will say %s", _DYNAMIC)
        return
    if getattr(original, "keeps_file_names", False):
        return

    def reduce_code(code: types.CodeType):
        constructor, args = original(code)
        if code.co_filename in _files:
            args = tuple(code.co_filename if isinstance(a, str) and a == _DYNAMIC else a
                         for a in args)
        return constructor, args

    reduce_code.keeps_file_names = True  # type: ignore[attr-defined]
    table[types.CodeType] = reduce_code
