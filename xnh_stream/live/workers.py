"""The three kinds of worker of the live stream, as plain classes: phase retrieval of an angle, a slab of the
live volume, and the full-resolution orthogonal slices.

The live driver (:mod:`xnh_stream.live.driver`) reaches them through a :class:`~xnh_stream.live.runtime.
LiveRuntime`: in this process (:class:`~xnh_stream.live.runtime.InProcessRuntime`) they are these objects;
on Ray (``actors/stream.py``) they are actors made of these classes, placed and restarted by Ray.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..chain.accumulate import ProgressiveVolume
from ..chain.assembler import AngleWork, ProjectionResult
from ..chain.steps import AngleProcessor
from ..physics.align import HeldShift, unbin_2d
from ..physics.fbp import filter_projection
from ..physics.geometry import ScanGeometry
from ..physics.slices import OrthoSlices
from ..physics.xp import bin_2d, get_array_module, to_numpy
from .views import SlabView, slab_views

if TYPE_CHECKING:
    from ..config import ProcessConfig

__all__ = ["COARSE_BINNING", "PhaseWorker", "ReconShard", "SliceKeeper", "coarse_possible", "to_host"]

#: Final work sent coarse (the stream is behind) is computed on its frames binned this many times.
COARSE_BINNING = 2


def coarse_possible(frame_shape: tuple[int, int]) -> bool:
    """Whether frames of this shape can be worked on binned :data:`COARSE_BINNING` times (8 pixels a side)."""
    return min(frame_shape) >= 8 * COARSE_BINNING


def to_host(a: Any) -> np.ndarray:
    """``a`` (NumPy or CuPy) as a float32 NumPy array."""
    return np.asarray(to_numpy(a), dtype=np.float32)


class PhaseWorker:
    """Phase retrieval of one angle: a Paganin preview or the final projection (``phase.method``).

    Parameters
    ----------
    frame_shape : (int, int)
        Rows and columns of the frames.
    delta_beta : float
        The sample's delta/beta.
    config : ProcessConfig
        Processing options (backend, CTF, the stream's phase padding).
    binning : int
        The live volume's binning (:class:`ProjectionResult` carries the projection binned by it).
    """

    def __init__(self, frame_shape: tuple[int, int], delta_beta: float, config: ProcessConfig,
                 binning: int = 1) -> None:
        self.shape, self.delta_beta, self.binning = tuple(frame_shape), delta_beta, int(binning)
        self.config = config
        self._procs: dict[int, tuple[ScanGeometry, AngleProcessor]] = {}  # by the binning it works at
        self._incarnation = uuid.uuid4().hex  # a restarted worker has a new one (counted as a restart)

    def incarnation(self) -> str:
        """Changes when the runtime restarts the worker (its tasks are retried there; the stream only counts it)."""
        return self._incarnation

    def _processor(self, geometry: ScanGeometry, b: int = 1) -> AngleProcessor:
        """The processor of ``geometry`` at binning ``b`` (the frames binned: a detector pixel ``b`` times
        larger)."""
        known = self._procs.get(b)
        if known is None or known[0] != geometry:
            binned = geometry if b == 1 else ScanGeometry(tuple(replace(d, pixel_m=d.pixel_m * b)
                                                                 for d in geometry.distances))
            known = geometry, AngleProcessor(binned, (self.shape[0] // b, self.shape[1] // b), self.delta_beta,
                                             self.config, xp=get_array_module(self.config.compute.backend),
                                             pad=self.config.stream.phase_pad)
            self._procs[b] = known
        return known[1]

    def prepare(self, geometry: ScanGeometry) -> None:
        """Every distance is known: build the CTF, at full resolution and for coarse work, and run each once
        now (:meth:`AngleProcessor.prepare_ctf`), before the first final work comes."""
        for b in (1, COARSE_BINNING) if coarse_possible(self.shape) else (1,):
            self._processor(geometry, b).prepare_ctf()

    def _coarse(self, work: AngleWork, models: list[Any]) -> Any:
        """Final work on its frames binned :data:`COARSE_BINNING` times, brought back to the frames' grid in
        the full-resolution voxel units (the live stream is behind: a quarter of the CTF's cost)."""
        b = COARSE_BINNING
        proc = self._processor(work.geometry, b)
        proc.models = [None if m is None else HeldShift(tuple(float(v) / b for v in m(work.theta_deg)))
                       for m in models]
        xp = proc.xp
        out = proc.retrieve({k: bin_2d(xp.asarray(f, dtype=xp.float32), b) for k, f in work.frames.items()},
                            work.theta_deg)
        return unbin_2d(out * b, b, self.shape, xp=xp)  # p = -phi / (k voxel): b binned voxels a voxel

    def project(self, work: AngleWork, models: list[Any]) -> ProjectionResult:
        """The projection of ``work`` binned for the live volume, and for final work the preview it replaces
        (as kept on disk, or recomputed exactly: same frame, angle and shift); then the same two at full
        resolution (the live slices)."""
        proc = self._processor(work.geometry)
        models = models if len(models) == len(work.geometry.distances) else [None] * len(work.geometry.distances)
        proc.models = models
        if work.kind == "preview":
            ((k, frame),) = work.frames.items()
            out, previous = proc.preview(k, frame, work.theta_deg, work.preview_shift_yx), None
        else:
            out = self._coarse(work, models) if work.coarse > 1 else proc.retrieve(work.frames, work.theta_deg)
            k = work.preview_distance
            previous = work.preview
            if previous is None and k is not None:
                previous = proc.preview(k, work.frames[k], work.preview_theta_deg, work.preview_shift_yx)
        out = to_host(out)
        previous = None if previous is None else to_host(previous)
        return ProjectionResult.of(out, previous, self.binning)


class ReconShard:
    """A slab of rows of the live volume (two half-volumes for FSC).

    Parameters
    ----------
    frame_shape : (int, int)
        Rows and columns of the (binned) live projections.
    rows : (int, int)
        The slab's first row and the row after its last.
    cor : float
        Rotation axis in (binned) columns.
    window, padding : str
        FBP filter window and padding.
    batch, max_wait_s :
        Angles back-projected together, and the longest a projection waits for its batch.
    backend : str
        ``numpy`` or ``cupy``.
    """

    def __init__(self, frame_shape: tuple[int, int], rows: tuple[int, int], cor: float, window: str,
                 padding: str, batch: int = 1, max_wait_s: float = 1.0, backend: str = "numpy") -> None:
        ny, nx = frame_shape
        self.rows = slice(*rows)
        self.vol = ProgressiveVolume(ny, nx, cor=cor, window=window, padding=padding, rows=self.rows,
                                     xp=get_array_module(backend), batch=batch, max_wait_s=max_wait_s)
        self._incarnation = uuid.uuid4().hex  # a restarted shard (empty volume) has a new one
        self._changes = 0  # projections back-projected: views are recomputed only when it moved
        self.cpu_s = {"add": 0.0, "views": 0.0}  # process CPU seconds spent in each (the refresh cost)
        self._views: tuple[tuple[Any, ...], SlabView] | None = None  # (what was asked, the views)

    def incarnation(self) -> str:
        """Changes when the runtime restarts the shard: its volume is then empty and must be replayed."""
        return self._incarnation

    def add(self, index: int, theta_rad: float, result: ProjectionResult, final: bool,
            previous_theta_rad: float | None = None) -> int:
        """Back-project one projection (previews are not kept: finals carry the preview they replace)."""
        t0 = time.process_time()
        try:
            return self._add(index, theta_rad, result, final, previous_theta_rad)
        finally:
            self.cpu_s["add"] += time.process_time() - t0

    def _add(self, index: int, theta_rad: float, result: ProjectionResult, final: bool,
             previous_theta_rad: float | None) -> int:
        projection, previous = result.binned, result.binned_previous
        state = self.vol.state(index)
        if state == "final":
            return self.vol.n_final  # a stale preview, or a final already replayed/retried: nothing to do
        if final and state is None:  # the final overtook its preview, which will be dropped when it comes
            self.vol.add(index, theta_rad, projection, final=True)
        else:
            self.vol.add(index, theta_rad, projection, final=final, previous=previous,
                         previous_theta_rad=previous_theta_rad)
        self.vol.forget_preview(index)
        self._changes += 1
        return self.vol.n_final

    def volume(self) -> tuple[int, np.ndarray]:
        """First row and the slab's current volume."""
        return self.rows.start, to_host(self.vol.volume())

    def views(self, n_rows: int, fsc_bin: int, region_px: int, binned: bool = True,
              planes: bool = True) -> SlabView:
        """Small pieces of the slab for the running FSC and the live page (:func:`slab_views`), taken from
        the sums (no copy of the slab) and only when projections arrived since the last call; the binned
        halves (a pass over the whole slab) only when ``binned``, the slab's rows of the central slices only
        when ``planes``."""
        if min(self.vol.acc.counts) < 1:  # nothing in one half yet (a new or rebuilt slab)
            return {"r0": self.rows.start, "empty": True}
        key = (self._changes, n_rows, fsc_bin, region_px, binned, planes)
        if self._views is None or self._views[0] != key:
            t0 = time.process_time()
            self.vol.acc.flush()  # the batch waiting: back-projection, not refresh
            t1 = time.process_time()
            self._views = key, slab_views(self.vol.acc, self.rows.start, n_rows, fsc_bin, region_px, binned,
                                          planes)
            self.cpu_s["add"] += t1 - t0
            self.cpu_s["views"] += time.process_time() - t1
        return self._views[1]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds spent back-projecting (``add``, including batches flushed by a read) and making the
        live views (``views``)."""
        return dict(self.cpu_s)


class SliceKeeper:
    """The three full-resolution orthogonal slices through a point of the volume (RECAST3D-style), updated
    per angle in O(N^2) (:class:`~xnh_stream.physics.slices.OrthoSlices`); a final projection enters as its
    difference from the preview it replaces, so each angle is back-projected once."""

    def __init__(self, frame_shape: tuple[int, int], cor: float, window: str, padding: str) -> None:
        ny, nx = frame_shape
        self.window, self.padding = window, padding
        self.slices = OrthoSlices(ny, nx, cor=cor, window=window, padding=padding)
        self.state: dict[int, str] = {}
        self._incarnation = uuid.uuid4().hex

    def incarnation(self) -> str:
        """Changes when the runtime restarts the keeper: its slices are then empty and must be replayed."""
        return self._incarnation

    def _filtered(self, projection: np.ndarray) -> np.ndarray:
        return filter_projection(projection, self.window, padding=self.padding)

    def add(self, index: int, theta_rad: float, result: ProjectionResult, final: bool,
            previous_theta_rad: float | None = None) -> int:
        """Take one angle's projection (a final replaces that angle's preview)."""
        projection, previous = result.full, result.full_previous
        state = self.state.get(index)
        if state == "final" or (state == "preview" and not final):
            return len(self.state)
        if final and state == "preview" and previous is not None:
            if previous_theta_rad is None or previous_theta_rad == theta_rad:
                self.slices.add_filtered(self._filtered(projection - previous), theta_rad, count=False)
            else:
                self.slices.add_filtered(self._filtered(-previous), previous_theta_rad, count=False)
                self.slices.add_filtered(self._filtered(projection), theta_rad, count=False)
        else:
            self.slices.add_filtered(self._filtered(projection), theta_rad)
        self.state[index] = "final" if final else "preview"
        return len(self.state)

    def views(self) -> dict[str, np.ndarray]:
        """The slices as the live page names them: ``xy`` (through z0), ``xz`` (y0), ``yz`` (x0)."""
        names = {"z": "xy", "y": "xz", "x": "yz"}
        return {names[a]: img for a, img in self.slices.slices().items()}
