"""Full-resolution live slices (as RECAST3D does): three orthogonal slices updated per projection.

A slice of the reconstruction only needs the filtered projections, not the volume: back-projecting
each filtered projection onto the slice's voxels costs ``O(N^2)`` per angle, so the three slices
through a point of a full-resolution ``N^3`` volume can follow a scan live while the 3-D preview is
binned. Geometry, ``cor`` and the ``pi / N`` normalisation are those of
:class:`xnh_stream.physics.fbp.FBPAccumulator` (module docstring of :mod:`xnh_stream.physics.fbp`):
after all angles each slice equals the corresponding slice of :func:`xnh_stream.physics.fbp.fbp`.

Slice names: ``"z"`` is the axial slice ``volume[z0, :, :]`` (``[n, n]``, ``y`` then ``x``); ``"y"`` the
vertical slice ``volume[:, y0, :]`` (``[nz, n]``, ``z`` then ``x``); ``"x"`` the vertical slice
``volume[:, :, x0]`` (``[nz, n]``, ``z`` then ``y``).

The three slices are kept as lines of voxels in one buffer sorted by detector row, so a projection
updates all three in one call of the compiled line kernel
(:func:`xnh_stream.physics.backprojection.backproject_lines`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xnh_stream.physics.backprojection import backproject_lines
from xnh_stream.physics.fbp import PADDINGS, WINDOWS, _check_cor, filter_projection

__all__ = ["SLICE_AXES", "OrthoSlices", "slice_from_projections"]

#: Names of the three orthogonal slices, in the order of the point ``(z0, y0, x0)``.
SLICE_AXES: tuple[str, str, str] = ("z", "y", "x")


def _slice_lines(axis: str, index: int, nz: int, n: int) -> tuple[np.ndarray, ...]:
    """Lines of voxels of one slice: ``(zrow, xr, yr, dx, dy)``, one entry per output row, in the
    slice's own row order (see the module docstring for the layouts)."""
    c = (n - 1) / 2.0
    if axis == "z":
        zrow = np.full(n, index, dtype=np.int64)
        return zrow, np.full(n, -c), np.arange(n) - c, np.ones(n), np.zeros(n)
    zrow = np.arange(nz, dtype=np.int64)
    if axis == "y":
        return zrow, np.full(nz, -c), np.full(nz, index - c), np.ones(nz), np.zeros(nz)
    if axis == "x":
        return zrow, np.full(nz, index - c), np.full(nz, -c), np.zeros(nz), np.ones(nz)
    raise ValueError(f"unknown slice axis {axis!r}; expected one of {SLICE_AXES}")


def _check_index(axis: str, index: int, nz: int, n: int) -> int:
    size = nz if axis == "z" else n
    index = int(index)
    if not 0 <= index < size:
        raise ValueError(f"slice {axis}={index} lies outside the volume (0 .. {size - 1})")
    return index


def _as_stack(filtered: Any, thetas: Any, nz: int, n_det: int) -> tuple[np.ndarray, np.ndarray]:
    filtered = np.asarray(filtered, dtype=np.float32)
    if filtered.ndim == 2:
        filtered = filtered[None]
    thetas = np.atleast_1d(np.asarray(thetas, dtype=np.float64)).ravel()
    if filtered.ndim != 3 or filtered.shape[1:] != (nz, n_det):
        raise ValueError(f"filtered projections must be [n_angles, {nz}, {n_det}], "
                         f"got shape {filtered.shape}")
    if thetas.size != filtered.shape[0]:
        raise ValueError(f"{thetas.size} angles for {filtered.shape[0]} projections")
    if not np.isfinite(thetas).all():
        raise ValueError("thetas contain NaN or infinite values")
    return filtered, thetas


