"""Segmentation of a reconstructed volume: affinities (U-Net) -> fragments (watershed) -> agglomeration (waterz),
in memory for volumes that fit, and the writer of the labels used by the CLI and the stream: the OME-NGFF
label image ``OUT/volume.ome.zarr/labels/segmentation`` (``OUT/segmentation.ome.zarr``, a standalone label
image, when the volume segmented lies elsewhere)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..io.omezarr import label_names, multiscale_levels, read_volume, write_labels, write_volume
from .mask import MASK_METHODS, SampleMask, outside_area, sample_mask
from .postprocess import (agglomerate, apply_lut, contact_statistics, face_area, fragments_watershed, merge_enclosed,
                          segments_of_fragments)
from ..io.names import (LABEL_NAME, SEGMENTATION_NAME, SEGMENTATION_SUMMARY_NAME, STANDALONE_NAME,  # noqa: F401
                         VOLUME_NAME)
from .predict import check_scales, predict_affinities
from .unet import AffinityModel, volume_norm



@dataclass
class SegmentParams:
    """Post-processing parameters; defaults are taken from the model's record (tuned on held-out volumes).

    ``enclosed``: merge a segment into the neighbour holding at least this share of its contact surface
    (:func:`~.postprocess.merge_enclosed`: nuclei and mitochondria split off their cell); 0 = off.
    ``mask``: the sample mask (:mod:`~.mask`), voxels outside the sample labelled 0: ``auto`` (default; the
    sample's support where one is found, as the chain's envelope finds it), ``threshold`` (Otsu on the whole
    volume) or ``none`` (every voxel segmented).
    ``scales``: the scales the network sees the volume at, their affinities averaged
    (:func:`~.predict.predict_affinities`): ``(1,)`` as it is, ``(1, 2)`` also upsampled 2x.
    """

    threshold: float = 0.5
    fragment_threshold: float = 0.5
    seed_distance: int = 2
    fragment_method: str = "affinity"
    enclosed: float = 0.0
    mask: str = "auto"
    scales: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.mask not in MASK_METHODS:
            raise ValueError(f"unknown mask method {self.mask!r} (one of {', '.join(MASK_METHODS)})")
        self.scales = check_scales(self.scales)

    @classmethod
    def for_model(cls, model: AffinityModel, **overrides: object) -> SegmentParams:
        """The parameters stored with ``model`` (its ``record['postprocess']``), then ``overrides`` (None ignored)."""
        base = dict(model.record.get("postprocess", {}))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: base[k] for k in ("threshold", "fragment_threshold", "seed_distance", "fragment_method",
                                           "enclosed", "mask", "scales") if k in base})


@dataclass
class SegmentResult:
    """Labels (uint64, 0 never used for a segment; 0 outside the sample ``mask``), the affinities and fragments
    they came from, the sample mask (None: none) and timings in seconds."""

    labels: np.ndarray
    affinities: np.ndarray
    fragments: np.ndarray
    seconds: dict = field(default_factory=dict)
    mask: np.ndarray | None = None


def segment_volume(raw: np.ndarray, model: AffinityModel | None = None, params: SegmentParams | None = None,
                   device: str = "auto", tile: int = 64) -> SegmentResult:
    """Segment a volume held in memory (``[z, y, x]``); see :func:`~.blockwise.run_blockwise` for large ones.

    Voxels outside the sample mask (``params.mask``, :func:`~.mask.sample_mask`) are 0.
    """
    model = model or AffinityModel.load()
    params = params or SegmentParams.for_model(model)
    t0 = time.perf_counter()
    affs = predict_affinities(model, raw, tile=tile, device=device, scales=params.scales)
    t1 = time.perf_counter()
    mask = sample_mask(raw, params.mask)
    t2 = time.perf_counter()
    labels, frag = segment_from_affinities(affs, params, mask)
    t3 = time.perf_counter()
    return SegmentResult(labels, affs, frag, {"predict": t1 - t0, "mask": t2 - t1, "postprocess": t3 - t2},
                         mask.full())


def segment_from_affinities(affs: np.ndarray, params: SegmentParams, mask: SampleMask | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The whole-volume post-processing of :func:`segment_volume`: fragments, agglomeration, enclosed merge.

    Parameters
    ----------
    affs : ndarray [3, z, y, x]
        Nearest-neighbour affinities.
    params : SegmentParams
        Post-processing parameters (``params.mask`` is not read: the mask is ``inside``).
    mask : SampleMask, optional
        The sample mask (:func:`~.mask.sample_mask`): the watershed floods its grown support, the labels are 0
        outside the support.

    Returns
    -------
    labels, fragments : ndarray of uint64
    """
    flooded = None if mask is None else mask.full(grown=True)
    frag = fragments_watershed(affs, params.fragment_threshold, params.seed_distance,
                               method=params.fragment_method, mask=flooded)
    labels = merge_enclosed_segments(affs, frag, agglomerate(affs, frag, [params.threshold])[0], params.enclosed,
                                     inside=flooded)
    inside = None if mask is None else mask.full()
    if inside is not None:
        labels = np.where(inside, labels, 0).astype(labels.dtype, copy=False)
    return labels, frag


