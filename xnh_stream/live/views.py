"""What the live page and the running FSC need from a sharded live volume, computed where the slab lives.

A reconstruction shard holds rows ``r0 .. r1`` of the live volume (two half-volumes); :func:`slab_views`
reduces them to small pieces (binned halves, the part of the full-resolution FSC region, its rows of the
three orthogonal slices) and :func:`merge_views` puts the pieces of all shards together on the driver,
so that the whole volume never travels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quality.fsc import bin_volume, region_bounds
from ..physics.xp import to_numpy


def slab_views(h0: Any, h1: Any, volume: Any, r0: int, n_rows: int, fsc_bin: int, region_px: int) -> dict[str, Any]:
    """Pieces of one slab (rows ``r0 ..`` of a live volume of ``n_rows`` rows).

    Parameters
    ----------
    h0, h1 : array [rows, n, n]
        The slab's even- and odd-angle half-volumes.
    volume : array [rows, n, n]
        The slab's current volume (for the slices).
    r0, n_rows : int
        First row of the slab and rows of the whole volume.
    fsc_bin, region_px : int
        Binning of the whole-volume FSC and side of the full-resolution region.
    """
    h0, h1, volume = (np.asarray(to_numpy(a), np.float32) for a in (h0, h1, volume))
    rows, n = volume.shape[0], volume.shape[-1]
    out: dict[str, Any] = {"r0": int(r0), "rows": rows, "n": n}
    if rows >= fsc_bin:
        out["binned"] = (bin_volume(h0, fsc_bin), bin_volume(h1, fsc_bin))
    zs, ys, xs = region_bounds((n_rows, n, n), region_px)
    a, b = max(zs.start, r0), min(zs.stop, r0 + rows)
    if b > a:
        out["region"] = (h0[a - r0 : b - r0, ys, xs], h1[a - r0 : b - r0, ys, xs])
    if r0 <= n_rows // 2 < r0 + rows:
        out["axial"] = volume[n_rows // 2 - r0]
    out["coronal"] = volume[:, n // 2, :]
    out["sagittal"] = volume[:, :, n // 2]
    return out


def merge_views(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pieces of every slab (any order) into binned halves, region halves and the three slices.

    A slab marked ``empty`` (no angle in one of its halves yet) makes the result empty: no partial volume.
    """
    out: dict[str, Any] = {"images": {}}
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
        images["xz"] = np.concatenate([p["coronal"] for p in parts], axis=0)
        images["yz"] = np.concatenate([p["sagittal"] for p in parts], axis=0)
        out["n"] = parts[0]["n"]
    out["images"] = images
    return out
