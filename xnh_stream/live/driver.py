"""The live stream's driver: frames in as they land, a live volume that sharpens, the final pass at the end.

Data flow (``docs/contracts.md``, "Data flow (live)")::

    source.poll() --> LiveDriver: journal + ScanAssembler (flat-field, DistanceStore on disk)
        --> LiveQueue (finals first; a preview skipped when its final is queued or it is late)
        --> phase workers (Paganin preview / multi-distance CTF), bounded in flight
        --> reconstruction shards (a slab of rows each, even/odd halves; a preview is replaced by its final)
            and the slice keeper (full-resolution orthogonal slices)
    scan complete --> the final pass (xnh_stream.chain.final.FinalChain) on the runtime's executor, taking
                      the store's flat-fielded frames where its own flat-field is the same (chain/frames.py)
                      --> OUT/volume.ome.zarr, report.json --> "scan_complete" event to the journal and subscribers

Every decision is here: when the scan is complete (the source's rule, :mod:`xnh_stream.live.sources`), which
distances make it (:mod:`xnh_stream.live.book`), the rotation axis (:mod:`xnh_stream.chain.axis`, the final
pass's rule), backpressure, replays after a worker's restart, the refresh cadence of the running FSC and the
live page; which work goes to a worker next is :class:`~xnh_stream.live.schedule.LiveQueue`'s. Where the
workers run is the :class:`~xnh_stream.live.runtime.LiveRuntime`'s: in this process
(:class:`~xnh_stream.live.runtime.InProcessRuntime`, the default) or on Ray (``actors.stream``). Work items
travel without pixels and are loaded from the store just before they are dispatched, so memory stays
bounded, after a restart too.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..chain.assembler import AngleWork, ProjectionResult, ScanAssembler, discard_stores
from ..chain.axis import decide_rotation_axis
from ..chain.final import ChainLayout, ChainResult, FinalChain, delta_beta_of
from ..chain.layout import plural, step_unit
from ..chain.report import JOURNAL_NAME, Completion, DistanceState, StreamProgress
from ..chain.scan import DistanceVote, ScanIndex
from ..chain.steps import read_frame
from ..chain.warmup import compile_kernels
from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN, one_open_per_file
from ..io.sources import FrameRecord
from ..physics.align import HeldShift
from ..physics.xp import binning_for
from ..quality.alerts import Alert, CallbackSink, default_router
from ..quality.monitor import QualityMonitor
from ..state.journal import PROCESSED, QUARANTINED, FrameJournal
from ..state.store import DistanceStore
from .book import FrameBook
from .instruments import Instruments
from .runtime import InProcessRuntime, LiveRuntime, Pending, ShardSpec, SlicesSpec, ViewsRequest, WorkerSpec
from .schedule import LiveQueue, Queued
from .workers import COARSE_BINNING, coarse_possible
from .sources import FrameSource
from .views import SlabView, merge_views, slice_info

if TYPE_CHECKING:
    from ..config import LiveOptions, ProcessConfig

__all__ = ["LIVE_COLUMNS", "LiveDriver", "StreamOptions", "StreamResult"]

log = logging.getLogger(__name__)

#: Columns of the live volume when ``live_binning`` is 0 (auto): larger frames are binned to about this.
LIVE_COLUMNS = 512


@dataclass
class StreamOptions:
    """How the stream runs: its layout (the command's flags) and its pacing (a field left None takes the
    configuration's ``stream`` key of the same name: one home for the options, :meth:`resolved`).

    Attributes
    ----------
    n_distances : int
        Distances of the scan.
    n_workers, n_shards : int
        Phase workers and reconstruction shards.
    max_in_flight : int, optional
        Phase tasks in flight (backpressure); None: ``stream.max_in_flight`` (0 there: two per phase worker).
    poll_interval_s : float
        Wait between polls when nothing arrived (cut short when a phase task or back-projection finishes).
    restart_check_s : float, optional
        How often the workers are asked whether the runtime restarted them; None: ``stream.restart_check_s``.
    progress_every_s : float, optional
        Progress is reported at least this often while idle; None: ``stream.progress_every_s``.
    timeout_s : float, optional
        Stop waiting for the end of the scan after this long (reported incomplete; no final volume).
    final_pass : bool
        Run the final pass at completion.
    quality_every_s : float, optional
        How often the running FSC and the live images are refreshed from the shards; None takes the
        configuration's ``stream.quality_every_s``.
    live_slices : bool
        Keep the three orthogonal slices through the volume's centre at full resolution, updated per angle
        (a :class:`~xnh_stream.live.workers.SliceKeeper`), for the live page.
    layout : ChainLayout
        How the final pass cuts its work.
    live_result_max_bytes : int, optional
        The live volume is gathered from the shards into :class:`StreamResult` only up to this size; None:
        ``stream.live_result_max_mib``.
    """

    n_distances: int = 4
    n_workers: int = 2
    n_shards: int = 2
    max_in_flight: int | None = None
    poll_interval_s: float = 0.1
    restart_check_s: float | None = None
    progress_every_s: float | None = None
    timeout_s: float | None = None
    final_pass: bool = True
    quality_every_s: float | None = None
    live_slices: bool = True
    layout: ChainLayout = field(default_factory=ChainLayout)
    live_result_max_bytes: int | None = None

    def resolved(self, stream: LiveOptions) -> StreamOptions:
        """These options with every pacing field left None taken from the configuration's ``stream`` section."""
        from_config = {"max_in_flight": stream.max_in_flight or 2 * max(1, self.n_workers),
                       "restart_check_s": stream.restart_check_s, "progress_every_s": stream.progress_every_s,
                       "quality_every_s": stream.quality_every_s,
                       "live_result_max_bytes": stream.live_result_max_mib << 20}
        return replace(self, **{k: v for k, v in from_config.items() if getattr(self, k) is None})


@dataclass
class _ViewsAsked:
    """Live views asked of the workers, not yet taken."""

    shards: list[Pending[SlabView]]  # each shard's views
    slices: Pending[dict[str, np.ndarray]] | None  # the slice keeper's, if there is one
    seen: int  # angles seen when asked

    def all(self) -> list[Pending[Any]]:
        """Every answer awaited."""
        return [*self.shards, *([self.slices] if self.slices is not None else [])]


@dataclass
class _Adding:
    """A projection on its way into the live workers (booked once every one took it)."""

    work: AngleWork
    refs: list[Pending[int]]  # one per target
    added_s: float  # when it was sent to them
    slices: Pending[int] | None  # the slice keeper's, until the driver saw it done (landing_to_slices)


@dataclass
class StreamResult:
    """What :meth:`LiveDriver.run` produced."""

    final: ChainResult | None
    live_volume: np.ndarray | None  # None when larger than StreamOptions.live_result_max_bytes
    counts: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    live_binning: int = 1  # the live volume's voxel is this many final voxels
    completion: Completion | None = None
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # the full-resolution live slices at the end
    shard_cpu_s: dict[str, float] = field(default_factory=dict)  # live shards' CPU: "add" (back-projection), "views"
    previews_skipped: dict[str, int] = field(default_factory=dict)  # by reason (xnh_stream.live.schedule)
    finals_coarse: int = 0  # final work sent at half resolution (the stream was behind)


class LiveDriver:
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
        Workers, pacing, final pass.
    on_progress : callable, optional
        Called with a :class:`StreamProgress` after each poll.
    subscribers : callables
        Called with the ``scan_complete`` event (segmentation subscribes here).
    on_result : callable, optional
        Called with each work item once its projection is in every shard (latency measurements).
    live_page : LivePage, optional
        The live page to publish progress, quality and images to.
    runtime : LiveRuntime, optional
        Where the workers run (default: in this process).
    """

    def __init__(self, source: FrameSource, scan_folder: str | Path, out: str | Path, config: ProcessConfig,
                 options: StreamOptions | None = None,
                 on_progress: Callable[[StreamProgress], None] | None = None,
                 subscribers: Iterable[Callable[[dict[str, Any]], None]] = (),
                 on_result: Callable[[AngleWork], None] | None = None, live_page: Any | None = None,
                 runtime: LiveRuntime | None = None) -> None:
        self.source, self.scan_folder, self.out = source, Path(scan_folder), Path(out)
        self.config, self.opt = config, (options or StreamOptions()).resolved(config.stream)
        self.runtime = runtime if runtime is not None else InProcessRuntime()
        self.on_progress, self.subscribers, self.on_result, self.live_page = (
            on_progress, tuple(subscribers), on_result, live_page)
        self.out.mkdir(parents=True, exist_ok=True)
        self.journal = FrameJournal(self.out / JOURNAL_NAME)
        # After a crash: frames the journal knows are taken back (projections from the store, without
        # reading their files) but neither journaled nor counted again.
        self.known = self.journal.known_ids()
        if self.known:
            log.info("resuming: the journal already knows %d frames", len(self.known))
        self.in_flight: dict[Pending[ProjectionResult], tuple[AngleWork, list[Any] | None]] = {}
        self.queue = LiveQueue(config.stream.preview_deadline_s)  # for a worker; coarse finals: set in _start
        self.adding: deque[_Adding] = deque()
        self.dispatched_at: dict[Pending[ProjectionResult], float] = {}
        self.live_binning = 1
        self.rotation_axis: dict[str, Any] | None = None  # the axis the live volume is built around (live page)
        self.material: dict[str, Any] | None = None  # the delta/beta used, where it came from (live page)
        self.instruments = Instruments()
        self.final_slices: dict[str, np.ndarray] = {}
        self.quality_at = self._restarts_at = self._reported_at = -float("inf")  # the last refresh, check, report
        self._n_booked = 0  # work items in every live worker
        self._n_dispatched = 0
        self.incarnations: dict[Any, str] = {}
        self.monitor = self._make_monitor()
        self._clear_live()
        # Which distances make the scan, by the final pass's majority rule as they arrive (never "the first
        # one seen"): the live chain takes the frames of the distances trusted now, holds the others' records,
        # and starts again when a distance it holds outvotes those it took; the book holds their marks.
        self.vote = DistanceVote(self.scan_folder, self.opt.n_distances)
        self.book = FrameBook(self.journal, self.vote, self.known)

    def _clear_live(self) -> None:
        """No live chain yet (or any more): no assembler, no workers."""
        self.assembler: ScanAssembler | None = None
        self.workers: list[Any] = []
        self.shards: list[Any] = []
        self.slicer: Any = None
        self.incarnations.clear()
        self.delta_beta = self.config.sample.delta_beta
        self.cor_known = self.config.fbp.cor is not None
        self._prepared = False  # the phase workers were asked to build the CTF filter
        self._asked: _ViewsAsked | None = None  # live views asked for and not yet taken
        self.queue.restart()
        self.last_final: tuple[float, Pending[ProjectionResult]] | None = None  # the latest CTF projection
        self._binned_fsc_angles = 0  # angles seen at the last binned running FSC
        self._live: set[float] = set()  # distance keys fed to the assembler

    def _make_monitor(self) -> QualityMonitor:
        """The quality monitor, its alerts journaled."""
        sink = CallbackSink(lambda a: self.journal.emit("alert", a.as_dict(), key=f"alert:{a.name}:{a.severity}"))
        return QualityMonitor(self.config, str(self.scan_folder.resolve()), router=default_router(
            self.config, extra=[sink], generator_url=getattr(self.live_page, "url", "")))

    # ------------------------------------------------------------------ set-up
    def _start(self, rec: FrameRecord) -> None:
        """The live chain on the first frame: its store, the assembler, the workers."""
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
        given = self.delta_beta is not None
        if self.delta_beta is None:
            self.delta_beta = delta_beta_of(cfg.sample.formula, cfg.sample.density, rec.geometry.energy_kev)
        self.material = {"delta_beta": float(self.delta_beta), "interval": None, "source": (
            "given (sample.delta_beta)" if given else
            f"live CTF: from the composition {cfg.sample.formula}; the final pass fits it to the four distances")}
        self.live_binning = cfg.stream.live_binning or binning_for((ny, nx), LIVE_COLUMNS)
        # coarse finals only where the live volume is binned at least as much (its voxels hardly change)
        coarse = self.live_binning >= COARSE_BINNING and coarse_possible((ny, nx))
        self.queue.coarse_after_s = cfg.stream.coarse_after_s if coarse else 0.0
        spec = WorkerSpec((ny, nx), self.delta_beta, cfg, self.live_binning)
        self.workers = [self.runtime.phase_worker(spec) for _ in range(self.opt.n_workers)]
        cor = cfg.fbp.cor if cfg.fbp.cor is not None else (nx - 1) / 2
        self.rotation_axis = {"px": cor, "columns": nx, "source": "given (fbp.cor)" if cfg.fbp.cor is not None else
                              "the detector centre until the reference distance has come round"}
        self._make_targets(cor)

    def _make_targets(self, cor: float) -> None:
        """The shards (slabs of rows of the binned live volume) and the slice keeper around axis ``cor``."""
        b, cfg = self.live_binning, self.config
        ny, nx = self.assembler.shape[0] // b, self.assembler.shape[1] // b
        edges = np.linspace(0, ny, self.opt.n_shards + 1).round().astype(int)
        self.shards = [self.runtime.recon_shard(ShardSpec(
            (ny, nx), (int(a), int(c)), (cor + 0.5) / b - 0.5, cfg.fbp.window, cfg.fbp.padding, cfg.stream.bp_batch,
            cfg.stream.bp_wait_s, cfg.compute.backend)) for a, c in zip(edges[:-1], edges[1:]) if c > a]
        self.slicer = (self.runtime.slice_keeper(SlicesSpec(self.assembler.shape, cor, cfg.fbp.window, cfg.fbp.padding))
                       if self.opt.live_slices else None)

    def _live_targets(self) -> list[Any]:
        """Every worker a projection goes to: the shards and the slice keeper."""
        return [*self.shards, *([self.slicer] if self.slicer is not None else [])]

    def _kill(self, workers: Iterable[Any]) -> None:
        for w in workers:
            self.runtime.kill(w)

    # ------------------------------------------------------------------ work
    def _dispatch(self, work: AngleWork, targets: list[Any] | None = None, replay: bool = False) -> None:
        """Queue ``work`` for a phase worker (:class:`~xnh_stream.live.schedule.LiveQueue`: finals first) and
        send what the free slots take; its result goes to ``targets`` (default: every shard and the slice
        keeper). A ``replay`` into a rebuilt worker is never skipped."""
        models = [None if m is None else HeldShift.of(m, work.theta_deg) for m in self.assembler.shift_models()]
        self.queue.push(work, targets, time.monotonic(), replay, models)
        self._pump()

    def _pump(self) -> None:
        """Send queued work while a phase worker has a slot (``max_in_flight``: backpressure)."""
        while len(self.in_flight) < self.opt.max_in_flight:
            item = self.queue.pop(time.monotonic())
            if item is None:
                return
            self._send(item)

    def _send(self, item: Queued) -> None:
        """``item``'s work, its frames loaded from the store, to the next phase worker."""
        work = item.work
        if work.kind == "final" and work.index in self.queue.skipped_angles:
            # its preview was skipped: nothing to replace, and the worker must not compute it
            work = replace(work, preview_distance=None, preview_theta_deg=None, preview=None)
        if item.coarse:
            work = replace(work, coarse=COARSE_BINNING)
        worker = self.workers[self._n_dispatched % len(self.workers)]
        self._n_dispatched += 1
        work.load(self.assembler.store, self.assembler.previews_store)
        pending = self.runtime.project(worker, work, item.models)
        work.unload()  # the runtime has them now
        now = time.monotonic()
        self.instruments.sample("phase_waiting", now - item.queued_s)
        self.in_flight[pending] = (work, item.targets)
        self.dispatched_at[pending] = now

    def _drain(self, block: bool) -> None:
        """Pass the finished projections on to the shards (one at least when ``block``), refilling the freed
        slots from the queue, until no result is ready."""
        while self.in_flight:
            ready, _ = self.runtime.wait(list(self.in_flight), 1 if block else len(self.in_flight),
                                         None if block else 0)
            if not ready:
                break
            block = False
            for pending in ready:  # every shard takes the projection by reference, calls in order
                self._pass_on(pending)
            self._pump()
        self._pump()
        self._settle()

    def _pass_on(self, pending: Pending[ProjectionResult]) -> None:
        """A finished projection to its live workers (by reference)."""
        work, targets = self.in_flight.pop(pending)
        if work.kind == "final":
            self.last_final = (work.theta_deg, pending)
        else:
            self._keep_preview(work, pending)
        now = time.monotonic()
        self.instruments.sample("phase_preview" if work.kind == "preview" else "phase_ctf",
                                now - self.dispatched_at.pop(pending, now))
        to = targets or self._live_targets()
        refs = [self.runtime.add(t, work, pending) for t in to]
        slices = (refs[to.index(self.slicer)] if work.kind == "final" and self.slicer is not None
                  and self.slicer in to else None)
        self.adding.append(_Adding(work, refs, now, slices))

    def _keep_preview(self, work: AngleWork, pending: Pending[ProjectionResult]) -> None:
        """Keep a preview on disk for the final that replaces it (which then need not recompute it)."""
        try:
            self.assembler.previews_store.put(*work.preview_key(), self.runtime.get(pending).full)
        except ValueError as exc:  # e.g. an all-zero preview of an empty field: the final recomputes it
            log.debug("preview of angle %.3f deg not kept: %s", work.theta_deg, exc)

    def _settle(self, all_of_them: bool = False) -> None:
        """Book the work whose back-projection finished (oldest first); wait while too much is queued."""
        self._seen_in_slices()
        while self.adding:
            head = self.adding[0]
            must_wait = all_of_them or len(self.adding) > 2 * self.opt.max_in_flight
            ready, _ = self.runtime.wait(head.refs, len(head.refs), None if must_wait else 0)
            if len(ready) < len(head.refs):
                return
            self.runtime.get_all(head.refs)  # raise a shard's error here
            self.adding.popleft()
            self._n_booked += 1
            now = time.monotonic()
            work = head.work
            if head.slices is not None:
                self.instruments.in_slices(work, now)
            self.instruments.sample("backprojection", now - head.added_s)
            self.instruments.booked(work, now)
            if work.kind == "final" and work.frame_ids:
                self.book.mark(work.frame_ids, PROCESSED, "phase")
            if self.on_result:
                self.on_result(work)

    def _seen_in_slices(self) -> None:
        """Final projections the slice keeper took since the last look (landing_to_slices: the live slices
        are what the scientist watches; the live volume's shards may take a batch longer)."""
        waiting = [a for a in self.adding if a.slices is not None]
        if not waiting:
            return
        ready, _ = self.runtime.wait([a.slices for a in waiting], len(waiting), 0)
        done = {id(p) for p in ready}
        now = time.monotonic()
        for a in waiting:
            if id(a.slices) in done:
                self.instruments.in_slices(a.work, now)
                a.slices = None

    def _flush(self) -> None:
        """Every projection queued or in flight back-projected and booked."""
        self._pump()
        while self.in_flight:
            self._drain(block=True)
        self._settle(all_of_them=True)

    def _idle(self, timeout_s: float) -> None:
        """Nothing arrived: wait up to ``timeout_s`` for the next poll, waking as soon as a phase task or the
        oldest back-projection finishes (its projection is then passed on at once, not after the sleep)."""
        pending: list[Pending[Any]] = list(self.in_flight)
        if self.adding:
            oldest = self.adding[0].refs
            pending += self.runtime.wait(oldest, len(oldest), 0)[1]
            pending += [a.slices for a in self.adding if a.slices is not None]
        if pending:
            self.runtime.wait(pending, 1, timeout_s)
        elif timeout_s > 0:
            time.sleep(timeout_s)

    def _check_restarts(self, force: bool = False) -> None:
        """Count the workers the runtime restarted (asked every ``restart_check_s``, or now when ``force``). A
        restarted shard lost its slab: replay every angle into it from the frames on disk (a restarted phase
        worker needs nothing: the runtime retries the tasks it held)."""
        if not self.shards:
            return
        now = time.monotonic()
        if not force and now - self._restarts_at < self.opt.restart_check_s:
            return
        self._restarts_at = now
        workers = (*self.workers, *self._live_targets())
        for worker, inc in zip(workers, self.runtime.incarnations(workers)):
            if self.incarnations.setdefault(worker, inc) == inc:
                continue
            self.incarnations[worker] = inc
            if worker in self.workers:
                log.warning("a phase worker was restarted; the runtime retries the tasks it held")
                self.instruments.restarts["phase_worker"] += 1
                continue
            log.warning("a reconstruction actor was restarted; replaying its angles from the store")
            self.instruments.restarts["recon_shard" if worker in self.shards else "slice_keeper"] += 1
            for work in self.assembler.replay():
                self._dispatch(work, targets=[worker], replay=True)

    # ------------------------------------------------------------------ the rotation axis
    def _follow_axis(self) -> None:
        """Once the reference distance has come round (a return projection 180 degrees from a projection):
        the rotation axis by the final pass's rule, and the live volume rebuilt around it."""
        a = self.assembler
        if self.cor_known or a is None or (pair := a.cor_pair()) is None:
            return
        self.cor_known = True
        cor = self._live_axis(pair)
        if cor is not None:
            self._rebuild_around(cor)

    def _live_axis(self, pair: tuple[np.ndarray, np.ndarray]) -> float | None:
        """The rotation axis from the 0/180 pair and the reference distance's rows in the store, by the final
        pass's rule (:func:`~xnh_stream.chain.axis.decide_rotation_axis`); None, and the detector centre kept,
        when no estimator is reliable."""
        sinos, thetas = self.assembler.reference_rows()
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
        self._asked = None  # asked of the workers about to go
        self._kill(self._live_targets())
        self._make_targets(cor)
        for work in self.assembler.replay():
            self._dispatch(work, replay=True)

    # ------------------------------------------------------------------ frames
    def _ingest(self, records: list[FrameRecord]) -> None:
        """Journal, read, assemble and monitor a batch of records (pixels read one frame at a time)."""
        t_landed = time.monotonic()
        self.book.receive(records, getattr(self.source, "drain_duplicates", list)(),
                          getattr(self.source, "drain_quarantine", list)())
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
            elif (reason := self.book.set_aside_reason(rec)) is not None:
                left.append((rec.frame_id, reason))
            # else: a distance not trusted (yet): its record waits in the vote
        for key, fids in used.items():
            self.book.book(key, fids, PROCESSED, "assemble")
        if left:
            self.book.mark([f for f, _ in left], QUARANTINED, "ingest", [r for _, r in left])

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
            self._add_frame(rec, None if restore else pixels, pixels if wants else None, used, n_bad)
        if a.complete and not self._prepared:  # every distance known: the CTF ready before the finals
            self._prepared = True
            for w in self.workers:
                self.runtime.prepare(w, a.geometry)
        new_bad = a.quarantined[n_bad:]
        if new_bad:
            self.book.book(rec.distance_key, [f for f, _ in new_bad], QUARANTINED, "assemble",
                           [r for _, r in new_bad])

    def _add_frame(self, rec: FrameRecord, pixels: np.ndarray | None, monitored: np.ndarray | None,
                   used: dict[float, list[str]], n_bad: int) -> None:
        """One frame into the assembler (its work dispatched) and, unless it was set aside since the
        assembler held ``n_bad`` quarantined frames, into the quality monitor and the frames used on arrival."""
        a = self.assembler
        try:
            works = a.add(rec, pixels)
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
                self.monitor.add_frame(rec, monitored)
            except (ValueError, OSError) as exc:  # quality figures must not stop the reconstruction
                log.error("quality monitor: frame %s not used: %s", rec.frame_id, exc)

    # ------------------------------------------------------------------ which distances
    def _follow_vote(self, used: dict[float, list[str]]) -> None:
        """A distance arrived: decide once every distance is there, and feed the live chain the distances
        trusted now (started again, from their frames' records, when they outvote those it was started on)."""
        self.book.decide(self.vote.verdict())
        trusted = self.vote.trusted_now()
        if trusted is None:  # one group against another of the same size: the live chain goes on as it is
            trusted = self._live
        if not self._live <= trusted:
            self._restart_live(trusted)
        for key in sorted(trusted - self._live, key=lambda k: self.vote.arrived(k)[0].geometry.z1_m):
            self._live.add(key)
            for rec in self.vote.arrived(key):
                self._assemble(rec, used)

    def _restart_live(self, trusted: set[float]) -> None:
        """The live chain was started on distances that others now outvote (the first to arrive was the odd
        one): its workers, stores and quality monitor go, and it starts again on the trusted distances."""
        log.warning("the live volume starts again on %s, which outnumber %s (they disagree)",
                    ", ".join(self.vote.name(k) for k in sorted(trusted)),
                    ", ".join(self.vote.name(k) for k in sorted(self._live)))
        if self.assembler is not None:
            self._flush()
            self._kill((*self.workers, *self._live_targets()))
            self.assembler.discard()
        self._clear_live()
        self.monitor.close()
        self.monitor = self._make_monitor()  # fed the trusted distances only, as the final pass's would be

    # ------------------------------------------------------------------ quality and progress
    def _ask_views(self, status: str) -> _ViewsAsked | None:
        """Ask the shards (and the slice keeper) for their live views; None before there is anything to show."""
        seen = self.assembler.state()["angles_seen"]
        if not self.shards or seen < 4:
            return None
        live = self.config.stream
        # The binned whole-volume FSC reads every slab: refreshed by angles received (each time the angles
        # doubled, and at the end: log-spaced points of resolution against angles); the full-resolution region
        # and the slices every time. The binned volume's central slices only when the full-resolution ones are
        # not kept.
        binned = status != "streaming" or seen >= max(live.binned_fsc_first,
                                                      live.binned_fsc_growth * self._binned_fsc_angles)
        request = ViewsRequest(self.assembler.shape[0] // self.live_binning, live.fsc_bin, live.fsc_region_px,
                               binned, self.slicer is None)
        return _ViewsAsked([self.runtime.views(s, request) for s in self.shards],
                           self.runtime.slices(self.slicer) if self.slicer is not None else None, seen)

    def _update_quality(self, status: str, block: bool = True) -> dict[str, Any] | None:
        """Running FSC from the shards' pieces, live images, and the monitor's snapshot (to the live page).

        Without ``block`` the views are asked for and taken by a later call, once every worker answered (a
        shard answers after the back-projections queued before the question: the driver does not wait for
        them); None until then.
        """
        if self._asked is None or block:
            self._asked = self._ask_views(status)
        asked = self._asked
        if asked is not None and not block and self.runtime.wait(asked.all(), len(asked.all()), 0)[1]:
            return None
        self._asked = None
        images, info = self._live_images(asked) if asked is not None else ({}, {})
        extra = {}
        if self.last_final is not None:
            # the live projection is -phi / (k voxel) (AngleProcessor.scale), binned: shown as the phase in rad
            geo = self.assembler.geometry
            k_voxel = 2 * np.pi / geo.distances[0].wavelength_m * geo.voxel_m
            images["phase"] = -k_voxel * np.asarray(self.runtime.get(self.last_final[1]).binned)
            info["phase"] = {"pixel_m": geo.voxel_m * self.live_binning, "binning": self.live_binning, "unit": "rad"}
            extra["phase_angle_deg"] = self.last_final[0]
        quality = self.monitor.snapshot()
        self._publish(status, quality, images, extra, image_info=info)
        return quality

    def _live_images(self, asked: _ViewsAsked) -> tuple[dict[str, Any], dict[str, Any]]:
        """The answers to ``asked``: the running FSC fed to the monitor; the live images and what the page
        writes beside them (scale, slice positions, grey-level units)."""
        geo = self.assembler.geometry
        views = merge_views(self.runtime.get_all(asked.shards))
        if "binned" in views:
            self._binned_fsc_angles = asked.seen
        voxel = geo.voxel_m * self.live_binning
        if "binned" in views or "region" in views:
            self.monitor.add_fsc(n_angles=asked.seen, binned=views.get("binned"), region=views.get("region"),
                                 voxel_m=voxel)
        images: dict[str, Any] = dict(views["images"])
        info: dict[str, Any] = {}
        if "n" in views:  # the shards' slices through the centre of the binned live volume
            rows, n = self.assembler.shape[0] // self.live_binning, views["n"]
            info = slice_info((rows, n, n), (rows // 2, n // 2, n // 2), voxel, self.live_binning)
        if asked.slices is not None:  # the full-resolution slices replace the binned ones
            images.update(self.runtime.get(asked.slices))
            ny, nx = self.assembler.shape  # the slice keeper's slices: through the centre (OrthoSlices)
            info = slice_info((ny, nx, nx), (ny // 2, nx // 2, nx // 2), geo.voxel_m)
        return images, info

    def _publish(self, status: str, quality: dict[str, Any] | None, images: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, image_info: dict[str, Any] | None = None) -> None:
        if self.live_page is None or self.assembler is None:
            return
        st = self.assembler.state()
        self.live_page.publish({"status": status, "angles_seen": st["angles_seen"], "angles_final": st["angles_final"],
                                "distances": [{"z1_m": z, "frames": n} for z, n, _ in st["distances"]],
                                "rotation_axis": self.rotation_axis, "material": self.material, "quality": quality,
                                "schedule": {"behind_s": round(self.queue.behind_s(time.monotonic()), 3),
                                             "previews_skipped": sum(self.queue.skipped.values()),
                                             "finals_coarse": self.queue.coarse_finals},
                                **(extra or {})}, images,
                               image_info)

    def progress(self, status: str, quality: dict[str, Any] | None) -> StreamProgress:
        """The progress now."""
        st = self.assembler.state()
        self.instruments.refresh(self.runtime, self.assembler.store if status == "streaming" else None)
        waiting = sum(w for _, _, w in st["distances"])
        return StreamProgress(
            distances=[DistanceState(z, n, w) for z, n, w in st["distances"]], angles_seen=st["angles_seen"],
            angles_final=st["angles_final"], quarantined=st["quarantined"], journal=self.journal.counts(),
            queues={"phase_waiting": len(self.queue), "phase_in_flight": len(self.in_flight),
                    "backprojection": len(self.adding), "waiting_for_flats": waiting},
            behind_s=self.queue.behind_s(time.monotonic()), previews_skipped=dict(self.queue.skipped),
            finals_coarse=self.queue.coarse_finals,
            latency_s=self.instruments.take_samples(), restarts=dict(self.instruments.restarts),
            actors={"recon_shard": len(self.shards), "phase_worker": len(self.workers),
                    "slice_keeper": int(self.slicer is not None)},
            store_bytes=self.instruments.store_bytes, cluster=dict(self.instruments.cluster), quality=quality,
            status=status)

    def _report(self, batch: list[FrameRecord], booked: int) -> None:
        """While streaming: the live views refreshed every ``quality_every_s`` (taken once every worker
        answered), and the progress reported when something happened, and every ``progress_every_s`` when
        idle."""
        quality = None
        if self._asked is not None or time.monotonic() - self.quality_at >= self.opt.quality_every_s:
            if self._asked is None:
                self.quality_at = time.monotonic()
            quality = self._update_quality("streaming", block=False)
        now = time.monotonic()
        if (quality is not None or batch or self._n_booked != booked
                or now - self._reported_at >= self.opt.progress_every_s):
            self._reported_at = now
            if quality is None:
                quality = self.monitor.snapshot()
                self._publish("streaming", quality)
            if self.on_progress:
                self.on_progress(self.progress("streaming", quality))

    # ------------------------------------------------------------------ the run
    def run(self) -> StreamResult:
        """Stream until the scan completes (or the timeout), then run the final pass.

        Stopped on the way (SIGTERM or SIGINT raise in the command's main thread, :mod:`xnh_stream.interrupt`;
        or an error), the journal is closed before the exception goes on, its WAL checkpointed into
        ``journal.sqlite``: the same command resumes from it (what it holds is consistent at any instruction,
        even after ``kill -9``; closing it leaves no ``-wal`` file behind). The workers go with the runtime.
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
            took = compile_kernels()  # here once, before the workers exist, instead of in each of them at once
            if took > 2.0:
                log.info("compiled the CPU kernels in %.1f s (the first run after an install; later runs and "
                         "the workers load them from numba's cache)", took)
        self.book.load()
        started = time.monotonic()
        completion = None
        while True:
            booked = self._n_booked
            with one_open_per_file():  # a file opened once for the poll's inspection and the frames read from it
                batch = self.source.poll()
                self._ingest(batch)
            self._follow_axis()
            self._drain(block=False)
            self._check_restarts()
            if self.assembler is not None:
                self._report(batch, booked)
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

    # ------------------------------------------------------------------ the end
    def _gather(self) -> tuple[np.ndarray | None, dict[str, float]]:
        """The live volume from the shards (when small enough to gather) and their CPU seconds."""
        live = None
        b = self.live_binning
        live_bytes = 4 * (self.assembler.shape[0] // b) * (self.assembler.shape[1] // b) ** 2 if self.shards else 0
        if self.shards and live_bytes <= self.opt.live_result_max_bytes:
            parts = sorted(self.runtime.get_all([self.runtime.volume(s) for s in self.shards]), key=lambda p: p[0])
            live = np.concatenate([p[1] for p in parts], axis=0)
        elif self.shards:
            log.info("live volume (%.1f GiB) not gathered into the driver: the final pass writes the volume",
                     live_bytes / 2**30)
        shard_cpu = {"add": 0.0, "views": 0.0}
        for part in self.runtime.get_all([self.runtime.cpu_seconds(s) for s in self.shards]):
            for k, v in part.items():
                shard_cpu[k] += v
        return live, shard_cpu

    def _finish(self, completion: Completion | None) -> StreamResult:
        """The live chain's last views, the final pass (a complete scan), the last progress and the result."""
        if completion is not None and self.book.verdict is None:  # fewer distances than the scan's: these decide
            self.book.decide(self.vote.verdict(complete=True))
        live, shard_cpu = self._gather()
        quality = self._update_quality("final pass") if self.assembler is not None else None
        self.final_slices = self.runtime.get(self.runtime.slices(self.slicer)) if self.slicer is not None else {}
        self._kill((*self.workers, *self._live_targets()))  # their resources go to the final pass
        if self.assembler is not None:
            self.assembler.drop_previews()
        final = None
        if self.opt.final_pass and completion is not None and self.assembler is not None:
            final = self._final_pass(completion)
            quality = self.monitor.snapshot()
        self.monitor.close()
        if self.assembler is not None:
            status = "complete" if final is not None else "stopped"
            self._publish(status, quality, extra={"phase_angle_deg": self.last_final[0] if self.last_final else None})
            if self.on_progress:  # metrics: the final account (every frame booked)
                self.on_progress(self.progress(status, quality))
        counts = self.journal.counts()
        events = self.journal.events()
        self.journal.close()
        return StreamResult(final, live, counts, events, self.live_binning, completion, self.final_slices, shard_cpu,
                            dict(self.queue.skipped), self.queue.coarse_finals)

    def _final_pass(self, completion: Completion) -> ChainResult:
        """The final pass on the scan folder, on the runtime's executor, with the stream's journal; then the
        ``scan_complete`` event."""
        alert = None
        if completion.missing:
            alert = Alert("ScanIncomplete", "critical",
                          f"scan completed ({completion.reason}) without: {'; '.join(completion.missing)}")
            log.error(alert.message)
            self.journal.emit("alert", alert.as_entry(), key="alert:ScanIncomplete:critical")
        index = ScanIndex.read(self.scan_folder)
        chain = FinalChain(index, self.out, self.config, executor=self.runtime.executor(), layout=self.opt.layout,
                           monitor=self.monitor, progress=self._final_progress,
                           replace=True,  # the command checked OUT; a resumed stream renews its outputs
                           stream_store=self.assembler.store.path if self.config.stream.reuse_frames else None)
        chain.completion = completion
        if alert is not None:
            chain.alerts.append(alert)
        final = chain.run(journal=self.journal)
        axis = final.report.cor
        self.rotation_axis = {**(self.rotation_axis or {}), "px": axis.px, "source": f"final pass: {axis.method}"}
        estimate = final.report.phase.get("delta_beta_estimate") or {}
        self.material = {"delta_beta": final.report.phase.get("delta_beta"), "interval": estimate.get("interval"),
                         "source": f"final pass: {estimate.get('decision', 'given')}"}
        event = self.journal.emit("scan_complete", {"scan": str(self.scan_folder), "out": str(self.out),
                                                    "resolution_m": final.report.fsc.resolution_m},
                                  key=str(self.scan_folder))
        for callback in self.subscribers:
            callback({"event": "scan_complete", "id": event, "scan": str(self.scan_folder), "out": str(self.out)})
        return final

    def _final_progress(self, done: int, total: int, step: str) -> None:
        if self.on_progress and self.assembler is not None:
            p = self.progress("final pass", None)
            p.final_step = f"{step} {done}/{total} {plural(step_unit(step), total)}"
            self.on_progress(p)
