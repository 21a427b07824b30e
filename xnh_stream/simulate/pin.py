"""Arguments every tissue generator of a cylindrical pin takes, checked in one place (the generators share
their argument checks, not their geometry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def check_pin(shape: Sequence[int], voxel_m: float, sample_radius_px: float | None, cell_spacing_px: float,
              ranges: Mapping[str, tuple[tuple[float, float], float, float | None]]) -> tuple[int, int, int, float]:
    """Check a generator's grid, voxel, pin radius, cell spacing and ranges; return ``nz, ny, nx`` and the radius.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Volume shape, each at least 8 voxels.
    voxel_m : float
        Voxel size in metres (positive).
    sample_radius_px : float or None
        Pin radius, in ``[4, min(ny, nx) / 2]``; None: ``0.4 * min(ny, nx)``.
    cell_spacing_px : float
        At least 4 voxels.
    ranges : mapping
        ``name: ((lo, hi), low, high)``: each range must satisfy ``low <= lo <= hi <= high`` (``high`` None:
        the pin's radius).

    Raises
    ------
    ValueError
        Naming the argument and the value.
    """
    if len(tuple(shape)) != 3 or min(int(n) for n in shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {tuple(shape)}")
    nz, ny, nx = (int(n) for n in shape)
    if not (np.isfinite(voxel_m) and voxel_m > 0):
        raise ValueError(f"voxel_m must be positive, got {voxel_m}")
    radius = 0.4 * min(ny, nx) if sample_radius_px is None else float(sample_radius_px)
    if not (np.isfinite(radius) and 4 <= radius <= min(ny, nx) / 2):
        raise ValueError(f"sample_radius_px must be in [4, min(ny, nx)/2 = {min(ny, nx) / 2}], got {radius}")
    if not cell_spacing_px >= 4:
        raise ValueError(f"cell_spacing_px must be >= 4, got {cell_spacing_px}")
    for name, ((lo, hi), low, high) in ranges.items():
        high = radius if high is None else high
        if not (low <= lo <= hi <= high):
            raise ValueError(f"{name} must be a range within [{low}, {high}], got {(lo, hi)}")
    return nz, ny, nx, radius
