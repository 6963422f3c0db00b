"""The `ssh` backend for real: OpenSSH servers on loopback and in a network namespace
(scripts/services/sshd.sh), TLS, worker logs, cleanup after a failure and after a
SIGKILLed driver, and the reaper over ssh.

The payload helpers below run in the driver; the task functions they submit come from
the standard library or dask, because the remote scheduler must unpickle them too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import daskjob
from daskjob import ClusterSpec, JobSpec, SpecError, run_job

try:
    from conftest import REPO, read_run
    from services import service
except ImportError:  # this module recreated on a remote worker: only the helpers matter
    pass

pytestmark = pytest.mark.usefixtures("no_leaks")

CLEAN_WITHIN = 15.0


# ------------------------------------------------------------------ payload helpers
def _refused(address: str, timeout: float = 2.0) -> str | None:
    """None when a client without the run's credentials got in; else why it could not."""
    from distributed import Client
    try:
        c = Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - any refusal will do
        return f"{type(e).__name__}: {e}"[:300]
    c.close()
    return None


def inspect_cluster(rows: int = 20_000, fail: bool = False, client=None):
    import dask.array as da
    total = int(da.arange(rows, chunks=rows // 8).sum().compute())
    info = client.scheduler_info(n_workers=-1)
    address = client.scheduler.address
    out = {
        "total": total,
        "scheduler": address,
        "workers": sorted(info["workers"]),
        "worker_hosts": sorted(set(client.run(socket.gethostname).values())),
        "plain_tcp_refused": _refused(address.replace("tls://", "tcp://", 1)),
        "tls_without_certs_refused": _refused(address),
    }
    daskjob.event("test.ssh-inspected", **{k: v for k, v in out.items() if k != "total"})
    if fail:
        raise RuntimeError("planned failure after work on " + json.dumps(out["workers"]))
    return out


def sleep_on_cluster(seconds: float = 300, client=None):
    futures = client.map(time.sleep, [seconds] * 2, pure=False)
    daskjob.event("test.ssh-sleeping", n=len(futures))
    return client.gather(futures)


# ------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def sshd():
    return service("sshd")


def ssh_cluster(sshd, hosts, **options):
    return {
        "backend": "ssh", "n_workers": 2, "threads_per_worker": 1,
        "memory_per_worker": "1GiB", "worker_death_timeout": "20s",
        "options": {
            "hosts": hosts,
            "connect_options": {"port": int(sshd["SSH_PORT"]), "username": sshd["SSH_USER"],
                                "client_keys": [sshd["SSH_KEY"]],
                                "known_hosts": sshd["SSH_KNOWN_HOSTS"]},
            **options,
        },
    }


def netns_hosts(sshd):
    if "SSH_NETNS_HOST" not in sshd:
        from services import _unavailable
        _unavailable("sshd: no network namespace host here (ip netns not possible)")
    return sshd["SSH_NETNS_HOST"], sshd["SSH_NETNS_DRIVER_ADDRESS"]


def remote_commands(cluster: dict, run_id: str) -> dict[str, dict[int, str]]:
    """Pid -> command line of the processes carrying `run_id` on each host, as that host
    sees them (listed over ssh, the way the reaper lists them)."""
    from daskjob.spec import ClusterSpec
    spec = ClusterSpec.parse(cluster)
    listing = daskjob.backends.get_backend("ssh")._on_hosts(spec, "list")
    assert set(listing) == set(dict.fromkeys(spec.options["hosts"])), "a host was not reachable"
    return {h: {p["pid"]: p["cmd"] for p in ps if p["run_id"] == run_id}
            for h, ps in listing.items()}


def remote_processes(cluster: dict, run_id: str) -> dict[str, list[int]]:
    return {h: list(cmds) for h, cmds in remote_commands(cluster, run_id).items()}


def wait_remote_clean(cluster: dict, run_id: str, timeout: float = CLEAN_WITHIN) -> float:
    t = time.monotonic()
    while True:
        left = {h: p for h, p in remote_processes(cluster, run_id).items() if p}
        if not left:
            return time.monotonic() - t
        assert time.monotonic() - t < timeout, f"still running after {timeout}s: {left}"
        time.sleep(0.2)


def worker_log_text(run_dir) -> str:
    logs = os.path.join(run_dir, "logs")
    names = [n for n in os.listdir(logs) if n.startswith("worker")]
    assert names, f"no worker logs in {os.listdir(logs)}"
    return "".join(open(os.path.join(logs, n)).read() for n in names)


# --------------------------------------------------------------------------- tests
def test_options_are_checked_before_anything_starts():
    from daskjob import ClusterSpec
    from daskjob.errors import SpecError
    with pytest.raises(SpecError, match="options.hosts: required"):
        ClusterSpec.parse({"backend": "ssh"})
    with pytest.raises(SpecError, match="hots not accepted by the ssh backend"):
        ClusterSpec.parse({"backend": "ssh", "options": {"hosts": ["a"], "hots": ["b"]}})
    with pytest.raises(SpecError, match="password is a credential"):
        ClusterSpec.parse({"backend": "ssh", "options": {
            "hosts": ["a"], "connect_options": {"password": "x"}}})
    with pytest.raises(SpecError, match="no_such_option not accepted by asyncssh.connect"):
        ClusterSpec.parse({"backend": "ssh", "options": {
            "hosts": ["a"], "connect_options": {"no_such_option": 1}}})
    with pytest.raises(SpecError, match="n_workers set by ClusterSpec fields"):
        ClusterSpec.parse({"backend": "ssh", "options": {"hosts": ["a"], "n_workers": 3}})


def test_loopback_tls_run_logs_and_strangers_refused(sshd, records):
    cluster = ssh_cluster(sshd, [sshd["SSH_HOST"], sshd["SSH_HOST"]])
    t = time.monotonic()
    result = daskjob.run_job({
        "name": "ssh-loop", "payload": "test_ssh:inspect_cluster", "params": {"rows": 40_000},
        "record_dir": str(records), "startup_timeout": "90s", "performance_report": False,
        "cluster": cluster})
    elapsed = time.monotonic() - t
    out = result.value
    assert out["total"] == sum(range(40_000))
    assert out["scheduler"].startswith("tls://127.0.0.1:")
    assert len(out["workers"]) == 2 and all(w.startswith("tls://127.0.0.1:") for w in out["workers"])
    # a client without the run's key pair cannot talk to the scheduler
    assert out["plain_tcp_refused"], "a plain tcp:// client reached the TLS scheduler"
    assert out["tls_without_certs_refused"], "a tls:// client without certificates got in"

    run_dir, rec, events = read_run(records)
    assert rec["status"] == "succeeded"
    assert rec["scheduler_address"].startswith("tls://")
    assert rec["workers"] == {"expected": 2, "started": 2}
    assert rec["teardown"]["cluster"] == "closed"
    # the dashboard listens on the scheduler host's loopback only
    assert rec["dashboard_link"].startswith("http://127.0.0.1:"), rec["dashboard_link"]
    # the backend's own close stopped every remote process: nothing was left to kill
    assert rec["teardown"]["killed_processes"] == []
    steps = [e["data"]["event"] for e in events if e["topic"] == "daskjob.lifecycle"]
    assert steps.count("worker joined") == 2 and "teardown done" in steps
    assert any(e["topic"] == "test.ssh-inspected" for e in events)
    # worker logs were forwarded from the remote workers and kept after teardown
    text = worker_log_text(run_dir)
    assert "Registered to:" in text and out["scheduler"] in text
    # and each remote process's own terminal output, to its end
    with open(os.path.join(run_dir, "logs", f"ssh-scheduler-{sshd['SSH_HOST']}.log")) as f:
        own = f.read()
    assert "Scheduler at:" in own and "Scheduler closing all comms" in own
    assert remote_processes(cluster, rec["run_id"]) == {sshd["SSH_HOST"]: []}
    print(f"loopback ssh run: {elapsed:.1f}s, phases {rec['phases']}")


def test_netns_host_runs_workers_and_a_failed_run_leaves_nothing(sshd, records):
    host, driver_address = netns_hosts(sshd)
    cluster = ssh_cluster(sshd, [sshd["SSH_HOST"], host], scheduler_host=driver_address)
    t = time.monotonic()
    with pytest.raises(daskjob.JobFailed) as info:
        daskjob.run_job({
            "name": "ssh-netns", "payload": "test_ssh:inspect_cluster",
            "params": {"fail": True}, "record_dir": str(records), "startup_timeout": "90s",
            "performance_report": False, "cluster": cluster})
    failed_at = time.monotonic()
    assert "planned failure after work on" in str(info.value)
    run_dir, rec, events = read_run(records)
    assert rec["status"] == "failed"
    assert rec["scheduler_address"].startswith(f"tls://{driver_address}:")
    assert rec["dashboard_link"] is None  # on that host's loopback: no link that would work
    seen = next(e["data"] for e in events if e["topic"] == "test.ssh-inspected")
    # both workers listen in the namespace: they run on the second host
    assert len(seen["workers"]) == 2
    assert all(w.startswith(f"tls://{host}:") for w in seen["workers"]), seen["workers"]
    assert seen["plain_tcp_refused"] and seen["tls_without_certs_refused"]
    assert rec["teardown"]["killed_processes"] == []
    assert "Registered to:" in worker_log_text(run_dir)
    clean = wait_remote_clean(cluster, rec["run_id"])
    print(f"netns run failed after {failed_at - t:.1f}s; remote hosts clean "
          f"{clean:.2f}s after run_job returned")


def test_sigkilled_driver_leaves_nothing_and_reaper_works_over_ssh(sshd, records, tmp_path):
    host, driver_address = netns_hosts(sshd)
    cluster = ssh_cluster(sshd, [sshd["SSH_HOST"], host], scheduler_host=driver_address)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "name": "ssh-kill", "payload": "test_ssh:sleep_on_cluster", "record_dir": str(records),
        "startup_timeout": "90s", "performance_report": False, "cluster": cluster}))
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}
    cmd = [sys.executable, "-m", "daskjob"]
    proc = subprocess.Popen(cmd + ["run", str(job), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            runs = [r for r in os.listdir(records) if not r.startswith(".")]
            if runs:
                path = os.path.join(records, runs[0], "events.jsonl")
                if os.path.exists(path) and "test.ssh-sleeping" in open(path).read():
                    run_dir = os.path.join(records, runs[0])
                    break
            time.sleep(0.2)
        assert run_dir, f"the payload did not start (driver exit code {proc.poll()})"
        run_id = os.path.basename(run_dir)
        before = remote_commands(cluster, run_id)
        assert before[host] and before[sshd["SSH_HOST"]], before  # workers there, scheduler here
        # the worker processes themselves too: distributed retitles them "dask worker
        # [address]", which must not wipe the labels the reaper reads from /proc
        assert any(c.startswith("dask worker [") for c in before[host].values()), before
        proc.kill()
        proc.wait()
        gone = wait_remote_clean(cluster, run_id)
        # this machine shares its pid namespace with the netns host: a last look here
        from daskjob.procs import labelled_processes
        local = [(p.pid, p.cmdline()[:4]) for p, _ in labelled_processes(run_id)]
        assert not local, local
        print(f"remote processes gone {gone:.2f}s after the driver was SIGKILLed "
              f"(had {before})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reap = subprocess.run(cmd + ["reap", "--backend", "ssh", "--job", str(job), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert reap.returncode == 0, reap.stdout + reap.stderr
    # (other runs on this machine may have left something: only this run's matter)
    from daskjob.backends import get_backend
    from daskjob.spec import ClusterSpec
    spec = ClusterSpec.parse(cluster)
    backend = get_backend("ssh")
    assert not [lo for lo in backend.find_leftovers(spec, older_than=0) if lo.run_id == run_id]

    # A leftover that outlived its session (started without a terminal, driver gone):
    # the reaper lists it on the host it runs on and stops it there, over ssh.
    from daskjob.procs import driver_labels
    dead = subprocess.Popen(["true"])
    dead.wait()
    label = driver_labels()["daskjob/driver"].rsplit("_", 2)[0] + f"_{dead.pid}_{int(time.time())}"
    fake_run = f"fake-{os.getpid()}-{int(time.time())}"
    start = (f"setsid env DASKJOB_RUN_ID={fake_run} DASKJOB_DRIVER={label} "
             f"DASKJOB_STARTED={time.time() - 100} DASKJOB_DRIVER_PID={dead.pid} "
             f"sleep 120 </dev/null >/dev/null 2>&1 & echo $!")
    key, port = sshd["SSH_KEY"], sshd["SSH_PORT"]
    subprocess.run(["ssh", "-i", key, "-p", port, "-o", f"UserKnownHostsFile={sshd['SSH_KNOWN_HOSTS']}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                    f"{sshd['SSH_USER']}@{host}", start], check=True, capture_output=True,
                   timeout=30)
    try:
        found = [lo for lo in backend.find_leftovers(spec, older_than=60) if lo.run_id == fake_run]
        assert len(found) == 1 and found[0].handle["host"] == host, found
        assert found[0].age_s >= 100 and "sleep 120" in found[0].detail
        assert not [lo for lo in backend.find_leftovers(spec, older_than=3600)
                    if lo.run_id == fake_run]
        backend.stop_leftover(spec, found[0])
        assert remote_processes(cluster, fake_run) == {sshd["SSH_HOST"]: [], host: []}
    finally:
        for lo in backend.find_leftovers(spec, older_than=0):
            if lo.run_id == fake_run:
                backend.stop_leftover(spec, lo)


def test_a_run_driven_from_another_host_is_left_alone_until_it_expires(sshd):
    """The one reap rule across hosts: the processes of a run whose driver ran on another
    host cannot be judged by that driver from here. Left alone while the run's expiry
    (in its labels) is ahead; a leftover once it has passed, or when `--older-than`
    says runs that old are dead."""
    host, _ = netns_hosts(sshd)
    cluster = ssh_cluster(sshd, [host])
    spec = ClusterSpec.parse(cluster)
    backend = daskjob.backends.get_backend("ssh")
    now, tag = time.time(), f"{os.getpid()}-{int(time.time())}"
    runs = {"ahead": f"cross-ahead-{tag}", "passed": f"cross-passed-{tag}"}
    for which, run_id in runs.items():
        expires = now + 3600 if which == "ahead" else now - 10
        start = (f"setsid env DASKJOB_RUN_ID={run_id} DASKJOB_DRIVER=otherhost_4242_1700000000 "
                 f"DASKJOB_STARTED={now - 100} DASKJOB_EXPIRES={int(expires)} "
                 f"sleep 120 </dev/null >/dev/null 2>&1 & echo $!")
        subprocess.run(["ssh", "-i", sshd["SSH_KEY"], "-p", sshd["SSH_PORT"], "-o",
                        f"UserKnownHostsFile={sshd['SSH_KNOWN_HOSTS']}", "-o",
                        "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                        f"{sshd['SSH_USER']}@{host}", start], check=True, capture_output=True,
                       timeout=30)
    try:
        by_default = {lo.run_id for lo in backend.find_leftovers(spec, older_than=None)}
        assert runs["passed"] in by_default and runs["ahead"] not in by_default
        told = {lo.run_id for lo in backend.find_leftovers(spec, older_than=60)}
        assert set(runs.values()) <= told
    finally:
        for lo in backend.find_leftovers(spec, older_than=60):
            if lo.run_id in runs.values():
                backend.stop_leftover(spec, lo)
    assert not any(remote_processes(cluster, r)[host] for r in runs.values())


def test_scheduler_closes_itself_once_its_client_is_gone(sshd):
    """The safety net behind the hang-up: SSH sessions still up (a driver that froze, a
    partition between client and scheduler) but no client: the scheduler closes itself
    after `client_timeout` and its worker follows."""
    from distributed import Client

    from daskjob.backends import ClusterContext, get_backend
    from daskjob.procs import driver_labels, label_env
    from daskjob.spec import ClusterSpec

    cluster_dict = {**ssh_cluster(sshd, [sshd["SSH_HOST"]], client_timeout="3s"), "n_workers": 1}
    spec = ClusterSpec.parse(cluster_dict)
    backend = get_backend("ssh")
    run_id = f"ssh-client-timeout-{os.getpid()}"
    labels = {"daskjob/run-id": run_id}
    ctx = ClusterContext(run_id=run_id, labels={**labels, **driver_labels()},
                         worker_env=label_env(run_id, labels))
    handle = backend.create(spec, ctx)
    try:
        backend.scale(handle, 1)
        with Client(handle.cluster, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        left_at = time.monotonic()
        time.sleep(1.0)
        assert any(remote_processes(cluster_dict, run_id).values()), \
            "the cluster went away before client_timeout"
        gone = wait_remote_clean(cluster_dict, run_id, timeout=25)
        since = time.monotonic() - left_at
        print(f"\nno client for 3s: the run's remote processes gone {since:.1f}s after the "
              "client left")
        assert since >= 3.0, since
    finally:
        backend.close(handle, timeout=10)
    assert gone is not None


def test_a_group_runs_on_its_own_host_and_takes_the_annotated_work(sshd, records):
    """Fixed worker groups on ssh: the default worker on one host, a `gpu` group on the
    network-namespace host; work that needs the GPU resource runs there only."""
    host, driver_address = netns_hosts(sshd)
    cluster = {**ssh_cluster(sshd, [sshd["SSH_HOST"], sshd["SSH_HOST"], host],
                             scheduler_host=driver_address), "n_workers": 1,
               "worker_groups": {"gpu": {"n_workers": 1, "resources": {"GPU": 1},
                                         "env": {"CUDA_VISIBLE_DEVICES": "0"},
                                         "options": {"hosts": [host]}}}}
    result = run_job(JobSpec(name="ssh-groups", payload="group_jobs:annotated_and_plain",
                             params={"n": 8, "seconds": 0.1}, record_dir=str(records),
                             performance_report=False, startup_timeout="90s",
                             cluster=ClusterSpec(**cluster)))
    gpu = result.value["gpu"]
    assert {(d["name"], d["host"], d["gpu_env"]) for d in gpu} == {("gpu-0", host, "0")}
    assert all(d["host"] != host for d in result.value["plain"] if d["name"] != "gpu-0")
    assert set(result.record["groups"]) == {"default", "gpu"}
    assert not any(remote_processes(cluster, result.record["run_id"]).values())

    bad = {**cluster, "worker_groups": {"gpu": {"options": {"hosts": ["elsewhere"]}}}}
    with pytest.raises(SpecError, match="not in the cluster's options.hosts"):
        ClusterSpec(**bad)
