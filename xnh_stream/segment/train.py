"""Training of the affinity U-Net on labelled volumes: random patches inside each volume's mask, augmentation
(flips, axis transposes, intensity scale/shift, noise, interiors darkened with depth), class-balanced binary
cross-entropy on nearest-neighbour affinities, checkpoints and a record of the run (data, seeds, loss curve)
stored in the model file."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .data import LabelledVolume, affinities_from_labels
from .evaluate import object_depth, thin_objects
from .lsd import LSD_CHANNELS, flip_descriptors, local_shape_descriptors, transpose_descriptors
from .unet import AffinityModel, UNet3D, UNetConfig, volume_norm


@dataclass
class TrainConfig:
    """Options of :func:`train`.

    Attributes
    ----------
    iterations : int
        Optimiser steps (one patch each).
    output_shape : (int, int, int)
        Minimum output patch; the input patch is the smallest valid one around it.
    lr : float
        Adam learning rate.
    seed : int
        Seed of patch sampling, augmentation and weight initialisation.
    checkpoint_every : int
        Write ``checkpoint.pt`` (and keep the newest) every so many iterations; 0 never.
    augment : bool
        Random flips, transposes of equal-sized axes, intensity scale/shift and Gaussian noise.
    min_mask_fraction : float
        A patch is used only when at least this fraction of its output lies inside the volume's mask.
    threads : int
        torch CPU threads (0 keeps torch's default).
    device : str
        ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
    class_balance : bool
        Weigh the links of each patch so that boundaries and interiors count half each (True), or every
        known link alike (False: interiors of large, textured objects are not pushed towards "boundary").
    shading : float
        Probability that a patch's object interiors are darkened with their depth, ``x - a * min(d / D, 1)``
        (``d``: distance in voxels to the nearest boundary or background voxel of the labels; ``a`` uniform
        in 0..:data:`SHADING_STRENGTH` input units, ``D`` uniform in :data:`SHADING_DEPTH` voxels). Phase
        retrieval with the stain's delta/beta leaves large unstained cells darker towards their centre,
        down to the resin's grey. 0 disables it (it applies only with ``augment``).
    randomise : float
        Probability that a patch's look is randomised (domain randomisation of the imaging, :func:`randomise_look`):
        a monotone grey-level curve, a blur, a smooth contrast field and a smooth offset, so that the network
        learns boundaries rather than one simulator's grey levels and sharpness. 0 disables it (it applies only
        with ``augment``).
    thin_weight : float
        Factor on the weight of the links inside thin objects (whose largest distance to their own surface is
        at most :data:`~.evaluate.THIN_DEPTH` voxels: neurites), after class balancing: a thin neurite has few
        interior links, and the network cuts it along its length (``evaluate.kept_whole``). 1 disables it.
    lsd_weight : float
        Weight of an auxiliary loss: the mean squared error of a second head's local shape descriptors
        (:mod:`~.lsd`, inside the objects) added to the affinities' loss. 0 disables it (no LSD head).
    """

    iterations: int = 2000
    output_shape: tuple[int, int, int] = (24, 24, 24)
    lr: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 200
    augment: bool = True
    min_mask_fraction: float = 0.5
    threads: int = 1
    device: str = "auto"
    class_balance: bool = True
    shading: float = 0.5
    randomise: float = 0.0
    thin_weight: float = 1.0
    lsd_weight: float = 0.0


def randomise_look(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomise how a patch looks, not what it shows (the labels stay valid).

    Parameters
    ----------
    x : ndarray
        Normalised input patch (1st..99th percentiles of its volume at -1..1).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float32
        ``x`` through a monotone curve (a power of its rank within the patch, exponent 0.5..2, mixed with the
        original by a random weight), blurred (Gaussian, sigma 0..1.2 voxels), times a smooth contrast field
        (0.6..1.4) plus a smooth offset (+-0.3), each field of a random scale of 8..32 voxels.
    """
    lo, hi = np.percentile(x, (1, 99))
    span = max(float(hi - lo), 1e-6)
    u = np.clip((x - lo) / span, 0, 1)
    w = rng.uniform(0, 1)
    curved = (1 - w) * u + w * u ** rng.uniform(0.5, 2.0)
    y = lo + span * curved
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.2:
        y = ndimage.gaussian_filter(y, sigma)

    def field(amplitude: float) -> np.ndarray:
        scale = rng.uniform(8, 32)
        small = rng.uniform(-1, 1, tuple(max(2, int(np.ceil(n / scale)) + 1) for n in x.shape))
        return amplitude * ndimage.zoom(small, [n / m for n, m in zip(x.shape, small.shape)], order=1)[
            tuple(slice(0, n) for n in x.shape)]

    y = y * (1 + field(0.4)) + field(0.3)
    return y.astype(np.float32)


#: Largest darkening (network input units, where the 1st..99th percentiles span -1..1) of the shading
#: augmentation, and the range of depths (voxels) over which it ramps up.
SHADING_STRENGTH = 1.2
SHADING_DEPTH = (4.0, 16.0)


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error, never a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but torch sees no CUDA GPU")
    return torch.device(device)


