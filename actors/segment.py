"""Ray tasks for blockwise segmentation: each stage's blocks run as independent tasks (thin wrappers around
:mod:`xnh_stream.segment.blockwise`); finished blocks are skipped, so a re-run resumes.

Stages wait for the previous stage on every block before starting (a block's watershed reads its neighbours'
affinities within the context, its contact statistics the fragments of the plane before it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import ray

from xnh_stream.segment.blockwise import BlockwiseSegmentation, BlockwiseSpec

_CACHE: dict[str, BlockwiseSegmentation] = {}


def _worker(spec: dict) -> BlockwiseSegmentation:
    key = repr(sorted(spec.items()))
    if key not in _CACHE:  # one model load per worker process and run
        _CACHE.clear()
        _CACHE[key] = BlockwiseSegmentation(BlockwiseSpec(**spec))
    return _CACHE[key]


@ray.remote
def run_block(spec: dict, stage: str, index: int) -> int:
    """Run ``stage`` (predict, fragments, agglomerate, relabel) on block ``index``."""
    getattr(_worker(spec), stage)(index)
    return index


@ray.remote
def solve(spec: dict) -> dict:
    """Sum the contacts of every block and agglomerate the fragment graph into the fragment -> segment table."""
    return _worker(spec).solve()


def run_blockwise_ray(spec: BlockwiseSpec, num_gpus: float = 0.0,
                      progress: Callable[[str, int, int], None] | None = None) -> BlockwiseSegmentation:
    """Run (or resume) a blockwise segmentation as Ray tasks; returns the driver-side handle to the results.

    ``num_gpus`` is given to prediction tasks (e.g. 1 when the cluster has GPUs and ``spec.device`` is cuda).
    """
    bw = BlockwiseSegmentation.prepare(spec)
    payload = asdict(bw.spec)
    for stage in ("predict", "fragments", "agglomerate", "relabel"):
        if stage == "relabel" and bw.pending("relabel"):
            ray.get(solve.remote(payload))
        todo = bw.pending(stage)
        task = run_block.options(num_gpus=num_gpus) if stage == "predict" and num_gpus else run_block
        refs = [task.remote(payload, stage, i) for i in todo]
        for k in range(len(refs)):
            done, refs = ray.wait(refs, num_returns=1)
            ray.get(done)
            if progress:
                progress(stage, k + 1, len(todo))
    return bw
