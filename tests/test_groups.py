"""Clusters that fit the work, on real LocalClusters: a default group that adapts to the
load, extra groups with Dask resources, and what the workers cost in resource time."""

from __future__ import annotations

import json
import psutil
import pytest

from daskjob import ClusterSpec, JobSpec, SpecError, run_job

from conftest import read_run

pytestmark = pytest.mark.usefixtures("no_leaks")


def job(records, payload, cluster, **kw):
    return JobSpec(name=kw.pop("name", "groups"), payload=payload, record_dir=str(records),
                   cluster=cluster, startup_timeout="90s", performance_report=False, **kw)


def lifecycle(events, what):
    return [e["data"] for e in events
            if e["topic"] == "daskjob.lifecycle" and e["data"]["event"] == what]


def integral(timeline, end_index=None):
    """Worker-seconds from a [[t, workers], ...] timeline."""
    return sum(n * (timeline[i + 1][0] - t) for i, (t, n) in enumerate(timeline[:-1]))


def test_adaptive_default_group_grows_under_load_and_shrinks_after(records):
    cluster = ClusterSpec(adapt={"minimum": 1, "maximum": 4, "interval": "500ms"},
                          threads_per_worker=1, memory_per_worker="1GiB")
    result = run_job(job(records, "group_jobs:queue_then_idle", cluster,
                         params={"n": 24, "seconds": 1.0, "idle": 6}))
    _, rec, events = read_run(records)
    default = rec["groups"]["default"]
    assert default["expected"] == 1
    assert default["peak"] >= 3, default
    assert len(result.value) >= 3  # the tasks really spread over the new workers
    # after the load, before teardown: back to at most 2
    assert default["timeline"][-1][1] <= 2, default["timeline"]
    ups, downs = lifecycle(events, "scaled up"), lifecycle(events, "scaled down")
    assert ups and downs, (ups, downs)
    assert all(e["group"] == "default" and e["to"] > e["from"] for e in ups)
    assert all(e["to"] < e["from"] for e in downs)
    assert max(e["to"] for e in ups) >= 3


def test_annotated_work_runs_only_on_the_group_with_the_resource(records):
    cluster = ClusterSpec(n_workers=1, threads_per_worker=1, memory_per_worker="1GiB",
                          worker_groups={"gpu": {"n_workers": 1, "resources": {"GPU": 1},
                                                 "env": {"CUDA_VISIBLE_DEVICES": "0"}}})
    result = run_job(job(records, "group_jobs:annotated_and_plain", cluster,
                         params={"n": 20, "seconds": 0.2}))
    gpu, plain = result.value["gpu"], result.value["plain"]
    assert len(gpu) == 20 and {d["name"] for d in gpu} == {"gpu-0"}
    assert all(d["gpu_env"] == "0" and d["resources"] == {"GPU": 1} for d in gpu)
    # work that asks for nothing may run anywhere: here on both groups' workers
    assert {d["name"] for d in plain} == {"0", "gpu-0"}, plain
    assert {d["gpu_env"] for d in plain if d["name"] == "0"} == {None}
    _, rec, _ = read_run(records)
    assert set(rec["groups"]) == {"default", "gpu"}
    assert rec["groups"]["gpu"]["started"] == 1 and rec["workers"]["expected"] == 2


def test_an_adaptive_group_scales_on_the_work_that_needs_its_resources(records):
    cluster = ClusterSpec(n_workers=1, threads_per_worker=1, memory_per_worker="1GiB",
                          worker_groups={"gpu": {"adapt": {"minimum": 0, "maximum": 2,
                                                           "interval": "500ms"},
                                                 "resources": {"GPU": 1}}})
    result = run_job(job(records, "group_jobs:gpu_burst", cluster,
                         params={"n": 8, "seconds": 1.0}))
    assert set(result.value) <= {"gpu-0", "gpu-1"} and result.value
    _, rec, events = read_run(records)
    gpu = rec["groups"]["gpu"]
    assert gpu["expected"] == 0 and gpu["peak"] >= 1
    assert any(e["group"] == "gpu" for e in lifecycle(events, "scaled up"))
    # the default group stayed as it was
    assert rec["groups"]["default"]["peak"] == 1
    assert not any(e["group"] == "default" for e in lifecycle(events, "scaled up"))


