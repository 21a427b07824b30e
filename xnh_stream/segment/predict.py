"""Affinity prediction with a trained U-Net over a whole volume or a region of it, in tiles.

Tiles start on a grid of the network's total downsampling factor from the volume origin, and the image is
extended by reflection at the volume borders only, so a voxel's affinities do not depend on how the volume is
cut into regions or tiles (blockwise prediction equals whole-volume prediction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .train import pick_device
from .unet import AffinityModel, normalise

#: The scales a volume can be shown to the network at (:func:`predict_affinities`).
SCALES = (1, 2)
#: Gaussian sigma (voxels of the volume) applied before the 2x upsampling of scale 2 (:class:`Upsampled`); chosen
#: on the shipped model's tuning volumes (neural and voronoi seeds 9, 10) among 0, 0.6 and 1 (docs/segmentation.md).
SCALE2_SIGMA = 0.6


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """``scales`` as a tuple of distinct values of :data:`SCALES`; ValueError otherwise."""
    out = tuple(int(k) for k in scales)
    if not out or any(k not in SCALES for k in out) or len(set(out)) != len(out):
        raise ValueError(f"scales must be distinct values among {SCALES}, got {tuple(scales)}")
    return out


def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start..stop-1`` folded into ``[0, n)`` by mirror reflection (numpy ``reflect`` mode)."""
    i = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i > n - 1, period - i, i)


