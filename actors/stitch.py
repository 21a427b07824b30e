"""Blockwise stitching on Ray: the core's runner (:func:`xnh_stream.stitch.blockwise.run_stitch`) on the one
Ray runner, :class:`actors.executor.RayExecutor` (pairs and blocks as Ray tasks; finished units are skipped,
so a re-run resumes)."""

from __future__ import annotations

from xnh_stream.chain.executor import Progress
from xnh_stream.stitch.blockwise import Stitch, StitchSpec, run_stitch

from .executor import RayExecutor


def run_stitch_ray(spec: StitchSpec, progress: Progress | None = None) -> Stitch:
    """Run (or resume) a stitch as Ray tasks; returns the driver-side handle."""
    return run_stitch(spec, progress, executor=RayExecutor())
