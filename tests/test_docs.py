"""Every code example in README.md, docs/*.md and the public docstrings runs as written.

Markdown: every fenced block in python, yaml or bash is an example. The comment on the
line before it says how it runs:

    <!-- example: file=NAME; run=COMMAND; fixtures=A,B; expect=TEXT; needs=FILE -->

By default a python block runs as `python example.py`, a yaml block as
`daskjob run job.yaml`, and a bash block as a bash script that stops at the first
failing command, each in a fresh folder, with the project's .venv first on PATH.
`expect` is text the output must contain. `check=spec` validates a cluster section
without starting it (backends whose services are not here); `used-by=FILE` marks a file
that the example saving FILE runs (`needs=`); `slow` runs it only with the minutes-long
tests (`make test-slow`); `skip=REASON` is only for the set-up commands themselves.

Docstrings: the doctest examples (>>>) of every public module, class and function run,
each module in a process of its own; a public docstring with code that is not a doctest
fails the suite.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from conftest import REPO, RUN_SLOW

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(420)]

DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))
                              if f.endswith(".md"))
PACKAGES = ["daskjob", "airflow_provider", "flyte_plugin"]
LANGUAGES = {"python": "python", "yaml": "yaml", "bash": "bash", "sh": "bash"}
DEFAULT_FILES = {"python": "example.py", "yaml": "job.yaml", "bash": "example.sh"}
COMMENT = re.compile(r"^<!-- example: (.*) -->$")
FENCE = re.compile(r"^```(\S*)\s*$")
DATE = "2026-11-20"
VENV_BIN = os.path.dirname(sys.executable)


@dataclass
class Example:
    doc: str
    line: int
    language: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def file(self) -> str:
        return self.options.get("file", DEFAULT_FILES[self.language])


def parse_options(text: str) -> dict[str, str]:
    options = {}
    for part in text.split("; "):
        key, _, value = part.partition("=")
        options[key.strip()] = value.strip()
    return options


def examples_in(doc: str) -> list[Example]:
    found, lines = [], open(os.path.join(REPO, doc), encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language = LANGUAGES.get(fence.group(1))
        if language:
            comment = COMMENT.match(lines[i - 1]) if i else None
            found.append(Example(doc, i + 1, language, "\n".join(lines[i + 1:end]) + "\n",
                                 parse_options(comment.group(1)) if comment else {}))
        i = end + 1
    return found


EXAMPLES = [e for doc in DOCS for e in examples_in(doc)]


def test_the_docs_have_examples_and_skips_are_rare():
    assert len(EXAMPLES) >= 20, [e.id for e in EXAMPLES]
    skipped = [e.id for e in EXAMPLES if "skip" in e.options]
    assert len(skipped) <= 2, skipped
    known = {"file", "run", "fixtures", "expect", "needs", "used-by", "check", "skip", "slow"}
    for e in EXAMPLES:
        assert set(e.options) <= known, (e.id, e.options)


# ----------------------------------------------------------------------------- fixtures
def _parquet(cwd: str, env: dict) -> None:
    import pandas as pd
    os.makedirs(os.path.join(cwd, "raw", f"date={DATE}"))
    pd.DataFrame({"amount": [1.5, 2.5, -1.0]}).to_parquet(
        os.path.join(cwd, "raw", f"date={DATE}", "part-0.parquet"))


def _drop(cwd: str, env: dict) -> None:
    from daskjob.datasets import write_drop
    write_drop(os.path.join(cwd, "data", "raw"), DATE, 2000, seed=0)


def _repo(cwd: str, env: dict) -> None:
    for folder in ("examples", "workflows", "dags"):
        shutil.copytree(os.path.join(REPO, folder), os.path.join(cwd, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))


def _airflow(cwd: str, env: dict, home_template: str) -> None:
    home = os.path.join(cwd, "airflow-home")
    shutil.copytree(home_template, home)
    os.makedirs(os.path.join(cwd, "dags"), exist_ok=True)
    env.update({"AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(cwd, "dags")})


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> str:
    """One migrated Airflow metadata database, copied for each example that needs one."""
    pytest.importorskip("airflow")
    home = str(tmp_path_factory.mktemp("airflow-home"))
    env = {**os.environ, **_AIRFLOW_ENV, "AIRFLOW_HOME": home}
    out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return home


_AIRFLOW_ENV = {"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
FIXTURES = {"parquet": _parquet, "drop": _drop, "repo": _repo}


def _environment(cwd: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASKJOB__", "AIRFLOW", "PYTEST")) and k != "PYTHONPATH"}
    env.update({"PATH": VENV_BIN + os.pathsep + env.get("PATH", ""), **_AIRFLOW_ENV,
                "AIRFLOW_HOME": os.path.join(cwd, "airflow-home")})
    return env


# ------------------------------------------------------------------------------ running
def _write(example: Example, cwd: str) -> None:
    path = os.path.join(cwd, example.file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(example.code)


def _command(example: Example) -> list[str]:
    if "run" in example.options:
        return ["bash", "-c", example.options["run"]]
    return {"python": ["python", example.file], "yaml": ["daskjob", "run", example.file],
            "bash": ["bash", "-e", "-o", "pipefail", example.file]}[example.language]


def _check_spec(example: Example) -> None:
    from daskjob import ClusterSpec
    data = yaml.safe_load(example.code)
    ClusterSpec.parse(data["cluster"])


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs_as_written(example: Example, tmp_path, request):
    options = example.options
    if "skip" in options:
        assert options["skip"], f"{example.id}: say why it is skipped"
        pytest.skip(options["skip"])
    if "slow" in options and not RUN_SLOW:
        pytest.skip("slow: set DASKJOB_SLOW_TESTS=1 or run `make test-slow`")
    if "used-by" in options:
        users = [e for e in EXAMPLES if e.doc == example.doc
                 and e.options.get("file") == options["used-by"]]
        assert users and users[0].options.get("needs") == example.file, example.id
        return  # it runs as part of the example that uses it
    if options.get("check") == "spec":
        _check_spec(example)
        return
    cwd = str(tmp_path)
    env = _environment(cwd)
    for name in filter(None, options.get("fixtures", "").split(",")):
        if name == "airflow":
            _airflow(cwd, env, request.getfixturevalue("airflow_home"))
        else:
            FIXTURES[name](cwd, env)
    for needed in filter(None, options.get("needs", "").split(",")):
        (dependency,) = [e for e in EXAMPLES if e.doc == example.doc
                         and e.options.get("file") == needed]
        _write(dependency, cwd)
    _write(example, cwd)
    proc = subprocess.run(_command(example), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=360)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{example.id} exited {proc.returncode}:\n{output[-6000:]}"
    if "expect" in options:
        assert options["expect"] in output, f"{example.id}: no {options['expect']!r} in:\n{output[-6000:]}"


# --------------------------------------------------------------------------- docstrings
CODE_LINE = re.compile(
    r"^(from \S+ import |import \S|@\w[\w.]*(\(|$)|def \w+\(|class \w+[(:]|with \S.*:$"
    r"|[A-Za-z_][\w.]*(\[[^\]]*\])? = \S|[A-Za-z_][\w.]*\(.*\)\s*(#.*)?$)")


def _public_modules() -> list[tuple[str, str]]:
    found = []
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            parts = os.path.relpath(folder, REPO).split(os.sep)
            if any(p.startswith("_") for p in parts):
                continue
            for name in sorted(files):
                if name.endswith(".py") and (name == "__init__.py" or not name.startswith("_")):
                    module = ".".join(parts + ([] if name == "__init__.py" else [name[:-3]]))
                    found.append((module, os.path.join(folder, name)))
    return found


def _public_docstrings(path: str) -> list[tuple[str, str]]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    out = [("module", ast.get_docstring(tree) or "")]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out.append((node.name, ast.get_docstring(node) or ""))
            if isinstance(node, ast.ClassDef):
                out += [(f"{node.name}.{m.name}", ast.get_docstring(m) or "") for m in node.body
                        if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")]
    return [(name, doc) for name, doc in out if doc]


MODULES = _public_modules()
WITH_DOCTESTS = [m for m, path in MODULES
                 if any(">>>" in doc for _, doc in _public_docstrings(path))]


def test_public_docstring_examples_are_doctests():
    """Code in a public docstring is written as >>> lines, so that it runs."""
    offending = []
    for module, path in MODULES:
        for name, doc in _public_docstrings(path):
            for line in inspect.cleandoc(doc).splitlines():
                text = line.strip()
                indented = line.startswith("    ")
                if indented and not text.startswith((">>>", "...")) and CODE_LINE.match(text):
                    offending.append(f"{module}.{name}: {text}")
    assert not offending, "\n".join(offending)
    assert {"daskjob", "airflow_provider.operators.dask"} <= set(WITH_DOCTESTS), WITH_DOCTESTS


@pytest.mark.parametrize("module", WITH_DOCTESTS)
def test_docstring_examples_run(module, tmp_path, request):
    env = _environment(str(tmp_path))
    if module.startswith("airflow_provider"):
        _airflow(str(tmp_path), env, request.getfixturevalue("airflow_home"))
    env["PYTHONPATH"] = REPO
    env["FLYTE_SDK_RICH_TRACEBACKS"] = "0"  # flytekit logs to stderr, not into the doctest's output
    code = ("import doctest, importlib, json, sys\n"
            f"result = doctest.testmod(importlib.import_module({module!r}), "
            "optionflags=doctest.ELLIPSIS)\n"
            "print(json.dumps({'failed': result.failed, 'attempted': result.attempted}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=360)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["attempted"] > 0 and counts["failed"] == 0, output[-6000:]
