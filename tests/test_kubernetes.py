"""The `kubernetes` backend, contract-tested.

No Kubernetes API server (let alone the Dask operator) runs on this machine, so these
tests check the contracts the backend has with what it talks to, with real parts:

- the DaskCluster it builds validates against the CRD schema that dask-kubernetes ships
  (the API server's own check), and a bad one fails with a message naming the field;
- against an in-process Kubernetes API emulator (kmock) that kr8s and KubeCluster reach
  over HTTP on 127.0.0.1: a run creates the DaskCluster with our labels, gives up at its
  startup deadline (no operator ever starts a scheduler) and DELETES the resource;
- the reaper finds the DaskCluster of a SIGKILLed driver by its labels and deletes it,
  and leaves a live driver's alone; pod logs of Running pods are snapshotted.

What is not tested here: pods actually running (that needs a cluster with the operator).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("dask_kubernetes")
pytest.importorskip("kmock")
pytest.importorskip("jsonschema")

from daskjob import (ClusterSpec, JobCancelled, JobFailed, JobRun, JobSpec,  # noqa: E402
                     StartupFailed, run_job)
from daskjob.backends import ClusterContext, get_backend  # noqa: E402
from daskjob.backends.kubernetes import (build_cluster_body, cluster_name,  # noqa: E402
                                         label_value, validate_cluster_body)
from daskjob.errors import SpecError  # noqa: E402
from daskjob.procs import DRIVER_LABEL, STARTED_LABEL, driver_labels  # noqa: E402

from conftest import REPO, only_run  # noqa: E402
from k8s_emulator import Emulator, PlayedOperator, kubeconfig_env  # noqa: E402

K8S = "kubernetes"
DASKCLUSTERS = "/apis/kubernetes.dask.org/v1/namespaces/default/daskclusters"


def kspec(**options) -> ClusterSpec:
    return ClusterSpec(backend=K8S, n_workers=1, options={"image": "ghcr.io/me/etl:1", **options})


def context(run_id: str, labels: dict | None = None, env: dict | None = None) -> ClusterContext:
    return ClusterContext(
        run_id=run_id,
        labels={"daskjob/run-id": run_id, "daskjob/name": run_id.split("-")[0],
                **(labels or {}), **driver_labels()},
        worker_env={"DASKJOB_RUN_ID": run_id, **(env or {})},
        worker_config={"distributed": {"worker": {"profile": {"interval": "100ms"}}}})


def container(body, part):
    return body["spec"][part]["spec"]["containers"][0]


def env_of(c) -> dict:
    return {e["name"]: e["value"] for e in c["env"]}


def test_daskcluster_bodies_match_the_crd_schema():
    """Contract with the API server: what the backend posts validates against the
    DaskCluster CRD schema of dask-kubernetes; bad bodies are refused naming the field."""
    run_id = "nightly.etl-20260101T000000Z-0a1b2c"
    cases = {
        "defaults": (kspec(), context(run_id)),
        "resources": (ClusterSpec(backend=K8S, n_workers=2, threads_per_worker=2,
                                  memory_per_worker="2GiB",
                                  options={"image": "img:1", "namespace": "etl",
                                           "resources": {"limits": {"nvidia.com/gpu": "1"},
                                                         "requests": {"cpu": "1500m"}},
                                           "image_pull_policy": "IfNotPresent",
                                           "idle_timeout": 0}),
                      context(run_id)),
        "env": (ClusterSpec(backend=K8S, env={"ETL_MODE": "full", "N": 3},
                            preload=["mymod.preload"], options={"image": "img:1"}),
                context(run_id, env={"ETL_MODE": "full", "N": "3"})),
        "labels": (kspec(), context("x" * 60 + "-20260101T000000Z-0a1b2c",
                                    labels={"team/owner": "data eng (nightly)",
                                            "dag.id": "y" * 80})),
    }
    bodies = {}
    for case, (spec, ctx) in cases.items():
        body = build_cluster_body(spec, ctx)
        validate_cluster_body(body)  # raises on any schema or label violation
        bodies[case] = body
        name = body["metadata"]["name"]
        assert name == cluster_name(ctx.run_id) and len(name) <= 53, (case, name)
        labels = body["metadata"]["labels"]
        assert labels["daskjob/run-id"] == label_value(ctx.run_id), case
        assert labels[DRIVER_LABEL] == ctx.labels[DRIVER_LABEL]
        assert body["metadata"]["annotations"]["daskjob/run-id"] == ctx.run_id
        sched, worker = container(body, "scheduler"), container(body, "worker")
        # current distributed has no dask-scheduler / dask-worker scripts
        assert sched["args"][:2] == ["dask", "scheduler"], case
        assert worker["args"][:2] == ["dask", "worker"], case
        wenv = env_of(worker)
        assert wenv["DASKJOB_RUN_ID"] == ctx.run_id
        assert "DASK_INTERNAL_INHERIT_CONFIG" in wenv
        assert body["spec"]["worker"]["replicas"] == 0  # workers come with scale()
        assert body["spec"]["scheduler"]["spec"]["containers"][0]["image"] == spec.options["image"]

    res = container(bodies["resources"], "worker")["resources"]
    assert res["limits"] == {"memory": "2Gi", "nvidia.com/gpu": "1"}
    assert res["requests"] == {"cpu": "1500m", "memory": "2Gi"}
    args = container(bodies["resources"], "worker")["args"]
    assert args[args.index("--nthreads") + 1] == "2"
    assert args[args.index("--memory-limit") + 1] == str(2 * 2**30)
    assert container(bodies["resources"], "worker")["imagePullPolicy"] == "IfNotPresent"
    assert bodies["resources"]["spec"]["idleTimeout"] == 0
    assert bodies["defaults"]["spec"]["idleTimeout"] == 3600
    assert env_of(container(bodies["env"], "worker"))["N"] == "3"
    assert "mymod.preload" in container(bodies["env"], "worker")["args"]
    long_labels = bodies["labels"]["metadata"]["labels"]
    assert all(len(v) <= 63 for v in long_labels.values())
    assert long_labels["team/owner"].startswith("data-eng-nightly")

    # bodies the API server would refuse: the message names the field
    good = bodies["defaults"]
    bad = copy.deepcopy(good)
    bad["spec"]["worker"]["replicas"] = "two"
    with pytest.raises(ValueError, match=r"spec\.worker\.replicas: 'two' is not of type 'integer'"):
        validate_cluster_body(bad)
    bad = copy.deepcopy(good)
    container(bad, "worker")["resources"] = {"limits": {"memory": 2 * 2**30}}
    with pytest.raises(ValueError, match=r"spec\.worker\.spec\.containers\.0\.resources\.limits\.memory"):
        validate_cluster_body(bad)
    bad = copy.deepcopy(good)
    bad["metadata"]["labels"]["daskjob/name"] = "has spaces and is fine otherwise"
    with pytest.raises(ValueError, match=r"metadata\.labels\.daskjob/name: .* not a valid label value"):
        validate_cluster_body(bad)
    bad = copy.deepcopy(good)
    del container(bad, "scheduler")["image"]
    with pytest.raises(ValueError, match=r"spec\.scheduler\.spec\.containers\.0\.image: missing"):
        validate_cluster_body(bad)

    # and the ClusterSpec is refused before anything is created
    for options, field in [({"image": ""}, "options.image: required"),
                           ({"image": "i", "resources": {"limits": {"memory": 2048}}},
                            "options.resources.limits.memory: 2048 is not a Kubernetes quantity"),
                           ({"image": "i", "replicas": 2}, "options: replicas not accepted"),
                           ({"image": "i", "n_workers": 2}, "options: n_workers set by ClusterSpec"),
                           ({"image": "i", "idle_timeout": "1h"}, "options.idle_timeout: expected")]:
        with pytest.raises(SpecError, match=field):
            ClusterSpec.parse({"backend": K8S, "options": options})
    with pytest.raises(SpecError, match="tls: the kubernetes backend does not set up Dask TLS"):
        ClusterSpec.parse({"backend": K8S, "tls": True, "options": {"image": "i"}})
    assert get_backend(K8S).uses_tls(kspec()) is False
    # no image: refused by create() before any request (a spec without options must
    # still validate: `daskjob reap --backend kubernetes` uses one to reach the API server)
    with pytest.raises(ValueError, match="options.image: required"):
        get_backend(K8S).create(ClusterSpec(backend=K8S), context(run_id))


def add(a, b):
    return a + b


def posted_clusters(emu) -> list[dict]:
    return [body for method, path, body in emu.requests()
            if method == "POST" and path == DASKCLUSTERS]


def deleted(emu) -> list[str]:
    return [path.rsplit("/", 1)[-1] for method, path, body in emu.requests()
            if method == "DELETE" and path.startswith(DASKCLUSTERS + "/")]


def wait_gone(emu, timeout=10.0) -> float:
    start = time.monotonic()
    while emu.objects("daskclusters") and time.monotonic() - start < timeout:
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.usefixtures("no_leaks")
def test_run_without_operator_deletes_its_daskcluster(tmp_path, records):
    """Contract with the API server through KubeCluster: the run creates a DaskCluster with
    its labels; no operator starts a scheduler, so the startup deadline fires and the
    backend DELETES the resource; the run record says why. Then the same when the
    operator is missing and KubeCluster's own resource_timeout is the shorter."""
    with Emulator(tmp_path) as emu, kubeconfig_env(emu.kubeconfig):
        job = {"name": "k8s-contract", "payload": add, "params": {"a": 1, "b": 2},
               "record_dir": str(records), "startup_timeout": "6s",
               "performance_report": False,
               "cluster": {"backend": K8S, "n_workers": 1,
                           "options": {"image": "img:1", "resource_timeout": 120}}}
        start = time.monotonic()
        with pytest.raises(StartupFailed, match="did not get a running scheduler"):
            run_job(job)
        elapsed = time.monotonic() - start
        gone_after = wait_gone(emu)
        print(f"startup timeout 6s: run ended after {elapsed:.1f}s, "
              f"DaskCluster gone {gone_after:.1f}s later")
        assert elapsed < 6 + 8, elapsed
        assert not emu.objects("daskclusters")

        posts = posted_clusters(emu)
        assert len(posts) == 1
        body = posts[0]
        validate_cluster_body(body)
        run_dir = only_run(records)
        with open(os.path.join(run_dir, "record.json")) as f:
            rec = json.load(f)
        labels = body["metadata"]["labels"]
        assert labels["daskjob/run-id"] == label_value(rec["run_id"])
        assert labels["daskjob/name"] == "k8s-contract"
        assert labels[DRIVER_LABEL] == driver_labels()[DRIVER_LABEL]
        assert abs(int(labels[STARTED_LABEL]) - time.time()) < 60
        assert env_of(container(body, "worker"))["DASKJOB_RUN_ID"] == rec["run_id"]
        assert deleted(emu) == [body["metadata"]["name"]]

        assert rec["status"] == "startup_failed"
        assert body["metadata"]["name"] in rec["error"]["message"]
        assert "deleted it" in rec["error"]["message"]
        assert "teardown" in rec
        assert os.path.isdir(os.path.join(run_dir, "logs"))
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            events = [json.loads(line)["data"].get("event") for line in f]
        assert "run started" in events and "teardown done" in events

        # no operator: KubeCluster gives up after resource_timeout and deletes, too
        job2 = {**job, "startup_timeout": "60s",
                "cluster": {**job["cluster"], "options": {"image": "img:1", "resource_timeout": 2}}}
        start = time.monotonic()
        with pytest.raises(JobFailed, match="is the Dask Operator running"):
            run_job(job2)
        elapsed2 = time.monotonic() - start
        print(f"resource_timeout 2s: run ended after {elapsed2:.1f}s")
        assert elapsed2 < 20, elapsed2
        assert wait_gone(emu) < 10
        assert len(posted_clusters(emu)) == 2
        assert posted_clusters(emu)[1]["metadata"]["name"] in deleted(emu)

        # cancelled (SIGTERM, Airflow's on_kill) while the scheduler is awaited: deleted too
        run = JobRun(JobSpec.parse({**job, "startup_timeout": "60s"}))
        threading.Timer(2.0, run.cancel, args=("test cancel",)).start()
        start = time.monotonic()
        with pytest.raises(JobCancelled):
            run.run()
        gone_after = wait_gone(emu)
        print(f"cancelled after 2s: run ended after {time.monotonic() - start:.1f}s, "
              f"DaskCluster gone {gone_after:.1f}s later")
        assert gone_after < 5 and not emu.objects("daskclusters")
        assert posted_clusters(emu)[2]["metadata"]["name"] in deleted(emu)


