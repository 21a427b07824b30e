"""Compiled (numba) kernels of the physics modules, imported on first use (numba takes ~0.3 s to import).

The methods are described where the kernels are used: back-projection in
:mod:`xnh_stream.physics.backprojection`, the ray-driven projector in :mod:`xnh_stream.physics.projector`,
upsampling in :mod:`xnh_stream.physics.envelope`, the B-spline resampling in
:mod:`xnh_stream.physics.align`, apodisation and shell sums in :mod:`xnh_stream.physics.fsc`.
"""

from __future__ import annotations

import threading
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
    """``out[r, i] += sum_a pairs[zrow[r], a, k].real + f pairs[zrow[r], a, k].imag`` with
    ``k + f 2^-32 = origin + (xr[r] + i dx[r]) cos_a + (yr[r] + i dy[r]) sin_a`` (32.32 fixed point;
    the differences in ``imag`` carry the factor 2^-32, so the fraction needs no scaling)."""
    n_lines, m = out.shape
    n_angles = cs.shape[0]
    scale = 4294967296.0  # 2^32
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
                o[i] += c.real + np.float32(t & low) * c.imag
    return out


#: Detector rows handled together by :func:`bp_stacked` (one AVX-512 register of float32; two AVX2 ones);
#: the kernel's lanes are written out for this value.
STACK = 16


@contextmanager
def slp_vectorized() -> Iterator[None]:
    """Compile the kernels called inside the block with LLVM's SLP vectoriser (numba leaves it off by
    default); :func:`bp_stacked` relies on it to turn its ``STACK`` unrolled lanes into vector code."""
    previous = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = previous


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def stack_rows(filtered, left, slope, out):  # pragma: no cover - compiled
    """Fill ``out`` ``[blocks, n_angles, length, 2, stack]`` with the padded rows of ``filtered``
    ``[n_angles, nz, n_det]`` in blocks of ``stack`` rows, rows last: values (zeros in the margins and beyond
    ``nz``), then forward differences times ``slope`` (0 for the last column). One pass, 16 rows read side by
    side so that every write is a whole ``stack``-float line."""
    n_angles, nz, n_det = filtered.shape
    blocks, _, length, _, stack = out.shape
    zero = np.float32(0.0)
    for job in numba.prange(blocks * n_angles):
        b = job // n_angles
        a = job % n_angles
        o = out[b, a]
        for k in range(length):
            for j in range(stack):
                o[k, 0, j] = zero
        z0 = b * stack
        rows = min(stack, nz - z0)
        for k in range(n_det):
            for j in range(rows):
                o[left + k, 0, j] = filtered[a, z0 + j, k]
        for k in range(length - 1):
            for j in range(stack):
                o[k, 1, j] = (o[k + 1, 0, j] - o[k, 0, j]) * slope
        for j in range(stack):
            o[length - 1, 1, j] = zero
    return out


def bp_stacked(stacked, gblock, xr, yr, dx, dy, rows, seg, cs, sn, origin, out):  # type: ignore[no-untyped-def]
    """:func:`_bp_stacked`, compiled for these argument types (or read from numba's cache) with the SLP
    vectoriser on, under a lock (the switch is numba's global configuration), then run outside it."""
    args = (stacked, gblock, xr, yr, dx, dy, rows, seg, cs, sn, origin, out)
    signature = tuple(numba.typeof(a) for a in args)
    with _SLP_LOCK, slp_vectorized():
        _bp_stacked.compile(signature)  # a no-op once compiled for these types
    return _bp_stacked(*args)


