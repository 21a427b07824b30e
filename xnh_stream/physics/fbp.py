"""Parallel-beam filtered back-projection, accumulated angle by angle (the rotation axis search is in ``cor``).

Coordinate convention (project-wide; the simulator's forward projector uses it too)
-------------------------------------------------------------------------------------
* Volumes are ``[z, y, x]``; ``z`` (rows) is the rotation axis. Projections are ``[rows, columns]``
  = ``[z, t]``; a stack of projections is ``[n_angles, z, t]``.
* In a slice of ``n`` x ``n`` voxels the rotation axis sits at the grid centre, index ``(n - 1) / 2`` in
  both ``y`` and ``x``; the unit of length is one voxel = one detector pixel.
* A point at ``(x, y)`` relative to the axis projects at angle ``theta`` (radians) to the detector
  coordinate ``t = x cos(theta) + y sin(theta)``. Detector column ``j`` is at ``t = j - cor``, where
  ``cor`` is the rotation-axis position in detector pixels (``0 .. n_det - 1``; a centred detector has
  ``cor = (n_det - 1) / 2``). So a voxel at array index ``[z, iy, ix]`` lands on column
  ``cor + (ix - c) cos(theta) + (iy - c) sin(theta)`` with ``c = (n - 1) / 2``.

Units
-----
If projections are line integrals in units of voxel length (e.g. ``-ln(I/I0)`` of a voxel-sized path
gives ``mu * voxel``; a phase map gives ``-k delta * voxel`` summed), the reconstruction is the
quantity per voxel (``mu * voxel``, ``delta * k * voxel`` ...): divide by the voxel size in metres to
get per-metre values. Reconstruction is ``V = (pi / N) * sum_theta backproject(filter(p_theta))`` for
``N`` angles evenly spread over ``pi`` **or** over ``2 pi`` (each ray is then seen twice over twice as
many angles, so ``pi / N`` still holds).

Mapping to astra-toolbox (found by test, see ``tests/test_fbp.py``)
-------------------------------------------------------------------
astra's 2D ``parallel`` geometry with ``det_spacing = 1``, a volume geometry ``n x n`` and the
sinogram ``[n_angles, n_det]`` reproduces this convention with ``astra_angles = -theta`` and the
astra image equal to our slice ``[y, x]`` (no flip). astra puts the rotation axis on the detector
centre ``(n_det - 1) / 2`` and its CPU ``FBP`` takes only the plain ``parallel`` geometry (not
``parallel_vec``), so an off-centre ``cor`` is matched by moving the sinogram columns left by
``cor - (n_det - 1) / 2``. With ``FilterType`` equal to our window name, astra's CPU FBP ('linear'
projector) agrees with ours to correlation > 0.9997 and scale within 0.2 %.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

from xnh_stream.physics.xp import bin_volume, check_finite, fft_module, fft_workers

WINDOWS: tuple[str, ...] = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
PADDINGS: tuple[str, ...] = ("zeros", "edge")

#: Elements (slices x pixels) gathered per chunk in :func:`_backproject_numpy` (temporaries stay in cache).
_CHUNK_ELEMENTS = 1 << 17


# --------------------------------------------------------------------------------------------------
# Ramp filter
# --------------------------------------------------------------------------------------------------
def padded_length(n_det: int) -> int:
    """Length of the zero-padded detector row used by the ramp filter: a fast FFT length ``>= 2 n_det``."""
    if n_det < 1:
        raise ValueError(f"n_det must be >= 1, got {n_det}")
    return int(scipy.fft.next_fast_len(2 * int(n_det), real=True))


@lru_cache(maxsize=64)
def ramp_filter(n_det: int, window: str = "shepp-logan", dtype: str = "float32") -> np.ndarray:
    """Windowed ramp filter in the real-FFT domain of the padded detector row.

    Built from the spatial-domain discrete ramp (Kak & Slaney eq. 3.61, unit sampling):
    ``h[0] = 1/4``, ``h[k] = -1 / (pi k)^2`` for odd ``k``, 0 for even ``k != 0``, so the DC gain is the
    correct small positive value rather than 0 (no DC bias), then multiplied by the window
    ``W(f)`` with ``f`` in cycles / pixel (Nyquist 0.5): ram-lak ``1``, shepp-logan ``sinc(f)``,
    cosine ``cos(pi f)``, hamming ``0.54 + 0.46 cos(2 pi f)``, hann ``0.5 + 0.5 cos(2 pi f)``.

    Parameters
    ----------
    n_det : int
        Number of detector columns.
    window : str
        One of :data:`WINDOWS`.
    dtype : str
        Floating dtype name of the returned filter.

    Returns
    -------
    numpy.ndarray
        Read-only real array of length ``padded_length(n_det) // 2 + 1``.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown ramp-filter window {window!r}; expected one of {WINDOWS}")
    length = padded_length(n_det)
    k = np.arange(length)
    dist = np.minimum(k, length - k)  # circular distance to 0
    h = np.zeros(length, dtype=np.float64)
    h[0] = 0.25
    odd = dist % 2 == 1
    h[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    filt = np.fft.rfft(h).real
    f = np.fft.rfftfreq(length)
    if window == "shepp-logan":
        filt = filt * np.sinc(f)
    elif window == "cosine":
        filt = filt * np.cos(np.pi * f)
    elif window == "hamming":
        filt = filt * (0.54 + 0.46 * np.cos(2 * np.pi * f))
    elif window == "hann":
        filt = filt * (0.5 + 0.5 * np.cos(2 * np.pi * f))
    out = filt.astype(np.dtype(dtype))
    out.flags.writeable = False
    return out


def filter_projection(
    proj: Any, window: str = "shepp-logan", xp: ModuleType = np, padding: str = "zeros"
) -> Any:
    """Ramp-filter projections along their last (detector-column) axis.

    Parameters
    ----------
    proj : array ``[..., n_det]``
        Projection(s); any leading shape (rows, angles).
    window : str
        Apodisation window of the ramp, one of :data:`WINDOWS`.
    xp : module
        Array module (numpy or cupy).
    padding : {"zeros", "edge"}
        How the row is extended to the padded length: zeros (exact for a sample inside the field of
        view), or the edge values (fewer truncation artefacts in local tomography).

    Returns
    -------
    array ``[..., n_det]`` float32
        Filtered projection(s), ready for :func:`backproject`.
    """
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
    proj = xp.asarray(proj)
    if proj.ndim < 1 or proj.shape[-1] < 1:
        raise ValueError(f"projection must have at least one detector column, got shape {proj.shape}")
    check_finite(proj, "projection", xp)
    n_det = int(proj.shape[-1])
    length = padded_length(n_det)
    fft = fft_module(xp)
    proj = proj.astype(xp.float32, copy=False)
    if padding == "zeros":
        spec = fft.rfft(proj, n=length, axis=-1, **fft_workers(xp))
    else:
        padded = xp.empty(proj.shape[:-1] + (length,), dtype=xp.float32)
        padded[..., :n_det] = proj
        right = (length - n_det) // 2
        padded[..., n_det : n_det + right] = proj[..., -1:]
        padded[..., n_det + right :] = proj[..., :1]  # wraps around to the left of column 0
        spec = fft.rfft(padded, axis=-1, **fft_workers(xp))
    spec *= xp.asarray(ramp_filter(n_det, window, "float32"))
    out = fft.irfft(spec, n=length, axis=-1, **fft_workers(xp))[..., :n_det]
    return xp.ascontiguousarray(out, dtype=xp.float32)


# --------------------------------------------------------------------------------------------------
# Back-projection
# --------------------------------------------------------------------------------------------------
def _index_map(n: int, theta: float, origin: float, xp: ModuleType) -> tuple[Any, Any]:
    """Per-angle interpolation map of an ``n x n`` slice, flattened ``[n * n]`` (row-major ``y, x``).

    ``origin`` is the padded-row position of the rotation axis (``cor`` plus the left margin). Returns
    ``(k, w)`` such that the interpolated value is ``row[k] + w * (row[k + 1] - row[k])``.
    """
    c = xp.arange(n, dtype=xp.float32) - xp.float32((n - 1) / 2.0)
    tx = c * xp.float32(math.cos(theta)) + xp.float32(origin)
    ty = c * xp.float32(math.sin(theta))
    t = tx[None, :] + ty[:, None]
    t = t.ravel()
    k = t.astype(xp.intp)  # t > 0 by construction of the margins: truncation is floor
    w = t - xp.floor(t)
    return k, w


def _pair_rows(filtered: Any, left: int, right: int, xp: ModuleType) -> tuple[Any, Any]:
    """Zero-padded rows ``[0 * left, q, 0 * right]`` and their forward differences (last one 0)."""
    nz, n_det = filtered.shape
    val = xp.zeros((nz, left + n_det + right), dtype=xp.float32)
    val[:, left : left + n_det] = filtered
    dif = xp.zeros_like(val)
    dif[:, :-1] = val[:, 1:] - val[:, :-1]
    return val, dif


def _check_backprojection(filtered: Any, thetas: np.ndarray, cor: float, out: Any, xp: ModuleType) -> None:
    """Validate the arguments of :func:`backproject_many` (shapes, dtype, finite geometry)."""
    if filtered.ndim != 3:
        raise ValueError(f"filtered projections must be [n_angles, nz, n_det], got shape {filtered.shape}")
    if out.ndim != 3 or out.shape[1] != out.shape[2]:
        raise ValueError(f"out must be a [nz, n, n] volume, got shape {out.shape}")
    if out.shape[0] != filtered.shape[1]:
        raise ValueError(f"out has {out.shape[0]} slices but the projection has {filtered.shape[1]} rows")
    if out.dtype != xp.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array")
    if thetas.size != filtered.shape[0]:
        raise ValueError(f"{thetas.size} angles for {filtered.shape[0]} projections")
    if not (np.isfinite(thetas).all() and math.isfinite(cor)):
        raise ValueError(f"theta and cor must be finite, got theta={thetas}, cor={cor}")
    if filtered.shape[2] < 1:
        raise ValueError("filtered projections need at least one detector column")


#: Slices per call of the line kernel in :func:`backproject_many` (bounds its per-line tables).
_LINES_PER_CALL = 1 << 16


def backproject_many(
    filtered: Any,
    thetas: Any,
    cor: float,
    out: Any,
    xp: ModuleType = np,
    workers: int = 1,
) -> Any:
    """Add filtered projections of several angles, back-projected with linear interpolation, into ``out``.

    No ``pi / N`` scaling is applied here (see :class:`FBPAccumulator` and :func:`fbp`). Rays that miss
    the detector read 0. Giving many angles at once is faster than one call per angle: the output slab
    is then read and written once per block of angles (:mod:`xnh_stream.physics.backprojection`).

    Parameters
    ----------
    filtered : array ``[n_angles, nz, n_det]``
        Ramp-filtered projections (:func:`filter_projection`).
    thetas : array_like ``[n_angles]``
        Projection angles in radians.
    cor : float
        Rotation-axis position in detector pixels (module convention).
    out : array ``[nz, n, n]`` float32, C-contiguous
        Volume slab accumulated in place; its grid is centred on the rotation axis.
    xp : module
        Array module: numpy (compiled multi-threaded kernel) or cupy (CUDA kernel, bounded temporaries).
    workers : int
        CPU threads for this call (``<= 0``: all); ignored on the GPU.

    Returns
    -------
    array
        ``out`` (for chaining).
    """
    from xnh_stream.physics.backprojection import (  # noqa: PLC0415
        backproject_lines,
        backproject_slab_gpu,
        slab_line_groups,
    )
    from xnh_stream.physics._numba_kernels import STACK  # noqa: PLC0415

    filtered = xp.asarray(filtered)
    thetas = np.atleast_1d(np.asarray(thetas if xp is np else xp.asnumpy(xp.asarray(thetas)),
                                      dtype=np.float64))
    cor = float(cor)
    _check_backprojection(filtered, thetas.ravel(), cor, out, xp)
    thetas = thetas.ravel()
    filtered = xp.ascontiguousarray(filtered, dtype=xp.float32)
    if xp is not np:
        return backproject_slab_gpu(filtered, thetas, cor, out)
    nz, n = out.shape[0], out.shape[1]
    c = (n - 1) / 2.0
    per_call = max(1, _LINES_PER_CALL // n)
    lines = out.reshape(nz * n, n)
    for z0 in range(0, nz, per_call):
        z1 = min(nz, z0 + per_call)
        zrow = np.repeat(np.arange(z1 - z0), n)
        yr = np.tile(np.arange(n) - c, z1 - z0)
        xr = np.full(zrow.size, -c)
        backproject_lines(filtered[:, z0:z1], thetas, cor, zrow, xr, yr, (1.0, 0.0),
                          lines[z0 * n : z1 * n], workers=workers, groups=slab_line_groups(z1 - z0, n, STACK))
    return out


def backproject(
    filtered: Any,
    theta: float,
    cor: float,
    out: Any,
    xp: ModuleType = np,
    workers: int = 1,
) -> Any:
    """Add one filtered projection, back-projected with linear interpolation, into ``out`` in place.

    No ``pi / N`` scaling is applied here (see :class:`FBPAccumulator` and :func:`fbp`); for several
    angles at once :func:`backproject_many` is faster.

    Parameters
    ----------
    filtered : array ``[nz, n_det]``
        Ramp-filtered projection (:func:`filter_projection`).
    theta : float
        Projection angle in radians.
    cor : float
        Rotation-axis position in detector pixels (module convention).
    out : array ``[nz, n, n]`` float32, C-contiguous
        Volume slab accumulated in place; its grid is centred on the rotation axis.
    xp : module
        Array module.
    workers : int
        CPU threads for this call (``<= 0``: all).

    Returns
    -------
    array
        ``out`` (for chaining).
    """
    filtered = xp.asarray(filtered)
    if filtered.ndim != 2:
        raise ValueError(f"filtered projection must be [nz, n_det], got shape {filtered.shape}")
    return backproject_many(filtered[None], [float(theta)], cor, out, xp=xp, workers=workers)


def _backproject_numpy(filtered: np.ndarray, theta: float, cor: float, out: np.ndarray) -> np.ndarray:
    """Reference NumPy back-projection of one angle (the previous implementation, kept for the tests).

    Same contract as :func:`backproject` on the host: vectorised gathers in chunks, one thread,
    index map in float32 (~3-6 ns per voxel update).
    """
    from xnh_stream.physics.backprojection import row_margins  # noqa: PLC0415

    filtered = np.asarray(filtered, dtype=np.float32)
    _check_backprojection(filtered[None], np.array([theta], dtype=np.float64), float(cor), out, np)
    nz, n_det = filtered.shape
    n = out.shape[1]
    left, right = row_margins((n - 1) / math.sqrt(2.0), n_det, float(cor))
    k, w = _index_map(n, float(theta), float(cor) + left, np)
    val, dif = _pair_rows(filtered, left, right, np)
    flat = out.reshape(nz, n * n)
    # Gather (value, difference) pairs in one go through a complex64 view.
    pair = np.empty(val.shape + (2,), dtype=np.float32)
    pair[..., 0] = val
    pair[..., 1] = dif
    pc = pair.view(np.complex64)[..., 0]
    chunk = max(1024, _CHUNK_ELEMENTS // nz)
    for start in range(0, n * n, chunk):
        stop = min(start + chunk, n * n)
        g = np.take(pc, k[start:stop], axis=1)
        buf = g.imag * w[start:stop]
        buf += g.real
        flat[:, start:stop] += buf
    return out


def _check_cor(cor: float, n_det: int) -> float:
    cor = float(cor)
    if not math.isfinite(cor):
        raise ValueError(f"cor must be finite, got {cor}")
    if not -0.5 <= cor <= n_det - 0.5:
        raise ValueError(f"cor={cor} lies outside the detector (0 .. {n_det - 1})")
    return cor


class FBPAccumulator:
    """Filtered back-projection built up one projection at a time, split in even / odd halves.

    Parameters
    ----------
    n_slices : int
        Detector rows (= reconstructed slices).
    n_det : int
        Detector columns.
    n_out : int, optional
        Slice size ``n_out x n_out`` (default ``n_det``), centred on the rotation axis.
    cor : float, optional
        Rotation-axis position in detector pixels, fixed for the whole scan (default centred).
    window : str
        Ramp window, one of :data:`WINDOWS`.
    xp : module
        Array module.
    padding : {"zeros", "edge"}
        Ramp-filter padding (:func:`filter_projection`).
    workers : int
        CPU threads of the back-projection (``<= 0``: all).
    batch : int
        Filtered projections gathered before they are back-projected together (CPU): one angle per call
        reads and writes the whole slab for each angle (1.0-1.6 ns per voxel update measured), a batch of
        8 once (~0.27 ns). Anything that reads the volume (:meth:`volume`, :meth:`half_volumes`,
        :meth:`binned_halves`, :meth:`flush`) back-projects what is waiting first; so does an add when the
        oldest waiting projection is older than ``max_wait_s``. 1 (default): at once.
    max_wait_s : float
        Longest a projection waits in a batch, checked at each add.

    Notes
    -----
    ``add(p, theta, index)`` sends the projection to half ``index % 2`` (the caller's angle index, so the
    halves are the even and odd angles whatever the order of arrival). ``volume()`` is
    ``pi / N * (S_0 + S_1)``; ``half_volumes()`` is ``(pi / N_0 * S_0, pi / N_1 * S_1)``, so
    ``volume = (N_0 h_0 + N_1 h_1) / N``.
    """

    def __init__(
        self,
        n_slices: int,
        n_det: int,
        n_out: int | None = None,
        cor: float | None = None,
        window: str = "shepp-logan",
        xp: ModuleType = np,
        padding: str = "zeros",
        workers: int = 1,
        batch: int = 1,
        max_wait_s: float = 1.0,
    ) -> None:
        if n_slices < 1 or n_det < 2:
            raise ValueError(f"need n_slices >= 1 and n_det >= 2, got {n_slices}, {n_det}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if window not in WINDOWS:
            raise ValueError(f"unknown ramp-filter window {window!r}; expected one of {WINDOWS}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
        self.n_slices = int(n_slices)
        self.n_det = int(n_det)
        self.n_out = int(n_out) if n_out is not None else self.n_det
        if self.n_out < 1:
            raise ValueError(f"n_out must be >= 1, got {n_out}")
        self.cor = _check_cor(cor if cor is not None else (self.n_det - 1) / 2.0, self.n_det)
        self.window = window
        self.padding = padding
        self.workers = int(workers)
        self.xp = xp
        shape = (self.n_slices, self.n_out, self.n_out)
        self._sums = (xp.zeros(shape, dtype=xp.float32), xp.zeros(shape, dtype=xp.float32))
        self._counts = [0, 0]
        self.batch = int(batch) if xp is np else 1  # the GPU kernel reads the slab from device memory
        self.max_wait_s = float(max_wait_s)
        self._waiting: list[tuple[Any, float, int]] = []  # (filtered projection, theta, half)
        self._waiting_since = 0.0

    @property
    def n_added(self) -> int:
        """Number of projections added so far."""
        return self._counts[0] + self._counts[1]

    @property
    def counts(self) -> tuple[int, int]:
        """Projections in the even and odd halves."""
        return self._counts[0], self._counts[1]

    def add(self, projection: Any, theta: float, index: int | None = None) -> None:
        """Filter and back-project one projection ``[n_slices, n_det]`` taken at ``theta`` (radians).

        ``index`` is the caller's angle index; its parity picks the half (default: order of arrival).
        """
        xp = self.xp
        projection = xp.asarray(projection)
        if projection.shape != (self.n_slices, self.n_det):
            raise ValueError(
                f"projection shape {projection.shape} does not match the accumulator "
                f"({self.n_slices}, {self.n_det})"
            )
        if index is None:
            index = self.n_added
        half = int(index) % 2
        self._project(filter_projection(projection, self.window, xp=xp, padding=self.padding), theta, half)
        self._counts[half] += 1

    def add_filtered(self, filtered: Any, theta: float, index: int | None = None, count: bool = True) -> None:
        """Back-project an already filtered projection ``[n_slices, n_det]`` (filtered once, shared with
        e.g. :class:`xnh_stream.physics.slices.OrthoSlices`).

        ``index`` picks the half by parity (default: order of arrival). ``count=False`` adds a correction
        to an angle already counted (e.g. the filtered difference final - preview; FBP is linear).
        """
        xp = self.xp
        filtered = xp.asarray(filtered)
        if filtered.shape != (self.n_slices, self.n_det):
            raise ValueError(f"filtered projection shape {filtered.shape} does not match the accumulator "
                             f"({self.n_slices}, {self.n_det})")
        half = int(self.n_added if index is None else index) % 2
        if not count and self._counts[half] == 0:
            raise ValueError("a correction needs a projection added to that half first")
        self._project(filtered, theta, half)
        if count:
            self._counts[half] += 1

    def add_many(self, projections: Any, thetas: Any, indices: Any | None = None) -> None:
        """Filter and back-project several projections ``[n, n_slices, n_det]`` at once (faster than
        :meth:`add` per angle: the halves are read and written once per block of angles).

        ``indices`` are the caller's angle indices (parity picks the half; default: order of arrival).
        """
        xp = self.xp
        projections = xp.asarray(projections)
        if projections.ndim != 3 or projections.shape[1:] != (self.n_slices, self.n_det):
            raise ValueError(
                f"projections shape {projections.shape} does not match the accumulator "
                f"(n, {self.n_slices}, {self.n_det})"
            )
        n = projections.shape[0]
        thetas = np.asarray(thetas, dtype=np.float64).ravel()
        if thetas.size != n:
            raise ValueError(f"{thetas.size} angles for {n} projections")
        if indices is None:
            indices = np.arange(self.n_added, self.n_added + n)
        parity = np.asarray(indices, dtype=np.int64).ravel() % 2
        if parity.size != n:
            raise ValueError(f"{parity.size} indices for {n} projections")
        filtered = filter_projection(projections, self.window, xp=xp, padding=self.padding)
        for half in (0, 1):
            sel = np.nonzero(parity == half)[0]
            if sel.size:
                part = filtered[xp.asarray(sel)] if sel.size < n else filtered
                backproject_many(part, thetas[sel], self.cor,
                                 self._sums[half], xp=xp, workers=self.workers)
                self._counts[half] += int(sel.size)

    def replace(self, old: Any, new: Any, theta: float, index: int) -> None:
        """Swap an added projection for another of the same angle (FBP is linear: back-project ``new - old``).

        The angle count is unchanged; used to replace a preview (Paganin) contribution by the final one.
        """
        xp = self.xp
        diff = xp.asarray(new, dtype=xp.float32) - xp.asarray(old, dtype=xp.float32)
        if diff.shape != (self.n_slices, self.n_det):
            raise ValueError(f"projection shape {diff.shape} does not match the accumulator "
                             f"({self.n_slices}, {self.n_det})")
        half = int(index) % 2
        if self._counts[half] == 0:
            raise ValueError("replace() needs a projection added to that half first")
        self._project(filter_projection(diff, self.window, xp=xp, padding=self.padding), theta, half)

    def _project(self, filtered: Any, theta: float, half: int) -> None:
        """Back-project one filtered projection into ``half``, now (``batch`` 1) or with the next batch."""
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting.append((filtered, float(theta), half))
        if len(self._waiting) >= self.batch or time.monotonic() - self._waiting_since >= self.max_wait_s:
            self.flush()

    @property
    def waiting(self) -> int:
        """Projections added but not yet back-projected (see ``batch``)."""
        return len(self._waiting)

    def flush(self) -> None:
        """Back-project the projections waiting in the batch (each half in one call)."""
        waiting, self._waiting = self._waiting, []
        for half in (0, 1):
            part = [w for w in waiting if w[2] == half]
            if part:
                stack = self.xp.stack([w[0] for w in part])
                backproject_many(stack, [w[1] for w in part], self.cor, self._sums[half], xp=self.xp,
                                 workers=self.workers)

    def volume(self, region: tuple[slice, ...] | None = None) -> Any:
        """Full reconstruction ``pi / N * sum`` (a new array; of ``region`` only when given, e.g. one
        plane); raises if nothing was added."""
        if self.n_added == 0:
            raise ValueError("no projection was added yet")
        self.flush()
        region = region if region is not None else (slice(None),)
        vol = self._sums[0][region] + self._sums[1][region]
        vol *= np.float32(np.pi / self.n_added)
        return vol

    def binned_halves(self, b: int) -> tuple[Any, Any]:
        """Even- and odd-angle reconstructions block-averaged by ``b`` (:func:`xnh_stream.physics.xp.bin_volume`),
        binned from the sums: no full-size copy is made."""
        if min(self._counts) == 0:
            raise ValueError(f"both halves need at least one projection, have {self.counts}")
        self.flush()
        out = []
        for s, c in zip(self._sums, self._counts):
            binned = bin_volume(s, b, xp=self.xp)
            binned = binned.copy() if binned is s else binned  # b = 1: bin_volume returns its input
            binned *= np.float32(np.pi / c)
            out.append(binned)
        return out[0], out[1]

    def half_volumes(self, region: tuple[slice, ...] | None = None) -> tuple[Any, Any]:
        """Even- and odd-angle reconstructions, each scaled ``pi / N_half`` (of ``region`` only: a copy of
        that region, not of the volume)."""
        if min(self._counts) == 0:
            raise ValueError(f"both halves need at least one projection, have {self.counts}")
        self.flush()
        region = region if region is not None else (slice(None),)
        h0, h1 = (s[region] * np.float32(np.pi / c) for s, c in zip(self._sums, self._counts))
        return h0, h1


def fbp(
    projections: Any,
    thetas: Any,
    cor: float | None = None,
    n_out: int | None = None,
    window: str = "shepp-logan",
    xp: ModuleType = np,
    padding: str = "zeros",
    workers: int = 1,
) -> Any:
    """Batch filtered back-projection of a projection stack.

    Parameters
    ----------
    projections : array ``[n_angles, nz, n_det]``
        Line integrals (units of voxel length), or a single sinogram ``[n_angles, n_det]``.
    thetas : array ``[n_angles]``
        Angles in radians, spread over ``pi`` or ``2 pi``.
    cor : float, optional
        Rotation-axis position in detector pixels (default centred).
    n_out : int, optional
        Slice size (default ``n_det``).
    window, padding, workers, xp
        As in :class:`FBPAccumulator`.

    Returns
    -------
    array ``[nz, n_out, n_out]`` float32 (``[n_out, n_out]`` for a sinogram input)
        Reconstruction in per-voxel units (module docstring).
    """
    projections = xp.asarray(projections)
    single = projections.ndim == 2
    if single:
        projections = projections[:, None, :]
    if projections.ndim != 3:
        raise ValueError(f"projections must be [n_angles, nz, n_det], got shape {projections.shape}")
    thetas = np.asarray(thetas if xp is np else xp.asnumpy(xp.asarray(thetas)), dtype=np.float64).ravel()
    n_angles, nz, n_det = projections.shape
    if thetas.size != n_angles:
        raise ValueError(f"{thetas.size} angles for {n_angles} projections")
    if not np.isfinite(thetas).all():
        raise ValueError("thetas contain NaN or infinite values")
    if n_angles < 1 or n_det < 2:
        raise ValueError(f"need at least one projection and two detector columns, got {projections.shape}")
    cor = _check_cor(cor if cor is not None else (n_det - 1) / 2.0, n_det)
    n_out = int(n_out) if n_out is not None else n_det
    out = xp.zeros((nz, n_out, n_out), dtype=xp.float32)
    block = max(1, (1 << 22) // max(1, nz * n_det))  # filter several angles per FFT call
    for a0 in range(0, n_angles, block):
        filt = filter_projection(projections[a0 : a0 + block], window, xp=xp, padding=padding)
        backproject_many(filt, thetas[a0 : a0 + block], cor, out, xp=xp, workers=workers)
    out *= np.float32(np.pi / n_angles)
    return out[0] if single else out