def read_reflected(raw, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """Read ``raw[start:stop]`` (any array supporting slicing, e.g. zarr), mirrored where it leaves the volume."""
    idx = [reflect_indices(a, b, n) for a, b, n in zip(start, stop, raw.shape)]
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    box = np.asarray(raw[tuple(slice(a, b) for a, b in zip(lo, hi))])
    return box[np.ix_(*[i - a for i, a in zip(idx, lo)])]


def tile_geometry(model: AffinityModel, tile: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Input shape, step and low-side context of prediction tiles for a requested output ``tile`` edge."""
    net = model.net
    grid = [int(np.prod([f[ax] for f in net.config.downsample_factors])) for ax in range(3)]
    in_shape = net.valid_input_shape((tile,) * 3)
    out_shape = net.output_shape(in_shape)
    step = tuple(max(g, (o // g) * g) for o, g in zip(out_shape, grid))
    ctx = tuple((i - o) // 2 for i, o in zip(in_shape, out_shape))
    return in_shape, step, ctx


def predict_affinities(model: AffinityModel, raw, region: tuple[Sequence[int], Sequence[int]] | None = None,
                       norm: tuple[float, float] | None = None, tile: int = 64, device: str = "auto",
                       progress: Callable[[int, int], None] | None = None, scales: Sequence[int] = (1,)
                       ) -> np.ndarray:
    """Predict affinities ``[C, z, y, x]`` (float32) for ``raw`` or a region of it.

    Parameters
    ----------
    model : AffinityModel
        Trained network.
    raw : array-like
        The whole image volume ``[z, y, x]`` (numpy or zarr array).
    region : (start, stop), optional
        Part of the volume to predict; its start must lie on the network's downsampling grid
        (a multiple of 8 for three 2x downsamplings) so that results match whole-volume prediction.
    norm : (offset, scale), optional
        Input normalisation; computed from ``raw`` (the model's percentile rule) if omitted.
    tile : int
        Requested output tile edge (larger is faster, needs more memory).
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    progress : callable, optional
        ``progress(done, total)`` after each tile (of every scale).
    scales : sequence of int
        Scales the network sees the volume at, 1 (as it is) and/or 2 (smoothed and upsampled 2x,
        :class:`Upsampled`: a voxel spans 2 of the network's voxels); the affinities are the mean over the
        scales, those of scale 2 brought to the volume's grid (:func:`downsample_affinities`). Scale 2 takes
        8x the time of scale 1; it cuts thin neurites and cells behind thick membranes less
        (docs/segmentation.md, *Two scales*).
    """
    scales = check_scales(scales)
    start, stop = (list(region[0]), list(region[1])) if region else ([0, 0, 0], list(raw.shape))
    if norm is None:
        norm = normalise(np.asarray(raw), model.norm)
    done, total = [0], len(scales)

    def step(k: int, n: int) -> None:
        if progress:
            progress(done[0] * n + k, total * n)

    out = None
    for k in scales:
        if k == 1:
            a = _predict_grid(model, raw, start, stop, norm, tile, device, step)
        else:
            a = downsample_affinities(_predict_grid(model, Upsampled(raw), [2 * v for v in start],
                                                    [2 * v for v in stop], norm, tile, device, step))
        out = a if out is None else out + a
        done[0] += 1
    assert out is not None
    if total > 1:
        out /= np.float32(total)
    return out


def _predict_grid(model: AffinityModel, raw, start: list[int], stop: list[int], norm: tuple[float, float],
                  tile: int, device: str, progress: Callable[[int, int], None] | None) -> np.ndarray:
    """:func:`predict_affinities` of ``raw[start:stop]`` at the scale ``raw`` is given in."""
    dev = pick_device(device)
    net = model.net.to(dev).eval()
    in_shape, step, ctx = tile_geometry(model, tile)
    grid = [int(np.prod([f[ax] for f in net.config.downsample_factors])) for ax in range(3)]
    if any(s % g for s, g in zip(start, grid)):
        raise ValueError(f"region start {start} is not on the downsampling grid {grid}")
    if any(b <= a or a < 0 or b > n for a, b, n in zip(start, stop, raw.shape)):
        raise ValueError(f"region {start}..{stop} outside the volume {raw.shape}")
    offset, scale = norm
    shape = [b - a for a, b in zip(start, stop)]
    out = np.zeros((len(net.config.offsets), *shape), np.float32)
    starts = [range(a, b, s) for a, b, s in zip(start, stop, step)]
    tiles = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    with torch.no_grad():
        for k, t in enumerate(tiles):
            lo = [a - c for a, c in zip(t, ctx)]
            x = (read_reflected(raw, lo, [a + i for a, i in zip(lo, in_shape)]).astype(np.float32) - offset) / scale
            y = net(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(dev))[0].cpu().numpy()
            keep = [min(s, b - a) for s, a, b in zip(step, t, stop)]
            dst = tuple(slice(a - s0, a - s0 + kk) for a, s0, kk in zip(t, start, keep))
            out[(slice(None),) + dst] = y[(slice(None),) + tuple(slice(0, kk) for kk in keep)]
            if progress:
                progress(k + 1, len(tiles))
    return out


class Upsampled:
    """A lazy 2x view of a volume: smoothed by a Gaussian of ``sigma`` voxels (what lies near its Nyquist
    frequency, noise mostly, would otherwise look like texture two voxels wide), then zoomed 2x linearly on the
    half-voxel grid (``scipy.ndimage.zoom``, ``grid_mode``).
    Slicing it reads only the voxels it needs plus the filter's reach, so a region of the view equals the same
    region of the whole volume's view (blockwise = whole volume).

    Parameters
    ----------
    raw : array-like [z, y, x]
        The volume (numpy or zarr).
    sigma : float
        Gaussian sigma in the volume's voxels (0: none).
    """

    def __init__(self, raw, sigma: float = SCALE2_SIGMA) -> None:
        self.raw, self.sigma = raw, float(sigma)
        self.radius = int(np.ceil(4 * self.sigma)) if self.sigma > 0 else 0
        self.shape = tuple(2 * n for n in raw.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        lo, hi, sub = [], [], []
        for s, n in zip(key, self.raw.shape):
            a, b = s.start or 0, 2 * n if s.stop is None else s.stop
            lo.append(a // 2)
            hi.append((b + 1) // 2)
            sub.append(slice(a - 2 * (a // 2), b - 2 * (a // 2)))
        m = self.radius + 1
        first = [max(a - m, 0) for a in lo]
        last = [min(b + m, n) for b, n in zip(hi, self.raw.shape)]
        box = np.asarray(self.raw[tuple(slice(a, b) for a, b in zip(first, last))], dtype=np.float32)
        if self.sigma > 0:
            box = ndimage.gaussian_filter(box, self.sigma, mode="nearest", radius=self.radius)
        # scipy's linear zoom on the half-voxel grid (each fine voxel at the centre of its half of a coarse one),
        # edge values continued: beyond the volume as ``nearest``, inside it from the voxel read beside the region
        box = box[tuple(slice(max(a - 1, 0) - f, min(b + 1, n) - f)
                        for a, b, n, f in zip(lo, hi, self.raw.shape, first))]
        fine = ndimage.zoom(box, 2, order=1, grid_mode=True, mode="nearest")
        return fine[tuple(slice(2 * (a - max(a - 1, 0)) + s.start, 2 * (a - max(a - 1, 0)) + s.stop)
                          for a, s in zip(lo, sub))]


def downsample_affinities(fine: np.ndarray) -> np.ndarray:
    """Affinities of a 2x grid brought to the coarse grid: the link of coarse voxel ``k`` with ``k - 1`` along an
    axis is the mean of the fine links ``2k`` with ``2k - 1`` over the 2 x 2 face they cross (waterz offsets
    ``-1`` along each axis, one channel per axis)."""
    C = fine.shape[0]
    shape = [n // 2 for n in fine.shape[1:]]
    out = np.empty((C, *shape), np.float32)
    for c in range(C):
        f = fine[c][tuple(slice(0, 2 * n, 2) if ax == c else slice(None) for ax, n in enumerate(shape))]
        for ax in range(3):
            if ax != c:
                f = np.moveaxis(f, ax, 0)
                f = 0.5 * (f[0::2] + f[1::2])
                f = np.moveaxis(f, 0, ax)
        out[c] = f
    return out
