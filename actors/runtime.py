"""Starting or joining Ray: the one place the commands get their Ray from.

* Without an address, an embedded local Ray of this process's own is started, whatever ``RAY_ADDRESS`` or
  another Ray instance on the machine says (``address="local"``); every one of its services listens on the
  loopback interface only (``127.0.0.1``, :func:`_loopback_node`) and no dashboard is started.
* With ``--address`` (``auto``, ``host:port`` or ``ray://host:10001``) the existing cluster is joined; the
  resources are the cluster's, none are passed.
* A process that already has Ray (a test session, a second command in one process) keeps it.

``ray.init`` installs Ray's own SIGTERM handlers in the driver (one exits with code 1 after killing the
node's processes; the core worker's C++ failure handler prints a C stack first): the command's handlers
(:mod:`xnh_stream.interrupt`) are put back after it, so that SIGTERM and SIGINT stop a command cleanly.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from xnh_stream import interrupt

log = logging.getLogger(__name__)

#: Interface of an embedded Ray's services.
LOOPBACK = "127.0.0.1"

#: Ray's switch between a node address reachable from other hosts (on: the default on Linux) and the
#: loopback address (off: the default on macOS and Windows); read by ``ray._private.services``.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Within: Ray takes ``127.0.0.1`` as the node address of a Ray started here, and keeps it.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: Ray replaces a loopback node address by
    the machine's external address (``services.resolve_ip_for_localhost``) unless its cluster switch is
    off, and every service follows the node address: with the external address the GCS, the raylet (node
    and object manager), each worker and the driver's core worker listen on all interfaces and the
    runtime-env agent on the external one; with ``127.0.0.1`` all of them, the autoscaler's metrics server
    and the dashboard agent bind ``127.0.0.1`` (``tests/test_network.py`` checks every listener). The switch
    is Ray's environment variable (inherited by the processes it starts) and the constant it was read into
    when Ray was imported; both are restored on leaving.
    """
    from ray._private import ray_constants  # noqa: PLC0415 - Ray's constant, read at its import

    saved_env, saved_const = os.environ.get(_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = saved_env


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Start an embedded Ray or join a cluster; returns what was done (for the log).

    Parameters
    ----------
    address : str, optional
        Cluster to join; None starts an embedded local Ray (never joins one by accident), its services on
        ``127.0.0.1`` only.
    num_cpus, num_gpus : int, optional
        Resources of the embedded Ray (default: the machine's CPUs, at most 8; GPUs as detected).

    Returns
    -------
    str
        What was done, for the log.
    """
    if ray.is_initialized():
        return "ray: already started in this process"
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            n = sum(1 for node in ray.nodes() if node.get("Alive"))
            return f"ray: joined the cluster at {address} ({n} nodes)"
        cpus = num_cpus or min(os.cpu_count() or 2, 8)
        kwargs = {"num_gpus": num_gpus} if num_gpus is not None else {}
        with _loopback_node():
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _node_ip_address=LOOPBACK, **kwargs)
        node = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node).is_loopback:  # a Ray that no longer honours the switch
            log.warning("ray: the embedded instance took the node address %s, not %s: its services may listen "
                        "on other interfaces than the loopback one", node, LOOPBACK)
        return f"ray: embedded local instance with {cpus} CPUs on {node}"
    except SystemExit:
        if interrupt.active():  # SIGTERM during ray.init, which had its own handlers (sys.exit) in place
            raise interrupt.Interrupted(signal.SIGTERM) from None
        raise
    finally:
        interrupt.reinstall()  # ray.init replaced the command's SIGTERM handler by its own


def gpus_available() -> float:
    """GPUs of the Ray cluster this process is connected to."""
    return float(ray.cluster_resources().get("GPU", 0.0))
