"""Random-forest pixel classification (ilastik-like) for labelled structures such as APEX2-stained nuclei:
multiscale intensity, edge and texture features (:func:`skimage.feature.multiscale_basic_features`) and a
scikit-learn random forest trained from a few labelled strokes (sparse annotations: 0 = unlabelled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.feature import multiscale_basic_features


def features(volume: np.ndarray, sigma_min: float = 1.0, sigma_max: float = 8.0) -> np.ndarray:
    """Per-voxel features ``[z, y, x, F]`` (float32) of a 3-D volume at scales ``sigma_min..sigma_max``."""
    v = np.asarray(volume, np.float32)
    lo, hi = np.percentile(v, [1, 99])
    v = (v - lo) / max(hi - lo, 1e-30)
    return multiscale_basic_features(v, intensity=True, edges=True, texture=True, sigma_min=sigma_min,
                                     sigma_max=sigma_max, channel_axis=None).astype(np.float32)


@dataclass
class PixelClassifier:
    """A trained forest and the feature settings it expects."""

    forest: object
    sigma_min: float = 1.0
    sigma_max: float = 8.0

    @classmethod
    def fit(cls, volume: np.ndarray, strokes: np.ndarray, n_estimators: int = 50, seed: int = 0,
            sigma_min: float = 1.0, sigma_max: float = 8.0) -> PixelClassifier:
        """Train on the voxels where ``strokes`` is non-zero (class ids 1, 2, ...)."""
        from sklearn.ensemble import RandomForestClassifier

        if strokes.shape != volume.shape:
            raise ValueError(f"strokes shape {strokes.shape} differs from the volume {volume.shape}")
        sel = strokes > 0
        if len(np.unique(strokes[sel])) < 2:
            raise ValueError("strokes must label at least two classes (ids 1, 2, ...; 0 = unlabelled)")
        feats = features(volume, sigma_min, sigma_max)
        forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
        forest.fit(feats[sel], strokes[sel])
        return cls(forest, sigma_min, sigma_max)

    def predict_proba(self, volume: np.ndarray) -> np.ndarray:
        """Class probabilities ``[K, z, y, x]`` in the order of ``forest.classes_``."""
        feats = features(volume, self.sigma_min, self.sigma_max)
        p = self.forest.predict_proba(feats.reshape(-1, feats.shape[-1]))  # type: ignore[attr-defined]
        return p.T.reshape((p.shape[1],) + volume.shape).astype(np.float32)

    def predict(self, volume: np.ndarray) -> np.ndarray:
        """Most probable class id per voxel."""
        p = self.predict_proba(volume)
        return np.asarray(self.forest.classes_)[p.argmax(axis=0)]  # type: ignore[attr-defined]


def strokes_from_truth(truth: np.ndarray, n_per_class: int = 200, seed: int = 0, radius: int = 1) -> np.ndarray:
    """Sparse annotations for tests and demos: a few small balls of each class (1 = background, 2 = structure)
    drawn at random inside a boolean ``truth`` mask and outside it."""
    rng = np.random.default_rng(seed)
    strokes = np.zeros(truth.shape, np.uint8)
    for cls_id, where in ((1, ~truth), (2, truth)):
        pts = np.argwhere(where)
        if not len(pts):
            raise ValueError(f"class {cls_id} has no voxel to draw strokes in")
        for p in pts[rng.choice(len(pts), min(n_per_class, len(pts)), replace=False)]:
            box = tuple(slice(max(c - radius, 0), c + radius + 1) for c in p)
            strokes[box] = np.where(where[box], cls_id, strokes[box])
    return strokes


