"""The Airflow provider under real Airflow (dag.test() on SQLite in a private AIRFLOW_HOME)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO, airflow_api_server

# Airflow reads its home and config when first imported: set them before that happens
AIRFLOW_HOME = tempfile.mkdtemp(prefix="daskjob-airflow-")
DATA = os.path.join(AIRFLOW_HOME, "data")
RECORDS = os.path.join(AIRFLOW_HOME, "runs")
DAGS = os.path.join(REPO, "dags")
FAULT_DAGS = os.path.join(REPO, "tests", "airflow_dags")
_LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
ENV = {
    # the examples, plus the fault-test DAGs as a second bundle (dag.test() needs both
    # serialized, which it does for configured bundles)
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
        {"name": "dags-folder", "classpath": _LOCAL_BUNDLE, "kwargs": {}},
        {"name": "fault-dags", "classpath": _LOCAL_BUNDLE, "kwargs": {"path": FAULT_DAGS}}]),
    "AIRFLOW_HOME": AIRFLOW_HOME, "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    # shared by the api-server the executor test starts and the task processes
    "AIRFLOW__API_AUTH__JWT_SECRET": "daskjob-tests-only",
    "DASKJOB_DATA_DIR": DATA, "DASKJOB_RECORD_DIR": RECORDS, "DASKJOB_DEMO_ROWS": "20000",
    # tpot_search: one generation of 4 pipelines on 2,000 rows
    "DASKJOB_TPOT_ROWS": "2000", "DASKJOB_TPOT_POPULATION": "4", "DASKJOB_TPOT_GENERATIONS": "1",
}
os.environ.update(ENV)
for folder in (DAGS, os.path.join(REPO, "tests")):
    if folder not in sys.path:
        sys.path.insert(0, folder)  # Airflow puts the DAGs folder on sys.path; so do we
pytest.importorskip("airflow")

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module", autouse=True)
def airflow_db():
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def dagbag():
    from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=DAGS)


def records_of(dag_id: str, task_id: str) -> list[dict]:
    out = []
    for run in sorted(os.listdir(RECORDS)) if os.path.isdir(RECORDS) else []:
        path = os.path.join(RECORDS, run, "record.json")
        # a run folder exists a moment before its first record.json (written atomically)
        if run.startswith(f"{dag_id}.{task_id}-") and os.path.exists(path):
            with open(path) as f:
                out.append(json.load(f))
    return out


def xcoms(dag_id: str, run_id: str) -> dict[tuple[str, str], object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    with create_session() as session:
        rows = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id,
                                                       XComModel.run_id == run_id)).all()
        return {(r.task_id, r.key): XComModel.deserialize_value(r) for r in rows}


# ----------------------------------------------------------------------- provider
def test_provider_info_is_valid_and_registered():
    import jsonschema
    from airflow.providers_manager import ProvidersManager

    from airflow_provider import get_provider_info
    with open(os.path.join(os.path.dirname(__import__("airflow").__file__),
                           "provider_info.schema.json")) as f:
        jsonschema.validate(get_provider_info(), json.load(f))
    pm = ProvidersManager()
    assert "daskjob" in pm.providers
    assert "dask" in pm.hooks
    assert "airflow_provider.links.DaskDashboardLink" in pm.extra_links_class_names
    assert "airflow_provider.links.DaskRunReportLink" in pm.extra_links_class_names
    from airflow.sdk import task
    from airflow_provider.decorators.dask import dask_task
    assert task.dask is dask_task


def test_airflow_providers_list_shows_it():
    proc = subprocess.run([sys.executable, "-m", "airflow", "providers", "list"],
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "daskjob" in proc.stdout


def test_connection_to_cluster_spec():
    from airflow_provider.hooks.dask import DaskHook, cluster_spec_from_connection
    borrowed = cluster_spec_from_connection("sched.example", 8786, "", None)
    assert borrowed.backend == "address" and borrowed.address == "tcp://sched.example:8786"
    local = cluster_spec_from_connection(None, None, json.dumps({"n_workers": 3}), "s3cret")
    assert local.backend == "local" and local.n_workers == 3
    assert local.secrets["password"].get_secret_value() == "s3cret"
    with pytest.raises(ValueError, match="n_workers"):
        cluster_spec_from_connection(None, None, json.dumps({"n_workers": -1}), None, conn_id="bad")
    ui = DaskHook.get_ui_field_behaviour()
    assert "login" in ui["hidden_fields"] and "password" in ui["relabeling"]


def test_example_dags_import_with_schedules():
    bag = dagbag()
    assert bag.import_errors == {}
    files = {f for f in os.listdir(DAGS) if f.endswith(".py") and not f.startswith("_")}
    assert {os.path.basename(d.fileloc) for d in bag.dags.values()} == files
    for dag_id in ("nightly_etl", "tpot_search", "taskflow_dask"):
        dag = bag.get_dag(dag_id)
        assert dag.schedule == "0 2 * * *"
        assert dag.catchup is False and dag.max_active_runs == 1
        assert dag.default_args["retries"] == 2


# ---------------------------------------------------------------------- dag.test()
def test_taskflow_dag_runs_with_payload_defined_in_the_dag_file(capfd):
    dag = dagbag().get_dag("taskflow_dask")
    dr = dag.test(logical_date=__import__("pendulum").datetime(2026, 11, 20, tz="UTC"))
    assert dr.state == "success"
    out = capfd.readouterr().out
    assert "taskflow.worker: scoring" in out and "[worker-" in out  # a worker's user log line
    assert "dask event taskflow.total" in out                         # a worker event
    values = xcoms("taskflow_dask", dr.run_id)
    assert values[("sum_of_squares", "return_value")]["total"] == sum(i * i for i in range(100))
    assert values[("report", "return_value")] == 328350
    summary = values[("sum_of_squares", "daskjob_record")]
    assert summary["status"] == "succeeded"
    rec = records_of("taskflow_dask", "sum_of_squares")[-1]
    assert rec["labels"]["airflow/dag_id"] == "taskflow_dask"
    assert rec["labels"]["airflow/run_id"] == dr.run_id
    assert rec["labels"]["airflow/try_number"] == "1"


def test_nightly_etl_dag_writes_the_partition(capfd):
    dag = dagbag().get_dag("nightly_etl")
    dr = dag.test(logical_date=__import__("pendulum").datetime(2026, 11, 20, tz="UTC"))
    assert dr.state == "success"
    summary = xcoms("nightly_etl", dr.run_id)[("etl", "return_value")]
    assert summary["date"] == "2026-11-20" and summary["rows_read"] == 20000
    assert summary["rows_written"] == 20000 - summary["rows_rejected"]
    assert os.path.exists(os.path.join(DATA, "warehouse", "clients", "date=2026-11-20", "_SUCCESS"))
    assert "dask event etl.partition" in capfd.readouterr().out


def nightly_etl_with_connection(extra: dict, day: int) -> dict:
    """The nightly_etl DAG for 2026-11-<day>, its `dask_default` connection set to
    `extra`: the DAG file unchanged. Returns the ETL run's record."""
    os.environ["AIRFLOW_CONN_DASK_DEFAULT"] = json.dumps({"conn_type": "dask", "extra": extra})
    try:
        dr = dagbag().get_dag("nightly_etl").test(
            logical_date=__import__("pendulum").datetime(2026, 11, day, tz="UTC"))
    finally:
        del os.environ["AIRFLOW_CONN_DASK_DEFAULT"]
    assert dr.state == "success"
    summary = xcoms("nightly_etl", dr.run_id)[("etl", "return_value")]
    assert summary["date"] == f"2026-11-{day}" and summary["rows_read"] == 20000
    assert os.path.exists(os.path.join(DATA, "warehouse", "clients", f"date=2026-11-{day}",
                                       "_SUCCESS"))
    rec = [r for r in records_of("nightly_etl", "etl")
           if r["labels"]["airflow/run_id"] == dr.run_id][-1]
    assert rec["spec"]["cluster"]["backend"] == extra["backend"]
    assert rec["status"] == "succeeded" and rec["teardown"]["cluster"] == "closed"
    return rec


