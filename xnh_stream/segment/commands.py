"""Command-line subcommands of the segmentation: ``train``, ``finetune``, ``segment``, ``evaluate``, ``classify``
(registered into ``xnh-stream`` by :func:`add_parsers`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.names import SEGMENTATION_WORK_NAME, VOLUME_NAME


def _seeds(text: str) -> list[int]:
    """``1-8`` or ``1,3,5`` -> list of ints."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _labelled(paths: list[Path], seeds: list[int], a: argparse.Namespace, what: str) -> list:
    from .data import LabelledVolumeError, load_labelled, simulate_labelled

    vols = []
    for p in paths:
        try:
            vols.append(load_labelled(p, a.raw_key, a.labels_key, a.mask_key))
        except LabelledVolumeError as exc:
            raise InputError(exc.path, exc.problem, exc.field) from exc
    for s in seeds:
        t = time.perf_counter()
        print(f"{what}: simulating and reconstructing seed {s} ...", file=sys.stderr, flush=True)
        vols.append(simulate_labelled(s))
        print(f"{what}: seed {s} done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return vols


def cmd_train(a: argparse.Namespace) -> int:
    """Train an affinity model; tune the post-processing and score it on validation volumes."""
    from .pipeline import segment_volume, tune_postprocess
    from .evaluate import evaluate
    from .train import TrainConfig, train
    from .unet import AffinityModel, UNetConfig

    train_vols = _labelled(a.volumes, _seeds(a.simulate or ""), a, "train")
    if not train_vols:
        raise InputError("train", "no training data: give labelled volume files and/or --simulate SEEDS")
    val_vols = _labelled(a.validate, _seeds(a.validate_simulate or ""), a, "validate")
    cfg = TrainConfig(iterations=a.iterations, output_shape=tuple(a.output_patch), lr=a.lr, seed=a.seed,
                      checkpoint_every=a.checkpoint_every, threads=a.threads, device=a.device,
                      class_balance=not a.no_class_balance, shading=a.shading, randomise=a.randomise,
                      thin_weight=a.thin_weight, lsd_weight=a.lsd_weight)
    net_cfg = UNetConfig(num_fmaps=a.fmaps, fmap_inc_factor=a.fmap_inc, convs_per_level=a.convs_per_level)
    resume = AffinityModel.load(a.resume) if a.resume else None
    model = train(train_vols, cfg, net_cfg, out=a.out, resume=resume)  # checkpoints beside --out
    model.record["command"] = "xnh-stream " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("xnh-stream") \
        else model.record.get("command", "")
    if val_vols:
        params, table = tune_postprocess(model, val_vols, device=a.device)
        model.record["postprocess"] = params.__dict__
        model.record["tuning"] = table
        scores = [evaluate(segment_volume(v.raw, model, params, a.device).labels, v.labels, v.mask).as_dict()
                  | {"source": v.source} for v in val_vols]
        model.record["validation"] = scores
        for s in scores:
            print(f"validation {s['source']}: VOI split {s['voi_split']:.3f} merge {s['voi_merge']:.3f}, "
                  f"adapted Rand {s['adapted_rand']:.3f}")
    model.save(a.out)
    print(f"model: {a.out} (record: {Path(a.out).with_suffix('.json')})")
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    """Fine-tune a model (default: the shipped one) on a few labelled blocks; score held-out blocks before and
    after, print the scores and write them into the new model's record."""
    from .data import LabelledVolumeError
    from .finetune import FinetuneConfig, finetune, summary_lines
    from .unet import AffinityModel

    blocks = _labelled(a.blocks, [], a, "finetune")
    held_out = _labelled(a.validate, [], a, "finetune")
    try:
        base = AffinityModel.load(a.base)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(a.base), str(exc).removeprefix(f"{a.base}: ")) from exc
    cfg = FinetuneConfig(iterations=a.iterations, lr=a.lr, output_shape=tuple(a.output_patch) if a.output_patch
                         else None, seed=a.seed, threads=a.threads, device=a.device, shading=a.shading)
    try:
        model = finetune(blocks, held_out, base, str(a.base or "shipped"), cfg)
    except LabelledVolumeError as exc:
        raise InputError(exc.path, exc.problem, exc.field) from exc
    model.record["command"] = "xnh-stream " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("xnh-stream") \
        else f"xnh-stream finetune {' '.join(map(str, a.blocks))} --out {a.out}"
    model.save(a.out)
    for line in summary_lines(model.record):
        print(line)
    print(f"model: {a.out} (record: {Path(a.out).with_suffix('.json')}); use it with "
          f"`xnh-stream segment ... --model {a.out}`")
    return 0


