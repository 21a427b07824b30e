"""Neuroglancer precomputed volumes (image or segmentation layers), written with tensorstore.

Neuroglancer opens a folder written here as ``precomputed://`` over HTTP (any static file server). The
array axes are ``z y x`` here, ``x y z`` in the precomputed format; resolution is in nanometres. Levels are
the same pyramid as the OME-Zarr output (block mean for images, the mode of each 2x2x2 block for labels). The
volume is written block by block, so a zarr or dask array larger than memory can be exported.

World frame: the OME-Zarr volume's (the sample stage, :mod:`~xnh_stream.io.omezarr`). Neuroglancer's voxel
``i`` of a scale spans ``[i, i + 1) * resolution``, so its centre lies at ``(i + 0.5) * resolution`` nm; each
scale's ``voxel_offset`` is the whole number of its voxels that puts the volume's first voxel where the
OME-Zarr translation puts it: within half a voxel of that scale (the format has no sub-voxel offset;
:func:`voxel_offsets` gives the remainder).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import dask.array as da
import numpy as np

from .omezarr import pyramid

#: Encodings neuroglancer reads: ``raw`` for images, ``compressed_segmentation`` for labels.
ENCODINGS = ("raw", "compressed_segmentation")


def voxel_offsets(origin_m: tuple[float, float, float] | None, voxel_m: float,
                  n_levels: int) -> tuple[list[list[int]], list[list[float]]]:
    """Neuroglancer ``voxel_offset`` of each scale (``x y z``) that places a volume whose voxel ``[0, 0, 0]``
    (level 0) has its centre at ``origin_m`` (``z y x``, metres), and what rounding to whole voxels left.

    Level ``l`` (voxel ``voxel_m * 2**l``, block means or modes of level 0) starts at the same corner,
    ``origin_m - voxel_m / 2``, as level 0.

    Parameters
    ----------
    origin_m : (float, float, float) or None
        The volume's OME-NGFF translation of level 0; None: no translation, the centre of voxel ``[0, 0, 0]``
        at the world origin (as OME-NGFF readers place such a volume).
    voxel_m : float
        Level-0 voxel, metres.
    n_levels : int
        Number of scales.

    Returns
    -------
    offsets : list of list of int
        ``voxel_offset`` per scale, ``x y z``.
    residuals_nm : list of list of float
        World position of the volume's corner minus the one the offset gives, ``x y z`` in nm (each within
        half that scale's voxel).
    """
    origin = np.zeros(3) if origin_m is None else np.asarray(origin_m, dtype=np.float64)[::-1]
    corner_nm = (origin - voxel_m / 2) * 1e9
    offsets, residuals = [], []
    for i in range(n_levels):
        res = voxel_m * 1e9 * 2**i
        off = np.rint(corner_nm / res)
        offsets.append([int(v) for v in off])
        residuals.append([float(v) for v in corner_nm - off * res])
    return offsets, residuals


def write_precomputed(path: str | Path, volume: np.ndarray | da.Array, voxel_m: float, labels: bool = False,
                      chunk: tuple[int, int, int] = (64, 64, 64), encoding: str | None = None,
                      block_chunks: int = 4, origin_m: tuple[float, float, float] | None = None) -> Path:
    """Write ``volume`` ``[z, y, x]`` as a neuroglancer precomputed multiscale volume in ``path``.

    Parameters
    ----------
    path : str or Path
        Destination folder (replaced if it exists); holds ``info`` and one folder per scale.
    volume : ndarray or array-like
        float32 image, or integer labels (uint32 / uint64) when ``labels`` is True; zarr or dask arrays
        are read block by block.
    voxel_m : float
        Isotropic voxel size in metres.
    labels : bool
        A segmentation layer (labels downsampled by picking voxels) instead of an image.
    chunk : (int, int, int)
        Chunk shape ``z y x`` of every scale (clipped to the scale's shape).
    encoding : str, optional
        ``raw`` or ``compressed_segmentation``; default ``compressed_segmentation`` for labels, ``raw`` for
        images.
    block_chunks : int
        Chunks per axis written at once (memory: ``block_chunks^3`` chunks).
    origin_m : (float, float, float), optional
        Position ``z y x`` in metres of the centre of voxel ``[0, 0, 0]`` (the OME-Zarr volume's translation,
        the sample-stage frame): each scale's ``voxel_offset`` (:func:`voxel_offsets`). None: the volume has
        no translation (its voxel ``[0, 0, 0]`` centred at the world origin).

    Returns
    -------
    Path
    """
    import tensorstore as ts

    if len(volume.shape) != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {volume.shape}")
    if not voxel_m > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_m}")
    encoding = encoding or ("compressed_segmentation" if labels else "raw")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    dtype = np.dtype(volume.dtype) if labels else np.dtype(np.float32)
    if labels and dtype not in (np.uint32, np.uint64):
        raise ValueError(f"labels must be uint32 or uint64 for neuroglancer, got {dtype}")
    if encoding == "compressed_segmentation" and not labels:
        raise ValueError("compressed_segmentation encodes labels only")
    if not isinstance(volume, da.Array):
        volume = da.from_array(volume, chunks=tuple(c * block_chunks for c in chunk))
    levels = pyramid(volume.astype(dtype), labels=labels)
    path = Path(path)
    nm = voxel_m * 1e9
    offsets, _ = voxel_offsets(origin_m, voxel_m, len(levels))
    for i, level in enumerate(levels):
        size = tuple(int(s) for s in level.shape[::-1])  # x y z
        chunk_xyz = [int(min(c, s)) for c, s in zip(chunk[::-1], size)]
        scale = {"size": list(size), "resolution": [nm * 2**i] * 3, "encoding": encoding,
                 "chunk_size": chunk_xyz, "voxel_offset": offsets[i]}
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 8]
        spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path) + "/"},
                "scale_metadata": scale, "create": True}
        if i == 0:
            spec["multiscale_metadata"] = {"type": "segmentation" if labels else "image",
                                           "data_type": dtype.name, "num_channels": 1}
            spec["delete_existing"] = True
        store = ts.open(spec).result().translate_to[0, 0, 0, 0]  # indexed from 0 whatever the voxel_offset
        block = [c * block_chunks for c in chunk_xyz[::-1]]  # z y x, whole chunks per write
        for start in itertools.product(*(range(0, s, b) for s, b in zip(level.shape, block))):
            sl = tuple(slice(a, min(a + b, s)) for a, b, s in zip(start, block, level.shape))
            data = np.asarray(level[sl].compute(), dtype=dtype)
            store[sl[2], sl[1], sl[0], 0].write(data.transpose(2, 1, 0)).result()
    return path


def read_precomputed(path: str | Path, level: int = 0) -> np.ndarray:
    """Read one scale of a precomputed volume as ``[z, y, x]`` (for checks and small volumes)."""
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path) + "/"},
                     "scale_index": level}).result().translate_to[0, 0, 0, 0]
    return np.asarray(store[..., 0].read().result()).transpose(2, 1, 0)
