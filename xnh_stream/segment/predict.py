"""Affinity prediction with a trained U-Net over a whole volume or a region of it, in tiles.

Tiles start on a grid of the network's total downsampling factor from the volume origin, and the image is
extended by reflection at the volume borders only, so a voxel's affinities do not depend on how the volume is
cut into regions or tiles (blockwise prediction equals whole-volume prediction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .train import pick_device
from .unet import AffinityModel, normalise


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
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
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
        ``progress(done, total)`` after each tile.
    """
    dev = pick_device(device)
    net = model.net.to(dev).eval()
    start, stop = (list(region[0]), list(region[1])) if region else ([0, 0, 0], list(raw.shape))
    in_shape, step, ctx = tile_geometry(model, tile)
    grid = [int(np.prod([f[ax] for f in net.config.downsample_factors])) for ax in range(3)]
    if any(s % g for s, g in zip(start, grid)):
        raise ValueError(f"region start {start} is not on the downsampling grid {grid}")
    if any(b <= a or a < 0 or b > n for a, b, n in zip(start, stop, raw.shape)):
        raise ValueError(f"region {start}..{stop} outside the volume {raw.shape}")
    offset, scale = norm if norm else normalise(np.asarray(raw), model.norm)
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
