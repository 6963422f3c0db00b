"""The `kubernetes` backend against the REAL Dask operator controller.

No Kubernetes control plane can run here, so tests/kube emulates one on loopback: an
API server (aiohttp), the Deployment and Service controllers, and a "process kubelet"
whose pods' containers are local processes (the image is ignored: this venv's `dask`
runs). The controller is dask-kubernetes' own, unmodified, under kopf in a subprocess
(`kopf run --standalone -A -m dask_kubernetes.operator.controller`): it turns our
DaskCluster into the scheduler Deployment and Service, a DaskWorkerGroup and one worker
Deployment per worker, whose pods become real `dask scheduler` / `dask worker`
processes. See tests/kube/__init__.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
import urllib.request

import psutil
import pytest

pytest.importorskip("dask_kubernetes")
pytest.importorskip("kopf")
pytest.importorskip("jsonschema")
pytest.importorskip("jsonpatch")  # the emulator's JSON patches (kmock brings it today)

from kube.harness import CONTROLLER_USER, emulated_cluster

from daskjob import StartupFailed, run_job

pytestmark = pytest.mark.usefixtures("no_leaks")
K8S = "kubernetes"
# The operator's idle check (a kopf timer every 5 s) asks the scheduler; kopf releases
# a deleted DaskCluster only between two runs of it, else it looks again 60 s later
# (kopf's cancellation_polling), in a real cluster as here. With a scheduler that is
# not up, that check can take long: the failure tests turn it off (idleTimeout 0).
NO_IDLE_CHECK = {"idle_timeout": 0}


def job(records, kube, name: str, **cluster) -> dict:
    options = {"image": "ghcr.io/me/etl:1", "kubeconfig": kube.kubeconfig,
               # the direct route: KubeCluster connects to the LB ingress IP (the first
               # test takes the default, ClusterIP, through port-forwards)
               "scheduler_service_type": "LoadBalancer", "resource_timeout": 60,
               **cluster.pop("options", {})}
    return {"name": name, "payload": "jobs:add_up", "params": {"n": 3},
            "record_dir": str(records), "startup_timeout": cluster.pop("startup_timeout", "90s"),
            "performance_report": False,
            "cluster": {"backend": K8S, "n_workers": 2, "threads_per_worker": 1,
                        "options": options, **cluster}}


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what} (after {timeout}s)"
            return value
        time.sleep(0.2)


def created_by(kube, user: str) -> list[str]:
    """Kind/namespace/name of every object `user` created, from the audit log."""
    return [e["object"] for e in kube.audit()
            if e["verb"] == "POST" and e.get("code") == 201 and e["user"] == user]


def test_job_runs_on_the_real_operator(tmp_path, records):
    """A run through our backend, reaching its ClusterIP scheduler through port-forwards
    from outside the cluster: the real controller makes the scheduler Deployment
    and Service, the default DaskWorkerGroup and a Deployment per worker (the test
    creates only the DaskCluster); the pods run `dask scheduler` / `dask worker`
    processes; the job succeeds; the pod logs come through the API; teardown deletes the
    DaskCluster and, by garbage collection, everything under it, processes included."""
    # the scheduler Service's status once its pod is ready: with the status from its
    # creation, the installed operator can leave the DaskCluster "Pending" (see
    # kube/workloads.py Services); a LoadBalancer avoids that by itself
    with emulated_cluster(tmp_path / "kube", extra_args=["--status-on-endpoint"]) as kube:
        start = time.monotonic()
        # the backend's default Service type, from outside the cluster: a port-forward
        result = run_job(job(records, kube, "k8s-operator", options={
            "scheduler_service_type": "ClusterIP", "port_forward_cluster_ip": True}))
        elapsed = time.monotonic() - start
        rec = result.record
        print(f"run on the real operator: {elapsed:.1f}s; phases: " + ", ".join(
            f"{k} {v['seconds']:.1f}s" for k, v in rec["phases"].items()))
        assert result.value == 2 * (0 + 1 + 2)
        assert rec["status"] == "succeeded"
        assert rec["workers"] == {"expected": 2, "started": 2}
        assert rec["teardown"]["cluster"] == "closed"
        assert rec["scheduler_address"].startswith("tcp://localhost:"), rec["scheduler_address"]
        # the forwards closed with the run (no_leaks checks the listening ports)
        assert not [t.name for t in threading.enumerate() if "PortForward" in t.name]

        # who made what: the test (as user "tester") only the DaskCluster
        name = next(o for o in created_by(kube, "tester")
                    if o.startswith("DaskCluster/")).rsplit("/", 1)[1]
        assert created_by(kube, "tester") == [f"DaskCluster/default/{name}"]
        by_controller = created_by(kube, CONTROLLER_USER)
        for made in (f"Deployment/default/{name}-scheduler", f"Service/default/{name}-scheduler",
                     f"DaskWorkerGroup/default/{name}-default"):
            assert made in by_controller, (made, by_controller)
        workers = [o for o in by_controller
                   if o.startswith(f"Deployment/default/{name}-default-worker-")]
        assert len(workers) == 2, by_controller
        assert f"Scheduler deployment {name}-scheduler created" in _read(kube.controller_log)

        # pod logs, fetched through the API's pods/<name>/log
        logs_dir = os.path.join(rec["record_path"], "logs")
        pod_logs = {f: _read(os.path.join(logs_dir, f)) for f in os.listdir(logs_dir)
                    if f.startswith("pod-")}
        assert len([f for f in pod_logs if "-default-worker-" in f]) == 2, sorted(pod_logs)
        assert all(pod_logs.values()), {f: len(t) for f, t in pod_logs.items()}
        assert any("Scheduler at:" in t for f, t in pod_logs.items() if "-scheduler-" in f)
        # each worker listened on its pod's own IP (the kubelet's "CNI emulation")
        assert all(re.search(r"Start worker at: +tcp://127\.10\.", t)
                   for f, t in pod_logs.items() if "-worker-" in f), pod_logs

        # all gone: the DaskCluster, what the controller made, the pods and their processes
        kube.wait_all_gone()
        groups = {p.pid for p in psutil.process_iter() if _in_pod_folder(p, kube.dir)}
        assert not groups, groups


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _in_pod_folder(proc: psutil.Process, folder: str) -> bool:
    try:
        return proc.cwd().startswith(os.path.join(folder, "pods"))
    except psutil.Error:
        return False


@contextlib.contextmanager
def sampling(check, every: float = 0.5):
    """Run check() every `every` seconds in a thread for the block (what a pod looks
    like while the run is under way)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # the emulator may be going away
                check()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_scheduler_in_crash_loop_fails_the_start(tmp_path, records):
    """A scheduler that dies at start (here: a preload that does not exist) is restarted
    by the kubelet and waits in CrashLoopBackOff between restarts. Either KubeCluster
    sees that past its resource_timeout and fails with the scheduler's log, or (a
    startup_timeout shorter than that) the run gives up at its deadline and says why
    from the pod's status and its previous container's log. Both well within the
    startup_timeout, the DaskCluster deleted. (The LoadBalancer gets its IP 2 s after
    creation here, as a cloud's does whatever the pods: gated on a Ready scheduler, the
    DaskCluster would never be Running and KubeCluster never look at the pod.)"""
    # restarts back off as a kubelet's do (10 s, 20 s, ...): the container is mostly
    # waiting in CrashLoopBackOff, seldom caught running
    with emulated_cluster(tmp_path / "kube", lb_delay=2) as kube:
        crash = {"DASK_DISTRIBUTED__SCHEDULER__PRELOAD": "no_such_module_here"}
        states: list = []

        def scheduler_state() -> None:
            for pod in kube.objects("pods", selector="dask.org/component=scheduler"):
                for c in pod["status"].get("containerStatuses") or []:
                    states.append((pod["status"]["phase"], c["restartCount"],
                                   (c["state"].get("waiting") or {}).get("reason")))
        for startup, resource_timeout, says in [
                ("60s", 5, "Scheduler failed to start"),   # KubeCluster's verdict
                ("20s", 60, "container scheduler CrashLoopBackOff (restarted")]:  # daskjob's
            spec = job(records, kube, "k8s-crashloop", startup_timeout=startup, env=crash,
                       options={"resource_timeout": resource_timeout, **NO_IDLE_CHECK})
            start = time.monotonic()
            with sampling(scheduler_state), pytest.raises(StartupFailed) as failed:
                run_job(spec)
            elapsed = time.monotonic() - start
            print(f"crash loop: the run failed after {elapsed:.1f}s: {str(failed.value)[:600]}")
            assert elapsed < 40
            assert says in str(failed.value)
            assert "No module named" in str(failed.value)
            assert "no_such_module_here" in str(failed.value)
            wait_until(lambda: not kube.objects("daskclusters"), 15, "DaskCluster still there")
            wait_until(lambda: not kube.objects("pods"), 15, "pods still there")
        assert any(reason == "CrashLoopBackOff" and restarts >= 1 and phase == "Running"
                   for phase, restarts, reason in states), states


