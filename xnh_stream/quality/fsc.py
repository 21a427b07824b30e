"""Running FSC: resolution of the live half-volumes against the fraction of angles received.

Each update takes the two half-volumes (even / odd angles) as the scan progresses and computes, with
:func:`xnh_stream.physics.fsc.half_volume_resolution`:

* a **binned whole-volume** estimate (block-averaged by ``bin_factor``: cheap on a large volume, and the
  shards can bin before sending, see :func:`bin_volume`); its resolution cannot be finer than
  ``bin_factor`` voxels;
* a **full-resolution region** (a central cube of ``region_px``, :func:`central_region`), which resolves
  down to the voxel size;

and the edge-fit cross-check (:func:`xnh_stream.physics.fsc.edge_resolution`) on the region of the full volume.
The history (resolution in metres against the fraction of angles) is what the live page plots and what
``report.json`` keeps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..physics.fsc import FSCResolution, edge_resolution, half_volume_resolution
from ..physics.xp import bin_volume, to_numpy  # bin_volume: re-exported here, where the FSC uses it

log = logging.getLogger(__name__)

__all__ = ["bin_volume", "central_region", "region_bounds", "FSCPoint", "RunningFSC"]


def region_bounds(shape: tuple[int, ...], size: int) -> tuple[slice, ...]:
    """Slices of the central cube of side ``size`` (clipped to each axis) of a volume of ``shape``."""
    out = []
    for n in shape:
        m = min(int(size), int(n))
        a = (int(n) - m) // 2
        out.append(slice(a, a + m))
    return tuple(out)


def central_region(v: Any, size: int) -> Any:
    """The central cube of side ``size`` of a 3-D volume (clipped to its shape)."""
    return v[region_bounds(tuple(v.shape), size)]


@dataclass
class FSCPoint:
    """One running-FSC measurement.

    ``resolution_m`` is the full-resolution region's half-bit resolution (the binned estimate's when no
    region was given); ``edge_resolution_m`` the erf edge fit's FWHM (None if the fit failed).
    """

    fraction_angles: float
    n_angles: int
    resolution_m: float | None
    binned_resolution_m: float | None
    region_resolution_m: float | None
    edge_resolution_m: float | None
    limited_by_sampling: bool
    time_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _curve(res: FSCResolution) -> dict[str, list[float | None]]:
    """FSC and half-bit curves against spatial frequency in 1/m (for plots)."""
    f = res.freq / (2.0 * res.voxel_m)

    def clean(a: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(x) else round(float(x), 4) for x in a]

    return {"freq_per_m": [float(x) for x in f], "fsc": clean(res.fsc), "half_bit": clean(res.threshold)}


@dataclass
class RunningFSC:
    """Running FSC of a growing reconstruction.

    Parameters
    ----------
    voxel_m : float
        Voxel size of the full-resolution volume.
    bin_factor : int
        Block size of the whole-volume estimate.
    region_px : int
        Side of the full-resolution central region.
    min_freq : float
        Lowest frequency (units of Nyquist) at which a crossing counts.
    """

    voxel_m: float
    bin_factor: int = 2
    region_px: int = 64
    min_freq: float = 0.05
    history: list[FSCPoint] = field(default_factory=list)
    curves: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.voxel_m) and self.voxel_m > 0):
            raise ValueError(f"voxel_m must be positive, got {self.voxel_m}")
        if self.bin_factor < 1 or self.region_px < 8:
            raise ValueError(f"need bin_factor >= 1 and region_px >= 8, got {self.bin_factor}, {self.region_px}")

    def _resolution(self, a: Any, b: Any, voxel: float) -> FSCResolution | None:
        if min(a.shape) < 4:
            log.debug("running FSC: volume %s too small", a.shape)
            return None
        return half_volume_resolution(a, b, voxel, min_freq=self.min_freq)

    def update(self, fraction_angles: float, n_angles: int, binned: tuple[Any, Any] | None = None,
               region: tuple[Any, Any] | None = None, halves: tuple[Any, Any] | None = None,
               voxel_m: float | None = None) -> FSCPoint:
        """Add a measurement.

        Parameters
        ----------
        fraction_angles : float
            Fraction of the scan's angles in the half-volumes (0..1).
        n_angles : int
            Angles in the half-volumes.
        binned : (array, array), optional
            Half-volumes already binned by ``bin_factor`` (the stream's shards bin before sending).
        region : (array, array), optional
            Full-resolution central region of both halves.
        halves : (array, array), optional
            Whole full-resolution half-volumes: ``binned`` and ``region`` are taken from them.
        voxel_m : float, optional
            Voxel of the half-volumes given here (e.g. a binned live volume), default :attr:`voxel_m`.

        Returns
        -------
        FSCPoint
        """
        if halves is not None:
            h0, h1 = (to_numpy(h) for h in halves)
            binned = (bin_volume(h0, self.bin_factor), bin_volume(h1, self.bin_factor))
            region = (central_region(h0, self.region_px), central_region(h1, self.region_px))
        if binned is None and region is None:
            raise ValueError("running FSC needs binned half-volumes, a region, or the whole halves")
        voxel = self.voxel_m if voxel_m is None else float(voxel_m)
        rb = self._resolution(*binned, voxel * self.bin_factor) if binned is not None else None
        rr = self._resolution(*region, voxel) if region is not None else None
        edge = None
        if region is not None and min(region[0].shape) >= 10:
            vol = (np.asarray(region[0], np.float64) + np.asarray(region[1], np.float64)) / 2
            try:
                edge = edge_resolution(vol, voxel_m=voxel,
                                       half_length=float(max(3, min(12, (min(vol.shape) - 4) // 2)))).resolution_m
            except (RuntimeError, ValueError) as exc:  # no clear edge yet (early, noisy volume)
                log.debug("running FSC: edge fit failed: %s", exc)
        best = rr if rr is not None else rb
        point = FSCPoint(fraction_angles=float(fraction_angles), n_angles=int(n_angles),
                         resolution_m=None if best is None else best.resolution_m,
                         binned_resolution_m=None if rb is None else rb.resolution_m,
                         region_resolution_m=None if rr is None else rr.resolution_m,
                         edge_resolution_m=edge, limited_by_sampling=bool(best is not None and best.limited_by_sampling),
                         time_s=time.time())
        self.history.append(point)
        self.curves = {k: _curve(r) for k, r in (("binned", rb), ("region", rr)) if r is not None}
        return point

    @property
    def latest(self) -> FSCPoint | None:
        """The last measurement."""
        return self.history[-1] if self.history else None