def _read_image(path: Path) -> tuple[np.ndarray, float]:
    from ..io.omezarr import read_volume

    p = path / VOLUME_NAME if (path / VOLUME_NAME).exists() else path
    if not p.exists():
        raise InputError(str(p), "no such volume")
    try:
        return read_volume(p)
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise InputError(str(p), f"not an OME-Zarr volume ({exc})") from exc


class _Created:
    """What a ``segment`` run may create in ``OUT``, as it stood before: :meth:`undo` removes what the run
    created when it fails, and never anything that existed before (a label image replaced with
    ``--overwrite`` stays).

    A blockwise work folder is kept once a block is done (a re-run resumes from it).
    """

    def __init__(self, out: Path, a: argparse.Namespace) -> None:
        from .pipeline import LABEL_NAME, STANDALONE_NAME, SUMMARY_NAME, VOLUME_NAME

        self.image = out / VOLUME_NAME
        self.label_name = LABEL_NAME
        self.work = out / SEGMENTATION_WORK_NAME
        paths = [self.work, self.image / "labels", self.image / "labels" / LABEL_NAME, out / STANDALONE_NAME,
                 out / SUMMARY_NAME, a.swc, a.precomputed]
        self.new = [Path(p) for p in paths if p is not None and not Path(p).exists()]

    def undo(self) -> None:
        """Remove what the failed run created (see the class docstring)."""
        import shutil

        labels = self.image / "labels"
        for path in self.new:
            if not path.exists() or (path == self.work and any((path / "done").glob("*/*"))):
                continue
            if path == labels / self.label_name and labels not in self.new:
                self._unlist(labels)
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _unlist(self, labels: Path) -> None:
        import zarr

        try:
            group = zarr.open_group(str(labels), mode="r+")
            attrs = group.attrs.asdict()
            ome = attrs.get("ome", attrs)
            kept = [n for n in ome.get("labels", []) if n != self.label_name]
            if "ome" in attrs:
                group.attrs["ome"] = {**ome, "labels": kept}
            else:
                group.attrs["labels"] = kept
        except Exception as exc:  # noqa: BLE001 - best effort: the label image itself goes either way
            print(f"segment: {labels} still lists {self.label_name} ({exc})", file=sys.stderr)


def cmd_segment(a: argparse.Namespace) -> int:
    """Segment a reconstructed volume into OME-NGFF labels (in memory or blockwise): the label image
    OUT/volume.ome.zarr/labels/segmentation of OUT's volume, else the standalone OUT/segmentation.ome.zarr;
    a summary in OUT/segmentation.json. Labels, SWC files and precomputed layers are in the volume's world
    frame (its OME-NGFF scale and translation). A run that fails removes what it created."""
    out = Path(a.out)
    src = a.volume / VOLUME_NAME if (a.volume / VOLUME_NAME).exists() else a.volume
    if not src.exists():
        raise InputError(str(src), "no such volume")
    if a.block_shape:
        _check_block_shape(a.block_shape, src)
    created = _Created(out, a)
    try:
        return _segment(a, out, src)
    except BaseException:
        created.undo()
        raise


#: The network's downsampling grid: a block edge is a multiple of it (or covers the whole axis).
BLOCK_GRID = 8


def _check_block_shape(block: tuple[int, int, int], src: Path) -> None:
    """Refuse, before any work, a ``--block-shape`` the blockwise segmentation cannot use."""
    from ..config import ConfigError
    from ..io.omezarr import open_volume

    shape = open_volume(src)[0].shape
    bad = [b for b, n in zip(block, shape) if b <= 0 or (b % BLOCK_GRID and b < n)]
    if bad:
        raise ConfigError(f"--block-shape {' '.join(map(str, block))}: each edge must be a positive multiple of "
                          f"{BLOCK_GRID} (the network's downsampling grid) or cover the volume's axis "
                          f"({' '.join(map(str, shape))} voxels)")


