"""Segmentation scores in CREMI conventions: variation of information split / merge and adapted Rand error.

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
