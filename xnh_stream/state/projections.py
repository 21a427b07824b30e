"""Phase-retrieved projections on disk, written by angle and read by slabs of rows (zarr v3).

The final pass turns the frames of every angle into one projection ``[ny, nx]`` (float32, line integral of
delta in voxel units), then reconstructs the volume slab by slab: a slab of rows needs those rows of every
projection. :class:`ProjectionStore` is that transpose on disk: one array ``[n_slots, ny, nx]`` chunked
``(1, rows, nx)``, so a phase task writes whole chunks of its angle and a slab task reads whole chunks of
its rows, each task from its own process (chunks are separate files; no two tasks write one chunk).

Every chunk carries a CRC-32C (zarr's ``crc32c`` codec), so a damaged chunk fails to read instead of
giving wrong numbers; :meth:`ProjectionStore.write` returns the CRC-32 of what it wrote and
:meth:`ProjectionStore.crc` recomputes it from what the store holds, which is how a resumed final pass
tells a finished unit from a damaged one (a missing chunk reads as zeros and does not match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .work import crc32


class ProjectionStore:
    """Projections of every angle slot (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The zarr array's folder.
    n_slots : int
        Angle slots.
    shape : tuple of int
        ``(ny, nx)`` of a projection.
    rows : int
        Rows per chunk (the slab height of the reconstruction).
    create : bool
        Create the array (an existing one of the same shape is kept: resumed work).
    """

    def __init__(self, path: str | Path, n_slots: int, shape: tuple[int, int], rows: int, create: bool = False) -> None:
        self.path = Path(path)
        ny, nx = shape
        self.shape = (int(n_slots), int(ny), int(nx))
        self.rows = int(rows)
        if create and not (self.path / "zarr.json").exists():
            zarr.create_array(str(self.path), shape=self.shape, chunks=(1, min(self.rows, ny), nx), dtype="float32",
                              fill_value=0.0, compressors=[BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"),
                                                           Crc32cCodec()])
        self._array: zarr.Array | None = None

    @property
    def array(self) -> zarr.Array:
        """The zarr array (opened on first use, in the process that uses it)."""
        if self._array is None:
            self._array = zarr.open_array(str(self.path), mode="r+")
        return self._array

    def write(self, slot: int, projection: Any, value: int = 0) -> int:
        """Store the projection of one slot; returns the CRC-32 of its float32 bytes (continued from
        ``value``, :func:`~xnh_stream.state.work.crc32`)."""
        data = np.asarray(projection, dtype=np.float32)
        self.array[int(slot)] = data
        return crc32(data, value)

    def crc(self, slot: int, value: int = 0) -> int | None:
        """The CRC-32 of the projection of ``slot`` as the store holds it now (continued from ``value``);
        None when it cannot be read (a damaged chunk)."""
        try:
            return crc32(np.asarray(self.array[int(slot)]), value)
        except Exception:  # noqa: BLE001 - garbage, a cut chunk, a checksum that fails: damaged
            return None

    def read_rows(self, slots: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of the projections of ``slots`` (increasing), ``[len(slots), r1 - r0, nx]``."""
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size == 0:
            return np.empty((0, r1 - r0, self.shape[2]), np.float32)
        lo, hi = int(slots.min()), int(slots.max()) + 1
        if hi - lo == slots.size:  # contiguous: one read
            return np.asarray(self.array[lo:hi, r0:r1])
        return np.asarray(self.array.get_orthogonal_selection((slots, slice(r0, r1), slice(None))))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # reopened where it is used
        return state
