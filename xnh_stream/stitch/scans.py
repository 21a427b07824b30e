"""Finished scan outputs as stitching inputs: volume levels, voxel sizes, places, fields of view, resampling.

Coordinates are **world** positions ``z y x`` in metres, in the frame of the sample stage. A scan's voxel
``p`` (level 0, index ``z y x``) has its centre at ``origin_m + p * voxel_m``. The origin comes from the
volume's OME-NGFF ``translation`` when it has one, else from ``report["sample"]["position_m"]`` (the
position of the volume centre, see :data:`POSITION_KEY`), as the chain is to write it.

All transformations are translations and scalings, so resampling is separable: :func:`sample_scan` uses
:func:`scipy.ndimage.affine_transform` with a diagonal matrix on just the part of the scan a grid needs, with
a Gaussian anti-aliasing filter when the grid is coarser than the level read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.names import REPORT_NAME, VOLUME_NAME
from ..io.nxtomo import InputError
from ..io.omezarr import multiscale_levels

#: Key of the scan's place in ``report.json``: the position ``[z, y, x]`` in metres of the volume's centre.
POSITION_KEY = ("sample", "position_m")
#: Fields of view: ``cylinder`` (the disc inscribed in each ``y x`` slice: what tomography reconstructs) or
#: ``box`` (every voxel).
FOVS = ("cylinder", "box")


@dataclass(frozen=True)
class Level:
    """One pyramid level of a scan: array key, voxel size and origin (centre of its voxel ``[0, 0, 0]``)."""

    key: str
    voxel_m: float
    shape: tuple[int, int, int]
    origin_m: tuple[float, float, float]


@dataclass
class Scan:
    """A finished scan output, opened for reading (nothing loaded).

    Attributes
    ----------
    name : str
        The output folder's name (unique among the inputs; made so with its index if needed).
    out : str
        The output folder.
    volume : str
        Its ``volume.ome.zarr``.
    levels : list of Level
        Level 0 (full resolution) first.
    position_source : str
        Where the origin came from (``ome-ngff translation`` or ``report.json sample.position_m``).
    """

    name: str
    out: str
    volume: str
    levels: list[Level]
    position_source: str
    _arrays: dict = field(default_factory=dict, repr=False)

    @property
    def voxel_m(self) -> float:
        """Level-0 voxel size."""
        return self.levels[0].voxel_m

    @property
    def shape(self) -> tuple[int, int, int]:
        """Level-0 shape ``z y x``."""
        return self.levels[0].shape

    @property
    def origin_m(self) -> np.ndarray:
        """Nominal centre of level-0 voxel ``[0, 0, 0]``."""
        return np.asarray(self.levels[0].origin_m)

    @cached_property
    def centre_m(self) -> np.ndarray:
        """Nominal centre of the volume."""
        return self.origin_m + (np.asarray(self.shape) - 1) / 2 * self.voxel_m

    def bounds_m(self, shift_m: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outer edges ``(lo, hi)`` of the volume, moved by ``shift_m``."""
        lo = self.origin_m - self.voxel_m / 2 + (0 if shift_m is None else shift_m)
        return lo, lo + np.asarray(self.shape) * self.voxel_m

    def array(self, level: int):
        """The zarr array of ``level`` (opened once)."""
        import zarr

        if level not in self._arrays:
            self._arrays[level] = zarr.open_array(str(Path(self.volume) / self.levels[level].key), mode="r")
        return self._arrays[level]

    def level_for(self, voxel_m: float) -> int:
        """The coarsest level whose voxel is not coarser than ``voxel_m`` (level 0 if all are)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.voxel_m <= voxel_m * (1 + 1e-6):
                best = i
        return best

    def as_dict(self) -> dict:
        """JSON-able description."""
        return {"name": self.name, "out": self.out, "voxel_m": self.voxel_m, "shape": list(self.shape),
                "nominal_origin_m": self.origin_m.tolist(), "nominal_centre_m": self.centre_m.tolist(),
                "position_source": self.position_source}


def load_scan(out: str | Path, name: str | None = None) -> Scan:
    """Open a finished scan output (``OUT/volume.ome.zarr`` and ``OUT/report.json``) as a stitching input.

    Parameters
    ----------
    out : str or Path
        The output folder (or its ``volume.ome.zarr`` itself, with ``report.json`` beside it).
    name : str, optional
        Name in the stitch report (default: the folder's name).

    Returns
    -------
    Scan

    Raises
    ------
    InputError
        Naming the file: no volume, a volume that is not OME-NGFF or not 3-D, a report that is not JSON, or
        no place for the scan (neither an OME-NGFF translation nor ``sample.position_m`` in the report).
    """
    out = Path(out)
    if out.name.endswith(".ome.zarr"):
        out = out.parent
    volume = out / VOLUME_NAME
    if not volume.exists():
        raise InputError(volume, "no such volume: give finished scan output folders (volume.ome.zarr + report.json)")
    try:
        meta = multiscale_levels(volume)
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise InputError(volume, f"not an OME-NGFF multiscale volume ({exc})") from exc
    import zarr

    levels: list[Level] = []
    for m in meta:
        try:
            arr = zarr.open_array(str(volume / m["path"]), mode="r")
        except Exception as exc:  # noqa: BLE001
            raise InputError(volume / m["path"], f"cannot be opened as a zarr array ({exc})") from exc
        if arr.ndim != 3:
            raise InputError(volume / m["path"], f"must be 3-D [z, y, x], has shape {arr.shape}")
        levels.append(Level(m["path"], m["voxel_m"], tuple(int(n) for n in arr.shape), m["origin_m"]))
    v0 = levels[0].voxel_m
    if levels[0].origin_m is not None:
        source = "ome-ngff translation"
        origin0 = np.asarray(levels[0].origin_m)
    else:
        report_path = out / REPORT_NAME
        if not report_path.exists():
            raise InputError(report_path, "no such report, and the volume has no OME-NGFF translation: the scan "
                                          "has no place to be stitched at")
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(report_path, f"not readable JSON ({exc})") from exc
        node = report
        for key in POSITION_KEY:
            node = node.get(key) if isinstance(node, dict) else None
        key_name = ".".join(POSITION_KEY)
        if node is None:
            raise InputError(report_path, "no sample position (and the volume has no OME-NGFF translation): "
                                          "the scan has no place to be stitched at", key_name)
        try:
            centre = np.asarray(node, dtype=float)
        except (TypeError, ValueError) as exc:
            raise InputError(report_path, f"not a list of 3 numbers ({exc})", key_name) from exc
        if centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise InputError(report_path, f"must be 3 finite numbers [z, y, x] in metres, got {node}", key_name)
        source = "report.json " + key_name
        origin0 = centre - (np.asarray(levels[0].shape) - 1) / 2 * v0
    # levels of 2x block means: the centre of voxel 0 of level l is at origin0 + v0 (2^l - 1) / 2
    from_ome = source == "ome-ngff translation"
    levels = [Level(lv.key, lv.voxel_m, lv.shape, lv.origin_m if from_ome and lv.origin_m is not None
                    else tuple((origin0 + (lv.voxel_m - v0) / 2).tolist()))
              for lv in levels]
    return Scan(name or out.name, str(out), str(volume), levels, source)


def fov_distance(scan: Scan, shift_m: np.ndarray, origin_m: np.ndarray, voxel_m: float,
                 shape: tuple[int, int, int], fov: str = "cylinder") -> np.ndarray:
    """Distance in metres from each voxel of a grid to the edge of a scan's field of view (< 0 outside).

    Parameters
    ----------
    scan : Scan
    shift_m : ndarray
        Correction added to the scan's nominal place.
    origin_m, voxel_m, shape
        The grid: centre of its voxel ``[0, 0, 0]``, voxel size, shape.
    fov : str
        ``cylinder`` (distance to the top and bottom faces and to the cylinder inscribed in the ``y x``
        slices) or ``box`` (distance to the nearest face).

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    if fov not in FOVS:
        raise ValueError(f"fov must be one of {FOVS}, got {fov!r}")
    v, n = scan.voxel_m, np.asarray(scan.shape)
    q = [((origin_m[a] + voxel_m * np.arange(shape[a])) - (scan.origin_m[a] + shift_m[a])) / v for a in range(3)]
    edge = [np.minimum(q[a] + 0.5, n[a] - 0.5 - q[a]).astype(np.float32) * np.float32(v) for a in range(3)]
    dz = edge[0][:, None, None]
    if fov == "box":
        return np.minimum(np.minimum(dz, edge[1][None, :, None]), edge[2][None, None, :])
    radius = min(n[1], n[2]) / 2 * v
    r = np.hypot(((q[1] - (n[1] - 1) / 2) * v)[:, None], ((q[2] - (n[2] - 1) / 2) * v)[None, :])
    return np.minimum(dz, (radius - r).astype(np.float32)[None])


def blend_weight(distance_m: np.ndarray, blend_m: float, trim_m: float = 0.0) -> np.ndarray:
    """Weight that rises smoothly (``3t^2 - 2t^3``) from 0 at ``trim_m`` inside the edge to 1 at ``trim_m +
    blend_m``: a voxel's weight depends only on its distance to the edge, so overlaps fade across."""
    t = np.clip((distance_m - np.float32(trim_m)) / np.float32(max(blend_m, 1e-30)), 0, 1)
    return t * t * (np.float32(3) - np.float32(2) * t)


def sample_scan(scan: Scan, level: int, shift_m: np.ndarray, origin_m: np.ndarray, voxel_m: float,
                shape: tuple[int, int, int], order: int = 1) -> np.ndarray | None:
    """Resample a scan onto a grid, reading only the part of ``level`` the grid needs.

    Parameters
    ----------
    scan : Scan
    level : int
        Pyramid level to read (see :meth:`Scan.level_for`).
    shift_m : ndarray
        Correction added to the scan's nominal place.
    origin_m, voxel_m, shape
        The grid: centre of its voxel ``[0, 0, 0]``, voxel size, shape.
    order : int
        Spline order (1 linear, 3 cubic).

    Returns
    -------
    ndarray of float32 or None
        None if the grid misses the scan; grid voxels beyond the scan's edge take the nearest edge value.
    """
    lv = scan.levels[level]
    a = voxel_m / lv.voxel_m  # level voxels per grid voxel
    b = (np.asarray(origin_m) - np.asarray(lv.origin_m) - shift_m) / lv.voxel_m  # level index of grid voxel 0
    sigma = max(0.0, (a - 1) / 2)
    margin = order + 1 + int(np.ceil(4 * sigma))
    lo, hi = [], []
    for ax in range(3):
        first, last = b[ax], b[ax] + a * (shape[ax] - 1)
        lo.append(max(int(np.floor(first)) - margin, 0))
        hi.append(min(int(np.ceil(last)) + margin + 1, lv.shape[ax]))
        if lo[-1] >= hi[-1]:
            return None
    data = np.asarray(scan.array(level)[tuple(slice(x, y) for x, y in zip(lo, hi))], dtype=np.float32)
    if sigma > 0.05:
        data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    return ndimage.affine_transform(data, np.full(3, a), offset=b - np.asarray(lo), output_shape=tuple(shape),
                                    order=order, mode="nearest", prefilter=order > 1).astype(np.float32, copy=False)
