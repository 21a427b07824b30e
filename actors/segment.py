"""Blockwise segmentation on Ray: the core's runner (:func:`xnh_stream.segment.blockwise.run_blockwise`) on
the one Ray runner, :class:`actors.executor.RayExecutor` (each stage's blocks as Ray tasks; finished blocks
are skipped, so a re-run resumes)."""

from __future__ import annotations

from xnh_stream.chain.executor import Progress
from xnh_stream.segment.blockwise import BlockwiseSegmentation, BlockwiseSpec, run_blockwise

from .executor import RayExecutor


def run_blockwise_ray(spec: BlockwiseSpec, num_gpus: float = 0.0,
                      progress: Progress | None = None) -> BlockwiseSegmentation:
    """Run (or resume) a blockwise segmentation as Ray tasks (``num_gpus`` per task); returns the driver-side
    handle to the results."""
    return run_blockwise(spec, progress, executor=RayExecutor(num_gpus=num_gpus))
