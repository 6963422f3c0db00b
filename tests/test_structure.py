"""The shape the core keeps (ARCHITECTURE.md): no import cycle in daskjob/, no function
over 60 lines outside the built-in payloads, and the front ends thin (no lifecycle
code of their own)."""

from __future__ import annotations

import ast
import os

from conftest import REPO

CORE = os.path.join(REPO, "daskjob")
LONGEST = 60


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(CORE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """The daskjob modules `module` imports, TYPE_CHECKING imports included."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known and n != module}
    return out


def test_no_import_cycle_in_the_core():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    # a package's __init__ that only hands names on is not a step of a cycle
    faces = {m for m, p in modules.items() if p.endswith("__init__.py")}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m] - faces):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(set(modules) - faces):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_over_sixty_lines_in_the_core():
    long = []
    for module, path in _modules().items():
        if ".payloads" in module:
            continue  # the built-in payloads are user code of a kind
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_the_front_ends_start_no_cluster_themselves():
    """Both front ends go through daskjob's JobRun: neither builds a cluster or a client."""
    for package in ("airflow_provider", "flyte_plugin"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(folder, name)).read()
                    for word in ("LocalCluster(", "Client(", "get_backend("):
                        assert word not in text, (package, name, word)


def test_built_in_backends_are_the_ones_pyproject_registers():
    import tomllib
    from daskjob.backend_registry import BUILT_IN, ENTRY_POINT_GROUP
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == BUILT_IN
