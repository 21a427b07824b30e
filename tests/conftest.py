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


#: Test files that take a minute or more on two cores (measured with ``--durations``), run first: the suite's
#: two processes each take a whole file at a time (``--dist loadfile``), in the order files are collected, so
#: a long file taken last would leave one process working alone at the end.
LONGEST_FIRST = ("test_stream.py", "test_seams.py", "test_shutdown.py", "test_live_majority.py",
                 "test_faults_end.py", "test_final.py", "test_segment_model.py", "test_denoise.py",
                 "test_warmup.py", "test_live_driver.py")


def pytest_collection_modifyitems(session, config, items):
    """Put the files of :data:`LONGEST_FIRST` first (in that order), every other file after them as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a file