_SLP_LOCK = threading.Lock()


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def _bp_stacked(stacked, gblock, xr, yr, dx, dy, rows, seg, cs, sn, origin, out):  # pragma: no cover - compiled
    """``out[rows[g, j], i] += sum_a interp(row j of block gblock[g] of stacked, origin + (xr[g] + i dx[g]) cos_a
    + (yr[g] + i dy[g]) sin_a)`` (32.32 fixed point as :func:`bp_lines`).

    The lines of group ``g`` share their geometry and lie on the ``STACK`` rows of one block of detector rows
    (``rows[g, j] = -1`` where row ``j`` has no line); ``stacked`` is ``[blocks, n_angles, length, 2, STACK]``:
    values, then differences scaled by 2^-32, the rows last, so that one detector position serves ``STACK``
    rows as vector loads and fused multiply-adds. The ``STACK`` lanes are written out (loads first, then the
    adds) for LLVM's SLP vectoriser (:func:`slp_vectorized`); a loop would be unrolled and left scalar.
    Lines are cut into segments of ``seg`` points, so that a segment's accumulator (``seg x STACK``
    floats) stays in L1 cache over the angles.
    """
    n_groups = gblock.shape[0]
    n_angles, length = stacked.shape[1], stacked.shape[2]
    m = out.shape[1]
    n_seg = (m + seg - 1) // seg
    pf = stacked.reshape(-1)
    scale = 4294967296.0
    low = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    for job in numba.prange(n_groups * n_seg):
        g = job // n_seg
        i0 = (job % n_seg) * seg
        i1 = min(m, i0 + seg)
        acc = np.zeros((i1 - i0) * 16, np.float32)
        for a in range(n_angles):
            base = (gblock[g] * n_angles + a) * length * 32
            t0 = np.int64(np.floor((origin + xr[g] * cs[a] + yr[g] * sn[a]) * scale + 0.5))
            st = np.int64(np.floor((dx[g] * cs[a] + dy[g] * sn[a]) * scale + 0.5))
            for i in range(i0, i1):
                t = np.uint64(t0 + i * st)
                q = base + np.int64(t >> shift) * 32
                f = np.float32(np.int64(t & low))
                o = (i - i0) * 16
                v0 = pf[q + 0]
                d0 = pf[q + 16]
                v1 = pf[q + 1]
                d1 = pf[q + 17]
                v2 = pf[q + 2]
                d2 = pf[q + 18]
                v3 = pf[q + 3]
                d3 = pf[q + 19]
                v4 = pf[q + 4]
                d4 = pf[q + 20]
                v5 = pf[q + 5]
                d5 = pf[q + 21]
                v6 = pf[q + 6]
                d6 = pf[q + 22]
                v7 = pf[q + 7]
                d7 = pf[q + 23]
                v8 = pf[q + 8]
                d8 = pf[q + 24]
                v9 = pf[q + 9]
                d9 = pf[q + 25]
                v10 = pf[q + 10]
                d10 = pf[q + 26]
                v11 = pf[q + 11]
                d11 = pf[q + 27]
                v12 = pf[q + 12]
                d12 = pf[q + 28]
                v13 = pf[q + 13]
                d13 = pf[q + 29]
                v14 = pf[q + 14]
                d14 = pf[q + 30]
                v15 = pf[q + 15]
                d15 = pf[q + 31]
                acc[o + 0] += v0 + f * d0
                acc[o + 1] += v1 + f * d1
                acc[o + 2] += v2 + f * d2
                acc[o + 3] += v3 + f * d3
                acc[o + 4] += v4 + f * d4
                acc[o + 5] += v5 + f * d5
                acc[o + 6] += v6 + f * d6
                acc[o + 7] += v7 + f * d7
                acc[o + 8] += v8 + f * d8
                acc[o + 9] += v9 + f * d9
                acc[o + 10] += v10 + f * d10
                acc[o + 11] += v11 + f * d11
                acc[o + 12] += v12 + f * d12
                acc[o + 13] += v13 + f * d13
                acc[o + 14] += v14 + f * d14
                acc[o + 15] += v15 + f * d15
        for j in range(16):
            r = rows[g, j]
            if r >= 0:
                line = out[r]
                for i in range(i0, i1):
                    line[i] += acc[(i - i0) * 16 + j]
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


#: Pole of the cubic B-spline prefilter, sqrt(3) - 2.
_Z3 = 3.0**0.5 - 2.0
#: Terms of the causal initial sum beyond which z^k < 1e-23 (the mirror terms then vanish too).
_INIT_TERMS = 40


@numba.njit(inline="always")
def _causal_init_mirror(c, n, z):  # pragma: no cover - compiled
    """Initial value of the causal recursion for the whole-sample mirror extension (exact for short
    lines, truncated at z^40 for long ones)."""
    if n - 1 <= _INIT_TERMS:
        zn1 = z ** (n - 1)
        s = c[0] + zn1 * c[n - 1]
        zi = z
        for i in range(1, n - 1):
            s += zi * (c[i] + zn1 * c[n - 1 - i])
            zi *= z
        return s / (1.0 - zn1 * zn1)
    s = c[0]
    zi = z
    for i in range(1, _INIT_TERMS):
        s += zi * c[i]
        zi *= z
    return s