# The payload lives in a module of its own, as a user's would: daskjob ships its source to
# workers that do not share the driver's filesystem. Its tasks use library functions only:
# the scheduler unpickles task graphs and never gets the payload module.
PAYLOAD = textwrap.dedent("""
    import logging
    import os

    import dask.array as da


    def note():
        logging.getLogger("distributed.worker").warning(
            "etl step on a kubernetes worker (ETL_MODE=%s)", os.environ.get("ETL_MODE"))
        return os.environ.get("DASKJOB_RUN_ID")


    def etl_sum(n, client):
        run_ids = set(client.run(note).values())
        assert len(run_ids) == 1 and None not in run_ids, run_ids
        return int(da.arange(n, chunks=n // 4).sum().compute())
""")


def import_payload(folder, name):
    import importlib
    (folder / f"{name}.py").write_text(PAYLOAD)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


@pytest.mark.usefixtures("no_leaks")
def test_run_with_played_operator_succeeds_and_deletes(tmp_path, records):
    """The whole lifecycle through KubeCluster against the emulator, with the operator's
    part played by the test (PlayedOperator: the backend's scheduler and worker container
    args run as local processes, reachable through a LoadBalancer Service on 127.0.0.1):
    the run scales the worker group, runs its payload, keeps worker logs and events, and
    its teardown DELETES the DaskCluster (whose deletion stops the processes)."""
    with Emulator(tmp_path) as emu, kubeconfig_env(emu.kubeconfig), \
            PlayedOperator(emu, sys.executable) as op:
        payload = import_payload(tmp_path, f"k8s_payload_{os.getpid()}")
        job = {"name": "k8s-played", "payload": payload.etl_sum, "params": {"n": 4000},
               "record_dir": str(records), "startup_timeout": "60s",
               "performance_report": False,
               "cluster": {"backend": K8S, "n_workers": 1, "threads_per_worker": 1,
                           "memory_per_worker": "1GiB", "env": {"ETL_MODE": "contract"},
                           "options": {"image": "img:1", "scheduler_service_type": "LoadBalancer",
                                       "resource_timeout": 30}}}
        start = time.monotonic()
        result = run_job(job)
        elapsed = time.monotonic() - start
        gone_after = wait_gone(emu)
        print(f"played-operator run: {elapsed:.1f}s; phases: " + ", ".join(
            f"{k} {v['seconds']:.1f}s" for k, v in result.record["phases"].items()))
        assert result.value == sum(range(4000))
        rec = result.record
        assert rec["status"] == "succeeded"
        assert rec["workers"] == {"expected": 1, "started": 1}
        assert rec["teardown"]["cluster"] == "closed"
        body, = posted_clusters(emu)
        name = body["metadata"]["name"]
        assert deleted(emu) == [name] and gone_after < 10
        assert not op.procs  # the played cascade stopped scheduler and workers
        # worker-group scaling went through the API (KubeCluster.scale -> PATCH)
        assert any(method == "PATCH" and path.endswith(f"/daskworkergroups/{name}-default")
                   for method, path, _ in emu.requests())
        # logs forwarded by the worker plugins and events, kept after teardown
        run_dir = rec["record_path"]
        assert rec["logs"]["lines"] > 0
        logs = "".join(open(os.path.join(run_dir, "logs", f)).read()
                       for f in os.listdir(os.path.join(run_dir, "logs")))
        assert "on a kubernetes worker (ETL_MODE=contract)" in logs
        assert rec["events"]["count"] > 0
        assert rec["dashboard_link"] and "127.0.0.1" in rec["dashboard_link"]


