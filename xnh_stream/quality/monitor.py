"""QualityMonitor: the quality figures of one scan, fed incrementally as frames arrive.

The stream (``xnh_stream/live/driver.py``) and the batch chain (``pipeline.py``) feed it the same way: every
frame's metadata with :meth:`QualityMonitor.add_frame` (pixels only where :meth:`wants_pixels` says so:
darks, flats, return projections and the projections at the drift angles), and the half-volumes with
:meth:`add_fsc`. :meth:`snapshot` returns the figures (the ``quality`` entry of the stream's progress and
of ``report.json``) and routes the alerts they raise.

Units: drift and warp in *reference pixels* (the voxel size, ``p / M`` of the most magnified distance)
and in metres; a return projection of distance k is compared with its start in that distance's own
pixels, and the result is scaled by ``scale_to_reference(k)``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..physics.align import register_lowpass_ncc, rescale_shift
from ..physics.dose import central_mean
from ..physics.flatfield import flat_field
from ..physics.geometry import DistanceGeometry, ScanGeometry
from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN
from ..physics.phase import retrieve_phase_paganin
from .alerts import AlertRouter, evaluate_alerts
from .dose import DoseAccount, DoseLedger
from .drift import WarpDecomposition, compare_views
from .fsc import RunningFSC

log = logging.getLogger(__name__)

__all__ = ["QualityMonitor", "FrameMeta"]


class FrameMeta(Protocol):
    """What the monitor reads of a frame record (ingest's FrameRecord and assembler's FrameInfo fit)."""

    image_key: int
    image_key_control: int
    rotation_angle_deg: float
    geometry: DistanceGeometry


@dataclass
class _Dist:
    geometry: DistanceGeometry
    dark_sum: np.ndarray | None = None
    n_dark: int = 0
    flat_sum: np.ndarray | None = None
    n_flat: int = 0
    last_key: int | None = None
    frames: int = 0
    projections: int = 0
    returns: int = 0
    starts: dict[float, np.ndarray] = field(default_factory=dict)  # drift angle -> flat-fielded projection
    phases: dict[float, np.ndarray] = field(default_factory=dict)  # drift angle -> Paganin phase on the ref grid
    return_results: list[dict[str, Any]] = field(default_factory=list)
    inter_results: list[dict[str, Any]] = field(default_factory=list)
    angles: set[float] = field(default_factory=set)

    @property
    def dark(self) -> np.ndarray | None:
        return None if self.dark_sum is None else self.dark_sum / self.n_dark

    @property
    def flat(self) -> np.ndarray | None:
        return None if self.flat_sum is None else self.flat_sum / self.n_flat


def _angle_key(theta: float) -> float:
    return round(float(theta), 3)


class QualityMonitor:
    """Running FSC, dose, drift and warping of one scan; see the module docstring.

    Parameters
    ----------
    config : ProcessConfig
        Composition, detector, dose and alert settings.
    scan_id : str
        Identifies the scan in the dose ledger (the scan folder).
    sample : str, optional
        Sample name for the ledger (default ``config.sample.name`` or the last part of ``scan_id``).
    router : AlertRouter, optional
        Where the alerts go at each :meth:`snapshot` (default: evaluated, not routed).
    drift_step_deg : float
        Projections at multiples of this angle are kept as the start views that return projections and
        the other distances are compared with (ID16A takes return projections at 180, 90 and 0 degrees).
    angle_tol_deg : float
        Angles closer than this are the same.
    angular_range_deg : float
        Range of the scan (180 or 360), for the fraction of angles received.
    ledger_every_s : float
        The ledger is rewritten at most this often during the scan (and at :meth:`close`).
    """

    def __init__(self, config: Any, scan_id: str, sample: str | None = None, router: AlertRouter | None = None,
                 drift_step_deg: float = 90.0, angle_tol_deg: float = 0.01, angular_range_deg: float = 180.0,
                 ledger_every_s: float = 30.0) -> None:
        self.config, self.scan_id = config, str(scan_id)
        self.sample = str(sample or config.sample.name or Path(self.scan_id).name or "sample")
        self.router = router
        self.drift_step, self.tol, self.range = float(drift_step_deg), float(angle_tol_deg), float(angular_range_deg)
        self._d: dict[float, _Dist] = {}
        self.dose: DoseAccount | None = None
        self.fsc: RunningFSC | None = None
        self.ledger = DoseLedger(config.dose.ledger) if config.dose.ledger else None
        self._previous_gray: float | None = None
        self.ledger_every_s, self._ledger_at = float(ledger_every_s), -math.inf
        self.latest_phase: tuple[float, np.ndarray] | None = None  # set by the stream (angle, phase map)

    # ------------------------------------------------------------------------------------- distances
    @property
    def geometry(self) -> ScanGeometry | None:
        """Geometry of the distances seen so far, by increasing z1."""
        keys = sorted(self._d)
        return ScanGeometry(tuple(self._d[k].geometry for k in keys)) if keys else None

    def _number(self, z: float) -> int:
        return sorted(self._d).index(z)

    def _is_drift_angle(self, theta: float) -> bool:
        r = math.remainder(float(theta), self.drift_step)
        return abs(r) <= max(self.tol, 1e-6)

    def wants_pixels(self, rec: FrameMeta) -> bool:
        """Whether :meth:`add_frame` needs this frame's pixels (the others may be passed as None)."""
        if rec.image_key in (DARK, FLAT) or rec.image_key_control == RETURN:
            return True
        if rec.image_key == PROJECTION and self._is_drift_angle(rec.rotation_angle_deg):
            d = self._d.get(round(rec.geometry.z1_m, 9))
            return d is None or _angle_key(rec.rotation_angle_deg) not in d.starts
        return False

    # ------------------------------------------------------------------------------------- frames
    def add_frame(self, rec: FrameMeta, pixels: Any | None) -> None:
        """Take one frame (any kind); pixels may be None where :meth:`wants_pixels` is False."""
        z = round(rec.geometry.z1_m, 9)
        d = self._d.get(z)
        if d is None:
            d = self._d[z] = _Dist(rec.geometry)
        if self.dose is None:
            c = self.config
            self.dose = DoseAccount(c.sample.formula, c.sample.density, rec.geometry.energy_kev, c.dose.detector_gain,
                                    c.dose.detector_efficiency, c.dose.dead_time_s)
        d.frames += 1
        key, control = int(rec.image_key), int(rec.image_key_control)
        count_time = float(getattr(rec, "count_time_s", math.nan))
        pix = rec.geometry.effective_pixel_m
        frame = None if pixels is None else np.asarray(pixels, dtype=np.float32)
        if key in (DARK, FLAT) and frame is None:
            raise ValueError(f"quality monitor: a {'dark' if key == DARK else 'flat'} frame needs its pixels")
        if key == DARK:
            d.dark_sum = frame.copy() if d.dark_sum is None else d.dark_sum + frame
            d.n_dark += 1
            self.dose.dark(z, pix, central_mean(d.dark))
        elif key == FLAT:
            if d.last_key != FLAT or d.flat_sum is None:  # a new flat series replaces the previous one
                d.flat_sum, d.n_flat = np.zeros_like(frame), 0
            d.flat_sum = d.flat_sum + frame
            d.n_flat += 1
            self.dose.flat(z, pix, central_mean(d.flat), count_time)
        elif key == PROJECTION and control == RETURN:
            d.returns += 1
            self.dose.expose(z, pix, count_time)
            if frame is not None:
                self._return(z, d, float(rec.rotation_angle_deg), frame)
        elif key == PROJECTION:
            d.projections += 1
            d.angles.add(_angle_key(rec.rotation_angle_deg))
            self.dose.expose(z, pix, count_time)
            if frame is not None and self._is_drift_angle(rec.rotation_angle_deg):
                self._start(z, d, float(rec.rotation_angle_deg), frame)
        d.last_key = key

    def _flat_fielded(self, d: _Dist, frame: np.ndarray) -> np.ndarray | None:
        if d.flat is None:
            return None
        dark = d.dark if d.dark is not None else np.zeros_like(frame)
        return flat_field(frame, dark, d.flat)

    def _bin(self, shape: tuple[int, ...]) -> int:
        return max(1, min(shape) // 256)

    def _start(self, z: float, d: _Dist, theta: float, frame: np.ndarray) -> None:
        a = _angle_key(theta)
        if a in d.starts:
            return
        ff = self._flat_fielded(d, frame)
        if ff is None:
            log.warning("quality: projection at %.2f deg of distance z1=%.6g m came before any flat; not kept "
                        "as a drift reference", theta, z)
            return
        d.starts[a] = ff
        self._inter_distance(a)

    def _return(self, z: float, d: _Dist, theta: float, frame: np.ndarray) -> None:
        ff = self._flat_fielded(d, frame)
        a = _angle_key(theta)
        start = next((img for ang, img in d.starts.items() if abs(ang - a) <= max(self.tol, 1e-3)), None)
        if ff is None or start is None:
            log.info("quality: return projection at %.2f deg of distance z1=%.6g m has no start view to compare "
                     "with", theta, z)
            return
        dec = self._compare(start, ff)
        geo = self.geometry
        s = geo.distances[self._number(z)].effective_pixel_m / geo.voxel_m  # to reference pixels
        d.return_results.append(self._record(dec, s, {"angle_deg": theta}))

    def _phase_on_ref_grid(self, k: int, img: np.ndarray, geo: ScanGeometry) -> np.ndarray:
        """Single-distance Paganin phase of distance ``k``'s frame, rescaled to the reference pixel."""
        dist = geo.distances[k]
        ph = retrieve_phase_paganin(img, (dist.propagation_distance_m, dist.wavelength_m, dist.effective_pixel_m),
                                    self.config.alignment.delta_beta, pad=self.config.alignment.paganin_pad)
        return rescale_shift(ph, geo.scale_to_reference(k), (0.0, 0.0), img.shape)

    def _inter_distance(self, a: float) -> None:
        """Every distance against the reference at angle ``a`` once both have it (after rescale)."""
        geo = self.geometry
        keys = sorted(self._d)
        ref = geo.reference
        rd = self._d[keys[ref]]
        if a not in rd.starts:
            return
        for k, z in enumerate(keys):
            d = self._d[z]
            if k == ref or a not in d.starts or any(r["angle_deg"] == a and r["reference_z1_m"] == keys[ref]
                                                    for r in d.inter_results):
                continue
            ref_phase = rd.phases.get(a)
            if ref_phase is None:
                ref_phase = rd.phases[a] = self._phase_on_ref_grid(ref, rd.starts[a], geo)
            moving = self._phase_on_ref_grid(k, d.starts[a], geo)
            dec = self._compare(ref_phase, moving)
            d.inter_results.append(self._record(dec, 1.0, {"angle_deg": a, "reference_z1_m": keys[ref]}))

    #: Below this (smaller side after binning, px) the patches are too small for a reliable field: only
    #: the rigid drift is measured, on the whole image.
    MIN_FIELD_PX = 48

    def _compare(self, reference: np.ndarray, moving: np.ndarray) -> WarpDecomposition | None:
        b = self._bin(reference.shape)
        if min(reference.shape) // b >= self.MIN_FIELD_PX:
            return compare_views(reference, moving, bin_px=b)[0]
        res = register_lowpass_ncc(reference, moving, sigma_px=1.5, highpass_sigma_px=8.0)
        if not res.ok:
            return None
        dy, dx = -res.shift_yx[0], -res.shift_yx[1]
        return WarpDecomposition((dy, dx), math.hypot(dy, dx), math.nan, math.nan, math.nan, 1, 1,
                                 np.zeros((1, 2)), math.nan)

    @staticmethod
    def _record(dec: WarpDecomposition | None, to_ref: float, extra: dict[str, Any]) -> dict[str, Any]:
        if dec is None:
            return {**extra, "ok": False}
        if not math.isfinite(dec.scale):  # whole-image registration only (small frames)
            return {**extra, "ok": True, "rigid_yx_px": [dec.rigid_yx[0] * to_ref, dec.rigid_yx[1] * to_ref],
                    "rigid_px": dec.rigid_px * to_ref, "scale": None, "nonrigid_px": None,
                    "note": f"frame below {QualityMonitor.MIN_FIELD_PX} px: rigid drift only"}
        return {**extra, "ok": True, "rigid_yx_px": [dec.rigid_yx[0] * to_ref, dec.rigid_yx[1] * to_ref],
                "rigid_px": dec.rigid_px * to_ref, "scale": dec.scale, "nonrigid_px": dec.nonrigid_rms_px * to_ref,
                "nonrigid_max_px": dec.nonrigid_max_px * to_ref, "noise_px": dec.noise_px * to_ref,
                "patches_used": dec.n_used,
                "patches": dec.n_patches}

    # ------------------------------------------------------------------------------------- FSC
    def angles_info(self) -> tuple[int, float, float]:
        """Projection angles seen (any distance), fraction of the scan's angles, angular coverage (degrees)."""
        angles = sorted(set().union(*(d.angles for d in self._d.values()))) if self._d else []
        if len(angles) < 2:
            return len(angles), 0.0, 0.0
        a = np.asarray(angles)
        step = float(np.median(np.diff(a)))
        expected = max(1, int(round(self.range / step))) if step > 0 else len(angles)
        wrapped = np.mod(a - a[0], self.range)
        gaps = np.diff(np.concatenate([np.sort(wrapped), [self.range]]))
        coverage = float(self.range - gaps.max() + step)
        return len(angles), min(1.0, len(angles) / expected), min(self.range, coverage)

    def add_fsc(self, n_angles: int | None = None, binned: tuple[Any, Any] | None = None,
                region: tuple[Any, Any] | None = None, halves: tuple[Any, Any] | None = None,
                fraction: float | None = None, voxel_m: float | None = None) -> None:
        """A running-FSC measurement on the current half-volumes (see :meth:`RunningFSC.update`).

        ``n_angles`` (angles in the half-volumes) defaults to the projection angles seen; ``fraction`` to
        ``n_angles`` over the scan's expected angles. ``voxel_m`` is the voxel of the half-volumes given
        (a binned live volume's), default the scan's.
        """
        geo = self.geometry
        if geo is None:
            raise ValueError("quality monitor: an FSC before any frame (no voxel size yet)")
        if self.fsc is None:
            self.fsc = RunningFSC(geo.voxel_m, bin_factor=self.config.stream.fsc_bin, region_px=self.config.stream.fsc_region_px)
        seen, frac, _ = self.angles_info()
        n = seen if n_angles is None else int(n_angles)
        if fraction is None:
            fraction = frac * n / seen if seen else 0.0
        self.fsc.update(min(1.0, fraction), n, binned=binned, region=region, halves=halves, voxel_m=voxel_m)

    # ------------------------------------------------------------------------------------- snapshot
    def _dose_figures(self) -> dict[str, Any]:
        if self.dose is None:
            return {"gray_total": 0.0, "per_distance_gray": [], "sample_gray": 0.0, "sample": self.sample}
        d = self.dose.summary()
        if self._previous_gray is None:
            self._previous_gray = self.ledger.previous_gray(self.sample, self.scan_id) if self.ledger else 0.0
        d.update(sample=self.sample, previous_scans_gray=self._previous_gray,
                 sample_gray=self._previous_gray + d["gray_total"],
                 ledger=str(self.ledger.path) if self.ledger else None)
        if self.ledger and time.monotonic() - self._ledger_at >= self.ledger_every_s:
            self.record_dose()
        return d

    def record_dose(self) -> None:
        """Write this scan's dose so far into the ledger (if one is configured)."""
        if self.ledger is not None and self.dose is not None:
            self.ledger.record(self.sample, self.scan_id, self.dose.total_gray())
            self._ledger_at = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """The quality figures now (JSON-ready), with the alerts they raise (routed if a router is set).

        Figures not measured yet are None.
        """
        geo = self.geometry
        voxel = geo.voxel_m if geo else None
        keys = sorted(self._d)
        seen, frac, coverage = self.angles_info()
        latest = self.fsc.latest if self.fsc else None
        fsc = {"resolution_m": latest.resolution_m if latest else None,
               "fraction_angles": latest.fraction_angles if latest else frac,
               "edge_resolution_m": latest.edge_resolution_m if latest else None,
               "binned_resolution_m": latest.binned_resolution_m if latest else None,
               "region_resolution_m": latest.region_resolution_m if latest else None,
               "angles_seen": seen, "coverage_deg": coverage, "full_coverage": coverage >= self.range - 1e-6,
               "voxel_m": voxel, "history": [p.as_dict() for p in self.fsc.history] if self.fsc else [],
               "curves": self.fsc.curves if self.fsc else {}}

        def worst(results: list[dict[str, Any]], key: str) -> float | None:
            vals = [r[key] for r in results if r.get("ok")]
            return max(vals) if vals else None

        return_px = [worst(self._d[z].return_results, "rigid_px") for z in keys]
        inter_px = [0.0 if voxel and k == geo.reference else worst(self._d[z].inter_results, "rigid_px")
                    for k, z in enumerate(keys)]
        pairs = []
        for k, z in enumerate(keys):
            for r in self._d[z].return_results:
                pairs.append({"pair": f"distance {k + 1}: return vs start at {r['angle_deg']:g} deg", **r})
            for r in self._d[z].inter_results:
                pairs.append({"pair": f"distance {k + 1} vs reference at {r['angle_deg']:g} deg", **r})
        # Warp figures come from the return pairs (same distance, same optics). Distance pairs are reported
        # but not used for them: their Fresnel fringes differ, which leaves a non-rigid misfit of ~0.5 px
        # without any deformation on the simulated scans (docs/quality.md).
        ok = [p for p in pairs if p.get("ok") and "return" in p["pair"]]
        warp: dict[str, Any] = {"rigid_px": None, "rigid_m": None, "scale": None, "nonrigid_px": None,
                                "nonrigid_m": None, "pairs": pairs}
        if ok:
            r = max(ok, key=lambda p: p["rigid_px"])
            warp.update(rigid_px=r["rigid_px"], rigid_m=r["rigid_px"] * voxel)
        fields = [p for p in ok if p["scale"] is not None]
        if fields:
            s = max(fields, key=lambda p: abs(p["scale"] - 1))
            n = max(fields, key=lambda p: p["nonrigid_px"])
            warp.update(scale=s["scale"], scale_pair=s["pair"], nonrigid_px=n["nonrigid_px"],
                        nonrigid_m=n["nonrigid_px"] * voxel, worst_pair=n["pair"])
        quality: dict[str, Any] = {
            "fsc": fsc,
            "dose": self._dose_figures(),
            "drift": {"return_px": return_px,
                      "return_m": [None if v is None else v * voxel for v in return_px],
                      "inter_distance_px": inter_px,
                      "inter_distance_m": [None if v is None else v * voxel for v in inter_px],
                      "pixel_m": voxel},
            "warp": warp,
            "progress": [{"distance": k + 1, "z1_m": z, "frames": self._d[z].frames,
                          "projections": self._d[z].projections, "returns": self._d[z].returns}
                         for k, z in enumerate(keys)],
        }
        alerts = evaluate_alerts(quality, self.config)
        if self.router is not None:
            self.router.update(alerts)
        quality["alerts"] = [a.as_dict() for a in alerts]
        return quality

    def alert_history(self) -> list[dict[str, Any]]:
        """Every alert that fired during the scan (the router's record; the current ones without a router)."""
        if self.router is not None:
            return list(self.router.history)
        return self.snapshot()["alerts"]

    def close(self) -> None:
        """Record the final dose in the ledger and close the alert sinks."""
        self.record_dose()
        if self.router is not None:
            self.router.close()
