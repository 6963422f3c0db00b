# dask-gateway-server configuration for the gateway backend's tests: everything on
# loopback, clusters as local processes of the server (no user switching), one password.
# scripts/services/gateway.sh passes the settings below through the environment.
import os

from dask_gateway_server.backends.local import UnsafeLocalBackend
from dask_gateway_server.options import Float, Integer, Mapping, Options

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

STATE = os.environ["DASKJOB_GATEWAY_STATE"]
BIN = os.environ["DASKJOB_GATEWAY_BIN"]            # folder with the `dask` command
PORT = os.environ.get("DASKJOB_GATEWAY_PORT", "18000")
PROXY_PORT = os.environ.get("DASKJOB_GATEWAY_PROXY_PORT", "18786")
IDLE_TIMEOUT = float(os.environ.get("DASKJOB_GATEWAY_IDLE_TIMEOUT", "10"))


class LoopbackBackend(UnsafeLocalBackend):
    # schedulers, workers, their dashboards and the scheduler's gateway api on
    # 127.0.0.1 only (the database backend's default is 0.0.0.0)
    default_host = "127.0.0.1"


c.DaskGateway.backend_class = LoopbackBackend
c.DaskGateway.address = "127.0.0.1:0"               # private api, reached through the proxy
c.Proxy.address = f"127.0.0.1:{PORT}"              # http: api and dashboards
c.Proxy.tcp_address = f"127.0.0.1:{PROXY_PORT}"    # tls: clients to schedulers (SNI routing)

c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = os.environ["DASKJOB_GATEWAY_PASSWORD"]

# what cluster processes take from the server's own environment (the default list adds
# PYTHONPATH, VIRTUAL_ENV, CONDA_*: whatever the starting shell had); the rest comes from
# each cluster's `environment` option
c.LocalBackend.inherited_environment = ["PATH", "LANG", "LC_ALL"]
c.LocalBackend.clusters_directory = os.path.join(STATE, "clusters")
c.LocalBackend.sigint_timeout = 3
c.LocalBackend.sigterm_timeout = 3
c.LocalBackend.check_timeouts_period = 1.0
c.LocalBackend.cluster_status_period = 2.0
c.LocalBackend.worker_status_period = 2.0
# a scheduler whose event loop is busy (importing a payload's modules on a loaded
# 2-core machine) misses heartbeats: 2 x 2 s was measured to stop healthy clusters
c.LocalBackend.cluster_heartbeat_period = 5
c.LocalBackend.cluster_heartbeat_timeout = 30
c.LocalBackend.cluster_start_timeout = 60
c.LocalBackend.worker_start_timeout = 60

# distributed 2026.x has no dask-scheduler / dask-worker scripts
c.ClusterConfig.scheduler_cmd = [os.path.join(BIN, "dask"), "scheduler"]
c.ClusterConfig.worker_cmd = [os.path.join(BIN, "dask"), "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.scheduler_memory = "1 G"
# a cluster with no client activity for this long is stopped by its own scheduler: the
# safety net when a driver is SIGKILLed and nobody reaps (daskjob's driver keeps its
# cluster busy while a payload idles, so a live run is never stopped by this)
c.ClusterConfig.idle_timeout = IDLE_TIMEOUT


def _options_handler(options):
    # labels are only stored (the gateway keeps a cluster's options: the reaper reads
    # them back from list_clusters); environment reaches scheduler and worker processes
    out = {"environment": dict(options.environment),
           "worker_cores": options.worker_cores,
           "worker_threads": options.worker_threads or options.worker_cores}
    if options.worker_memory_gib:
        out["worker_memory"] = int(options.worker_memory_gib * 2**30)
    return out


c.Backend.cluster_options = Options(
    Mapping("labels", default={}),
    Mapping("environment", default={}),
    Integer("worker_cores", default=1, min=1, max=4),
    Integer("worker_threads", default=0, min=0, max=16),
    Float("worker_memory_gib", default=0, min=0, max=4),
    handler=_options_handler,
)
