"""Self-supervised denoising of a reconstruction from its two half-volumes (Noise2Inverse).

The final pass back-projects the even and the odd angles into two half-volumes ``H_0 = x + n_0`` and ``H_1 = x
+ n_1`` whose noises are independent (disjoint projections; Hendriksen et al., IEEE TCI 2020). A network ``f``
trained to predict ``H_1`` from ``H_0`` (and ``H_0`` from ``H_1``) cannot predict the noise it is not given, so
the minimiser of ``E |f(H_a) - H_b|^2`` is ``E[x | H_a]``: a denoiser learned from the scan alone, with no clean
data and no model from elsewhere. The denoised volume is ``(f(H_0) + f(H_1)) / 2``.

The same independence measures the result without a truth, on rows held out of the training:

* the noise of the plain reconstruction ``(H_0 + H_1) / 2``: ``mean (H_0 - H_1)^2 / 4``;
* the error of ``f(H_a)``: ``mean (f(H_a) - H_b)^2 - s_b^2`` with ``s_b^2 = mean (H_0 - H_1)^2 / 2`` (the noise
  of one half, equal counts); by convexity the average of the two predictions does at least as well.

What does not change between the halves is not removed: ring artefacts from the shared flats, the phase
retrieval's low-frequency errors, the missing-wedge and truncation artefacts. The FSC of the scan is measured
on the halves before any denoising (``report.json`` says which volume is which).

The network is 2.5-D: ``context`` consecutive planes (rows along the rotation axis) in, the middle plane out,
a small U-Net (two poolings, "same" convolutions) that adds a correction to its input's middle plane. FBP
noise is in-plane streaks; the phase retrieval's 2-D filter of the projections correlates it along the axis
over a few rows, which the context covers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Noise2InverseConfig", "Noise2InverseModel", "denoise_rows", "held_out_rows", "train_noise2inverse"]


@dataclass(frozen=True)
class Noise2InverseConfig:
    """Training options (``denoise`` config section).

    Attributes
    ----------
    steps : int
        Adam steps.
    patch : int
        Side of the square training patches (a multiple of 4; clipped to the plane).
    batch : int
        Patches per step.
    context : int
        Planes in (odd).
    width : int
        Feature maps at the top level of the U-Net (x2, x4 below).
    learning_rate : float
        Adam's, decayed by a cosine to 0 over the steps.
    train_voxels : int
        Most voxels (both halves) held in memory for training; stacks of planes are spread over the volume.
    crop : int
        Side of the window read from each training stack of planes larger than it (placed at random inside the
        field of view), so that large planes give many rows to train on rather than a few whole planes.
    held_out : float
        Fraction of the rows (a central band) never trained on; the figures of merit are measured there.
    seed : int
        Patch sampling and initial weights.
    """

    steps: int = 400
    patch: int = 64
    batch: int = 8
    context: int = 5
    width: int = 16
    learning_rate: float = 1e-3
    train_voxels: int = 32 * 2**20
    crop: int = 256
    held_out: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context < 1 or self.context % 2 == 0:
            raise ValueError(f"denoise context must be an odd number of planes, got {self.context}")
        if self.patch < 8 or self.patch % 4:
            raise ValueError(f"denoise patch must be a multiple of 4 and >= 8, got {self.patch}")


@dataclass
class Noise2InverseModel:
    """A trained denoiser and what it measured on the held-out rows.

    Attributes
    ----------
    config : Noise2InverseConfig
        How it was trained.
    state : bytes
        The network's weights (``torch.save`` of its ``state_dict``).
    offset, scale : float
        Values are normalised as ``(v - offset) / scale`` for the network.
    losses : list of float
        Training loss (normalised units) every ``steps // 20`` steps.
    rows_held_out : (int, int)
        The band of rows not trained on.
    rows_trained : int
        How many stacks of planes (rows) the training patches came from.
    noise_rms : float
        RMS noise of the plain reconstruction on the held-out rows (volume units).
    error_rms : float
        Upper bound of the denoised volume's RMS error on those rows (volume units); ``nan`` when the
        held-out rows were too few.
    """

    config: Noise2InverseConfig
    state: bytes
    offset: float
    scale: float
    losses: list[float] = field(default_factory=list)
    rows_held_out: tuple[int, int] = (0, 0)
    rows_trained: int = 0
    noise_rms: float = math.nan
    error_rms: float = math.nan

    def network(self) -> Any:
        """The network with its weights, in evaluation mode."""
        import torch  # noqa: PLC0415

        net = _make_net(self.config.context, self.config.width)
        net.load_state_dict(torch.load(io.BytesIO(self.state), weights_only=True))
        return net.eval()

    def record(self) -> dict[str, Any]:
        """JSON form for ``report.json`` (weights left out)."""
        return {"method": "noise2inverse", "steps": self.config.steps, "context": self.config.context,
                "width": self.config.width, "patch": self.config.patch, "seed": self.config.seed,
                "loss_first": _r(self.losses[0]) if self.losses else None,
                "loss_last": _r(self.losses[-1]) if self.losses else None,
                "rows_held_out": list(self.rows_held_out), "rows_trained": self.rows_trained,
                "noise_rms": _r(self.noise_rms),
                "error_rms_bound": _r(self.error_rms),
                "gain": _r(self.noise_rms / self.error_rms) if self.error_rms > 0 else None}


def _r(v: float) -> float | None:
    return None if not math.isfinite(v) else float(f"{v:.4g}")


def _make_net(context: int, width: int) -> Any:
    """The 2.5-D U-Net: ``context`` planes in, the middle one plus a learned correction out."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415
    from torch.nn import functional as F  # noqa: N812, PLC0415

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = width
            self.e0, self.e1, self.bottom = block(context, c), block(c, 2 * c), block(2 * c, 4 * c)
            self.u1, self.u0 = block(6 * c, 2 * c), block(3 * c, c)
            self.head = nn.Conv2d(c, 1, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e0 = self.e0(x)
            e1 = self.e1(F.avg_pool2d(e0, 2))
            b = self.bottom(F.avg_pool2d(e1, 2))
            u1 = self.u1(torch.cat([F.interpolate(b, scale_factor=2.0, mode="bilinear"), e1], 1))
            u0 = self.u0(torch.cat([F.interpolate(u1, scale_factor=2.0, mode="bilinear"), e0], 1))
            return x[:, context // 2:context // 2 + 1] + self.head(u0)

    return Net()


def held_out_rows(nz: int, fraction: float, context: int) -> tuple[int, int]:
    """The central band of rows ``[a, b)`` kept out of training (empty when the volume is too thin)."""
    n = max(int(round(nz * fraction)), 1) if fraction > 0 else 0
    if nz - n < 2 * context or n == 0:
        return (0, 0)
    a = (nz - n) // 2
    return (a, a + n)


def _mirrored(z: int, context: int, nz: int) -> list[int]:
    """Rows ``z - context//2 .. z + context//2``, mirrored at the volume's ends."""
    h = context // 2
    return [abs(i) if i < 0 else (2 * (nz - 1) - i if i >= nz else i) for i in range(z - h, z + h + 1)]


def _plane_stack(half: Any, z: int, context: int, nz: int,
                 window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Planes ``z - context//2 .. z + context//2`` of a (z, y, x) array (their ``window``), mirrored at the
    volume's ends."""
    idx = _mirrored(z, context, nz)
    lo, hi = min(idx), max(idx) + 1
    block = np.asarray(half[lo:hi, window[0], window[1]], dtype=np.float32)
    return block[[i - lo for i in idx]]


def _windows(n_stacks: int, shape: tuple[int, int], side: tuple[int, int], radius: float,
             rng: np.random.Generator) -> list[tuple[slice, slice]]:
    """``n_stacks`` windows of ``side`` in planes of ``shape``, centred at random within the disk of
    ``radius`` less half the window (the whole plane when the window is the plane)."""
    (ny, nx), (cy, cx) = shape, side
    if (cy, cx) == (ny, nx):
        return [(slice(0, ny), slice(0, nx))] * n_stacks
    centres = np.argwhere(_disk(ny, nx, max(radius - max(cy, cx) / 2, 1.0)))
    out = []
    for _ in range(n_stacks):
        yc, xc = centres[int(rng.integers(len(centres)))]
        y0, x0 = int(np.clip(yc - cy // 2, 0, ny - cy)), int(np.clip(xc - cx // 2, 0, nx - cx))
        out.append((slice(y0, y0 + cy), slice(x0, x0 + cx)))
    return out


def _disk(ny: int, nx: int, radius: float) -> np.ndarray:
    y, x = np.ogrid[:ny, :nx]
    return (y - (ny - 1) / 2) ** 2 + (x - (nx - 1) / 2) ** 2 <= radius**2


def _training_rows(nz: int, held: tuple[int, int], n_stacks: int, rng: np.random.Generator,
                   reach: int) -> list[int]:
    """Up to ``n_stacks`` rows to train on, spread at random; none whose context (``reach`` rows either side)
    touches the held-out band."""
    rows = [z for z in range(nz) if not held[0] - reach <= z < held[1] + reach]
    if len(rows) <= n_stacks:
        return rows
    return sorted(rng.choice(rows, size=n_stacks, replace=False).tolist())


def train_noise2inverse(halves: Sequence[Any], disk_radius_px: float,
                        config: Noise2InverseConfig | None = None) -> Noise2InverseModel:
    """Train the denoiser on the two half-volumes of one scan.

    Parameters
    ----------
    halves : two arrays (z, y, x)
        The even- and odd-angle reconstructions (numpy or zarr; read in stacks of planes).
    disk_radius_px : float
        Radius of the reconstruction disk (the field of view) about the plane's centre; patches and figures
        stay inside it.
    config : Noise2InverseConfig, optional
        Training options.

    Returns
    -------
    Noise2InverseModel
    """
    import torch  # noqa: PLC0415

    cfg = config or Noise2InverseConfig()
    h0, h1 = halves
    nz, ny, nx = h0.shape
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    k = cfg.context
    if nz <= k:
        raise ValueError(f"denoising needs more rows than its context ({k}); the volume has {nz}")
    held = held_out_rows(nz, cfg.held_out, k)
    side = (min(ny, max(cfg.crop, cfg.patch)), min(nx, max(cfg.crop, cfg.patch)))
    n_stacks = max(1, min(nz, cfg.train_voxels // (2 * k * side[0] * side[1])))
    rows = _training_rows(nz, held, n_stacks, rng, k // 2)
    windows = _windows(len(rows), (ny, nx), side, disk_radius_px, rng)
    stacks = np.stack([np.stack([_plane_stack(h, z, k, nz, w) for h in (h0, h1)])
                       for z, w in zip(rows, windows)])  # [S, 2, k, y, x]
    disk = _disk(ny, nx, disk_radius_px)
    inside = np.concatenate([stacks[i, :, k // 2][:, disk[w]] for i, w in enumerate(windows)], axis=1)
    offset = float(np.median(inside))
    scale = float(np.std(inside.mean(axis=0))) or 1.0
    stacks = (stacks - offset) / scale
    p = min(cfg.patch, side[0] // 4 * 4, side[1] // 4 * 4)
    inner = _disk(ny, nx, max(disk_radius_px - p / 4, 1.0))
    centres = [np.argwhere(inner[w]) for w in windows]
    net = _make_net(k, cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    losses, running = [], []
    every = max(1, cfg.steps // 20)
    for step in range(cfg.steps):
        x, y = _batch(stacks, centres, p, cfg.batch, rng)
        loss = torch.mean((net(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if (step + 1) % every == 0:
            losses.append(float(np.mean(running)))
            running = []
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    model = Noise2InverseModel(cfg, buf.getvalue(), offset, scale, losses, held, len(rows))
    if held[1] > held[0]:
        model.noise_rms, model.error_rms = _held_out_figures(model, h0, h1, disk)
    return model


def _batch(stacks: np.ndarray, centres: list[np.ndarray], p: int, n: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random patches: input planes of one half, the other half's middle plane as target; random
    direction, quarter turns and flips (the noise of a full-circle FBP has no preferred orientation)."""
    s_count, _, k, ny, nx = stacks.shape
    xs, ys = [], []
    for _ in range(n):
        s, a = int(rng.integers(s_count)), int(rng.integers(2))
        here = centres[s]
        cy, cx = here[int(rng.integers(len(here)))] if len(here) else (ny // 2, nx // 2)
        y0 = int(np.clip(cy - p // 2, 0, ny - p))
        x0 = int(np.clip(cx - p // 2, 0, nx - p))
        inp = stacks[s, a, :, y0:y0 + p, x0:x0 + p]
        tgt = stacks[s, 1 - a, k // 2:k // 2 + 1, y0:y0 + p, x0:x0 + p]
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        inp, tgt = np.rot90(inp, turns, (1, 2)), np.rot90(tgt, turns, (1, 2))
        if flip:
            inp, tgt = inp[:, :, ::-1], tgt[:, :, ::-1]
        xs.append(inp)
        ys.append(tgt)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def _predict(net: Any, planes: np.ndarray) -> np.ndarray:
    """The network on stacks ``[n, k, y, x]`` (normalised), the planes padded to a multiple of 4."""
    import torch  # noqa: PLC0415
    from torch.nn import functional as F  # noqa: N812, PLC0415

    _, _, ny, nx = planes.shape
    py, px = -ny % 4, -nx % 4
    x = torch.from_numpy(np.ascontiguousarray(planes))
    if py or px:
        x = F.pad(x, (0, px, 0, py), mode="reflect" if min(ny, nx) > max(py, px) else "replicate")
    with torch.no_grad():
        out = net(x)
    return out[:, 0, :ny, :nx].numpy()


def _held_out_figures(model: Noise2InverseModel, h0: Any, h1: Any, disk: np.ndarray) -> tuple[float, float]:
    """RMS noise of the plain volume and the bound on the denoised volume's RMS error, on the held-out rows."""
    a, b = model.rows_held_out
    pred = [denoise_rows(model, (h0, h1), a, b, each=True)[i] for i in (0, 1)]
    diff = sq_pred = 0.0
    n = 0
    for z in range(a, b):
        p0, p1 = np.asarray(h0[z], np.float64)[disk], np.asarray(h1[z], np.float64)[disk]
        diff += float(np.sum((p0 - p1) ** 2))
        sq_pred += float(np.sum((pred[0][z - a][disk] - p1) ** 2) + np.sum((pred[1][z - a][disk] - p0) ** 2)) / 2
        n += p0.size
    half_noise = diff / n / 2  # the noise variance of one half
    return math.sqrt(diff / n / 4), math.sqrt(max(sq_pred / n - half_noise, 0.0))


def denoise_rows(model: Noise2InverseModel, halves: Sequence[Any], r0: int, r1: int, batch: int = 8,
                 each: bool = False) -> Any:
    """Rows ``r0:r1`` of the denoised volume, ``(f(H_0) + f(H_1)) / 2``, read from the half-volumes.

    Parameters
    ----------
    model : Noise2InverseModel
        The trained denoiser.
    halves : two arrays (z, y, x)
        The half-volumes it was trained on (numpy or zarr).
    r0, r1 : int
        Rows to make.
    batch : int
        Planes through the network at once.
    each : bool
        Return the two predictions ``(f(H_0), f(H_1))`` instead of their mean.

    Returns
    -------
    ndarray [r1 - r0, y, x] float32, or a pair of them
    """
    net = model.network()
    k = model.config.context
    nz = halves[0].shape[0]
    lo, hi = max(0, r0 - k // 2), min(nz, r1 + k // 2)
    blocks = [(np.asarray(h[lo:hi], np.float32) - model.offset) / model.scale for h in halves]
    outs = []
    for block in blocks:
        def stack(z: int, block: np.ndarray = block) -> np.ndarray:
            return block[[i - lo for i in _mirrored(z, k, nz)]]

        pred = np.concatenate([_predict(net, np.stack([stack(z) for z in range(a, min(a + batch, r1))]))
                               for a in range(r0, r1, batch)])
        outs.append(pred * model.scale + model.offset)
    if each:
        return outs[0].astype(np.float32), outs[1].astype(np.float32)
    return ((outs[0] + outs[1]) / 2).astype(np.float32)