def _segment(a: argparse.Namespace, out: Path, src: Path) -> int:
    from ..io.omezarr import open_volume
    from .pipeline import SegmentParams, segment_volume, volume_origin, write_segmentation, write_summary
    from .unet import AffinityModel

    out.mkdir(parents=True, exist_ok=True)
    model = AffinityModel.load(a.model)
    params = SegmentParams.for_model(model, threshold=a.threshold, enclosed=a.enclosed, mask=a.mask,
                                     fragment_method=a.fragment_method, scales=a.scales)
    t0 = time.perf_counter()
    extra: dict[str, object] = {}
    if a.block_shape or a.ray:
        from .blockwise import BlockwiseSpec, run_blockwise

        spec = BlockwiseSpec(str(out / SEGMENTATION_WORK_NAME), str(src), tuple(a.block_shape or (64, 128, 128)),
                             a.context, str(a.model) if a.model else None, params.threshold,
                             params.fragment_threshold, params.seed_distance, params.fragment_method,
                             params.enclosed, device=a.device, mask=params.mask, scales=params.scales)
        if a.ray:
            from ..runtime import runtime_of

            bw = runtime_of(a, "segment --ray").segment_blockwise(spec, a.address)
        else:
            bw = run_blockwise(spec)
        import dask.array as da

        n_segments = max_label = bw.n_segments()  # blockwise ids are 1..n_segments
        on_disk = bw.segmentation(in_memory=False)  # written chunk by chunk, never whole in memory
        labels = da.from_array(on_disk, chunks=on_disk.chunks)
        voxel = open_volume(src)[1]
        seconds = {"blockwise": time.perf_counter() - t0}
        extra["block_shape"] = list(spec.block_shape)
    else:
        volume, voxel = _read_image(a.volume)
        res = segment_volume(volume, model, params, a.device)
        labels, seconds = res.labels, dict(res.seconds)
        n_segments = int(np.count_nonzero(np.unique(labels)))
        max_label = int(labels.max(initial=0))  # waterz keeps fragment ids
    origin = volume_origin(src)
    dst, labels = write_segmentation(out, labels, voxel, max_label, image=src)
    print(f"segmentation: {dst} ({n_segments} segments, {time.perf_counter() - t0:.1f} s)")
    if a.swc:
        from .skeleton import skeletonize, skeletonize_blockwise, write_swc

        if a.block_shape or a.ray:  # block by block from the label image: never the whole labels in memory
            skeletons = skeletonize_blockwise(labels, voxel, tuple(spec.block_shape), a.swc_min_voxels)
        else:
            skeletons = skeletonize(np.asarray(labels), voxel, a.swc_min_voxels)
        files = write_swc(skeletons, a.swc,
                          soma_radius_nm=a.swc_soma_radius_nm, axon_radius_nm=a.swc_axon_radius_nm,
                          origin_m=origin, source=str(dst))
        extra["swc"] = {"folder": str(a.swc), "files": len(files), "units": "nm"}
        print(f"skeletons: {len(files)} SWC files in {a.swc}")
    if a.precomputed:
        try:
            from ..io.precomputed import voxel_offsets, write_precomputed
        except ImportError as exc:  # tensorstore is an optional dependency
            raise InputError(str(a.precomputed), f"neuroglancer export needs tensorstore "
                                                 f"(pip install 'xnh-stream[neuroglancer]'): {exc}") from exc
        image = write_precomputed(a.precomputed / "image", open_volume(src)[0], voxel, origin_m=origin)
        seg = write_precomputed(a.precomputed / "segmentation", labels, voxel, labels=True, origin_m=origin)
        offsets, residuals = voxel_offsets(origin, voxel, 1)
        extra["precomputed"] = {"folder": str(a.precomputed), "voxel_offset": offsets[0],
                                "rounding_nm": residuals[0]}
        print(f"neuroglancer precomputed layers: {image} and {seg} (serve {a.precomputed} over HTTP, e.g. "
              f"`python -m http.server`, and add precomputed://http://HOST:PORT/image and .../segmentation)")
    seconds["total"] = time.perf_counter() - t0
    write_summary(out, dst, n_segments, tuple(open_volume(src)[0].shape), voxel, origin, seconds, a.model, params,
                  **extra)
    return 0


