"""DaskHook: an Airflow Connection of type `dask` -> a daskjob ClusterSpec.

    host/port   a borrowed, running scheduler (`address` backend): tcp://HOST:PORT
    extra       JSON with any ClusterSpec field: {"backend": "local", "n_workers": 4,
                "memory_per_worker": "2GiB", "options": {...}}; `scheduler_protocol`
                (default tcp) is used with host/port
    password    a secret for the backend (gateway password, TLS key): goes into
                ClusterSpec.secrets["password"], never into logs, XCom or the run record

A connection that Airflow cannot read (in AIRFLOW_CONN_<ID>, JSON with a key a
connection does not have, such as "extras") is an error naming the connection and the
key, not a silent fall back to the defaults.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from daskjob import ClusterSpec, SpecError


class DaskHook(BaseHook):
    conn_name_attr = "dask_conn_id"
    default_conn_name = "dask_default"
    conn_type = "dask"
    hook_name = "Dask"

    def __init__(self, dask_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dask_conn_id = dask_conn_id

    def get_cluster_spec(self) -> ClusterSpec:
        """The connection as a ClusterSpec. Raises AirflowNotFoundException when it is not
        defined, SpecError when it is defined but wrong."""
        try:
            conn = self.get_connection(self.dask_conn_id)
        except AirflowNotFoundException:
            check_environment_connection(self.dask_conn_id)
            raise
        if conn.conn_type and conn.conn_type != self.conn_type:
            raise SpecError(f"connection {self.dask_conn_id!r} is of type {conn.conn_type!r}, "
                            f"not {self.conn_type!r}")
        return cluster_spec_from_connection(conn.host, conn.port, conn.extra, conn.password,
                                            conn_id=self.dask_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        try:
            spec = self.get_cluster_spec()
        except Exception as e:
            return False, str(e)
        return True, f"valid: backend {spec.backend}"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"host": "Scheduler host (empty: an ephemeral cluster per task)",
                           "port": "Scheduler port",
                           "password": "Secret (gateway password or TLS key)"},
            "placeholders": {
                "host": "leave empty for an ephemeral cluster",
                "port": "8786",
                "extra": json.dumps({"backend": "local", "n_workers": 2,
                                     "threads_per_worker": 1, "memory_per_worker": "2GiB"}),
            },
        }


def check_environment_connection(conn_id: str) -> None:
    """Airflow skips a connection in AIRFLOW_CONN_<ID> that it cannot parse, as if it were
    not defined; say what is wrong with it instead."""
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(var)
    if raw is None:
        return
    where = f"connection {conn_id!r} ({var})"
    if not raw.lstrip().startswith("{"):
        raise SpecError(f"{where}: Airflow could not read this connection URI")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SpecError(f"{where}: not valid JSON: {e}") from None
    import attrs
    from airflow.sdk.definitions.connection import Connection
    known = set(attrs.fields_dict(Connection)) - {"conn_id"}
    unknown = sorted(set(data) - known) if isinstance(data, dict) else []
    if unknown:
        raise SpecError(f"{where}: unknown key {', '.join(map(repr, unknown))}; a connection "
                        f"has {', '.join(sorted(known))} (ClusterSpec fields go in 'extra')")
    raise SpecError(f"{where}: Airflow could not read this connection")


def cluster_spec_from_connection(host: str | None, port: int | None, extra: str | dict | None,
                                 password: str | None, *, conn_id: str = "?") -> ClusterSpec:
    if isinstance(extra, str) and extra.strip():
        try:
            fields = json.loads(extra)
        except json.JSONDecodeError as e:
            raise SpecError(f"connection {conn_id!r}: extra is not valid JSON: {e}") from None
    else:
        fields = dict(extra or {})
    if not isinstance(fields, dict):
        raise SpecError(f"connection {conn_id!r}: extra must be a JSON object")
    protocol = fields.pop("scheduler_protocol", "tcp")
    if host:
        fields.setdefault("backend", "address")
        fields["address"] = f"{protocol}://{host}:{port or 8786}"
    if password:
        fields["secrets"] = {**fields.get("secrets", {}), "password": password}
    try:
        return ClusterSpec.parse(fields)
    except SpecError as e:
        raise SpecError(f"connection {conn_id!r}: {e}") from None
