"""Fine-tuning of a trained affinity model on a few small labelled blocks of the user's own scan, with a
held-out block scored before and after (issue 19: the shipped model, trained on the ``neural`` simulator
family, fails on other tissue).

The network's architecture and input normalisation policy are kept (percentiles of each block map to
-1..1, as :func:`~.unet.normalise` does for a whole volume); training is :func:`~.train.train` from the
existing weights, with a small learning rate and its augmentation. Patches fit inside the blocks: the output
patch is the largest valid one that fits the smallest block (at most :data:`MAX_OUTPUT_EDGE` voxels), and the
network's context (22 voxels on each side) is mirrored at the block's faces, the way prediction extends a
volume at its borders (:func:`~.predict.read_reflected`). The agglomeration parameters are re-tuned on the
training blocks only (:func:`~.pipeline.tune_postprocess`), never on a held-out block.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .data import LabelledVolume, LabelledVolumeError, affinities_from_labels, save_labelled
from .train import TrainConfig, pick_device, train
from .unet import INPUT_NORM_KEY, AffinityModel, UNet3D, normalise, volume_norm

#: Smallest block edge fine-tuning takes: with fewer voxels the mirrored context (22 voxels on each side)
#: is most of what the network sees.
MIN_BLOCK_EDGE = 24
#: Largest output patch edge chosen automatically (input 78^3 for the shipped architecture).
MAX_OUTPUT_EDGE = 34


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune`.

    Attributes
    ----------
    iterations : int
        Optimiser steps (one patch each).
    lr : float
        Adam learning rate (small: the weights start from a trained model).
    output_shape : (int, int, int) or None
        Output patch; None picks the largest valid cube that fits every block, at most :data:`MAX_OUTPUT_EDGE`.
    seed : int
        Seed of patch sampling and augmentation.
    threads : int
        torch CPU threads (0 keeps torch's default).
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    shading : float
        Probability of the depth-shading augmentation (:class:`~.train.TrainConfig`).
    min_mask_fraction : float
        A patch is used only when at least this fraction of its output lies inside the block's mask.
    """

    iterations: int = 600
    lr: float = 1e-4
    output_shape: tuple[int, int, int] | None = None
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    shading: float = 0.5
    min_mask_fraction: float = 0.5


def valid_output_edges(net: UNet3D, largest: int) -> list[int]:
    """The valid output edges of ``net`` (cubic patches) up to ``largest``, ascending."""
    edges = []
    for s in range(1, largest + 2 * max(net.context) + 1):
        o = net.output_shape((s, s, s))
        if o is not None and o[0] <= largest:
            edges.append(o[0])
    return sorted(set(edges))


def output_patch(net: UNet3D, blocks: Sequence[LabelledVolume], requested: Sequence[int] | None = None
                 ) -> tuple[int, int, int]:
    """The output patch of fine-tuning on ``blocks``: ``requested`` rounded up to a valid one, else the largest
    valid cube inside the smallest block edge (at most :data:`MAX_OUTPUT_EDGE`).

    Raises
    ------
    LabelledVolumeError
        A block (named) is smaller than the patch.
    """
    if requested is not None:
        out = net.output_shape(net.valid_input_shape(tuple(int(n) for n in requested)))  # type: ignore[arg-type]
        assert out is not None
    else:
        smallest = min(blocks, key=lambda b: min(b.raw.shape))
        edges = valid_output_edges(net, min(min(smallest.raw.shape), MAX_OUTPUT_EDGE))
        if not edges:
            raise LabelledVolumeError(smallest.source, f"block {_shape(smallest.raw.shape)} too small for the network")
        out = (edges[-1],) * 3
    for b in blocks:
        if any(s < o for s, o in zip(b.raw.shape, out)):
            raise LabelledVolumeError(b.source, f"block {_shape(b.raw.shape)} smaller than the output patch "
                                                f"{_shape(out)}: give larger blocks or a smaller output patch")
    return out  # type: ignore[return-value]


