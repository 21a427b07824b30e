"""Ray actors of the live stream: thin wrappers around the :mod:`xnh_stream` core.

Data flow (see DESIGN.md)::

    source.poll() --> driver: journal + ScanAssembler (flat-field, DistanceStore)
        --> PhaseWorker pool (Paganin preview / multi-distance CTF), bounded in flight
        --> ReconShard actors (a slab of rows each, even/odd halves; previews replaced by CTF)
    scan complete --> final pass: the batch chain on the same files (OUT/volume.ome.zarr, report.json)
                  --> "scan_complete" event to the journal and to subscribers

Frames and projections travel as Ray object references: a projection is put once and every shard
reads it from the shared object store without a copy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray

from xnh_stream.chain.assembler import AngleWork, ScanAssembler
from xnh_stream.config import ProcessConfig
from xnh_stream.physics.fbp import estimate_cor
from xnh_stream.chain.incremental import AngleProcessor, ProgressiveVolume
from xnh_stream.ingest.watch import FolderWatcher
from xnh_stream.state.journal import PROCESSED, QUARANTINED, RECEIVED, FrameJournal, frame_id_of
from xnh_stream.state.journal import FrameRecord as JournalEntry
from xnh_stream.live.views import merge_views, slab_views
from xnh_stream.quality.alerts import CallbackSink, default_router
from xnh_stream.quality.monitor import QualityMonitor
from xnh_stream.chain.batch import ChainResult, delta_beta_of, process_scan
from xnh_stream.state.store import DistanceStore
from xnh_stream.physics.xp import bin_2d, binning_for

log = logging.getLogger(__name__)

#: Columns of the live volume when ``live_binning`` is 0 (auto): larger frames are binned to about this.
LIVE_COLUMNS = 512

#: An actor that dies is restarted this many times, then the stream fails loudly.
MAX_RESTARTS = 3
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

    def project(self, work: AngleWork, models: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """The projection of ``work`` (binned for the live volume); for final work also the preview it
        replaces (recomputed)."""
        final, previous = self._project(work, models)
        return bin_2d(final, self.binning), None if previous is None else bin_2d(previous, self.binning)

    def _project(self, work: AngleWork, models: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        if self._proc is None or self._proc.geometry != work.geometry:
            self._proc = AngleProcessor(work.geometry, self.shape, self.delta_beta, self.config)
        self._proc.models = models if len(models) == len(work.geometry.distances) else [None] * len(models)
        if work.kind == "preview":
            ((k, frame),) = work.frames.items()
            return self._proc.preview(k, frame, work.theta_deg), None
        final = self._proc.ctf(work.frames, work.theta_deg)
        k = work.preview_distance
        previous = self._proc.preview(k, work.frames[k], work.theta_deg) if k is not None else None
        return final, previous


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **CONTROL)
class ReconShard:
    """A slab of rows of the live volume (two half-volumes for FSC)."""

    def __init__(self, frame_shape: tuple[int, int], rows: tuple[int, int], cor: float, window: str,
                 padding: str) -> None:
        ny, nx = frame_shape
        self.rows = slice(*rows)
        self.vol = ProgressiveVolume(ny, nx, cor=cor, window=window, padding=padding, rows=self.rows)
        self._incarnation = uuid.uuid4().hex  # a restarted actor (empty volume) has a new one

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor: its volume is then empty and must be replayed."""
        return self._incarnation

    def add(self, index: int, theta_rad: float, result: tuple[np.ndarray, np.ndarray | None], final: bool) -> int:
        """Back-project one projection (previews are not kept: finals carry the preview they replace)."""
        projection, previous = result
        state = self.vol.state(index)
        if state == "final":
            return self.vol.n_final  # a stale preview, or a final already replayed/retried: nothing to do
        if final and state is None:  # the final overtook its preview, which will be dropped when it comes
            self.vol.add(index, theta_rad, projection, final=True)
        else:
            self.vol.add(index, theta_rad, projection, final=final, previous=previous)
        self.vol.forget_preview(index)
        return self.vol.n_final

    def volume(self) -> tuple[int, np.ndarray]:
        """First row and the slab's current volume."""
        return self.rows.start, np.asarray(self.vol.volume())

    def progress(self) -> dict[str, int]:
        """Angles in the slab as preview and as final."""
        return {"preview": self.vol.n_preview, "final": self.vol.n_final}

    def views(self, n_rows: int, fsc_bin: int, region_px: int) -> dict[str, Any]:
        """Small pieces of the slab for the running FSC and the live page (:func:`slab_views`)."""
        if min(self.vol.acc.counts) < 1:  # nothing in one half yet (a new or rebuilt slab)
            return {"r0": self.rows.start, "empty": True}
        h0, h1 = self.vol.half_volumes()
        return slab_views(h0, h1, self.vol.volume(), self.rows.start, n_rows, fsc_bin, region_px)


