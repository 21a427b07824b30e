"""numba kernels of :mod:`xnh_stream.physics.backprojection` (imported on first use: numba takes ~0.3 s to import).

See that module for the method; here only the compiled loops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``numba.njit`` with the on-disk cache when a cache location is writable, without it otherwise.

    numba picks the cache location at decoration time and raises ``RuntimeError`` when none is usable
    (a read-only install with no writable user cache); the kernel is then compiled at first use in
    every process instead.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)

    return wrap


@contextmanager
def threads(workers: int) -> Iterator[None]:
    """Run numba parallel loops on ``workers`` threads (``<= 0``: all) inside the block, restored after."""
    previous = numba.get_num_threads()
    most = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(most if workers <= 0 else max(1, min(int(workers), most)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# fastmath without 'nnan' / 'ninf': non-finite data then stay non-finite instead of being undefined.
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def bp_lines(pairs, zrow, xr, yr, dx, dy, cs, sn, origin, out):  # pragma: no cover - compiled
    """``out[r, i] += sum_a pairs[zrow[r], a, k].real + w pairs[zrow[r], a, k].imag`` with
    ``k + w = origin + (xr[r] + i dx[r]) cos_a + (yr[r] + i dy[r]) sin_a`` (32.32 fixed point)."""
    n_lines, m = out.shape
    n_angles = cs.shape[0]
    scale = 4294967296.0  # 2^32
    inv = np.float32(1.0 / 4294967296.0)
    low = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    for r in numba.prange(n_lines):
        z = zrow[r]
        o = out[r]
        for a in range(n_angles):
            p = pairs[z, a]
            t0 = np.int64(np.floor((origin + xr[r] * cs[a] + yr[r] * sn[a]) * scale + 0.5))
            st = np.int64(np.floor((dx[r] * cs[a] + dy[r] * sn[a]) * scale + 0.5))
            for i in range(m):
                t = np.uint64(t0 + i * st)
                c = p[t >> shift]
                o[i] += c.real + np.float32(t & low) * inv * c.imag
    return out


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def project_rays(cols, ny, nx, t, c, s, u, step, out):  # pragma: no cover - compiled
    """Ray-driven parallel projection: ``out[j, :] = sum_q bilinear(cols, point(j, q)) * step``.

    ``cols`` is the volume as ``[ny * nx, nz]`` columns; ray ``j`` at detector coordinate ``t[j]`` is
    sampled at ``t[j] (c, s) + u[q] (-s, c)`` (x, y from the grid centre), as
    :func:`xnh_stream.physics.projector.ray_matrix` (same samples, same float32 weights).
    """
    cy = (ny - 1) / 2.0
    cx = (nx - 1) / 2.0
    nz = cols.shape[1]
    w_step = np.float32(step)
    one = np.float32(1.0)
    for j in numba.prange(t.shape[0]):
        o = out[j]
        for q in range(u.shape[0]):
            ix = t[j] * c - u[q] * s + cx
            iy = t[j] * s + u[q] * c + cy
            if not (ix > -1.0 and ix < nx and iy > -1.0 and iy < ny):
                continue
            x0 = np.floor(ix)
            y0 = np.floor(iy)
            fx = np.float32(ix - x0)
            fy = np.float32(iy - y0)
            xi0 = int(x0)
            yi0 = int(y0)
            for dy in range(2):
                yi = yi0 + dy
                if yi < 0 or yi >= ny:
                    continue
                wy = fy if dy == 1 else one - fy
                for dx in range(2):
                    xi = xi0 + dx
                    if xi < 0 or xi >= nx:
                        continue
                    wx = fx if dx == 1 else one - fx
                    w = wy * wx * w_step
                    row = cols[yi * nx + xi]
                    for z in range(nz):
                        o[z] += w * row[z]
    return out


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def resample_bilinear(p, y0, y1, wy, x0, x1, wx, out):  # pragma: no cover - compiled
    """``out[i, j] = bilinear(p)`` at taps ``(y0[i], y1[i], wy[i])`` x ``(x0[j], x1[j], wx[j])``
    (rows first, then columns: the order of a separable pass)."""
    one = np.float32(1.0)
    for i in numba.prange(out.shape[0]):
        a = p[y0[i]]
        b = p[y1[i]]
        v = wy[i]
        o = out[i]
        for j in range(out.shape[1]):
            lo = a[x0[j]] * (one - v) + b[x0[j]] * v
            hi = a[x1[j]] * (one - v) + b[x1[j]] * v
            o[j] = lo * (one - wx[j]) + hi * wx[j]
    return out