def test_nightly_etl_dag_runs_on_ssh_by_changing_only_its_connection():
    """The same DAG file, its `dask_default` connection now naming the ssh backend: the
    cluster runs over SSH on loopback (sshd started by the test set-up), with TLS."""
    from services import service
    ssh = service("sshd")
    rec = nightly_etl_with_connection({"backend": "ssh", "n_workers": 2, "options": {
        "hosts": [ssh["SSH_HOST"]],
        "connect_options": {"port": int(ssh["SSH_PORT"]), "username": ssh["SSH_USER"],
                            "client_keys": [ssh["SSH_KEY"]],
                            "known_hosts": ssh["SSH_KNOWN_HOSTS"]}}}, day=21)
    assert rec["scheduler_address"].startswith("tls://"), rec["scheduler_address"]


@pytest.mark.timeout(300)
def test_nightly_etl_dag_runs_on_kubernetes_by_changing_only_its_connection(tmp_path):
    """The same DAG file, its `dask_default` connection now naming the kubernetes backend:
    the real Dask operator controller, against the emulated control plane of
    tests/kube, makes the cluster whose pods run the ETL."""
    from kube.harness import emulated_cluster
    with emulated_cluster(tmp_path / "kube") as kube:
        rec = nightly_etl_with_connection({"backend": "kubernetes", "n_workers": 2, "options": {
            "image": "ghcr.io/me/etl:1", "kubeconfig": kube.kubeconfig,
            "scheduler_service_type": "LoadBalancer", "idle_timeout": 0}}, day=22)
        assert rec["events"]["topics"].get("etl.partition")  # the workers' events came back
        assert any(f.startswith("pod-") for f in rec["logs"]["files"])  # and the pods' logs
        kube.wait_all_gone()  # the cascade from the deleted DaskCluster, down to the processes


