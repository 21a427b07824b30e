"""Compiled (numba) kernels of the physics modules, imported on first use (numba takes ~0.3 s to import).

The methods are described where the kernels are used: back-projection in
:mod:`xnh_stream.physics.backprojection`, the ray-driven projector in :mod:`xnh_stream.physics.projector`,
upsampling in :mod:`xnh_stream.physics.envelope`, the B-spline resampling in
:mod:`xnh_stream.physics.align`, apodisation and shell sums in :mod:`xnh_stream.physics.fsc`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model


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


#: Detector rows handled together by :func:`bp_stacked` (one AVX-512 register of float32; two AVX2 ones).
STACK = 16
#: Voxels of one line whose ``STACK``-row accumulators :func:`bp_stacked` keeps in registers across the angles.
VOXELS = 8


@contextmanager
def slp_vectorized() -> Iterator[None]:
    """Compile the kernels called inside the block with LLVM's SLP vectoriser (numba leaves it off by
    default)."""
    previous = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = previous


# --------------------------------------------------------------------------------------------------
# Vectors of 16 float32 (one AVX-512 register; LLVM splits them on narrower CPUs) as a numba type, and the
# few operations the back-projection needs, written as LLVM IR: the loops that use them keep their
# accumulators in registers (SSA values, not arrays in memory), which numba's arrays cannot do.
# --------------------------------------------------------------------------------------------------
_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, 16)
_V8 = ir.VectorType(_F32, 8)


class Vec16(types.Type):
    """16 float32 lanes (an LLVM ``<16 x float>``)."""

    def __init__(self) -> None:
        super().__init__(name="Vec16")


vec16 = Vec16()


@register_model(Vec16)
class _Vec16Model(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Any) -> None:
        super().__init__(dmm, fe_type, _V16)


def _element_pointer(context: Any, builder: Any, aryty: Any, ary: Any, index: Any) -> Any:
    return builder.gep(context.make_array(aryty)(context, builder, ary).data, [index])


@intrinsic
def vec_zero(typingctx: Any) -> Any:
    """16 zeros."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return ir.Constant(_V16, None)

    return vec16(), codegen