DRIVER = textwrap.dedent("""
    import sys
    from daskjob import run_job
    def add(a, b):
        return a + b
    run_job({"name": "killed", "payload": add, "params": {"a": 1, "b": 2},
             "record_dir": sys.argv[1], "startup_timeout": "120s", "performance_report": False,
             "cluster": {"backend": "kubernetes", "n_workers": 1,
                         "options": {"image": "img:1", "resource_timeout": 300}}})
""")


@pytest.mark.usefixtures("no_leaks")
def test_reaper_deletes_the_daskcluster_of_a_killed_driver(tmp_path, records):
    """Contract with the API server for `daskjob reap --backend kubernetes`: the DaskCluster
    of a SIGKILLed driver is found by its labels and deleted; a live driver's is kept, one
    from another host only once it is older than `older_than` (backends/reap.py). Also: the logs of Running
    pods are fetched (a Pending pod has none to give)."""
    backend = get_backend(K8S)
    spec = kspec()
    with Emulator(tmp_path) as emu, kubeconfig_env(emu.kubeconfig):
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        proc = subprocess.Popen([sys.executable, str(script), str(records)], cwd=REPO,
                                env={**os.environ, "KUBECONFIG": emu.kubeconfig},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            start = time.monotonic()
            while not emu.objects("daskclusters") and time.monotonic() - start < 60:
                assert proc.poll() is None, "the driver exited before creating its DaskCluster"
                time.sleep(0.1)
            (ns, killed_name), = emu.objects("daskclusters")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        killed_at = time.monotonic()

        now = int(time.time())
        mine = driver_labels()
        emu.add_object("daskclusters", "default", "daskjob-live", {
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
            "metadata": {"name": "daskjob-live", "namespace": "default",
                         "labels": {"daskjob/run-id": "live-1", **mine}}})
        for name, age in (("daskjob-remote-old", 7200), ("daskjob-remote-new", 10)):
            emu.add_object("daskclusters", "default", name, {
                "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
                "metadata": {"name": name, "namespace": "default",
                             "labels": {"daskjob/run-id": name, STARTED_LABEL: str(now - age),
                                        DRIVER_LABEL: "otherhost_4242_1700000000"}}})
        emu.add_object("daskclusters", "default", "not-ours", {
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
            "metadata": {"name": "not-ours", "namespace": "default", "labels": {"app": "x"}}})
        assert socket.gethostname().split(".")[0] != "otherhost"

        # one reap rule for every backend: a dead driver's cluster at any age (an
        # --older-than spares clusters younger than it, whatever their driver), one from
        # another host only once it is older than --older-than
        found = backend.find_leftovers(spec, older_than=None)
        assert sorted(f.name for f in found) == [killed_name]
        found += backend.find_leftovers(spec, older_than=3600)
        assert sorted(f.name for f in found) == sorted([killed_name, "daskjob-remote-old"])
        killed = next(f for f in found if f.name == killed_name)
        assert killed.run_id.startswith("killed-") and "gone" in killed.detail
        for leftover in found:
            backend.stop_leftover(spec, leftover)
        cleaned_after = time.monotonic() - killed_at
        print(f"SIGKILLed driver's DaskCluster deleted by the reaper {cleaned_after:.1f}s "
              "after the kill")
        left = {name for _, name in emu.objects("daskclusters")}
        assert left == {"daskjob-live", "daskjob-remote-new", "not-ours"}
        assert sorted(deleted(emu)) == sorted([killed_name, "daskjob-remote-old"])

        # pod logs: only Running pods of this cluster have logs to snapshot
        for pod, phase, cluster in (("daskjob-live-scheduler-abc", "Running", "daskjob-live"),
                                    ("daskjob-live-default-worker-1", "Pending", "daskjob-live"),
                                    ("other-scheduler-x", "Running", "other")):
            emu.add_object("pods", "default", pod, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "default",
                             "labels": {"dask.org/cluster-name": cluster}},
                "status": {"phase": phase}}, group="")
        emu.on("get /api/v1/namespaces/default/pods/daskjob-live-scheduler-abc/log",
               b"distributed.scheduler - INFO - Scheduler at: tcp://10.0.0.1:8786\nline two\n")
        paths = backend.fetch_pod_logs({}, "default", "daskjob-live", str(tmp_path / "logs"))
        assert [os.path.basename(p) for p in paths] == ["pod-daskjob-live-scheduler-abc.log"]
        with open(paths[0]) as f:
            assert f.read().splitlines() == [
                "distributed.scheduler - INFO - Scheduler at: tcp://10.0.0.1:8786", "line two"]


