"""Blockwise segmentation of volumes larger than memory: pure scheduling and per-block work, no Ray.

Stages, each run block by block and marked done per block (a re-run skips finished blocks, so an interrupted
run resumes):

1. ``predict``   affinities of the block (input read with the network's context; equal to whole-volume prediction)
2. ``fragments`` seeded watershed on the block's affinities plus ``context``, cropped to the block, ids made
   unique by a per-block offset (``block index * block voxels``)
3. ``agglomerate`` affinity sum and count on each contact between two fragments, over the block's links
   (those to the plane before the block included, so every link of the volume is counted once), each
   fragment's area on the volume's surface, and the fragments that continue across the block's lower faces
   (:func:`face_joins`: where the block's watershed, which saw ``context`` voxels beyond its faces, and the
   neighbour's agree that one fragment goes on)
4. ``solve``     (once) the contacts of all blocks summed, the fragments cut by block faces joined again, the
   fragment graph agglomerated by mean affinity below the threshold (the same merges as waterz on the whole
   volume), enclosed segments merged: a fragment -> segment table
5. ``relabel``   the block's fragments through the table, into the segmentation

The sample mask (:mod:`~.mask`, ``spec.mask``) is computed once by :meth:`BlockwiseSegmentation.prepare` on
a strided sample of the whole volume, as the whole-volume path computes it, and stored (``mask.npz``); each
block's watershed floods its part of the grown support and its relabelling cuts the labels to the support,
so voxels outside the sample are 0 in both paths alike.

Joining the fragments that block faces cut matters: mean-affinity agglomeration on fragments cut into
blocks is not the agglomeration of the whole fragments (each half averages its own contacts and can merge
elsewhere first). Three simulated scans stitched along ``z`` (``tests/test_seams.py``, affinities from the
phantom's labels): the whole volume's distance-transform fragments cut into 32-voxel blocks took the adapted
Rand error from 0.099 to 0.315, and the objects that cross a seam from 28 of 29 keeping one id to 27; joined,
the blocks give the whole volume's partition.

Work files live in one folder, the resumable :class:`~xnh_stream.state.work.WorkFolder` of the final pass
(a folder of another run or an older format is started afresh): ``spec.json``, ``affinities.zarr``,
``fragments.zarr``, ``segmentation.zarr``, ``edges/``, ``mask.npz``, ``lut.npz``, ``results/norm.pkl``,
``done/<stage>/<block>.json``. :func:`run_blockwise` runs the stages on any
:class:`~xnh_stream.chain.executor.Executor` (here, or Ray tasks).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from ..chain.executor import Executor, Progress, SerialExecutor, run_units, worker_of
from ..state.work import DamagedWork, WorkFolder
from .mask import SampleMask, outside_area, sample_mask
from .postprocess import (agglomerate_contacts, apply_lut, contact_statistics, face_area, fragments_watershed,
                          merge_enclosed, segment_lut, sum_contacts)

STAGES = ("predict", "fragments", "agglomerate", "relabel")
#: Version of the work folder's layout, in ``spec.json``; 2 added each block's surface areas (``border_*.npy``),
#: 3 the sample mask (``mask.npz``, ``spec.mask``), 4 the fragments across block faces (``face_*.npz``,
#: ``joins_*.npy``), 5 the one work folder (:class:`~xnh_stream.state.work.WorkFolder`: ``done/*/<block>.json``,
#: the normalisation in ``results/norm.pkl``).
WORK_FORMAT = 5


@dataclass(frozen=True)
class Block:
    """One block of the grid: its index and ``[start, stop)`` corners."""

    index: int
    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def slices(self) -> tuple[slice, slice, slice]:
        """Slices of the block in the volume."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def with_planes_before(self) -> tuple[tuple[slice, slice, slice], tuple[bool, bool, bool]]:
        """Slices of the block plus the plane before it on each axis where there is one, and which axes grew
        (what :func:`~.postprocess.contact_statistics` takes to see each link of the volume once)."""
        grow = tuple(a > 0 for a in self.start)
        return tuple(slice(a - g, b) for a, b, g in zip(self.start, self.stop, grow)), grow  # type: ignore[return-value]

    def grown(self, context: int, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
        """Slices of the block plus ``context`` voxels on every side, clipped to the volume."""
        return tuple(slice(max(a - context, 0), min(b + context, n))  # type: ignore[return-value]
                     for a, b, n in zip(self.start, self.stop, shape))


def block_grid(shape: tuple[int, int, int], block_shape: tuple[int, int, int]) -> list[Block]:
    """Cut ``shape`` into blocks of ``block_shape`` (the last ones smaller), in row-major order."""
    if any(b <= 0 for b in block_shape):
        raise ValueError(f"block shape must be positive, got {block_shape}")
    starts = [range(0, n, b) for n, b in zip(shape, block_shape)]
    return [Block(i, tuple(s), tuple(min(a + b, n) for a, b, n in zip(s, block_shape, shape)))  # type: ignore[arg-type]
            for i, s in enumerate(itertools.product(*starts))]


@dataclass
class BlockwiseSpec:
    """Everything a worker needs to run any stage on any block (plain data: picklable, JSON-able).

    Attributes
    ----------
    work : str
        Work folder, the run's own (:class:`~xnh_stream.state.work.WorkFolder`): one of another run, or a
        non-empty folder without its ``spec.json``, is emptied first.
    raw : str
        Image: an OME-Zarr folder (level ``s0``/``0`` is used) or a zarr array folder.
    block_shape : (int, int, int)
        Block size; a multiple of the network's downsampling grid (8).
    context : int
        Voxels around a block seen by its watershed.
    model : str or None
        Model file (None: the shipped model).
    threshold, fragment_threshold : float
        Agglomeration threshold (``1 - mean affinity``) and the watershed interior threshold.
    seed_distance : int
        Watershed seed spacing (``distance`` method).
    fragment_method : str
        ``affinity`` or ``distance`` (see :func:`~.postprocess.fragments_watershed`).
    enclosed : float
        Merge segments enclosed by one neighbour (:func:`~.postprocess.merge_enclosed`); 0 = off.
    tile : int
        Prediction tile edge.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    norm : (float, float) or None
        Input normalisation (offset, scale); computed once by :func:`prepare` if None.
    mask : str
        Sample mask method (:data:`~.mask.MASK_METHODS`): ``auto`` (default), ``threshold`` or ``none``.
    scales : tuple of int
        Scales the network sees the volume at (:func:`~.predict.predict_affinities`; ``(1, 2)``: also
        upsampled 2x, their affinities averaged).
    """

    work: str
    raw: str
    block_shape: tuple[int, int, int] = (64, 128, 128)
    context: int = 16
    model: str | None = None
    threshold: float = 0.5
    fragment_threshold: float = 0.5
    seed_distance: int = 2
    fragment_method: str = "affinity"
    enclosed: float = 0.0
    tile: int = 64
    device: str = "auto"
    norm: tuple[float, float] | None = None
    mask: str = "auto"
    scales: tuple[int, ...] = (1,)


def open_raw(path: str | Path):
    """The level-0 array of an OME-Zarr image, or a plain zarr array, opened read-only (not loaded)."""
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):
        for key in ("s0", "0"):
            if key in node:
                return node[key]
        raise ValueError(f"{path}: zarr group without a level-0 array (s0 or 0)")
    return node