class PatchSampler:
    """Random training patches (input image, affinity targets, weights) from labelled volumes."""

    def __init__(self, volumes: Sequence[LabelledVolume], net: UNet3D, norm: dict, output_shape: Sequence[int],
                 seed: int = 0, augment: bool = True, min_mask_fraction: float = 0.5,
                 class_balance: bool = True, shading: float = 0.0, randomise: float = 0.0,
                 thin_weight: float = 1.0, lsd: bool = False) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.in_shape = net.valid_input_shape(tuple(output_shape))  # type: ignore[arg-type]
        self.out_shape = net.output_shape(self.in_shape)
        self.ctx = [(i - o) // 2 for i, o in zip(self.in_shape, self.out_shape)]
        self.offsets = [tuple(o) for o in net.config.offsets]
        self.rng = np.random.default_rng(seed)
        self.augment, self.min_mask, self.class_balance = augment, min_mask_fraction, class_balance
        self.shading = shading if augment else 0.0
        self.randomise = randomise if augment else 0.0
        self.thin_weight = thin_weight
        self.items, self.depth, self.thin, self.lsd = [], [], [], []
        for v in volumes:
            if any(s < o for s, o in zip(v.raw.shape, self.out_shape)):
                raise ValueError(f"{v.source}: volume {v.raw.shape} smaller than the output patch {self.out_shape}")
            c, s = volume_norm(v.raw, v.meta, norm)  # a block: its volume's normalisation, when known
            pad = [(k, k + 1) for k in self.ctx]  # reflect-pad by the context (images end at the volume edge)
            raw = np.pad((v.raw - c) / s, pad, mode="reflect").astype(np.float32)
            self.items.append((raw, v.labels, v.mask))
            if self.shading > 0:  # depth of each voxel inside its object (0 on boundaries and background)
                depth = object_depth(v.labels)  # the volume's faces are not boundaries
                self.depth.append(np.pad(depth, pad, mode="reflect").astype(np.float16))  # float16: memory
            if thin_weight != 1:
                self.thin.append(thin_objects(v.labels))
            if lsd:  # the whole volume's descriptors, once (float16: memory); augmented with the patch
                self.lsd.append(local_shape_descriptors(v.labels).astype(np.float16))
        self.weights = np.array([v.mask.sum() for v in volumes], float)
        self.weights /= self.weights.sum()

    def sample(self) -> tuple[np.ndarray, ...]:
        """One patch: input ``[1, *in_shape]``, targets and weights ``[C, *out_shape]``; with ``lsd``, also the
        local shape descriptors ``[10, *out_shape]`` and their weights ``[1, *out_shape]`` (objects in the mask)."""
        rng, o = self.rng, self.out_shape
        for _ in range(1000):
            k = rng.choice(len(self.items), p=self.weights)
            raw, labels, mask = self.items[k]
            start = [int(rng.integers(0, s - n + 1)) for s, n in zip(labels.shape, o)]
            box = tuple(slice(a, a + n) for a, n in zip(start, o))
            m = mask[box]
            if m.mean() >= self.min_mask:
                break
        else:
            raise ValueError("no patch with enough masked voxels found: check the masks")
        inbox = tuple(slice(a, a + n) for a, n in zip(start, self.in_shape))
        x = raw[inbox]
        if self.shading > 0 and rng.random() < self.shading:
            ramp = np.minimum(self.depth[k][inbox].astype(np.float32) / np.float32(rng.uniform(*SHADING_DEPTH)), 1)
            x = x - np.float32(rng.uniform(0.0, SHADING_STRENGTH)) * ramp
        lab = labels[box]
        thin = self.thin[k][box] if self.thin else np.zeros(o, bool)
        lsd = self.lsd[k][(slice(None),) + box].astype(np.float32) if self.lsd else None
        if self.augment:
            for ax in range(3):
                if rng.random() < 0.5:
                    x, lab, m, thin = (np.flip(a, ax) for a in (x, lab, m, thin))
                    lsd = None if lsd is None else flip_descriptors(lsd, ax)
            same = [ax for ax in range(3) if self.in_shape[ax] == self.in_shape[0]]
            if len(same) == 3:
                perm = tuple(rng.permutation(3))
                x, lab, m, thin = (np.transpose(a, perm) for a in (x, lab, m, thin))
                lsd = None if lsd is None else transpose_descriptors(lsd, perm)  # type: ignore[arg-type]
            if self.randomise > 0 and rng.random() < self.randomise:
                x = randomise_look(np.asarray(x, np.float32), rng)
            x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
            x = x + rng.normal(0, rng.uniform(0, 0.1), x.shape)
        aff = affinities_from_labels(np.ascontiguousarray(lab), tuple(self.offsets))  # type: ignore[arg-type]
        # An affinity is known only where both voxels are in the mask and inside the patch.
        known = np.stack([affinities_from_labels(m.astype(np.int32), ((o_),)).squeeze(0)  # type: ignore[arg-type]
                          for o_ in self.offsets])
        pos = (aff > 0) & (known > 0)
        neg = (aff == 0) & (known > 0)
        extra: tuple[np.ndarray, ...] = ()
        if lsd is not None:
            extra = (np.ascontiguousarray(lsd), ((lab > 0) & (m > 0)).astype(np.float32)[None])
        if not self.class_balance:
            return (np.ascontiguousarray(x, np.float32)[None], aff, known.astype(np.float32)) + extra
        w = np.zeros_like(aff)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos:
            w[pos] = 0.5 * known.sum() / n_pos
        if n_neg:
            w[neg] = 0.5 * known.sum() / n_neg
        if self.thin:
            w[pos & thin[None]] *= self.thin_weight  # a positive link's voxel is inside its thin object
        return (np.ascontiguousarray(x, np.float32)[None], aff, w / max(known.sum(), 1) * known.size) + extra


def train(volumes: Sequence[LabelledVolume], cfg: TrainConfig | None = None, net_config: UNetConfig | None = None,
          out: str | Path | None = None, resume: AffinityModel | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> AffinityModel:
    """Train an affinity model on labelled volumes.

    Parameters
    ----------
    volumes : sequence of LabelledVolume
        Training data (image, labels, mask).
    cfg : TrainConfig, optional
        Iterations, patch size, seed, checkpoints, device.
    net_config : UNetConfig, optional
        Architecture of a new network (ignored when resuming).
    out : str or Path, optional
        Model file; checkpoints go beside it (``*.checkpoint.pt``) and the final model to ``out``.
    resume : AffinityModel, optional
        Continue training this model (its loss curve is extended).
    progress : bool
        Show a progress bar.
    on_step : callable, optional
        Called as ``on_step(iteration, loss)``.

    Returns
    -------
    AffinityModel
        The trained model with ``record`` describing the run.
    """
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = resume or AffinityModel(UNet3D(net_config or UNetConfig()))
    net = model.net.to(device).train()
    if cfg.lsd_weight > 0:
        net.add_lsd_head(LSD_CHANNELS)
    sampler = PatchSampler(volumes, net, model.norm, cfg.output_shape, cfg.seed, cfg.augment, cfg.min_mask_fraction,
                           cfg.class_balance, cfg.shading, cfg.randomise, cfg.thin_weight, lsd=cfg.lsd_weight > 0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    record = dict(model.record) if resume else {}
    curve: list[list[float]] = list(record.get("loss_curve", []))
    start_it = int(record.get("iterations", 0))
    out = Path(out) if out else None
    t0, window = time.perf_counter(), []
    bar = tqdm(range(cfg.iterations), desc="train", unit="it", disable=not progress)
    for it in bar:
        xt, yt, wt, *aux = (torch.from_numpy(np.ascontiguousarray(a)).to(device)[None] for a in sampler.sample())
        if aux:
            pred, lsd_pred = net.forward_with_lsd(xt)
        else:
            pred = net(xt)
        loss = (torch.nn.functional.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), yt, reduction="none")
                * wt).mean()
        if aux:  # mean squared error of the descriptors over the objects' voxels
            lsd_t, lsd_w = aux
            loss = loss + cfg.lsd_weight * (((lsd_pred - lsd_t) ** 2) * lsd_w).sum() / (
                lsd_w.sum() * LSD_CHANNELS).clamp(min=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if on_step:
            on_step(start_it + it + 1, window[-1])
        if len(window) == 50 or it == cfg.iterations - 1:
            curve.append([start_it + it + 1, float(np.mean(window))])
            bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
            window = []
        if out and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
            model.record = _record(record, cfg, volumes, sampler, curve, start_it + it + 1, t0, device)
            model.save(out.with_suffix(".checkpoint.pt"))
    net.eval()
    model.record = _record(record, cfg, volumes, sampler, curve, start_it + cfg.iterations, t0, device)
    if out:
        model.save(out)
    return model


def _record(prev: dict, cfg: TrainConfig, volumes: Sequence[LabelledVolume], sampler: PatchSampler,
            curve: list, iterations: int, t0: float, device: torch.device) -> dict:
    rec = dict(prev)
    rec.update({
        "iterations": iterations,
        "train_config": {**asdict(cfg), "output_shape": list(cfg.output_shape)},
        "input_patch": list(sampler.in_shape), "output_patch": list(sampler.out_shape),
        "data": [{"source": v.source, "shape": list(v.raw.shape), "voxel_m": v.voxel_m, **v.meta} for v in volumes],
        "loss": ("class-balanced " if cfg.class_balance else "") +
                "binary cross-entropy on nearest-neighbour affinities, masked",
        "loss_curve": curve,
        "train_seconds": float(prev.get("train_seconds", 0.0)) + time.perf_counter() - t0,
        "device": str(device), "torch": str(torch.__version__), "python": platform.python_version(),
    })
    return rec