@numba.njit(fastmath=FASTMATH, inline="always")
def _prefilter_block(c, z):  # pragma: no cover - compiled
    """Cubic B-spline prefilter along axis 0 of ``c`` ``[n, m]`` (float64, gain already applied), in
    place; the ``m`` columns are independent lines (vectorised across them)."""
    n, m = c.shape
    for j in range(m):
        c[0, j] = _causal_init_mirror(c[:, j], n, z)
    for k in range(1, n):
        for j in range(m):
            c[k, j] += z * c[k - 1, j]
    for j in range(m):
        c[n - 1, j] = (z * c[n - 2, j] + c[n - 1, j]) * z / (z * z - 1.0)
    for k in range(n - 2, -1, -1):
        for j in range(m):
            c[k, j] = z * (c[k + 1, j] - c[k, j])


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def bspline3_prefilter(img, out):  # pragma: no cover - compiled
    """Cubic B-spline coefficients of ``img`` (mirror boundary), float64 recursions, into ``out`` float32:
    the prefilter of ``scipy.ndimage.spline_filter(order=3, mode="mirror")``. Both passes run on
    blocks of 16 lines held transposed, so that the recursions vectorise across lines."""
    ny, nx = img.shape
    z = _Z3
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    width = 16
    if nx > 1:
        for b in numba.prange((ny + width - 1) // width):  # along x: a block of rows, held as [nx, rows]
            i0 = b * width
            m = min(width, ny - i0)
            c = np.empty((nx, m), np.float64)
            for j in range(m):
                for k in range(nx):
                    c[k, j] = img[i0 + j, k] * gain
            _prefilter_block(c, z)
            for j in range(m):
                for k in range(nx):
                    out[i0 + j, k] = c[k, j]
    else:
        out[:] = img
    if ny > 1:
        for b in numba.prange((nx + width - 1) // width):  # along y: a block of columns, [ny, columns]
            j0 = b * width
            m = min(width, nx - j0)
            c = np.empty((ny, m), np.float64)
            for k in range(ny):
                for j in range(m):
                    c[k, j] = out[k, j0 + j] * gain
            _prefilter_block(c, z)
            for k in range(ny):
                for j in range(m):
                    out[k, j0 + j] = c[k, j]
    return out


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def resample_separable(img, ry, wy, rx, wx, out):  # pragma: no cover - compiled
    """``out[i, j] = sum_s sum_t wy[i, s] wx[j, t] img[ry[i, s], rx[j, t]]``: rows first (a row
    buffer per output row), then the column taps."""
    n_in = img.shape[1]
    ty = ry.shape[1]
    tx = rx.shape[1]
    for i in numba.prange(out.shape[0]):
        row = np.zeros(n_in, np.float32)
        for s in range(ty):
            w = wy[i, s]
            src = img[ry[i, s]]
            for k in range(n_in):
                row[k] += w * src[k]
        o = out[i]
        for j in range(out.shape[1]):
            acc = np.float32(0.0)
            for t in range(tx):
                acc += wx[j, t] * row[rx[j, t]]
            o[j] = acc
    return out


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def apodise_separable(v, w0, w1, w2, out):  # pragma: no cover - compiled
    """``out = (v - mean_w(v)) * w0[i] w1[j] w2[k]`` with the window-weighted mean of ``v`` (float64
    sums); the window is never built as a volume."""
    n0, n1, n2 = v.shape
    partial = np.zeros(n0, np.float64)
    for i in numba.prange(n0):
        s = 0.0
        for j in range(n1):
            t = 0.0
            for k in range(n2):
                t += np.float64(v[i, j, k]) * w2[k]
            s += t * w1[j]
        partial[i] = s * w0[i]
    total = 0.0
    for i in range(n0):
        total += partial[i]
    mean = np.float32(total / (np.sum(w0.astype(np.float64)) * np.sum(w1.astype(np.float64))
                               * np.sum(w2.astype(np.float64))))
    for i in numba.prange(n0):
        for j in range(n1):
            wij = w0[i] * w1[j]
            for k in range(n2):
                out[i, j, k] = (v[i, j, k] - mean) * (wij * w2[k])
    return out


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def shell_sums(f1, f2, idx, nyquist_plane, m):  # pragma: no cover - compiled
    """Two-sided shell sums ``[3, m]`` (cross, power 1, power 2; float64) of half spectra ``[rows, nh]``:
    every coefficient counts twice except the planes ``k = 0`` and (``nyquist_plane``) ``k = nh - 1``."""
    rows, nh = f1.shape
    n_parts = min(rows, 64)
    part = np.zeros((n_parts, 3, m), np.float64)
    for c in numba.prange(n_parts):
        r0 = c * rows // n_parts
        r1 = (c + 1) * rows // n_parts
        for r in range(r0, r1):
            for k in range(nh):
                w = 1.0 if (k == 0 or (nyquist_plane and k == nh - 1)) else 2.0
                a = f1[r, k]
                b = f2[r, k]
                ar, ai = np.float64(a.real), np.float64(a.imag)
                br, bi = np.float64(b.real), np.float64(b.imag)
                s = idx[r, k]
                part[c, 0, s] += w * (ar * br + ai * bi)
                part[c, 1, s] += w * (ar * ar + ai * ai)
                part[c, 2, s] += w * (br * br + bi * bi)
    out = np.zeros((3, m), np.float64)
    for c in range(n_parts):
        for q in range(3):
            for s in range(m):
                out[q, s] += part[c, q, s]
    return out
