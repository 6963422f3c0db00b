"""The Flyte plugin under real flytekit local execution, on real ephemeral Dask clusters."""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import dask
import pytest

# flytekit, when imported, replaces this process's SIGINT handler with one that exits
# with 1; later tests in the same process expect Ctrl-C to raise KeyboardInterrupt
_SIGINT = signal.getsignal(signal.SIGINT)
pytest.importorskip("flytekit")
signal.signal(signal.SIGINT, _SIGINT)

import dask.config  # noqa: E402
import pandas as pd  # noqa: E402
from flytekit.configuration import Image, ImageConfig, SerializationSettings  # noqa: E402
from flytekit.tools.translator import get_serializable  # noqa: E402

from conftest import REPO, LogLines, only_run  # noqa: E402
from daskjob import ClusterSpec, SpecError  # noqa: E402
from flyte_plugin import (DaskTaskFailed, DaskTaskStartupFailed, dask_task,  # noqa: E402
                          execution_labels)

pytestmark = pytest.mark.usefixtures("no_leaks")
DATE = "2026-11-20"
ROWS = 5000


@pytest.fixture(autouse=True)
def sigint_as_before():
    yield
    signal.signal(signal.SIGINT, _SIGINT)


@pytest.fixture
def flyte_dirs(tmp_path, monkeypatch):
    """Data and run records of the example workflows in this test's own folders."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("DASKJOB_DATA_DIR", str(data))
    # the example workflows take their number of workers from the daskjob config
    with dask.config.set({"daskjob.record-dir": str(runs), "daskjob.cluster.n-workers": 1}):
        yield data, runs


@pytest.fixture
def flytekit_log():
    """Everything logged on flytekit's logger tree (flytekit itself stays at WARNING
    unless asked; the deck path is an INFO line of its own)."""
    root = logging.getLogger("flytekit")
    handler, level = LogLines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


def records(runs) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(runs, "*", "record.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return sorted(out, key=lambda r: r["started_at"])


def deck_files(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines
            for m in [re.search(r"creates flyte deck html to file://(\S+)", line)] if m]


# ------------------------------------------------------------------- example workflows
def test_nightly_launch_plan_runs_locally_with_deck_and_live_logs(flyte_dirs, flytekit_log):
    from flytekit.core.schedule import CronSchedule

    from workflows.nightly_etl import EtlSummary, nightly_etl, nightly_etl_nightly
    data, runs = flyte_dirs

    lp = nightly_etl_nightly
    assert lp.name == "nightly_etl_nightly" and lp.workflow is nightly_etl
    assert isinstance(lp.schedule, CronSchedule)
    assert lp.schedule.cron_schedule.schedule == "0 2 * * *"
    assert lp.schedule.kickoff_time_input_arg == "run_time"
    fixed = {k: v.scalar.primitive.value for k, v in lp.fixed_inputs.literals.items()}
    assert fixed == {"date": "", "max_reject_ratio": 0.05}

    # as the scheduler fires it (the kickoff time), with a small demo drop; the team asks
    # for Dask's performance report in its dask config (it is off by default)
    with dask.config.set({"daskjob.performance-report": True}):
        summary = lp(run_time=dt.datetime(2026, 11, 21, 2, 0, tzinfo=dt.timezone.utc), rows=ROWS)

    assert isinstance(summary, EtlSummary)
    assert summary.date == "2026-11-21" and summary.rows_read == ROWS  # the kickoff's day
    assert summary.rows_written == ROWS - summary.rows_rejected > 0.9 * ROWS
    assert (data / "warehouse" / "clients" / "date=2026-11-21" / "_SUCCESS").is_file()

    (rec,) = records(runs)
    assert rec["status"] == "succeeded" and rec["teardown"]["cluster"] == "closed"
    labels = rec["labels"]
    assert labels["flyte/task"] == "workflows.nightly_etl.etl"
    assert labels["flyte/execution_id"] and labels["flyte/node_id"] == "local"
    assert labels["flyte/retry_attempt"] == "0" and labels["pipeline"] == "nightly"

    # worker log lines, lifecycle and user events reached flytekit's logger while it ran
    def first(predicate):
        return next(i for i, line in enumerate(flytekit_log) if predicate(line))
    finished = first(lambda line: "payload finished" in line)
    assert first(lambda line: "payload started" in line) < finished
    assert first(lambda line: line.startswith("[worker-0] ")) < finished
    assert first(lambda line: line.startswith("dask event etl.partition")) < finished

    # the deck file flytekit wrote holds ours: the run report, with the performance
    # report it asked for carried inside
    (deck,) = deck_files(flytekit_log)
    report = embedded_report(open(deck, encoding="utf-8").read())
    assert 'id="dj-events"' in report and 'id="dj-logs"' in report
    assert "etl.partition" in report and "payload started" in report
    assert 'id="dj-phases"' in report and ">teardown<" in report
    assert "worker-0.log" in report
    assert 'id="dj-perf"' in report
    # and the report next to the record
    copy = open(os.path.join(rec["record_path"], "run-report.html"), encoding="utf-8").read()
    assert "etl.partition" in copy and 'id="dj-events"' in copy


def embedded_report(deck_page: str) -> str:
    """The run report a deck holds in its iframe."""
    import html
    match = re.search(r'<iframe id="daskjob-run-report"[^>]*srcdoc="([^"]*)"', deck_page)
    assert match, deck_page[:2000]
    return html.unescape(match.group(1))


@pytest.mark.timeout(300)  # above the run's own bound; TPOT imports are slow on a busy machine
def test_tpot_workflow_returns_the_best_score(flyte_dirs):
    pytest.importorskip("tpot")
    from workflows.tpot_search import tpot_search
    data, runs = flyte_dirs

    # one generation of three pipelines on ~2,000 rows: the wiring, not the search, is
    # under test here (tests/test_tpot.py tests the search)
    score = tpot_search(date=DATE, rows=2000, max_time_mins=1.0, generations=1,
                        population_size=3)

    assert 0.5 < score <= 1.0  # balanced accuracy: always-"no" scores 0.5
    model = data / "models" / DATE
    assert (model / "pipeline.joblib").is_file() and (model / "leaderboard.csv").is_file()
    etl_rec, search_rec = records(runs)
    assert etl_rec["labels"]["flyte/task"] == "workflows.nightly_etl.etl"
    assert search_rec["labels"]["flyte/task"] == "workflows.tpot_search.search"
    assert search_rec["status"] == "succeeded"
    assert search_rec["events"]["topics"].get("tpot.done") == 1


@pytest.mark.timeout(300)  # above the run's own bound; TPOT imports are slow on a busy machine
def test_pyflyte_run_from_the_repo_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASKJOB")}
    env.update({"DASKJOB_DATA_DIR": str(tmp_path / "data"),
                "DASKJOB__RECORD_DIR": str(tmp_path / "runs"),
                "DASKJOB__CLUSTER__N_WORKERS": "1", "COLUMNS": "200"})
    cmd = [os.path.join(os.path.dirname(sys.executable), "pyflyte"), "run",
           "workflows/nightly_etl.py", "nightly_etl", "--date", DATE, "--rows", str(ROWS)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("pyflyte run did not finish within 240 s:\n" + out[-3000:])
    print(f"\npyflyte run: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, out[-5000:]
    assert f"EtlSummary(date='{DATE}', rows_read={ROWS}" in out
    rec = json.load(open(os.path.join(only_run(tmp_path / "runs"), "record.json")))
    assert rec["status"] == "succeeded" and rec["payload"] == "workflows.nightly_etl:etl"
    assert rec["workers"] == {"expected": 1, "started": 1}
    assert "ModuleNotFoundError" not in out


@pytest.mark.timeout(300)
def pyflyte_run(folder, *args: str) -> str:
    """`pyflyte run ARGS` in `folder`, as a user runs it; its output's last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASKJOB")}
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pyflyte"), "run",
                           *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout.strip().splitlines()[-1]


