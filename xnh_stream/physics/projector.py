"""Parallel-beam forward projector (line integrals through a ``[z, y, x]`` volume).

Project-wide convention (shared with the FBP module):

* volumes are ``[z, y, x]``; ``z`` is the rotation axis and is never resampled;
* a point at ``(x, y)``, measured in voxels from the rotation axis at the grid centre
  (index ``(n - 1) / 2``), projects at angle ``theta`` (radians) onto the detector
  coordinate ``t = x cos(theta) + y sin(theta)``;
* detector column ``j`` sits at ``t = j - cor``; ``cor`` is the rotation axis in detector
  pixels, by default ``(n_det - 1) / 2``;
* projections are ``[z, n_det]`` per angle, line integrals in units of the voxel length
  (a uniform disk of value 1 and radius ``r`` gives ``2 sqrt(r^2 - t^2)``).

Method: ray-driven sampling. Each detector column is a ray along
``(-sin(theta), cos(theta))``; it is sampled every ``step`` voxels (default 1) with bilinear
interpolation in the ``(y, x)`` plane (zero outside the grid). Because ``z`` is untouched,
one angle is a sparse ``[n_det, ny * nx]`` matrix with four entries per sample (:func:`ray_matrix`),
and the projection of all slices is one sparse-times-dense product. On the CPU the same sums are
computed by a compiled ray-driven kernel without building the matrix (building it took most of the
time of a new angle); on the GPU the matrix is built and applied with ``cupyx.scipy.sparse``.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import scipy.sparse

from .xp import PicklableXp

__all__ = ["ParallelProjector", "forward_project", "project_angle", "ray_matrix"]


def _check_volume(volume: Any, xp: ModuleType) -> tuple[int, int, int]:
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {tuple(volume.shape)}")
    if min(volume.shape) < 1:
        raise ValueError(f"volume has an empty axis: shape {tuple(volume.shape)}")
    if not bool(xp.all(xp.isfinite(volume))):
        raise ValueError("volume contains NaN or infinite values")
    return tuple(int(s) for s in volume.shape)  # type: ignore[return-value]


def _detector(n_det: int | None, cor: float | None, nx: int) -> tuple[int, float]:
    n_det = nx if n_det is None else int(n_det)
    if n_det < 1:
        raise ValueError(f"n_det must be >= 1, got {n_det}")
    cor = (n_det - 1) / 2.0 if cor is None else float(cor)
    if not np.isfinite(cor):
        raise ValueError(f"cor must be finite, got {cor}")
    return n_det, cor


def _ray_samples(
    ny: int, nx: int, n_det: int, cor: float, step: float = 1.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Detector coordinates ``t`` of the rays and positions ``u`` of the samples along each ray."""
    half = np.hypot((ny - 1) / 2.0, (nx - 1) / 2.0) + 1.5
    n_s = int(np.ceil(2 * half / step)) + 1
    u = (np.arange(n_s) - (n_s - 1) / 2.0) * step
    t = np.arange(n_det, dtype=np.float64) - cor
    return t, u, float(step)