def test_resource_time_is_the_sum_over_the_worker_timeline(records):
    cluster = ClusterSpec(n_workers=1, threads_per_worker=2, memory_per_worker="1GiB",
                          worker_groups={"big": {"n_workers": 1, "threads_per_worker": 1,
                                                 "memory_per_worker": "2GiB"}})
    run_job(job(records, "jobs:add_up", cluster, params={"n": 3}))
    _, rec, _ = read_run(records)
    sizes = {"default": (2, 1.0), "big": (1, 2.0)}
    total = {"worker_seconds": 0.0, "core_seconds": 0.0, "gib_seconds": 0.0}
    for name, (threads, gib) in sizes.items():
        g = rec["groups"][name]
        ws = integral(g["timeline"])
        assert ws > 0
        assert g["worker_seconds"] == pytest.approx(ws, abs=0.01)
        assert g["core_seconds"] == pytest.approx(ws * threads, abs=0.02)
        assert g["gib_seconds"] == pytest.approx(ws * gib, abs=0.02)
        for k in total:
            total[k] += g[k]
    assert rec["resource_time"] == pytest.approx(total, abs=0.01)
    # no more than the run lasted, per worker
    assert rec["groups"]["default"]["worker_seconds"] <= rec["duration_s"]


BAD = [
    (dict(adapt={"minimum": 1, "maximum": 4}, n_workers=2), "not both"),
    (dict(adapt={"minimum": 5, "maximum": 4}), "minimum (5) is above maximum (4)"),
    (dict(adapt={"minimum": 0, "maximum": 0}), "maximum must be at least 1"),
    (dict(adapt={"minimum": -1, "maximum": 2}), "minimum must not be negative"),
    (dict(adapt={"minimum": 1}), "adapt.maximum"),
    (dict(adapt={"minimum": True, "maximum": 2}), "whole number"),
    (dict(adapt={"maximum": 2, "interval": "soon"}), "interval"),
    (dict(worker_groups={"GPU": {}}), "not a valid group name"),
    (dict(worker_groups={"default": {}}), "'default' is the cluster's own group"),
    (dict(worker_groups={"gpu": {"n_workers": 1, "adapt": {"maximum": 2}}}), "not both"),
    (dict(worker_groups={"gpu": {"resources": {"GPU": -1}}}), "must be above 0"),
    (dict(worker_groups={"gpu": {"resources": {"GPU": "one"}}}), "must be a number"),
    (dict(worker_groups={"gpu": {"resources": {"1GPU": 1}}}), "not a valid resource name"),
    (dict(worker_groups={"gpu": {"memory_per_worker": "lots"}}), "memory_per_worker"),
    (dict(worker_groups={"gpu": {"threads_per_worker": 0}}), "threads_per_worker"),
    (dict(worker_groups={"gpu": {"gpus": 1}}), "unknown key"),
    (dict(worker_groups={"gpu": {"options": {"nthreads": 2}}}), "nthreads not accepted"),
    (dict(worker_groups={"gpu": {"env": {"1X": "a"}}}), "not a valid environment variable"),
    (dict(backend="ssh", adapt={"maximum": 2}, options={"hosts": ["localhost"]}),
     "'ssh' backend cannot scale adaptively"),
    (dict(backend="jobqueue", worker_groups={"gpu": {"resources": {"GPU": 1}}}),
     "'jobqueue' backend has one group of workers only"),
    (dict(backend="jobqueue", resources={"GPU": 1}),
     "'jobqueue' backend does not give its workers Dask resources"),
    (dict(backend="gateway", options={"address": "http://127.0.0.1:1"},
          worker_groups={"gpu": {}}), "'gateway' backend has one group of workers only"),
    (dict(backend="kubernetes", options={"image": "i"},
          worker_groups={"gpu": {"adapt": {"maximum": 2}}}), "DaskAutoscaler sizes the default"),
    (dict(backend="address", address="tcp://127.0.0.1:8786", worker_groups={"gpu": {}}),
     "'address' backend has one group of workers only"),
    (dict(backend="address", address="tcp://127.0.0.1:8786", adapt={"maximum": 2}),
     "'address' backend cannot scale adaptively"),
]