# a workflow file as a user writes it; its task's cluster settings vary
SQUARES = textwrap.dedent("""
    from flytekit import workflow
    from flyte_plugin import dask_task

    def square(x):
        return x * x

    @dask_task(cluster={cluster!r}, record_dir="runs", performance_report=False)
    def total(client, n: int = 3) -> int:
        return sum(client.gather(client.map(square, range(n))))

    @workflow
    def squares(n: int = 3) -> int:
        return total(n=n)
""")


def test_a_task_that_asks_for_the_client_by_name(tmp_path):
    """As with run_job: a `client` parameter gets the run's client and is no task input
    (flytekit would refuse it: it has no type)."""
    (tmp_path / "wf.py").write_text(SQUARES.format(cluster={"n_workers": 1}))
    assert pyflyte_run(tmp_path, "wf.py", "squares", "--n", "4") == "14"
    rec = json.load(open(os.path.join(only_run(tmp_path / "runs"), "record.json")))
    assert rec["status"] == "succeeded" and rec["payload"] == "wf:total"
    assert "client" not in rec["spec"]["params"]


@pytest.mark.timeout(300)
def test_a_task_runs_on_kubernetes_by_changing_only_its_cluster(tmp_path):
    """The task of test_a_task_that_asks_for_the_client_by_name, its cluster now naming
    the kubernetes backend: the real Dask operator controller, against the emulated
    control plane of tests/kube, makes the cluster its pods run."""
    from kube.harness import emulated_cluster
    with emulated_cluster(tmp_path / "kube") as kube:
        cluster = {"backend": "kubernetes", "n_workers": 1, "options": {
            "image": "ghcr.io/me/etl:1", "kubeconfig": kube.kubeconfig,
            "scheduler_service_type": "LoadBalancer", "idle_timeout": 0}}
        (tmp_path / "wf.py").write_text(SQUARES.format(cluster=cluster))
        assert pyflyte_run(tmp_path, "wf.py", "squares", "--n", "4") == "14"
        rec = json.load(open(os.path.join(only_run(tmp_path / "runs"), "record.json")))
        assert rec["status"] == "succeeded" and rec["backend"] == "kubernetes"
        assert rec["labels"]["flyte/execution_id"]  # a Flyte run, labelled as such
        assert any(f.startswith("pod-") for f in rec["logs"]["files"])
        kube.wait_all_gone()  # the cascade from the deleted DaskCluster, down to the processes