class WatcherSource:
    """Frames of a scan folder as a :class:`FolderWatcher` finds them, with the end-of-scan rule.

    The scan is finished when ``n_distances`` distances have shown their return projections (taken at the
    end of each distance), no file is still being written, and nothing new arrived for ``quiet_s``.

    Parameters
    ----------
    watcher : FolderWatcher
        The folder's watcher.
    n_distances : int
        Distances of the scan.
    quiet_s : float
        Idle time after the last frame before the scan counts as finished.
    """

    def __init__(self, watcher: FolderWatcher, n_distances: int = 4, quiet_s: float = 3.0) -> None:
        self.watcher, self.n_distances, self.quiet_s = watcher, n_distances, quiet_s
        self._returns: set[float] = set()
        self._last = time.monotonic()

    def poll(self) -> list[tuple[Any, np.ndarray]]:
        """New frames with their pixels."""
        records = self.watcher.poll()
        if records:
            self._last = time.monotonic()
        out = []
        for rec in records:
            if rec.is_return:
                self._returns.add(rec.distance_key)
            out.append((rec, rec.read()))
        return out

    def drain_quarantine(self) -> list[Any]:
        """Files the watcher set aside since the last call."""
        return self.watcher.drain_quarantine()

    def finished(self) -> bool:
        """All distances done, nothing pending, and quiet for ``quiet_s``."""
        return (len(self._returns) >= self.n_distances and not self.watcher.pending_files()
                and time.monotonic() - self._last >= self.quiet_s)


class FrameSource(Protocol):
    """Where frames come from (a folder watcher, a list in tests)."""

    def poll(self) -> list[tuple[Any, np.ndarray]]:
        """New complete frames as ``(record, pixels)``; each frame once."""

    def finished(self) -> bool:
        """True once the scan's last frame has been delivered."""


# --- instrumentation (metrics): figures added to the on_progress dictionary ------------------------------
class _Instruments:
    """Stage latencies, restarts, store size and cluster resources of one stream, for ``on_progress``.

    Latency samples accumulate between two progress calls and are handed out once (``latency_s``: {stage:
    [seconds]}); the slow figures (store size on disk, cluster resources) are refreshed every ``slow_s``.
    """

    def __init__(self, slow_s: float = 5.0) -> None:
        self.samples: dict[str, list[float]] = {}
        self.landed_preview: dict[str, float] = {}  # projection frame id -> time it was handed to the stream
        self.landed_final: dict[str, float] = {}
        self.restarts = {"phase_worker": 0, "recon_shard": 0}  # restarts noticed, per actor kind
        self.slow_s, self._slow_at, self._slow = slow_s, -float("inf"), {}

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

    def snapshot(self, store: DistanceStore | None) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._slow_at >= self.slow_s:
            self._slow_at = now
            self._slow = {"cluster": _cluster_state()}
            if store is not None:
                self._slow["store_bytes"] = store.nbytes_on_disk()
        samples, self.samples = self.samples, {}
        return {**self._slow, "latency_s": samples, "restarts": dict(self.restarts)}


def _cluster_state() -> dict[str, Any]:
    """Nodes, CPUs and object store memory of the Ray cluster (total and available)."""
    total, avail = ray.cluster_resources(), ray.available_resources()
    return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus_total": total.get("CPU", 0.0),
            "cpus_available": avail.get("CPU", 0.0),
            "object_store_total_bytes": total.get("object_store_memory", 0.0),
            "object_store_available_bytes": avail.get("object_store_memory", 0.0)}
# --- end of instrumentation ---------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What :func:`run_stream` produced."""

    final: ChainResult | None
    live_volume: np.ndarray | None
    counts: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    live_binning: int = 1  # the live volume's voxel is this many final voxels


