"""Segmentation scores in CREMI conventions: variation of information split / merge and adapted Rand error;
merges of large cells; the baselines that see no truth (Otsu threshold and gradient watershed), the oracle
threshold that does, and time per cubic micrometre (``bench/bench_segment.py`` prints them per tissue family).

Conventions: voxels where the ground truth is 0 (background, unlabelled) are ignored; the predicted labels are
taken as they are. VOI split is ``H(prediction | truth)`` (over-segmentation), VOI merge ``H(truth | prediction)``
(under-segmentation), in bits (base-2 logarithm, as CREMI and skimage). The adapted Rand error is ``1 - F`` of the Rand precision and
recall over pairs of distinct voxels (Arganda-Carreras et al. 2015; CREMI's reference code also counts a voxel paired with itself, which differs by about one over the voxels per object). Both come from :mod:`skimage.metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information


@dataclass
class Scores:
    """Segmentation scores against ground truth (lower is better for the errors)."""

    voi_split: float
    voi_merge: float
    adapted_rand: float
    rand_precision: float  # pairs together in truth and prediction / pairs together in the prediction
    rand_recall: float  # the same / pairs together in the truth
    voxels: int

    @property
    def voi(self) -> float:
        """VOI split + merge."""
        return self.voi_split + self.voi_merge

    def as_dict(self) -> dict:
        """Plain dictionary (JSON-ready), with the VOI sum."""
        return {**asdict(self), "voi": self.voi}

    def line(self) -> str:
        """One human-readable line."""
        return (f"VOI split {self.voi_split:.3f} merge {self.voi_merge:.3f} (sum {self.voi:.3f} bits), "
                f"adapted Rand error {self.adapted_rand:.3f} (precision {self.rand_precision:.3f}, "
                f"recall {self.rand_recall:.3f}) over {self.voxels} voxels")


def evaluate(segmentation: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> Scores:
    """Score ``segmentation`` against ``truth`` (same shape) in CREMI conventions, within ``mask`` if given."""
    if segmentation.shape != truth.shape:
        raise ValueError(f"segmentation shape {segmentation.shape} differs from ground truth {truth.shape}")
    keep = truth != 0
    if mask is not None:
        keep &= mask.astype(bool)
    if not keep.any():
        raise ValueError("ground truth has no labelled voxel (all 0) inside the mask")
    gt = np.asarray(truth[keep]).astype(np.int64)
    seg = np.asarray(segmentation[keep]).astype(np.int64)
    # relabel to small consecutive ids (skimage builds contingency tables on the label values)
    gt = np.unique(gt, return_inverse=True)[1].ravel() + 1
    seg = np.unique(seg, return_inverse=True)[1].ravel() + 1
    split, merge = variation_of_information(gt, seg)
    # skimage returns (error, pairs-in-both / pairs-in-truth, pairs-in-both / pairs-in-prediction), whatever
    # its names say; here precision falls with merges and recall with splits (CREMI's meaning).
    are, in_truth, in_pred = adapted_rand_error(gt, seg)
    return Scores(float(split), float(merge), float(are), float(in_pred), float(in_truth), int(keep.sum()))


# --------------------------------------------------------------------------- merges, baselines, oracle, speed


def _check_same_shape(**arrays: np.ndarray | None) -> None:
    shapes = {k: a.shape for k, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes differ: " + ", ".join(f"{k} {s}" for k, s in shapes.items()))


def count_merges(segmentation: np.ndarray, truth: np.ndarray, min_voxels: int = 1000,
                 mask: np.ndarray | None = None) -> int:
    """Merges of large truth cells: how many cells of at least ``min_voxels`` voxels (inside ``mask``) share their
    dominant segment with a larger one.

    Each truth cell's dominant segment is the one holding most of its voxels (segment 0, unsegmented, is never
    a merge). A segment that is the dominant one of ``k`` such cells counts ``k - 1`` merges (the joins that
    made it), so two cells joined count 1, three 2.

    Parameters
    ----------
    segmentation, truth : ndarray of int
        Same shape; truth 0 is background (ignored).
    min_voxels : int
        Smallest truth cell counted (voxels inside ``mask``).
    mask : ndarray of bool, optional
        Voxels considered.

    Returns
    -------
    int
    """
    _check_same_shape(segmentation=segmentation, truth=truth, mask=mask)
    keep = truth != 0
    if mask is not None:
        keep &= mask.astype(bool)
    gt = np.asarray(truth[keep]).astype(np.int64)
    seg = np.asarray(segmentation[keep]).astype(np.int64)
    if not gt.size:
        return 0
    pairs, counts = np.unique(np.column_stack([gt, seg]), axis=0, return_counts=True)
    cells = np.unique(pairs[:, 0])
    total = np.bincount(np.searchsorted(cells, pairs[:, 0]), counts)  # voxels per cell, in the order of cells
    order = np.lexsort((-counts, pairs[:, 0]))  # per cell, its largest overlap first
    p = pairs[order]
    first = np.r_[True, p[1:, 0] != p[:-1, 0]]
    dominant = p[first, 1]
    large = (total >= min_voxels) & (dominant != 0)
    _, k = np.unique(dominant[large], return_counts=True)
    return int((k - 1).sum())


#: Objects whose largest distance to their own surface is at most this many voxels are thin (neurites).
THIN_DEPTH = 3.5


def object_depth(labels: np.ndarray) -> np.ndarray:
    """Per voxel, its Euclidean distance to the nearest voxel of its object that touches another label (0 on
    those voxels and on label 0); the volume's faces are not boundaries."""
    from scipy import ndimage

    from .data import affinities_from_labels
    from .postprocess import voxel_affinity

    edged = np.pad(labels, 1, mode="edge")
    inside = voxel_affinity(affinities_from_labels(edged))[1:-1, 1:-1, 1:-1] > 0
    return ndimage.distance_transform_edt(inside)


