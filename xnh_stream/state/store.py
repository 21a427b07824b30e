"""On-disk store of flat-fielded frames per distance and angle (zarr v3), so memory stays bounded.

The four distances of an XNH scan are four full rotations taken one after another; the phase retrieval of
an angle needs the frame of every distance at that angle, so frames wait on disk until the last distance
reaches it. :class:`DistanceStore` keeps them in one zarr group::

    STORE/zarr.json                      attributes: frame shape, dtype, codec, layout version
    STORE/distance_<k>/frames            [capacity, ny, nx], one frame per chunk, grown along axis 0
    STORE/distance_<k>/angles            [capacity] float64 degrees, NaN where a slot is empty
    STORE/distance_<k>/stamps            [capacity] uint64, what the frame is (its id and flat-field; 0: unsaid)

The ``angles`` array is the presence index: slot ``i`` holds a frame if and only if ``angles[i]`` is
finite. ``put`` writes the frame chunk first and the angle second, and zarr's local store replaces a chunk
file atomically (write to a temporary file, then rename), so a crash at any point leaves either a complete
frame with its angle, or an empty slot that the next ``put`` reuses: never an angle pointing at a torn
frame. Nothing is held in memory but the angle index (8 bytes per frame). A stamp, written with the frame and
before its angle, names the raw frame and the darks and flats that flat-fielded it
(:meth:`~xnh_stream.chain.calibration.Calibration.stamp`): the final pass takes the frame from here instead
of reading its file again only when its own stamp for it is the same.

The store pairs nothing: the chain pairs the angles of the different distances (:meth:`DistanceStore.angles`)
with its one rule, :class:`~xnh_stream.chain.angles.AngleTable` (:func:`~xnh_stream.chain.angles.match_angles`),
so the stream and ``xnh-stream process`` pair the same frames.

One process writes a store (threads of it may share the instance: a lock serialises writes); others may
open it with ``readonly=True``.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ..io.nxtomo import frame_problem
from ..physics.xp import to_numpy

LAYOUT_VERSION = 2  # 2: stamps
ATTR = "xnh_distance_store"
CODECS = ("blosc-lz4", "zstd", "none")
_GROW_MIN = 64  # slots added at least when an array grows (empty chunks cost nothing on disk)
_ANGLE_CHUNK = 1024


def _compressors(codec: str, level: int | None) -> list[Any] | None:
    """zarr v3 compressor list for a codec name."""
    if codec == "blosc-lz4":
        # Byte shuffle groups the exponent bytes of float32 values: ~1.3x on noisy flat-fielded frames at
        # about the speed of an uncompressed write.
        return [BloscCodec(cname="lz4", clevel=5 if level is None else level, shuffle="shuffle")]
    if codec == "zstd":
        return [ZstdCodec(level=3 if level is None else level)]
    if codec == "none":
        return None
    raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")


def _distance_key(distance_key: float) -> int:
    """The group number of a distance key: the key itself for an int, else a float distance key (z1 in
    metres, :func:`xnh_stream.io.sources.distance_key`) in units of 0.1 um."""
    if isinstance(distance_key, bool) or not isinstance(distance_key, (int, np.integer, float, np.floating)):
        raise ValueError(f"distance_key must be a distance key (z1 in m) or a non-negative int, got {distance_key!r}")
    if isinstance(distance_key, (float, np.floating)):
        if not (math.isfinite(distance_key) and distance_key > 0):
            raise ValueError(f"distance_key must be a positive z1 in metres, got {distance_key!r}")
        return int(round(float(distance_key) * 1e7))
    if distance_key < 0:
        raise ValueError(f"distance_key must be a non-negative int, got {distance_key!r}")
    return int(distance_key)


def _angle(angle_deg: float) -> float:
    a = float(angle_deg)
    if not math.isfinite(a):
        raise ValueError(f"angle_deg must be finite, got {angle_deg!r}")
    return a


class _Distance:
    """The arrays of one distance and its in-memory angle -> slot index."""

    def __init__(self, group: zarr.Group) -> None:
        self.frames = group["frames"]
        self.angles = group["angles"]
        self.stamps = group["stamps"]
        values = self.angles[:]
        present = np.flatnonzero(np.isfinite(values))
        self.slot: dict[float, int] = {float(values[i]): int(i) for i in present}
        self.next_slot = int(present[-1]) + 1 if present.size else 0


class DistanceStore:
    """Flat-fielded frames per distance key and angle, on disk (zarr v3), growable, reopenable.

    Parameters
    ----------
    path : str or Path
        Store folder; created if missing, reopened (with everything in it) if it exists.
    frame_shape : (int, int), optional
        Frame shape ``(ny, nx)``; required to create a store, checked against it on reopen.
    dtype : numpy dtype
        Stored dtype (float32 by default); frames are cast to it when that is a same-kind cast.
    codec : {"blosc-lz4", "zstd", "none"}
        Compression of each frame chunk (see :data:`CODECS`); fixed when the store is created.
    level : int, optional
        Compression level (blosc clevel, zstd level); codec default if omitted.
    readonly : bool
        Open an existing store for reading only.

    Raises
    ------
    ValueError
        On a bad shape, dtype or codec, or a reopen whose shape or dtype differs from the store's.
    """

    def __init__(self, path: str | os.PathLike[str], frame_shape: tuple[int, int] | None = None,
                 dtype: Any = np.float32, codec: str = "blosc-lz4", level: int | None = None,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self.overwrites = 0  # puts that replaced an angle already stored (since this instance was opened)
        exists = (self.path / "zarr.json").is_file()
        if exists:
            self._group = zarr.open_group(str(self.path), mode="r" if readonly else "r+")
            meta = self._group.attrs.get(ATTR)
            if not isinstance(meta, dict) or meta.get("version") != LAYOUT_VERSION:
                raise ValueError(f"{self.path} is not a distance store of layout version {LAYOUT_VERSION}")
            self.frame_shape = (int(meta["frame_shape"][0]), int(meta["frame_shape"][1]))
            self.dtype = np.dtype(meta["dtype"])
            self.codec = str(meta["codec"])
            if frame_shape is not None and tuple(frame_shape) != self.frame_shape:
                raise ValueError(f"frame_shape {tuple(frame_shape)} differs from the store's {self.frame_shape} "
                                 f"({self.path})")
            if np.dtype(dtype) != self.dtype:
                raise ValueError(f"dtype {np.dtype(dtype)} differs from the store's {self.dtype} ({self.path})")
            self._compressors = _compressors(self.codec, meta.get("level"))
        else:
            if readonly:
                raise ValueError(f"no distance store at {self.path} (readonly=True opens an existing one)")
            if frame_shape is None:
                raise ValueError("frame_shape is required to create a distance store")
            if len(frame_shape) != 2 or any(isinstance(n, bool) or int(n) != n or n < 1 for n in frame_shape):
                raise ValueError(f"frame_shape must be two positive ints (ny, nx), got {frame_shape!r}")
            self.dtype = np.dtype(dtype)
            if self.dtype.kind not in "fiu":
                raise ValueError(f"dtype must be a numeric dtype, got {self.dtype}")
            self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
            self.codec = codec
            self._compressors = _compressors(codec, level)
            self._group = zarr.open_group(str(self.path), mode="w")
            self._group.attrs[ATTR] = {"version": LAYOUT_VERSION, "frame_shape": list(self.frame_shape),
                                       "dtype": self.dtype.str, "codec": codec, "level": level}
        self._distances: dict[int, _Distance] = {}
        self.refresh()

    def refresh(self) -> None:
        """Reload the angle index from disk (a ``readonly`` reader following another process's writes)."""
        with self._lock:
            self._distances = {int(name[9:]): _Distance(sub) for name, sub in self._group.groups()
                               if name.startswith("distance_") and name[9:].isdigit()}

    # ------------------------------------------------------------------ writing
    def _create(self, key: int) -> _Distance:
        sub = self._group.create_group(f"distance_{key}")
        ny, nx = self.frame_shape
        sub.create_array("frames", shape=(_GROW_MIN, ny, nx), chunks=(1, ny, nx), dtype=self.dtype,
                         compressors=self._compressors, fill_value=0)
        sub.create_array("angles", shape=(_GROW_MIN,), chunks=(_ANGLE_CHUNK,), dtype=np.float64,
                         compressors=None, fill_value=np.nan)
        sub.create_array("stamps", shape=(_GROW_MIN,), chunks=(_ANGLE_CHUNK,), dtype=np.uint64,
                         compressors=None, fill_value=0)
        d = _Distance(sub)
        self._distances[key] = d
        return d

    @staticmethod
    def _ensure(arr: Any, slot: int) -> None:
        """Grow ``arr`` along axis 0 (geometrically) so that ``slot`` exists."""
        n = arr.shape[0]
        if slot >= n:
            arr.resize((max(slot + 1, n + max(n, _GROW_MIN)), *arr.shape[1:]))

    def put(self, distance_key: int, angle_deg: float, frame: Any, stamp: int = 0) -> bool:
        """Store the frame of a distance at an angle, with its ``stamp`` (see the module docstring; 0 when
        unsaid); returns True if the angle was new.

        Idempotent: a second put of the same angle (exact float64 value) overwrites that frame and is
        counted in :attr:`overwrites`.

        Raises
        ------
        ValueError
            On a bad key or angle, or a frame that :func:`xnh_stream.io.nxtomo.frame_problem` refuses
            (wrong shape, NaN/inf, all zero), or that cannot be cast to the store's dtype.
        """
        if self.readonly:
            raise ValueError(f"distance store {self.path} was opened readonly")
        key, angle = _distance_key(distance_key), _angle(angle_deg)
        frame = to_numpy(frame)
        problem = frame_problem(frame, self.frame_shape)
        if problem:
            raise ValueError(f"distance {key}, angle {angle} deg: {problem}")
        if not np.can_cast(frame.dtype, self.dtype, "same_kind"):
            raise ValueError(f"distance {key}, angle {angle} deg: frame dtype {frame.dtype} cannot be stored as "
                             f"{self.dtype}")
        frame = np.ascontiguousarray(frame, dtype=self.dtype)
        with self._lock:
            d = self._distances.get(key) or self._create(key)
            slot = d.slot.get(angle)
            new = slot is None
            if new:
                slot = d.next_slot
                self._ensure(d.frames, slot)
                self._ensure(d.angles, slot)
                self._ensure(d.stamps, slot)
            d.frames[slot] = frame  # frame first ...
            d.stamps[slot] = np.uint64(stamp)
            if new:
                d.angles[slot] = angle  # ... then its angle: the slot is present only once both are on disk
                d.slot[angle] = slot
                d.next_slot = slot + 1
            else:
                self.overwrites += 1
        return new

    # ------------------------------------------------------------------ reading
    def _distance(self, distance_key: int) -> _Distance:
        key = _distance_key(distance_key)
        if key not in self._distances:
            raise KeyError(f"distance {key} has no frame in {self.path}")
        return self._distances[key]

    def get(self, distance_key: int, angle_deg: float) -> np.ndarray:
        """The frame of a distance at an angle (exact angle, as given to :meth:`put`).

        Raises
        ------
        KeyError
            If that distance has no frame at that angle.
        """
        d, angle = self._distance(distance_key), _angle(angle_deg)
        slot = d.slot.get(angle)
        if slot is None:
            raise KeyError(f"distance {distance_key} has no frame at {angle!r} deg in {self.path}")
        return np.asarray(d.frames[slot])

    def stamps(self, distance_key: float) -> dict[float, int]:
        """Angle (degree) -> stamp of every frame stored for one distance; empty for an unknown distance."""
        d = self._distances.get(_distance_key(distance_key))
        if d is None or not d.slot:
            return {}
        values = d.stamps[: max(d.slot.values()) + 1]
        return {angle: int(values[slot]) for angle, slot in d.slot.items()}

    def has(self, distance_key: float, angle_deg: float) -> bool:
        """Whether a distance has a frame at exactly that angle."""
        return (distance_key, angle_deg) in self

    def __contains__(self, item: object) -> bool:
        """``(distance_key, angle_deg) in store``."""
        try:
            key, angle = item  # type: ignore[misc]
            return _angle(angle) in self._distances[_distance_key(key)].slot
        except (TypeError, ValueError, KeyError):
            return False

    def distances(self) -> list[int]:
        """Distance keys that hold at least one frame, sorted."""
        return sorted(k for k, d in self._distances.items() if d.slot)

    def angles(self, distance_key: int) -> np.ndarray:
        """Sorted angles (degree, float64) stored for one distance; empty for an unknown distance."""
        d = self._distances.get(_distance_key(distance_key))
        return np.sort(np.fromiter(d.slot, np.float64, len(d.slot))) if d else np.empty(0)

    def __len__(self) -> int:
        return sum(len(d.slot) for d in self._distances.values())

    def nbytes_on_disk(self) -> int:
        """Bytes of every file of the store on disk (frames, angles and metadata)."""
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except FileNotFoundError:  # a temporary file renamed meanwhile
                    pass
        return total

    def close(self) -> None:
        """Nothing is buffered (every put is on disk when it returns); kept for symmetry and ``with``."""

    def __enter__(self) -> DistanceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
