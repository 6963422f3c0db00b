"""DaskHook: an Airflow Connection of type `dask` -> a daskjob ClusterSpec.

    host/port   a borrowed, running scheduler (`address` backend): tcp://HOST:PORT
    extra       JSON with any ClusterSpec field: {"backend": "local", "n_workers": 4,
                "memory_per_worker": "2GiB", "options": {...}}; `scheduler_protocol`
                (default tcp) is used with host/port
    password    a secret for the backend (gateway password, TLS key): goes into
                ClusterSpec.secrets["password"], never into logs, XCom or the run record
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook

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
        conn = self.get_connection(self.dask_conn_id)
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
