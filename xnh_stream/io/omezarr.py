"""OME-Zarr (OME-NGFF multiscale) volumes: ``OUT/volume.ome.zarr`` and ``OUT/segmentation.ome.zarr``.

Level 0 is full resolution, axes ``z y x`` of type space with unit ``meter``, and the voxel size in
metres in each level's scale transformation. Written with the ``ome-zarr`` package.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from ome_zarr.writer import write_multiscale, write_multiscales_metadata
from skimage.transform import downscale_local_mean

AXES = [{"name": a, "type": "space", "unit": "meter"} for a in "zyx"]


def pyramid(volume: np.ndarray | da.Array, labels: bool = False, min_size: int = 32) -> list:
    """Halve ``volume`` repeatedly (block mean, or every second voxel for labels) down to ``min_size``.

    A dask array gives lazy levels (dask arrays), so a volume larger than memory is written chunk by chunk.
    """
    levels = [volume]
    while min(levels[-1].shape) >= 2 * min_size:
        v = levels[-1]
        if labels:
            levels.append(v[::2, ::2, ::2] if isinstance(v, da.Array) else v[::2, ::2, ::2].copy())
        elif isinstance(v, da.Array):
            levels.append(da.coarsen(np.mean, v, {0: 2, 1: 2, 2: 2}, trim_excess=True).astype(v.dtype))
        else:
            levels.append(downscale_local_mean(v, (2, 2, 2)).astype(v.dtype, copy=False))
    return levels


def level_transforms(voxel_m: float, n_levels: int, origin_m: tuple[float, float, float] | None = None) -> list:
    """OME-NGFF coordinate transformations of every level of a pyramid of 2x block means.

    Level ``l`` has voxel ``voxel_m * 2**l``; with ``origin_m`` (the position in metres of the centre of voxel
    ``[0, 0, 0]`` of level 0, ``z y x``) each level also gets the ``translation`` of its own first voxel's
    centre, ``origin_m + voxel_m * (2**l - 1) / 2``.
    """
    out = []
    for i in range(n_levels):
        t = [{"type": "scale", "scale": [voxel_m * 2**i] * 3}]
        if origin_m is not None:
            t.append({"type": "translation", "translation": [float(o) + voxel_m * (2**i - 1) / 2 for o in origin_m]})
        out.append(t)
    return out


def write_volume(path: str | Path, volume: np.ndarray, voxel_m: float, labels: bool = False,
                 chunks: tuple[int, int, int] = (64, 256, 256), name: str | None = None,
                 origin_m: tuple[float, float, float] | None = None) -> Path:
    """Write a 3-D volume ``[z, y, x]`` as an OME-NGFF multiscale image.

    Parameters
    ----------
    path : str or Path
        Destination (``*.ome.zarr``), replaced if it exists.
    volume : ndarray or array-like
        float32 image, or integer labels when ``labels`` is True. Anything that is not a numpy array (a
        zarr or dask array) is read and written chunk by chunk, never whole into memory.
    voxel_m : float
        Isotropic voxel size in metres.
    labels : bool
        Downsample by picking voxels instead of averaging, keeping label ids intact.
    chunks : tuple of int
        Chunk shape of every level (clipped to the level's shape).
    name : str, optional
        Name stored in the multiscales metadata.
    origin_m : (float, float, float), optional
        Position ``z y x`` in metres of the centre of voxel ``[0, 0, 0]`` (e.g. the scan's place on the sample
        stage): written as each level's OME-NGFF ``translation`` (see :func:`level_transforms`).

    Returns
    -------
    Path
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {volume.shape}")
    if not voxel_m > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_m}")
    path = Path(path)
    if not isinstance(volume, np.ndarray):
        volume = volume if isinstance(volume, da.Array) else da.from_array(volume, chunks=chunks)
        levels = pyramid(volume if labels else volume.astype(np.float32), labels=labels)
    else:
        levels = pyramid(volume if labels else volume.astype(np.float32, copy=False), labels=labels)
    group = zarr.open_group(str(path), mode="w")
    transforms = level_transforms(voxel_m, len(levels), origin_m)
    opts = [{"chunks": tuple(min(c, s) for c, s in zip(chunks, lv.shape))} for lv in levels]
    levels = [lv.rechunk(o["chunks"]) if isinstance(lv, da.Array) else lv for lv, o in zip(levels, opts)]
    write_multiscale(levels, group, axes=AXES, coordinate_transformations=transforms, storage_options=opts,
                     name=name or path.name)
    return path


def open_volume(path: str | Path, level: int = 0) -> tuple[zarr.Array, float]:
    """Open one level of an OME-NGFF volume on disk (nothing read yet); returns it and its voxel size in m."""
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    ds = ms["datasets"][level]
    scale = next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")
    return group[ds["path"]], float(scale[-1])


def read_volume(path: str | Path, level: int = 0) -> tuple[np.ndarray, float]:
    """Read one level of an OME-NGFF volume; returns the array and its voxel size in metres."""
    arr, voxel = open_volume(path, level)
    return np.asarray(arr[...]), voxel


def multiscale_levels(path: str | Path) -> list[dict]:
    """The levels of an OME-NGFF volume: for each, ``path`` (the array key), ``voxel_m`` and ``origin_m``.

    ``origin_m`` is the level's ``translation`` (position ``z y x`` of its voxel ``[0, 0, 0]``, metres), or
    None when the metadata has none. Nothing is read but the metadata.
    """
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    out = []
    for ds in ms["datasets"]:
        ts = ds["coordinateTransformations"]
        scale = next(t["scale"] for t in ts if t["type"] == "scale")
        shift = next((t["translation"] for t in ts if t["type"] == "translation"), None)
        out.append({"path": ds["path"], "voxel_m": float(scale[-1]),
                    "origin_m": None if shift is None else tuple(float(v) for v in shift[-3:])})
    return out


def create_volume(path: str | Path, shape: tuple[int, int, int], voxel_m: float,
                  chunks: tuple[int, int, int] = (64, 64, 64), origin_m: tuple[float, float, float] | None = None,
                  name: str | None = None, min_size: int = 32, halve_chunks: bool = False) -> list[zarr.Array]:
    """Create an empty float32 OME-NGFF multiscale volume to be filled block by block (by several processes).

    The levels have the shapes :func:`pyramid` would give (each the previous halved, down to ``min_size``),
    every level the same ``chunks`` (or, with ``halve_chunks``, chunks halved per level down to 16 voxels,
    so that a level's chunk covers its parent's) clipped to its shape, and ``fill_value`` 0. Writers of
    regions aligned to the chunks never share a chunk.

    Returns
    -------
    list of zarr.Array
        The level arrays, level 0 first, open for writing.
    """
    shape = tuple(int(n) for n in shape)
    shapes = [shape]
    while min(shapes[-1]) >= 2 * min_size:
        shapes.append(tuple(n // 2 for n in shapes[-1]))
    group = zarr.open_group(str(path), mode="w")
    level_chunks = [tuple(max(min(c, 16), c >> (i if halve_chunks else 0)) for c in chunks) for i in range(len(shapes))]
    arrays = [group.create_array(f"s{i}", shape=s, chunks=tuple(min(c, n) for c, n in zip(level_chunks[i], s)),
                                 dtype="float32", fill_value=0, dimension_names=[a["name"] for a in AXES])
              for i, s in enumerate(shapes)]
    datasets = [{"path": f"s{i}", "coordinateTransformations": t}
                for i, t in enumerate(level_transforms(voxel_m, len(shapes), origin_m))]
    write_multiscales_metadata(group, datasets, axes=AXES, name=name or Path(path).name)
    return arrays
