"""Shared fixtures. Every test that starts processes is followed by a leak check, in the
spirit of distributed's `cleanup` fixture: no child process, no process labelled by a
daskjob run, no listening port of ours left behind."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import sys
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from daskjob.procs import DRIVER_PID_VAR, driver_alive, labelled_processes  # noqa: E402

LEAK_WAIT = 10.0  # seconds a test's processes get to disappear
RUN_SLOW = os.environ.get("DASKJOB_SLOW_TESTS") == "1"

# Every process this pytest process starts (drivers, workers, their children) inherits
# this, so that with pytest-xdist one worker's leak check leaves the other's runs alone.
SESSION_VAR = "DASKJOB_TEST_SESSION"
os.environ[SESSION_VAR] = str(os.getpid())
IN_XDIST = "PYTEST_XDIST_WORKER" in os.environ


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    """A few seconds before a test's time limit ends its process (pytest-timeout's thread
    method), print where every thread is: a hang in CI then says where it hung. Written
    to the stderr pytest kept aside for faulthandler, which reaches the terminal also from
    an xdist worker."""
    from _pytest.faulthandler import fault_handler_stderr_fd_key

    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 0)
    fd = item.config.stash.get(fault_handler_stderr_fd_key, None)
    if fd is not None and limit > 10:
        faulthandler.dump_traceback_later(limit - 5, file=fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config, items):
    # minutes-long tests (input several times the cluster's memory) run on demand:
    # DASKJOB_SLOW_TESTS=1, or `make test-slow`
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set DASKJOB_SLOW_TESTS=1 or run `make test-slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _is_helper(proc: psutil.Process) -> bool:
    # multiprocessing's resource tracker lives as long as the test process does;
    # a zombie has exited already (its parent object has not collected it yet)
    try:
        return (proc.status() == psutil.STATUS_ZOMBIE
                or "resource_tracker" in " ".join(proc.cmdline()))
    except psutil.Error:
        return True


def _ours(env: dict[str, str], ours: set[int]) -> bool:
    """A labelled process is this test's business if its run's driver is gone (an
    orphan) or is this process or one of its children."""
    session = env.get(SESSION_VAR)
    if session is not None and session != os.environ[SESSION_VAR]:
        return False  # started by another pytest process
    if not driver_alive(env):
        # an orphan; one started over ssh or by a gateway does not carry SESSION_VAR, so
        # beside another xdist worker it could be theirs (those tests check their own)
        return session is not None or not IN_XDIST
    return int(env.get(DRIVER_PID_VAR, "0")) in ours


def leftovers(baseline_children: set[int], baseline_ports: set) -> dict[str, list]:
    me = psutil.Process()
    children = [p for p in me.children(recursive=True)
                if p.pid not in baseline_children and not _is_helper(p)]
    # processes of runs whose driver is gone (orphans), or is this process or one of its
    # children; a live run of some other process on the machine is not this test's leak
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    labelled = [p for p, env in labelled_processes() if _ours(env, ours)]
    ports = {c.laddr for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return {"children": children, "labelled": labelled, "ports": sorted(ports - baseline_ports)}


def wait_until_clean(baseline_children: set[int], baseline_ports: set,
                     timeout: float = LEAK_WAIT) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while True:
        found = leftovers(baseline_children, baseline_ports)
        if not any(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves processes or listening ports behind."""
    me = psutil.Process()
    base_children = {p.pid for p in me.children(recursive=True)}
    base_ports = {c.laddr for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    yield
    found = wait_until_clean(base_children, base_ports)
    for proc in found["children"] + found["labelled"]:
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert not any(found.values()), f"leaked after the test: {found}"


@pytest.fixture
def records(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


def only_run(records_dir) -> str:
    runs = [p for p in os.listdir(records_dir) if not p.startswith(".")]
    assert len(runs) == 1, runs
    return os.path.join(records_dir, runs[0])


class LogLines(logging.Handler):
    """Keeps the messages of the records it handles (add it to a logger under test)."""

    def __init__(self, level: int = logging.DEBUG):
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def read_run(records) -> tuple[str, dict, list[dict]]:
    """The only run under `records`: its folder, record.json and events.jsonl."""
    run_dir = only_run(records)
    with open(os.path.join(run_dir, "record.json")) as f:
        rec = json.load(f)
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return run_dir, rec, events


def wait_for_event(records, what: str, timeout: float = 90, proc=None) -> str:
    """The run folder under `records` whose events mention `what`, once they do. With
    `proc` (a driver subprocess), fail at once if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            assert proc.poll() is None, f"driver ended early: {proc.communicate()}"
        for run in os.listdir(records):
            path = os.path.join(records, run, "events.jsonl")
            if os.path.exists(path) and what in open(path).read():
                return os.path.join(records, run)
        time.sleep(0.2)
    raise AssertionError(f"no {what!r} event within {timeout}s")


@contextlib.contextmanager
def airflow_api_server(command: list[str], env: dict[str, str], health_url: str, *,
                       cwd: str | None = None, timeout: float = 180.0):
    """A real Airflow api-server on loopback for the block (its process group is stopped
    after). Fails with the server's own output when it does not come up."""
    import signal
    import subprocess
    import tempfile
    import urllib.request
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=log,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(health_url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"the api-server did not come up:\n{log.read()[-3000:]}")
                time.sleep(1)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
