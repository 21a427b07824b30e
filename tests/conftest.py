"""Shared fixtures: one embedded local Ray for the whole session (started only by tests that need it)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray of this session's own, whatever RAY_ADDRESS or another Ray on the machine says."""
    ray = pytest.importorskip("ray")
    from xnh_stream.chain.warmup import compile_kernels

    compile_kernels()  # the kernels into numba's cache once, before the workers would each compile them
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