def test_a_flytekitplugins_dask_task_runs_by_changing_its_decorator(tmp_path):
    """A task written for flytekitplugins-dask (`@task(task_config=Dask(...))`) with the
    decorator changed to `@dask_task`: its worker group's count, cpu, memory and GPU
    limit become the ephemeral cluster's, in local execution through `pyflyte run`."""
    pytest.importorskip("flytekitplugins.dask")
    (tmp_path / "wf.py").write_text(textwrap.dedent("""
        import dask
        from distributed import get_client, get_worker
        from flytekit import Resources, workflow
        from flytekitplugins.dask import Dask, Scheduler, WorkerGroup
        from flyte_plugin import dask_task

        def where(i):
            w = get_worker()
            return [str(w.name), w.state.nthreads, w.memory_manager.memory_limit,
                    w.state.total_resources.get("GPU", 0)]

        @dask_task(task_config=Dask(
            scheduler=Scheduler(limits=Resources(cpu="1", mem="1Gi")),
            workers=WorkerGroup(number_of_workers=2,
                                limits=Resources(cpu="2", mem="1Gi", gpu="1"))),
            record_dir="runs", performance_report=False)
        def on_gpu_workers(n: int = 6) -> str:
            client = get_client()
            with dask.annotate(resources={"GPU": 1}):
                seen = client.gather(client.map(where, range(n), pure=False))
            return repr(sorted(map(tuple, seen)))

        @workflow
        def wf(n: int = 6) -> str:
            return on_gpu_workers(n=n)
    """))
    seen = eval(pyflyte_run(tmp_path, "wf.py", "wf", "--n", "6"))  # noqa: S307 - our own repr
    assert len(seen) == 6
    assert {(threads, memory, gpu) for _, threads, memory, gpu in seen} == {(2, 2**30, 1)}
    rec = json.load(open(os.path.join(only_run(tmp_path / "runs"), "record.json")))
    cluster = rec["spec"]["cluster"]
    assert (cluster["n_workers"], cluster["threads_per_worker"]) == (2, 2)
    assert cluster["resources"] == {"GPU": 1.0} and rec["workers"]["started"] == 2