def slice_from_projections(
    filtered: Any,
    thetas: Any,
    axis: str,
    index: int,
    cor: float | None = None,
    n_out: int | None = None,
    workers: int = 1,
) -> np.ndarray:
    """One orthogonal slice of the FBP reconstruction, computed from filtered projections alone.

    Parameters
    ----------
    filtered : ndarray ``[n_angles, nz, n_det]``
        Ramp-filtered projections (:func:`xnh_stream.physics.fbp.filter_projection`).
    thetas : array_like ``[n_angles]``
        Angles in radians (spread over ``pi`` or ``2 pi``).
    axis : {"z", "y", "x"}
        Which slice (module docstring).
    index : int
        Its position along ``axis`` (voxel index).
    cor : float, optional
        Rotation-axis position in detector pixels (default centred).
    n_out : int, optional
        Slice size of the volume (default ``n_det``).
    workers : int
        CPU threads (``<= 0``: all).

    Returns
    -------
    ndarray float32
        ``[n, n]`` for ``"z"``, ``[nz, n]`` for ``"y"`` and ``"x"``, scaled ``pi / n_angles`` like
        :func:`xnh_stream.physics.fbp.fbp`.
    """
    filtered = np.asarray(filtered, dtype=np.float32)
    if filtered.ndim != 3:
        raise ValueError(f"filtered projections must be [n_angles, nz, n_det], got shape {filtered.shape}")
    _, nz, n_det = filtered.shape
    filtered, thetas = _as_stack(filtered, thetas, nz, n_det)
    n = int(n_out) if n_out is not None else n_det
    cor = _check_cor(cor if cor is not None else (n_det - 1) / 2.0, n_det)
    index = _check_index(axis, index, nz, n)
    zrow, xr, yr, dx, dy = _slice_lines(axis, index, nz, n)
    out = np.zeros((zrow.size, n), dtype=np.float32)
    backproject_lines(filtered, thetas, cor, zrow, xr, yr, (dx, dy), out, workers=workers)
    out *= np.float32(np.pi / thetas.size)
    return out