def test_unschedulable_workers_fail_the_start(tmp_path, records):
    """Workers that ask for a GPU the node does not have stay Pending, PodScheduled=False
    (Unschedulable, "Insufficient nvidia.com/gpu"); the run fails at its startup
    deadline with no worker, saying so, and the DaskCluster is deleted."""
    with emulated_cluster(tmp_path / "kube") as kube:
        spec = job(records, kube, "k8s-nogpu", startup_timeout="20s",
                   options={"resources": {"limits": {"nvidia.com/gpu": "1"}}, **NO_IDLE_CHECK})
        seen: dict = {}

        def pending_reason() -> None:
            for pod in kube.objects("pods", selector="dask.org/component=worker"):
                for cond in pod["status"].get("conditions") or []:
                    if cond["type"] == "PodScheduled" and cond["status"] == "False":
                        seen[pod["metadata"]["name"]] = (pod["status"]["phase"],
                                                         cond["reason"], cond["message"])
        start = time.monotonic()
        with sampling(pending_reason), pytest.raises(StartupFailed) as failed:
            run_job(spec)
        elapsed = time.monotonic() - start
        print(f"unschedulable: failed after {elapsed:.1f}s: {failed.value}; pods: {seen}")
        assert elapsed < 20 + 15
        assert "only 0 of 2 workers arrived" in str(failed.value)
        # the backend says why (from the pods' status)
        assert "is Pending: Unschedulable: 0/1 nodes are available: 1 Insufficient " \
            "nvidia.com/gpu" in str(failed.value)
        assert len(seen) == 2, seen
        for phase, reason, message in seen.values():
            assert (phase, reason) == ("Pending", "Unschedulable")
            assert "Insufficient nvidia.com/gpu" in message
        wait_until(lambda: not kube.objects("daskclusters"), 15, "DaskCluster still there")
        wait_until(lambda: not kube.objects("pods"), 15, "pods still there")