class BlockwiseSegmentation:
    """The per-block operations of a blockwise run over one work folder (see module docstring)."""

    def __init__(self, spec: BlockwiseSpec) -> None:
        self.spec = spec
        self.work = Path(spec.work)
        self.folder = WorkFolder.attach(self.work)
        self.raw = open_raw(spec.raw)
        if self.raw.ndim != 3:
            raise ValueError(f"{spec.raw}: image must be 3-D [z, y, x], got shape {self.raw.shape}")
        self.shape = tuple(int(n) for n in self.raw.shape)
        self.blocks = block_grid(self.shape, tuple(spec.block_shape))  # type: ignore[arg-type]
        self.block_voxels = int(np.prod(spec.block_shape))
        self._model = None
        self._mask: SampleMask | None = None

    # ------------------------------------------------------------------ setup and bookkeeping
    @classmethod
    def prepare(cls, spec: BlockwiseSpec) -> BlockwiseSegmentation:
        """Create (or reopen, to resume) the work folder (one of another run or an older format is started
        afresh); fixes the input normalisation once."""
        from .unet import AffinityModel, normalise

        work = Path(spec.work)
        folder = WorkFolder(work, {k: v for k, v in asdict(spec).items() if k not in ("norm", "device")}, WORK_FORMAT)
        try:
            if folder.has("norm"):
                spec.norm = tuple(folder.load("norm"))  # type: ignore[assignment]
        except DamagedWork:
            pass  # computed again below
        self = cls(spec)
        grid = 8  # segment.commands.BLOCK_GRID: the command refuses a bad --block-shape before this
        if any(b % grid and b < n for b, n in zip(spec.block_shape, self.shape)):
            raise ValueError(f"block shape {spec.block_shape} must be a multiple of {grid} (the downsampling grid)")
        if spec.norm is None:
            model = AffinityModel.load(spec.model, "cpu")
            step = max(1, int(np.ceil((np.prod(self.shape) / 4e6) ** (1 / 3))))
            sample = np.asarray(self.raw[::step, ::step, ::step])
            spec.norm = normalise(sample, model.norm)
        folder.save("norm", tuple(spec.norm))
        if not (work / "mask.npz").exists():
            tmp = work / "mask.tmp.npz"
            sample_mask(self.raw, spec.mask).save(tmp)
            os.replace(tmp, work / "mask.npz")
        n_aff = 3
        for name, dtype, shape, chunks in (
                ("affinities.zarr", "float32", (n_aff, *self.shape), (n_aff, *spec.block_shape)),
                ("fragments.zarr", "uint64", self.shape, spec.block_shape),
                ("segmentation.zarr", "uint64", self.shape, spec.block_shape)):
            if not (work / name).exists():
                zarr.open_array(str(work / name), mode="w", shape=shape, dtype=dtype,
                                chunks=tuple(min(c, s) for c, s in zip(chunks, shape)), fill_value=0)
        (work / "edges").mkdir(exist_ok=True)
        return self

    def _array(self, name: str):
        return zarr.open_array(str(self.work / name), mode="r+")

    def is_done(self, stage: str, index: int) -> bool:
        """Whether ``stage`` finished on block ``index``."""
        return self.folder.is_done(stage, index)

    def _mark(self, stage: str, index: int, info: dict | None = None) -> None:
        self.folder.mark(stage, str(index), info or {})

    def pending(self, stage: str) -> list[int]:
        """Blocks that still need ``stage``."""
        return self.folder.pending(stage, (b.index for b in self.blocks))

    @property
    def model(self):
        from .unet import AffinityModel

        if self._model is None:
            from .train import pick_device

            self._model = AffinityModel.load(self.spec.model, pick_device(self.spec.device))
        return self._model

    @property
    def volume_mask(self) -> SampleMask:
        """The volume's sample mask (written by :meth:`prepare`)."""
        if self._mask is None:
            self._mask = SampleMask.load(self.work / "mask.npz")
        return self._mask

    # ------------------------------------------------------------------ stages
    def predict(self, index: int) -> None:
        """Stage 1: affinities of block ``index``."""
        from .predict import predict_affinities

        b = self.blocks[index]
        affs = predict_affinities(self.model, self.raw, (b.start, b.stop), self.spec.norm, self.spec.tile,
                                  self.spec.device, scales=self.spec.scales)
        self._array("affinities.zarr")[(slice(None),) + b.slices()] = affs
        self._mark("predict", index)

    def fragments(self, index: int) -> None:
        """Stage 2: watershed fragments of block ``index`` (needs ``predict`` on it and its neighbours)."""
        b, ctx = self.blocks[index], self.spec.context
        grown = b.grown(ctx, self.shape)
        affs = np.asarray(self._array("affinities.zarr")[(slice(None),) + grown])
        frag = fragments_watershed(affs, self.spec.fragment_threshold, self.spec.seed_distance,
                                   method=self.spec.fragment_method, mask=self.volume_mask.region(grown, grown=True))
        inner = tuple(slice(a - g.start, c - g.start) for a, c, g in zip(b.start, b.stop, grown))
        core = frag[inner]
        ids, local = np.unique(core, return_inverse=True)  # consecutive ids in the block, 0 kept
        glob = np.arange(len(ids), dtype=np.uint64) + np.uint64(0 if ids[0] == 0 else 1)
        glob[glob > 0] += np.uint64(index * self.block_voxels)
        out = glob[local.reshape(core.shape)]
        self._array("fragments.zarr")[b.slices()] = out
        # this watershed's fragments on the plane before each lower face, in the block's ids (0: none of its own)
        faces = {}
        for axis, (a, g) in enumerate(zip(b.start, grown)):
            if a > 0:
                plane = list(inner)
                plane[axis] = slice(a - 1 - g.start, a - g.start)
                seen = frag[tuple(plane)]
                k = np.minimum(np.searchsorted(ids, seen), len(ids) - 1)
                faces[str(axis)] = np.where((ids[k] == seen) & (seen != 0), glob[k], 0)
        np.savez(self.work / "edges" / f"face_{index}.npz", **faces)
        np.save(self.work / "edges" / f"ids_{index}.npy", np.unique(out))
        self._mark("fragments", index, {"fragments": len(ids)})

    def agglomerate(self, index: int) -> None:
        """Stage 3: affinity sum and count on every fragment contact of block ``index`` (its links to the
        previous plane included, so each link is counted once over all blocks; needs ``fragments`` on it and
        its lower neighbours)."""
        b = self.blocks[index]
        region, grow = b.with_planes_before()
        affs = np.asarray(self._array("affinities.zarr")[(slice(None),) + b.slices()])
        frag = np.asarray(self._array("fragments.zarr")[region])
        contacts = contact_statistics(affs, frag, grow)
        core = frag[tuple(slice(int(g), None) for g in grow)]
        surface = face_area(core, [(a == 0, c == n) for a, c, n in zip(b.start, b.stop, self.shape)])
        surface = np.concatenate([surface, outside_area(frag, self.volume_mask.region(region, grown=True), grow)])
        faces = np.load(self.work / "edges" / f"face_{index}.npz")
        joins = [face_joins(faces[str(axis)], frag[tuple(slice(0, 1) if k == axis else slice(int(g), None)
                                                         for k, g in enumerate(grow))])
                 for axis in range(3) if grow[axis]]
        joins = np.concatenate(joins) if joins else np.zeros((0, 2), np.uint64)
        for name, rows in (("border", surface), ("joins", joins), ("edges", contacts)):  # edges last: means done
            tmp = self.work / "edges" / f"{name}_{index}.tmp.npy"
            np.save(tmp, rows)
            os.replace(tmp, self.work / "edges" / f"{name}_{index}.npy")
        self._mark("agglomerate", index, {"contacts": len(contacts)})

    def solve(self) -> dict:
        """Stage 4: sum every block's contacts and agglomerate the whole fragment graph by mean affinity
        (as waterz does on a whole volume); write the fragment -> segment table."""
        missing = self.pending("agglomerate")
        if missing:
            raise RuntimeError(f"{self.work}: blocks {missing[:10]} not agglomerated yet")
        ids = np.unique(np.concatenate([np.load(self.work / "edges" / f"ids_{b.index}.npy") for b in self.blocks]))
        contacts = sum_contacts(np.concatenate([np.load(self.work / "edges" / f"edges_{b.index}.npy").reshape(-1, 4)
                                                for b in self.blocks]))
        joins = np.concatenate([np.load(self.work / "edges" / f"joins_{b.index}.npy").reshape(-1, 2)
                                for b in self.blocks])
        root = fragment_roots(ids, joins)  # the fragments cut by block faces, whole again
        merges = agglomerate_contacts(contacts_between(contacts, ids, root), self.spec.threshold)
        root_ids, root_segs = segment_lut(merges, np.unique(root), self.spec.threshold)
        lut_ids, segs = ids, root_segs[np.searchsorted(root_ids, root)]
        if self.spec.enclosed > 0:
            border = np.concatenate([np.load(self.work / "edges" / f"border_{b.index}.npy").reshape(-1, 2)
                                     for b in self.blocks])
            segs = merge_enclosed(contacts, lut_ids, segs, self.spec.enclosed, border)
        tmp = self.work / "lut.tmp.npz"
        np.savez(tmp, ids=lut_ids, segments=segs)
        os.replace(tmp, self.work / "lut.npz")
        return {"fragments": int(len(ids)), "joined": int(len(ids) - len(root_ids)), "contacts": int(len(contacts)),
                "merges": int(len(merges)), "segments": int(segs.max(initial=0))}

    def relabel(self, index: int) -> None:
        """Stage 5: write the segmentation of block ``index`` (needs :meth:`solve`)."""
        b = self.blocks[index]
        lut = np.load(self.work / "lut.npz")
        frag = np.asarray(self._array("fragments.zarr")[b.slices()])
        seg = apply_lut(frag, lut["ids"], lut["segments"])
        inside = self.volume_mask.region(b.slices())
        self._array("segmentation.zarr")[b.slices()] = seg if inside is None else np.where(inside, seg, 0)
        self._mark("relabel", index)

    def segmentation(self, in_memory: bool = True) -> np.ndarray | zarr.Array:
        """The finished segmentation: read into memory, or (``in_memory=False``) the zarr array on disk."""
        if self.pending("relabel"):
            raise RuntimeError(f"{self.work}: segmentation not finished")
        arr = self._array("segmentation.zarr")
        return np.asarray(arr[...]) if in_memory else arr

    def n_segments(self) -> int:
        """Segments in the finished segmentation (from the fragment -> segment table, without reading it)."""
        return int(np.load(self.work / "lut.npz")["segments"].max(initial=0))


