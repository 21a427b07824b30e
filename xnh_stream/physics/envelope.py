"""The sample envelope for two-material CTF retrieval: the sample's support, filled with its mean delta.

A stained pin in air contrasts with air through its mean ``delta/beta`` (~100 for osmium-stained
tissue in epoxy at 17 keV) but inside through its stain (``delta/beta`` ~10). The envelope carries
the first, so that the interior can be retrieved with the second (:mod:`xnh_stream.physics.phase`). The
support comes from a coarse first reconstruction (a binned single-distance Paganin is enough):
Otsu threshold, opening, holes filled slice by slice. Its projections are computed on the binned
grid and interpolated to the detector.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .projector import ParallelProjector
from .xp import PicklableXp, bin_volume, to_numpy

__all__ = ["SampleEnvelope", "envelope_from_volume", "estimate_support", "fill_slices", "surroundings"]

#: ``ctf.envelope: auto`` takes a support for a sample in air when it fills at least this fraction of the
#: reconstruction disk ...
IN_AIR_MIN_FRACTION = 0.6
#: ... and the mean delta around it is below this fraction of the mean inside. Measured (docs/delta_beta.md):
#: stained pins in air 0.79-0.80 of the disk, ratio -0.10 to 0.25 (0.25: the golden scan, 64 px, whose air ring
#: is a few binned pixels of blur); samples wider than the field of view, whose Otsu support is their densest
#: part, 0.03-0.49 and 0.13-0.66; a body in air with dense inclusions, whose support was the inclusions (its
#: two-material CTF gave r 0.55, one material 0.83), 0.29 and 0.24. A pin in air filling less than 0.6 of the
#: disk is taken for one material: not measured.
IN_AIR_MAX_RATIO = 0.3

log = logging.getLogger(__name__)


def fill_slices(support: np.ndarray) -> np.ndarray:
    """A thresholded support cleaned slice by slice (in place): opened twice (4-connected), holes filled.

    Parameters
    ----------
    support : ndarray of bool [z, y, x]

    Returns
    -------
    ndarray of bool
        ``support`` itself.
    """
    structure = ndimage.generate_binary_structure(2, 1)
    for i in range(support.shape[0]):
        support[i] = ndimage.binary_fill_holes(ndimage.binary_opening(support[i], structure, iterations=2))
    return support


def estimate_support(volume: np.ndarray, min_fraction: float = 0.02, max_fraction: float = 0.95
                     ) -> np.ndarray | None:
    """Support of the sample in a coarse reconstruction of delta.

    Parameters
    ----------
    volume : ndarray [rows, n, n]
        Reconstruction (delta, positive in matter).
    min_fraction, max_fraction : float
        Plausible fractions of the reconstruction disk the support may fill. Outside them (no
        sample, or a sample wider than the field of view, where an envelope means nothing) the
        function returns ``None``.

    Returns
    -------
    ndarray of bool or None
        The support, same shape as ``volume``.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"volume must be 3-D [rows, n, n], got shape {v.shape}")
    n = v.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    disk = np.hypot(yy - c, xx - c) <= n / 2 - 1
    values = v[:, disk]
    if not np.isfinite(values).all() or float(values.max() - values.min()) <= 0:
        return None
    support = fill_slices(v > threshold_otsu(values))
    support &= disk[None]
    fraction = float(support.sum() / (disk.sum() * support.shape[0]))
    if not min_fraction <= fraction <= max_fraction:
        log.info("no sample envelope: the support fills %.1f %% of the field of view", 100 * fraction)
        return None
    return support


