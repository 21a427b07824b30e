"""The whole chain on a finished scan: raw NXtomo frames to ``volume.ome.zarr`` and ``report.json``.

Steps, per DESIGN.md: flat-field (flats interpolated between series, or PCA), distance alignment
(shifts measured on a subset of angles with low-pass NCC, a smooth model against angle, one
rescale + shift interpolation per frame), multi-distance CTF phase retrieval, angle-by-angle FBP into
even / odd half-volumes, FSC with the half-bit threshold and an edge-fit cross-check, dose.

Every frame found is counted as received; it is either processed or quarantined with its reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import xraydb

from .. import __version__
from ..physics.align import ShiftModel, measure_distance_shifts
from ..config import ProcessConfig
from ..physics.dose import central_mean
from ..physics.fbp import FBPAccumulator, estimate_cor, estimate_cor_sinogram
from ..physics.flatfield import FlatInterpolator, PCAFlats
from ..physics.fsc import edge_resolution, half_volume_resolution
from ..physics.geometry import ScanGeometry
from ..io.nxtomo import DARK, FLAT, FIELDS, InputError, NXtomoScan, Scan, frame_problem, read_scan
from ..io.omezarr import write_volume
from ..physics.envelope import SampleEnvelope, envelope_from_volume
from .incremental import AngleProcessor
from ..physics.phase import retrieve_phase_paganin
from ..quality.alerts import default_router
from ..quality.monitor import QualityMonitor
from ..physics.xp import bin_2d, binning_for, get_array_module, to_numpy

log = logging.getLogger(__name__)

VOLUME_NAME = "volume.ome.zarr"
REPORT_NAME = "report.json"


@dataclass
class FrameLedger:
    """Every frame received, and what became of it."""

    received: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    rejected_files: list[dict[str, str]] = field(default_factory=list)

    def quarantine(self, path: Path | str, index: int | None, reason: str) -> None:
        """Set a frame aside with its reason (logged as a warning)."""
        self.quarantined.append({"file": str(path), "index": index, "reason": reason})
        log.warning("quarantined %s frame %s: %s", path, index, reason)

    @property
    def processed(self) -> int:
        """Frames received and not quarantined."""
        return self.received - len(self.quarantined)

    def summary(self) -> dict[str, Any]:
        """The ``frames`` section of the report."""
        return {"received": self.received, "processed": self.processed, "quarantined": len(self.quarantined),
                "quarantine": self.quarantined, "rejected_files": self.rejected_files}


def delta_beta_of(formula: str, density_g_cm3: float, energy_kev: float) -> float:
    """delta/beta of a material at an energy (xraydb)."""
    delta, beta, _ = xraydb.xray_delta_beta(formula, density_g_cm3, energy_kev * 1e3)
    return float(delta / beta)


class DistanceFrames:
    """Flat-fielded frames of one distance, with bad frames quarantined in the ledger."""

    def __init__(self, scan: NXtomoScan, config: ProcessConfig, ledger: FrameLedger, xp: ModuleType) -> None:
        self.scan, self.ledger, self.xp = scan, ledger, xp
        self.shape = scan.frame_shape
        self._bad: set[int] = set()
        dark_idx, flat_idx = scan.indices(DARK), scan.indices(FLAT)
        self.dark = self._mean_of(dark_idx)
        if self.dark is None:
            log.warning("%s has no usable dark frame: assuming a dark level of 0", scan.path)
            self.dark = np.zeros(self.shape, np.float32)
        runs = np.split(flat_idx, np.flatnonzero(np.diff(flat_idx) != 1) + 1) if flat_idx.size else []
        series = [(float(r.mean()), self._good(r)) for r in runs]
        series = [(p, f) for p, f in series if len(f)]
        if not series:
            raise InputError(scan.path, "no usable flat-field frame (image_key 1)", FIELDS["image_key"])
        self.flat_counts = float(np.mean([central_mean(f.mean(axis=0)) for _, f in series]))
        self.dark_counts = central_mean(self.dark)
        if config.flat_pca_components > 0:
            all_flats = np.concatenate([f for _, f in series])
            self.pca: PCAFlats | None = PCAFlats(all_flats, self.dark, n_components=config.flat_pca_components,
                                                 xp=xp)
            self.interp = None
        else:
            self.pca = None
            self.interp = FlatInterpolator.from_series(series, xp=xp)

    def _good(self, indices: np.ndarray) -> np.ndarray:
        """Read frames, quarantining unreadable or bad ones; returns the good ones stacked."""
        good = []
        for i in indices:
            f = self.read_raw(int(i))
            if f is not None:
                good.append(f)
        return np.stack(good) if good else np.empty((0, *self.shape), np.float32)

    def _mean_of(self, indices: np.ndarray) -> np.ndarray | None:
        frames = self._good(indices)
        return frames.mean(axis=0) if len(frames) else None

    def read_raw(self, index: int) -> np.ndarray | None:
        """One raw frame, or None (quarantined once, however often it is asked for) if unusable."""
        if index in self._bad:
            return None
        try:
            frame = self.scan.read_frames([index])[0]
        except InputError as exc:
            problem = exc.problem
        else:
            problem = frame_problem(frame, self.shape)
            if not problem:
                return frame
        self._bad.add(index)
        self.ledger.quarantine(*self.scan.locate(index), problem)
        return None

    def corrected(self, index: int) -> Any | None:
        """Flat-fielded frame ``index`` on the array backend, or None if quarantined."""
        raw = self.read_raw(index)
        if raw is None:
            return None
        frame = self.xp.asarray(raw)
        if self.pca is not None:
            return self.pca.correct(frame)
        return self.interp.correct(frame, float(index), self.xp.asarray(self.dark))


def sample_envelope(reader: DistanceFrames, frames: np.ndarray, thetas_deg: np.ndarray, geo: ScanGeometry,
                    delta_beta: float, cor: float, xp: ModuleType,
                    progress: Callable[[int, int], None] | None = None) -> SampleEnvelope | None:
    """The sample envelope from a binned Paganin reconstruction of the reference distance.

    Parameters
    ----------
    reader : DistanceFrames
        The reference distance.
    frames : ndarray of int
        Its frame index at each angle (-1: none).
    thetas_deg : ndarray
        The angles.
    geo : ScanGeometry
        The scan.
    delta_beta : float
        Mean delta/beta of the sample (Paganin, and the envelope's contrast against air).
    cor : float
        Rotation axis, detector pixels.
    xp : module
        Array module.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    SampleEnvelope or None
        None when no plausible support is found (a sample wider than the field of view, or none).
    """
    ny, nx = reader.shape
    b = binning_for((ny, nx), 256)
    d = geo.distances[geo.reference]
    nyb, nxb = ny // b, nx // b
    acc = FBPAccumulator(nyb, nxb, cor=(cor + 0.5) / b - 0.5, padding="edge", xp=xp)
    scale = -1.0 / (2 * np.pi / d.wavelength_m * d.effective_pixel_m)  # phase -> line integral, voxel units
    for i, (theta, f) in enumerate(zip(thetas_deg, frames)):
        img = reader.corrected(int(f)) if f >= 0 else None
        if img is not None:
            binned = bin_2d(img, b)
            phi = retrieve_phase_paganin(binned, (d.propagation_distance_m, d.wavelength_m, d.effective_pixel_m * b),
                                         delta_beta, xp=xp)
            acc.add(phi * (scale / b), float(np.deg2rad(theta)), index=i)  # binned-voxel units
        if progress:
            progress(i + 1, len(frames))
    envelope = envelope_from_volume(to_numpy(acc.volume()), b, (ny, nx), cor, xp=xp)
    if envelope is None:
        return None
    log.info("sample envelope: support %.0f %% of the volume, mean delta %.3g (binning %d)",
             100 * envelope.support_fraction, envelope.delta_mean, b)
    return envelope


def match_angles(scan: Scan, tol_deg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pair the regular projections of every distance with the reference distance's angles.

    Returns
    -------
    thetas_deg : ndarray [n]
        Angles of the reference distance's projections.
    frames : ndarray [n, K] of int
        Frame index of each distance at each angle, -1 where a distance has no projection within
        ``tol_deg`` (default half the angular step).
    """
    ref = scan.geometry.reference
    ref_scan = scan.distances[ref]
    ref_idx = ref_scan.projection_indices
    thetas = ref_scan.rotation_angle_deg[ref_idx]
    if tol_deg is None:
        step = np.median(np.diff(np.sort(thetas))) if thetas.size > 1 else 1.0
        tol_deg = 0.5 * step
    frames = np.full((thetas.size, len(scan.distances)), -1, dtype=np.int64)
    for k, d in enumerate(scan.distances):
        idx = d.projection_indices
        ang = d.rotation_angle_deg[idx]
        if ang.size == 0:
            continue
        order = np.argsort(ang)
        pos = np.clip(np.searchsorted(ang[order], thetas), 1, ang.size - 1) if ang.size > 1 else np.zeros_like(
            thetas, dtype=int)
        cand = np.stack([order[np.maximum(pos - 1, 0)], order[pos]])
        best = np.where(np.abs(ang[cand[0]] - thetas) <= np.abs(ang[cand[1]] - thetas), cand[0], cand[1])
        ok = np.abs(ang[best] - thetas) <= tol_deg
        frames[ok, k] = idx[best[ok]]
    return thetas, frames


def _count_frames(path: Path) -> int | None:
    """Number of frames in a rejected file when its data set can still be opened."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            for g in f.values():
                if isinstance(g, h5py.Group) and FIELDS["data"] in g:
                    return int(g[FIELDS["data"]].shape[0])
    except (OSError, KeyError, IndexError):
        return None
    return None


@dataclass
class ChainResult:
    """What :func:`process_scan` produced."""

    volume: np.ndarray
    halves: tuple[np.ndarray, np.ndarray]
    report: dict[str, Any]
    out: Path | None


def process_scan(folder: str | Path, out: str | Path | None = None, config: ProcessConfig | None = None,
                 progress: Callable[[int, int, str], None] | None = None,
                 monitor: QualityMonitor | None = None) -> ChainResult:
    """Process a finished multi-distance scan folder.

    Parameters
    ----------
    folder : str or Path
        Scan folder with one NXtomo file per distance.
    out : str or Path, optional
        Output folder for ``volume.ome.zarr`` and ``report.json``; nothing is written if omitted.
    config : ProcessConfig, optional
        Options (defaults if omitted).
    progress : callable, optional
        ``progress(done, total, stage)`` after each unit of work.
    monitor : QualityMonitor, optional
        The live stream's quality monitor (already fed with every frame): the final FSC is added to its
        running history and its drift, warp, dose and alerts go into the report. Without one, a monitor
        is fed here from the files (batch).

    Returns
    -------
    ChainResult

    Raises
    ------
    InputError
        When the folder holds no usable scan.
    """
    t_start = time.perf_counter()
    config = config or ProcessConfig()
    xp = get_array_module(config.backend)
    scan = read_scan(folder)
    ledger = FrameLedger()
    alerts: list[dict[str, str]] = []
    for exc in scan.rejected:
        n = _count_frames(Path(exc.path))
        ledger.rejected_files.append({"file": exc.path, "reason": str(exc)})
        if n:
            ledger.received += n
            for i in range(n):
                ledger.quarantined.append({"file": exc.path, "index": i, "reason": "file rejected: " + exc.problem})
        alerts.append({"name": "DistanceFileRejected", "severity": "critical", "message": str(exc)})
        log.error("distance file set aside: %s", exc)
    for d in scan.distances:
        ledger.received += d.n_frames

    geo: ScanGeometry = scan.geometry
    ref = geo.reference
    K = len(geo.distances)
    ny, nx = scan.frame_shape
    energy = geo.energy_kev
    delta_beta = config.delta_beta or delta_beta_of(config.sample_formula, config.sample_density, energy)
    voxel = geo.voxel_m

    readers = [DistanceFrames(d, config, ledger, xp) for d in scan.distances]
    thetas_deg, frames = match_angles(scan)
    n_angles = thetas_deg.size
    if n_angles < 2:
        raise InputError(scan.distances[ref].path, f"needs at least 2 projections, has {n_angles}",
                         FIELDS["image_key"])
    # Frames that no angle uses are still accounted for: projections of other distances without a match.
    for k, d in enumerate(scan.distances):
        unused = np.setdiff1d(d.projection_indices, frames[:, k])
        for i in unused:
            ledger.quarantine(*d.locate(int(i)), "projection angle has no match in the reference distance")

    def report_progress(done: int, total: int, stage: str) -> None:
        if progress:
            progress(done, total, stage)

    # --- distance alignment: measure on a subset of angles, fit a smooth model against angle ----------
    models: list[ShiftModel | None] = [None] * K
    shift_record: dict[str, Any] = {}
    paganin_rows: list[tuple[float, np.ndarray]] = []
    subset = np.unique(np.linspace(0, n_angles - 1, min(config.align_angles, n_angles)).round().astype(int))
    rows = slice(max(ny // 2 - 2, 0), ny // 2 + 2)
    if config.align and K > 1:
        models = [None if k == ref else ShiftModel(order=config.align_model_degree) for k in range(K)]
    for j, i in enumerate(subset):
        imgs = [readers[k].corrected(int(frames[i, k])) if frames[i, k] >= 0 else None for k in range(K)]
        if imgs[ref] is not None:
            ph = retrieve_phase_paganin(imgs[ref], geo.distances[ref], delta_beta, xp=xp)
            paganin_rows.append((float(thetas_deg[i]), to_numpy(ph[rows])))
        if config.align and K > 1 and all(im is not None for im in imgs):
            res = measure_distance_shifts(imgs, geo, config.align_delta_beta, xp=xp)
            for k in range(K):
                if k == ref:
                    continue
                models[k].add(float(thetas_deg[i]), res.shifts_yx[k], ok=bool(res.ok[k]))
                if not res.ok[k]:
                    alerts.append({"name": "AlignmentPeakRejected", "severity": "warning",
                                   "message": f"distance {k + 1} at {thetas_deg[i]:.2f} deg: {res.reasons[k]} "
                                              f"(NCC peak {res.peaks[k]:.2f})"})
        report_progress(j + 1, subset.size, "align")
    for k, model in enumerate(models):
        if model is None:
            continue
        n_ok = model.n_valid
        if n_ok < 3:
            alerts.append({"name": "AlignmentFailed", "severity": "critical",
                           "message": f"distance {k + 1}: only {n_ok} reliable registrations; not aligned"})
            models[k] = None
            continue
        model.fit()
        inl = model.inliers
        shift_record[f"distance_{k + 1}"] = {
            "measured_angles": model.n_points, "inliers": int(inl.sum()),
            "at_angle_deg": float(np.median(thetas_deg)),
            "shift_px": model(float(np.median(thetas_deg))).round(3).tolist(),
            "rms_residual_px": float(np.sqrt(np.mean(model.residuals()[inl] ** 2)))}

    # --- centre of rotation --------------------------------------------------------------------------
    cor_method = "config"
    cor = config.cor
    if cor is None:
        cor, cor_method = _estimate_cor(readers[ref], frames[:, ref], paganin_rows)
    log.info("centre of rotation %.2f px (%s)", cor, cor_method)

    # --- phase retrieval and incremental FBP ---------------------------------------------------------
    processor = AngleProcessor(geo, (ny, nx), delta_beta, config, xp=xp)
    processor.models = models
    envelope = None
    if config.ctf_envelope and K > 1:
        envelope = sample_envelope(readers[ref], frames[:, ref], thetas_deg, geo, delta_beta, cor, xp,
                                   lambda done, total: report_progress(done, total, "envelope"))
        if envelope is not None:
            processor.envelope = envelope
            processor.contrast_delta_beta = config.delta_beta_contrast or delta_beta_of(
                config.stain_formula, config.stain_density, energy)
    acc = FBPAccumulator(ny, nx, cor=cor, window=config.fbp_window, padding=config.fbp_padding, xp=xp)
    thetas = np.deg2rad(thetas_deg)
    used_angles = 0
    for i in range(n_angles):
        images = {k: readers[k].corrected(int(frames[i, k])) for k in range(K) if frames[i, k] >= 0}
        images = {k: im for k, im in images.items() if im is not None}
        if not images:
            log.warning("angle %.3f deg: no usable frame at any distance", thetas_deg[i])
            continue
        acc.add(processor.ctf(images, float(thetas_deg[i])), thetas[i], index=i)
        used_angles += 1
        report_progress(i + 1, n_angles, "reconstruct")

    volume = to_numpy(acc.volume())
    halves = tuple(to_numpy(h) for h in acc.half_volumes())

    # --- quality: FSC, edge fit, dose ----------------------------------------------------------------
    res = half_volume_resolution(halves[0], halves[1], voxel)
    edge = edge_resolution(volume, voxel_m=voxel, half_length=float(max(3, min(12, (min(volume.shape) - 4) // 2))))
    # --- quality (xnh_stream.quality): dose with dead time, drift / warp, running FSC, alerts -------------
    own_monitor = monitor is None
    if own_monitor:
        monitor = QualityMonitor(config, str(Path(folder).resolve()), router=default_router(config))
        _feed_monitor(monitor, scan)
    monitor.add_fsc(n_angles=used_angles, halves=halves, fraction=1.0, voxel_m=voxel)
    quality = monitor.snapshot()
    if own_monitor:
        monitor.close()
    qdose = quality["dose"]
    mu_rho, per_distance, dose_total = qdose["mu_rho_m2_per_kg"], qdose["per_distance_gray"], qdose["gray_total"]
    alerts += list(monitor.alert_history())

    report = {
        "software": {"name": "xnh-stream", "version": __version__},
        "scan": {"folder": str(scan.folder), "files": [str(d.path) for d in scan.distances],
                 "n_angles": int(n_angles), "angles_used": used_angles, "frame_shape": [ny, nx]},
        "geometry": {"energy_kev": energy, "voxel_m": voxel, "reference_distance": ref + 1,
                     "distances": [{"z1_m": d.z1_m, "z2_m": d.z2_m, "magnification": d.magnification,
                                    "effective_pixel_m": d.effective_pixel_m,
                                    "propagation_distance_m": d.propagation_distance_m,
                                    "fresnel_number": d.fresnel_number} for d in geo.distances]},
        "phase": {"method": "ctf-multi-distance" + ("-two-material" if envelope is not None else ""),
                  "delta_beta": delta_beta, "delta_beta_contrast": processor.contrast_delta_beta,
                  "envelope": None if envelope is None else envelope.as_dict(),
                  "alpha_low": config.ctf_alpha_low, "alpha_high": config.ctf_alpha_high,
                  "sign": "phase = -k * integral(delta dz) (negative for matter); volume holds delta"},
        "alignment": shift_record,
        "cor": {"px": float(cor), "method": cor_method},
        "fsc": {"resolution_m": res.resolution_m, "crossing_freq_nyquist": res.crossing_freq,
                "limited_by_sampling": res.limited_by_sampling, "threshold": "half-bit",
                "curve": {"freq_nyquist": np.round(res.freq, 4).tolist(),
                          "fsc": [None if not np.isfinite(v) else round(float(v), 4) for v in res.fsc],
                          "half_bit": [None if not np.isfinite(v) else round(float(v), 4) for v in res.threshold]}},
        "edge": {"resolution_m": edge.resolution_m, "sigma_m": edge.sigma_m, "rise_10_90_m": edge.rise_10_90_m,
                 "definition": "FWHM of the Gaussian line-spread function from an erf fit across the "
                               "strongest edge"},
        "dose": {"gray": dose_total, "per_distance_gray": per_distance, "mu_rho_m2_per_kg": mu_rho,
                 "material": {"formula": config.sample_formula, "density_g_cm3": config.sample_density},
                 **{k: qdose[k] for k in ("sample", "sample_gray", "previous_scans_gray", "ledger", "dead_time_s",
                                          "exposed_frames", "exposure_s", "fluence_per_m2") if k in qdose}},
        "drift": quality["drift"],
        "warp": quality["warp"],
        "running_fsc": quality["fsc"]["history"],
        "alerts": alerts,
        "frames": ledger.summary(),
        "config": config.to_dict(),
        "timing_s": round(time.perf_counter() - t_start, 3),
    }
    out_path = None
    if out is not None:
        out_path = Path(out)
        out_path.mkdir(parents=True, exist_ok=True)
        write_volume(out_path / VOLUME_NAME, volume, voxel)
        (out_path / REPORT_NAME).write_text(json.dumps(report, indent=2, default=_json_default))
    return ChainResult(volume, halves, report, out_path)


def _feed_monitor(monitor: QualityMonitor, scan: Scan) -> None:
    """Every frame of a finished scan to the quality monitor, in file order; pixels only where it needs them.

    Frames that cannot be read are skipped here: the chain's own reading quarantines them.
    """
    from types import SimpleNamespace  # noqa: PLC0415

    for d in scan.distances:
        for i in range(d.n_frames):
            rec = SimpleNamespace(image_key=int(d.image_key[i]), image_key_control=int(d.image_key_control[i]),
                                  rotation_angle_deg=float(d.rotation_angle_deg[i]), geometry=d.geometry,
                                  count_time_s=float(d.count_time_s[i]))
            pixels = None
            if monitor.wants_pixels(rec):
                try:
                    pixels = d.read_frames([i])[0]
                except InputError:
                    continue
                if frame_problem(pixels, d.frame_shape):
                    continue
            monitor.add_frame(rec, pixels)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _estimate_cor(reader: DistanceFrames, ref_frames: np.ndarray,
                  paganin_rows: list[tuple[float, np.ndarray]]) -> tuple[float, str]:
    """Rotation axis from a 0/180 degree pair of the reference distance, else from a sinogram."""
    d = reader.scan
    angles = d.rotation_angle_deg
    candidates = np.concatenate([ref_frames[ref_frames >= 0], d.return_indices])
    best = None
    for i in ref_frames[ref_frames >= 0]:
        partner = candidates[np.abs(np.abs(angles[candidates] - angles[i]) - 180.0) < 0.05]
        if partner.size:
            best = (int(i), int(partner[0]))
            break
    if best is not None:
        a, b = (reader.corrected(best[0]), reader.corrected(best[1]))
        if a is not None and b is not None:
            # Registered on the flat-fielded holograms themselves: propagation commutes with the mirror,
            # while a phase retrieval of a truncated field of view does not.
            return float(estimate_cor(to_numpy(a), to_numpy(b))), "0-180 pair"
    ang = np.deg2rad([t for t, _ in paganin_rows])
    sino = np.stack([r.mean(axis=0) for _, r in paganin_rows])
    return float(estimate_cor_sinogram(sino, ang)), "sinogram"
