"""Skeletons of segmented neurites (kimimaro TEASAR) written as SWC files for tracing tools (CATMAID,
neuTube, Vaa3D...). Coordinates are in nanometres, ``x y z`` order as SWC expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def skeletonize(labels: np.ndarray, voxel_m: float, min_voxels: int = 200, scale: float = 1.5,
                const_nm: float = 300.0) -> dict:
    """Skeleton of every label with at least ``min_voxels`` voxels (label 0 is background).

    Returns a dict ``{label: kimimaro/osteoid Skeleton}`` with vertices in nanometres (``z y x`` array axes
    become SWC ``x y z``; see :func:`write_swc`).
    """
    import kimimaro

    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D, got shape {labels.shape}")
    nm = voxel_m * 1e9
    # kimimaro takes arrays indexed x y z: hand it the transposed view so that SWC x is our last axis
    lab = np.asfortranarray(np.asarray(labels).transpose(2, 1, 0))
    return kimimaro.skeletonize(lab, teasar_params={"scale": scale, "const": const_nm}, anisotropy=(nm, nm, nm),
                                dust_threshold=min_voxels, progress=False, parallel=1, fix_branching=True,
                                fix_borders=True)


def write_swc(skeletons: dict, folder: str | Path) -> list[Path]:
    """Write one ``<label>.swc`` per skeleton into ``folder``; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for label, skel in sorted(skeletons.items()):
        path = folder / f"{int(label)}.swc"
        path.write_text(skel.to_swc())
        out.append(path)
    return out