def merge_enclosed_segments(affs: np.ndarray, frag: np.ndarray, labels: np.ndarray, fraction: float,
                            contacts: np.ndarray | None = None, inside: np.ndarray | None = None) -> np.ndarray:
    """Whole-volume :func:`~.postprocess.merge_enclosed` on ``labels`` (segments of the fragments ``frag``);
    ``contacts`` (:func:`~.postprocess.contact_statistics` of ``frag``) is computed when not given. A
    segment's area against voxels outside the sample mask ``inside`` counts, like the volume's faces, as
    surface with no neighbour."""
    if fraction <= 0:
        return labels
    if contacts is None:
        contacts = contact_statistics(affs, frag, (False, False, False))
    ids, segs = segments_of_fragments(frag, labels)
    border = np.concatenate([face_area(frag), outside_area(frag, inside)])
    return apply_lut(frag, ids, merge_enclosed(contacts, ids, segs, fraction, border))


def segment_output(out: str | Path, model_path: str | Path | None = None, device: str = "auto",
                   **overrides: object) -> Path:
    """Segment ``OUT/volume.ome.zarr`` into its label image ``OUT/volume.ome.zarr/labels/segmentation``.

    A summary (segments, timings, model, parameters) goes into ``OUT/segmentation.json``.
    """
    out = Path(out)
    src = out / VOLUME_NAME
    if not src.exists():
        raise FileNotFoundError(f"{src}: no reconstructed volume to segment")
    volume, voxel = read_volume(src)
    model = AffinityModel.load(model_path)
    params = SegmentParams.for_model(model, **overrides)
    res = segment_volume(volume, model, params, device)
    dst, _ = write_segmentation(out, res.labels, voxel, int(res.labels.max(initial=0)), image=src)
    write_summary(out, dst, int(np.count_nonzero(np.unique(res.labels))), tuple(volume.shape), voxel,
                  volume_origin(src), res.seconds, model_path, params)
    return dst


#: The summary beside the labels, written by ``segment`` and by the stream's segmentation of a finished scan.
SUMMARY_NAME = SEGMENTATION_SUMMARY_NAME
#: How ``segmentation.json`` describes the frame every output of the segmentation is in.
FRAME = ("world (sample stage), the volume's OME-NGFF frame: label image levels carry the volume's scale and "
         "translation; neuroglancer precomputed layers their voxel_offset (whole voxels, centre of voxel i at "
         "(i + 0.5) * resolution nm); SWC nodes x y z in nm")


def write_summary(out: str | Path, labels: Path, segments: int, shape: tuple[int, ...], voxel_m: float,
                  origin_m: tuple[float, float, float] | None, seconds: dict, model_path: str | Path | None,
                  params: SegmentParams, **extra: object) -> Path:
    """Write ``OUT/segmentation.json``: what was segmented, with what, and the frame of the outputs.

    Parameters
    ----------
    out : str or Path
        The output folder.
    labels : Path
        The label image written.
    segments : int
        Number of segments (ids other than 0).
    shape : tuple of int
        The volume's level-0 shape ``z y x``.
    voxel_m : float
        Level-0 voxel, metres.
    origin_m : (float, float, float) or None
        The centre of voxel ``[0, 0, 0]`` in the world frame, ``z y x`` metres (the volume's translation).
    seconds : dict
        Timings.
    model_path : str or Path, optional
        The model file (None: the shipped model).
    params : SegmentParams
        The post-processing parameters.
    **extra
        More entries (``swc``, ``precomputed``, ``block_shape``).

    Returns
    -------
    Path
    """
    out = Path(out)
    try:
        shown = str(Path(labels).relative_to(out))
    except ValueError:
        shown = str(labels)
    info = {"segments": int(segments), "shape": [int(n) for n in shape], "voxel_m": float(voxel_m),
            "origin_m": None if origin_m is None else [float(v) for v in origin_m], "frame": FRAME,
            "labels": shown, "seconds": seconds, "model": str(model_path or "shipped"), "params": params.__dict__,
            **extra}
    path = out / SUMMARY_NAME
    path.write_text(json.dumps(info, indent=1))
    return path


