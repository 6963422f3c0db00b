"""An emulated Kubernetes control plane for tests, on loopback, in one subprocess.

- apiserver.py: the API server (aiohttp): discovery, CRUD, list/watch, patch flavours,
  finalizers, ownerReference garbage collection, pod logs and port-forward.
- store.py: the object store behind it (resourceVersions, event history, selectors).
- resources.py: the served resource types; the Dask CRDs come from dask-kubernetes' chart.
- workloads.py: the Deployment and Service controllers, kube-proxy and the cloud "load
  balancer", and the hosts file of the DNS shim (dns/sitecustomize.py).
- kubelet.py: a "process kubelet": pods' containers run as local processes.
- cluster.py: `python -m kube.cluster --dir DIR` runs all of the above;
  harness.py starts it (and the real dask-kubernetes controller under kopf) from a test.
"""
