"""Spec validation: bad specs fail early with a message naming the problem, and start nothing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import dask.config
import psutil
import pydantic
import pytest

import daskjob
from daskjob import ClusterSpec, JobSpec, SpecError, run_job
from daskjob.record import REDACTED, redact
from daskjob.spec import format_validation_error

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = str(HERE / "specdata" / "hello_script.py")


def sample_payload(a, b=1):
    """A payload defined in this module: takes `a` (required) and `b`."""
    return a + b


SAMPLE_REF = f"{__name__}:sample_payload"


def _job(**overrides):
    """Keyword arguments of a valid JobSpec, with `overrides` applied."""
    base = {"name": "job", "payload": "json:dumps", "params": {"obj": 1}}
    base.update(overrides)
    return base


_BUILDERS = {
    "JobSpec": lambda data: JobSpec(**data),
    "JobSpec.parse": JobSpec.parse,
    "ClusterSpec": lambda data: ClusterSpec(**data),
    "ClusterSpec.parse": ClusterSpec.parse,
}


# (how, data, substrings that must all appear in the message), id=what is wrong
BAD_SPECS = [
    # -- ClusterSpec ----------------------------------------------------------------------
    pytest.param("ClusterSpec", {"backend": "nope"}, ("backend", "'nope'", "available", "local", "address"),
                 id="unknown-backend"),
    pytest.param("ClusterSpec", {"backend": ""}, ("backend", "available", "local"),
                 id="empty-backend"),
    pytest.param("ClusterSpec", {"n_workers": -1}, ("n_workers", "at least 1", "-1"),
                 id="n_workers-negative"),
    pytest.param("ClusterSpec", {"n_workers": 0}, ("n_workers", "at least 1", "got 0"),
                 id="n_workers-zero"),
    pytest.param("ClusterSpec", {"n_workers": "many"}, ("n_workers", "integer"),
                 id="n_workers-not-int"),
    pytest.param("ClusterSpec", {"threads_per_worker": 0}, ("threads_per_worker", "at least 1"),
                 id="threads_per_worker-zero"),
    pytest.param("ClusterSpec", {"memory_per_worker": "lots"},
                 ("memory_per_worker", "'lots'", "not a size"), id="memory-lots"),
    pytest.param("ClusterSpec", {"memory_per_worker": "-1GiB"},
                 ("memory_per_worker", "positive", "-1GiB"), id="memory-negative"),
    pytest.param("ClusterSpec", {"memory_per_worker": 0}, ("memory_per_worker", "positive"),
                 id="memory-zero"),
    pytest.param("ClusterSpec", {"worker_death_timeout": "soon"},
                 ("worker_death_timeout", "'soon'", "not a duration"), id="worker_death_timeout-soon"),
    pytest.param("ClusterSpec", {"env": {"1BAD": "x"}},
                 ("env", "'1BAD'", "environment variable name"), id="env-name-invalid"),
    pytest.param("ClusterSpec", {"env": {"GOOD": {"a": 1}}},
                 ("env", "GOOD", "string or number"), id="env-value-dict"),
    pytest.param("ClusterSpec", {"env": {"GOOD": None}}, ("env", "GOOD", "string or number"),
                 id="env-value-none"),
    pytest.param("ClusterSpec", {"env": ["A=1"]}, ("env", "mapping", "list"), id="env-not-mapping"),
    pytest.param("ClusterSpec", {"backend": "address"}, ("address", "needs the scheduler address"),
                 id="address-backend-without-address"),
    pytest.param("ClusterSpec", {"address": "tcp://scheduler:8786"},
                 ("address", "only the 'address' backend", "'local'"), id="address-with-local-backend"),
    pytest.param("ClusterSpec", {"backend": "address", "address": "tcp://h:8786", "tls": True},
                 ("tls", "own certificates", "distributed.comm.tls"), id="address-with-tls"),
    pytest.param("ClusterSpec", {"tls": "maybe"}, ("tls",), id="tls-not-a-bool"),
    pytest.param("ClusterSpec", {"options": {"security": True}}, ("options", "security"),
                 id="local-security-option-is-tls-field"),
    pytest.param("ClusterSpec", {"backend": "address", "address": "nonsense"},
                 ("address", "'nonsense'", "not a scheduler address"), id="address-nonsense"),
    pytest.param("ClusterSpec", {"backend": "address", "address": "tcp://h:8786", "options": {"x": 1}},
                 ("options", "x", "min_workers"), id="address-unknown-option"),
    pytest.param("ClusterSpec", {"options": {"no_such_option": 1}},
                 ("options", "no_such_option", "not accepted", "LocalCluster"),
                 id="local-option-not-accepted"),
    pytest.param("ClusterSpec", {"options": {"n_workers": 3}},
                 ("options", "n_workers", "use those instead"), id="local-option-reserved"),
    pytest.param("ClusterSpec.parse", {"n_worker": 2}, ("n_worker", "unknown key"),
                 id="clusterspec-unknown-key"),
    pytest.param("JobSpec.parse", _job(cluster={"n_worker": 2}), ("cluster.n_worker", "unknown key"),
                 id="nested-clusterspec-unknown-key"),
    pytest.param("JobSpec.parse", _job(cluster={"n_workers": 0}), ("cluster.n_workers", "at least 1"),
                 id="nested-clusterspec-bad-value"),
    # -- payload ----------------------------------------------------------------------------
    pytest.param("JobSpec", _job(payload="no_such_mod_xyz:fn", params={}),
                 ("no module named", "no_such_mod_xyz"), id="payload-module-missing"),
    pytest.param("JobSpec", _job(payload="json:no_such_fn", params={}),
                 ("'json'", "has no attribute", "no_such_fn"), id="payload-attribute-missing"),
    pytest.param("JobSpec", _job(payload="json:__doc__", params={}),
                 ("json:__doc__", "not a callable"), id="payload-not-callable-doc"),
    pytest.param("JobSpec", _job(payload="os:sep", params={}), ("os:sep", "not a callable"),
                 id="payload-not-callable-sep"),
    pytest.param("JobSpec", _job(payload=42, params={}), ("payload must be", "int 42"),
                 id="payload-int"),
    pytest.param("JobSpec", _job(payload="json", params={}), ("'json'", "package.module:function"),
                 id="payload-no-colon"),
    pytest.param("JobSpec", _job(payload=":fn", params={}), ("':fn'", "package.module:function"),
                 id="payload-empty-module"),
    pytest.param("JobSpec", _job(payload="1bad:fn", params={}), ("'1bad'", "not a module name"),
                 id="payload-bad-module-name"),
    pytest.param("JobSpec", _job(payload="does/not/exist.py", params={}),
                 ("does/not/exist.py", "does not exist"), id="payload-script-missing"),
    pytest.param("JobSpec.parse", {"name": "job"}, ("payload", "field required"),
                 id="payload-missing"),
    # -- params -----------------------------------------------------------------------------
    pytest.param("JobSpec", _job(payload=sample_payload, params={"a": 1, "zz": 2}),
                 ("sample_payload", "unexpected keyword", "zz"), id="params-unexpected-kw-callable"),
    pytest.param("JobSpec", _job(payload=SAMPLE_REF, params={"a": 1, "zz": 2}),
                 ("sample_payload", "unexpected keyword", "zz"), id="params-unexpected-kw-reference"),
    pytest.param("JobSpec", _job(payload=sample_payload, params={"b": 2}),
                 ("sample_payload", "missing a required argument", "'a'"), id="params-missing-required"),
    pytest.param("JobSpec", _job(payload=sample_payload, params=[1, 2]),
                 ("params", "mapping", "list"), id="params-not-mapping"),
    pytest.param("JobSpec", _job(payload=sample_payload, params={"1x": 1}),
                 ("params", "'1x'", "keyword argument name"), id="params-key-not-identifier"),
    pytest.param("JobSpec", _job(payload=SCRIPT, params={"cfg": {"a": 1}}),
                 ("params.cfg", "script payload", "scalar"), id="script-payload-dict-param"),
    # -- JobSpec fields ---------------------------------------------------------------------
    pytest.param("JobSpec", _job(timeout="banana"), ("timeout", "'banana'", "not a duration"),
                 id="timeout-banana"),
    pytest.param("JobSpec", _job(startup_timeout=-5), ("startup_timeout", "-5"),
                 id="startup_timeout-negative"),
    pytest.param("JobSpec", _job(timeout=0), ("timeout", "positive"), id="timeout-zero"),
    pytest.param("JobSpec.parse", _job(timout=5), ("timout", "unknown key"), id="jobspec-unknown-key"),
    pytest.param("JobSpec", _job(name="has space"), ("name", "'has space'", "not a valid job name"),
                 id="name-with-space"),
    pytest.param("JobSpec", _job(name=""), ("name", "''", "not a valid job name"), id="name-empty"),
    pytest.param("JobSpec", _job(name="a" * 65), ("name", "a" * 65, "1-63"), id="name-65-chars"),
    pytest.param("JobSpec", _job(name="-leading-dash"), ("name", "starting with a letter or digit"),
                 id="name-leading-dash"),
    pytest.param("JobSpec", _job(labels=["team"]), ("labels", "mapping", "list"),
                 id="labels-not-mapping"),
    pytest.param("JobSpec", _job(labels={"bad key!": "v"}), ("labels", "'bad key!'"),
                 id="label-key-invalid"),
    pytest.param("JobSpec", _job(version_check="maybe"),
                 ("version_check", "'error'", "'warn'", "'off'"), id="version_check-maybe"),
    pytest.param("JobSpec", _job(worker_log_level="LOUD"),
                 ("worker_log_level", "'DEBUG'", "'INFO'", "'WARNING'", "'ERROR'"),
                 id="worker_log_level-loud"),
    pytest.param("JobSpec", _job(record_dir=""), ("record_dir", "must not be empty"),
                 id="record_dir-empty"),
    pytest.param("JobSpec", _job(performance_report="sometimes"), ("performance_report", "'auto'"),
                 id="performance_report-sometimes"),
    pytest.param("JobSpec", _job(cluster=[1]), ("cluster", "ClusterSpec"), id="cluster-not-mapping"),
    # -- booleans, trailing newlines, negative numbers -------------------------------------------
    pytest.param("JobSpec", _job(startup_timeout=-5), ("startup_timeout", "positive"),
                 id="startup_timeout-negative-says-positive"),
    pytest.param("JobSpec", _job(timeout=True), ("timeout",), id="timeout-bool"),
    pytest.param("JobSpec", _job(startup_timeout=True), ("startup_timeout",), id="startup_timeout-bool"),
    pytest.param("ClusterSpec", {"memory_per_worker": True}, ("memory_per_worker",), id="memory-bool"),
    pytest.param("ClusterSpec", {"n_workers": True}, ("n_workers",), id="n_workers-bool"),
    pytest.param("JobSpec", _job(name="abc\n"), ("name",), id="name-trailing-newline"),
    pytest.param("ClusterSpec", {"env": {"A\n": "x"}}, ("env",), id="env-name-trailing-newline"),
    pytest.param("JobSpec", _job(labels={"k\n": "v"}), ("labels",), id="label-key-trailing-newline"),
]


def _message(error: BaseException) -> str:
    """The message a user reads, without pydantic's echo of the input value.

    Using daskjob's own formatter for pydantic errors (the text SpecError and the CLI show)
    means a substring can only match what daskjob or the field's location says, not
    pydantic's `input_value=...` repetition of the input.
    """
    if isinstance(error, pydantic.ValidationError):
        return format_validation_error(error.title, error)
    return str(error)


def _build(how, data):
    return _BUILDERS[how](data)


@pytest.mark.parametrize("how, data, expected", BAD_SPECS)
def test_bad_spec_is_rejected_with_a_clear_message(how, data, expected):
    with pytest.raises(ValueError) as info:
        _build(how, data)
    assert isinstance(info.value, (pydantic.ValidationError, SpecError))
    message = _message(info.value)
    missing = [s for s in expected if s.lower() not in message.lower()]
    assert not missing, f"message does not mention {missing}:\n{message}"


def test_parse_returns_one_spec_error_per_problem():
    with pytest.raises(SpecError) as info:
        JobSpec.parse(_job(timout=5, cluster={"n_workers": 0}))
    message = str(info.value)
    assert message.startswith("invalid JobSpec:")
    assert "timout: unknown key" in message
    assert "cluster.n_workers: must be at least 1" in message
    assert "input_value" not in message


def test_constructing_a_bad_spec_raises_spec_error():
    """As the README writes it: `JobSpec(...)` / `ClusterSpec(...)` inside `except SpecError`."""
    caught = []
    for build in (lambda: ClusterSpec(n_workers=-1),
                  lambda: ClusterSpec(n_workerz=2),
                  lambda: JobSpec(name="x", payload=print, cluster={"n_workers": 0}),
                  lambda: JobSpec(name="x", payload=print, cluster=ClusterSpec(backend="nope")),
                  lambda: JobSpec(name="x", payload="no_such_mod_xyz:fn")):
        try:
            build()
        except SpecError as e:
            caught.append(str(e))
    assert len(caught) == 5, caught
    assert "n_workers: must be at least 1" in caught[0]
    assert "n_workerz: unknown key" in caught[1]
    assert "cluster.n_workers: must be at least 1" in caught[2]  # the whole path
    assert "unknown backend 'nope'" in caught[3]
    assert "no_such_mod_xyz" in caught[4]
    assert JobSpec(name="ok", payload=print).cluster == ClusterSpec()


def test_clusterspec_parse_error_does_not_blame_payload():
    with pytest.raises(SpecError) as info:
        ClusterSpec.parse({"backend": "address"})
    message = str(info.value)
    assert "address" in message
    assert "payload" not in message


def _listening(proc: psutil.Process) -> int:
    return sum(1 for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)


def test_bad_specs_start_no_process_and_open_no_port():
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    listening_before = _listening(me)

    not_rejected = []
    for case in BAD_SPECS:
        how, data, _ = case.values
        try:
            _build(how, data)
        except ValueError:
            continue
        not_rejected.append(case.id)
    assert not_rejected == [], f"accepted bad input: {not_rejected}"

    new_children = [p for p in me.children(recursive=True) if p.pid not in children_before]
    assert new_children == [], [(p.pid, p.cmdline()) for p in new_children]
    assert _listening(me) == listening_before


# -- good specs: defaults from dask config ----------------------------------------------------

def test_defaults_come_from_dask_config():
    spec = ClusterSpec()
    assert spec.backend == "local" == dask.config.get("daskjob.cluster.backend")
    assert spec.n_workers == dask.config.get("daskjob.cluster.n-workers")
    assert spec.threads_per_worker == dask.config.get("daskjob.cluster.threads-per-worker")
    job = JobSpec(name="ok", payload="json:dumps", params={"obj": 1})
    assert job.version_check == dask.config.get("daskjob.version-check")
    assert job.startup_timeout == dask.config.get("daskjob.startup-timeout")
    assert job.cluster.backend == "local"


def test_dask_config_set_changes_default_n_workers():
    default = ClusterSpec().n_workers
    assert default != 3  # otherwise this test would prove nothing
    with dask.config.set({"daskjob.cluster.n-workers": 3}):
        assert ClusterSpec().n_workers == 3
        assert JobSpec(name="ok", payload="json:dumps", params={"obj": 1}).cluster.n_workers == 3
        # an explicit argument wins over config
        assert ClusterSpec(n_workers=4).n_workers == 4
        assert ClusterSpec(n_workers=default).n_workers == default
    assert ClusterSpec().n_workers == default


def test_dask_config_unknown_backend_default_is_rejected():
    with dask.config.set({"daskjob.cluster.backend": "nope"}):
        with pytest.raises(ValueError) as info:
            ClusterSpec()
    message = _message(info.value)
    assert "'nope'" in message and "available" in message and "local" in message


@pytest.mark.parametrize("key, value, field", [
    ("daskjob.cluster.n-workers", 0, "n_workers"),
    ("daskjob.cluster.memory-per-worker", "lots", "memory_per_worker"),
    ("daskjob.timeout", "banana", "timeout"),
    ("daskjob.version-check", "maybe", "version_check"),
    ("daskjob.worker-profile", "sometimes", "daskjob.worker-profile"),
    ("daskjob.worker-profile-interval", "soon", "daskjob.worker-profile-interval"),
])
def test_dask_config_bad_default_is_still_validated(key, value, field):
    with dask.config.set({key: value}):
        with pytest.raises(ValueError, match=field):
            JobSpec(name="ok", payload="json:dumps", params={"obj": 1})


def test_environment_variable_sets_default_n_workers():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASKJOB__", "DASK_DASKJOB__"))}
    env["DASKJOB__CLUSTER__N_WORKERS"] = "5"
    code = ("import daskjob; "
            "print(daskjob.ClusterSpec().n_workers, daskjob.ClusterSpec(n_workers=2).n_workers)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, cwd=str(HERE.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "2"]


# -- YAML job files -------------------------------------------------------------------------

def test_from_yaml(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: nightly\npayload: json:dumps\nparams:\n  obj: 1\n"
                    "cluster:\n  n_workers: 3\nlabels:\n  team: data\n")
    spec = JobSpec.from_yaml(path)
    assert spec.name == "nightly"
    assert spec.payload == "json:dumps"
    assert spec.params == {"obj": 1}
    assert spec.cluster.n_workers == 3
    assert spec.labels == {"team": "data"}


def test_from_yaml_params_override(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: nightly\npayload: json:dumps\nparams:\n  obj: 1\n")
    spec = JobSpec.from_yaml(path, params={"obj": 2, "indent": 4})
    assert spec.params == {"obj": 2, "indent": 4}


def test_from_yaml_resolves_relative_script_against_its_folder(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    (jobs / "scripts").mkdir(parents=True)
    script = jobs / "scripts" / "step.py"
    script.write_text("print('step')\n")
    path = jobs / "job.yaml"
    path.write_text("name: scripted\npayload: scripts/step.py\nparams:\n  n: 3\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the script is not reachable from the working directory
    spec = JobSpec.from_yaml(path)
    assert spec.payload == str(script.resolve())
    assert os.path.isabs(spec.payload)
    # the same relative path, given directly (not via the file), is taken from the cwd
    with pytest.raises(ValueError, match="does not exist"):
        JobSpec(name="scripted", payload="scripts/step.py")


def test_from_yaml_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\npayload: json:dumps\n")
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(path)
    assert str(path) in str(info.value)
    assert "not valid yaml" in str(info.value).lower()


def test_from_yaml_list_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: a\n- name: b\n")
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(path)
    assert str(path) in str(info.value)
    assert "mapping" in str(info.value)


def test_from_yaml_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_from_yaml_invalid_spec_is_a_spec_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: ok\npayload: json:dumps\nparams: {obj: 1}\ncluster:\n  n_workers: -2\n")
    with pytest.raises(SpecError, match=r"cluster\.n_workers: must be at least 1, got -2"):
        JobSpec.from_yaml(path)


# -- run_job with a bad spec ------------------------------------------------------------------

def test_run_job_bad_payload_writes_rejected_record(tmp_path):
    record_dir = tmp_path / "records"
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(ValueError) as info:
        run_job({"name": "bad-job", "payload": "no_such_mod_xyz:fn", "record_dir": str(record_dir)})
    assert isinstance(info.value, SpecError)
    assert "no_such_mod_xyz" in str(info.value)
    assert {p.pid for p in me.children(recursive=True)} <= children_before

    runs = [p for p in record_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, list(record_dir.iterdir())
    record = json.loads((runs[0] / "record.json").read_text())
    assert record["status"] == "startup_failed"
    assert record["name"] == "bad-job"
    assert record["error"]["type"] == "SpecError"
    assert "no_such_mod_xyz" in record["error"]["message"]
    assert "no module named" in record["error"]["message"].lower()
    assert record["spec"]["payload"] == "no_such_mod_xyz:fn"
    assert record["record_path"] == str(runs[0])

    lines = (runs[0] / "events.jsonl").read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["data"]["event"] == "spec rejected"
    assert "no_such_mod_xyz" in event["data"]["error"]


def test_run_job_bad_spec_without_record_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError):
        run_job({"name": "bad-job", "payload": "no_such_mod_xyz:fn"})
    assert list(tmp_path.iterdir()) == []


# -- redaction --------------------------------------------------------------------------------

def test_redact_nested_secrets():
    data = {
        "password": "hunter2",
        "normal": "visible",
        "cluster": {
            "api_key": "k-123",
            "options": {"token": "t-456", "threads": 2},
            "items": [{"secret": "s-789", "host": "h"}],
        },
        "empty_token": "",
    }
    original = json.loads(json.dumps(data))
    out = redact(data)
    assert out == {
        "password": REDACTED,
        "normal": "visible",
        "cluster": {
            "api_key": REDACTED,
            "options": {"token": REDACTED, "threads": 2},
            "items": [{"secret": REDACTED, "host": "h"}],
        },
        "empty_token": "",
    }
    assert "hunter2" not in json.dumps(out)
    assert data == original  # the input is not changed


def test_jobspec_redacted_is_json_and_describes_payload():
    spec = JobSpec(name="ok", payload=sample_payload, params={"a": 1},
                   labels={"team": "data"},
                   cluster=ClusterSpec(env={"API_TOKEN": "abc123", "MODE": "fast"}))
    data = spec.redacted()
    text = json.dumps(data)  # JSON-serialisable, with the callable turned into text
    assert json.loads(text) == data
    assert data["payload"] == SAMPLE_REF
    assert data["name"] == "ok"
    assert data["params"] == {"a": 1}
    assert data["labels"] == {"team": "data"}
    assert data["cluster"]["env"] == {"API_TOKEN": REDACTED, "MODE": "fast"}
    assert "abc123" not in text
    # the spec itself keeps the real values
    assert spec.cluster.env["API_TOKEN"] == "abc123"
    assert spec.payload is sample_payload


def test_jobspec_redacted_reference_payload():
    data = JobSpec(name="ok", payload="json:dumps", params={"obj": 1}).redacted()
    assert data["payload"] == "json:dumps"
    json.dumps(data)


def test_package_exports_spec_error():
    assert issubclass(daskjob.SpecError, ValueError)
    assert issubclass(pydantic.ValidationError, ValueError)