def test_worker_groups_and_autoscaler_on_the_real_operator(tmp_path, records):
    """An extra worker group whose pods need a GPU (the node has one): the backend makes
    its DaskWorkerGroup, the controller its worker Deployment, the kubelet schedules the
    pod on the GPU and the GPU-annotated tasks run there. Then a run that adapts: the
    backend makes a DaskAutoscaler, and the controller's autoscaler (a timer asking the
    scheduler for its adaptive target over RPC, through the DNS shim and kube-proxy)
    brings up the worker the queued tasks need."""
    with emulated_cluster(tmp_path / "kube", node_resources={"nvidia.com/gpu": "1"}) as kube:
        gpu = {"n_workers": 1, "resources": {"GPU": 1},
               "options": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
        spec = job(records, kube, "k8s-groups", n_workers=1, worker_groups={"gpu": gpu},
                   options=NO_IDLE_CHECK)
        spec.update(payload="group_jobs:annotated_and_plain", params={"n": 4, "seconds": 0.1})
        result = run_job(spec)
        name = next(o for o in created_by(kube, "tester")
                    if o.startswith("DaskCluster/")).rsplit("/", 1)[1]
        assert {d["name"].rsplit("-worker-", 1)[0] for d in result.value["gpu"]} == \
            {f"{name}-gpu"}, result.value["gpu"]
        assert all(d["resources"] == {"GPU": 1} for d in result.value["gpu"])
        assert f"DaskWorkerGroup/default/{name}-gpu" in created_by(kube, "tester")
        assert any(o.startswith(f"Deployment/default/{name}-gpu-worker-")
                   for o in created_by(kube, CONTROLLER_USER))
        wait_until(lambda: not kube.objects("pods"), 15, "pods still there")

        spec = job(records, kube, "k8s-adapt", n_workers=None,
                   adapt={"minimum": 0, "maximum": 2}, options=NO_IDLE_CHECK)
        del spec["cluster"]["n_workers"]
        start = time.monotonic()
        result = run_job(spec)
        print(f"adaptive run on the real operator's autoscaler: {time.monotonic() - start:.1f}s")
        assert result.value == 6 and result.record["status"] == "succeeded"
        name = [o for o in created_by(kube, "tester")
                if o.startswith("DaskCluster/")][-1].rsplit("/", 1)[1]
        assert f"DaskAutoscaler/default/{name}" in created_by(kube, "tester")
        scaled = [e for e in kube.audit() if e["user"] == CONTROLLER_USER
                  and e["verb"] == "PATCH" and e["path"].endswith(f"/daskworkergroups/{name}-default")]
        assert scaled, "the controller's autoscaler never scaled the worker group"
        wait_until(lambda: not kube.objects("pods"), 15, "pods still there")
        assert kube.objects("daskautoscalers") == [] and kube.objects("daskclusters") == []


WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
       "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                    "name": "http", "image": "python:3", "args": ["8080"],
                    "command": ["python", "-m", "http.server", "--bind", "$(MY_IP)"],
                    "env": [{"name": "MY_IP", "valueFrom": {"fieldRef": {
                        "fieldPath": "status.podIP"}}}],
                    "ports": [{"name": "web", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"port": "web", "path": "/"},
                                       "periodSeconds": 1}}]}}}}
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def test_emulator_speaks_kubernetes(tmp_path):
    """The emulator alone (no controller), on what kopf and kr8s rely on: CRD schema
    validation (422), Deployments making pods whose process serves through a Service's
    cluster IP and through kr8s' websocket port-forward, the status subresource rule,
    JSON-patch `test` (422), finalizers, garbage collection down to the processes, pod
    logs, and 410 for a watch that resumes from history the server no longer has."""
    with emulated_cluster(tmp_path / "kube", controller=False,
                          extra_args=["--history", "5"]) as kube:
        bad = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
               "metadata": {"name": "bad"},
               "spec": {"worker": {"replicas": "two", "spec": {"containers": []}},
                        "scheduler": {"spec": {"containers": []}, "service": {}}}}
        code, body = kube.request("POST", "/apis/kubernetes.dask.org/v1/namespaces/default/"
                                  "daskclusters", bad)
        assert code == 422 and "spec.worker.replicas: 'two' is not of type 'integer'" \
            in body["message"], body

        code, dep = kube.request("POST", DEPLOYMENTS, WEB)
        assert code == 201, dep
        code, svc = kube.request("POST", "/api/v1/namespaces/default/services", {
            "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                                                  "ports": [{"port": 80, "targetPort": "web"}]}})
        assert svc["status"] == {"loadBalancer": {}} and svc["spec"]["clusterIP"]
        wait_until(lambda: (kube.get(f"{DEPLOYMENTS}/web").get("status") or {})
                   .get("readyReplicas") == 1, 20, "web not ready")
        pod, = kube.objects("pods")
        assert pod["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
        with urllib.request.urlopen(f"http://{svc['spec']['clusterIP']}/", timeout=5) as r:
            assert r.status == 200   # kube-proxy to the pod's IP
        with open(kube.info["hosts_file"]) as f:
            assert json.load(f)["web.default.svc.cluster.local"] == svc["spec"]["clusterIP"]
        reply = asyncio.run(get_through_port_forward(kube, pod["metadata"]["name"], 8080))
        assert reply.startswith(b"HTTP/1.0 200")
        log = kube.get(f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}/log")
        assert '"GET / HTTP/1.1" 200' in log

        check_patch_rules(kube, f"{DEPLOYMENTS}/web")
        check_finalizer_and_gc(kube, f"{DEPLOYMENTS}/web")

        # a watch from a resourceVersion older than the kept history: 410 Expired
        req = urllib.request.Request(f"{kube.url}{DEPLOYMENTS}?watch=true&resourceVersion=1",
                                     headers={"Authorization": "Bearer tester-token"})
        with urllib.request.urlopen(req, timeout=10) as r:
            event = json.loads(r.readline())
        assert event["type"] == "ERROR" and event["object"]["code"] == 410, event


async def get_through_port_forward(kube, pod: str, port: int) -> bytes:
    """GET / from a pod's port through kr8s' port-forward (a websocket to the API)."""
    import kr8s.asyncio
    from kr8s.asyncio.objects import Pod
    api = await kr8s.asyncio.api(kubeconfig=kube.kubeconfig)
    p = await Pod.get(pod, namespace="default", api=api)
    async with p.portforward(port, local_port="auto") as local:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data


def check_patch_rules(kube, path: str) -> None:
    """Main resource: status untouched; a failed JSON-patch test: 422; a good one works."""
    code, after = kube.request("PATCH", path, {"status": {"replicas": 7}},
                               "application/merge-patch+json")
    assert code == 200 and after["status"]["replicas"] == 1
    hold = {"op": "add", "path": "/metadata/finalizers", "value": ["test/hold"]}
    code, body = kube.request("PATCH", path, [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"}, hold],
        "application/json-patch+json")
    assert code == 422, body
    rv = kube.get(path)["metadata"]["resourceVersion"]
    code, body = kube.request("PATCH", path, [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv}, hold],
        "application/json-patch+json")
    assert code == 200 and body["metadata"]["finalizers"] == ["test/hold"]


def check_finalizer_and_gc(kube, path: str) -> None:
    """A finalizer holds the deletion; once it goes, the garbage collector takes the
    pods and the kubelet their processes."""
    code, body = kube.request("DELETE", path)
    assert code == 200 and body["metadata"]["deletionTimestamp"]
    assert kube.objects("pods") and kube.pod_groups()
    kube.request("PATCH", path, {"metadata": {"finalizers": None}},
                 "application/merge-patch+json")
    assert kube.request("GET", path)[0] == 404
    wait_until(lambda: not kube.objects("pods"), 15, "pod not collected")
    assert kube.pod_groups() == {}


@pytest.mark.xdist_group("reaper")  # `daskjob reap` stops every orphan on the machine
def test_cancel_and_a_killed_driver_leave_nothing_on_the_operator(tmp_path, records):
    """A run cancelled mid-payload deletes its DaskCluster, and the controller's objects
    and the pods go with it. A driver SIGKILLed mid-payload cannot: `daskjob reap
    --backend kubernetes --job JOB.yaml` finds its DaskCluster by the run's labels and
    deletes it, as a user would after a killed Airflow worker."""
    import subprocess
    import sys

    from conftest import REPO, wait_for_event
    from daskjob import JobCancelled, JobRun, JobSpec

    with emulated_cluster(tmp_path / "kube") as kube:
        # cancelled mid-run, from another thread (what on_kill and SIGTERM do)
        (records / "cancel").mkdir()
        spec = job(records / "cancel", kube, "k8s-cancel", options=NO_IDLE_CHECK)
        spec.update(payload="jobs:sleeps", params={"seconds": 300})
        run = JobRun(JobSpec.parse(spec))
        outcome: list = []
        thread = threading.Thread(target=lambda: _run_into(run, outcome), daemon=True)
        thread.start()
        wait_for_event(records / "cancel", "payload started", timeout=120)
        assert len(kube.objects("pods")) == 3  # the scheduler and two workers
        run.cancel("the test cancels it")
        thread.join(60)
        assert outcome and isinstance(outcome[0], JobCancelled), outcome
        assert outcome[0].record["status"] == "cancelled"
        kube.wait_all_gone()

        # the driver SIGKILLed: only the reaper can clean up
        spec["record_dir"] = str(records / "killed")
        (records / "killed").mkdir()
        job_file = tmp_path / "killed.yaml"
        job_file.write_text(json.dumps({**spec, "name": "k8s-killed"}))
        env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests")}
        driver = subprocess.Popen([sys.executable, "-m", "daskjob", "run", str(job_file), "-q"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_event(records / "killed", "payload started", timeout=120, proc=driver)
        driver.kill()
        driver.wait(30)
        assert len(kube.objects("daskclusters")) == 1
        reap = subprocess.run([sys.executable, "-m", "daskjob", "reap", "--backend", K8S,
                               "--job", str(job_file)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert reap.returncode == 0, reap.stdout + reap.stderr
        assert "DaskCluster default/" in reap.stdout + reap.stderr, reap.stdout + reap.stderr
        kube.wait_all_gone()


def _run_into(run, outcome: list) -> None:
    try:
        outcome.append(run.run())
    except BaseException as e:  # noqa: BLE001 - the test looks at it
        outcome.append(e)