def ray_matrix(
    theta: float, ny: int, nx: int, n_det: int, cor: float, step: float = 1.0
) -> scipy.sparse.csr_matrix:
    """Sparse projection operator of one angle for a ``[ny, nx]`` slice.

    Parameters
    ----------
    theta : float
        Projection angle in radians.
    ny, nx : int
        Slice shape.
    n_det : int
        Number of detector columns.
    cor : float
        Rotation axis position in detector pixels.
    step : float
        Sampling step along the ray, in voxels (<= 1 gives at least one sample per voxel).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``[n_det, ny * nx]`` float32 matrix ``W`` with ``p = W @ slice.ravel()``.
    """
    if not np.isfinite(theta):
        raise ValueError(f"theta must be finite, got {theta}")
    if not (np.isfinite(step) and 0 < step <= 1):
        raise ValueError(f"step must be in (0, 1], got {step}")
    c, s = np.cos(theta), np.sin(theta)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    t, u, step = _ray_samples(ny, nx, n_det, cor, step)
    n_s = u.size
    # position along each ray: t * (cos, sin) + u * (-sin, cos)
    ix = (t[:, None] * c - u[None, :] * s + cx).ravel()
    iy = (t[:, None] * s + u[None, :] * c + cy).ravel()
    rows = np.repeat(np.arange(n_det, dtype=np.int32), n_s)
    inside = (ix > -1) & (ix < nx) & (iy > -1) & (iy < ny)
    ix, iy, rows = ix[inside], iy[inside], rows[inside]
    x0 = np.floor(ix)
    y0 = np.floor(iy)
    fx = (ix - x0).astype(np.float32)
    fy = (iy - y0).astype(np.float32)
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    data, cols, rr = [], [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
            data.append((wy * wx * np.float32(step))[ok])
            cols.append((yi * nx + xi)[ok])
            rr.append(rows[ok])
    w = scipy.sparse.csr_matrix(
        (np.concatenate(data), (np.concatenate(rr), np.concatenate(cols))),
        shape=(n_det, ny * nx),
        dtype=np.float32,
    )
    w.sum_duplicates()
    return w


def _to_xp_sparse(w: scipy.sparse.csr_matrix, xp: ModuleType) -> Any:
    if xp is np:
        return w
    import cupyx.scipy.sparse  # noqa: PLC0415  # pragma: no cover

    return cupyx.scipy.sparse.csr_matrix(w)  # pragma: no cover


class ParallelProjector(PicklableXp):
    """A volume prepared for repeated projection (the simulator's angle-by-angle use).

    The slices are re-laid out once as ``[ny * nx, nz]`` columns, so each angle costs one
    sparse product; the per-angle matrices are cached (:func:`ray_matrix`). To project
    several volumes of the same shape at once (e.g. ``delta`` and ``beta``), concatenate
    them along ``z``. The volume is copied: later changes to it are not seen.

    Parameters
    ----------
    volume : array
        ``[nz, ny, nx]`` volume.
    n_det : int, optional
        Detector columns (default ``nx``).
    cor : float, optional
        Rotation axis in detector pixels (default ``(n_det - 1) / 2``).
    xp : module
        Array module of ``volume`` (numpy or cupy).
    workers : int
        CPU threads of the compiled projector (``<= 0``: all).
    """

    def __init__(self, volume: Any, n_det: int | None = None, cor: float | None = None, xp: ModuleType = np,
                 workers: int = 1):
        self.shape = _check_volume(volume, xp)
        self.n_det, self.cor = _detector(n_det, cor, self.shape[2])
        self.xp = xp
        self.workers = int(workers)
        nz = self.shape[0]
        self._cols = xp.ascontiguousarray(volume.reshape(nz, -1).T, dtype=xp.float32)

    def __call__(self, theta: float) -> Any:
        """``[nz, n_det]`` float32 projection at angle ``theta`` (radians)."""
        if not np.isfinite(theta):
            raise ValueError(f"theta must be finite, got {theta}")
        nz, ny, nx = self.shape
        if self.xp is np:
            from ._numba_kernels import project_rays, threads  # noqa: PLC0415

            t, u, step = _ray_samples(ny, nx, self.n_det, self.cor)
            out = np.zeros((self.n_det, nz), dtype=np.float32)
            with threads(self.workers):
                project_rays(self._cols, ny, nx, t, float(np.cos(theta)), float(np.sin(theta)), u, step, out)
            return np.ascontiguousarray(out.T)
        w = _to_xp_sparse(_cached_ray_matrix(float(theta), ny, nx, self.n_det, self.cor), self.xp)
        return self.xp.ascontiguousarray((w @ self._cols).T, dtype=self.xp.float32)


@lru_cache(maxsize=16)
def _cached_ray_matrix(theta: float, ny: int, nx: int, n_det: int, cor: float) -> scipy.sparse.csr_matrix:
    return ray_matrix(theta, ny, nx, n_det, cor)


def project_angle(
    volume: Any, theta: float, n_det: int | None = None, cor: float | None = None, xp: ModuleType = np
) -> Any:
    """Parallel-beam projection of a ``[z, y, x]`` volume at one angle.

    Parameters
    ----------
    volume : array
        ``[nz, ny, nx]`` volume (any real dtype; computed in float32).
    theta : float
        Angle in radians; ``t = x cos(theta) + y sin(theta)``.
    n_det : int, optional
        Detector columns (default ``nx``).
    cor : float, optional
        Rotation axis in detector pixels (default ``(n_det - 1) / 2``).
    xp : module
        Array module of ``volume`` (numpy or cupy).

    Returns
    -------
    array
        ``[nz, n_det]`` float32 line integrals in voxel lengths.

    Notes
    -----
    Each call re-lays out the volume (about half the time for a 256^3 volume); for many
    angles of one volume use :class:`ParallelProjector` or :func:`forward_project`.
    """
    return ParallelProjector(volume, n_det, cor, xp)(theta)


def forward_project(
    volume: Any,
    thetas: Any,
    n_det: int | None = None,
    cor: float | None = None,
    xp: ModuleType = np,
) -> Any:
    """Parallel-beam projections of a ``[z, y, x]`` volume at several angles.

    Parameters
    ----------
    volume : array
        ``[nz, ny, nx]`` volume.
    thetas : array_like
        1-D angles in radians.
    n_det, cor, xp
        As in :func:`project_angle`.

    Returns
    -------
    array
        ``[n_angles, nz, n_det]`` float32 projections.
    """
    thetas = np.atleast_1d(np.asarray(thetas, dtype=np.float64))
    if thetas.ndim != 1:
        raise ValueError(f"thetas must be 1-D, got shape {thetas.shape}")
    if not np.all(np.isfinite(thetas)):
        raise ValueError("thetas contain NaN or infinite values")
    proj = ParallelProjector(volume, n_det, cor, xp)
    out = xp.empty((thetas.size, proj.shape[0], proj.n_det), dtype=xp.float32)
    for i, th in enumerate(thetas):
        out[i] = proj(float(th))
    return out
