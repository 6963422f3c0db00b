"""Runs started from a script's top level, outside `if __name__ == "__main__":`.

A process started with multiprocessing's spawn (or forkserver) imports the parent's main
script again before it does anything else; a run started at the script's top level
would then start again in every such process. daskjob's own local workers do not import
the main script (see backends/local.py), but any other process pool would, so:

- a run started by a process that is still bootstrapping is refused, as multiprocessing
  refuses to start a process then, and nothing is started;
- a run started at the unguarded top level of a script gets one warning saying so.
"""

from __future__ import annotations

import ast
import logging
import multiprocessing
import sys
from functools import lru_cache
from typing import Any

logger = logging.getLogger("daskjob")

GUARD = 'if __name__ == "__main__":'
WHY = ("processes started with multiprocessing's spawn import the script again, and each "
       "would start the run again")


def refuse_while_bootstrapping() -> None:
    """Raise when this process is a spawned child still importing its parent's script."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError("daskjob: a run was started while this process was starting up "
                           "as a child process and importing the main script again; nothing "
                           f"was started. Put the code that starts the run under `{GUARD}`: "
                           f"{WHY}.")


def warn_if_unguarded() -> None:
    site = unguarded_call_site()
    if site is not None:
        file, line = site
        logger.warning("daskjob: this run was started at the top level of %s (line %d); put "
                       "the code that starts it under `%s`: %s.", file, line, GUARD, WHY)


def unguarded_call_site() -> tuple[str, int] | None:
    """(file, line) of the main script's top-level statement that led here, when that
    statement is not under a `__name__ == "__main__"` test; else None."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is main.__dict__:
            break
        frame = frame.f_back
    if frame is None:
        return None  # not called from the script's top level (a thread, a REPL, a test)
    line = frame.f_lineno
    guarded = _guarded_lines(file)
    if guarded is None or any(start <= line <= end for start, end in guarded):
        return None
    return file, line


@lru_cache(maxsize=8)
def _guarded_lines(file: str) -> tuple[tuple[int, int], ...] | None:
    try:
        with open(file, encoding="utf-8") as f:
            tree = ast.parse(f.read(), file)
    except (OSError, SyntaxError, ValueError):
        return None  # cannot tell: say nothing
    return tuple((node.lineno, node.end_lineno or node.lineno) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and _is_main_test(node.test))


def _is_main_test(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_test(v) for v in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = {_plain(test.left), _plain(test.comparators[0])}
    return sides == {"__name__", "'__main__'"}


def _plain(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value)
    return None