# ----------------------------------------------------------------------- the task
def test_typed_io_and_the_ephemeral_cluster_as_default_client(flyte_dirs, tmp_path):
    from flyte_tasks import scale_frame
    _, runs = flyte_dirs
    factor_file = tmp_path / "factor.txt"
    factor_file.write_text("2.5\n")
    frame = pd.DataFrame({"value": [1.0, 2.0, 3.0, 4.0]})

    out = scale_frame(frame=frame, factor_file=str(factor_file))

    assert isinstance(out.scaled, pd.DataFrame)
    assert out.scaled["scaled"].tolist() == [2.5, 5.0, 7.5, 10.0]
    assert out.scaled["square"].tolist() == [1, 4, 9, 16]  # client.map on the cluster
    (rec,) = records(runs)
    assert out.scheduler == rec["scheduler_address"]  # get_client() is this run's client
    assert out.workers == ["0"]  # dask collections computed on its one worker


LOOSE_WORKFLOW = """
from flytekit import workflow
from daskjob import ClusterSpec
from flyte_plugin import dask_task


def cube(x):  # runs on a worker, which must import this file to unpickle it
    return x ** 3


@dask_task(cluster=ClusterSpec(n_workers=1, dashboard=False), performance_report=False,
           timeout="5m", startup_timeout="3m")
def cubes(n: int) -> int:
    from distributed import get_client
    return sum(get_client().gather(get_client().map(cube, range(n))))


@workflow
def wf(n: int) -> int:
    return cubes(n=n)
"""


def test_workflow_file_off_sys_path_reaches_the_workers(flyte_dirs, tmp_path):
    """pyflyte puts a workflow file's folder on sys.path only while importing it; the
    workers then find the file's functions through the run, not through sys.path."""
    import importlib

    from flytekit.tools.module_loader import add_sys_path
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "loose_workflow.py").write_text(LOOSE_WORKFLOW)
    with add_sys_path(str(folder)):  # as pyflyte run does
        module = importlib.import_module("loose_workflow")
    try:
        assert str(folder) not in sys.path
        assert module.wf(n=5) == sum(i ** 3 for i in range(5))
    finally:
        sys.modules.pop("loose_workflow", None)


def test_failure_carries_the_worker_traceback(flyte_dirs):
    from flyte_tasks import failing_workflow
    _, runs = flyte_dirs

    with pytest.raises(DaskTaskFailed) as info:
        failing_workflow(row=7)

    message = str(info.value)
    assert "bad row 7 on the worker" in message
    assert "explode_on_worker" in message  # the worker-side frame
    assert "Traceback (payload / worker side)" in message
    assert info.value.status == "failed"
    assert not isinstance(info.value, DaskTaskStartupFailed)
    (rec,) = records(runs)
    assert rec["status"] == "failed" and rec["teardown"]["cluster"] == "closed"
    assert info.value.record["run_id"] == rec["run_id"]
    # flytekit writes no deck for a task that raised; the record keeps the report
    report = open(os.path.join(rec["record_path"], "run-report.html"), encoding="utf-8").read()
    assert "bad row 7 on the worker" in report and 'id="dj-error"' in report


def test_timeout_ends_the_task_promptly(flyte_dirs):
    from flyte_tasks import outlives_timeout
    _, runs = flyte_dirs

    t0 = time.monotonic()
    with pytest.raises(DaskTaskFailed) as info:
        outlives_timeout(seconds=120.0)
    elapsed = time.monotonic() - t0

    assert info.value.status == "timed_out"
    (rec,) = records(runs)
    assert rec["status"] == "timed_out" and rec["teardown"]["cluster"] == "closed"
    # the payload phase stops at the 3 s limit, not at the worker's 120 s sleep
    assert rec["phases"]["payload"]["seconds"] < 3 + 5
    assert elapsed < 90, elapsed


def test_sigterm_cancels_the_run_and_tears_down(flyte_dirs):
    """How Flyte stops a task pod: SIGTERM to the task process, mid-payload."""
    from flyte_tasks import waits_on_worker
    _, runs = flyte_dirs
    unhandled = []
    # a safety net under ours: should ours be missing, the signal must not end pytest
    def safety_net(*args):
        unhandled.append(args)
    previous = signal.signal(signal.SIGTERM, safety_net)

    def sigterm_once_running():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for path in glob.glob(os.path.join(runs, "*", "events.jsonl")):
                if "payload started" in open(path).read():
                    time.sleep(0.5)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(0.1)

    threading.Thread(target=sigterm_once_running, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DaskTaskFailed) as info:
            waits_on_worker(seconds=60.0)
        assert signal.getsignal(signal.SIGTERM) is safety_net  # the task put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - t0 < 55  # not the worker's 60 s sleep
    assert not unhandled  # the task's handler took it
    assert info.value.status == "cancelled"
    (rec,) = records(runs)
    assert rec["status"] == "cancelled" and rec["teardown"]["cluster"] == "closed"


