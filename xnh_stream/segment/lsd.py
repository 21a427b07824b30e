"""Local shape descriptors: an auxiliary training target for the affinity network (Sheridan et al. 2022).

For a voxel ``x`` of object ``l`` and a Gaussian window ``G`` of ``sigma`` voxels, the window's view of its own
object, ``m = [labels == l]``, has a mass ``s0 = G * m``, a centre of mass ``c = G * (m x) / s0`` and a covariance
``C = G * (m x x^T) / s0 - c c^T``. The ten descriptors are the mean offset ``c - x`` (3), the variances (3), the
covariances (3) and the mass (1), each scaled into ``[0, 1]``: they describe the object's local size,
elongation and direction, what a thin neurite and a cell body differ in, so a network asked to predict them
learns shape beyond one boundary. Only the affinities are used at inference; the descriptors shape training.
Written for this project from the paper's definition (no code of funkelab's ``lsd`` used); 0 outside objects.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Channels of :func:`local_shape_descriptors`.
LSD_CHANNELS = 10
#: Gaussian window of the descriptors, voxels (neurites of 2-6 voxels' radius, cells of 10-30).
LSD_SIGMA = 4.0


def local_shape_descriptors(labels: np.ndarray, sigma: float = LSD_SIGMA) -> np.ndarray:
    """The ten local shape descriptors of every voxel of ``labels`` (0 = background).

    Parameters
    ----------
    labels : ndarray [z, y, x] of int
        Objects; the volume's faces are taken as background beyond them.
    sigma : float
        Gaussian window, voxels.

    Returns
    -------
    ndarray [10, z, y, x] float32
        Mean offset ``(c - x) / (2 sigma) + 1/2`` (z, y, x), variances ``/ sigma^2`` (zz, yy, xx), covariances
        ``/ (2 sigma^2) + 1/2`` (zy, zx, yx), mass ``s0``; clipped to ``[0, 1]``; 0 on background voxels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D, got shape {labels.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    out = np.zeros((LSD_CHANNELS,) + labels.shape, np.float32)
    reach = int(np.ceil(3 * sigma))
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False))

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="constant", truncate=3.0)

    for lab, box in enumerate(boxes, start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - reach, 0), min(s.stop + reach, n)) for s, n in zip(box, labels.shape))
        m = (labels[grown] == lab).astype(np.float64)
        coords = np.meshgrid(*(np.arange(s.stop - s.start, dtype=np.float64) for s in grown), indexing="ij")
        s0 = smooth(m)
        inside = m > 0
        safe = np.where(inside, s0, 1.0)
        centre = [smooth(m * x)[inside] / safe[inside] for x in coords]
        second = {}
        for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
            second[i, j] = smooth(m * coords[i] * coords[j])[inside] / safe[inside] - centre[i] * centre[j]
        values = [(centre[i] - coords[i][inside]) / (2 * sigma) + 0.5 for i in range(3)]
        values += [second[i, i] / sigma**2 for i in range(3)]
        values += [second[ij] / (2 * sigma**2) + 0.5 for ij in ((0, 1), (0, 2), (1, 2))]
        values.append(s0[inside])
        target = out[(slice(None),) + grown]
        for c, v in enumerate(values):
            target[c][inside] = np.clip(v, 0.0, 1.0)
    return out


#: Channels of the covariances, by the pair of axes they couple.
_COVARIANCE = {(0, 1): 6, (0, 2): 7, (1, 2): 8}


def flip_descriptors(d: np.ndarray, axis: int) -> np.ndarray:
    """The descriptors ``[10, z, y, x]`` of the labels flipped along spatial ``axis`` (0-2), from those of the
    labels: the voxels flipped, that axis's offset and its two covariances change sign (``v -> 1 - v``)."""
    out = np.flip(d, axis + 1).copy()
    inside = out[9] > 0
    for c in [axis] + [ch for pair, ch in _COVARIANCE.items() if axis in pair]:
        out[c][inside] = 1 - out[c][inside]
    return out


def transpose_descriptors(d: np.ndarray, perm: tuple[int, int, int]) -> np.ndarray:
    """The descriptors of ``labels.transpose(perm)`` from those of ``labels``: the voxels transposed and the
    channels permuted with the axes (new axis ``i`` is old axis ``perm[i]``)."""
    order = list(perm) + [3 + p for p in perm]
    order += [_COVARIANCE[tuple(sorted((perm[i], perm[j])))] for i, j in ((0, 1), (0, 2), (1, 2))] + [9]
    return np.transpose(d, (0,) + tuple(p + 1 for p in perm))[order]
