"""The live stream on Ray: a driver (:class:`StreamDriver`) and two thin actors around the chain's core.

Data flow (``docs/contracts.md``, "Data flow (live)")::

    source.poll() --> StreamDriver: journal + ScanAssembler (flat-field, DistanceStore on disk)
        --> PhaseWorker pool (Paganin preview / multi-distance CTF), bounded in flight
        --> ReconShard actors (a slab of rows each, even/odd halves; a preview is replaced by its final)
    scan complete --> the final pass (xnh_stream.chain.final.FinalChain) on Ray tasks --> OUT/volume.ome.zarr,
                      report.json --> "scan_complete" event to the journal and to subscribers

The stream and the batch command run the same chain: the assembler, the per-angle steps and the final
pass are :mod:`xnh_stream.chain`; only where frames come from (a folder being written) and when the steps
run (as frames land) differ. Work items travel without pixels and are loaded from the store just before
they are dispatched, so memory stays bounded, after a restart too.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray

from xnh_stream.chain.axis import axis_rows, decide_rotation_axis
from xnh_stream.chain.assembler import AngleWork, ProjectionResult, ScanAssembler, discard_stores
from xnh_stream.chain.final import ChainLayout, ChainResult, FinalChain, delta_beta_of, journal_key
from xnh_stream.chain.layout import plural, step_unit
from xnh_stream.chain.report import JOURNAL_NAME, Completion, DistanceState, StreamProgress
from xnh_stream.chain.scan import DistanceVote, ScanIndex, left_out, left_out_alert
from xnh_stream.chain.steps import AngleProcessor, read_frame
from xnh_stream.chain.warmup import compile_kernels
from xnh_stream.config import ProcessConfig
from xnh_stream.ingest.watch import FolderWatcher, QuarantineRecord
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, RETURN, one_open_per_file
from xnh_stream.io.sources import FrameRecord
from xnh_stream.live.views import merge_views, slab_views, slice_info
from xnh_stream.physics.xp import binning_for
from xnh_stream.quality.alerts import Alert, CallbackSink, default_router
from xnh_stream.quality.monitor import QualityMonitor
from xnh_stream.state.journal import PROCESSED, QUARANTINED, RECEIVED, FrameJournal
from xnh_stream.state.journal import FrameRecord as JournalEntry
from xnh_stream.state.store import DistanceStore

from .executor import RayExecutor

log = logging.getLogger(__name__)

#: Columns of the live volume when ``live_binning`` is 0 (auto): larger frames are binned to about this.
LIVE_COLUMNS = 512

#: An actor that dies is restarted this many times, then the stream fails loudly.
MAX_RESTARTS = 3
#: The live volume's shards run at this niceness: where the cores are contended, phase retrieval, the live slices
#: and the driver (the path a frame takes to the slices) go first; the shards' batches catch up in the gaps.
SHARD_NICENESS = 5
#: A second thread per actor for ``incarnation()``: the driver asks every loop, and in the default group the
#: question would wait behind the actor's queued work (stalling the driver's loop on a busy worker).
CONTROL = {"concurrency_groups": {"control": 1}}


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **CONTROL)
class PhaseWorker:
    """Phase retrieval of one angle: a Paganin preview or the multi-distance CTF projection."""

    def __init__(self, frame_shape: tuple[int, int], delta_beta: float, config: dict[str, Any],
                 binning: int = 1) -> None:
        self.shape, self.delta_beta, self.binning = tuple(frame_shape), delta_beta, int(binning)
        self.config = ProcessConfig.from_mapping(config)
        self._proc: AngleProcessor | None = None
        self._incarnation = uuid.uuid4().hex  # a restarted worker has a new one (counted as a restart)

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor (its tasks are retried by Ray; the stream only counts it)."""
        return self._incarnation

    def _processor(self, geometry: Any) -> AngleProcessor:
        if self._proc is None or self._proc.geometry != geometry:
            from xnh_stream.physics.xp import get_array_module  # noqa: PLC0415

            self._proc = AngleProcessor(geometry, self.shape, self.delta_beta, self.config,
                                        xp=get_array_module(self.config.compute.backend),
                                        pad=self.config.stream.phase_pad)
        return self._proc

    def prepare(self, geometry: Any) -> None:
        """Every distance is known: build the CTF and run it once now (:meth:`AngleProcessor.prepare_ctf`),
        before the first final work comes."""
        self._processor(geometry).prepare_ctf()

    def project(self, work: AngleWork, models: list[Any]) -> ProjectionResult:
        """The projection of ``work`` binned for the live volume, and for final work the preview it replaces
        (as kept on disk, or recomputed exactly: same frame, angle and shift); then the same two at full
        resolution (the live slices)."""
        proc = self._processor(work.geometry)
        proc.models = models if len(models) == len(work.geometry.distances) else [None] * len(work.geometry.distances)
        if work.kind == "preview":
            ((k, frame),) = work.frames.items()
            out, previous = proc.preview(k, frame, work.theta_deg, work.preview_shift_yx), None
        else:
            out = proc.ctf(work.frames, work.theta_deg)
            k = work.preview_distance
            previous = work.preview
            if previous is None and k is not None:
                previous = proc.preview(k, work.frames[k], work.preview_theta_deg, work.preview_shift_yx)
        out = _to_host(out)
        previous = None if previous is None else _to_host(previous)
        return ProjectionResult.of(out, previous, self.binning)


