"""Starting or joining Ray: the one place the commands get their Ray from.

* Without an address, an embedded local Ray of this process's own is started, whatever ``RAY_ADDRESS`` or
  another Ray instance on the machine says (``address="local"``); its services listen on the loopback
  interface only (``127.0.0.1``) and no dashboard is started.
* With ``--address`` (``auto``, ``host:port`` or ``ray://host:10001``) the existing cluster is joined; the
  resources are the cluster's, none are passed.
* A process that already has Ray (a test session, a second command in one process) keeps it.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)

#: Interface of an embedded Ray's services.
LOOPBACK = "127.0.0.1"


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Start an embedded Ray or join a cluster; returns what was done (for the log).

    Parameters
    ----------
    address : str, optional
        Cluster to join; None starts an embedded local Ray (never joins one by accident).
    num_cpus, num_gpus : int, optional
        Resources of the embedded Ray (default: the machine's CPUs, at most 8; GPUs as detected).
    """
    if ray.is_initialized():
        return "ray: already started in this process"
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        n = sum(1 for node in ray.nodes() if node.get("Alive"))
        return f"ray: joined the cluster at {address} ({n} nodes)"
    cpus = num_cpus or min(os.cpu_count() or 2, 8)
    kwargs = {"num_gpus": num_gpus} if num_gpus is not None else {}
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address=LOOPBACK, **kwargs)
    return f"ray: embedded local instance with {cpus} CPUs on {LOOPBACK}"


def gpus_available() -> float:
    """GPUs of the Ray cluster this process is connected to."""
    return float(ray.cluster_resources().get("GPU", 0.0))
