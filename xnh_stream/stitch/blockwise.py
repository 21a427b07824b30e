"""Blockwise, resumable stitching of finished scans into one OME-Zarr volume: scheduling and per-unit work, no Ray.

Stages (each unit marked done in ``OUT/stitch.work/done/<stage>/<unit>.json``, the one resumable
:class:`~xnh_stream.state.work.WorkFolder`; a re-run skips finished units, so an interrupted run resumes, and a
work folder of another stitch or an older format is started afresh; :func:`run_stitch` runs the units on any
:class:`~xnh_stream.chain.executor.Executor`, here or as Ray tasks):

1. ``register``  each pair of scans whose nominal places overlap (:func:`~.register.register_pair`), result in
   ``pairs/<k>.json``
2. ``solve``     (once) all pairwise shifts placed together (:func:`~.solve.solve_placement`), intensity offsets
   matched, the output grid fixed and the output volume created: ``plan.json``
3. ``fuse``      each output block of level 0: every scan whose field of view meets the block is resampled
   onto it (reading only the part it needs) and blended with distance-to-edge weights
4. ``s1``, ``s2`` ... each block of each coarser level: 2x block mean of the level before

No process ever holds the stitched volume: a block needs the block and the parts of the scans under it.
Output: ``OUT/volume.ome.zarr`` (float32, ``z y x``, level voxels and the OME-NGFF ``translation`` of the
output origin in the sample-stage frame) and ``OUT/stitch.json`` (see :func:`~.pipeline.stitch_outputs`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..chain.executor import Executor, Progress, SerialExecutor, run_units, worker_of
from ..io.names import STITCH_WORK_NAME, VOLUME_NAME
from ..io.nxtomo import InputError
from ..io.omezarr import create_volume
from ..segment.blockwise import Block, block_grid
from ..state.work import WorkFolder
from .register import PairResult, RegisterParams, find_pairs, nominal_overlap_m, register_pair
from .scans import FOVS, Scan, blend_weight, fov_distance, load_scan, sample_scan
from .solve import Link, solve_offsets, solve_placement

#: Version of the work folder's layout, in ``spec.json`` (2: the one work folder, ``done/<stage>/<unit>.json``).
WORK_FORMAT = 2
WORK_NAME = STITCH_WORK_NAME
INTENSITY = ("offset", "none")


@dataclass
class StitchSpec:
    """Everything a worker needs to run any unit of a stitch (plain data: picklable, JSON-able).

    Attributes
    ----------
    out : str
        Output folder (``volume.ome.zarr``, ``stitch.json``, work folder ``stitch.work``).
    inputs : list of str
        Finished scan output folders.
    voxel_m : float or None
        Output voxel (default: the finest input voxel).
    block_shape : (int, int, int)
        Output block (a multiple of ``chunks``); memory per process is a few times its size.
    chunks : (int, int, int)
        Chunk shape of every output level.
    fov : str
        Field of view of each scan: ``cylinder`` (tomography) or ``box``.
    blend_m : float or None
        Width of the weight ramp from a field of view's edge inwards (default: a quarter of the smallest
        scan's smallest extent).
    trim_voxels : float
        Edge of each field of view left out (scan voxels).
    max_shift_m : float
        Largest correction of a nominal place along an axis (the stage's error).
    register_voxel_m : float or None
        Registration voxel (default: the coarser voxel of each pair).
    min_ncc : float
        Lowest correlation of an accepted pair.
    max_ambiguity : float
        Refuse a pair whose best rival place correlates more than this share of its match (default 1: the
        ambiguity is reported in ``stitch.json``, not a gate; see :class:`~.register.RegisterParams`).
    tolerance_m : float or None
        Largest residual of a link kept by the global solve (default: the finest input voxel).
    intensity : str
        ``offset`` (match the scans' means on their overlaps) or ``none``.
    edge_voxels : float
        Where scans of different voxel sizes overlap the finer one is used alone, except in a band this many
        of its voxels wide (beyond the trim) along its edge, across which it fades into the coarser one.
    include_isolated : bool
        Also place scans registered to no other at their nominal place (they are reported either way).
    order : int
        Spline order of the resampling (1 linear, 3 cubic).
    """

    out: str
    inputs: list[str]
    voxel_m: float | None = None
    block_shape: tuple[int, int, int] = (128, 128, 128)
    chunks: tuple[int, int, int] = (64, 64, 64)
    fov: str = "cylinder"
    blend_m: float | None = None
    trim_voxels: float = 2.0
    max_shift_m: float = 4e-6
    register_voxel_m: float | None = None
    min_ncc: float = 0.5
    max_ambiguity: float = 1.0
    tolerance_m: float | None = None
    intensity: str = "offset"
    edge_voxels: float = 2.0
    include_isolated: bool = False
    order: int = 1

    def check(self) -> None:
        """Raise ValueError for parameters that cannot describe a stitch."""
        if len(self.inputs) < 1:
            raise ValueError("no scans to stitch")
        if self.fov not in FOVS:
            raise ValueError(f"fov must be one of {FOVS}, got {self.fov!r}")
        if self.intensity not in INTENSITY:
            raise ValueError(f"intensity must be one of {INTENSITY}, got {self.intensity!r}")
        if any(b <= 0 or c <= 0 or b % c for b, c in zip(self.block_shape, self.chunks)):
            raise ValueError(f"block shape {tuple(self.block_shape)} must be a positive multiple of the chunks "
                             f"{tuple(self.chunks)}")
        if self.voxel_m is not None and not self.voxel_m > 0:
            raise ValueError(f"voxel must be positive, got {self.voxel_m}")
        if self.order not in (0, 1, 2, 3):
            raise ValueError(f"order must be 0..3, got {self.order}")

    def register_params(self) -> RegisterParams:
        """The pairwise registration's parameters."""
        return RegisterParams(max_shift_m=self.max_shift_m, register_voxel_m=self.register_voxel_m,
                              trim_voxels=self.trim_voxels, fov=self.fov, min_ncc=self.min_ncc,
                              max_ambiguity=self.max_ambiguity)


@dataclass
class Plan:
    """The solved stitch: where each scan goes, its intensity offset, and the output grid (``plan.json``)."""

    corrections_m: list[list[float]]
    offsets: list[float]
    placed: list[bool]
    tiers: list[int]
    origin_m: list[float]
    voxel_m: float
    shape: list[int]
    blend_m: float
    levels: list[list[int]]
    placement: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read ``plan.json``."""
        return cls(**json.loads(path.read_text()))


def voxel_tiers(voxels_m: list[float], tolerance: float = 0.05) -> list[int]:
    """Tier of each voxel size: 0 for the finest, counting up; sizes within ``tolerance`` share a tier."""
    order = sorted(set(voxels_m))
    levels: list[float] = []
    for v in order:
        if not levels or v > levels[-1] * (1 + tolerance):
            levels.append(v)
    return [max(k for k, lv in enumerate(levels) if v >= lv * (1 - 1e-9)) for v in voxels_m]


class Stitch:
    """The units of a blockwise stitch over one work folder (see module docstring)."""

    def __init__(self, spec: StitchSpec) -> None:
        spec.check()
        self.spec = spec
        self.out = Path(spec.out)
        self.work = self.out / WORK_NAME
        self.folder = WorkFolder.attach(self.work)
        names: list[str] = []
        self.scans: list[Scan] = []
        for path in spec.inputs:
            scan = load_scan(path)
            if scan.name in names:
                scan.name = f"{scan.name}#{len(names)}"
            names.append(scan.name)
            self.scans.append(scan)
        self.pairs, self.refused_pairs = find_pairs(self.scans, spec.register_params())
        self._plan: Plan | None = None

    # ------------------------------------------------------------------ setup and bookkeeping
    @classmethod
    def prepare(cls, spec: StitchSpec) -> Stitch:
        """Create (or reopen, to resume) the work folder; a folder of another stitch or an older format is
        started afresh (:class:`~xnh_stream.state.work.WorkFolder`)."""
        self = cls(spec)
        WorkFolder(self.work, json.loads(json.dumps(asdict(spec))), WORK_FORMAT)
        (self.work / "pairs").mkdir(exist_ok=True)
        return self

    def is_done(self, stage: str, unit: int) -> bool:
        """Whether ``stage`` finished on ``unit``."""
        return self.folder.is_done(stage, unit)

    def _mark(self, stage: str, unit: int, info: dict | None = None) -> None:
        self.folder.mark(stage, str(unit), info or {})

    def pending(self, stage: str) -> list[int]:
        """Units that still need ``stage`` (``register``, ``fuse``, ``s1``, ``s2`` ...)."""
        if stage == "register":
            units = range(len(self.pairs))
        elif stage == "fuse":
            units = range(len(self.blocks(0)))
        else:
            units = range(len(self.blocks(int(stage[1:]))))
        return self.folder.pending(stage, units)

    @property
    def plan(self) -> Plan:
        """The solved plan (after :meth:`solve`)."""
        if self._plan is None:
            path = self.work / "plan.json"
            if not path.exists():
                raise RuntimeError(f"{self.work}: not solved yet")
            self._plan = Plan.load(path)
        return self._plan

    @property
    def solved(self) -> bool:
        """Whether :meth:`solve` has run."""
        return (self.work / "plan.json").exists()

    def level_stages(self) -> list[str]:
        """Stages of the coarser levels, ``s1`` ...."""
        return [f"s{i}" for i in range(1, len(self.plan.levels))]

    def blocks(self, level: int) -> list[Block]:
        """Block grid of output ``level``: ``block_shape`` halved per level (whole chunks of the level, whose
        chunks halve too), so a block of a coarser level reads at most one level-0 block's worth."""
        shape = tuple(self.plan.levels[level])
        if level == 0:
            return block_grid(shape, tuple(self.spec.block_shape))  # type: ignore[arg-type]
        chunks = [max(min(c, 16), c >> level) for c in self.spec.chunks]  # as create_volume(halve_chunks=True)
        half = tuple(max(c, (b >> level) // c * c) for b, c in zip(self.spec.block_shape, chunks))
        return block_grid(shape, half)  # type: ignore[arg-type]

    def _level(self, level: int):
        return zarr.open_array(str(self.out / VOLUME_NAME / f"s{level}"), mode="r+")

    # ------------------------------------------------------------------ stages
    def register(self, k: int) -> PairResult:
        """Stage 1: register pair ``k`` (of :attr:`pairs`)."""
        i, j = self.pairs[k]
        res = register_pair(self.scans[i], self.scans[j], i, j, self.spec.register_params())
        path = self.work / "pairs" / f"{k}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res.as_dict()))
        os.replace(tmp, path)
        self._mark("register", k, {"ok": res.ok})
        return res

    def pair_results(self) -> list[PairResult]:
        """Results of every registered pair."""
        return [PairResult(**json.loads((self.work / "pairs" / f"{k}.json").read_text()))
                for k in range(len(self.pairs)) if self.is_done("register", k)]

    def solve(self) -> Plan:
        """Stage 2: place the scans, match intensities, fix the output grid and create the output volume."""
        missing = self.pending("register")
        if missing:
            raise RuntimeError(f"{self.work}: pairs {missing[:10]} not registered yet")
        spec, scans = self.spec, self.scans
        n = len(scans)
        fine = min(s.voxel_m for s in scans)
        results = self.pair_results()
        biggest = max((r.voxels for r in results if r.ok), default=1)
        links = [Link(r.a, r.b, np.asarray(r.shift_m), max(r.ncc, 1e-3) * r.voxels / biggest,
                      nominal_overlap_m=nominal_overlap_m(scans[r.a], scans[r.b])) for r in results if r.ok]
        means = [(r.mean_a, r.mean_b) for r in results if r.ok]
        placement = solve_placement(n, links, spec.tolerance_m or fine)
        offsets = (solve_offsets(n, links, means, placement.groups) if spec.intensity == "offset" else np.zeros(n))
        placed = [spec.include_isolated or i not in placement.alone for i in range(n)]
        if not any(placed):
            raise InputError(spec.inputs[0] if n == 1 else self.out,
                             "no two scans overlap and register: nothing to stitch (see the registration results "
                             f"in {self.work / 'pairs'}; --include-isolated places every scan at its nominal place)")
        voxel = spec.voxel_m or fine
        lo = np.min([scans[i].bounds_m(placement.corrections_m[i])[0] for i in range(n) if placed[i]], axis=0)
        hi = np.max([scans[i].bounds_m(placement.corrections_m[i])[1] for i in range(n) if placed[i]], axis=0)
        # the output grid continues the grid of the finest scan of the largest group (no interpolation of it
        # when the output voxel is its voxel)
        members = placement.groups[0] if placement.groups else [i for i in range(n) if placed[i]]
        ref = min(members, key=lambda i: (scans[i].voxel_m, i))
        ref_origin = scans[ref].origin_m + placement.corrections_m[ref]
        origin = ref_origin + np.floor((lo + voxel / 2 - ref_origin) / voxel + 1e-6) * voxel
        shape = [int(np.ceil((h - (o - voxel / 2)) / voxel - 1e-6)) for o, h in zip(origin, hi)]
        blend = spec.blend_m or 0.25 * min(min(scans[i].shape) * scans[i].voxel_m for i in range(n) if placed[i])
        tiers = voxel_tiers([s.voxel_m for s in scans])
        arrays = create_volume(self.out / VOLUME_NAME, tuple(shape), voxel, tuple(spec.chunks),  # type: ignore[arg-type]
                               origin_m=tuple(origin.tolist()), name="stitched", halve_chunks=True)
        result = {"groups": placement.groups, "alone": placement.alone,
                  "links": [{"a": lk.a, "b": lk.b, "used": lk.used, "residual_m": lk.residual_m, "reason": lk.reason}
                            for lk in placement.links],
                  "max_residual_m": placement.max_residual_m, "rms_residual_m": placement.rms_residual_m}
        plan = Plan(placement.corrections_m.tolist(), [float(v) for v in offsets], placed, tiers,
                    origin.tolist(), voxel, shape, float(blend), [list(a.shape) for a in arrays], result)
        tmp = self.work / "plan.tmp.json"
        tmp.write_text(json.dumps(asdict(plan), indent=1))
        os.replace(tmp, self.work / "plan.json")  # last: its existence means solved
        self._plan = plan
        return plan

    def fuse(self, index: int) -> dict:
        """Stage 3: resample and blend every scan under output block ``index`` of level 0.

        Scans of one voxel size (a tier) are averaged with weights that rise smoothly over ``blend_m`` from
        their field of view's edge, so overlaps fade across without a seam. Tiers are then laid over each
        other, finest on top: a finer tier covers the coarser ones wherever it is more than ``edge_voxels``
        of its voxels inside its field of view, and fades into them across that band.
        """
        plan, spec = self.plan, self.spec
        b = self.blocks(0)[index]
        v = plan.voxel_m
        start = np.asarray(b.start)
        shape = tuple(int(e - s) for s, e in zip(b.start, b.stop))
        origin = np.asarray(plan.origin_m) + start * v
        lo_b, hi_b = origin - v / 2, origin + (np.asarray(shape) - 0.5) * v
        out = np.zeros(shape, np.float32)
        cover = np.zeros(shape, np.float32)
        used = []
        for tier in sorted(set(plan.tiers), reverse=True):  # coarsest first, finer tiers laid over it
            acc = wsum = alpha = None
            for i, scan in enumerate(self.scans):
                if not plan.placed[i] or plan.tiers[i] != tier:
                    continue
                shift = np.asarray(plan.corrections_m[i])
                lo, hi = scan.bounds_m(shift)
                if np.any(hi <= lo_b) or np.any(lo >= hi_b):
                    continue
                trim = spec.trim_voxels * scan.voxel_m
                d = fov_distance(scan, shift, origin, v, shape, spec.fov)
                if not np.any(d > 0):
                    continue
                img = sample_scan(scan, scan.level_for(v), shift, origin, v, shape, spec.order)
                if img is None:
                    continue
                if acc is None:
                    acc, wsum, alpha = (np.zeros(shape, np.float32) for _ in range(3))
                inside = d > 0
                np.maximum(alpha, _floored(blend_weight(d, spec.edge_voxels * scan.voxel_m, trim), inside), out=alpha)
                w = _floored(blend_weight(d, plan.blend_m, trim), inside)
                img += np.float32(plan.offsets[i])
                img *= w
                acc += img
                wsum += w
                used.append(i)
                del img, w, d
            if acc is None:
                continue
            np.divide(acc, wsum, out=acc, where=wsum > 0)
            # over: out = alpha * tier + (1 - alpha) * below, coverage likewise
            below = (1 - alpha) * cover
            cover_new = alpha + below
            np.divide(alpha * acc + below * out, cover_new, out=out, where=cover_new > 0)
            cover = cover_new
            del acc, wsum, alpha, below
        out[cover <= 0] = 0
        self._level(0)[b.slices()] = out
        info = {"scans": used}
        self._mark("fuse", index, info)
        return info

    def downsample(self, level: int, index: int) -> None:
        """Stage 4: block ``index`` of output ``level`` (>= 1) as the 2x block mean of the level before."""
        b = self.blocks(level)[index]
        src = np.asarray(self._level(level - 1)[tuple(slice(2 * a, 2 * e) for a, e in zip(b.start, b.stop))],
                         dtype=np.float32)
        nz, ny, nx = (e - a for a, e in zip(b.start, b.stop))
        self._level(level)[b.slices()] = src.reshape(nz, 2, ny, 2, nx, 2).mean(axis=(1, 3, 5), dtype=np.float32)
        self._mark(f"s{level}", index)

    def finished(self) -> bool:
        """Whether every stage is done."""
        return self.solved and not self.pending("fuse") and not any(self.pending(s) for s in self.level_stages())


#: Weight of a voxel inside a field of view but within its trimmed edge: it counts only where no voxel of
#: another scan further inside covers the place (the outer slices of the first and last scan were blank).
EDGE_FLOOR = np.float32(1e-4)


def _floored(weight: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``weight``, at least :data:`EDGE_FLOOR` inside the field of view and 0 outside it."""
    return np.where(inside, np.maximum(weight, EDGE_FLOOR), np.float32(0))


def _stitch_of(payload: dict) -> Stitch:
    return Stitch(StitchSpec(**payload))


def register_task(k: int, payload: dict) -> bool:
    """Register pair ``k`` of the stitch ``payload`` (its spec as a dict); whether it was accepted."""
    return worker_of(_stitch_of, payload).register(k).ok


def fuse_task(index: int, payload: dict) -> int:
    """Fuse output block ``index`` of level 0."""
    worker_of(_stitch_of, payload).fuse(index)
    return index


def downsample_task(index: int, payload: dict, level: int) -> int:
    """Build block ``index`` of output ``level`` from the level before."""
    worker_of(_stitch_of, payload).downsample(level, index)
    return index


def run_stitch(spec: StitchSpec, progress: Progress | None = None, executor: Executor | None = None) -> Stitch:
    """Run (or resume) every stage: the pairs and the blocks as units on ``executor`` (default: here, one after
    the other; ``actors.executor.RayExecutor``: Ray tasks), the placement solved here, each level after the one
    before.

    Parameters
    ----------
    spec : StitchSpec
    progress : callable, optional
        Called as ``progress(stage, done, total)`` after each unit.
    executor : Executor, optional
        Where the units run.

    Returns
    -------
    Stitch
        With ``timing_s`` per stage in ``stitch.timing``.
    """
    executor = executor or SerialExecutor()
    st = Stitch.prepare(spec)
    payload = asdict(st.spec)
    worker_of(_stitch_of, payload, st)  # this process's calls use the prepared one
    st.timing = {}  # type: ignore[attr-defined]
    t = time.perf_counter()
    run_units(executor, "register", register_task, st.pending("register"), payload, progress=progress)
    st.timing["register"] = time.perf_counter() - t  # type: ignore[attr-defined]
    t = time.perf_counter()
    if not st.solved:
        st.solve()
    st.timing["solve"] = time.perf_counter() - t  # type: ignore[attr-defined]
    for stage in ["fuse", *st.level_stages()]:
        t = time.perf_counter()
        if stage == "fuse":
            run_units(executor, stage, fuse_task, st.pending(stage), payload, progress=progress)
        else:
            run_units(executor, stage, downsample_task, st.pending(stage), payload, int(stage[1:]), progress=progress)
        st.timing[stage] = time.perf_counter() - t  # type: ignore[attr-defined]
    return st