class OrthoSlices:
    """The three orthogonal slices through a point of the full-resolution volume, updated per angle.

    Parameters
    ----------
    n_slices : int
        Detector rows (= volume slices ``nz``).
    n_det : int
        Detector columns.
    n_out : int, optional
        Slice size ``n x n`` of the volume (default ``n_det``), centred on the rotation axis.
    cor : float, optional
        Rotation-axis position in detector pixels (default centred).
    point : (int, int, int), optional
        ``(z0, y0, x0)`` the slices go through (default the volume centre).
    window, padding : str
        Ramp filter of :meth:`add` (as :class:`xnh_stream.physics.fbp.FBPAccumulator`).
    workers : int
        CPU threads of the back-projection (``<= 0``: all).

    Notes
    -----
    Each slice keeps its own angle count: :meth:`set_point` restarts the slices that move (or refills
    them from a batch of filtered projections), and :meth:`slice` scales by ``pi / count``.
    """

    def __init__(
        self,
        n_slices: int,
        n_det: int,
        n_out: int | None = None,
        cor: float | None = None,
        point: tuple[int, int, int] | None = None,
        window: str = "shepp-logan",
        padding: str = "zeros",
        workers: int = 1,
    ) -> None:
        if n_slices < 1 or n_det < 2:
            raise ValueError(f"need n_slices >= 1 and n_det >= 2, got {n_slices}, {n_det}")
        if window not in WINDOWS:
            raise ValueError(f"unknown ramp-filter window {window!r}; expected one of {WINDOWS}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
        self.n_slices, self.n_det = int(n_slices), int(n_det)
        self.n_out = int(n_out) if n_out is not None else self.n_det
        if self.n_out < 1:
            raise ValueError(f"n_out must be >= 1, got {n_out}")
        self.cor = _check_cor(cor if cor is not None else (self.n_det - 1) / 2.0, self.n_det)
        self.window, self.padding, self.workers = window, padding, int(workers)
        self._counts = dict.fromkeys(SLICE_AXES, 0)
        self._point: tuple[int, int, int] = (0, 0, 0)
        self._build(point if point is not None else (self.n_slices // 2, self.n_out // 2, self.n_out // 2))

    def _build(self, point: tuple[int, int, int]) -> None:
        """Line tables of the three slices through ``point``, sorted by detector row, and a fresh buffer."""
        nz, n = self.n_slices, self.n_out
        z0, y0, x0 = (_check_index(a, i, nz, n) for a, i in zip(SLICE_AXES, point))
        self._point = (z0, y0, x0)
        parts = [_slice_lines(a, i, nz, n) for a, i in zip(SLICE_AXES, self._point)]
        table = [np.concatenate(col) for col in zip(*parts)]
        order = np.argsort(table[0], kind="stable")
        self._zrow, self._xr, self._yr, self._dx, self._dy = (col[order] for col in table)
        where = np.empty_like(order)
        where[order] = np.arange(order.size)
        sizes = np.cumsum([0] + [p[0].size for p in parts])
        self._rows = {a: where[sizes[k] : sizes[k + 1]] for k, a in enumerate(SLICE_AXES)}
        self._sums = np.zeros((order.size, n), dtype=np.float32)

    @property
    def point(self) -> tuple[int, int, int]:
        """``(z0, y0, x0)`` the slices go through."""
        return self._point

    @property
    def counts(self) -> dict[str, int]:
        """Angles summed into each slice."""
        return dict(self._counts)

    def add(self, projection: Any, theta: float) -> None:
        """Filter one projection ``[n_slices, n_det]`` taken at ``theta`` (radians); add it to the slices."""
        projection = np.asarray(projection)
        if projection.shape != (self.n_slices, self.n_det):
            raise ValueError(f"projection shape {projection.shape} does not match the slices "
                             f"({self.n_slices}, {self.n_det})")
        self.add_filtered(filter_projection(projection, self.window, padding=self.padding), theta)

    def add_filtered(self, filtered: Any, thetas: Any, count: bool = True) -> None:
        """Add filtered projections ``[n_slices, n_det]`` or ``[n_angles, n_slices, n_det]`` to the slices.

        Parameters
        ----------
        filtered : ndarray
            Ramp-filtered projection(s), the same filter as the volume's.
        thetas : float or array_like
            Their angles in radians.
        count : bool
            Count the angles (False for a correction of an angle already counted, e.g. the difference
            final - preview, FBP being linear).
        """
        filtered, thetas = _as_stack(filtered, thetas, self.n_slices, self.n_det)
        backproject_lines(filtered, thetas, self.cor, self._zrow, self._xr, self._yr, (self._dx, self._dy),
                          self._sums, workers=self.workers)
        if count:
            for a in SLICE_AXES:
                self._counts[a] += int(thetas.size)

    def set_point(self, z0: int, y0: int, x0: int, filtered: Any = None, thetas: Any = None) -> None:
        """Move the slices to go through ``(z0, y0, x0)``.

        Slices whose position does not change keep their sums. The others restart from zero angles, or,
        when ``filtered`` ``[n_angles, n_slices, n_det]`` and ``thetas`` are given (e.g. the projections
        received so far, filtered again from the store), are recomputed from them.
        """
        old = dict(zip(SLICE_AXES, self._point))
        kept = {a: (self.slice_sum(a), self._counts[a]) for a in SLICE_AXES}
        self._build((z0, y0, x0))
        moved = [a for a in SLICE_AXES if self._point[SLICE_AXES.index(a)] != old[a]]
        for a in SLICE_AXES:
            if a in moved:
                self._counts[a] = 0
            else:
                self._sums[self._rows[a]] = kept[a][0]
        if filtered is not None and moved:
            stack, th = _as_stack(filtered, thetas, self.n_slices, self.n_det)
            for a in moved:
                index = self._point[SLICE_AXES.index(a)]
                zrow, xr, yr, dx, dy = _slice_lines(a, index, self.n_slices, self.n_out)
                part = np.zeros((zrow.size, self.n_out), dtype=np.float32)
                backproject_lines(stack, th, self.cor, zrow, xr, yr, (dx, dy), part, workers=self.workers)
                self._sums[self._rows[a]] = part
                self._counts[a] = int(th.size)

    def slice_sum(self, axis: str) -> np.ndarray:
        """Unscaled sum of the back-projections of slice ``axis`` (a copy)."""
        if axis not in SLICE_AXES:
            raise ValueError(f"unknown slice axis {axis!r}; expected one of {SLICE_AXES}")
        return self._sums[self._rows[axis]]

    def slice(self, axis: str) -> np.ndarray:
        """Slice ``axis`` scaled ``pi / N`` (N = its angle count); raises if it has no angle yet."""
        part = self.slice_sum(axis)
        if self._counts[axis] == 0:
            raise ValueError(f"slice {axis} has no projection yet")
        part *= np.float32(np.pi / self._counts[axis])
        return part

    def slices(self) -> dict[str, np.ndarray]:
        """The three slices (:meth:`slice`) by name; those without an angle yet are left out."""
        return {a: self.slice(a) for a in SLICE_AXES if self._counts[a] > 0}
