"""Compiling the CPU kernels before a scan's first frame needs them.

The compiled (numba) kernels of :mod:`xnh_stream.physics` are built at their first call for the argument
types of that call, then kept in numba's on-disk cache. On a fresh install every process of a stream
(driver, phase workers, reconstruction shards, slice keeper) compiled the same kernels at once on the
same cores: on 2 cores the first frames of the first scan waited 10-20 s (a 256^2 stream took 30 s
instead of 6 s). :func:`compile_kernels` runs the chain's steps once on a tiny four-distance scan in the
driver, so that the cache holds every kernel for the types the stream passes (read-only frames as they
come out of the object store included) and the actors load them (milliseconds) instead of compiling.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..config import ProcessConfig
from ..physics.geometry import DistanceGeometry, ScanGeometry

_LOCK = threading.Lock()
_DONE = False


def _tiny_geometry() -> ScanGeometry:
    """Four distances of an ID16A-like geometry (the values only need to be valid)."""
    focus_detector, pixel = 1.208, 100e-9 * 1.208 / 0.0025
    return ScanGeometry(tuple(DistanceGeometry(z1, focus_detector - z1, pixel, 17.0)
                              for z1 in (0.0025, 0.002575, 0.0028, 0.00325)))


def compile_kernels(n: int = 48) -> float:
    """Run the stream's CPU steps once on an ``n x n`` four-distance angle, so that every kernel they use is
    compiled (or loaded from numba's cache) in this process and written to the cache for the others.

    Covers phase retrieval (alignment resampling of writable and read-only frames, Paganin preview,
    multi-distance CTF), back-projection (the line and the stacked kernels, a preview replaced by its
    final), the full-resolution slices and the FSC. Runs once per process; later calls return 0.

    Parameters
    ----------
    n : int
        Side of the tiny frames (the kernels are compiled per argument type, not per size).

    Returns
    -------
    float
        Seconds it took (0.0 when this process had already done it).
    """
    global _DONE  # noqa: PLW0603
    with _LOCK:
        if _DONE:
            return 0.0
        t0 = time.perf_counter()
        _run_once(n)
        _DONE = True
        return time.perf_counter() - t0


def _run_once(n: int) -> None:
    from ..physics.align import rescale_shift  # noqa: PLC0415
    from ..physics.fbp import filter_projection  # noqa: PLC0415
    from ..physics.fsc import fourier_shell_correlation  # noqa: PLC0415
    from ..physics.slices import OrthoSlices  # noqa: PLC0415
    from .accumulate import ProgressiveVolume  # noqa: PLC0415
    from .steps import AngleProcessor  # noqa: PLC0415

    geometry = _tiny_geometry()
    rng = np.random.default_rng(0)
    frames = {k: (1 + 0.01 * rng.standard_normal((n, n))).astype(np.float32)
              for k in range(len(geometry.distances))}
    for frame in frames.values():
        frame.flags.writeable = False  # as a frame comes out of Ray's object store
    for writeable in (True, False):
        image = frames[0].copy()
        image.flags.writeable = writeable
        rescale_shift(image, 1.1, (0.3, -0.2))
    proc = AngleProcessor(geometry, (n, n), 100.0, ProcessConfig())
    preview = proc.preview(0, frames[0], 0.0, (0.3, -0.2))
    final = proc.ctf(frames, 0.0)

    cor = (n - 1) / 2
    volume = ProgressiveVolume(n, n, cor=cor, batch=2)
    for i in range(4):
        volume.add(i, 0.4 * i, preview, final=False)
    for i in range(4):
        volume.add(i, 0.4 * i, final, final=True)
    half_a, half_b = volume.half_volumes()
    fourier_shell_correlation(np.asarray(half_a), np.asarray(half_b))

    slices = OrthoSlices(n, n, cor=cor)
    slices.add_filtered(filter_projection(final - preview, "shepp-logan", padding="edge"), 0.4)
    slices.slices()
