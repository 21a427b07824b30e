"""Skeletons of segmented neurites (kimimaro TEASAR) written as SWC files for tracing tools (CATMAID,
neuTube, Vaa3D...).

SWC coordinates and radii are in nanometres, ``x y z`` order as SWC expects (``x`` is the volume's last array
axis), in the world frame of the volume: the sample-stage frame of its OME-NGFF coordinate transformations,
so a node at ``(x, y, z)`` nm lies at ``(z, y, x) * 1e-9`` m in the volume's ``z y x`` metres (the centre of
voxel ``[k, j, i]`` is at ``origin_m + voxel_m * (k, j, i)``). Each file says so in its header."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def skeletonize(labels: np.ndarray, voxel_m: float, min_voxels: int = 200, scale: float = 1.5,
                const_nm: float = 300.0) -> dict:
    """Skeleton of every label with at least ``min_voxels`` voxels (label 0 is background).

    Returns a dict ``{label: kimimaro/osteoid Skeleton}`` with vertices in nanometres relative to the centre
    of voxel ``[0, 0, 0]`` (``z y x`` array axes become SWC ``x y z``); :func:`write_swc` adds the volume's
    origin.
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


def skeletonize_blockwise(labels, voxel_m: float, block_shape: tuple[int, int, int], min_voxels: int = 200,
                          scale: float = 1.5, const_nm: float = 300.0) -> dict:
    """:func:`skeletonize` block by block, for labels larger than memory (a zarr or dask array is read one
    block at a time); each label's pieces are joined into one tree.

    Each block is read with the first plane of its upper neighbours, so two blocks share the plane between
    them, and skeletonized with kimimaro's ``fix_borders`` (a skeleton crosses a block face at the centre of
    each piece of its object there, the same point in both blocks). The pieces of a label are merged and
    their shared vertices made one (osteoid ``consolidate``); the loops a face crossed at several points can
    leave are cut by the minimum spanning tree of the vertices (edges weighted by length), so a connected
    object gives one tree. Labels with fewer than ``min_voxels`` voxels in the whole array are left out.

    Parameters
    ----------
    labels : array-like
        ``[z, y, x]`` labels (numpy, zarr or dask; 0 is background).
    voxel_m : float
        Voxel size.
    block_shape : (int, int, int)
        Blocks (e.g. the segmentation's).
    min_voxels, scale, const_nm
        See :func:`skeletonize`.

    Returns
    -------
    dict
        ``{label: Skeleton}``, vertices in nm from the centre of voxel ``[0, 0, 0]`` (as :func:`skeletonize`).
    """
    import itertools

    import kimimaro
    from osteoid import Skeleton

    nm = voxel_m * 1e9
    shape = tuple(int(n) for n in labels.shape)
    pieces: dict[int, list] = {}
    counts: dict[int, int] = {}
    for start in itertools.product(*[range(0, n, b) for n, b in zip(shape, block_shape)]):
        core = tuple(slice(a, min(a + b, n)) for a, b, n in zip(start, block_shape, shape))
        read = tuple(slice(c.start, min(c.stop + 1, n)) for c, n in zip(core, shape))  # the plane shared above
        block = np.asarray(labels[read])
        ids, n = np.unique(block[tuple(slice(0, c.stop - c.start) for c in core)], return_counts=True)
        for i, k in zip(ids.tolist(), n.tolist()):
            counts[i] = counts.get(i, 0) + k
        found = kimimaro.skeletonize(np.asfortranarray(block.transpose(2, 1, 0)),
                                     teasar_params={"scale": scale, "const": const_nm}, anisotropy=(nm, nm, nm),
                                     dust_threshold=0, progress=False, parallel=1, fix_branching=True,
                                     fix_borders=True)
        for label, skel in found.items():
            skel.vertices = skel.vertices + np.asarray(start[::-1], dtype=np.float64) * nm
            pieces.setdefault(int(label), []).append(skel)
    return {label: _spanning_tree(Skeleton.simple_merge(parts).consolidate())
            for label, parts in sorted(pieces.items()) if counts.get(label, 0) >= min_voxels}


def _spanning_tree(skel):
    """The skeleton with only the edges of the minimum spanning forest of its vertices (lengths as weights)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    edges = np.unique(np.sort(np.asarray(skel.edges, dtype=np.int64).reshape(-1, 2), axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    n = len(skel.vertices)
    length = np.linalg.norm(skel.vertices[edges[:, 0]] - skel.vertices[edges[:, 1]], axis=1) + 1e-9
    tree = minimum_spanning_tree(coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n))).tocoo()
    skel.edges = np.column_stack([tree.row, tree.col]).astype(np.uint32)
    return skel


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


def swc_header(label: int, origin_m: tuple[float, float, float] | None, source: str = "") -> str:
    """The comment lines that open every SWC file: units, axes and frame (see the module docstring)."""
    o = np.zeros(3) if origin_m is None else np.asarray(origin_m, dtype=np.float64)
    x, y, z = (o[::-1] * 1e9).tolist()
    return (f"# xnh-stream skeleton of segment {int(label)}{' of ' + source if source else ''}\n"
            "# UNITS nm (x y z and radius)\n"
            "# FRAME world frame of the volume's OME-NGFF coordinate transformations (the sample stage): "
            "SWC x y z = volume axes x y z (array axes 2 1 0), in nm\n"
            f"# ORIGIN the centre of voxel [0, 0, 0] of the volume lies at x y z = {x:.3f} {y:.3f} {z:.3f} nm\n")


def write_swc(skeletons: dict, folder: str | Path, soma_radius_nm: float = 2000.0,
              axon_radius_nm: float | None = None, origin_m: tuple[float, float, float] | None = None,
              source: str = "") -> list[Path]:
    """Write one ``<label>.swc`` per skeleton into ``folder``, node types set by :func:`node_types`.

    Parameters
    ----------
    skeletons : dict
        ``{label: Skeleton}`` from :func:`skeletonize` (vertices in nm from the centre of voxel ``[0, 0, 0]``).
    folder : str or Path
        Created if missing.
    soma_radius_nm, axon_radius_nm : float
        See :func:`node_types`.
    origin_m : (float, float, float), optional
        The volume's origin ``z y x`` in metres (the centre of its voxel ``[0, 0, 0]``, its OME-NGFF
        translation): added to every node, so that the files are in the volume's world frame.
    source : str
        The label image, named in each file's header.

    Returns
    -------
    list of Path
        The files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shift = np.zeros(3) if origin_m is None else np.asarray(origin_m, dtype=np.float64)[::-1] * 1e9  # x y z nm
    out = []
    for label, skel in sorted(skeletons.items()):
        skel = skel.clone()
        skel.vertices = skel.vertices + shift
        skel.vertex_types = node_types(skel.radius, soma_radius_nm, axon_radius_nm)
        # osteoid's header gives the voxel as SCALE; the coordinates are nanometres already
        body = "\n".join("# SCALE 1.000000 1.000000 1.000000" if ln.startswith("# SCALE") else ln
                         for ln in skel.to_swc().splitlines())
        path = folder / f"{int(label)}.swc"
        path.write_text(swc_header(label, origin_m, source) + body + "\n")
        out.append(path)
    return out
