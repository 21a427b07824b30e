"""OME-Zarr (OME-NGFF multiscale) volumes: ``OUT/volume.ome.zarr`` and its label images.

Level 0 is full resolution, axes ``z y x`` of type space with unit ``meter``, and the voxel size in
metres in each level's scale transformation. Written with the ``ome-zarr`` package.

Label images (a segmentation, a class map) are OME-NGFF labels: ``IMAGE/labels/<name>`` with the
``image-label`` metadata (``source.image`` pointing back to the image), listed in ``IMAGE/labels``'s
``labels``, on the image's grid and pyramid with the image's coordinate transformations level by level
(scale and the stage translation, :func:`write_labels`), so napari and ome-zarr's reader show them as labels
over the volume, in the same world frame. A label image that cannot live in its image (the image belongs to someone
else) is a standalone multiscale with ``image-label`` metadata (:func:`write_volume` with ``labels=True``).
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

AXES = [{"name": a, "type": "space", "unit": "meter"} for a in "zyx"]

#: The codecs of a volume filled block by block (:func:`create_volume`): zarr's default Zstandard and a
#: CRC-32C of every chunk, so that a damaged chunk fails to read (in zarr-python, tensorstore, neuroglancer)
#: instead of giving wrong voxels.
CHECKED_COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())


def block_mode(blocks: np.ndarray, axis: tuple[int, ...] = (1, 3, 5)) -> np.ndarray:
    """The most frequent value of each 2x2x2 block: ``blocks`` shaped ``(a, 2, b, 2, c, 2)``, reduced over ``axis``.

    Ties go to the value met first in ``z y x`` order within the block (so a block of eight different ids keeps
    its first voxel). The signature is that of a :func:`dask.array.coarsen` reduction.

    Parameters
    ----------
    blocks : ndarray
        Integer labels, shape ``(a, 2, b, 2, c, 2)``.
    axis : tuple of int
        The block axes (``(1, 3, 5)``; anything else is refused).

    Returns
    -------
    ndarray
        ``(a, b, c)``, the dtype of ``blocks``.
    """
    if blocks.ndim != 6:  # dask infers the result's type from a small array of another shape
        return np.asarray(blocks)[..., :0] if blocks.ndim else np.asarray(blocks)
    if tuple(axis) != (1, 3, 5) or blocks.shape[1::2] != (2, 2, 2):
        raise ValueError(f"block_mode reduces 2x2x2 blocks over axes (1, 3, 5), got {blocks.shape} over {axis}")
    a, _, b, _, c, _ = blocks.shape
    v = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(a, b, c, 8)
    best = v[..., 0].copy()
    best_n = (v == best[..., None]).sum(axis=-1, dtype=np.uint8)
    for i in range(1, 8):
        n = (v == v[..., i:i + 1]).sum(axis=-1, dtype=np.uint8)
        more = n > best_n
        best[more] = v[..., i][more]
        best_n[more] = n[more]
    return best


def _label_mode(v: np.ndarray | da.Array) -> np.ndarray | da.Array:
    """Labels halved by the mode of each 2x2x2 block (an odd last voxel dropped, as for the image)."""
    if isinstance(v, da.Array):
        return da.coarsen(block_mode, v, {0: 2, 1: 2, 2: 2}, trim_excess=True)
    a, b, c = (s // 2 for s in v.shape)
    return block_mode(np.asarray(v)[:2 * a, :2 * b, :2 * c].reshape(a, 2, b, 2, c, 2))


def pyramid(volume: np.ndarray | da.Array, labels: bool = False, min_size: int = 32) -> list:
    """Halve ``volume`` repeatedly (block mean, or the mode of each 2x2x2 block for labels) down to ``min_size``.

    Labels take the most frequent id of each block (:func:`block_mode`, as neuroglancer's downsampling does),
    not every second voxel: a level-``l`` voxel then covers the same ``2**l`` cube as the image's, so the label
    levels have the image's shapes and coordinate transformations (:func:`level_transforms`) level by level.
    A dask array gives lazy levels (dask arrays), so a volume larger than memory is written chunk by chunk.
    """
    levels = [volume]
    while min(levels[-1].shape) >= 2 * min_size:
        v = levels[-1]
        if labels:
            levels.append(_label_mode(v))
        elif isinstance(v, da.Array):
            levels.append(da.coarsen(np.mean, v, {0: 2, 1: 2, 2: 2}, trim_excess=True).astype(v.dtype))
        else:
            from skimage.transform import downscale_local_mean  # noqa: PLC0415 - skimage is slow to import

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
        A label image: downsample by picking voxels instead of averaging (ids stay intact), and mark it
        with ``image-label`` metadata.
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
    from ome_zarr.writer import write_multiscale  # noqa: PLC0415 - ome_zarr is slow to import: where it writes

    write_multiscale(levels, group, axes=AXES, coordinate_transformations=transforms, storage_options=opts,
                     name=name or path.name)
    if labels:
        _add_image_label(group, {})
    return path


def _levels(volume: np.ndarray | da.Array, chunks: tuple[int, int, int]) -> tuple[list, list]:
    """Label pyramid levels (voxels picked, ids intact), their scale transformations and storage options."""
    if not isinstance(volume, np.ndarray):
        volume = volume if isinstance(volume, da.Array) else da.from_array(volume, chunks=chunks)
    levels = pyramid(volume, labels=True)
    opts = [{"chunks": tuple(min(c, s) for c, s in zip(chunks, lv.shape))} for lv in levels]
    levels = [lv.rechunk(o["chunks"]) if isinstance(lv, da.Array) else lv for lv, o in zip(levels, opts)]
    return levels, opts


def _ome_attrs(group: zarr.Group) -> tuple[dict, bool]:
    attrs = group.attrs.asdict()
    return (attrs["ome"], True) if "ome" in attrs else (attrs, False)


def _add_image_label(group: zarr.Group, metadata: dict) -> None:
    attrs, nested = _ome_attrs(group)
    attrs = dict(attrs)
    attrs["image-label"] = {**attrs.get("image-label", {}), **metadata}
    if nested:
        group.attrs["ome"] = attrs
    else:
        group.attrs["image-label"] = attrs["image-label"]


def write_labels(image: str | Path, labels: np.ndarray, name: str = "segmentation",
                 chunks: tuple[int, int, int] = (64, 256, 256), properties: list[dict] | None = None) -> Path:
    """Write integer labels as the OME-NGFF label image ``IMAGE/labels/<name>`` of an existing volume.

    Parameters
    ----------
    image : str or Path
        The OME-Zarr volume the labels belong to (``OUT/volume.ome.zarr``); labels of the same name are
        replaced, other label images are kept (the ``labels`` list keeps them).
    labels : ndarray or array-like
        ``[z, y, x]`` on the image's grid (level 0 shape). A zarr or dask array is written chunk by chunk.
        Every level gets the image's coordinate transformations of that level (:func:`image_transforms`).
    name : str
        Name of the label image.
    chunks : tuple of int
        Chunk shape of every level.
    properties : list of dict, optional
        ``image-label`` properties (``{"label-value": id, ...}``).

    Returns
    -------
    Path
        ``IMAGE/labels/<name>``.

    Raises
    ------
    ValueError
        When the labels are not on the image's grid.
    """
    image = Path(image)
    arr, _ = open_volume(image)
    if tuple(labels.shape) != tuple(arr.shape):
        raise ValueError(f"labels of shape {tuple(labels.shape)} are not on the grid of {image} {tuple(arr.shape)}")
    group = zarr.open_group(str(image), mode="r+")
    if "labels" in group and name in group["labels"]:
        del group["labels"][name]
    levels, opts = _levels(labels, chunks)
    transforms = image_transforms(image, len(levels))
    metadata = {"source": {"image": "../../"}}
    if properties:
        metadata["properties"] = properties
    from ome_zarr.writer import write_multiscale_labels  # noqa: PLC0415

    write_multiscale_labels(levels, group, name, axes=AXES, coordinate_transformations=transforms,
                            storage_options=opts, label_metadata=metadata)
    listing = group["labels"]
    attrs, nested = _ome_attrs(listing)
    unique = list(dict.fromkeys(attrs.get("labels", [])))  # ome-zarr appends the name again on a rewrite
    if nested:  # OME-NGFF 0.5: every group's "ome" carries the version (ome-zarr writes none for "labels")
        version = _ome_attrs(group)[0].get("version", "0.5")
        listing.attrs["ome"] = {"version": version, **attrs, "labels": unique}
    else:
        listing.attrs["labels"] = unique
    return image / "labels" / name


def image_transforms(image: str | Path, n_levels: int) -> list[list[dict]]:
    """The coordinate transformations of the first ``n_levels`` levels of the OME-NGFF image ``image``.

    Each level's are the image's own (scale, and translation where it has one), so that labels written with
    them sit on the image in any viewer; levels beyond the image's follow :func:`level_transforms` from its
    level 0.
    """
    group = zarr.open_group(str(image), mode="r")
    datasets = _ome_attrs(group)[0]["multiscales"][0]["datasets"]
    out = [[dict(t) for t in ds["coordinateTransformations"]] for ds in datasets[:n_levels]]
    if len(out) < n_levels:
        first = multiscale_levels(image)[0]
        out += level_transforms(first["voxel_m"], n_levels, first["origin_m"])[len(out):]
    return out


def label_names(image: str | Path) -> list[str]:
    """Names listed in ``IMAGE/labels`` (empty when the image has no labels)."""
    try:
        group = zarr.open_group(str(Path(image) / "labels"), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
        return []
    return list(_ome_attrs(group)[0].get("labels", []))


def open_volume(path: str | Path, level: int = 0, mode: str = "r") -> tuple[zarr.Array, float]:
    """Open one level of an OME-NGFF volume on disk (nothing read yet); returns it and its voxel size in m.

    ``mode`` ``"r+"`` opens it for writing regions (a volume made by :func:`create_volume`).
    """
    group = zarr.open_group(str(path), mode=mode)
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


def pyramid_shapes(shape: tuple[int, int, int], min_size: int = 32) -> list[tuple[int, int, int]]:
    """Shapes of the levels :func:`pyramid` makes of a volume of ``shape`` (each level halves every axis,
    dropping an odd last voxel, while the smallest axis is at least ``2 * min_size``)."""
    shapes = [tuple(int(s) for s in shape)]
    while min(shapes[-1]) >= 2 * min_size:
        shapes.append(tuple(s // 2 for s in shapes[-1]))
    return shapes


def create_volume(path: str | Path, shape: tuple[int, int, int], voxel_m: float,
                  chunks: tuple[int, int, int] = (64, 64, 64), origin_m: tuple[float, float, float] | None = None,
                  name: str | None = None, min_size: int = 32, halve_chunks: bool = False,
                  reopen: bool = False) -> list[zarr.Array]:
    """Create an empty float32 OME-NGFF multiscale volume to be filled block by block (by several processes).

    Every chunk carries a CRC-32C (:data:`CHECKED_COMPRESSORS`).

    The levels have the shapes :func:`pyramid` would give (each the previous halved, down to ``min_size``),
    every level the same ``chunks`` (or, with ``halve_chunks``, chunks halved per level down to 16 voxels,
    so that a level's chunk covers its parent's) clipped to its shape, and ``fill_value`` 0. Writers of
    regions aligned to the chunks never share a chunk.

    Parameters
    ----------
    path : str or Path
        Destination (``*.ome.zarr``).
    shape : tuple of int
        ``(nz, ny, nx)`` of level 0.
    voxel_m : float
        Isotropic voxel size of level 0, metres.
    chunks : tuple of int
        Chunk shape (of level 0; of every level unless ``halve_chunks``).
    origin_m : tuple of float, optional
        Position ``z y x`` in metres of the centre of voxel ``[0, 0, 0]`` (an OME-NGFF translation).
    name : str, optional
        Name stored in the multiscales metadata.
    min_size : int
        Smallest axis of the coarsest level is at least this.
    halve_chunks : bool
        Halve the chunks per level.
    reopen : bool
        Open an existing volume of the same level shapes and chunks instead of replacing it (a resumed run
        keeps what it wrote).

    Returns
    -------
    list of zarr.Array
        The level arrays, level 0 first, open for writing.
    """
    if not voxel_m > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_m}")
    shapes = pyramid_shapes(tuple(shape), min_size)
    level_chunks = [tuple(max(min(c, 16), c >> (i if halve_chunks else 0)) for c in chunks) for i in range(len(shapes))]
    want = [tuple(min(c, n) for c, n in zip(lc, sh)) for lc, sh in zip(level_chunks, shapes)]
    if reopen and (Path(path) / "zarr.json").exists():
        try:
            group = zarr.open_group(str(path), mode="r+")
            levels = [group[f"s{i}"] for i in range(len(shapes))]
            if [tuple(a.shape) for a in levels] == shapes and [tuple(a.chunks) for a in levels] == want:
                return levels
        except (KeyError, ValueError):
            pass
    group = zarr.open_group(str(path), mode="w")
    arrays = [group.create_array(f"s{i}", shape=sh, chunks=ch, dtype="float32", fill_value=0,
                                 dimension_names=[a["name"] for a in AXES], compressors=CHECKED_COMPRESSORS)
              for i, (sh, ch) in enumerate(zip(shapes, want))]
    datasets = [{"path": f"s{i}", "coordinateTransformations": t}
                for i, t in enumerate(level_transforms(voxel_m, len(shapes), origin_m))]
    from ome_zarr.writer import write_multiscales_metadata  # noqa: PLC0415

    write_multiscales_metadata(group, datasets, axes=AXES, name=name or Path(path).name)
    return arrays