@pytest.mark.timeout(360)  # includes api-server start-up / TPOT imports on a busy machine
def test_tpot_search_dag_puts_the_best_score_in_xcom(capfd):
    import importlib.util
    if importlib.util.find_spec("tpot") is None:  # (importing it here costs ~15 s)
        pytest.skip("tpot is not installed")
    date = "2026-11-22"
    # the cluster comes from the `dask_default` connection: one worker (each worker
    # imports tpot before the search starts)
    os.environ["AIRFLOW_CONN_DASK_DEFAULT"] = json.dumps({"conn_type": "dask", "extra": {"n_workers": 1}})
    try:
        dr = dagbag().get_dag("tpot_search").test(
            logical_date=__import__("pendulum").parse(date + "T00:00:00+00:00"))
    finally:
        del os.environ["AIRFLOW_CONN_DASK_DEFAULT"]
    assert dr.state == "success"
    values = xcoms("tpot_search", dr.run_id)
    found = values[("search", "return_value")]
    best = values[("best_score", "return_value")]
    # balanced accuracy on rows the search never saw: 0.5 is a coin toss
    assert best == found["holdout_score"] and 0.55 < best <= 1.0, found
    assert found["scoring"] == "balanced_accuracy"
    assert found["n_evaluated"] == 4  # DASKJOB_TPOT_POPULATION, one generation
    rec = [r for r in records_of("tpot_search", "search")
           if r["labels"]["airflow/run_id"] == dr.run_id][-1]
    assert rec["workers"] == {"expected": 1, "started": 1}  # from the connection
    assert values[("search", "daskjob_record")]["status"] == "succeeded"
    assert rec["status"] == "succeeded" and rec["teardown"]["cluster"] == "closed"
    assert rec["result"]["value"]["holdout_score"] == best
    assert rec["events"]["topics"].get("tpot.done") == 1
    assert os.path.isfile(os.path.join(DATA, "models", date, "pipeline.joblib"))
    assert "dask event tpot.done" in capfd.readouterr().out


def fault_dag(dag_id: str):
    from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=FAULT_DAGS).get_dag(dag_id)


def test_failing_payload_fails_the_task_with_the_worker_traceback(capfd):
    dr = fault_dag("dask_fails").test()
    assert dr.state == "failed"
    out = capfd.readouterr().out
    assert "boom-from-worker 7" in out and "_boom" in out
    assert "DaskJobFailed" in out
    assert records_of("dask_fails", "job")[-1]["status"] == "failed"


def test_execution_timeout_tears_the_cluster_down():
    import time
    t = time.monotonic()
    dr = fault_dag("dask_times_out").test()
    assert dr.state == "failed"
    assert time.monotonic() - t < 60
    rec = records_of("dask_times_out", "job")[-1]
    assert rec["status"] == "timed_out"
    assert rec["teardown"]["cluster"] == "closed"