@intrinsic
def vec_load(typingctx: Any, arr: Any, index: Any) -> Any:
    """``arr[index : index + 16]`` of a float32 array (no bounds check)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _V16.as_pointer()), align=4)

    return vec16(arr, index), codegen


@intrinsic
def vec_store(typingctx: Any, arr: Any, index: Any, v: Any) -> Any:
    """``arr[index : index + 16] = v`` (no bounds check)."""
    if not isinstance(v, Vec16):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        p = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _V16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, index, v), codegen


@intrinsic
def vec_diff(typingctx: Any, a: Any, b: Any, s: Any) -> Any:
    """``(b - a) * s`` with ``s`` a float32 broadcast to the 16 lanes."""
    if not (isinstance(a, Vec16) and isinstance(b, Vec16)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        a_, b_, s_ = args
        one = builder.insert_element(ir.Constant(_V16, None), s_, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(one, ir.Constant(_V16, None),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        return builder.fmul(builder.fsub(b_, a_), splat)

    return vec16(a, b, types.float32), codegen


@intrinsic
def vec_interp(typingctx: Any, acc: Any, f: Any, v: Any, d: Any) -> Any:
    """``acc + (v + f d)`` with ``f`` a float32 broadcast to the 16 lanes: one fused multiply-add, one add."""
    if not (isinstance(acc, Vec16) and isinstance(v, Vec16) and isinstance(d, Vec16)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        acc_, f_, v_, d_ = args
        one = builder.insert_element(ir.Constant(_V16, None), f_, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(one, ir.Constant(_V16, None),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")
        return builder.fadd(acc_, builder.call(fma, [splat, d_, v_]))

    return vec16(acc, types.float32, v, d), codegen


def _shuffle(builder: Any, a: Any, b: Any, mask: list[int]) -> Any:
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))


@intrinsic
def vec_store_transposed(typingctx: Any, buf: Any, start: Any, stride: Any, a0: Any, a1: Any, a2: Any, a3: Any,
                         a4: Any, a5: Any, a6: Any, a7: Any) -> Any:
    """``buf[start + j * stride + r] = a_r[j]`` (``r < 8``, ``j < 16``): eight vectors of 16 lanes stored as
    16 runs of 8, by three rounds of two-vector shuffles."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        vectors = list(args[3:])
        # 1: vectors (2p, 2p+1) interleaved: element 2 j + (r - 2p), lanes j = 0-7 (h = 0) or 8-15 (h = 1)
        one = {(p, h): _shuffle(builder, vectors[2 * p], vectors[2 * p + 1],
                                [x for j in range(8 * h, 8 * h + 8) for x in (j, 16 + j)])
               for p in range(4) for h in range(2)}
        # 2: pairs (0, 1) and (2, 3) of round 1: 4 lanes x 4 vectors, lanes 4 w .. 4 w + 3 of the 8 in (p, h)
        two = {(q, h, w): _shuffle(builder, one[2 * q, h], one[2 * q + 1, h],
                                   [x for j in range(4 * w, 4 * w + 4) for x in (2 * j, 2 * j + 1, 16 + 2 * j, 17 + 2 * j)])
               for q in range(2) for h in range(2) for w in range(2)}
        # 3: vectors 0-3 with 4-7: two lanes x 8 vectors, stored as two runs of 8
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        start_, stride_ = args[1], args[2]
        for h in range(2):
            for w in range(2):
                for u in range(2):
                    both = _shuffle(builder, two[0, h, w], two[1, h, w],
                                    [x for j in range(2 * u, 2 * u + 2)
                                     for x in (4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3, 16 + 4 * j, 17 + 4 * j, 18 + 4 * j,
                                               19 + 4 * j)])
                    for e in range(2):
                        lane = 8 * h + 4 * w + 2 * u + e
                        run = _shuffle(builder, both, both, list(range(8 * e, 8 * e + 8)))
                        at = builder.add(start_, builder.mul(stride_, ir.Constant(start_.type, lane)))
                        builder.store(run, builder.bitcast(builder.gep(data, [at]), _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(buf, start, stride, a0, a1, a2, a3, a4, a5, a6, a7), codegen


@intrinsic
def prefetch_write(typingctx: Any, arr: Any, index: Any) -> Any:
    """Ask for the cache line of ``arr[index]`` (a 1-d array) in L2, for writing (a hint: never faults)."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i8p = ir.IntType(8).as_pointer()
        p = builder.bitcast(_element_pointer(context, builder, sig.args[0], args[0], args[1]), i8p)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(i32, 1), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, index), codegen


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def stack_rows(filtered, left, slope, out):  # pragma: no cover - compiled
    """Fill ``out`` ``[blocks, n_angles, length, 2, stack]`` with the padded rows of ``filtered``
    ``[n_angles, nz, n_det]`` in blocks of ``stack`` rows, rows last: values (zeros in the margins and beyond
    ``nz``), then forward differences times ``slope`` (0 for the last column). The rows of one block and angle
    are first gathered into a small buffer with the rows last (and a column of zeros after them); values and
    differences are then written in one pass, ``stack`` floats at a time."""
    n_angles, nz, n_det = filtered.shape
    blocks, _, length, _, stack = out.shape
    zero = np.float32(0.0)
    pair = 2 * stack
    for job in numba.prange(blocks * n_angles):
        b = job // n_angles
        a = job % n_angles
        o = out[b, a].reshape(-1)  # position k: o[k * pair : k * pair + stack] values, then differences
        z0 = b * stack
        rows = min(stack, nz - z0)
        tmp = np.zeros((n_det + 1) * stack, np.float32)  # [n_det + 1, stack]; rows >= nz and the last column 0
        for j in range(rows):
            src = filtered[a, z0 + j]
            for k in range(n_det):
                tmp[k * stack + j] = src[k]
        for e in range((left - 1) * pair):
            o[e] = zero
        p = (left - 1) * pair
        for e in range(stack):
            o[p + e] = zero
            o[p + stack + e] = tmp[e] * slope
        if stack == STACK:  # 16 rows: one vector per position (values, then differences)
            for k in range(n_det):
                p = (left + k) * pair
                v = vec_load(tmp, k * STACK)
                vec_store(o, p, v)
                vec_store(o, p + STACK, vec_diff(v, vec_load(tmp, (k + 1) * STACK), slope))
        else:
            for k in range(n_det):
                p = (left + k) * pair
                q = k * stack
                for e in range(stack):
                    o[p + e] = tmp[q + e]
                    o[p + stack + e] = (tmp[q + stack + e] - tmp[q + e]) * slope
        for e in range((left + n_det) * pair, length * pair):
            o[e] = zero
    return out


@numba.njit(inline="always", fastmath=FASTMATH)
def _interp_step(acc, pf, t):  # pragma: no cover - compiled
    """``acc`` plus the ``STACK`` rows at 32.32 fixed-point position ``t`` (value + fraction x difference): the
    integer part counts positions of ``2 x STACK`` floats from the start of ``pf``."""
    q = np.int64(t >> np.uint64(32)) * (2 * STACK)
    return vec_interp(acc, np.float32(t & np.uint64(0xFFFFFFFF)), vec_load(pf, q), vec_load(pf, q + 16))


@numba.njit(inline="always", fastmath=FASTMATH)
def _interp_at(acc, pf, q, f):  # pragma: no cover - compiled
    """``acc`` plus the ``STACK`` rows at element ``q`` of ``pf`` (values, then differences) with fraction ``f``."""
    return vec_interp(acc, f, vec_load(pf, q), vec_load(pf, q + STACK))


def stack_positions_per_block(stacked: np.ndarray) -> int:
    """Detector positions of one block of rows over all angles of ``stacked`` (angles x length)."""
    return int(stacked.shape[1]) * int(stacked.shape[2])


def bp_stacked(stacked, gblock, xr, yr, dx, dy, rows, seg, tile, cs, sn, origin, out):  # type: ignore[no-untyped-def]
    """:func:`_bp_stacked`, after the checks its unchecked vector loads and stores rely on."""
    if out.shape[1] < VOXELS or seg < VOXELS:
        raise ValueError(f"the stacked kernel needs lines and segments of at least {VOXELS} voxels")
    if stacked.ndim != 5 or stacked.shape[3:] != (2, STACK) or not stacked.flags.c_contiguous:
        raise ValueError(f"stacked pairs must be C-contiguous [blocks, n_angles, length, 2, {STACK}]")
    if stacked.shape[0] * stack_positions_per_block(stacked) >= 2**31:
        raise ValueError("stacked pairs too large for 32.32 fixed-point positions: back-project fewer angles or rows")
    return _bp_stacked(stacked, gblock, xr, yr, dx, dy, rows, seg, max(1, int(tile)), cs, sn, origin, out)


#: Groups (lines of one geometry on ``STACK`` rows) that :func:`_bp_stacked` runs together, voxel block after
#: voxel block, where they share their block of rows (a slab): neighbouring lines read nearly the same detector
#: positions, which then stay in cache.
TILE_GROUPS = 16
#: Voxels of a line per window of :func:`_bp_stacked`: a window's results (tile x STACK rows) are added to
#: the output when it is done; meanwhile each of its 8 blocks of VOXELS fetches 2 rows of the next window's output.
WINDOW = VOXELS * (STACK // 2)


@_jit(parallel=True, fastmath=FASTMATH, nogil=True)
def _bp_stacked(stacked, gblock, xr, yr, dx, dy, rows, seg, tile, cs, sn, origin, out):  # pragma: no cover - compiled
    """``out[rows[g, j], i] += sum_a interp(row j of block gblock[g] of stacked, origin + (xr[g] + i dx[g]) cos_a
    + (yr[g] + i dy[g]) sin_a)`` (32.32 fixed point as :func:`bp_lines`).

    The lines of group ``g`` share their geometry and lie on the ``STACK`` rows of one block of detector rows
    (``rows[g, j] = -1`` where row ``j`` has no line); ``stacked`` is ``[blocks, n_angles, length, 2, STACK]``:
    values, then differences scaled by 2^-32, the rows last, so that one detector position serves ``STACK``
    rows as two vector loads, a fused multiply-add and an add.

    Register blocking: ``VOXELS`` (8) consecutive voxels of a line x ``STACK`` rows are 8 vector accumulators
    held in registers over all the angles of the call (the position runs in 32.32 fixed point from voxel to
    voxel: an integer add, a shift, a conversion of the fraction and a broadcast per 16 updates); only then are
    they stored, transposed to rows, into a buffer of the job. A job is ``tile`` neighbouring groups
    (which read nearly the same detector positions) x a segment of ``seg`` voxels, done in windows of
    ``WINDOW`` voxels: a window's buffer (tile x 16 rows x 72 floats, L1/L2 cache) is added to ``out`` row by row
    when the window is done, while the output rows of the next window are prefetched. A line needs
    ``m >= VOXELS`` voxels: its last block of 8 overlaps the one before when ``m`` is not a multiple of 8 (the
    shared voxels are computed twice and stored once).
    """
    n_groups = gblock.shape[0]
    n_angles, length = stacked.shape[1], stacked.shape[2]
    m = out.shape[1]
    n_seg = (m + seg - 1) // seg
    n_tiles = (n_groups + tile - 1) // tile
    pf = stacked.reshape(-1)
    scale = 4294967296.0
    width = WINDOW + VOXELS  # a buffer row: VOXELS spare floats before the window (an overlapping last block)
    blocks_per_window = WINDOW // VOXELS
    for job in numba.prange(n_tiles * n_seg):
        g0 = (job // n_seg) * tile
        g1 = min(n_groups, g0 + tile)
        s0 = (job % n_seg) * seg
        s1 = min(m, s0 + seg)
        t0 = np.empty((g1 - g0, n_angles), np.int64)
        step = np.empty((g1 - g0, n_angles), np.int64)
        for g in range(g0, g1):
            for a in range(n_angles):
                # the row of (block, angle) in pf, in positions, goes into the integer part of the fixed-point
                # position (< 2^32: blocks x angles x length positions), which then indexes pf directly
                first = (gblock[g] * n_angles + a) * length
                t0[g - g0, a] = np.int64(np.floor((origin + xr[g] * cs[a] + yr[g] * sn[a]) * scale + 0.5)) + (first << 32)
                step[g - g0, a] = np.int64(np.floor((dx[g] * cs[a] + dy[g] * sn[a]) * scale + 0.5))
        buf = np.empty((g1 - g0) * STACK * width, np.float32)
        n_blocks = (s1 - s0 + VOXELS - 1) // VOXELS
        for k in range(g1 - g0):  # the output of the first window, wanted at its end
            for j in range(STACK):
                r = rows[g0 + k, j]
                if r >= 0:
                    for x in range(s0, min(s1, s0 + WINDOW), 16):
                        prefetch_write(out[r], x)
        for w0 in range(0, n_blocks, blocks_per_window):
            x0 = s0 + w0 * VOXELS
            x1 = min(s1, x0 + WINDOW)
            for b in range(w0, min(n_blocks, w0 + blocks_per_window)):
                i = min(s0 + b * VOXELS, s1 - VOXELS)  # s1 >= VOXELS as m >= VOXELS
                for k in range(g1 - g0):
                    a0 = vec_zero()
                    a1 = vec_zero()
                    a2 = vec_zero()
                    a3 = vec_zero()
                    a4 = vec_zero()
                    a5 = vec_zero()
                    a6 = vec_zero()
                    a7 = vec_zero()
                    for a in range(n_angles):
                        s = step[k, a]
                        us = np.uint64(s)
                        t = np.uint64(t0[k, a] + i * s)
                        a0 = _interp_step(a0, pf, t)
                        t += us
                        a1 = _interp_step(a1, pf, t)
                        t += us
                        a2 = _interp_step(a2, pf, t)
                        t += us
                        a3 = _interp_step(a3, pf, t)
                        t += us
                        a4 = _interp_step(a4, pf, t)
                        t += us
                        a5 = _interp_step(a5, pf, t)
                        t += us
                        a6 = _interp_step(a6, pf, t)
                        t += us
                        a7 = _interp_step(a7, pf, t)
                    vec_store_transposed(buf, k * STACK * width + VOXELS + (i - x0), width,
                                         a0, a1, a2, a3, a4, a5, a6, a7)
                    # the output of the next window is fetched meanwhile: rows 2 (b - w0), + 1 of group k
                    if x1 < s1:
                        for j in range(2 * (b - w0), 2 * (b - w0) + 2):
                            r = rows[g0 + k, j]
                            if r >= 0:
                                for x in range(x1, min(s1, x1 + WINDOW), 16):
                                    prefetch_write(out[r], x)
            for k in range(g1 - g0):
                for j in range(STACK):
                    r = rows[g0 + k, j]
                    if r >= 0:
                        line = out[r]
                        o = (k * STACK + j) * width + VOXELS - x0
                        for x in range(x0, x1):  # unsigned indices: no negative-index test, a vector loop
                            line[np.uint64(x)] += buf[np.uint64(o + x)]
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