def write_segmentation(out: str | Path, labels: np.ndarray, voxel_m: float, max_label: int,
                       image: str | Path | None = None) -> tuple[Path, np.ndarray]:
    """Write labels (numpy, or a dask array written chunk by chunk) as an OME-NGFF label image.

    The labels of ``OUT/volume.ome.zarr`` (``image`` is it, or None while it exists) go into
    ``OUT/volume.ome.zarr/labels/segmentation``; those of a volume elsewhere (not to be written into)
    into the standalone label image ``OUT/segmentation.ome.zarr``. Either way the labels carry the volume's
    coordinate transformations (scale and stage translation), so they sit on it in the world frame. As uint32
    when ``max_label`` (the largest id) fits. Returns the path of the label image and the labels as written.
    """
    out = Path(out)
    labels = labels.astype(np.uint32) if max_label < 2**32 else labels
    own = out / VOLUME_NAME
    image = Path(image) if image is not None else own
    if own.exists() and image.resolve() == own.resolve():
        return write_labels(own, labels, LABEL_NAME), labels
    dst = write_volume(out / STANDALONE_NAME, labels, voxel_m, labels=True, name=LABEL_NAME,
                       origin_m=volume_origin(image))
    return dst, labels


def volume_origin(image: str | Path) -> tuple[float, float, float] | None:
    """The world position ``z y x`` (metres, sample-stage frame) of the centre of voxel ``[0, 0, 0]`` of the
    OME-NGFF volume ``image`` (its level 0 ``translation``); None when it has none or is not OME-NGFF."""
    try:
        return multiscale_levels(image)[0]["origin_m"]
    except (OSError, KeyError, IndexError, ValueError, TypeError, StopIteration, zarr.errors.GroupNotFoundError):
        return None


def find_segmentation(path: str | Path) -> Path:
    """The label image meant by ``path``: an output folder (its volume's ``segmentation`` labels, else
    ``segmentation.ome.zarr``), an OME-Zarr image with labels (its first label image), or a label image."""
    path = Path(path)
    for image in (path / VOLUME_NAME, path):
        names = label_names(image) if image.exists() else []
        if names:
            return image / "labels" / (LABEL_NAME if LABEL_NAME in names else names[0])
    if (path / STANDALONE_NAME).exists():
        return path / STANDALONE_NAME
    return path


def tune_postprocess(model: AffinityModel, volumes: list,
                     thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                     fragment_thresholds: tuple[float, ...] = (0.5, 0.7), seed_distance: int = 2,
                     device: str = "auto", methods: tuple[str, ...] = ("affinity", "distance"),
                     enclosed: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8), mask: str = "auto",
                     scales: tuple[tuple[int, ...], ...] = ((1,), (1, 2))) -> tuple[SegmentParams, list[dict]]:
    """Pick the post-processing parameters with the lowest mean adapted Rand error on labelled ``volumes``
    (each segmented with the sample mask ``mask``).

    Returns the best parameters and one row per (scales, method, fragment threshold, threshold, enclosed share)
    with the mean scores. ``scales``: the sets of scales tried (:attr:`SegmentParams.scales`).
    """
    rows: dict[tuple, list] = {}
    for vol in volumes:
        norm = volume_norm(vol.raw, vol.meta, model.norm)
        by_scale = {k: predict_affinities(model, vol.raw, norm=norm, device=device, scales=(k,))
                    for k in sorted({k for ks in scales for k in ks})}
        sample = sample_mask(vol.raw, mask)
        flooded, inside = sample.full(grown=True), sample.full()
        for ks in scales:
            affs = by_scale[ks[0]] if len(ks) == 1 else sum(by_scale[k] for k in ks) / np.float32(len(ks))
            _tune_one(affs, vol, ks, methods, fragment_thresholds, seed_distance, thresholds, enclosed, flooded,
                      inside, rows)
    table = [{"scales": list(ks), "fragment_method": m, "fragment_threshold": ft, "threshold": t, "enclosed": e,
              **{k: float(np.mean([s.as_dict()[k] for s in scores])) for k in
                 ("voi_split", "voi_merge", "adapted_rand")}} for (ks, m, ft, t, e), scores in sorted(rows.items())]
    best = min(table, key=lambda r: r["adapted_rand"])
    return SegmentParams(best["threshold"], best["fragment_threshold"], seed_distance, best["fragment_method"],
                         best["enclosed"], mask, tuple(best["scales"])), table


def _tune_one(affs: np.ndarray, vol, ks: tuple[int, ...], methods: tuple[str, ...],
              fragment_thresholds: tuple[float, ...], seed_distance: int, thresholds: tuple[float, ...],
              enclosed: tuple[float, ...], flooded: np.ndarray | None, inside: np.ndarray | None, rows: dict) -> None:
    """One volume's scores of every post-processing setting on the affinities of the scales ``ks`` (into ``rows``)."""
    from .evaluate import evaluate

    for method in methods:
        for ft in fragment_thresholds if method == "distance" else (0.5,):
            frag = fragments_watershed(affs, ft, seed_distance, method=method, mask=flooded)
            contacts = contact_statistics(affs, frag, (False, False, False))
            for t, seg in zip(sorted(thresholds), agglomerate(affs, frag, thresholds)):
                for e in enclosed:
                    merged = merge_enclosed_segments(affs, frag, seg, e, contacts, flooded)
                    if inside is not None:
                        merged = np.where(inside, merged, 0)
                    rows.setdefault((ks, method, ft, t, e), []).append(evaluate(merged, vol.labels, vol.mask))
