"""numba kernels of :mod:`xnh_stream.physics.backprojection` (imported on first use: numba takes ~0.3 s to import).

See that module for the method; here only the compiled loops.
"""

from __future__ import annotations

from collections.abc import Callable
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