@pytest.mark.parametrize("cluster,message", BAD, ids=[m for _, m in BAD])
def test_malformed_groups_and_adapt_are_refused_before_anything_starts(cluster, message):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(SpecError) as e:
        ClusterSpec(**cluster)
    assert message in str(e.value)
    with pytest.raises(SpecError):  # also as part of a job, from YAML-shaped data
        JobSpec.parse({"name": "bad", "payload": "jobs:add_up", "cluster": cluster})
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_cancel_while_a_scale_up_is_in_flight_leaves_nothing(records):
    """Workers that adapt asked for, some still starting, are torn down with the run."""
    import threading

    from daskjob import JobCancelled, JobRun

    scaled = threading.Event()

    def on_event(record):
        if record["topic"] == "daskjob.lifecycle" and record["data"].get("event") == "scaled up" \
                and record["data"]["to"] > 1:
            scaled.set()

    cluster = ClusterSpec(adapt={"minimum": 1, "maximum": 4, "interval": "200ms"},
                          threads_per_worker=1, memory_per_worker="1GiB")
    run = JobRun(job(records, "group_jobs:queue_then_idle", cluster,
                     params={"n": 60, "seconds": 2.0, "idle": 0}), on_event=on_event)
    threading.Thread(target=lambda: scaled.wait(90) and run.cancel("test: mid scale-up"),
                     daemon=True).start()
    with pytest.raises(JobCancelled):
        run.run()
    assert scaled.is_set()
    _, rec, events = read_run(records)
    assert rec["status"] == "cancelled" and rec["teardown"]["cluster"] == "closed"
    # the leak check (no_leaks) then finds no worker process, started or starting


def test_the_same_keys_from_an_airflow_connection_and_in_the_run_summaries(tmp_path):
    pytest.importorskip("airflow")
    from airflow_provider.hooks.dask import cluster_spec_from_connection

    from daskjob.frontend import group_summary, summary_line

    spec = cluster_spec_from_connection(None, None, '{"adapt": {"minimum": 1, "maximum": 8}, '
                                        '"worker_groups": {"gpu": {"n_workers": 1, '
                                        '"resources": {"GPU": 1}}}}', None, conn_id="dask_gpu")
    assert spec.adapt.maximum == 8 and spec.worker_groups["gpu"].resources == {"GPU": 1}
    with pytest.raises(SpecError, match=r"(?s)connection 'dask_gpu'.*minimum \(9\)"):
        cluster_spec_from_connection(None, None, '{"adapt": {"minimum": 9, "maximum": 8}}',
                                     None, conn_id="dask_gpu")
    record = {"run_id": "r", "status": "succeeded", "duration_s": 3.0,
              "groups": {"default": {"expected": 1, "started": 3, "peak": 3,
                                     "timeline": [[0.0, 1], [1.0, 3], [2.0, 3]],
                                     "worker_seconds": 7.0, "core_seconds": 7.0,
                                     "gib_seconds": 7.0}},
              "resource_time": {"worker_seconds": 7.0, "core_seconds": 7.0, "gib_seconds": 7.0}}
    line = summary_line(record)
    assert "7.0 worker-s, 7.0 core-s, 7.0 GiB-s" in line and "default: peak 3" in line
    assert "timeline" not in group_summary(record)["default"]
    assert "used: not recorded" in summary_line({"run_id": "old", "status": "succeeded"})
    # the run report (the Flyte Deck, `daskjob report`, the Airflow plugin's page)
    from daskjob.report import render_report
    (tmp_path / "record.json").write_text(json.dumps({**record, "record_path": str(tmp_path)}))
    page = render_report(str(tmp_path))
    assert "resources used" in page and "7.0 GiB-s" in page
