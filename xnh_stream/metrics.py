"""Prometheus metrics of the whole pipeline: one exporter, fed by the live stream and the overnight queue.

:class:`PipelineMetrics` owns its own :class:`prometheus_client.CollectorRegistry` (nothing leaks into the
process-global default registry, so several exporters can live in one process, e.g. in tests). It is fed
by plain dictionaries:

* :meth:`PipelineMetrics.update` takes the :class:`~xnh_stream.chain.report.StreamProgress` that the live
  stream (:class:`xnh_stream.live.driver.LiveDriver`) reports after each poll (journal counts, queue depths, latency
  samples, actor restarts, store size, cluster resources and, when present, the ``quality`` figures: FSC,
  dose, drift, warping, alerts);
* :meth:`PipelineMetrics.observe_report` takes a finished scan's ``report.json`` content (batch chain);
* the ``overnight_*`` methods follow the overnight queue.

Names follow ``docs/contracts.md`` ("Metrics"): ``xnh_<noun>_<unit>`` in base units (seconds, metres,
bytes, gray), ``_total`` on counters, low label cardinality (labels: ``stage``, ``queue``, ``kind``,
``state``, ``distance`` = 1..4, alert ``name`` and ``severity``; never a scan id). The full list with meanings is in ``docs/metrics.md``.

Counters are fed from the cumulative counts of a scan (the journal's): each update adds the increase since
the previous one; call :meth:`PipelineMetrics.new_scan` between scans processed by the same exporter.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import start_http_server

from .chain.report import StreamProgress
from .io.names import REPORT_NAME

log = logging.getLogger(__name__)

#: Per-stage latency buckets (s): from a small frame's Paganin preview to a 2048-px CTF under load.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Overnight per-scan duration buckets (s): a test scan (seconds) to a full-size reprocessing (hours).
SCAN_DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)

#: Stages whose latency the stream reports (``progress["latency_s"]`` keys).
STAGES = ("phase_waiting", "phase_preview", "phase_ctf", "backprojection", "landing_to_preview", "landing_to_slices",
          "landing_to_final")
#: Queues whose depth the stream reports.
QUEUES = ("phase_waiting", "phase_in_flight", "backprojection", "waiting_for_flats")


class PipelineMetrics:
    """The pipeline's Prometheus exporter (its own registry; see the module docstring).

    Parameters
    ----------
    process_metrics : bool
        Also export the standard ``process_*`` figures of this process (CPU seconds, resident memory, open
        files) in the same registry.

    Examples
    --------
    >>> m = PipelineMetrics(process_metrics=False)
    >>> m.update({"journal": {"received": 10, "processed": 8, "quarantined": 1, "pending": 1}})
    >>> b"xnh_frames_received_total 10.0" in m.exposition()
    True
    """

    def __init__(self, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._alerts: set[tuple[str, str]] = set()
        self._server: Any = None
        r = self.registry
        # --- frames (the journal's counts) ------------------------------------------------------------
        self.frames_received = Counter("xnh_frames_received", "Frames received (distinct frames handed to "
                                       "the pipeline, every image key).", registry=r)
        self.frames_processed = Counter("xnh_frames_processed", "Frames processed (used in the volume, or "
                                        "darks/flats/return projections used on arrival).", registry=r)
        self.frames_quarantined = Counter("xnh_frames_quarantined", "Frames set aside with a reason.",
                                          registry=r)
        self.frames_duplicate = Counter("xnh_frames_duplicate", "Repeated arrivals of a frame already "
                                        "received (not processed twice).", registry=r)
        self.frames_pending = Gauge("xnh_frames_pending", "Frames received and not yet processed or "
                                    "quarantined.", registry=r)
        self.distance_frames = Gauge("xnh_distance_frames", "Frames received at each distance in the "
                                     "current scan (1 = most magnified).", ["distance"], registry=r)
        self.angles = Gauge("xnh_angles", "Angles of the current scan: seen (at any distance) and final "
                            "(four-distance CTF in the live volume).", ["state"], registry=r)
        # --- stream internals ----------------------------------------------------------------------------
        self.latency = Histogram("xnh_stage_latency_seconds", "Latency of a pipeline stage per work item: "
                                 "phase_waiting (queued for a phase worker), phase_preview / phase_ctf (phase "
                                 "retrieval on a worker), backprojection (into every shard), landing_to_preview"
                                 " / landing_to_slices / landing_to_final (frame handed to the stream to its "
                                 "projection in the live slices / the live volume).", ["stage"],
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue = Gauge("xnh_queue_items", "Work items waiting or in flight, per queue.", ["queue"],
                           registry=r)
        self.behind = Gauge("xnh_stream_behind_seconds", "How long the oldest final (CTF) work has waited "
                            "for a phase worker: how far the live slices are behind the detector.", registry=r)
        self.previews_skipped = Counter("xnh_previews_skipped", "Paganin previews skipped: superseded (their "
                                        "angle's final was queued) or late (stream.preview_deadline_s).",
                                        ["reason"], registry=r)
        self.finals_coarse = Counter("xnh_finals_coarse", "Final (CTF) work computed on frames binned twice "
                                     "because it waited longer than stream.coarse_after_s (the stream was "
                                     "behind).", registry=r)
        self.store = Gauge("xnh_store_bytes", "Size on disk of the distance store (flat-fielded frames).",
                           registry=r)
        self.actors = Gauge("xnh_actors", "Ray actors of the stream, per kind.", ["kind"], registry=r)
        self.restarts = Counter("xnh_actor_restarts", "Actor restarts noticed by the stream (each one is "
                                "replayed from the store).", ["kind"], registry=r)
        self.cluster_nodes = Gauge("xnh_cluster_nodes", "Alive nodes of the Ray cluster.", registry=r)
        self.cluster_cpus = Gauge("xnh_cluster_cpus", "CPUs of the Ray cluster: total and available.",
                                  ["state"], registry=r)
        self.cluster_store = Gauge("xnh_cluster_object_store_bytes", "Ray object store memory: total and "
                                   "available.", ["state"], registry=r)
        self.progress_time = Gauge("xnh_progress_timestamp_seconds", "Unix time of the last progress update "
                                   "(a stalled pipeline stops advancing it).", registry=r)
        self.scans_completed = Counter("xnh_scans_completed", "Scans completed (scan_complete events).",
                                       registry=r)
        # --- quality ----------------------------------------------------------------------------------
        self.fsc_resolution = Gauge("xnh_fsc_resolution_meters", "FSC resolution between the half-volumes "
                                    "(half-bit threshold, half-period); NaN before it can be measured.",
                                    registry=r)
        self.fsc_edge = Gauge("xnh_fsc_edge_resolution_meters", "Edge-fit (erf) resolution, the FSC's "
                              "cross-check.", registry=r)
        self.fsc_fraction = Gauge("xnh_fsc_angles_ratio", "Fraction of the scan's angles in the running "
                                  "FSC estimate.", registry=r)
        self.dose = Gauge("xnh_dose_gray", "Dose per distance of the current scan.", ["distance"], registry=r)
        self.dose_scan = Gauge("xnh_dose_scan_gray", "Dose of the current scan, all distances.", registry=r)
        self.dose_sample = Gauge("xnh_dose_sample_gray", "Dose the sample has received, accumulated over "
                                 "repeated scans of it.", registry=r)
        self.drift_return = Gauge("xnh_drift_return_pixels", "Shift of the return projections against the "
                                  "same angles at the start of the distance.", ["distance"], registry=r)
        self.drift_return_m = Gauge("xnh_drift_return_meters", "Return-projection shift in the sample "
                                    "plane.", ["distance"], registry=r)
        self.drift_inter = Gauge("xnh_drift_inter_distance_pixels", "Shift of a distance against the others "
                                 "at the same angle after rescale.", ["distance"], registry=r)
        self.warp_rigid = Gauge("xnh_warp_rigid_pixels", "Rigid part of the patch-wise shift field.",
                                registry=r)
        self.warp_scale = Gauge("xnh_warp_scale_ratio", "Scale part of the patch-wise shift field (as "
                                "reported by the quality figures).", registry=r)
        self.warp_nonrigid = Gauge("xnh_warp_nonrigid_pixels", "Non-rigid warp: residual of the patch-wise "
                                   "shift field after rigid shift and scale.", registry=r)
        self.warp_nonrigid_m = Gauge("xnh_warp_nonrigid_meters", "Non-rigid warp in the sample plane.",
                                     registry=r)
        self.alerts = Gauge("xnh_alerts_firing", "Alerts the pipeline itself raises (1 firing, 0 cleared).",
                            ["name", "severity"], registry=r)
        # --- overnight queue ----------------------------------------------------------------------------
        self.overnight_queue = Gauge("xnh_overnight_queue_scans", "Finished scans waiting in the overnight "
                                     "queue (this pass).", registry=r)
        self.overnight_running = Gauge("xnh_overnight_running_scans", "Scans being processed now.",
                                       registry=r)
        self.overnight_waiting = Gauge("xnh_overnight_waiting_scans", "Scan folders whose files are not "
                                       "finished yet (left for a later pass).", registry=r)
        self.overnight_done = Counter("xnh_overnight_scans_done", "Scans the overnight queue processed.",
                                      registry=r)
        self.overnight_flagged = Counter("xnh_overnight_scans_flagged", "Scans processed whose distances "
                                         "do not show one sample (ImplausibleProjections): a report, not a "
                                         "volume to trust.", registry=r)
        self.overnight_failed = Counter("xnh_overnight_scans_failed", "Scans that failed (recorded; the queue "
                                        "went on).", registry=r)
        self.overnight_skipped = Counter("xnh_overnight_scans_skipped", "Scans skipped: their "
                                         "report.json exists (resume), or their files make no scan.",
                                         registry=r)
        self.overnight_duration = Histogram("xnh_overnight_scan_duration_seconds", "Wall time to process one "
                                            "scan (done or failed).", buckets=SCAN_DURATION_BUCKETS_S,
                                            registry=r)
        if process_metrics:
            ProcessCollector(registry=r)
        # Series that exist from the start (a dashboard shows 0, not "no data").
        for s in STAGES:
            self.latency.labels(stage=s)
        for q in QUEUES:
            self.queue.labels(queue=q).set(0)
        for kind in ("phase_worker", "recon_shard"):
            self.restarts.labels(kind=kind)
        for reason in ("superseded", "late"):
            self.previews_skipped.labels(reason=reason)
        self._unmeasured()

    # ------------------------------------------------------------------ feeding
    def _unmeasured(self) -> None:
        """Figures not measured yet are NaN (a comparison in an alert rule is then false, not 0 > x)."""
        for g in (self.fsc_resolution, self.fsc_edge, self.warp_rigid, self.warp_scale, self.warp_nonrigid,
                  self.warp_nonrigid_m):
            g.set(math.nan)

    def new_scan(self) -> None:
        """Start counting a new scan: cumulative counts restart from zero, per-scan gauges are cleared."""
        with self._lock:
            self._last.clear()
            for g in (self.distance_frames, self.dose, self.drift_return, self.drift_return_m, self.drift_inter):
                g.clear()
            self._unmeasured()

    def _advance(self, counter: Any, key: str, value: float | None) -> None:
        """Add the increase of a cumulative count since the last call (a decrease means a new count)."""
        if value is None:
            return
        last = self._last.get(key, 0.0)
        value = float(value)
        counter.inc(value - last if value >= last else value)
        self._last[key] = value

    def update(self, progress: StreamProgress) -> None:
        """Take one progress report of the live stream (:class:`~xnh_stream.chain.report.StreamProgress`)."""
        with self._lock:
            j = progress.journal
            if j:
                self._advance(self.frames_received, "received", j.get("received"))
                self._advance(self.frames_processed, "processed", j.get("processed"))
                self._advance(self.frames_quarantined, "quarantined", j.get("quarantined"))
                self._advance(self.frames_duplicate, "duplicates", j.get("duplicates"))
                if j.get("pending") is not None:
                    self.frames_pending.set(j["pending"])
            for n, d in enumerate(progress.distances):
                self.distance_frames.labels(distance=str(n + 1)).set(d.frames)
            self.angles.labels(state="seen").set(progress.angles_seen)
            self.angles.labels(state="final").set(progress.angles_final)
            for q, v in progress.queues.items():
                self.queue.labels(queue=q).set(v)
            self.behind.set(progress.behind_s)
            for reason, n in progress.previews_skipped.items():
                self._advance(self.previews_skipped.labels(reason=reason), f"previews_skipped:{reason}", n)
            self._advance(self.finals_coarse, "finals_coarse", progress.finals_coarse)
            for stage, samples in progress.latency_s.items():
                h = self.latency.labels(stage=stage)
                for s in samples:
                    h.observe(s)
            for kind, n in progress.restarts.items():
                self._advance(self.restarts.labels(kind=kind), f"restarts:{kind}", n)
            if progress.store_bytes is not None:
                self.store.set(progress.store_bytes)
            for kind, n in progress.actors.items():
                self.actors.labels(kind=kind).set(n)
            if progress.cluster:
                self._cluster(progress.cluster)
            if progress.quality:
                self._quality(progress.quality)
            self.progress_time.set(time.time())

    def _cluster(self, c: Mapping[str, Any]) -> None:
        if c.get("nodes") is not None:
            self.cluster_nodes.set(c["nodes"])
        for state in ("total", "available"):
            if (v := c.get(f"cpus_{state}")) is not None:
                self.cluster_cpus.labels(state=state).set(v)
            if (v := c.get(f"object_store_{state}_bytes")) is not None:
                self.cluster_store.labels(state=state).set(v)

    def _quality(self, q: Mapping[str, Any]) -> None:
        if f := q.get("fsc"):
            self.fsc_resolution.set(_num(f.get("resolution_m")))
            self.fsc_edge.set(_num(f.get("edge_resolution_m")))
            if f.get("fraction_angles") is not None:
                self.fsc_fraction.set(f["fraction_angles"])
        if d := q.get("dose"):
            _per_distance(self.dose, d.get("per_distance_gray"))
            if d.get("gray_total") is not None:
                self.dose_scan.set(d["gray_total"])
            if d.get("sample_gray") is not None:
                self.dose_sample.set(d["sample_gray"])
        if d := q.get("drift"):
            _per_distance(self.drift_return, d.get("return_px"))
            _per_distance(self.drift_return_m, d.get("return_m"))
            _per_distance(self.drift_inter, d.get("inter_distance_px"))
        if w := q.get("warp"):
            for gauge, key in ((self.warp_rigid, "rigid_px"), (self.warp_scale, "scale"),
                               (self.warp_nonrigid, "nonrigid_px"), (self.warp_nonrigid_m, "nonrigid_m")):
                if key in w:
                    gauge.set(_num(w[key]))
        if "alerts" in q:
            self._set_alerts(q["alerts"] or [])

    def _set_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        firing = {(str(a["name"]), str(a.get("severity", "warning"))) for a in alerts}
        for name, severity in self._alerts - firing:
            self.alerts.labels(name=name, severity=severity).set(0)
        for name, severity in firing:
            self.alerts.labels(name=name, severity=severity).set(1)
        self._alerts |= firing

    def observe_report(self, report: Mapping[str, Any], frames: bool = True) -> None:
        """Take a finished scan's report (``report.json`` of the batch chain): frames, FSC, dose, alerts.

        With ``frames`` the report's frame counts are added to the counters (a report is one scan's final
        account); the live stream, whose journal already counted them, passes False.
        """
        with self._lock:
            fr = (report.get("frames") or {}) if frames else {}
            for counter, key in ((self.frames_received, "received"), (self.frames_processed, "processed"),
                                 (self.frames_quarantined, "quarantined")):
                if fr.get(key) is not None:
                    counter.inc(fr[key])
            fsc = report.get("fsc") or {}
            self.fsc_resolution.set(_num(fsc.get("resolution_m")))
            self.fsc_edge.set(_num((report.get("edge") or {}).get("resolution_m")))
            self.fsc_fraction.set(1.0)
            dose = report.get("dose") or {}
            if dose.get("gray") is not None:
                self.dose_scan.set(dose["gray"])
            _per_distance(self.dose, dose.get("per_distance_gray"))
            self._set_alerts(report.get("alerts") or [])
            self.progress_time.set(time.time())

    def scan_complete(self, event: Mapping[str, Any]) -> None:
        """Subscriber of the stream's ``scan_complete`` event: counts it and takes the final report's FSC,
        dose and alerts (``OUT/report.json``) when there is one."""
        if event.get("event") != "scan_complete":
            return
        self.scans_completed.inc()
        report = Path(event["out"]) / REPORT_NAME if event.get("out") else None
        if report is not None and report.is_file():
            try:
                data = json.loads(report.read_text())
            except (OSError, ValueError) as exc:
                log.error("metrics: cannot read %s: %s", report, exc)
                return
            self.observe_report(data, frames=False)

    # ------------------------------------------------------------------ overnight queue
    def overnight_queue_length(self, n: int) -> None:
        """Scans still waiting in the current pass."""
        self.overnight_queue.set(n)

    def overnight_scan(self, status: str, duration_s: float | None = None) -> None:
        """Account one scan of the overnight queue: ``done``, ``flagged``, ``failed`` or ``skipped``."""
        counter = {"done": self.overnight_done, "flagged": self.overnight_flagged,
                   "failed": self.overnight_failed, "skipped": self.overnight_skipped}.get(status)
        if counter is None:
            raise ValueError(f"overnight scan status must be done, flagged, failed or skipped, not "
                             f"{status!r}")
        counter.inc()
        if duration_s is not None and status != "skipped":
            self.overnight_duration.observe(duration_s)
        self.progress_time.set(time.time())

    # ------------------------------------------------------------------ exposition
    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what a scrape returns)."""
        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP in a daemon thread; ``port=0`` picks a free port.

        Returns
        -------
        int
            The port served.

        Raises
        ------
        OSError
            If the address cannot be bound (the message names it).
        """
        if self._server is not None:
            raise RuntimeError("this exporter is already served")
        try:
            server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics endpoint: cannot listen on {address}:{port}: {exc.strerror}") from exc
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics served on http://%s:%d/metrics", address, bound)
        return bound

    def close(self) -> None:
        """Stop serving (if served)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _num(v: Any) -> float:
    """A figure, NaN where it is not measured yet (None)."""
    return math.nan if v is None else float(v)


def _per_distance(gauge: Gauge, values: Iterable[Any] | None) -> None:
    """Set ``gauge{distance="1".."K"}`` from a list (None entries become NaN)."""
    for n, v in enumerate(values or []):
        gauge.labels(distance=str(n + 1)).set(_num(v))
