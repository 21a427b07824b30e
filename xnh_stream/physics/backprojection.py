"""Compiled back-projection kernels: numba on the CPU, a CuPy ``RawKernel`` on the GPU.

The geometry is the one of :mod:`xnh_stream.physics.fbp` (its module docstring): a voxel at ``(x, y)``
from the rotation axis reads the filtered detector row ``z`` at column ``cor + x cos(theta) + y sin(theta)``
with linear interpolation; rays off the detector read 0. Nothing here scales by ``pi / N``.

CPU kernel
----------
The unit of work is a *line*: ``m`` voxels ``(x_r + i dx, y_r + i dy)``, ``i = 0 .. m-1``, all on detector
row ``z_r``. A ``[nz, n, n]`` slab is ``nz * n`` lines along ``x``; a vertical slice is ``nz`` lines. For
each line the kernel loops over a *block of angles* and adds into the line's output row, which stays in
L1 cache across the block: the output slab is read and written once per block, not once per angle
(that traffic is the memory-bandwidth floor of a one-angle-at-a-time back-projection).

Detector rows are stored zero-padded as ``(value, forward difference)`` pairs in ``complex64``, so one
8-byte load per voxel update gives both samples of the linear interpolation. The detector position runs
in 32.32 fixed point along the line (an integer add per voxel; the fraction is exact to 2^-32 pixel and
multiplies differences stored pre-scaled by 2^-32), which on the CPU we measured (AMD Zen 4) beats the
float-to-int conversion by ~2x. Vector gathers were slower than scalar loads there (0.8 against
0.6 ns per update), so this line kernel is scalar, ~9 instructions per voxel update, and the angle block is
its lever; vectors pay off across detector rows instead (below).

Lines that share their geometry on consecutive detector rows (every slab: the line along ``x`` at one ``y``
repeats on each of its rows; the two vertical live slices) go to a second kernel that takes ``STACK`` (16) rows
at once: the detector rows are stored with the rows last (64-byte aligned, one cache line of values and one
of differences per detector position), so that one detector position, computed once, is two vector loads, a
fused multiply-add and an add for 16 voxels. That kernel is register-blocked: 8 consecutive voxels x 16 rows
are 8 AVX-512 accumulators (numba vector intrinsics in :mod:`._numba_kernels`) kept in registers across all the
angles of a block, then stored once, transposed to rows, into a buffer of the job (16 neighbouring lines x a
segment) that is added to the output row by row. Per voxel update the output is read and written once per
block of angles (64 or more), not once per angle. Lines that stand alone (the axial live slice) use the
scalar kernel.

``prange`` runs over lines (groups of lines x segments for the stacked kernel); ``workers`` threads are set for
the call and restored after.
numba's on-disk cache is used where the package directory (or numba's user cache) is writable, and
skipped otherwise (the kernels live in :mod:`._numba_kernels`, imported on first use).

GPU kernel
----------
One thread per voxel of a ``[nz, n, n]`` slab, looping over a block of angles (index arithmetic in
double precision); the output is updated in place, so the only temporaries are the padded
``(value, difference)`` rows of the current block of slices x angles (bounded by ``max_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "LineGroups",
    "backproject_lines",
    "group_lines",
    "backproject_slab_gpu",
    "padded_pairs",
    "row_margins",
    "stacked_pairs",
    "aligned_empty",
    "slab_line_groups",
    "slab_traffic",
]

#: Target size of one angle block of padded detector rows, per slice (kept in L2 cache).
_BLOCK_BYTES_PER_SLICE = 256 * 1024
#: Below this many voxel updates (~2 ms of one core) a call runs on one thread.
_MIN_PARALLEL_UPDATES = 1 << 22
#: Upper bound of the padded (value, difference) buffer of one chunk of slices x angles.
_CHUNK_BYTES = 64 * 1024 * 1024
#: Fewest lines of one geometry in one block of rows worth the stacked kernel (fewer: the line kernel; at
#: 0.19 against 0.55 ns per update, 16 lanes break even at ~6 used).
_MIN_STACKED = 6
#: Groups per block of rows (on average) from which the stacked kernel runs them in tiles.
_TILE_MIN_SHARE = 4
#: Points per segment of a stacked line: one job of the stacked kernel is 16 lines x one segment.
_STACK_SEGMENT = 512
#: Fewest angles per call of the stacked kernel (register accumulators are stored and the output read and
#: written once per call; fewer only where the call has fewer), and the bound on the stacked pairs of one
#: block of rows x one block of angles beyond that (a 2048-column row block is ~0.37 MB per angle).
_STACK_MIN_ANGLES = 64
_STACK_BLOCK_BYTES = 16 * 1024 * 1024


def row_margins(reach: float, n_det: int, cor: float) -> tuple[int, int]:
    """Zeros to put left and right of a detector row so that every point within ``reach`` voxels of the
    rotation axis falls on the padded row at any angle (rays off the detector then read 0, no masking).

    Parameters
    ----------
    reach : float
        Largest distance of a back-projected voxel from the axis, voxels.
    n_det : int
        Detector columns.
    cor : float
        Rotation-axis position in detector pixels.

    Returns
    -------
    (int, int)
        Left and right margins (at least 1 and 2).
    """
    reach = float(reach) + 1.0
    left = max(1, int(math.ceil(reach - cor)) + 1)
    right = max(2, int(math.ceil(cor + reach - (n_det - 1))) + 2)
    return left, right


def padded_pairs(filtered: Any, left: int, right: int, xp: ModuleType = np, slope_scale: float = 1.0) -> Any:
    """Zero-padded detector rows as ``(value, forward difference)`` pairs, slices first.

    Parameters
    ----------
    filtered : array ``[n_angles, nz, n_det]``
        Filtered projections.
    left, right : int
        Zero columns added on each side (:func:`row_margins`).
    xp : module
        Array module.
    slope_scale : float
        Factor applied to the differences (a power of two is exact; the CPU kernel uses 2^-32 so that
        its 32-bit fixed-point fraction multiplies them directly).

    Returns
    -------
    array ``[nz, n_angles, left + n_det + right, 2]`` float32
        ``[..., k, 0]`` = padded value ``v[k]``, ``[..., k, 1]`` = ``v[k + 1] - v[k]`` (0 for the last
        column), so that ``v[k] + w (v[k + 1] - v[k])`` interpolates linearly between ``k`` and ``k + 1``;
        the last axis is a ``complex64`` (CPU) or ``float2`` (CUDA) value.
    """
    n_angles, nz, n_det = filtered.shape
    length = left + n_det + right
    pairs = xp.zeros((nz, n_angles, length, 2), dtype=xp.float32)
    val = pairs[..., 0]
    val[:, :, left : left + n_det] = filtered.transpose(1, 0, 2)
    pairs[..., :-1, 1] = val[..., 1:] - val[..., :-1]
    if slope_scale != 1.0:
        pairs[..., 1] *= xp.float32(slope_scale)
    return pairs


def stacked_pairs(filtered: np.ndarray, left: int, right: int, stack: int, slope_scale: float = 1.0) -> np.ndarray:
    """Zero-padded ``(value, forward difference)`` detector rows in blocks of ``stack`` rows, rows last.

    Parameters
    ----------
    filtered : ndarray ``[n_angles, nz, n_det]``
        Filtered projections.
    left, right : int
        Zero columns added on each side (:func:`row_margins`).
    stack : int
        Rows per block (rows beyond ``nz`` in the last block are zeros).
    slope_scale : float
        Factor applied to the differences (as :func:`padded_pairs`).

    Returns
    -------
    ndarray ``[ceil(nz / stack), n_angles, left + n_det + right, 2, stack]`` float32
        ``[b, a, k, 0, j]`` = padded value of row ``b * stack + j`` at column ``k``, ``[b, a, k, 1, j]`` its
        difference to column ``k + 1`` (0 for the last column).
    """
    from xnh_stream.physics._numba_kernels import stack_rows  # noqa: PLC0415

    n_angles, nz, n_det = filtered.shape
    blocks = -(-nz // stack)
    out = aligned_empty((blocks, n_angles, left + n_det + right, 2, stack))
    return stack_rows(np.ascontiguousarray(filtered, dtype=np.float32), int(left), np.float32(slope_scale), out)


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised float32 array whose data starts on an ``align``-byte boundary (NumPy guarantees 16:
    a 64-byte vector load that straddles two cache lines costs two)."""
    size = int(np.prod(shape))
    raw = np.empty(size + align // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip : skip + size].reshape(shape)


@dataclass(frozen=True)
class LineGroups:
    """Lines of :func:`backproject_lines` sorted into groups for the stacked kernel, and the rest.

    Attributes
    ----------
    block : ndarray ``[G]`` int64
        Block of ``stack`` detector rows of each group (row // stack), non-decreasing.
    xr, yr, dx, dy : ndarray ``[G]`` float64
        The geometry the lines of a group share.
    rows : ndarray ``[G, stack]`` int64
        Line index (into ``out``) of the group's line on row ``block * stack + j``, -1 where none.
    singles : ndarray int64
        Lines for the line kernel (sorted: their rows are non-decreasing).
    """

    block: np.ndarray
    xr: np.ndarray
    yr: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    rows: np.ndarray
    singles: np.ndarray


def group_lines(zrow: np.ndarray, xr: np.ndarray, yr: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                stack: int, min_lines: int = _MIN_STACKED) -> LineGroups:
    """Group lines that share their geometry within blocks of ``stack`` detector rows.

    Parameters
    ----------
    zrow, xr, yr, dx, dy : ndarray ``[n_lines]``
        The lines (:func:`backproject_lines`); ``dx``, ``dy`` one per line.
    stack : int
        Rows per block.
    min_lines : int
        Groups with fewer lines are left to the line kernel (the other lanes would be wasted).

    Returns
    -------
    LineGroups
    """
    zrow = np.asarray(zrow, dtype=np.int64)
    geometry = [np.asarray(v, dtype=np.float64) for v in (xr, yr, dx, dy)]
    block = zrow // stack
    order = np.lexsort((zrow, *geometry[::-1], block))
    keys = np.stack([block[order].astype(np.float64)] + [v[order] for v in geometry])
    z = zrow[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = np.any(keys[:, 1:] != keys[:, :-1], axis=0) | (z[1:] == z[:-1])  # a duplicate line: own group
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, order.size))
    gid = np.cumsum(new) - 1
    big = size >= min_lines
    keep = big[gid]
    kept_id = np.cumsum(big) - 1
    rows = np.full((int(big.sum()), stack), -1, dtype=np.int64)
    rows[kept_id[gid[keep]], z[keep] % stack] = order[keep]
    take = order[start[big]]
    return LineGroups(block=block[take], xr=geometry[0][take], yr=geometry[1][take], dx=geometry[2][take],
                      dy=geometry[3][take], rows=rows, singles=np.sort(order[~keep]))