def thin_objects(labels: np.ndarray, depth_voxels: float = THIN_DEPTH) -> np.ndarray:
    """Voxels of the objects (labels > 0) whose largest distance to their own surface is at most ``depth_voxels``
    (:func:`object_depth` + 1: a voxel with a boundary face is 1 deep; the volume's faces are not surfaces)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if not labels.any():
        return np.zeros(labels.shape, bool)
    ids = np.arange(1, int(labels.max()) + 1)
    deepest = np.zeros(len(ids) + 1)
    deepest[1:] = ndimage.maximum(object_depth(labels) + 1.0, labels, ids)
    return (deepest <= depth_voxels)[labels] & (labels > 0)


@dataclass
class KeptWhole:
    """How whole the truth objects stay, thin against thick (:func:`kept_whole`)."""

    thin_objects: int
    thin_share: float  # voxel-weighted share of a thin object's voxels in its largest segment
    thick_objects: int
    thick_share: float
    depth_voxels: float  # thin: the object's largest distance to its own surface at most this

    def line(self) -> str:
        """One human-readable line."""
        return (f"kept whole: thin objects (<= {self.depth_voxels:g} voxels deep) {self.thin_share:.2f} "
                f"({self.thin_objects}), thick {self.thick_share:.2f} ({self.thick_objects})")


def kept_whole(segmentation: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
               depth_voxels: float = THIN_DEPTH) -> KeptWhole:
    """Share of each truth object's voxels in its largest segment, voxel-weighted over thin and over thick objects.

    An object is thin as :func:`thin_objects` says (its largest distance to its own surface at most
    ``depth_voxels``: a neurite of radius up to about that; the volume's faces are not its surface). Splits of
    thin neurites along their length and splits of cells show apart, which the adapted Rand error mixes (and
    weighs by size, so that thin objects hardly count).

    Parameters
    ----------
    segmentation, truth : ndarray of int
        Same shape; truth 0 is background (ignored).
    mask : ndarray of bool, optional
        Voxels considered (the depth is measured on the whole object).
    depth_voxels : float
        The thin / thick limit.

    Returns
    -------
    KeptWhole
        Shares are NaN for a class with no object.
    """
    from scipy import ndimage

    _check_same_shape(segmentation=segmentation, truth=truth, mask=mask)
    inside = np.ones(truth.shape, bool) if mask is None else mask.astype(bool)
    truth = np.asarray(truth)
    thin = thin_objects(truth, depth_voxels)
    sums = {True: [0, 0.0, 0], False: [0, 0.0, 0]}  # objects, voxels in the largest segment, voxels
    for label, box in enumerate(ndimage.find_objects(truth), start=1):
        if box is None:
            continue
        obj = truth[box] == label
        counted = obj & inside[box]
        if not counted.any():
            continue
        _, k = np.unique(np.asarray(segmentation[box])[counted], return_counts=True)
        entry = sums[bool(thin[box][obj].any())]
        entry[0] += 1
        entry[1] += float(k.max())
        entry[2] += int(k.sum())

    def share(e: list) -> float:
        return e[1] / e[2] if e[2] else float("nan")

    return KeptWhole(sums[True][0], share(sums[True]), sums[False][0], share(sums[False]), depth_voxels)


def threshold_segmentation(volume: np.ndarray, threshold: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Connected components (6-connected) of the voxels below ``threshold``, inside ``mask``: the cells of a
    stained volume, whose membranes are above (delta higher than cytoplasm). Other voxels 0."""
    from scipy import ndimage

    _check_same_shape(volume=volume, mask=mask)
    below = np.asarray(volume) < threshold
    if mask is not None:
        below &= mask.astype(bool)
    return ndimage.label(below)[0].astype(np.uint32)


def otsu_segmentation(volume: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Baseline without truth: :func:`threshold_segmentation` at the Otsu threshold of the values inside
    ``mask`` (the sample; all voxels without one). Returns the labels and the threshold."""
    from skimage.filters import threshold_otsu

    _check_same_shape(volume=volume, mask=mask)
    values = np.asarray(volume)[mask.astype(bool)] if mask is not None else np.asarray(volume).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("no finite values inside the mask to threshold")
    t = float(threshold_otsu(values))
    return threshold_segmentation(volume, t, mask), t


def gradient_watershed(volume: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.0,
                       marker_quantile: float = 0.3) -> np.ndarray:
    """Baseline without truth: a watershed of the gradient magnitude (scikit-image).

    The volume is smoothed (Gaussian ``sigma`` voxels), its Sobel gradient magnitude taken; markers are the
    connected regions where the gradient is below its ``marker_quantile`` quantile inside ``mask`` (flat cell
    interiors), flooded over the gradient within ``mask``.

    Returns
    -------
    ndarray of uint32
        Segments 1..N inside ``mask``, 0 outside.
    """
    from scipy import ndimage
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    _check_same_shape(volume=volume, mask=mask)
    if not 0 < marker_quantile < 1:
        raise ValueError(f"marker_quantile must lie in (0, 1), got {marker_quantile}")
    inside = np.ones(volume.shape, bool) if mask is None else mask.astype(bool)
    grad = sobel(ndimage.gaussian_filter(np.asarray(volume, np.float64), sigma))
    markers = ndimage.label((grad < np.quantile(grad[inside], marker_quantile)) & inside)[0]
    return watershed(grad, markers, mask=inside).astype(np.uint32)


def oracle_threshold(volume: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                     thresholds: np.ndarray | None = None, sample: np.ndarray | None = None
                     ) -> tuple[float, np.ndarray, Scores]:
    """The oracle: :func:`threshold_segmentation` at the threshold with the lowest adapted Rand error against
    ``truth`` (it sees the truth: a bound for what a threshold can do, not a method).

    Parameters
    ----------
    volume, truth : ndarray
        Same shape.
    mask : ndarray of bool, optional
        Voxels scored (as :func:`evaluate`).
    thresholds : ndarray, optional
        Candidates; default 41 quantiles (2 % to 98 %) of the volume inside ``sample``.
    sample : ndarray of bool, optional
        Where the components are formed (the sample mask); default ``mask``.

    Returns
    -------
    threshold, labels, scores
    """
    _check_same_shape(volume=volume, truth=truth, mask=mask, sample=sample)
    sample = mask if sample is None else sample
    if thresholds is None:
        values = np.asarray(volume)[sample.astype(bool)] if sample is not None else np.asarray(volume).ravel()
        thresholds = np.quantile(values, np.linspace(0.02, 0.98, 41))
    if len(thresholds) == 0:
        raise ValueError("no thresholds to try")
    best: tuple[float, np.ndarray, Scores] | None = None
    for t in thresholds:
        seg = threshold_segmentation(volume, float(t), sample)
        s = evaluate(seg, truth, mask)
        if best is None or s.adapted_rand < best[2].adapted_rand:
            best = (float(t), seg, s)
    return best  # type: ignore[return-value]


def seconds_per_um3(seconds: float, voxels: int, voxel_m: float) -> float:
    """Time per cubic micrometre of sample for ``voxels`` voxels of ``voxel_m`` metres done in ``seconds``."""
    if voxels <= 0 or voxel_m <= 0:
        raise ValueError(f"voxels and voxel_m must be positive, got {voxels}, {voxel_m}")
    return float(seconds) / (voxels * (voxel_m * 1e6) ** 3)