def face_joins(mine: np.ndarray, theirs: np.ndarray, share: float = 0.5) -> np.ndarray:
    """The fragments that go on across a block face: pairs ``(mine, theirs)`` of fragment ids on the plane
    just before the face, ``mine`` as this block's watershed labelled it (it saw the plane as context),
    ``theirs`` as the neighbouring block's did, that agree on at least ``share`` of each one's voxels there.

    Parameters
    ----------
    mine, theirs : ndarray
        The plane's fragment ids in the two labellings (0: none).
    share : float
        Least share of each fragment's voxels on the plane held by the other.

    Returns
    -------
    ndarray (k, 2) of uint64
    """
    m, t = np.asarray(mine, np.uint64).ravel(), np.asarray(theirs, np.uint64).ravel()
    keep = (m > 0) & (t > 0)
    if not keep.any():
        return np.zeros((0, 2), np.uint64)
    pairs, n = np.unique(np.column_stack([m[keep], t[keep]]), axis=0, return_counts=True)
    ids_m, n_m = np.unique(m[m > 0], return_counts=True)
    ids_t, n_t = np.unique(t[t > 0], return_counts=True)
    ok = (n >= share * n_m[np.searchsorted(ids_m, pairs[:, 0])]) & (n >= share * n_t[np.searchsorted(ids_t, pairs[:, 1])])
    return pairs[ok]


