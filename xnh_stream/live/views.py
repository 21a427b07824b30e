"""What the live page and the running FSC need from a sharded live volume, computed where the slab lives.

A reconstruction shard holds rows ``r0 .. r1`` of the live volume (two half-volumes); :func:`slab_views`
reduces them to small pieces (binned halves, the part of the full-resolution FSC region, its rows of the
three orthogonal slices) and :func:`merge_views` puts the pieces of all shards together on the driver,
so that the whole volume never travels.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from ..physics.xp import to_numpy
from ..quality.fsc import region_bounds


class SlabView(TypedDict, total=False):
    """What a reconstruction shard hands back for the live views (:func:`slab_views`): its first row
    ``r0`` and either ``empty`` (no angle in one half yet) or ``rows``, ``n`` (columns), and the pieces it
    was asked for: ``binned`` and ``region`` (the two halves of each), ``axial``, ``coronal``, ``sagittal``."""

    r0: int
    empty: bool
    rows: int
    n: int
    binned: tuple[np.ndarray, np.ndarray]
    region: tuple[np.ndarray, np.ndarray]
    axial: np.ndarray
    coronal: np.ndarray
    sagittal: np.ndarray


class MergedViews(TypedDict, total=False):
    """Every shard's :class:`SlabView` put together (:func:`merge_views`): ``images`` (``xy``, ``xz``,
    ``yz`` of the binned live volume), and when no slab is empty ``n`` (columns), the ``binned`` and
    ``region`` halves of the whole volume."""

    images: dict[str, np.ndarray]
    n: int
    binned: tuple[np.ndarray, np.ndarray]
    region: tuple[np.ndarray, np.ndarray]


def slab_views(acc: Any, r0: int, n_rows: int, fsc_bin: int, region_px: int, binned: bool = True,
               planes: bool = True) -> SlabView:
    """Pieces of one slab (rows ``r0 ..`` of a live volume of ``n_rows`` rows).

    Parameters
    ----------
    acc : FBPAccumulator
        The slab's accumulator (:class:`xnh_stream.physics.fbp.FBPAccumulator`): the pieces are taken from
        its sums (binned halves, a region, three planes), never from a copy of the whole slab.
    r0, n_rows : int
        First row of the slab and rows of the whole volume.
    fsc_bin, region_px : int
        Binning of the whole-volume FSC and side of the full-resolution region.
    binned : bool
        Include the binned halves (the one piece that reads the whole slab; the driver asks for it only
        when enough new angles came, see :class:`xnh_stream.live.driver.LiveDriver`).
    planes : bool
        Include the slab's rows of the three central slices (not needed when the full-resolution live
        slices are kept elsewhere).
    """
    rows, n = acc.n_slices, acc.n_out
    out: SlabView = {"r0": int(r0), "rows": rows, "n": n}
    if binned and rows >= fsc_bin:
        out["binned"] = tuple(to_numpy(h) for h in acc.binned_halves(fsc_bin))
    zs, ys, xs = region_bounds((n_rows, n, n), region_px)
    a, b = max(zs.start, r0), min(zs.stop, r0 + rows)
    if b > a:
        out["region"] = tuple(to_numpy(h) for h in acc.half_volumes((slice(a - r0, b - r0), ys, xs)))
    if planes:
        if r0 <= n_rows // 2 < r0 + rows:
            out["axial"] = to_numpy(acc.volume((n_rows // 2 - r0,)))
        out["coronal"] = to_numpy(acc.volume((slice(None), n // 2)))
        out["sagittal"] = to_numpy(acc.volume((slice(None), slice(None), n // 2)))
    return out


def merge_views(parts: list[SlabView]) -> MergedViews:
    """Pieces of every slab (any order) into binned halves, region halves and the three slices.

    A slab marked ``empty`` (no angle in one of its halves yet) makes the result empty: no partial volume.
    """
    out: MergedViews = {"images": {}}
    if not parts or any(p.get("empty") for p in parts):
        return out
    parts = sorted(parts, key=lambda p: p["r0"])
    binned = [p["binned"] for p in parts if "binned" in p]
    if binned:
        out["binned"] = tuple(np.concatenate([b[i] for b in binned], axis=0) for i in range(2))
    region = [p["region"] for p in parts if "region" in p]
    if region:
        out["region"] = tuple(np.concatenate([r[i] for r in region], axis=0) for i in range(2))
    axial = [p["axial"] for p in parts if "axial" in p]
    images = {}
    if axial:
        images["xy"] = axial[0]
    if parts:
        if all("coronal" in p for p in parts):
            images["xz"] = np.concatenate([p["coronal"] for p in parts], axis=0)
            images["yz"] = np.concatenate([p["sagittal"] for p in parts], axis=0)
        out["n"] = parts[0]["n"]
    out["images"] = images
    return out


#: What each live slice shows: the axis it is cut across, and the axes of its rows and columns
#: (:class:`xnh_stream.physics.slices.OrthoSlices`, :func:`slab_views`).
SLICE_AXES = {"xy": ("z", "y", "x"), "xz": ("y", "z", "x"), "yz": ("x", "z", "y")}


def slice_info(shape: tuple[int, int, int], point: tuple[int, int, int], pixel_m: float,
               binning: int = 1) -> dict[str, dict[str, Any]]:
    """What the live page writes beside each slice: where it is cut and at what scale.

    Parameters
    ----------
    shape : (int, int, int)
        ``(nz, ny, nx)`` of the volume the slices are cut from (the binned live volume, or the
        full-resolution grid of the slice keeper).
    point : (int, int, int)
        ``(z0, y0, x0)``: the ``xy`` slice is ``volume[z0]``, ``xz`` is ``volume[:, y0]``, ``yz`` is
        ``volume[:, :, x0]``.
    pixel_m : float
        Voxel of that volume (m): the final voxel times ``binning``.
    binning : int
        Final voxels per voxel of that volume.

    Returns
    -------
    dict
        ``{"xy" | "xz" | "yz": {"axis", "index", "size", "position_m", "rows", "columns", "pixel_m",
        "binning", "unit"}}``; ``position_m`` is ``index * pixel_m`` from the volume's first voxel along the
        axis, ``unit`` what the grey levels are (``delta``, the refractive-index decrement).
    """
    sizes = dict(zip("zyx", shape))
    where = dict(zip("zyx", point))
    return {name: {"axis": axis, "index": int(where[axis]), "size": int(sizes[axis]),
                   "position_m": float(where[axis] * pixel_m), "rows": rows, "columns": columns,
                   "pixel_m": float(pixel_m), "binning": int(binning), "unit": "delta"}
            for name, (axis, rows, columns) in SLICE_AXES.items()}