def run_stream(source: FrameSource, scan_folder: Path, out: Path, config: ProcessConfig, n_distances: int = 4,
               n_workers: int = 2, n_shards: int = 2, max_in_flight: int = 8, poll_interval_s: float = 0.2,
               on_progress: Callable[[dict[str, Any]], None] | None = None,
               subscribers: tuple[Callable[[dict[str, Any]], None], ...] = (), timeout_s: float | None = None,
               final_pass: bool = True, on_result: Callable[[AngleWork], None] | None = None,
               live_page: Any | None = None, quality_every_s: float = 5.0) -> StreamResult:
    """Process a running scan as its frames arrive; at completion write the final outputs.

    Parameters
    ----------
    source : FrameSource
        Gives ``(record, pixels)`` of complete frames.
    scan_folder : Path
        The scan's folder (the final pass runs the batch chain on it).
    out : Path
        Output folder: ``journal.sqlite``, ``store/`` (flat-fielded frames), ``volume.ome.zarr``,
        ``report.json``.
    config : ProcessConfig
        Processing options.
    n_distances, n_workers, n_shards, max_in_flight : int
        Scan distances, phase workers, reconstruction shards, phase tasks in flight (backpressure).
    on_progress : callable, optional
        Called with a progress dictionary after each poll.
    subscribers : callables
        Called with the ``scan_complete`` event (segmentation subscribes here).
    timeout_s : float, optional
        Give up waiting for frames after this long (the scan is reported incomplete).
    final_pass : bool
        Run the batch chain at completion (the exact final volume).
    on_result : callable, optional
        Called with each work item once its projection is in every shard (latency measurements).
    live_page : LivePage, optional
        The live page (:class:`xnh_stream.live.LivePage`) to publish progress, quality and images to.
    quality_every_s : float
        How often the running FSC and the live images are refreshed from the shards (every progress
        dictionary carries the latest ``quality`` figures of the :class:`QualityMonitor`).

    Returns
    -------
    StreamResult
    """
    out.mkdir(parents=True, exist_ok=True)
    journal = FrameJournal(out / "journal.sqlite")
    # A restart after a crash: frames the journal already has are fed to the assembler again (it rebuilds
    # calibration and the live volume from them) but not journaled again, so nothing is counted twice.
    known = journal.known_ids()
    if known:
        log.info("resuming: the journal already knows %d frames", len(known))
    assembler: ScanAssembler | None = None
    workers: list[Any] = []
    shards: list[Any] = []
    in_flight: dict[Any, AngleWork] = {}
    delta_beta = config.delta_beta
    started = time.monotonic()
    n_done = 0

    cor_known = config.cor is not None
    live_binning = 1
    instruments = _Instruments()  # metrics
    dispatched_at: dict[Any, float] = {}  # metrics: phase task -> dispatch time
    # --- quality (xnh_stream.quality): fed every frame; alerts to the log, the journal, the webhook ---
    monitor = QualityMonitor(config, str(Path(scan_folder).resolve()), router=default_router(
        config, extra=[CallbackSink(lambda a: journal.emit("alert", a.as_dict(), key=f"alert:{a.name}:{a.severity}"))],
        generator_url=getattr(live_page, "url", "")))
    quality_at = -float("inf")
    last_final: list[Any] = []  # [angle, result ref] of the latest final (CTF) projection: the live phase map

    def update_quality(status: str) -> dict[str, Any]:
        """Running FSC from the shards' pieces, live images, and the monitor's snapshot (to the live page)."""
        images: dict[str, Any] = {}
        state = assembler.state()
        if shards and state["angles_seen"] >= 4:
            n_rows = assembler.shape[0] // live_binning
            views = merge_views(ray.get([s.views.remote(n_rows, config.fsc_bin, config.fsc_region_px)
                                         for s in shards]))
            voxel = assembler.geometry.voxel_m * live_binning
            if "binned" in views or "region" in views:
                monitor.add_fsc(n_angles=state["angles_seen"], binned=views.get("binned"),
                                region=views.get("region"), voxel_m=voxel)
            images = views["images"]
        extra = {}
        if last_final:
            images["phase"] = -np.asarray(ray.get(last_final[1])[0])  # phase = -k voxel * projected delta
            extra["phase_angle_deg"] = last_final[0]
        quality = monitor.snapshot()
        if live_page is not None:
            live_page.publish({**state, **extra, "status": status, "quality": quality}, images)
        return quality

    def make_shards(cor: float) -> list[Any]:
        # the live volume is binned: full-resolution quality comes from the final pass
        ny, nx = assembler.shape[0] // live_binning, assembler.shape[1] // live_binning
        edges = np.linspace(0, ny, n_shards + 1).round().astype(int)
        return [ReconShard.remote((ny, nx), (int(a), int(b)), (cor + 0.5) / live_binning - 0.5, config.fbp_window,
                                  config.fbp_padding)
                for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def dispatch(work: AngleWork, targets: list[Any] | None = None) -> None:
        nonlocal n_done
        while len(in_flight) >= max_in_flight:  # backpressure: wait for a slot
            drain(block=True)
        worker = workers[n_done % len(workers)]
        n_done += 1
        ref = worker.project.remote(work, assembler.shift_models())
        in_flight[ref] = (work, targets)
        dispatched_at[ref] = time.monotonic()

    adding: deque[tuple[AngleWork, list[Any], float]] = deque()  # projections being back-projected, in order
    incarnations: dict[Any, str] = {}

    def check_restarts() -> None:
        """Count the actors Ray restarted. A restarted shard lost its slab: replay every angle into it from
        the frames on disk (a restarted phase worker needs nothing: Ray retries the tasks it held)."""
        if not shards:
            return
        current = ray.get([a.incarnation.remote() for a in (*workers, *shards)])
        for actor, inc in zip((*workers, *shards), current):
            if incarnations.setdefault(actor, inc) == inc:
                continue
            incarnations[actor] = inc
            if actor in workers:
                log.warning("a phase worker was restarted; Ray retries the tasks it held")
                instruments.restarts["phase_worker"] += 1
                continue
            log.warning("a reconstruction shard was restarted; replaying its angles from the store")
            instruments.restarts["recon_shard"] += 1
            for work in assembler.replay():
                dispatch(work, targets=[actor])

    def settle(all_of_them: bool = False) -> None:
        """Book the work whose back-projection finished (oldest first); wait while too much is queued."""
        while adding:
            work, refs, t_added = adding[0]
            must_wait = all_of_them or len(adding) > 2 * max_in_flight
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if must_wait else 0)
            if len(ready) < len(refs):
                return
            ray.get(refs)  # raise a shard's error here
            adding.popleft()
            now = time.monotonic()
            instruments.sample("backprojection", now - t_added)
            instruments.booked(work, now)
            if work.kind == "final":
                journal.mark_many(work.frame_ids, PROCESSED, stage="phase")
            if on_result:
                on_result(work)

    def drain(block: bool) -> None:
        if in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1 if block else len(in_flight),
                                timeout=None if block else 0)
            for ref in ready:  # every shard takes the projection by reference; Ray keeps per-caller order
                work, targets = in_flight.pop(ref)
                if work.kind == "final":
                    last_final[:] = [work.theta_deg, ref]
                now = time.monotonic()
                instruments.sample("phase_preview" if work.kind == "preview" else "phase_ctf",
                                   now - dispatched_at.pop(ref, now))
                theta = float(np.deg2rad(work.theta_deg))
                adding.append((work, [s.add.remote(work.index, theta, ref, work.kind == "final")
                                      for s in (targets or shards)], now))
        settle()

    while True:
        batch = source.poll()
        t_landed = time.monotonic()
        for rec, _ in batch:
            if rec.image_key == 0 and rec.image_key_control == 0:
                instruments.landed(rec.frame_id, t_landed)
        for q in getattr(source, "drain_quarantine", lambda: [])():
            fid = f"{q.file_id}#file"
            journal.receive(fid, stage="ingest")
            journal.quarantine(fid, q.reason, stage="ingest")
        # One journal transaction per poll: arrivals first, then what became of them.
        journal.record_many(JournalEntry(rec.frame_id, RECEIVED, image_key=rec.image_key,
                                         angle_deg=rec.rotation_angle_deg) for rec, _ in batch
                            if rec.frame_id not in known)
        quarantined: dict[str, str] = {}
        used_on_arrival: list[str] = []
        for rec, pixels in batch:
            if assembler is None:
                ny, nx = np.asarray(pixels).shape
                assembler = ScanAssembler(n_distances, (ny, nx), delta_beta_align=config.align_delta_beta,
                                          align_bin_px=max(1, min(ny, nx) // 256),
                                          store=DistanceStore(out / "store", (ny, nx)))
                if delta_beta is None:
                    delta_beta = delta_beta_of(config.sample_formula, config.sample_density, rec.geometry.energy_kev)
                live_binning = config.live_binning or binning_for((ny, nx), LIVE_COLUMNS)
                workers = [PhaseWorker.remote((ny, nx), delta_beta, config.to_dict(), live_binning)
                           for _ in range(n_workers)]
                shards = make_shards(config.cor if config.cor is not None else (nx - 1) / 2)
            n_quarantined = len(assembler.quarantined)
            try:
                works = assembler.add(rec, pixels)
            except (ValueError, ArithmeticError) as exc:  # one unusable frame must not end the scan
                log.error("frame %s set aside: %s", rec.frame_id, exc)
                assembler.quarantined.append((rec.frame_id, f"could not be assembled: {exc}"))
                works = []
            quarantined.update(assembler.quarantined[n_quarantined:])
            if (rec.image_key != 0 or rec.image_key_control != 0) and rec.frame_id not in quarantined:
                used_on_arrival.append(rec.frame_id)  # darks, flats, return projections: used on arrival
            for work in works:
                dispatch(work)
            if rec.frame_id not in quarantined:
                try:
                    monitor.add_frame(rec, pixels)
                except (ValueError, OSError) as exc:  # quality figures must not stop the reconstruction
                    log.error("quality monitor: frame %s not used: %s", rec.frame_id, exc)
        if quarantined:
            journal.mark_many(list(quarantined), QUARANTINED, stage="assemble", reasons=list(quarantined.values()))
        if used_on_arrival:
            journal.mark_many(used_on_arrival, PROCESSED, stage="assemble")
        if not cor_known and assembler is not None and (pair := assembler.cor_pair()) is not None:
            # The first 0/180 degree pair of the reference distance: estimate the rotation axis and rebuild
            # the live volume around it from the frames on disk (once).
            cor_known = True
            cor = float(estimate_cor(*pair))
            log.info("live centre of rotation %.2f px; rebuilding the live volume", cor)
            while in_flight:
                drain(block=True)
            settle(all_of_them=True)
            for s in shards:
                ray.kill(s)
            shards = make_shards(cor)
            for work in assembler.replay():
                dispatch(work)
        drain(block=False)
        check_restarts()
        quality = None
        if assembler is not None:
            if time.monotonic() - quality_at >= quality_every_s:
                quality_at = time.monotonic()
                quality = update_quality("streaming")
            else:
                quality = monitor.snapshot()
                if live_page is not None:
                    live_page.publish({**assembler.state(), "status": "streaming", "quality": quality})
        if on_progress and assembler is not None:
            on_progress({**assembler.state(), "journal": journal.counts(), "in_flight": len(in_flight),
                         "actors": {"shards": list(shards), "workers": list(workers)},
                         "queues": {"phase_in_flight": len(in_flight), "backprojection": len(adding)},
                         **instruments.snapshot(assembler.store), "quality": quality})
        if source.finished() and not batch:
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            log.error("stream: no end of scan after %.0f s; stopping with what arrived", timeout_s)
            break
        if not batch:
            time.sleep(poll_interval_s)
    while in_flight:
        drain(block=True)
    settle(all_of_them=True)
    check_restarts()
    while in_flight:
        drain(block=True)
    settle(all_of_them=True)

    live = None
    if shards:
        parts = sorted(ray.get([s.volume.remote() for s in shards]), key=lambda p: p[0])
        live = np.concatenate([p[1] for p in parts], axis=0)
    quality = update_quality("final pass") if assembler is not None else None
    final = None
    if final_pass and source.finished():
        final = process_scan(scan_folder, out, config, monitor=monitor)
        quality = monitor.snapshot()
        # Frames the live path could not finish (an angle missing at some distance) are accounted for by
        # the final pass: processed there, or quarantined with the batch chain's reason.
        batch_quarantine = {frame_id_of(q["file"], q["index"], root=scan_folder): q["reason"]
                            for q in final.report["frames"]["quarantine"] if q["index"] is not None}
        for rec in journal.pending():
            if rec.frame_id in batch_quarantine:
                journal.quarantine(rec.frame_id, batch_quarantine[rec.frame_id], stage="final")
            else:
                journal.processed(rec.frame_id, stage="final")
        event = journal.emit("scan_complete", {"scan": str(scan_folder), "out": str(out),
                                               "resolution_m": final.report["fsc"]["resolution_m"]},
                             key=str(scan_folder))
        for callback in subscribers:
            callback({"event": "scan_complete", "id": event, "scan": str(scan_folder), "out": str(out)})
    monitor.close()
    if live_page is not None and assembler is not None:
        live_page.publish({**assembler.state(), "status": "complete" if final is not None else "stopped",
                           "quality": quality, "phase_angle_deg": last_final[0] if last_final else None})
    if on_progress and assembler is not None:  # metrics: the final account (every frame booked)
        on_progress({**assembler.state(), "journal": journal.counts(), "in_flight": 0,
                     "actors": {"shards": list(shards), "workers": list(workers)},
                     "queues": {"phase_in_flight": 0, "backprojection": 0}, **instruments.snapshot(None),
                     "quality": quality})
    counts = journal.counts()
    events = journal.events()
    journal.close()
    return StreamResult(final, live, counts, events, live_binning)