def fragment_roots(ids: np.ndarray, joins: np.ndarray) -> np.ndarray:
    """For each fragment of ``ids`` (sorted), the smallest id of the fragments joined to it by ``joins``
    (pairs of ids, :func:`face_joins`), itself when none."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(ids, np.uint64)
    if not len(joins):
        return ids.copy()
    ia = np.searchsorted(ids, np.asarray(joins[:, 0], np.uint64))
    ib = np.searchsorted(ids, np.asarray(joins[:, 1], np.uint64))
    _, comp = connected_components(coo_matrix((np.ones(len(ia)), (ia, ib)), shape=(len(ids), len(ids))),
                                   directed=False)
    first = np.full(comp.max() + 1, len(ids))
    np.minimum.at(first, comp, np.arange(len(ids)))
    return ids[first[comp]]


def contacts_between(contacts: np.ndarray, ids: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Fragment contacts ``(a, b, sum, count)`` between the roots of their fragments (:func:`fragment_roots`):
    contacts inside one root dropped, those of one pair of roots summed."""
    if not len(contacts):
        return contacts
    a = root[np.searchsorted(ids, contacts[:, 0].astype(np.uint64))].astype(np.float64)
    b = root[np.searchsorted(ids, contacts[:, 1].astype(np.uint64))].astype(np.float64)
    keep = a != b
    rows = np.column_stack([np.minimum(a, b), np.maximum(a, b), contacts[:, 2], contacts[:, 3]])[keep]
    return sum_contacts(rows)