def _to_host(a: Any) -> np.ndarray:
    from xnh_stream.physics.xp import to_numpy  # noqa: PLC0415

    return np.asarray(to_numpy(a), dtype=np.float32)


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **CONTROL)
class ReconShard:
    """A slab of rows of the live volume (two half-volumes for FSC)."""

    def __init__(self, frame_shape: tuple[int, int], rows: tuple[int, int], cor: float, window: str,
                 padding: str, batch: int = 1, max_wait_s: float = 1.0, backend: str = "numpy") -> None:
        from xnh_stream.chain.accumulate import ProgressiveVolume  # noqa: PLC0415
        from xnh_stream.physics.xp import get_array_module  # noqa: PLC0415

        ny, nx = frame_shape
        self.rows = slice(*rows)
        self.vol = ProgressiveVolume(ny, nx, cor=cor, window=window, padding=padding, rows=self.rows,
                                     xp=get_array_module(backend), batch=batch, max_wait_s=max_wait_s)
        self._incarnation = uuid.uuid4().hex  # a restarted actor (empty volume) has a new one
        self._changes = 0  # projections back-projected: views are recomputed only when it moved
        self.cpu_s = {"add": 0.0, "views": 0.0}  # process CPU seconds spent in each (the refresh cost)
        self._views: tuple[tuple[Any, ...], dict[str, Any]] | None = None  # (what was asked, the views)
        os.nice(SHARD_NICENESS)

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor: its volume is then empty and must be replayed."""
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
        return self.rows.start, _to_host(self.vol.volume())

    def views(self, n_rows: int, fsc_bin: int, region_px: int, binned: bool = True,
              planes: bool = True) -> dict[str, Any]:
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

    @ray.method(concurrency_group="control")
    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds spent back-projecting (``add``, including batches flushed by a read) and making the
        live views (``views``)."""
        return dict(self.cpu_s)


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **CONTROL)
class SliceKeeper:
    """The three full-resolution orthogonal slices through a point of the volume (RECAST3D-style), updated
    per angle in O(N^2) (:class:`~xnh_stream.physics.slices.OrthoSlices`); a final projection enters as its
    difference from the preview it replaces, so each angle is back-projected once."""

    def __init__(self, frame_shape: tuple[int, int], cor: float, window: str, padding: str) -> None:
        from xnh_stream.physics.slices import OrthoSlices  # noqa: PLC0415

        ny, nx = frame_shape
        self.window, self.padding = window, padding
        self.slices = OrthoSlices(ny, nx, cor=cor, window=window, padding=padding)
        self.state: dict[int, str] = {}
        self._incarnation = uuid.uuid4().hex

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor: its slices are then empty and must be replayed."""
        return self._incarnation

    def _filtered(self, projection: np.ndarray) -> np.ndarray:
        from xnh_stream.physics.fbp import filter_projection  # noqa: PLC0415

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

    @ray.method(concurrency_group="control")
    def views(self) -> dict[str, np.ndarray]:
        """The slices as the live page names them: ``xy`` (through z0), ``xz`` (y0), ``yz`` (x0)."""
        names = {"z": "xy", "y": "xz", "x": "yz"}
        return {names[a]: img for a, img in self.slices.slices().items()}


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------
class FrameSource(Protocol):
    """Where frame records come from (a folder watcher; a list in tests)."""

    def poll(self) -> list[FrameRecord]:
        """New complete frames (records; pixels are read by the driver); each frame once."""

    def completion(self) -> Completion | None:
        """Why the scan counts as complete now, or None while it is not."""


class WatcherSource:
    """Frames of a scan folder as a :class:`FolderWatcher` finds them, and the end-of-scan rule.

    The scan is complete, whichever comes first, when

    * every one of ``n_distances`` distances is complete (its stated frame count reached, its files
      finished with ``end_time``), and no file is still being written; or
    * nothing new arrived for ``quiet_s`` and no file is still being written (a file that stays incomplete
      is set aside by the watcher after its ``stall_s``): the scan completes with what it has, and the
      distances it lacks are named.

    Return projections are not needed. Parameters: the watcher, the distances the scan has, the idle time.
    """

    def __init__(self, watcher: FolderWatcher, n_distances: int = 4, quiet_s: float = 60.0) -> None:
        self.watcher, self.n_distances, self.quiet_s = watcher, n_distances, quiet_s
        self._last = time.monotonic()
        self._seen = False

    def poll(self) -> list[FrameRecord]:
        """New frames."""
        records = self.watcher.poll()
        if records:
            self._last = time.monotonic()
            self._seen = True
        return records

    def drain_quarantine(self) -> list[QuarantineRecord]:
        """Files the watcher set aside since the last call."""
        return self.watcher.drain_quarantine()

    def drain_duplicates(self) -> list[tuple[FrameRecord, str]]:
        """Frames of copied files since the last call."""
        return self.watcher.drain_duplicates()

    def completion(self) -> Completion | None:
        """See the class docstring."""
        if self.watcher.pending_files():
            return None
        progress = self.watcher.distance_progress()
        done = [p for p in progress.values() if p.complete]
        if len(done) >= self.n_distances:
            return Completion(f"all {self.n_distances} distances complete (stated frame counts or end_time)")
        if self._seen and time.monotonic() - self._last >= self.quiet_s:
            missing = [f"distance {p.name}: {p.received} frames, incomplete" for p in progress.values()
                       if not p.complete]
            if len(progress) < self.n_distances:
                missing.append(f"{self.n_distances - len(progress)} of {self.n_distances} distances never "
                               "arrived")
            return Completion(f"no new frame for {self.quiet_s:g} s", missing)
        return None


# ----------------------------------------------------------------------------------------------------------
# Instrumentation (metrics)
# ----------------------------------------------------------------------------------------------------------
class _Instruments:
    """Stage latencies, restarts, store size and cluster resources of one stream, for the progress.

    Latency samples accumulate between two progress reports and are handed out once; the slow figures
    (store size on disk, cluster resources) are refreshed every ``slow_s``.
    """

    def __init__(self, slow_s: float = 5.0) -> None:
        self.samples: dict[str, list[float]] = {}
        self.landed_preview: dict[str, float] = {}
        self.landed_final: dict[str, float] = {}
        self.restarts = {"phase_worker": 0, "recon_shard": 0, "slice_keeper": 0}
        self.slow_s, self._slow_at = slow_s, -float("inf")
        self.cluster: dict[str, float] = {}
        self.store_bytes: int | None = None

    def sample(self, stage: str, seconds: float) -> None:
        self.samples.setdefault(stage, []).append(seconds)

    def landed(self, frame_id: str, t: float) -> None:
        self.landed_preview.setdefault(frame_id, t)
        self.landed_final.setdefault(frame_id, t)

    def booked(self, work: AngleWork, t: float) -> None:
        """``work`` is in every shard: landing-to-preview / landing-to-final latency of its frames."""
        if work.kind == "preview":
            t0 = [self.landed_preview.pop(f) for f in work.frame_ids if f in self.landed_preview]
            if t0:
                self.sample("landing_to_preview", t - min(t0))
        else:
            t0 = [self.landed_final.pop(f) for f in work.frame_ids if f in self.landed_final]
            for f in work.frame_ids:
                self.landed_preview.pop(f, None)
            if t0:
                self.sample("landing_to_final", t - max(t0))

    def refresh(self, store: DistanceStore | None) -> None:
        now = time.monotonic()
        if now - self._slow_at >= self.slow_s:
            self._slow_at = now
            total, avail = ray.cluster_resources(), ray.available_resources()
            self.cluster = {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                            "cpus_total": total.get("CPU", 0.0), "cpus_available": avail.get("CPU", 0.0),
                            "object_store_total_bytes": total.get("object_store_memory", 0.0),
                            "object_store_available_bytes": avail.get("object_store_memory", 0.0)}
            if store is not None:
                self.store_bytes = store.nbytes_on_disk()

    def take_samples(self) -> dict[str, list[float]]:
        samples, self.samples = self.samples, {}
        return samples


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------
@dataclass
class StreamOptions:
    """How the stream runs (Ray resources, pacing).

    Attributes
    ----------
    n_distances : int
        Distances of the scan.
    n_workers, n_shards : int
        Phase workers and reconstruction shards (actors).
    max_in_flight : int, optional
        Phase tasks in flight (backpressure); default two per phase worker. More only adds latency: at 512^2
        on 2 cores, 4 and 8 in flight gave 18.7 and 17.7 frames/s with a landing-to-final p50 of 1.4 and
        1.9 s (``bench/bench_stream.py``).
    poll_interval_s : float
        Wait between polls when nothing arrived (cut short when a phase task or back-projection finishes).
    restart_check_s : float
        How often the actors are asked whether Ray restarted them (a round trip to each).
    progress_every_s : float
        Progress (metrics, live page) is reported after every poll that brought frames or finished work,
        and at least this often while idle.
    timeout_s : float, optional
        Stop waiting for the end of the scan after this long (reported incomplete; no final volume).
    final_pass : bool
        Run the final pass at completion.
    quality_every_s : float, optional
        How often the running FSC and the live images are refreshed from the shards; None takes the
        configuration's ``stream.quality_every_s``.
    live_slices : bool
        Keep the three orthogonal slices through the volume's centre at full resolution, updated per angle
        (a :class:`SliceKeeper`), for the live page.
    layout : ChainLayout
        How the final pass cuts its work.
    live_result_max_bytes : int
        The live volume is gathered from the shards into :class:`StreamResult` only up to this size (a
        full-resolution live volume of a real scan stays in the shards; the final pass writes the volume).
    """

    n_distances: int = 4
    n_workers: int = 2
    n_shards: int = 2
    max_in_flight: int | None = None
    poll_interval_s: float = 0.1
    restart_check_s: float = 1.0
    progress_every_s: float = 0.5
    timeout_s: float | None = None
    final_pass: bool = True
    quality_every_s: float | None = None
    live_slices: bool = True
    layout: ChainLayout = field(default_factory=ChainLayout)
    live_result_max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.max_in_flight is None:
            self.max_in_flight = 2 * max(1, self.n_workers)


@dataclass
class _ViewsAsked:
    """Live views asked of the actors, not yet taken."""

    refs: list[Any]  # each shard's views
    slices: Any | None  # the slice keeper's, if there is one
    seen: int  # angles seen when asked


@dataclass
class StreamResult:
    """What :meth:`StreamDriver.run` produced."""

    final: ChainResult | None
    live_volume: np.ndarray | None  # None when larger than StreamOptions.live_result_max_bytes
    counts: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    live_binning: int = 1  # the live volume's voxel is this many final voxels
    completion: Completion | None = None
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # the full-resolution live slices at the end
    shard_cpu_s: dict[str, float] = field(default_factory=dict)  # live shards' CPU: "add" (back-projection), "views"


class StreamDriver:
    """Process a running scan as its frames arrive; at completion run the final pass.

    Parameters
    ----------
    source : FrameSource
        Gives the records of complete frames and says when the scan is complete.
    scan_folder : Path
        The scan's folder (the final pass reads it).
    out : Path
        Output folder: ``journal.sqlite``, ``store/`` (flat-fielded frames), ``volume.ome.zarr``,
        ``report.json``.
    config : ProcessConfig
        Processing options.
    options : StreamOptions, optional
        Actors, pacing, final pass.
    on_progress : callable, optional
        Called with a :class:`StreamProgress` after each poll.
    subscribers : callables
        Called with the ``scan_complete`` event (segmentation subscribes here).
    on_result : callable, optional
        Called with each work item once its projection is in every shard (latency measurements).
    live_page : LivePage, optional
        The live page to publish progress, quality and images to.
    """

    def __init__(self, source: FrameSource, scan_folder: str | Path, out: str | Path, config: ProcessConfig,
                 options: StreamOptions | None = None,
                 on_progress: Callable[[StreamProgress], None] | None = None,
                 subscribers: Iterable[Callable[[dict[str, Any]], None]] = (),
                 on_result: Callable[[AngleWork], None] | None = None, live_page: Any | None = None) -> None:
        self.source, self.scan_folder, self.out = source, Path(scan_folder), Path(out)
        self.config, self.opt = config, options or StreamOptions()
        self._quality_every_s = (config.stream.quality_every_s if self.opt.quality_every_s is None
                                 else self.opt.quality_every_s)
        self.on_progress, self.subscribers, self.on_result, self.live_page = (
            on_progress, tuple(subscribers), on_result, live_page)
        self.out.mkdir(parents=True, exist_ok=True)
        self.journal = FrameJournal(self.out / JOURNAL_NAME)
        # After a crash: frames the journal knows are taken back (projections from the store, without
        # reading their files) but neither journaled nor counted again.
        self.known = self.journal.known_ids()
        if self.known:
            log.info("resuming: the journal already knows %d frames", len(self.known))
        self.assembler: ScanAssembler | None = None
        self.workers: list[Any] = []
        self.shards: list[Any] = []
        self.in_flight: dict[Any, tuple[AngleWork, list[Any] | None]] = {}
        self.adding: deque[tuple[AngleWork, list[Any], float]] = deque()
        self.incarnations: dict[Any, str] = {}
        self.delta_beta = config.sample.delta_beta
        self.live_binning = 1
        self._binned_fsc_angles = 0  # angles seen at the last binned running FSC
        self.cor_known = config.fbp.cor is not None
        self.rotation_axis: dict[str, Any] | None = None  # the axis the live volume is built around (live page)
        self.instruments = _Instruments()
        self.dispatched_at: dict[Any, float] = {}
        self.last_final: tuple[float, Any] | None = None  # angle and result ref of the latest CTF projection
        self.slicer: Any = None
        self.final_slices: dict[str, np.ndarray] = {}
        self.quality_at = -float("inf")
        self._restarts_at = -float("inf")
        self._prepared = False  # the phase workers were asked to build the CTF filter
        self._asked: _ViewsAsked | None = None  # live views asked for and not yet taken
        self._n_booked = 0  # work items in every live actor
        self._reported_at = -float("inf")  # the last progress report
        self._n_dispatched = 0
        self.monitor = self._make_monitor()
        # Which distances make the scan, by the final pass's majority rule as they arrive (never "the first
        # one seen"): the live chain takes the frames of the distances trusted now, holds the others' records,
        # and starts again when a distance it holds outvotes those it took. Frames are booked in the journal
        # only once the vote is decided (every distance arrived), so no frame is processed that the rule then
        # sets aside: until then their marks wait in _early, as (frame id, state, stage, reason) by distance.
        self.vote = DistanceVote(self.scan_folder, self.opt.n_distances)
        self._live: set[float] = set()  # distance keys fed to the assembler
        self._verdict: dict[float, str] | None = None  # distance key -> why set aside, once decided
        self._early: dict[float, list[tuple[str, str, str, str | None]]] = {}

    def _make_monitor(self) -> QualityMonitor:
        """The quality monitor, its alerts journaled."""
        sink = CallbackSink(lambda a: self.journal.emit("alert", a.as_dict(), key=f"alert:{a.name}:{a.severity}"))
        return QualityMonitor(self.config, str(self.scan_folder.resolve()), router=default_router(
            self.config, extra=[sink], generator_url=getattr(self.live_page, "url", "")))

    # ------------------------------------------------------------------ set-up
    def _start(self, rec: FrameRecord) -> None:
        ny, nx = rec.frame_shape
        cfg = self.config
        try:
            store = DistanceStore(self.out / "store", (ny, nx))
        except ValueError as exc:  # a store of an earlier run's live chain on other distances: read again
            log.info("live store set aside (%s): its frames are read again", exc)
            discard_stores(self.out / "store")
            store = DistanceStore(self.out / "store", (ny, nx))
        self.assembler = ScanAssembler(self.opt.n_distances, (ny, nx), store,
                                       delta_beta_align=cfg.alignment.delta_beta, align_bin_px=max(1, min(ny, nx) // 256),
                                       pca_components=cfg.flatfield.pca_components,
                                       align_pad=cfg.alignment.paganin_pad)
        if self.delta_beta is None:
            self.delta_beta = delta_beta_of(cfg.sample.formula, cfg.sample.density, rec.geometry.energy_kev)
        self.live_binning = cfg.stream.live_binning or binning_for((ny, nx), LIVE_COLUMNS)
        gpu = {"num_gpus": 0.5} if cfg.compute.backend == "cupy" else {}
        self.workers = [PhaseWorker.options(**gpu).remote((ny, nx), self.delta_beta, cfg.to_dict(), self.live_binning)
                        for _ in range(self.opt.n_workers)]
        cor = cfg.fbp.cor if cfg.fbp.cor is not None else (nx - 1) / 2
        self.rotation_axis = {"px": cor, "columns": nx, "source": "given (fbp.cor)" if cfg.fbp.cor is not None else
                              "the detector centre until the reference distance has come round"}
        self.shards = self._make_shards(cor)
        self.slicer = self._make_slicer(cor) if self.opt.live_slices else None

    def _make_slicer(self, cor: float) -> Any:
        return SliceKeeper.remote(self.assembler.shape, cor, self.config.fbp.window, self.config.fbp.padding)

    def _live_targets(self) -> list[Any]:
        """Every actor a projection goes to: the shards and the slice keeper."""
        return [*self.shards, *([self.slicer] if self.slicer is not None else [])]

    def _make_shards(self, cor: float) -> list[Any]:
        b = self.live_binning
        ny, nx = self.assembler.shape[0] // b, self.assembler.shape[1] // b
        edges = np.linspace(0, ny, self.opt.n_shards + 1).round().astype(int)
        cfg = self.config
        gpu = {"num_gpus": 0.25} if cfg.compute.backend == "cupy" else {}  # slab sums on the GPU
        return [ReconShard.options(**gpu).remote((ny, nx), (int(a), int(c)), (cor + 0.5) / b - 0.5, cfg.fbp.window,
                                                 cfg.fbp.padding, cfg.stream.bp_batch, cfg.stream.bp_wait_s,
                                                 cfg.compute.backend)
                for a, c in zip(edges[:-1], edges[1:]) if c > a]

    # ------------------------------------------------------------------ work
    def _dispatch(self, work: AngleWork, targets: list[Any] | None = None) -> None:
        while len(self.in_flight) >= self.opt.max_in_flight:  # backpressure: wait for a slot
            self._drain(block=True)
        worker = self.workers[self._n_dispatched % len(self.workers)]
        self._n_dispatched += 1
        work.load(self.assembler.store, self.assembler.previews_store)
        ref = worker.project.remote(work, self.assembler.shift_models())
        work.unload()  # the object store has them now
        self.in_flight[ref] = (work, targets)
        self.dispatched_at[ref] = time.monotonic()

    def _drain(self, block: bool) -> None:
        if self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1 if block else len(self.in_flight),
                                timeout=None if block else 0)
            for ref in ready:  # every shard takes the projection by reference; Ray keeps per-caller order
                work, targets = self.in_flight.pop(ref)
                if work.kind == "final":
                    self.last_final = (work.theta_deg, ref)
                else:
                    self._keep_preview(work, ref)
                now = time.monotonic()
                self.instruments.sample("phase_preview" if work.kind == "preview" else "phase_ctf",
                                        now - self.dispatched_at.pop(ref, now))
                theta = float(np.deg2rad(work.theta_deg))
                prev = None if work.preview_theta_deg is None else float(np.deg2rad(work.preview_theta_deg))
                self.adding.append((work, [s.add.remote(work.index, theta, ref, work.kind == "final", prev)
                                           for s in (targets or self._live_targets())], now))
        self._settle()

    def _keep_preview(self, work: AngleWork, ref: Any) -> None:
        """Keep a preview on disk for the final that replaces it (which then need not recompute it)."""
        try:
            self.assembler.previews_store.put(*work.preview_key(), ray.get(ref).full)
        except ValueError as exc:  # e.g. an all-zero preview of an empty field: the final recomputes it
            log.debug("preview of angle %.3f deg not kept: %s", work.theta_deg, exc)

    def _settle(self, all_of_them: bool = False) -> None:
        """Book the work whose back-projection finished (oldest first); wait while too much is queued."""
        while self.adding:
            work, refs, t_added = self.adding[0]
            must_wait = all_of_them or len(self.adding) > 2 * self.opt.max_in_flight
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if must_wait else 0)
            if len(ready) < len(refs):
                return
            ray.get(refs)  # raise a shard's error here
            self.adding.popleft()
            self._n_booked += 1
            now = time.monotonic()
            self.instruments.sample("backprojection", now - t_added)
            self.instruments.booked(work, now)
            if work.kind == "final" and work.frame_ids:
                self._mark(work.frame_ids, PROCESSED, "phase")
            if self.on_result:
                self.on_result(work)

    def _mark(self, fids: list[str], state: str, stage: str, reasons: list[str] | None = None) -> None:
        pending = {r for r in fids if r not in self._finished}
        if not pending:
            return
        if reasons is not None:
            reasons = [r for f, r in zip(fids, reasons) if f in pending]
        fids = [f for f in fids if f in pending]
        self.journal.mark_many(fids, state, stage=stage, reasons=reasons)
        self._finished.update(fids)

    def _flush(self) -> None:
        while self.in_flight:
            self._drain(block=True)
        self._settle(all_of_them=True)

    def _idle(self, timeout_s: float) -> None:
        """Nothing arrived: wait up to ``timeout_s`` for the next poll, waking as soon as a phase task or the
        oldest back-projection finishes (its projection is then passed on at once, not after the sleep)."""
        refs = list(self.in_flight)
        if self.adding:
            oldest = self.adding[0][1]
            refs += ray.wait(oldest, num_returns=len(oldest), timeout=0)[1]
        if refs:
            ray.wait(refs, num_returns=1, timeout=timeout_s)
        elif timeout_s > 0:
            time.sleep(timeout_s)

    def _check_restarts(self, force: bool = False) -> None:
        """Count the actors Ray restarted (asked every ``restart_check_s``, or now when ``force``). A restarted
        shard lost its slab: replay every angle into it from the frames on disk (a restarted phase worker needs
        nothing: Ray retries the tasks it held)."""
        if not self.shards:
            return
        now = time.monotonic()
        if not force and now - self._restarts_at < self.opt.restart_check_s:
            return
        self._restarts_at = now
        actors = (*self.workers, *self._live_targets())
        current = ray.get([a.incarnation.remote() for a in actors])
        for actor, inc in zip(actors, current):
            if self.incarnations.setdefault(actor, inc) == inc:
                continue
            self.incarnations[actor] = inc
            if actor in self.workers:
                log.warning("a phase worker was restarted; Ray retries the tasks it held")
                self.instruments.restarts["phase_worker"] += 1
                continue
            log.warning("a reconstruction actor was restarted; replaying its angles from the store")
            self.instruments.restarts["recon_shard" if actor in self.shards else "slice_keeper"] += 1
            for work in self.assembler.replay():
                self._dispatch(work, targets=[actor])

    def _live_axis(self, pair: tuple[np.ndarray, np.ndarray]) -> float | None:
        """The rotation axis from the 0/180 pair and the reference distance's rows in the store, by the final
        pass's rule (:func:`~xnh_stream.chain.axis.decide_rotation_axis`); None, and the detector centre kept,
        when no estimator is reliable."""
        sinos, thetas = self.assembler.reference_rows(list(axis_rows(self.assembler.shape[0])))
        decision = decide_rotation_axis([(pair[0], pair[1], 180.0)], sinos, thetas, self.assembler.shape[1])
        est = decision.axis
        if decision.problem is not None:
            log.warning("live rotation axis not estimated (%s): the detector centre is kept", decision.problem)
            self.rotation_axis = {**(self.rotation_axis or {}), "source": "the detector centre (not estimated live)"}
            return None
        if not decision.trusted:
            log.warning("live rotation axis %.2f px (%s) is not reliable: the detector centre is kept", est.px,
                        est.method)
            self.rotation_axis = {**(self.rotation_axis or {}),
                                  "source": "the detector centre (the live estimate was not reliable)"}
            return None
        log.info("live rotation axis %.2f px (%s, confidence %.2f px)", est.px, est.method, est.confidence_px)
        self.rotation_axis = {**(self.rotation_axis or {}), "px": float(est.px),
                              "source": f"estimated live: {est.method}, confidence {est.confidence_px:.2f} px"}
        return float(est.px)

    def _rebuild_around(self, cor: float) -> None:
        """The live volume rebuilt around a new rotation axis from the frames on disk."""
        log.info("live centre of rotation %.2f px; rebuilding the live volume", cor)
        self._flush()
        self._asked = None  # asked of the actors about to go
        for s in self._live_targets():
            ray.kill(s)
        self.shards = self._make_shards(cor)
        if self.slicer is not None:
            self.slicer = self._make_slicer(cor)
        for work in self.assembler.replay():
            self._dispatch(work)

    # ------------------------------------------------------------------ frames
    def _ingest(self, records: list[FrameRecord]) -> None:
        """Journal, read, assemble and monitor a batch of records (pixels read one frame at a time)."""
        t_landed = time.monotonic()
        for q in getattr(self.source, "drain_quarantine", lambda: [])():
            fid = f"{q.file_id}#file"
            if fid not in self.known:
                self.journal.record_many([JournalEntry(fid, RECEIVED, stage="ingest"),
                                          JournalEntry(fid, QUARANTINED, stage="ingest", reason=q.reason)])
        dups = getattr(self.source, "drain_duplicates", lambda: [])()
        new = [rec for rec in records if rec.frame_id not in self.known]
        self.journal.record_many([JournalEntry(rec.frame_id, RECEIVED, rec.distance_key, journal_key(rec),
                                               angle_deg=rec.rotation_angle_deg) for rec in new]
                                 + [e for rec, orig in dups if rec.frame_id not in self.known for e in (
                                     JournalEntry(rec.frame_id, RECEIVED, rec.distance_key, journal_key(rec),
                                                  angle_deg=rec.rotation_angle_deg),
                                     JournalEntry(rec.frame_id, QUARANTINED, stage="ingest",
                                                  reason=f"copy of {orig} (same content): not used"))])
        for rec in records:
            if rec.image_key == PROJECTION and rec.image_key_control == PROJECTION:
                self.instruments.landed(rec.frame_id, t_landed)
        used: dict[float, list[str]] = {}  # darks, flats and return projections used on arrival, by distance
        left: list[tuple[str, str]] = []  # frames of a distance set aside, with the reason
        for rec in records:
            if self.vote.add(rec):  # a distance's first frame: the distances trusted may change
                self._follow_vote(used)
            elif rec.distance_key in self._live:
                self._assemble(rec, used)
            elif self._verdict is not None and rec.distance_key in self._verdict:
                left.append((rec.frame_id, left_out(self._verdict[rec.distance_key])))
            # else: a distance not trusted (yet): its record waits in the vote
        for key, fids in used.items():
            self._book(key, fids, PROCESSED, "assemble")
        if left:
            self._mark([f for f, _ in left], QUARANTINED, "ingest", [r for _, r in left])

    def _assemble(self, rec: FrameRecord, used: dict[float, list[str]]) -> None:
        """Read, assemble and monitor one frame of a distance the live chain takes."""
        if self.assembler is None:
            self._start(rec)
        a = self.assembler
        n_bad = len(a.quarantined)
        # a projection journaled before a restart is taken back from the store, its file not read again
        restore = rec.frame_id in self.known and a.can_restore(rec)
        wants = self.monitor.wants_pixels(rec)
        pixels = None
        if (not restore and rec.image_key in (PROJECTION, FLAT, DARK)) or wants:
            pixels, problem = read_frame(rec)
            if pixels is None:
                a.quarantined.append((rec.frame_id, problem or "unreadable"))
        if pixels is not None or restore or rec.image_key not in (PROJECTION, FLAT, DARK):
            try:
                works = a.add(rec, None if restore else pixels)
            except (ValueError, ArithmeticError, KeyError) as exc:  # one unusable frame must not end the scan
                log.error("frame %s set aside: %s", rec.frame_id, exc)
                a.quarantined.append((rec.frame_id, f"could not be assembled: {exc}"))
                works = []
            for work in works:
                self._dispatch(work)
            if rec.frame_id not in {f for f, _ in a.quarantined[n_bad:]}:
                if rec.image_key in (DARK, FLAT) or rec.image_key_control == RETURN:
                    used.setdefault(rec.distance_key, []).append(rec.frame_id)  # used on arrival
                try:
                    self.monitor.add_frame(rec, pixels if wants else None)
                except (ValueError, OSError) as exc:  # quality figures must not stop the reconstruction
                    log.error("quality monitor: frame %s not used: %s", rec.frame_id, exc)
        if a.complete and not self._prepared:  # every distance known: the CTF ready before the finals
            self._prepared = True
            for w in self.workers:
                w.prepare.remote(a.geometry)
        new_bad = a.quarantined[n_bad:]
        if new_bad:
            self._book(rec.distance_key, [f for f, _ in new_bad], QUARANTINED, "assemble",
                       [r for _, r in new_bad])

    # ------------------------------------------------------------------ which distances
    def _follow_vote(self, used: dict[float, list[str]]) -> None:
        """A distance arrived: decide once every distance is there, and feed the live chain the distances
        trusted now (started again, from their frames' records, when they outvote those it was started on)."""
        self._decide(self.vote.verdict())
        trusted = self.vote.trusted_now()
        if trusted is None:  # one group against another of the same size: the live chain goes on as it is
            trusted = self._live
        if not self._live <= trusted:
            self._restart_live(trusted)
        for key in sorted(trusted - self._live, key=lambda k: self.vote.arrived(k)[0].geometry.z1_m):
            self._live.add(key)
            for rec in self.vote.arrived(key):
                self._assemble(rec, used)

    def _decide(self, verdict: dict[float, str] | None) -> None:
        """Book what waited for the vote: the frames of a distance set aside are quarantined with the final
        pass's reason (and a critical alert), the marks of the others' frames are written."""
        if verdict is None:
            return
        self._verdict = verdict
        for key, reason in verdict.items():
            fids = [r.frame_id for r in self.vote.arrived(key)]
            if not any(f not in self._finished for f in fids):
                continue  # booked already (before a restart of the stream, or at an earlier verdict)
            alert = left_out_alert(self.vote.name(key), reason)
            log.error("%s", alert.message)
            self.journal.emit("alert", alert.as_entry(),
                              key=f"alert:{alert.name}:{alert.severity}:{self.vote.name(key)}")
            self._mark(fids, QUARANTINED, "ingest", [left_out(reason)] * len(fids))
        early, self._early = self._early, {}
        for key, marks in early.items():
            if key in verdict:
                continue
            for state, stage in dict.fromkeys((m[1], m[2]) for m in marks):
                mine = [m for m in marks if (m[1], m[2]) == (state, stage)]
                self._mark([m[0] for m in mine], state, stage,
                           None if state == PROCESSED else [m[3] or "" for m in mine])

    def _book(self, key: float, fids: list[str], state: str, stage: str,
              reasons: list[str] | None = None) -> None:
        """Mark frames of distance ``key`` in the journal once the vote decided on it; until then the marks
        wait (a frame must not end processed, or quarantined for another reason, if the final pass's rule then
        sets its distance aside)."""
        if self._verdict is None:
            self._early.setdefault(key, []).extend(
                (f, state, stage, None if reasons is None else reasons[i]) for i, f in enumerate(fids))
        elif key not in self._verdict:
            self._mark(fids, state, stage, reasons)

    def _restart_live(self, trusted: set[float]) -> None:
        """The live chain was started on distances that others now outvote (the first to arrive was the odd
        one): its actors, stores and quality monitor go, and it starts again on the trusted distances."""
        log.warning("the live volume starts again on %s, which outnumber %s (they disagree)",
                    ", ".join(self.vote.name(k) for k in sorted(trusted)),
                    ", ".join(self.vote.name(k) for k in sorted(self._live)))
        if self.assembler is not None:
            self._flush()
            for actor in (*self.workers, *self._live_targets()):
                ray.kill(actor)
            self.assembler.discard()
        self.assembler, self.workers, self.shards, self.slicer = None, [], [], None
        self.incarnations.clear()
        self.delta_beta = self.config.sample.delta_beta
        self.cor_known = self.config.fbp.cor is not None
        self._prepared, self._asked, self.last_final, self._binned_fsc_angles = False, None, None, 0
        self.monitor.close()
        self.monitor = self._make_monitor()  # fed the trusted distances only, as the final pass's would be
        self._live = set()

    # ------------------------------------------------------------------ quality and progress
    def _ask_views(self, status: str) -> _ViewsAsked | None:
        """Ask the shards (and the slice keeper) for their live views; None before there is anything to show."""
        seen = self.assembler.state()["angles_seen"]
        if not self.shards or seen < 4:
            return None
        n_rows = self.assembler.shape[0] // self.live_binning
        # The binned whole-volume FSC reads every slab: refreshed by angles received (each time the angles
        # doubled, and at the end: log-spaced points of resolution against angles); the full-resolution region
        # and the slices every time.
        live = self.config.stream
        binned = status != "streaming" or seen >= max(live.binned_fsc_first,
                                                      live.binned_fsc_growth * self._binned_fsc_angles)
        # The binned volume's central slices only when the full-resolution ones are not kept.
        refs = [s.views.remote(n_rows, self.config.stream.fsc_bin, self.config.stream.fsc_region_px, binned,
                               self.slicer is None) for s in self.shards]
        return _ViewsAsked(refs, self.slicer.views.remote() if self.slicer is not None else None, seen)

    def _update_quality(self, status: str, block: bool = True) -> dict[str, Any] | None:
        """Running FSC from the shards' pieces, live images, and the monitor's snapshot (to the live page).

        Without ``block`` the views are asked for and taken by a later call, once every actor answered (a shard
        answers after the back-projections queued before the question: the driver does not wait for them);
        None until then.
        """
        if self._asked is None or block:
            self._asked = self._ask_views(status)
        asked = self._asked
        if asked is not None and not block:
            refs = [*asked.refs, *([asked.slices] if asked.slices is not None else [])]
            if ray.wait(refs, num_returns=len(refs), timeout=0)[1]:
                return None
        self._asked = None
        images: dict[str, Any] = {}
        info: dict[str, Any] = {}  # scale, slice positions and grey-level units of the images (live page)
        geo = self.assembler.geometry
        if asked is not None:
            views = merge_views(ray.get(asked.refs))
            if "binned" in views:
                self._binned_fsc_angles = asked.seen
            voxel = self.assembler.geometry.voxel_m * self.live_binning
            if "binned" in views or "region" in views:
                self.monitor.add_fsc(n_angles=asked.seen, binned=views.get("binned"), region=views.get("region"),
                                     voxel_m=voxel)
            images = views["images"]
            if "n" in views:  # the shards' slices through the centre of the binned live volume
                rows, n = self.assembler.shape[0] // self.live_binning, views["n"]
                info = slice_info((rows, n, n), (rows // 2, n // 2, n // 2), voxel, self.live_binning)
            if asked.slices is not None:  # the full-resolution slices replace the binned ones
                images.update(ray.get(asked.slices))
                ny, nx = self.assembler.shape  # the slice keeper's slices: through the centre (OrthoSlices)
                info = slice_info((ny, nx, nx), (ny // 2, nx // 2, nx // 2), geo.voxel_m)
        extra = {}
        if self.last_final is not None:
            # the live projection is -phi / (k voxel) (AngleProcessor.scale), binned: shown as the phase in rad
            k_voxel = 2 * np.pi / geo.distances[0].wavelength_m * geo.voxel_m
            images["phase"] = -k_voxel * np.asarray(ray.get(self.last_final[1]).binned)
            info["phase"] = {"pixel_m": geo.voxel_m * self.live_binning, "binning": self.live_binning, "unit": "rad"}
            extra["phase_angle_deg"] = self.last_final[0]
        quality = self.monitor.snapshot()
        self._publish(status, quality, images, extra, image_info=info)
        return quality

    def _publish(self, status: str, quality: dict[str, Any] | None, images: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, image_info: dict[str, Any] | None = None) -> None:
        if self.live_page is None or self.assembler is None:
            return
        st = self.assembler.state()
        self.live_page.publish({"status": status, "angles_seen": st["angles_seen"], "angles_final": st["angles_final"],
                                "distances": [{"z1_m": z, "frames": n} for z, n, _ in st["distances"]],
                                "rotation_axis": self.rotation_axis, "quality": quality, **(extra or {})}, images,
                               image_info)

    def progress(self, status: str, quality: dict[str, Any] | None) -> StreamProgress:
        """The progress now."""
        st = self.assembler.state()
        self.instruments.refresh(self.assembler.store if status == "streaming" else None)
        waiting = sum(w for _, _, w in st["distances"])
        return StreamProgress(
            distances=[DistanceState(z, n, w) for z, n, w in st["distances"]], angles_seen=st["angles_seen"],
            angles_final=st["angles_final"], quarantined=st["quarantined"], journal=self.journal.counts(),
            queues={"phase_in_flight": len(self.in_flight), "backprojection": len(self.adding),
                    "waiting_for_flats": waiting},
            latency_s=self.instruments.take_samples(), restarts=dict(self.instruments.restarts),
            actors={"recon_shard": len(self.shards), "phase_worker": len(self.workers),
                    "slice_keeper": int(self.slicer is not None)},
            store_bytes=self.instruments.store_bytes, cluster=dict(self.instruments.cluster), quality=quality,
            status=status)

    # ------------------------------------------------------------------ the run
    def run(self) -> StreamResult:
        """Stream until the scan completes (or the timeout), then run the final pass.

        Stopped on the way (SIGTERM or SIGINT raise in the command's main thread, :mod:`xnh_stream.interrupt`;
        or an error), the journal is closed before the exception goes on, its WAL checkpointed into
        ``journal.sqlite``: the same command resumes from it (what it holds is consistent at any instruction,
        even after ``kill -9``; closing it leaves no ``-wal`` file behind). The actors go with Ray's shutdown.
        """
        try:
            return self._run()
        except BaseException:
            try:
                self.journal.close()
            except Exception as exc:  # noqa: BLE001 - the stop (or the error) is what is reported
                log.warning("%s: not closed cleanly (%s); it is consistent all the same",
                            self.out / JOURNAL_NAME, exc)
            raise

    def _run(self) -> StreamResult:
        if self.config.compute.backend == "numpy":
            took = compile_kernels()  # here once, before the actors exist, instead of in each of them at once
            if took > 2.0:
                log.info("compiled the CPU kernels in %.1f s (the first run after an install; later runs and "
                         "the actors load them from numba's cache)", took)
        self._finished: set[str] = {r.frame_id for r in self.journal.iter_records() if r.state != RECEIVED}
        started = time.monotonic()
        completion = None
        while True:
            booked = self._n_booked
            with one_open_per_file():  # a file opened once for the poll's inspection and the frames read from it
                batch = self.source.poll()
                self._ingest(batch)
            a = self.assembler
            if not self.cor_known and a is not None and (pair := a.cor_pair()) is not None:
                # The reference distance has come round (a return projection 180 degrees from a projection):
                # the rotation axis by the final pass's estimators, and the live volume rebuilt around it.
                self.cor_known = True
                cor = self._live_axis(pair)
                if cor is not None:
                    self._rebuild_around(cor)
            self._drain(block=False)
            self._check_restarts()
            if a is not None:
                quality = None
                if self._asked is not None or time.monotonic() - self.quality_at >= self._quality_every_s:
                    if self._asked is None:
                        self.quality_at = time.monotonic()
                    quality = self._update_quality("streaming", block=False)
                # progress when something happened, and every progress_every_s when idle
                now = time.monotonic()
                if (quality is not None or batch or self._n_booked != booked
                        or now - self._reported_at >= self.opt.progress_every_s):
                    self._reported_at = now
                    if quality is None:
                        quality = self.monitor.snapshot()
                        self._publish("streaming", quality)
                    if self.on_progress:
                        self.on_progress(self.progress("streaming", quality))
            if not batch and (completion := self.source.completion()) is not None:
                break
            if self.opt.timeout_s is not None and time.monotonic() - started > self.opt.timeout_s:
                log.error("stream: no end of scan after %.0f s; stopping with what arrived", self.opt.timeout_s)
                break
            if not batch:
                self._idle(self.opt.poll_interval_s)
        self._flush()
        self._check_restarts(force=True)
        self._flush()
        return self._finish(completion)

    def _finish(self, completion: Completion | None) -> StreamResult:
        if completion is not None and self._verdict is None:  # fewer distances than the scan's: these decide
            self._decide(self.vote.verdict(complete=True))
        live = None
        b = self.live_binning
        live_bytes = 4 * (self.assembler.shape[0] // b) * (self.assembler.shape[1] // b) ** 2 if self.shards else 0
        if self.shards and live_bytes <= self.opt.live_result_max_bytes:
            parts = sorted(ray.get([s.volume.remote() for s in self.shards]), key=lambda p: p[0])
            live = np.concatenate([p[1] for p in parts], axis=0)
        elif self.shards:
            log.info("live volume (%.1f GiB) not gathered into the driver: the final pass writes the volume",
                     live_bytes / 2**30)
        shard_cpu = {"add": 0.0, "views": 0.0}
        for part in ray.get([s.cpu_seconds.remote() for s in self.shards]) if self.shards else []:
            for k, v in part.items():
                shard_cpu[k] += v
        quality = self._update_quality("final pass") if self.assembler is not None else None
        self.final_slices = ray.get(self.slicer.views.remote()) if self.slicer is not None else {}
        for actor in (*self.workers, *self._live_targets()):  # their resources go to the final pass
            ray.kill(actor)
        if self.assembler is not None:
            self.assembler.drop_previews()
        final = None
        if self.opt.final_pass and completion is not None and self.assembler is not None:
            if completion.missing:
                alert = Alert("ScanIncomplete", "critical",
                              f"scan completed ({completion.reason}) without: {'; '.join(completion.missing)}")
                log.error(alert.message)
                self.journal.emit("alert", alert.as_entry(), key="alert:ScanIncomplete:critical")
            index = ScanIndex.read(self.scan_folder)
            chain = FinalChain(index, self.out, self.config, executor=RayExecutor(), layout=self.opt.layout,
                               monitor=self.monitor, progress=self._final_progress,
                               replace=True)  # the command checked OUT; a resumed stream renews its outputs
            chain.completion = completion
            if completion.missing:
                chain.alerts.append(alert)
            final = chain.run(journal=self.journal)
            axis = final.report.cor
            self.rotation_axis = {**(self.rotation_axis or {}), "px": axis.px, "source": f"final pass: {axis.method}"}
            quality = self.monitor.snapshot()
            event = self.journal.emit("scan_complete", {"scan": str(self.scan_folder), "out": str(self.out),
                                                        "resolution_m": final.report.fsc.resolution_m},
                                      key=str(self.scan_folder))
            for callback in self.subscribers:
                callback({"event": "scan_complete", "id": event, "scan": str(self.scan_folder), "out": str(self.out)})
        self.monitor.close()
        if self.assembler is not None:
            status = "complete" if final is not None else "stopped"
            self._publish(status, quality, extra={"phase_angle_deg": self.last_final[0] if self.last_final else None})
            if self.on_progress:  # metrics: the final account (every frame booked)
                self.on_progress(self.progress(status, quality))
        counts = self.journal.counts()
        events = self.journal.events()
        self.journal.close()
        return StreamResult(final, live, counts, events, self.live_binning, completion, self.final_slices, shard_cpu)

    def _final_progress(self, done: int, total: int, step: str) -> None:
        if self.on_progress and self.assembler is not None:
            p = self.progress("final pass", None)
            p.final_step = f"{step} {done}/{total} {plural(step_unit(step), total)}"
            self.on_progress(p)
