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


#: SWC node types (Cannon et al. 1998).
SWC_UNDEFINED, SWC_SOMA, SWC_AXON, SWC_DENDRITE = 0, 1, 2, 3


def node_types(radii_nm: np.ndarray, soma_radius_nm: float = 2000.0,
               axon_radius_nm: float | None = None) -> np.ndarray:
    """SWC node types of skeleton vertices from their radius (distance to the object's boundary, nm).

    Soma (1) where the radius reaches ``soma_radius_nm`` (cell bodies are 5-20 um across, neurites well
    under 2 um thick). Other vertices are undefined (0), unless ``axon_radius_nm`` is given: then axon (2)
    below it and dendrite (3) from it on (a calibre rule for tissue where it holds; shape alone does not
    tell axons from dendrites in a small volume).
    """
    r = np.asarray(radii_nm, dtype=np.float64)
    types = np.full(r.shape, SWC_UNDEFINED, dtype=np.uint8)
    if axon_radius_nm is not None:
        types[:] = np.where(r < axon_radius_nm, SWC_AXON, SWC_DENDRITE)
    types[r >= soma_radius_nm] = SWC_SOMA
    return types


def write_swc(skeletons: dict, folder: str | Path, soma_radius_nm: float = 2000.0,
              axon_radius_nm: float | None = None) -> list[Path]:
    """Write one ``<label>.swc`` per skeleton into ``folder``, node types set by :func:`node_types`;
    returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for label, skel in sorted(skeletons.items()):
        skel.vertex_types = node_types(skel.radius, soma_radius_nm, axon_radius_nm)
        path = folder / f"{int(label)}.swc"
        path.write_text(skel.to_swc())
        out.append(path)
    return out