def _segmentation_of(payload: dict) -> BlockwiseSegmentation:
    return BlockwiseSegmentation(BlockwiseSpec(**payload))


def block_task(index: int, payload: dict, stage: str) -> int:
    """Run ``stage`` (predict, fragments, agglomerate, relabel) on block ``index`` of the run ``payload``
    (its spec as a dict; the segmentation is built once per process and run)."""
    getattr(worker_of(_segmentation_of, payload), stage)(index)
    return index


def solve_task(_: int, payload: dict) -> dict:
    """:meth:`BlockwiseSegmentation.solve` of the run ``payload`` (one task)."""
    return worker_of(_segmentation_of, payload).solve()


def run_blockwise(spec: BlockwiseSpec, progress: Progress | None = None,
                  executor: Executor | None = None) -> BlockwiseSegmentation:
    """Run (or resume) every stage, block by block on ``executor`` (default: here, one after the other;
    ``actors.executor.RayExecutor``: Ray tasks). A stage starts when the one before has finished on every
    block (a block's watershed reads its neighbours' affinities, its contacts the plane before it); the
    solve is one task before the relabelling."""
    executor = executor or SerialExecutor()
    bw = BlockwiseSegmentation.prepare(spec)
    payload = asdict(bw.spec)
    worker_of(_segmentation_of, payload, bw)  # this process's calls use the prepared one
    for stage in STAGES:
        if stage == "relabel" and bw.pending("relabel"):
            run_units(executor, "solve", solve_task, [0], payload)
        run_units(executor, stage, block_task, bw.pending(stage), payload, stage, progress=progress)
    return bw
