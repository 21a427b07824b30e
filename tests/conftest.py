"""Shared fixtures: one embedded local Ray for the whole session (started only by tests that need it)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray of this session's own, whatever RAY_ADDRESS or another Ray on the machine says, started
    as the commands start theirs (``start_ray``: its services on the loopback interface only)."""
    ray = pytest.importorskip("ray")
    from actors.runtime import start_ray
    from xnh_stream.chain.warmup import compile_kernels

    compile_kernels()  # the kernels into numba's cache once, before the workers would each compile them
    start_ray(num_cpus=2)  # keeps a Ray this process already has
    yield ray
    ray.shutdown()