def _linear_taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps ``(i0, i1, w)`` of positions ``coords`` on a grid of ``n`` samples,
    clamped to the grid (the value at the nearest edge beyond it): ``f(c) = f[i0] (1 - w) + f[i1] w``."""
    c = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = (c - i0).astype(np.float32)
    return i0, i1, w


class SampleEnvelope(PicklableXp):
    """Projections of the sample's support filled with its mean delta.

    Parameters
    ----------
    support : ndarray of bool [rows_b, n_b, n_b]
        Support on the binned reconstruction grid.
    delta_mean : float
        Mean delta inside the support.
    binning : int
        Binning of that grid against the detector.
    frame_shape : (int, int)
        ``(ny, nx)`` of the full-resolution projections.
    cor : float
        Rotation axis, full-resolution detector pixels.
    xp : module
        Array module of the returned projections.
    workers : int
        CPU threads of the projection and the interpolation (``<= 0``: all).
    """

    def __init__(self, support: np.ndarray, delta_mean: float, binning: int, frame_shape: tuple[int, int],
                 cor: float, xp: ModuleType = np, workers: int = 1, surroundings: dict[str, float] | None = None) -> None:
        if not (np.isfinite(delta_mean) and delta_mean > 0):
            raise ValueError(f"delta_mean must be positive, got {delta_mean}")
        self.delta_mean, self.binning, self.xp = float(delta_mean), int(binning), xp
        #: what lies around the support (:func:`surroundings`); None when not measured
        self.surroundings = surroundings
        self.shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.workers = int(workers)
        self.support_fraction = float(np.mean(support))
        ny, nx = frame_shape
        b = self.binning
        self._nb = (ny // b, nx // b)
        self._projector = ParallelProjector(support.astype(np.float32) * np.float32(delta_mean),
                                            n_det=self._nb[1], cor=(cor + 0.5) / b - 0.5, workers=workers)
        # full-resolution pixel centres on the binned grid, as (lower index, upper index, weight)
        self._ry = _linear_taps((np.arange(ny) + 0.5) / b - 0.5, self._nb[0])
        self._rx = _linear_taps((np.arange(nx) + 0.5) / b - 0.5, self._nb[1])

    def projection(self, theta_rad: float) -> Any:
        """Line integral of the envelope's delta [ny, nx] in full-resolution voxel units."""
        p = to_numpy(self._projector(theta_rad)) * np.float32(self.binning)
        if self.binning > 1:
            # bilinear interpolation to the detector pixels (edge values beyond the grid)
            from ._numba_kernels import resample_bilinear, threads  # noqa: PLC0415

            full = np.empty(self.shape, dtype=np.float32)
            with threads(self.workers):
                p = resample_bilinear(np.ascontiguousarray(p, dtype=np.float32), *self._ry, *self._rx, full)
        return self.xp.asarray(np.ascontiguousarray(p, dtype=np.float32))

    def in_air(self, min_fraction: float = IN_AIR_MIN_FRACTION, max_ratio: float = IN_AIR_MAX_RATIO) -> bool:
        """Is the support a sample in air (``ctf.envelope: auto``)? It fills at least ``min_fraction`` of the
        reconstruction disk, and the mean delta around it is below ``max_ratio`` of the mean inside (a sample
        wider than the field of view has none of it: there the support is a part of the sample, and the
        two-material CTF makes the rest of it a second material)."""
        s = self.surroundings
        return s is not None and s["disk_fraction"] >= min_fraction and s["outside_ratio"] < max_ratio

    def as_dict(self) -> dict[str, Any]:
        """Figures for the report."""
        out = {"delta_mean": self.delta_mean, "binning": self.binning, "support_fraction": self.support_fraction}
        if self.surroundings is not None:
            out.update({k: round(v, 4) for k, v in self.surroundings.items()}, in_air=self.in_air())
        return out


def surroundings(volume: np.ndarray, support: np.ndarray) -> dict[str, float]:
    """What lies around a support in a coarse reconstruction ``volume [rows, n, n]``: the fraction of the
    reconstruction disk it fills (``disk_fraction``) and the mean delta of the disk outside it over the mean
    inside (``outside_ratio``: about 0 for a sample in air)."""
    n = volume.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    disk = np.broadcast_to(np.hypot(yy - c, xx - c) <= n / 2 - 1, volume.shape)
    inside = float(volume[support & disk].mean()) if (support & disk).any() else 0.0
    outside = volume[~support & disk]
    ratio = float(outside.mean()) / inside if outside.size and inside > 0 else 0.0
    return {"disk_fraction": float((support & disk).sum() / max(1, disk.sum())), "outside_ratio": ratio}


def envelope_from_volume(volume: np.ndarray, binning: int, frame_shape: tuple[int, int], cor: float,
                         xp: ModuleType = np, max_columns: int = 256) -> SampleEnvelope | None:
    """The sample envelope from a coarse reconstruction of delta (the batch chain's binned Paganin pass).

    Parameters
    ----------
    volume : ndarray [rows, n, n]
        Reconstruction on a grid binned ``binning`` times against the detector.
    binning : int
        That binning.
    frame_shape : (int, int)
        ``(ny, nx)`` of the full-resolution projections.
    cor : float
        Rotation axis, full-resolution detector pixels.
    xp : module
        Array module of the envelope's projections.
    max_columns : int
        The volume is binned further to about this many columns (the support needs no more).

    Returns
    -------
    SampleEnvelope or None
        None when no plausible support is found (see :func:`estimate_support`).
    """
    v = np.asarray(volume, dtype=np.float32)
    extra = max(1, int(round(v.shape[-1] / max_columns)))
    v = bin_volume(v, extra)
    support = estimate_support(v)
    if support is None:
        return None
    # the mean delta away from the outline, which a coarse reconstruction blurs with air
    core = ndimage.binary_erosion(support, iterations=2)
    delta_mean = float(v[core if core.any() else support].mean())
    if not delta_mean > 0:
        return None
    return SampleEnvelope(support, delta_mean, binning * extra, frame_shape, cor, xp=xp,
                          surroundings=surroundings(v, support))

