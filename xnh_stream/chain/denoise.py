"""The final pass's optional denoising step (``denoise.method: noise2inverse``): its tasks and work layout.

The back-projection step writes both half-volumes of every slab into ``OUT/work/halves_full.zarr`` (arrays
``0`` and ``1``, the volume's shape and chunks) besides the volume; then one task trains the denoiser on
them (:func:`~xnh_stream.physics.denoise.train_noise2inverse`) and slab tasks write ``(f(H_0) + f(H_1)) / 2``
into the nested image ``volume.ome.zarr/denoised`` (its own OME-NGFF multiscales, same grid, scale and
translation), whose units the report checksums with the volume's (keys ``denoised/s0``, ...): it is
published, checked and resumed with the volume, never alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io.omezarr import CHECKED_COMPRESSORS, open_volume
from ..physics.denoise import Noise2InverseConfig, Noise2InverseModel, denoise_rows, train_noise2inverse
from ..state.work import crc32
from .publish import VolumeStats

#: Name of the denoised image inside ``volume.ome.zarr`` (and the prefix of its units in the report).
DENOISED_NAME = "denoised"
#: The work folder's copy of both whole half-volumes.
HALVES_FULL_NAME = "halves_full.zarr"


def create_full_halves(path: Path, shape: tuple[int, int, int], rows: int) -> None:
    """The two whole half-volumes' arrays, chunked as the volume (a slab task writes whole chunks only)."""
    import zarr  # noqa: PLC0415

    group = zarr.open_group(str(path), mode="a")
    chunks = (rows, min(256, shape[1]), min(256, shape[2]))
    for name in "01":
        if name in group and tuple(group[name].shape) == shape:
            continue
        group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=0.0, overwrite=True,
                           compressors=CHECKED_COMPRESSORS)


def _halves(path: str) -> tuple[object, object]:
    import zarr  # noqa: PLC0415

    group = zarr.open_group(path, mode="r")
    return group["0"], group["1"]


def denoise_train_task(halves_path: str, disk_radius_px: float, config: Noise2InverseConfig) -> Noise2InverseModel:
    """Train the denoiser on the work folder's half-volumes."""
    return train_noise2inverse(_halves(halves_path), disk_radius_px, config)


@dataclass(frozen=True)
class DenoiseSlab:
    """Rows ``r0:r1`` of the denoised image to make."""

    r0: int
    r1: int
    halves_path: str
    image_path: str


def denoise_slab_task(job: DenoiseSlab, model: Noise2InverseModel) -> tuple[int, int, VolumeStats]:
    """Write rows ``r0:r1`` of level 0 of the denoised image; returns ``r0``, their CRC-32 and statistics."""
    rows = denoise_rows(model, _halves(job.halves_path), job.r0, job.r1)
    level0, _ = open_volume(job.image_path, 0, mode="r+")
    level0[job.r0:job.r1] = rows
    return job.r0, crc32(rows), VolumeStats.of(rows)
