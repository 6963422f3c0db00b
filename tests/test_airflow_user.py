"""Airflow as a user runs it: DAG files in a plain dags folder (tests/user_dags, copied),
`airflow dags test` as a command in another working folder, a DAG that maps Dask tasks
under LocalExecutor's real task runner with an api-server. Nothing of Airflow is
imported into this process: every check reads what the commands printed and wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from conftest import REPO, airflow_api_server, wait_until_clean

pytest.importorskip("airflow")

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.xdist_group("airflow_user"),
              pytest.mark.timeout(600)]

AIRFLOW = [sys.executable, "-m", "airflow"]
SOURCE_DAGS = os.path.join(REPO, "tests", "user_dags")
FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+), .*?run_id=([^,]+), .*?state=(\w+)")


class Home:
    """An AIRFLOW_HOME with the user DAGs, its records, and the commands' environment."""

    def __init__(self, root: str):
        self.root = root
        self.dags = os.path.join(root, "dags")
        shutil.copytree(SOURCE_DAGS, self.dags)
        self.records = os.path.join(root, "runs")
        self.cwd = os.path.join(root, "elsewhere")  # not the DAG folder
        os.makedirs(self.cwd)
        self.env = {**os.environ,
                    "AIRFLOW_HOME": os.path.join(root, "home"), "AIRFLOW__CORE__DAGS_FOLDER": self.dags,
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                    "AIRFLOW__API_AUTH__JWT_SECRET": "daskjob-user-tests-only",
                    "USER_RECORDS": self.records, "USER_FLAKY_MARK": os.path.join(root, "flaky.mark"),
                    "AIRFLOW_CONN_DASK_DEFAULT": json.dumps({"conn_type": "dask",
                                                             "extra": {"n_workers": 1}}),
                    # a typo a user makes: "extras"
                    "AIRFLOW_CONN_DASK_TYPO": json.dumps({"conn_type": "dask",
                                                          "extras": {"n_workers": 1}})}
        out = subprocess.run(AIRFLOW + ["db", "migrate"], env=self.env, cwd=self.cwd,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]

    def dags_test(self, dag_id: str, *extra: str, env: dict | None = None,
                  timeout: float = 500) -> "DagsTest":
        results = os.path.join(self.root, f"{dag_id}-results.json")
        return DagsTest(AIRFLOW + ["dags", "test", dag_id, *extra],
                        {**self.env, "USER_RESULTS": results, **(env or {})}, self.cwd,
                        results, timeout)

    def records_of(self, dag_id: str, task_id: str | None = None) -> list[dict]:
        out = []
        for run in sorted(os.listdir(self.records)) if os.path.isdir(self.records) else []:
            path = os.path.join(self.records, run, "record.json")
            if os.path.exists(path):
                with open(path) as f:
                    rec = json.load(f)
                labels = rec.get("labels") or {}
                if labels.get("airflow/dag_id") == dag_id and task_id in (
                        None, labels.get("airflow/task_id")):
                    out.append(rec)
        return out

    def task_states(self, dag_id: str, run_id: str) -> dict[str, list[str]]:
        out = subprocess.run(AIRFLOW + ["tasks", "states-for-dag-run", dag_id, run_id,
                                        "--output", "json"],
                             env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        states: dict[str, list[str]] = {}
        for row in json.loads(out.stdout[out.stdout.index("["):]):
            states.setdefault(row["task_id"], []).append(row["state"])
        return states


class DagsTest:
    """`airflow dags test` in a process group of its own; the output goes to a file."""

    def __init__(self, cmd: list[str], env: dict, cwd: str, results: str, timeout: float):
        self.results_path = results
        me = psutil.Process()
        base_children = {p.pid for p in me.children(recursive=True)}
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            self.output = _wait_for_dag_run(proc, log, timeout)
        found = FINISHED.search(self.output)
        assert found, self.output[-5000:]
        self.run_id, self.state = found.group(2), found.group(3)
        # everything the command started is gone with it
        left = wait_until_clean(base_children, set())
        assert not left["children"] and not left["labelled"], left

    def results(self) -> dict:
        assert os.path.exists(self.results_path), self.output[-5000:]
        with open(self.results_path) as f:
            return json.load(f)


def _wait_for_dag_run(proc: subprocess.Popen, log, timeout: float) -> str:
    """The command's output once it exits. LocalExecutor's shutdown can wait forever on
    a worker process that has already exited: 20 s after the DAG run's end is logged,
    the command is stopped."""
    deadline, grace_until = time.monotonic() + timeout, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if grace_until is None and FINISHED.search(_read(log)):
                grace_until = time.monotonic() + 20
            if grace_until is not None and time.monotonic() > grace_until:
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return _read(log)


def _read(f) -> str:
    f.seek(0)
    return f.read()


# session-wide: a module fixture is set up again whenever xdist runs another module's
# test in between, and these take a minute each
@pytest.fixture(scope="session")
def home(tmp_path_factory):
    return Home(str(tmp_path_factory.mktemp("airflow-user")))


@pytest.fixture(scope="session")
def everyday(home):
    return home.dags_test("everyday")


@pytest.fixture(scope="session")
def mistakes(home):
    return home.dags_test("mistakes")


# ------------------------------------------------------------------------ everyday
def test_everything_a_user_writes_runs(everyday):
    assert everyday.state == "success", everyday.output[-5000:]
    results = everyday.results()
    assert results["sq"] == sum(x * x for x in range(10))       # callable payload + op_kwargs
    assert results["times_two"] == 10                           # f(n=5), default n=1 unused
    assert results["add"] == 10 + 2 + 3                         # XCom input, positional, kw-only
    assert results["with_client"]["total"] == 0 + 2 + 4         # `client` by name, f()
    assert results["n"] == 7                                    # multiple_outputs
    assert results["task_id"] == "info" and re.fullmatch(r"\d{4}-\d\d-\d\d", results["ds"])
    assert results["mapped"] == [10, 20, 30]                    # .expand(x=[...])
    assert results["mapped_kwargs"] == [40]                     # .partial().expand_kwargs()
    assert results["script"] == {"total": 1 + 2 + 3 + 4}        # scripts/count.py by the DAG


def test_the_dag_module_is_not_imported_on_workers(everyday):
    # the function travels by value: neither the DAG module nor Airflow on the worker
    assert everyday.results()["with_client"]["worker_modules"] == [[]]


def test_records_name_the_dag_file_and_carry_the_labels(home, everyday):
    (sq,) = home.records_of("everyday", "sq")
    assert sq["status"] == "succeeded"
    assert sq["payload"] == "everyday.py:square_sum"
    assert sq["labels"]["airflow/map_index"] == "-1"
    # no cluster and no connection named: the dask_default connection (1 worker)
    (two,) = home.records_of("everyday", "times_two")
    assert two["workers"] == {"expected": 1, "started": 1}
    mapped = home.records_of("everyday", "tenfold")
    assert sorted(r["labels"]["airflow/map_index"] for r in mapped) == ["0", "1", "2"]
    assert len({r["run_id"] for r in mapped}) == 3
    assert len({r["scheduler_address"] for r in mapped}) == 3  # a cluster each


def test_the_task_log_is_the_users_not_dasks(everyday):
    log = everyday.output
    assert "everyday.worker: doubling 2" in log                  # the user's worker log line
    assert "daskjob run everyday.sq-" in log and "succeeded in" in log
    assert "distributed.scheduler" not in log and "distributed.core" not in log
    assert "CommClosedError" not in log
    # (Airflow itself logs one when a downstream task reads a mapped result to its end)
    assert not [line for line in log.splitlines()
                if "XCom not found" in line and ("daskjob" in line or "_link_" in line)]
    assert "unusual_prefix" not in log


# ------------------------------------------------------------------------ mistakes
def test_jobs_that_cannot_run_fail_without_retry_and_leave_a_record(home, mistakes):
    assert mistakes.state == "failed"
    states = home.task_states("mistakes", mistakes.run_id)
    for task_id, why in (("bad_timeout", "timeout"), ("bad_payload", "no_such_module_xyz"),
                         ("missing_script", "missing.py"), ("bad_connection", "'extras'")):
        assert states[task_id] == ["failed"], (task_id, states)  # not up_for_retry
        (rec,) = home.records_of("mistakes", task_id)
        assert rec["status"] == "startup_failed", rec
        assert why in rec["error"]["message"], rec["error"]
        assert rec["labels"]["airflow/try_number"] == "1"
        assert rec["teardown"]["cluster"] == "not started"
    out = mistakes.output
    assert "InvalidDaskJob" in out and "not retried" in out
    assert "connection 'dask_typo' (AIRFLOW_CONN_DASK_TYPO): unknown key 'extras'" in out


def test_a_worker_traceback_points_at_the_dag_file(home, mistakes):
    (rec,) = home.records_of("mistakes", "boom")
    assert rec["status"] == "failed"
    dag_file = os.path.join(home.dags, "mistakes.py")
    with open(dag_file) as f:
        line = next(i for i, text in enumerate(f, 1) if "raise ValueError" in text)
    where = f'File "{dag_file}", line {line}, in fails_on_a_worker'
    assert where in rec["error"]["traceback"], rec["error"]["traceback"]
    assert where in mistakes.output and "bad value 42" in mistakes.output


def test_a_failed_try_keeps_its_record_and_the_retry_gets_a_new_cluster(home, mistakes):
    states = home.task_states("mistakes", mistakes.run_id)
    assert states["flaky"] == ["success"]
    first, second = sorted(home.records_of("mistakes", "flaky"),
                           key=lambda r: r["labels"]["airflow/try_number"])
    assert (first["status"], first["labels"]["airflow/try_number"]) == ("failed", "1")
    assert "the first try fails" in first["error"]["message"]
    assert (second["status"], second["labels"]["airflow/try_number"]) == ("succeeded", "2")
    assert second["result"]["value"] == 2
    assert first["scheduler_address"] != second["scheduler_address"]


def test_returning_an_uncomputed_collection_fails(home, mistakes):
    (rec,) = home.records_of("mistakes", "returns_lazy")
    assert rec["status"] == "failed"
    assert "uncomputed dask collection" in rec["error"]["message"]
    assert ".compute()" in rec["error"]["message"]


# --------------------------------------------------------- the real task runner
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")  # not longer: other tests count this process's children
def execution_api(home):
    """A real Airflow api-server (execution API) on loopback, for LocalExecutor."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/execution/"
    with airflow_api_server(AIRFLOW + ["api-server", "--apps", "execution", "-H", "127.0.0.1",
                                       "-p", str(port), "-w", "1"],
                            home.env, url + "health", cwd=home.cwd, timeout=120):
        yield url


def test_mapped_dask_tasks_under_the_real_task_runner(home, execution_api):
    run = home.dags_test("mapped", "--use-executor", env={
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api})
    assert run.state == "success", run.output[-5000:]
    assert run.results() == {"cubes": [1, 1 + 8, 1 + 8 + 27], "plus": [11, 21, 31]}
    for task_id in ("cubes", "plus_one"):
        recs = home.records_of("mapped", task_id)
        assert [r["status"] for r in recs] == ["succeeded"] * 3, recs
        assert sorted(r["labels"]["airflow/map_index"] for r in recs) == ["0", "1", "2"]
        assert len({r["run_id"] for r in recs}) == 3
        assert len({r["scheduler_address"] for r in recs}) == 3
        assert all(r["driver"]["pid"] != os.getpid() for r in recs)  # supervised task processes
        assert all(r["teardown"]["cluster"] == "closed" for r in recs)
    spans = sorted((r["started_at"], r["ended_at"]) for r in home.records_of("mapped"))
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), \
        "no two mapped runs overlapped"