def _labels_of(path: Path, key: str) -> np.ndarray:
    from .data import LabelledVolumeError, _dataset, _open

    if not path.exists():
        raise InputError(str(path), "no such file or folder")
    if path.is_dir() and ((path / "zarr.json").exists() or (path / ".zattrs").exists()):
        import zarr

        g = zarr.open_group(str(path), mode="r")
        if "multiscales" in json.dumps(g.attrs.asdict()):
            return _read_image(path)[0]
    try:
        group, kind = _open(path)
        try:
            return _dataset(group, key, path)
        finally:
            if kind == "hdf5":
                group.close()
    except LabelledVolumeError as exc:
        raise InputError(exc.path, exc.problem, exc.field) from exc


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Score a segmentation against ground truth (CREMI conventions)."""
    from .evaluate import evaluate

    from .pipeline import find_segmentation

    seg = _labels_of(find_segmentation(a.segmentation), a.seg_key)
    truth = _labels_of(a.truth, a.labels_key)
    mask = _labels_of(a.truth, a.mask_key).astype(bool) if a.mask_key else None
    if seg.shape != truth.shape:
        raise InputError(str(a.segmentation), f"shape {seg.shape} differs from the ground truth {truth.shape}")
    s = evaluate(seg, truth, mask)
    print(s.line())
    if a.json:
        Path(a.json).write_text(json.dumps(s.as_dict(), indent=1))
    return 0


def cmd_classify(a: argparse.Namespace) -> int:
    """Random-forest pixel classification from labelled strokes."""
    from ..io.omezarr import write_volume
    from .classify import PixelClassifier

    volume, voxel = _read_image(a.volume)
    strokes = _labels_of(a.strokes, a.strokes_key)
    if strokes.shape != volume.shape:
        raise InputError(str(a.strokes), f"strokes shape {strokes.shape} differs from the volume {volume.shape}")
    clf = PixelClassifier.fit(volume, strokes, n_estimators=a.trees, seed=a.seed)
    pred = clf.predict(volume).astype(np.uint8)
    dst = write_volume(a.out, pred, voxel, labels=True, name="classes")
    counts = {int(c): int((pred == c).sum()) for c in np.unique(pred)}
    print(f"classes: {dst} (voxels per class {counts})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Register ``train``, ``finetune``, ``segment``, ``evaluate`` and ``classify``."""
    s = sub.add_parser("train", help="train the affinity U-Net on labelled volumes (zarr / HDF5 image + labels) "
                                     "or on simulated, reconstructed XNH tissue")
    s.add_argument("volumes", type=Path, nargs="*", help="labelled volume files (datasets --raw-key, --labels-key)")
    s.add_argument("--simulate", help="also simulate + reconstruct these seeds as training data (e.g. 1-8)")
    s.add_argument("--validate", type=Path, nargs="*", default=[], help="held-out labelled volume files")
    s.add_argument("--validate-simulate", help="held-out simulated seeds (e.g. 9,10): tune and score on them")
    s.add_argument("--out", type=Path, required=True, help="model file (.pt); its record goes beside it (.json)")
    s.add_argument("--resume", type=Path, help="continue training this model")
    s.add_argument("--iterations", type=int, default=2000)
    s.add_argument("--output-patch", type=int, nargs=3, default=(32, 32, 32), metavar=("Z", "Y", "X"))
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fmaps", type=int, default=12, help="feature maps at the top level")
    s.add_argument("--fmap-inc", type=int, default=2, help="feature-map factor per level")
    s.add_argument("--convs-per-level", type=int, default=1, help="valid 3x3x3 convolutions per level and side")
    s.add_argument("--checkpoint-every", type=int, default=200,
                   help="write OUT.checkpoint.pt every so many iterations (default %(default)s; 0 never)")
    s.add_argument("--no-class-balance", action="store_true",
                   help="weigh every link alike instead of balancing boundaries against interiors per patch")
    s.add_argument("--shading", type=float, default=0.5,
                   help="probability that a patch's object interiors are darkened with depth, as phase retrieval "
                        "leaves large cells (default %(default)s; 0 off)")
    s.add_argument("--randomise", type=float, default=0.0,
                   help="probability that a patch's look is randomised: grey-level curve, blur, smooth contrast "
                        "and offset fields (domain randomisation; default %(default)s)")
    s.add_argument("--thin-weight", type=float, default=1.0,
                   help="factor on the weight of the links inside thin objects (neurites at most 3.5 voxels deep), "
                        "which the network cuts along their length (default %(default)s: off)")
    s.add_argument("--lsd-weight", type=float, default=0.0,
                   help="weight of an auxiliary loss on local shape descriptors predicted by a second head "
                        "(segment/lsd.py; training only, inference reads the affinities; default %(default)s: off)")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    _add_common(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("finetune", help="fine-tune an affinity model (default: the shipped one) on a few small "
                                        "labelled blocks of your own scan; held-out blocks scored before and after")
    s.add_argument("blocks", type=Path, nargs="+",
                   help="labelled blocks (zarr / HDF5: datasets --raw-key, --labels-key, optional --mask-key), "
                        "each at least 24 voxels per axis (48^3 recommended)")
    s.add_argument("--validate", type=Path, nargs="*", default=[],
                   help="held-out labelled blocks: scored before and after, never trained or tuned on")
    s.add_argument("--out", type=Path, required=True, help="the fine-tuned model (.pt; its record beside it, .json)")
    s.add_argument("--from", dest="base", type=Path, help="model to start from (default: the shipped model)")
    s.add_argument("--iterations", type=int, default=600, help="optimiser steps (default %(default)s)")
    s.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default %(default)s)")
    s.add_argument("--output-patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="output patch (default: the largest that fits every block, at most 34)")
    s.add_argument("--shading", type=float, default=0.5, help="depth-shading augmentation probability")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    _add_common(s)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("segment", help="segment a reconstructed volume into OME-NGFF labels: "
                                       "OUT/volume.ome.zarr/labels/segmentation (OUT/segmentation.ome.zarr when the "
                                       "volume is not OUT's)")
    s.add_argument("volume", type=Path, help="an OME-Zarr volume, or an output folder holding volume.ome.zarr")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    s.add_argument("--threshold", type=float, help="agglomeration threshold (default: the model's tuned value)")
    s.add_argument("--fragment-method", choices=("affinity", "distance"),
                   help="watershed fragments on the affinity graph or from distance-transform seeds "
                        "(default: the model's tuned choice)")
    s.add_argument("--enclosed", type=float,
                   help="merge a segment into the neighbour holding at least this share of its contact surface "
                        "(nuclei, mitochondria; default: the model's tuned value; 0 off)")
    s.add_argument("--mask", choices=("auto", "threshold", "none"), default="auto",
                   help="voxels outside the sample get label 0: auto (default: the sample's support, as the chain's "
                        "envelope finds it, where one is found), threshold (Otsu on the whole volume), none")
    s.add_argument("--scales", type=int, nargs="+", choices=(1, 2), metavar="K",
                   help="scales the network sees the volume at, affinities averaged: 1 as it is, 2 upsampled 2x "
                        "(8x the prediction time; default: the model's tuned choice)")
    s.add_argument("--block-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="blockwise, resumable (work files in OUT/segmentation.work); multiples of 8")
    s.add_argument("--context", type=int, default=16, help="blockwise: voxels of context (default %(default)s)")
    s.add_argument("--ray", action="store_true", help="blockwise as Ray tasks")
    s.add_argument("--address", help="with --ray: join this Ray cluster")
    s.add_argument("--swc", type=Path, help="write skeletons (kimimaro) of the segments as SWC files here")
    s.add_argument("--swc-min-voxels", type=int, default=200)
    s.add_argument("--swc-soma-radius-nm", type=float, default=2000.0,
                   help="SWC node type soma (1) where the skeleton's radius reaches this (default %(default)s nm)")
    s.add_argument("--swc-axon-radius-nm", type=float,
                   help="SWC node types of neurites by calibre: axon (2) below this radius, dendrite (3) above; "
                        "default: undefined (0), morphology alone does not tell them apart")
    s.add_argument("--precomputed", type=Path, help="also write neuroglancer precomputed layers (DIR/image, "
                                                     "DIR/segmentation); needs tensorstore")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    s.set_defaults(func=cmd_segment)

    s = sub.add_parser("evaluate", help="VOI split/merge and adapted Rand error (CREMI conventions) against "
                                        "a labelled volume")
    s.add_argument("segmentation", type=Path, help="an output folder or OME-Zarr volume with labels, a label image, "
                                                  "zarr or HDF5 (dataset --seg-key)")
    s.add_argument("truth", type=Path, help="ground truth: HDF5/zarr (dataset --labels-key), truth.h5, OME-Zarr")
    s.add_argument("--seg-key", default="labels")
    s.add_argument("--labels-key", default="labels")
    s.add_argument("--mask-key", help="only score voxels inside this dataset of TRUTH (e.g. field_of_view)")
    s.add_argument("--json", type=Path, help="also write the scores as JSON")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("classify", help="random-forest pixel classification (e.g. APEX2-labelled nuclei) "
                                        "from a few labelled strokes")
    s.add_argument("volume", type=Path, help="an OME-Zarr volume, or an output folder holding volume.ome.zarr")
    s.add_argument("--strokes", type=Path, required=True, help="HDF5/zarr/OME-Zarr: 0 unlabelled, 1, 2, ... classes")
    s.add_argument("--strokes-key", default="strokes")
    s.add_argument("--out", type=Path, required=True, help="class map (OME-Zarr labels)")
    s.add_argument("--trees", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_classify)


def _add_common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--raw-key", default="raw")
    s.add_argument("--labels-key", default="labels")
    s.add_argument("--mask-key", default="mask")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