GROUP_PAYLOAD = textwrap.dedent("""
    import os

    import dask
    from distributed import get_worker


    def where(i):
        w = get_worker()
        return str(w.name), os.environ.get("CUDA_VISIBLE_DEVICES"), dict(w.state.total_resources)


    def on_the_gpu(client):
        with dask.annotate(resources={"GPU": 1}):
            futures = client.map(where, range(6), pure=False)
        return client.gather(futures)


    def on_the_driver(a, b):
        return a + b
""")


def test_group_and_autoscaler_bodies_match_the_crds():
    from daskjob.backends.kubernetes_body import build_autoscaler_body, build_group_body
    from daskjob.backends.kubernetes_body import validate_cluster_body as check
    spec = ClusterSpec(backend=K8S, adapt={"minimum": 1, "maximum": 5},
                       threads_per_worker=2, memory_per_worker="2GiB",
                       options={"image": "img:1"},
                       worker_groups={"gpu": {"n_workers": 2, "threads_per_worker": 1,
                                              "memory_per_worker": "8GiB",
                                              "resources": {"GPU": 1},
                                              "env": {"CUDA_VISIBLE_DEVICES": "0"},
                                              "options": {"resources": {"limits": {
                                                  "nvidia.com/gpu": "1"}}}}})
    body = build_cluster_body(spec, context("groups-1", labels={"daskjob/run-id": "groups-1"}))
    default, gpu = spec.group_plans()
    wg, scaler = build_group_body(body, gpu), build_autoscaler_body(body, default.adapt)
    check(wg, kind="daskworkergroup")
    check(scaler, kind="daskautoscaler")
    name = body["metadata"]["name"]
    assert wg["metadata"]["name"] == f"{name}-gpu" and wg["spec"]["cluster"] == name
    assert wg["metadata"]["labels"]["daskjob/run-id"] == "groups-1"
    c = wg["spec"]["worker"]["spec"]["containers"][0]
    assert wg["spec"]["worker"]["replicas"] == 2
    assert c["args"][c["args"].index("--nthreads") + 1] == "1"
    assert c["args"][c["args"].index("--memory-limit") + 1] == str(8 * 2**30)
    assert c["args"][c["args"].index("--resources") + 1] == "GPU=1"
    assert c["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "1"}
    assert env_of(c)["CUDA_VISIBLE_DEVICES"] == "0"
    assert scaler["spec"] == {"cluster": name, "minimum": 1, "maximum": 5}
    # a body the CRD refuses is refused here, naming the field
    bad = copy.deepcopy(scaler)
    bad["spec"]["minimum"] = "one"
    with pytest.raises(ValueError, match="spec.minimum"):
        check(bad, kind="daskautoscaler")
    with pytest.raises(SpecError, match="sizes the default worker group only"):
        ClusterSpec(backend=K8S, options={"image": "i"},
                    worker_groups={"gpu": {"adapt": {"maximum": 2}}})
    with pytest.raises(SpecError, match="replicas not accepted"):
        ClusterSpec(backend=K8S, options={"image": "i"},
                    worker_groups={"gpu": {"options": {"replicas": 2}}})
    with pytest.raises(SpecError, match=r"gpu.options.resources.limits.nvidia.com/gpu: 1 is "
                                        "not a Kubernetes quantity"):
        ClusterSpec(backend=K8S, options={"image": "i"}, worker_groups={
            "gpu": {"options": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}})


@pytest.mark.usefixtures("no_leaks")
def test_worker_groups_and_autoscaler_come_and_go_with_the_cluster(tmp_path, records):
    """With the operator played by the test: an extra group's DaskWorkerGroup is created
    with the cluster, its workers take the work annotated with its resource, and it is
    deleted with the cluster; likewise a DaskAutoscaler for a default group that adapts."""
    with Emulator(tmp_path) as emu, kubeconfig_env(emu.kubeconfig), \
            PlayedOperator(emu, sys.executable) as op:
        (tmp_path / "k8s_groups.py").write_text(GROUP_PAYLOAD)
        sys.path.insert(0, str(tmp_path))
        try:
            import k8s_groups
        finally:
            sys.path.remove(str(tmp_path))
        options = {"image": "img:1", "scheduler_service_type": "LoadBalancer",
                   "resource_timeout": 30}
        gpu = {"n_workers": 1, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": "0"},
               "options": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
        result = run_job({"name": "k8s-groups", "payload": k8s_groups.on_the_gpu,
                          "record_dir": str(records), "startup_timeout": "60s",
                          "performance_report": False,
                          "cluster": {"backend": K8S, "n_workers": 1, "options": options,
                                      "worker_groups": {"gpu": gpu}}})
        wait_gone(emu)
        name = posted_clusters(emu)[0]["metadata"]["name"]
        assert {(w, env, res["GPU"]) for w, env, res in result.value} == \
            {(f"{name}-gpu-worker-0", "0", 1)}
        assert result.record["groups"]["gpu"]["started"] == 1
        wgs = "/apis/kubernetes.dask.org/v1/namespaces/default/daskworkergroups"
        calls = emu.requests()
        assert any(m == "POST" and p == wgs and b["metadata"]["name"] == f"{name}-gpu"
                   for m, p, b in calls)
        assert ("DELETE", f"{wgs}/{name}-gpu") in {(m, p) for m, p, _ in calls}
        assert not op.procs

    # a fresh API server: the emulator has no label selectors, and the first cluster's
    # scheduler pod would match the next cluster's lookup
    (tmp_path / "second").mkdir()
    with Emulator(tmp_path / "second") as emu, kubeconfig_env(emu.kubeconfig), \
            PlayedOperator(emu, sys.executable) as op:
        result = run_job({"name": "k8s-adapt", "payload": k8s_groups.on_the_driver,
                          "params": {"a": 1, "b": 2}, "record_dir": str(records),
                          "startup_timeout": "60s", "performance_report": False,
                          "cluster": {"backend": K8S, "adapt": {"minimum": 0, "maximum": 3},
                                      "options": options}})
        assert result.value == 3
        wait_gone(emu)
        name = posted_clusters(emu)[0]["metadata"]["name"]
        scalers = "/apis/kubernetes.dask.org/v1/namespaces/default/daskautoscalers"
        posted = [b for m, p, b in emu.requests() if m == "POST" and p == scalers]
        assert [b["spec"] for b in posted] == [{"cluster": name, "minimum": 0, "maximum": 3}]
        assert ("DELETE", f"{scalers}/{name}") in {(m, p) for m, p, _ in emu.requests()}
        assert not emu.objects("daskautoscalers")