def test_cached_task_starts_one_cluster_for_the_same_inputs(flyte_dirs, tmp_path, monkeypatch):
    from diskcache import Cache
    from flytekit.core.local_cache import LocalTaskCache

    from flyte_tasks import cached_sum
    _, runs = flyte_dirs
    # flytekit's local cache, in this test's folder rather than ~/.flyte
    cache = Cache(str(tmp_path / "flyte-cache"))
    monkeypatch.setattr(LocalTaskCache, "_cache", cache, raising=False)
    monkeypatch.setattr(LocalTaskCache, "_initialized", True)
    tag = str(tmp_path)

    assert cached_sum(n=5, tag=tag) == 30
    assert len(records(runs)) == 1
    assert cached_sum(n=5, tag=tag) == 30
    assert len(records(runs)) == 1  # served from flytekit's cache: no second cluster
    cache.close()


# ------------------------------------------------------------------ definition time
def test_serialized_template_holds_the_cluster_spec():
    from google.protobuf.json_format import MessageToJson

    from workflows.nightly_etl import etl

    @dask_task(cluster=ClusterSpec(n_workers=3, memory_per_worker="512MiB",
                                   secrets={"token": "s3cr3t-value"}),
               timeout="20m", flyte_timeout=dt.timedelta(hours=1),
               requests=__import__("flytekit").Resources(cpu="2", mem="4Gi"))
    def sized(n: int) -> int:
        return n

    settings = SerializationSettings(image_config=ImageConfig(
        default_image=Image(name="default", fqn="ghcr.io/example/daskjob", tag="1")))
    from collections import OrderedDict
    spec = get_serializable(OrderedDict(), settings, etl)
    template = spec.template
    assert template.type == "python-task"
    cluster = template.custom["daskjob"]["cluster"]
    assert cluster["memory_per_worker"] == "1GiB" and cluster["threads_per_worker"] == 1
    assert cluster["n_workers"] == dask.config.get("daskjob.cluster.n-workers")
    assert cluster["backend"] == "local"
    assert template.custom["daskjob"]["timeout"] == "30m"
    assert template.metadata.retries.retries == 2
    assert "workflows.nightly_etl" in " ".join(template.container.args)

    @dask_task
    def bare(n: int) -> int:
        return n

    bare_custom = get_serializable(OrderedDict(), settings, bare).template.custom["daskjob"]
    assert bare_custom["cluster"]["backend"] == "local"  # the daskjob defaults

    sized_spec = get_serializable(OrderedDict(), settings, sized)
    custom = sized_spec.template.custom["daskjob"]
    assert custom["cluster"]["n_workers"] == 3 and custom["timeout"] == "20m"
    assert sized_spec.template.container.resources.requests  # plain @task arguments
    assert sized_spec.template.metadata.timeout == dt.timedelta(hours=1)
    assert "s3cr3t-value" not in MessageToJson(sized_spec.template.to_flyte_idl())


def test_bad_settings_fail_when_the_task_is_defined():
    with pytest.raises(SpecError, match="n_workers"):
        @dask_task(cluster={"n_workers": 0})
        def nope(n: int) -> int:
            return n
    with pytest.raises(SpecError, match="timeout"):
        @dask_task(timeout="soon")
        def nope2(n: int) -> int:
            return n


def test_labels_in_a_task_pod():
    env = {"FLYTE_INTERNAL_EXECUTION_ID": "f3a9c1", "FLYTE_ATTEMPT_NUMBER": "2",
           "HOSTNAME": "f3a9c1-n1-2"}
    labels = execution_labels("wf.etl", env)
    assert labels["flyte/retry_attempt"] == "2" and labels["flyte/node_id"] == "n1"
    assert labels["flyte/task"] == "wf.etl"
    url = {**env, "FLYTE_EXECUTION_URL":
           "https://flyte.example/console/projects/p/domains/d/executions/f3a9c1/nodeId/n4-0-n2/nodes"}
    assert execution_labels("wf.etl", url)["flyte/node_id"] == "n4-0-n2"
    local = execution_labels("wf.etl", {})
    assert local["flyte/node_id"] == "local" and local["flyte/retry_attempt"] == "0"