def slab_line_groups(nz: int, n: int, stack: int, min_lines: int = _MIN_STACKED) -> LineGroups:
    """:func:`group_lines` of the lines of a ``[nz, n, n]`` slab as :func:`xnh_stream.physics.fbp.backproject_many`
    lays them out (line ``z * n + y`` along ``x`` at ``y``, row ``z``), built directly instead of sorted: the
    same groups and singles, the line along ``x`` at one ``y`` on the rows of each block."""
    c = (n - 1) / 2.0
    blocks = -(-nz // stack)
    count = np.minimum(stack, nz - np.arange(blocks) * stack)  # rows of each block
    kept = np.flatnonzero(count >= min_lines)
    block = np.repeat(kept, n)
    y = np.tile(np.arange(n), kept.size)
    z = block[:, None] * stack + np.arange(stack)[None, :]
    rows = np.where(z < nz, z * n + y[:, None], -1).astype(np.int64)
    alone = np.flatnonzero(count < min_lines)
    singles = (np.arange(nz)[np.isin(np.arange(nz) // stack, alone)][:, None] * n + np.arange(n)).ravel()
    return LineGroups(block=block.astype(np.int64), xr=np.full(block.size, -c), yr=y - c,
                      dx=np.ones(block.size), dy=np.zeros(block.size), rows=rows, singles=singles.astype(np.int64))


def _angle_block(length: int, n_angles: int) -> int:
    return max(1, min(n_angles, _BLOCK_BYTES_PER_SLICE // (8 * length)))


def backproject_lines(
    filtered: np.ndarray,
    thetas: np.ndarray,
    cor: float,
    zrow: np.ndarray,
    xr: np.ndarray,
    yr: np.ndarray,
    direction: tuple[Any, Any],
    out: np.ndarray,
    workers: int = 1,
    groups: LineGroups | None = None,
) -> np.ndarray:
    """Back-project filtered projections onto lines of voxels (CPU, compiled), adding into ``out``.

    Line ``r`` is the points ``(x, y) = (xr[r] + i dx[r], yr[r] + i dy[r])`` (voxels from the rotation axis),
    ``i = 0 .. m-1``, on detector row ``zrow[r]``; ``out[r, i]`` receives
    ``sum_a interp(filtered[a, zrow[r]], cor + x cos(theta_a) + y sin(theta_a))``.

    Parameters
    ----------
    filtered : ndarray ``[n_angles, nz, n_det]`` float32
        Filtered projections.
    thetas : ndarray ``[n_angles]``
        Angles in radians (finite).
    cor : float
        Rotation-axis position in detector pixels.
    zrow : ndarray ``[n_lines]`` int
        Detector row of each line (``0 .. nz-1``), non-decreasing.
    xr, yr : ndarray ``[n_lines]`` float
        First point of each line.
    direction : (float or ndarray ``[n_lines]``, same)
        ``(dx, dy)`` step between the points of a line (one for all lines, or one per line).
    out : ndarray ``[n_lines, m]`` float32
        Accumulated in place (a view with contiguous rows is fine).
    workers : int
        Threads (``<= 0``: all numba threads).
    groups : LineGroups, optional
        :func:`group_lines` of these lines with ``STACK`` rows and ``_MIN_STACKED`` lines when known
        (:func:`slab_line_groups`); computed otherwise.

    Returns
    -------
    ndarray
        ``out``.
    """
    from xnh_stream.physics._numba_kernels import STACK, VOXELS, slp_vectorized, threads  # noqa: PLC0415

    n_angles, nz, n_det = filtered.shape
    n_lines, m = out.shape
    if n_lines == 0 or m == 0 or n_angles == 0:
        return out
    dx = np.ascontiguousarray(np.broadcast_to(np.asarray(direction[0], dtype=np.float64), (n_lines,)))
    dy = np.ascontiguousarray(np.broadcast_to(np.asarray(direction[1], dtype=np.float64), (n_lines,)))
    zrow = np.asarray(zrow, dtype=np.int64)
    xr = np.asarray(xr, dtype=np.float64)
    yr = np.asarray(yr, dtype=np.float64)
    if zrow.shape != (n_lines,) or xr.shape != (n_lines,) or yr.shape != (n_lines,):
        raise ValueError(f"zrow, xr, yr must have one entry per line ({n_lines})")
    if zrow[0] < 0 or zrow[-1] >= nz or np.any(np.diff(zrow) < 0):
        raise ValueError(f"line rows must be sorted and lie in 0 .. {nz - 1}")
    if out.dtype != np.float32 or out.strides[1] != 4:
        raise ValueError("out must be float32 with contiguous rows")
    filtered = np.ascontiguousarray(filtered, dtype=np.float32)
    # Largest distance from the axis of any point (the ends of a segment are its farthest points).
    x_end, y_end = xr + (m - 1) * dx, yr + (m - 1) * dy
    reach = float(np.sqrt(max(np.max(xr * xr + yr * yr), np.max(x_end * x_end + y_end * y_end))))
    left, right = row_margins(reach, n_det, float(cor))
    length = left + n_det + right
    origin = float(cor) + left
    thetas = np.asarray(thetas, dtype=np.float64)
    cs, sn = np.cos(thetas), np.sin(thetas)

    if n_angles * n_lines * m < _MIN_PARALLEL_UPDATES:
        workers = 1  # a few ms of work: waking other threads costs more than it gains on a busy machine
    # the stacked kernel works on blocks of VOXELS points: shorter lines all go to the line kernel
    if groups is None or m < VOXELS:
        groups = group_lines(zrow, xr, yr, dx, dy, STACK, min_lines=_MIN_STACKED if m >= VOXELS else n_lines + 1)
    with threads(workers), slp_vectorized():
        if groups.block.size:
            _stacked(filtered, groups, cs, sn, origin, left, right, out)
        if groups.singles.size == n_lines:
            _singles(filtered, zrow, xr, yr, dx, dy, cs, sn, origin, left, right, out)
        elif groups.singles.size:
            s = groups.singles
            part = np.zeros((s.size, m), dtype=np.float32)
            _singles(filtered, zrow[s], xr[s], yr[s], dx[s], dy[s], cs, sn, origin, left, right, part)
            out[s] += part
    return out


def slab_traffic(nz: int, n: int, n_det: int, n_angles: int, cor: float | None = None) -> dict[str, float]:
    """Bytes moved to or from memory per voxel update when the CPU kernels back-project ``n_angles`` angles of
    ``[n_angles, nz, n_det]`` filtered projections into a ``[nz, n, n]`` slab in one call (a model from the
    blocking the code uses, for the benches: traffic that stays in L1/L2 cache is not counted).

    Returns
    -------
    dict
        ``output``: the slab read and written once per block of angles; ``pairs``: the stacked
        ``(value, difference)`` rows written once and read back once per block; ``input``: the filtered
        projections read once; ``total``; ``angle_block``: angles per call of the stacked kernel;
        ``pairs_block_bytes``: stacked pairs of one block of 16 rows x one block of angles (what each tile of
        16 lines re-reads from the last-level cache when it exceeds L2).
    """
    from xnh_stream.physics._numba_kernels import STACK  # noqa: PLC0415

    cor = (n_det - 1) / 2.0 if cor is None else float(cor)
    left, right = row_margins((n - 1) / math.sqrt(2.0), n_det, cor)
    length = left + n_det + right
    per_angle = 8 * length * STACK
    block = min(n_angles, max(_STACK_MIN_ANGLES, _STACK_BLOCK_BYTES // per_angle))
    n_blocks = -(-n_angles // block)
    z_blocks = -(-nz // STACK)
    updates = float(n_angles) * nz * n * n
    output = 8.0 * nz * n * n * n_blocks
    pairs = 2.0 * z_blocks * n_angles * per_angle
    inputs = 4.0 * n_angles * nz * n_det
    return {"output": output / updates, "pairs": pairs / updates, "input": inputs / updates,
            "total": (output + pairs + inputs) / updates, "angle_block": float(block),
            "pairs_block_bytes": float(block * per_angle)}


def _singles(filtered: np.ndarray, zrow: np.ndarray, xr: np.ndarray, yr: np.ndarray, dx: np.ndarray,
             dy: np.ndarray, cs: np.ndarray, sn: np.ndarray, origin: float, left: int, right: int,
             out: np.ndarray) -> None:
    """The line kernel over chunks of detector rows x blocks of angles (bounded padded pairs)."""
    from xnh_stream.physics._numba_kernels import bp_lines  # noqa: PLC0415

    n_angles, _, n_det = filtered.shape
    length = left + n_det + right
    block = _angle_block(length, n_angles)
    rows_per_chunk = max(1, _CHUNK_BYTES // (8 * length * block))
    for z0 in range(int(zrow[0]), int(zrow[-1]) + 1, rows_per_chunk):
        z1 = min(z0 + rows_per_chunk, int(zrow[-1]) + 1)
        l0, l1 = np.searchsorted(zrow, [z0, z1])
        if l1 == l0:
            continue
        local = zrow[l0:l1] - z0
        for a0 in range(0, n_angles, block):
            a1 = min(n_angles, a0 + block)
            pairs = padded_pairs(filtered[a0:a1, z0:z1], left, right, slope_scale=2.0**-32)
            pairs = pairs.view(np.complex64)[..., 0]
            bp_lines(pairs, local, xr[l0:l1], yr[l0:l1], dx[l0:l1], dy[l0:l1], cs[a0:a1], sn[a0:a1],
                     origin, out[l0:l1])


def _stacked(filtered: np.ndarray, groups: LineGroups, cs: np.ndarray, sn: np.ndarray, origin: float,
             left: int, right: int, out: np.ndarray) -> None:
    """The stacked kernel over chunks of row blocks x blocks of angles (bounded stacked pairs)."""
    from xnh_stream.physics._numba_kernels import STACK, TILE_GROUPS, VOXELS, bp_stacked  # noqa: PLC0415

    n_angles, nz, n_det = filtered.shape
    length = left + n_det + right
    per_angle = 8 * length * STACK  # bytes of one block of rows, one angle
    block = min(n_angles, max(_STACK_MIN_ANGLES, _STACK_BLOCK_BYTES // per_angle))
    blocks_per_chunk = max(1, _CHUNK_BYTES // (per_angle * block))
    first, last = int(groups.block[0]), int(groups.block[-1]) + 1
    # groups of one block of rows (a slab's lines at neighbouring y) run in tiles that share detector positions;
    # groups alone on their block (the vertical live slices) one at a time
    tile = TILE_GROUPS if groups.block.size >= _TILE_MIN_SHARE * (last - first) else 1
    for b0 in range(first, last, blocks_per_chunk):
        b1 = min(last, b0 + blocks_per_chunk)
        g0, g1 = np.searchsorted(groups.block, [b0, b1])
        if g1 == g0:
            continue
        local = groups.block[g0:g1] - b0
        z0, z1 = b0 * STACK, min(nz, b1 * STACK)
        for a0 in range(0, n_angles, block):
            a1 = min(n_angles, a0 + block)
            stacked = stacked_pairs(filtered[a0:a1, z0:z1], left, right, STACK, slope_scale=2.0**-32)
            bp_stacked(stacked, local, groups.xr[g0:g1], groups.yr[g0:g1], groups.dx[g0:g1], groups.dy[g0:g1],
                       groups.rows[g0:g1], max(VOXELS, _STACK_SEGMENT), tile, cs[a0:a1], sn[a0:a1], origin, out)


# --------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------
_CUDA_SOURCE = r"""
extern "C" __global__ void bp_slab(const float2* __restrict__ pairs,   // [nzc, na, length]
                                   const double* __restrict__ cs, const double* __restrict__ sn,
                                   float* __restrict__ out,             // [nzc, n, n], in place
                                   int nzc, int n, int na, int length, double origin)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)nzc * n * n;
    if (idx >= total) return;
    int ix = (int)(idx % n);
    int iy = (int)((idx / n) % n);
    int z = (int)(idx / ((long long)n * n));
    double c = 0.5 * (n - 1);
    double x = ix - c, y = iy - c;
    const float2* row = pairs + (long long)z * na * length;
    float acc = 0.0f;
    for (int a = 0; a < na; ++a) {
        double t = origin + x * cs[a] + y * sn[a];
        int k = (int)t;                  // t > 0 by construction of the margins: truncation is floor
        float w = (float)(t - (double)k);
        float2 p = row[(long long)a * length + k];
        acc += p.x + w * p.y;
    }
    out[idx] += acc;
}
"""


def _cuda_kernel() -> Any:  # pragma: no cover - needs a GPU
    import cupy  # noqa: PLC0415

    global _CUDA_KERNEL
    if _CUDA_KERNEL is None:
        _CUDA_KERNEL = cupy.RawKernel(_CUDA_SOURCE, "bp_slab")
    return _CUDA_KERNEL


_CUDA_KERNEL: Any = None


def backproject_slab_gpu(
    filtered: Any, thetas: np.ndarray, cor: float, out: Any, max_bytes: int = 256 * 1024 * 1024
) -> Any:  # pragma: no cover - needs a GPU
    """Back-project filtered projections into a ``[nz, n, n]`` CuPy slab in place, in bounded chunks.

    Parameters
    ----------
    filtered : cupy.ndarray ``[n_angles, nz, n_det]`` float32
        Filtered projections.
    thetas : ndarray ``[n_angles]``
        Angles in radians.
    cor : float
        Rotation-axis position in detector pixels.
    out : cupy.ndarray ``[nz, n, n]`` float32, C-contiguous
        Accumulated in place.
    max_bytes : int
        Bound on the padded (value, difference) rows of one chunk of slices x angles, the only
        temporary (the output is never copied).

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    import cupy  # noqa: PLC0415

    n_angles, nz, n_det = filtered.shape
    n = out.shape[1]
    left, right = row_margins((n - 1) / math.sqrt(2.0), n_det, float(cor))
    length = left + n_det + right
    origin = float(cor) + left
    thetas = np.asarray(thetas, dtype=np.float64)
    block = max(1, min(n_angles, 64, int(max_bytes) // (8 * length)))
    rows = max(1, int(max_bytes) // (8 * length * block))
    kernel = _cuda_kernel()
    threads = 256
    for z0 in range(0, nz, rows):
        z1 = min(nz, z0 + rows)
        sub = out[z0:z1]  # contiguous view of the slab
        total = (z1 - z0) * n * n
        for a0 in range(0, n_angles, block):
            a1 = min(n_angles, a0 + block)
            pairs = padded_pairs(filtered[a0:a1, z0:z1], left, right, xp=cupy)
            cs = cupy.asarray(np.cos(thetas[a0:a1]))
            sn = cupy.asarray(np.sin(thetas[a0:a1]))
            kernel(((total + threads - 1) // threads,), (threads,),
                   (pairs, cs, sn, sub, np.int32(z1 - z0), np.int32(n), np.int32(a1 - a0),
                    np.int32(length), np.float64(origin)))
    return out
