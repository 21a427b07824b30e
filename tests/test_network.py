"""An embedded Ray listens on the loopback interface only: every service of it, in every process.

A fault campaign found the GCS, the raylet, every worker and the driver's core worker listening on all
interfaces and Ray's runtime-env agent on the machine's external address, although ``start_ray`` asked for
``127.0.0.1`` (``actors/runtime.py`` says why and what changes it). The check: a fresh process starts Ray
through ``start_ray``, runs a task and an actor, and lists the listening sockets of the machine (``ss``)
and its process tree at that moment; every socket owned by the driver or a process below it must be bound
to a loopback address.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SS = shutil.which("ss") or ("/usr/bin/ss" if Path("/usr/bin/ss").exists() else None)

#: The child: Ray through start_ray, a task and an actor alive, then the listeners and the process tree.
CHILD = r"""
import json, os, subprocess, sys
from pathlib import Path

import ray

from actors.runtime import start_ray

print(start_ray(num_cpus=2), file=sys.stderr)


@ray.remote
def task():
    return os.getpid()


@ray.remote
class Holder:
    def pid(self):
        return os.getpid()


holder = Holder.remote()
pids = {"task": ray.get(task.remote()), "actor": ray.get(holder.pid.remote())}
listeners = subprocess.run([sys.argv[1], "-H", "-l", "-t", "-u", "-n", "-p"], capture_output=True, text=True,
                           check=True).stdout
parents = {}
for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
        text = stat.read_text()
    except OSError:
        continue  # a process that ended meanwhile
    parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
print(json.dumps({"driver": os.getpid(), "pids": pids, "ss": listeners, "parents": parents}))
ray.shutdown()
"""


def is_loopback(local: str) -> bool:
    """Whether an ``ss`` local address (``127.0.0.1:41413``, ``[::1]:80``, ``[::ffff:127.0.0.1]:5``,
    ``*:41413``, ``0.0.0.0:80``, ``127.0.0.53%lo:53``) is bound to a loopback address."""
    host = local.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    if host == "*":
        return False
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_is_loopback_reads_the_forms_ss_prints():
    assert all(map(is_loopback, ["127.0.0.1:41413", "[::1]:80", "[::ffff:127.0.0.1]:5", "127.0.0.53%lo:53"]))
    assert not any(map(is_loopback, ["*:41413", "0.0.0.0:80", "[::]:80", "192.0.2.2:40171",
                                     "[::ffff:192.0.2.2]:1"]))


def tree(root: int, parents: dict[int, int]) -> set[int]:
    """``root`` and every process below it."""
    found, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


def listeners_of(root: int) -> list[tuple[str, str]]:
    """``(local address, owner)`` of every listening TCP/UDP socket owned by ``root`` or a process below it,
    as ``ss`` lists them now."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    ours = tree(root, parents)
    text = subprocess.run([SS, "-H", "-l", "-t", "-u", "-n", "-p"], capture_output=True, text=True, check=True).stdout
    owned = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and ours & {int(p) for p in re.findall(r"pid=(\d+)", line)}:
            owned.append((fields[4], " ".join(fields[6:])))
    return owned


@pytest.mark.skipif(SS is None, reason="ss (iproute2) is not installed")
def test_every_listener_of_an_embedded_ray_is_on_loopback():
    run = subprocess.run([sys.executable, "-c", CHILD, SS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    ours = tree(seen["driver"], {int(k): v for k, v in seen["parents"].items()})
    owned = []  # (local address, process names and pids) of every socket of the tree
    for line in seen["ss"].splitlines():
        fields = line.split()
        if len(fields) < 6 or not ours & {int(p) for p in re.findall(r"pid=(\d+)", line)}:
            continue
        owned.append((fields[4], " ".join(fields[6:])))
    print("\n".join(f"{local:28} {who}" for local, who in owned))
    owners = {int(p) for _, who in owned for p in re.findall(r"pid=(\d+)", who)}
    # not vacuous: the driver's core worker and the actor's worker (each a gRPC server) are among them
    assert {seen["driver"], seen["pids"]["actor"]} <= owners, (owned, seen["pids"])
    outside = [(local, who) for local, who in owned if not is_loopback(local)]
    assert not outside, f"listening outside the loopback interface: {outside}"