def test_connection_secret_appears_nowhere(capfd):
    secret = "pa55-never-shown-8812"
    os.environ["AIRFLOW_CONN_DASK_SECRET"] = json.dumps(
        {"conn_type": "dask", "password": secret, "extra": {"n_workers": 1}})
    try:
        dr = fault_dag("dask_secret").test()
    finally:
        del os.environ["AIRFLOW_CONN_DASK_SECRET"]
    assert dr.state == "success"
    assert secret not in capfd.readouterr().out
    rec = records_of("dask_secret", "job")[-1]
    run_dir = rec["record_path"]
    for root, _, files in os.walk(run_dir):
        for name in files:
            with open(os.path.join(root, name), errors="replace") as f:
                assert secret not in f.read(), name
    assert secret not in repr(xcoms("dask_secret", dr.run_id))
    assert rec["spec"]["cluster"]["secrets"] == "***"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def _execution_api_server():
    """A real Airflow api-server (execution API only) on loopback, for LocalExecutor."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/execution/"
    with airflow_api_server([sys.executable, "-m", "airflow", "api-server", "--apps", "execution",
                             "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
                            {**os.environ, **ENV}, url + "health", timeout=120):
        yield url


@pytest.fixture
def execution_api(_execution_api_server):
    return _execution_api_server


_RUN_WITH_EXECUTOR = """
import json, sys
import pendulum
from airflow.models.dagbag import DagBag
folder, dag_id, date = sys.argv[1:4]
sys.path.insert(0, folder)
logical_date = pendulum.parse(date) if date != "-" else None
dr = DagBag(dag_folder=folder).get_dag(dag_id).test(use_executor=True, logical_date=logical_date)
print("RESULT " + json.dumps({"state": str(dr.state), "run_id": dr.run_id}))
"""


class ExecutorRun:
    """dag.test(use_executor=True) in a fresh interpreter, as a scheduler would run it:
    LocalExecutor forks its workers, and a fork of this test process (which has run
    Dask clusters itself) would inherit stale Dask state."""

    def __init__(self, api_url: str, folder: str, dag_id: str, date: str = "-",
                 parallelism: int = 4):
        env = {**os.environ, **ENV, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": api_url,
               "AIRFLOW__CORE__PARALLELISM": str(parallelism),
               "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(REPO, "tests"),
                                                           os.environ.get("PYTHONPATH")]))}
        # files, not pipes: nobody reads a pipe while the run goes on, and a full one blocks it
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _RUN_WITH_EXECUTOR, folder, dag_id, date],
                                     env=env, stdout=self.out, stderr=self.err, text=True,
                                     start_new_session=True)

    def result(self, timeout: float = 600) -> dict:
        import re
        import time

        # LocalExecutor's shutdown sometimes waits forever on a worker process that has
        # already exited (seen: the DagRun finished, then "Shutting down LocalExecutor"
        # and no end). The run's outcome is logged before that, so read it from there.
        finished = re.compile(r"DagRun Finished: dag_id=\S+, .*?run_id=([^,]+), .*?state=(\w+)")
        deadline = time.monotonic() + timeout
        grace_until = None
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                if grace_until is None and finished.search(self._read(self.out)):
                    grace_until = time.monotonic() + 20
                if grace_until is not None and time.monotonic() > grace_until:
                    break
                time.sleep(0.5)
        finally:
            self.stop()
        stdout, stderr = self._read(self.out), self._read(self.err)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            return json.loads(lines[-1][len("RESULT "):])
        match = finished.search(stdout)
        assert match, (stdout[-3000:], stderr[-3000:])
        return {"state": match.group(2), "run_id": match.group(1)}

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        return f.read()

    def stop(self) -> None:
        """Ends the run if it is still going (its task processes are the leak check's)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)


def run_with_local_executor(api_url: str, folder: str, dag_id: str, date: str = "-",
                            parallelism: int = 4) -> dict:
    return ExecutorRun(api_url, folder, dag_id, date, parallelism).result()


@pytest.mark.timeout(360)  # includes api-server start-up / TPOT imports on a busy machine
def test_real_task_runner_with_a_payload_from_the_dag_file(execution_api):
    """LocalExecutor: each task runs in Airflow's supervised task process, whose environment
    (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///) must not reach workers."""
    dr = run_with_local_executor(execution_api, DAGS, "taskflow_dask", "2026-11-21T00:00:00+00:00")
    assert dr["state"] == "success"
    values = xcoms("taskflow_dask", dr["run_id"])
    assert values[("report", "return_value")] == 328350
    rec = [r for r in records_of("taskflow_dask", "sum_of_squares")
           if r["labels"]["airflow/run_id"] == dr["run_id"]][-1]
    assert rec["status"] == "succeeded"
    assert rec["driver"]["pid"] != os.getpid()  # really ran in another (supervised) process


@pytest.mark.timeout(360)  # includes api-server start-up / TPOT imports on a busy machine
def test_six_dask_tasks_at_once(execution_api):
    dr = run_with_local_executor(execution_api, FAULT_DAGS, "dask_six_at_once", parallelism=6)
    assert dr["state"] == "success"
    recs = [r for r in (records_of("dask_six_at_once", f"job_{i}")[-1] for i in range(6))]
    assert [r["result"]["value"] for r in recs] == [sum(2 * x for x in range(10 + i)) for i in range(6)]
    assert len({r["scheduler_address"] for r in recs}) == 6
    # they really overlapped: some run started before another one ended
    spans = sorted((r["started_at"], r["ended_at"]) for r in recs)
    assert any(spans[i + 1][0] < spans[i][1] for i in range(5))


def _wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _payload_running(dag_id: str, task_id: str, old: set[str]) -> dict | None:
    """The record of a new run of dag_id.task_id once its payload has started."""
    for rec in records_of(dag_id, task_id):
        if rec["run_id"] in old:
            continue
        events = os.path.join(rec["record_path"], "events.jsonl")
        if os.path.exists(events) and '"payload started"' in open(events).read():
            return rec
    return None


def _set_task_state(dag_id: str, run_id: str, task_id: str, state: str) -> list[str]:
    """What the UI's "Mark as failed" does: its REST call (PATCH .../taskInstances/{task_id},
    new_state) runs this on the DAG's serialized version, against the metadata DB."""
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session
    with create_session() as session:
        dag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
        changed = dag.set_task_instance_state(task_id=task_id, run_id=run_id, state=state,
                                              commit=True, session=session)
        return [ti.state for ti in changed]


def _gone(proc) -> bool:
    import psutil
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# Airflow SIGKILLs the task 5 s after its SIGTERM (hard-coded): teardown must fit in that,
# which a machine busy with other tests cannot promise
@pytest.mark.alone
@pytest.mark.timeout(360)  # includes api-server start-up / TPOT imports on a busy machine
def test_marking_a_running_task_failed_cancels_the_run(execution_api):
    """Airflow's kill: the task's state is set to failed while it runs. The supervisor's
    next heartbeat is refused (409), it sends SIGTERM to the task's process group, the
    task runner calls on_kill() and returns, and execute() carries on: on_kill cancelled
    the run, so execute() tears the cluster down and ends (before the SIGKILL that
    follows 5 s later)."""
    import time

    import psutil

    from daskjob.procs import labelled_processes
    old = {r["run_id"] for r in records_of("dask_killed", "job")}
    run = ExecutorRun(execution_api, FAULT_DAGS, "dask_killed")
    try:
        rec = _wait_for(lambda: _payload_running("dask_killed", "job", old)
                        or run.proc.poll() is not None, 150, "the payload to start")
        assert isinstance(rec, dict), "the DAG run ended before its payload started"
        driver = psutil.Process(rec["driver"]["pid"])  # the task process: runs execute()
        assert driver.pid != os.getpid()
        # the processes of its cluster: the task process's own (dask worker processes
        # rename themselves, which blanks their /proc environ: labels do not find them)
        cluster = driver.children(recursive=True)
        cluster += [p for p, _ in labelled_processes(rec["run_id"]) if p not in cluster]
        assert any("dask worker" in " ".join(p.cmdline()) for p in cluster), cluster

        t0 = time.monotonic()
        assert _set_task_state("dask_killed", rec["labels"]["airflow/run_id"], "job",
                               "failed") == ["failed"]
        _wait_for(lambda: _gone(driver), 60, "the task process to end", poll=0.05)
        task_ended = time.monotonic() - t0
        _wait_for(lambda: not labelled_processes(rec["run_id"])
                  and all(_gone(p) for p in cluster),
                  60, "the cluster to go", poll=0.05)
        cluster_gone = time.monotonic() - t0
        dr = run.result(120)
    finally:
        run.stop()
    print(f"\nmarked failed -> task process ended {task_ended:.1f}s, "
          f"last cluster process gone {cluster_gone:.1f}s")
    assert task_ended < 15, task_ended
    assert cluster_gone < 15, cluster_gone
    assert dr["state"] == "failed"
    final = [r for r in records_of("dask_killed", "job") if r["run_id"] == rec["run_id"]][0]
    assert final["status"] != "running", \
        "the teardown did not finish before Airflow's SIGKILL (5 s after its SIGTERM)"
    assert final["status"] == "cancelled", final["error"]
    assert "on_kill" in final["error"]["message"]
    assert final["teardown"]["cluster"] == "closed"
    # the task log: the supervisor's reason, then on_kill
    airflow_run = rec["labels"]["airflow/run_id"]
    with open(os.path.join(AIRFLOW_HOME, "logs", "dag_id=dask_killed", f"run_id={airflow_run}",
                           "task_id=job", "attempt=1.log")) as f:
        log = f.read()
    assert "Server indicated the task shouldn't be running anymore" in log
    assert log.index("shouldn't be running") < log.index("task killed: cancelling daskjob run")


# ----------------------------------------------------------------------- run report
@pytest.fixture(scope="module")
def airflow_ui():
    """The whole api-server (UI, public API, execution API, plugins) on loopback, with
    Airflow's simple auth manager and one user: what a team runs."""
    port = _free_port()
    passwords = os.path.join(AIRFLOW_HOME, "passwords.json")
    with open(passwords, "w") as f:
        json.dump({"reporter": "report-pass"}, f)
    env = {**os.environ, **ENV, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "reporter:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": passwords}
    base = f"http://127.0.0.1:{port}"
    # started outside the source tree: there, `python -m` would also see the tree's own
    # egg-info and load the provider's entry points twice
    with airflow_api_server([sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1",
                             "-p", str(port), "-w", "1"], env, base + "/api/v2/monitor/health",
                            cwd=AIRFLOW_HOME):
        yield base


def _http(url: str, token: str | None = None, data: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers),
                                    timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.timeout(420)  # the api-server's start and a DAG run on a busy machine
def test_run_report_in_the_airflow_ui(airflow_ui, tmp_path):
    """A DaskOperator task fails on a worker under the real task runner; its "Dask run
    report" link opens, for a logged-in user only, the report served by the provider's
    plugin on the api-server."""
    from browser import open_page
    dr = run_with_local_executor(airflow_ui + "/execution/", FAULT_DAGS, "dask_report")
    assert dr["state"] == "failed"
    values = xcoms("dask_report", dr["run_id"])
    link = values[("check", "_link_DaskRunReportLink")]
    assert link.startswith("/daskjob/runs/dask_report/") and link.endswith("/check"), link
    # the dashboard went with the cluster: so did its link
    assert not values.get(("check", "_link_DaskDashboardLink"))

    # nobody logged in: refused, and nothing of the run in the answer
    status, body = _http(airflow_ui + link)
    assert status == 401 and "partition" not in body, (status, body[:1000])
    assert _http(airflow_ui + link, token="not-a-token")[0] in (401, 403)
    status, body = _http(airflow_ui + "/auth/token",
                         data={"username": "reporter", "password": "report-pass"})
    assert status == 201, body
    token = json.loads(body)["access_token"]

    # the browser carries the UI's session cookie, as after logging in
    cookie = [{"name": "_token", "value": token, "url": airflow_ui}]
    with open_page(airflow_ui + link, str(tmp_path / "airflow-report.png"), cookies=cookie) as shown:
        text = shown.text
        head = text.split("Phases", 1)[0]
        assert "failed" in head and "ValueError: partition 3 is corrupt" in head
        assert "airflow/dag_id" in head and "dask_report" in head
        for phase in ("provision", "workers", "payload", "snapshot", "teardown"):
            assert phase in text
        shown.page.locator('input[type="search"]').nth(0).fill("partition.checked")
        assert "partition.checked" in shown.page.locator("table.rows").nth(0).inner_text()
        shown.page.locator('input[type="search"]').nth(2).fill("bad checksum")
        assert "partition 3 has a bad checksum" in shown.page.locator("table.rows").nth(2).inner_text()
        # the run's files come through the plugin too, with the same login
        with shown.page.expect_navigation():
            shown.page.get_by_role("link", name="logs/worker-0.log").click()
        assert "distributed.worker" in shown.page.inner_text("body")
    assert os.path.getsize(tmp_path / "airflow-report.png") > 10_000
