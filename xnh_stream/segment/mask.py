"""The sample mask of a segmentation: voxels outside the sample (air, and the field around a pin) get label 0.

The mask is the sample's support, found on the reconstructed volume the way the chain finds its sample
envelope (:func:`xnh_stream.physics.envelope.estimate_support`: Otsu threshold inside the reconstruction disk,
opening, holes filled slice by slice), each slice replaced by its convex hull (:func:`convex_slices`: dark
cell interiors open to the air stay inside). The watershed floods the support grown by ``margin`` voxels
(:data:`WATERSHED_MARGIN`), the labels are then cut to the support. It
is computed once, on a strided sample of the volume (every ``step``-th voxel, ``step`` chosen from the volume's
size alone, 1 for volumes up to 4 million voxels), so the whole-volume path and every block of the blockwise
path read the same mask (:meth:`SampleMask.region`).

Methods (``SegmentParams.mask``, ``segment --mask``):

``auto`` (default)
    the support where the volume shows a sample in air: :func:`estimate_support` finds one and the mean delta
    around it is below ``IN_AIR_MAX_RATIO`` (0.3) of the mean inside, the chain's own test of a sample in air
    (:meth:`~xnh_stream.physics.envelope.SampleEnvelope.in_air`; measured 0.06 on the default simulated scan).
    Otherwise no mask: a sample wider than the field of view, or a crop inside the tissue (there the Otsu
    support is the stained part of the tissue, with a ratio of 0.88 around it), is segmented whole.
``threshold``
    Otsu threshold of the whole volume (no reconstruction disk), opened and hole-filled slice by slice: for
    volumes that are not ``[rows, n, n]`` reconstructions (crops, stitched volumes).
``none``
    no mask: every voxel is segmented (the behaviour before the mask existed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..physics.envelope import IN_AIR_MAX_RATIO, estimate_support, fill_slices, surroundings

__all__ = ["MASK_METHODS", "SampleMask", "convex_slices", "mask_step", "outside_area", "sample_mask",
           "threshold_support"]

#: Accepted values of ``SegmentParams.mask`` / ``segment --mask``.
MASK_METHODS = ("auto", "threshold", "none")
#: The strided sample the mask is computed on holds at most about this many voxels.
MASK_SAMPLE_VOXELS = 4e6
#: Voxels of air around the support that the watershed still floods (:attr:`SampleMask.grown`); the labels are
#: then cut to the support itself. Flooding only the support (0) left the voxels at the sample's surface to the
#: cells, which joined two large cells there on held-out seed 1000 (adapted Rand 0.229, against 0.170 unmasked);
#: with 2 voxels, 0.174 (seeds 2000 / 3000: 0.050 / 0.062, as unmasked). Further air is never flooded, so it
#: cannot join cells through the air.
WATERSHED_MARGIN = 2


def mask_step(shape: tuple[int, ...], max_voxels: float = MASK_SAMPLE_VOXELS) -> int:
    """Stride of the sample the mask is computed on: the smallest that keeps it under ``max_voxels``."""
    return max(1, int(np.ceil((float(np.prod(shape)) / max_voxels) ** (1 / 3))))


def threshold_support(volume: np.ndarray, min_fraction: float = 0.02, max_fraction: float = 0.98
                      ) -> np.ndarray | None:
    """Support of the sample by an Otsu threshold of the whole volume, opened and hole-filled slice by slice.

    Parameters
    ----------
    volume : ndarray [z, y, x]
        Reconstructed delta (positive in matter).
    min_fraction, max_fraction : float
        Plausible share of the volume the support fills; outside it, None (no sample found, or no
        surroundings to mask).

    Returns
    -------
    ndarray of bool or None
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {v.shape}")
    if not np.isfinite(v).all() or float(v.max() - v.min()) <= 0:
        return None
    support = fill_slices(v > threshold_otsu(v))
    fraction = float(support.mean())
    return support if min_fraction <= fraction <= max_fraction else None


def convex_slices(support: np.ndarray) -> np.ndarray:
    """Each slice ``support[k]`` replaced by its convex hull (a pin's cross-section is convex).

    The Otsu support misses what the reconstruction shows darker than the threshold and open to the air: the
    interior of a large cell at the sample's surface, whose low frequencies the phase retrieval loses (held-out
    seed 1000: 67 192 labelled voxels, 12 %, fell outside before the hull; the segmentation's adapted Rand error
    went from 0.170 to 0.341). The hull takes them back and adds only air in the pin's concavities.
    """
    from skimage.morphology import convex_hull_image

    out = np.zeros_like(support, dtype=bool)
    for k in range(support.shape[0]):
        if support[k].any():
            out[k] = convex_hull_image(support[k])
    return out