def _shape(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def check_block(block: LabelledVolume, training: bool = True) -> None:
    """Refuse, naming its file, a block fine-tuning cannot use: a training block with an edge below
    :data:`MIN_BLOCK_EDGE`, or any block without a labelled voxel inside its mask."""
    if training and min(block.raw.shape) < MIN_BLOCK_EDGE:
        raise LabelledVolumeError(block.source, f"block {_shape(block.raw.shape)} smaller than fine-tuning needs: "
                                                f"at least {MIN_BLOCK_EDGE} voxels per axis (the network sees 22 "
                                                f"voxels around each output voxel, mirrored at the block's faces)")
    if not ((block.labels != 0) & block.mask).any():
        raise LabelledVolumeError(block.source, "no labelled voxel (labels all 0 inside the mask)")


def block_loss(model: AffinityModel, blocks: Sequence[LabelledVolume], device: str = "auto") -> float:
    """Mean over ``blocks`` of the class-balanced binary cross-entropy of the model's affinities on each whole
    block (mirrored at its faces, as prediction does) against the labels' affinities, over the links with both
    voxels inside the mask: the training loss without sampling or augmentation."""
    from .predict import predict_affinities

    offsets = tuple(tuple(o) for o in model.offsets)
    losses = []
    for b in blocks:
        pred = predict_affinities(model, b.raw, norm=volume_norm(b.raw, b.meta, model.norm), tile=MAX_OUTPUT_EDGE,
                                  device=device).clip(1e-6, 1 - 1e-6)
        aff = affinities_from_labels(b.labels, offsets)  # type: ignore[arg-type]
        known = np.stack([affinities_from_labels(b.mask.astype(np.int32), (o,)).squeeze(0)  # type: ignore[arg-type]
                          for o in offsets]) > 0
        bce = -(aff * np.log(pred) + (1 - aff) * np.log(1 - pred))
        pos, neg = known & (aff > 0), known & (aff == 0)
        parts = [float(bce[s].mean()) for s in (pos, neg) if s.any()]
        losses.append(float(np.mean(parts)))
    return float(np.mean(losses))


def score_blocks(model: AffinityModel, blocks: Sequence[LabelledVolume], params, device: str = "auto"
                 ) -> list[dict]:
    """Segment each block with ``model`` and ``params`` (:class:`~.pipeline.SegmentParams`) and score it
    (:func:`~.evaluate.evaluate`, inside the block's mask); one dict per block with its ``source``. A block
    is normalised as the volume it was cut from when it says how (:func:`~.unet.volume_norm`)."""
    from .evaluate import evaluate
    from .mask import sample_mask
    from .pipeline import segment_from_affinities
    from .predict import predict_affinities

    scores = []
    for b in blocks:
        affs = predict_affinities(model, b.raw, norm=volume_norm(b.raw, b.meta, model.norm), device=device,
                                  scales=params.scales)
        labels, _ = segment_from_affinities(affs, params, sample_mask(b.raw, params.mask))
        scores.append(evaluate(labels, b.labels, b.mask).as_dict() | {"source": b.source})
    return scores


def finetune(blocks: Sequence[LabelledVolume], validate: Sequence[LabelledVolume] = (),
             base: AffinityModel | None = None, base_name: str = "shipped", cfg: FinetuneConfig | None = None,
             out: str | Path | None = None, progress: bool = True) -> AffinityModel:
    """Fine-tune ``base`` on labelled ``blocks``; score held-out blocks ``validate`` before and after.

    Parameters
    ----------
    blocks : sequence of LabelledVolume
        Training blocks (image, dense labels, mask), each at least :data:`MIN_BLOCK_EDGE` voxels per axis.
    validate : sequence of LabelledVolume
        Held-out blocks: scored, never trained or tuned on.
    base : AffinityModel, optional
        The model to start from (the shipped model when None); it is not modified.
    base_name : str
        How the record names ``base`` (its file).
    cfg : FinetuneConfig, optional
        Iterations, learning rate, patch, seed, device.
    out : str or Path, optional
        Write the fine-tuned model here (its record also beside it as JSON).
    progress : bool
        Show a progress bar.

    Returns
    -------
    AffinityModel
        The fine-tuned model. Its ``record`` is the training record (:func:`~.train.train`), ``postprocess``
        re-tuned on ``blocks``, ``validation`` (the after scores) and ``finetune``: the base model, the blocks,
        the training loss on the blocks before/after (:func:`block_loss`), the held-out scores ``before`` (base
        model, its own parameters), ``before_retuned`` (base model, parameters tuned on ``blocks``) and
        ``after``, iterations and CPU seconds.

    Raises
    ------
    LabelledVolumeError
        A block (named) that fine-tuning cannot use.
    """
    from .pipeline import SegmentParams, tune_postprocess

    cfg = cfg or FinetuneConfig()
    if not blocks:
        raise ValueError("no training blocks")
    for b in blocks:
        check_block(b, training=True)
    for b in validate:
        check_block(b, training=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = str(pick_device(cfg.device))
    base = base or AffinityModel.load()
    patch = output_patch(base.net, blocks, cfg.output_shape)

    loss_before = block_loss(base, blocks, device)
    params_base = SegmentParams.for_model(base)
    before = score_blocks(base, validate, params_base, device)
    params_retuned, _ = tune_postprocess(base, list(blocks), device=device)
    before_retuned = score_blocks(base, validate, params_retuned, device)

    start = AffinityModel(copy.deepcopy(base.net), dict(base.norm), {})
    tcfg = TrainConfig(iterations=cfg.iterations, output_shape=patch, lr=cfg.lr, seed=cfg.seed, checkpoint_every=0,
                       augment=True, min_mask_fraction=cfg.min_mask_fraction, threads=cfg.threads,
                       device=cfg.device, class_balance=bool(base.record.get("train_config", {})
                                                             .get("class_balance", True)),
                       shading=cfg.shading)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model = train(blocks, tcfg, resume=start, progress=progress)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    loss_after = block_loss(model, blocks, device)
    params, table = tune_postprocess(model, list(blocks), device=device)
    after = score_blocks(model, validate, params, device)
    model.record.update({
        "postprocess": params.__dict__,
        "tuning": table,
        "tuned_on": [b.source for b in blocks],
        "validation": after,
        "finetune": {
            "from": base_name,
            "base_iterations": int(base.record.get("iterations", 0)),
            "base_command": base.record.get("command", ""),
            "blocks": [b.source for b in blocks], "validate": [b.source for b in validate],
            "normalised_as": {b.source: "its volume" if INPUT_NORM_KEY in b.meta else "the block alone"
                              for b in (*blocks, *validate)},
            "config": {**asdict(replace(cfg, output_shape=patch)), "output_shape": list(patch)},
            "iterations": cfg.iterations, "cpu_seconds": cpu, "wall_seconds": wall,
            "loss_before": loss_before, "loss_after": loss_after,
            "postprocess_before": params_base.__dict__, "postprocess_before_retuned": params_retuned.__dict__,
            "before": before, "before_retuned": before_retuned, "after": after,
        },
    })
    if out:
        model.save(out)
    return model


def summary_lines(record: dict) -> list[str]:
    """Human-readable lines of a fine-tuning record (``record['finetune']``): loss and held-out scores."""
    ft = record["finetune"]
    lines = [(f"fine-tuned from {ft['from']}: {ft['iterations']} iterations on {len(ft['blocks'])} block(s), "
              f"{ft['cpu_seconds']:.0f} s CPU; loss on the training blocks {ft['loss_before']:.4f} -> "
              f"{ft['loss_after']:.4f}")]
    alone = [k for k, v in ft.get("normalised_as", {}).items() if v != "its volume"]
    if alone:
        lines.append(f"warning: {', '.join(alone)} carry no input normalisation of their volume (meta "
                     f"'{INPUT_NORM_KEY}', save_block): normalised on their own, at a contrast the network will "
                     f"not see in the whole volume")
    for b, r, a in zip(ft["before"], ft["before_retuned"], ft["after"]):
        lines.append(f"held-out {b['source']}: adapted Rand {b['adapted_rand']:.3f} before (re-tuned on the "
                     f"training blocks {r['adapted_rand']:.3f}) -> {a['adapted_rand']:.3f} after; VOI split "
                     f"{b['voi_split']:.3f} -> {a['voi_split']:.3f}, merge {b['voi_merge']:.3f} -> "
                     f"{a['voi_merge']:.3f}")
    return lines


def save_block(path: str | Path, volume: np.ndarray, labels: np.ndarray, corner: Sequence[int],
               mask: np.ndarray | None = None, voxel_m: float = 100e-9,
               norm: dict | None = None) -> Path:
    """Write a labelled block of ``volume`` for :func:`finetune` (HDF5: ``raw``, ``labels``, ``mask``) with the
    whole volume's input normalisation, so that the network sees the block at the contrast it sees the
    volume at (:func:`~.unet.volume_norm`).

    Parameters
    ----------
    path : str or Path
        The block file (``.h5``).
    volume : array-like [z, y, x]
        The whole image volume (numpy or zarr) the block is cut from.
    labels : ndarray [bz, by, bx]
        Dense labels of the block (0: unlabelled, ignored), its shape the block's.
    corner : (int, int, int)
        Voxel of ``volume`` at the block's ``[0, 0, 0]``.
    mask : ndarray of bool, optional
        Voxels of the block to train on and score (default: all).
    voxel_m : float
        Voxel size, metres.
    norm : dict, optional
        Normalisation policy (default: the shipped model's, percentiles 1 and 99).

    Returns
    -------
    Path
    """
    norm = norm or {"method": "percentile", "low": 1.0, "high": 99.0}
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) != 3 or any(c < 0 or c + n > m for c, n, m in zip(corner, shape, volume.shape)):
        raise ValueError(f"block at {list(corner)} of shape {shape} does not lie inside the volume "
                         f"{tuple(volume.shape)}")
    box = tuple(slice(c, c + n) for c, n in zip(corner, shape))
    raw = np.asarray(volume[box], np.float32)
    step = max(1, int(np.ceil((float(np.prod(volume.shape)) / 4e6) ** (1 / 3))))  # a strided sample if large
    offset, scale = normalise(np.asarray(volume[::step, ::step, ::step]), norm)
    meta = {INPUT_NORM_KEY: {**norm, "offset": offset, "scale": scale}, "corner": [int(c) for c in corner]}
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    return save_labelled(path, LabelledVolume(raw, np.asarray(labels), mask, voxel_m, str(path), meta))
