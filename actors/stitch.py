"""Ray tasks for blockwise stitching: pairs and blocks run as independent tasks (thin wrappers around
:mod:`xnh_stream.stitch.blockwise`); finished units are skipped, so a re-run resumes.

The driver registers every pair (tasks), solves the placement itself (small), then fuses every level-0 block
(tasks: each reads only the parts of the scans under its block) and builds each coarser level from the one
before (tasks, level after level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import ray

from xnh_stream.stitch.blockwise import Stitch, StitchSpec

_CACHE: dict[str, Stitch] = {}


def _worker(spec: dict) -> Stitch:
    key = repr(sorted((k, repr(v)) for k, v in spec.items()))
    if key not in _CACHE:  # scans opened once per worker process and run
        _CACHE.clear()
        _CACHE[key] = Stitch(StitchSpec(**spec))
    return _CACHE[key]


@ray.remote
def register_pair(spec: dict, k: int) -> bool:
    """Register pair ``k``; returns whether it was accepted."""
    return _worker(spec).register(k).ok


@ray.remote
def fuse_block(spec: dict, index: int) -> int:
    """Fuse output block ``index`` of level 0."""
    _worker(spec).fuse(index)
    return index


@ray.remote
def downsample_block(spec: dict, level: int, index: int) -> int:
    """Build block ``index`` of output ``level`` from the level before."""
    _worker(spec).downsample(level, index)
    return index


def _wait_all(refs: list, stage: str, progress: Callable[[str, int, int], None] | None) -> None:
    total = len(refs)
    for k in range(total):
        done, refs = ray.wait(refs, num_returns=1)
        ray.get(done)
        if progress:
            progress(stage, k + 1, total)


def run_stitch_ray(spec: StitchSpec, progress: Callable[[str, int, int], None] | None = None) -> Stitch:
    """Run (or resume) a stitch as Ray tasks; returns the driver-side handle (see :func:`~xnh_stream.stitch.
    blockwise.run_stitch` for the same in one process)."""
    st = Stitch.prepare(spec)
    payload = asdict(st.spec)
    _wait_all([register_pair.remote(payload, k) for k in st.pending("register")], "register", progress)
    if not st.solved:
        st.solve()
    _wait_all([fuse_block.remote(payload, i) for i in st.pending("fuse")], "fuse", progress)
    for stage in st.level_stages():
        level = int(stage[1:])
        _wait_all([downsample_block.remote(payload, level, i) for i in st.pending(stage)], stage, progress)
    return st