@dataclass(frozen=True)
class SampleMask:
    """The sample mask of a volume, on the strided grid it was computed on.

    Attributes
    ----------
    shape : (int, int, int)
        The volume's shape.
    step : int
        Stride of the grid of ``coarse`` (voxel ``[k, j, i]`` of the volume is ``coarse[k // step, ...]``).
    coarse : ndarray of bool or None
        The sample's support on that grid: the labels are 0 outside it; None: no mask (every voxel inside).
    method : str
        How it was made (one of :data:`MASK_METHODS`).
    grown : ndarray of bool or None
        The support grown by the watershed's margin, on the same grid: what the watershed floods (None: as
        ``coarse``).
    """

    shape: tuple[int, int, int]
    step: int
    coarse: np.ndarray | None
    method: str = "auto"
    grown: np.ndarray | None = None

    def region(self, slices: tuple[slice, slice, slice], grown: bool = False) -> np.ndarray | None:
        """The mask (bool, True inside) of the region ``slices`` of the volume: the support, or (``grown``) what
        the watershed floods; None: no mask."""
        coarse = self.grown if grown and self.grown is not None else self.coarse
        if coarse is None:
            return None
        idx = [np.arange(*s.indices(n)) // self.step for s, n in zip(slices, self.shape)]
        return coarse[np.ix_(*idx)]

    def full(self, grown: bool = False) -> np.ndarray | None:
        """The mask of the whole volume (see :meth:`region`); None: no mask."""
        return self.region(tuple(slice(0, n) for n in self.shape), grown)  # type: ignore[arg-type]

    def save(self, path) -> None:
        """Write to ``path`` (``.npz``)."""
        empty = np.zeros((0, 0, 0), bool)
        np.savez(path, shape=np.asarray(self.shape), step=self.step, method=self.method,
                 coarse=empty if self.coarse is None else self.coarse, has_mask=self.coarse is not None,
                 grown=empty if self.grown is None else self.grown, has_grown=self.grown is not None)

    @classmethod
    def load(cls, path) -> SampleMask:
        """Read what :meth:`save` wrote."""
        with np.load(path) as f:
            return cls(tuple(int(n) for n in f["shape"]), int(f["step"]),  # type: ignore[arg-type]
                       f["coarse"].astype(bool) if bool(f["has_mask"]) else None, str(f["method"]),
                       f["grown"].astype(bool) if bool(f["has_grown"]) else None)


def sample_mask(volume, method: str = "auto", margin: int = WATERSHED_MARGIN) -> SampleMask:
    """The sample mask of ``volume`` (a numpy or zarr array ``[z, y, x]``; only a strided sample is read).

    Parameters
    ----------
    volume : array-like [z, y, x]
        Reconstructed delta.
    method : str
        ``auto``, ``threshold`` or ``none`` (module docstring).
    margin : int
        Voxels of air around the support the watershed floods (rounded up to whole voxels of the strided grid).

    Returns
    -------
    SampleMask
    """
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r} (one of {', '.join(MASK_METHODS)})")
    if len(volume.shape) != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {tuple(volume.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    shape = tuple(int(n) for n in volume.shape)
    step = mask_step(shape)
    if method == "none":
        return SampleMask(shape, step, None, method)  # type: ignore[arg-type]
    sample = np.asarray(volume[::step, ::step, ::step], dtype=np.float32)
    square = sample.shape[1] == sample.shape[2] and sample.shape[2] >= 16
    if method == "auto":
        support = estimate_support(sample) if square else None
        if support is not None and surroundings(sample, support)["outside_ratio"] >= IN_AIR_MAX_RATIO:
            support = None  # not a sample in air: what lies around the support is matter
    else:
        support = threshold_support(sample)
    if support is None:
        return SampleMask(shape, step, None, method)  # type: ignore[arg-type]
    support = convex_slices(support)
    grow = int(np.ceil(margin / step))
    grown = (ndimage.binary_dilation(support, ndimage.generate_binary_structure(3, 1), iterations=grow)
             if grow else support)
    return SampleMask(shape, step, support, method, grown)  # type: ignore[arg-type]


def outside_area(frag: np.ndarray, inside: np.ndarray | None,
                 valid: tuple[bool, bool, bool] = (False, False, False)) -> np.ndarray:
    """Area (voxel faces) each fragment shares with voxels outside the sample mask.

    The enclosed-segment rule (:func:`~.postprocess.merge_enclosed`) counts it as surface with no neighbour,
    like the volume's own faces: a cell at the sample's edge is not taken for enclosed by its one neighbour.

    Parameters
    ----------
    frag : ndarray
        Fragments, grown by one plane at the low side of each axis where ``valid`` (as
        :func:`~.postprocess.contact_statistics` takes them, so each link is counted in one block).
    inside : ndarray of bool or None
        The mask on the same voxels as ``frag``; None: no mask, no such area.
    valid : (bool, bool, bool)
        Which axes carry the plane before the block.

    Returns
    -------
    ndarray (n, 2), float64
        Rows ``(fragment, area)``, fragment 0 left out.
    """
    from .postprocess import contact_statistics

    if inside is None or inside.all():
        return np.zeros((0, 2))
    if inside.shape != frag.shape:
        raise ValueError(f"mask shape {inside.shape} differs from fragments {frag.shape}")
    outside = int(frag.max(initial=0)) + 1  # an id no fragment has (exact in float64 below 2**53)
    marked = np.where(inside, frag, outside).astype(np.uint64)
    core = tuple(n - int(v) for n, v in zip(frag.shape, valid))
    rows = contact_statistics(np.zeros((3, *core), np.float32), marked, valid)
    rows = rows[rows[:, 1] == float(outside)] if len(rows) else rows
    return np.column_stack([rows[:, 0], rows[:, 3]]).reshape(-1, 2) if len(rows) else np.zeros((0, 2))
