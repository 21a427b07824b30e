"""Dose per distance and in total, accumulated frame by frame, and across scans of the same sample.

Howells et al. 2009 (:mod:`xnh_stream.physics.dose`): ``D[Gy] = (mu/rho)[m^2/kg] * Phi[photons/m^2] * E[J]``.
The fluence rate at the sample comes from the flats of each distance: dark-subtracted counts per
detector pixel, divided by the detector gain (counts per photon) and efficiency, concentrated onto the
pixel's footprint in the sample plane ``(p / M)^2``, per second of the flats' count time. Each exposed frame
(projections and return projections; flats are taken with the sample out of the beam, darks with the
beam off) adds ``rate * (count_time + dead_time)``: the beam stays on the sample during the read-out
dead time between frames, when the detector does not count.

:class:`DoseLedger` keeps the dose of every scan of a sample in a small JSON file, so that a sample
scanned again (a second region, a re-scan) carries the dose it already received.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..physics.dose import KEV_TO_J, dose_gray, fluence_per_frame, mass_attenuation_m2_per_kg

log = logging.getLogger(__name__)

__all__ = ["exposure_fluence", "DistanceDose", "DoseAccount", "DoseLedger", "LedgerError"]


def exposure_fluence(flat_counts: float, dark_counts: float, gain: float, efficiency: float,
                     effective_pixel_m: float, flat_count_time_s: float, count_time_s: float,
                     dead_time_s: float = 0.0) -> float:
    """Photons per m^2 at the sample during one exposed frame and the dead time that follows it.

    Parameters
    ----------
    flat_counts, dark_counts : float
        Mean counts per detector pixel of the flats (sample out) and of the darks.
    gain, efficiency : float
        Detector counts per detected photon; detected fraction of incident photons.
    effective_pixel_m : float
        ``p / M`` of the distance.
    flat_count_time_s : float
        Count time of the flats (their counts are photons in that time). NaN: unknown, the frame is
        taken to last as long as a flat and the dead time is ignored.
    count_time_s : float
        Count time of the exposed frame (NaN: as the flats).
    dead_time_s : float
        Beam-on time between frames while the detector does not count.
    """
    per_flat = fluence_per_frame(flat_counts, dark_counts, gain, efficiency, effective_pixel_m)
    if not (math.isfinite(flat_count_time_s) and flat_count_time_s > 0):
        return per_flat
    exposure = count_time_s if math.isfinite(count_time_s) and count_time_s > 0 else flat_count_time_s
    return per_flat * (exposure + max(dead_time_s, 0.0)) / flat_count_time_s


@dataclass
class DistanceDose:
    """Running dose bookkeeping of one distance."""

    effective_pixel_m: float
    dark_counts: float | None = None
    flat_counts: float | None = None
    flat_count_time_s: float = float("nan")
    fluence_per_m2: float = 0.0
    exposed_frames: int = 0
    exposure_s: float = 0.0
    waiting: list[float] = field(default_factory=list)  # count times of frames exposed before any flat


class DoseAccount:
    """Dose of one scan, accumulated as frames arrive (any order within a distance).

    Parameters
    ----------
    formula, density_g_cm3 : str, float
        Mean sample composition (xraydb).
    energy_kev : float
        Photon energy.
    gain, efficiency : float
        Detector counts per detected photon and detected fraction.
    dead_time_s : float
        Beam-on dead time after every exposed frame.
    """

    def __init__(self, formula: str, density_g_cm3: float, energy_kev: float, gain: float = 1.0,
                 efficiency: float = 1.0, dead_time_s: float = 0.0) -> None:
        if gain <= 0 or not 0 < efficiency <= 1 or dead_time_s < 0:
            raise ValueError(f"need gain > 0, 0 < efficiency <= 1, dead_time_s >= 0; got {gain}, {efficiency}, "
                             f"{dead_time_s}")
        self.energy_kev, self.gain, self.efficiency, self.dead_time_s = energy_kev, gain, efficiency, dead_time_s
        self.mu_rho = mass_attenuation_m2_per_kg(formula, density_g_cm3, energy_kev)
        self.distances: dict[int, DistanceDose] = {}

    def _get(self, k: int, effective_pixel_m: float) -> DistanceDose:
        d = self.distances.get(k)
        if d is None:
            d = self.distances[k] = DistanceDose(effective_pixel_m)
        return d

    def dark(self, k: int, effective_pixel_m: float, mean_counts: float) -> None:
        """Mean dark level (counts per pixel) of distance ``k``."""
        self._get(k, effective_pixel_m).dark_counts = float(mean_counts)

    def flat(self, k: int, effective_pixel_m: float, mean_counts: float, count_time_s: float) -> None:
        """Latest flat level of distance ``k``; frames exposed before its first flat are booked now."""
        d = self._get(k, effective_pixel_m)
        d.flat_counts, d.flat_count_time_s = float(mean_counts), float(count_time_s)
        waiting, d.waiting = d.waiting, []
        for ct in waiting:
            self.expose(k, effective_pixel_m, ct)

    def expose(self, k: int, effective_pixel_m: float, count_time_s: float) -> None:
        """One exposed frame (projection or return projection) of distance ``k``."""
        d = self._get(k, effective_pixel_m)
        if d.flat_counts is None:
            d.waiting.append(float(count_time_s))
            return
        fl = exposure_fluence(d.flat_counts, d.dark_counts or 0.0, self.gain, self.efficiency, d.effective_pixel_m,
                              d.flat_count_time_s, float(count_time_s), self.dead_time_s)
        d.fluence_per_m2 += fl
        d.exposed_frames += 1
        ct = count_time_s if math.isfinite(count_time_s) else d.flat_count_time_s
        if math.isfinite(ct):
            d.exposure_s += ct + self.dead_time_s

    def per_distance_gray(self) -> list[float]:
        """Dose delivered by each distance so far, in distance-number order."""
        return [dose_gray(self.mu_rho, self.distances[k].fluence_per_m2, self.energy_kev)
                for k in sorted(self.distances)]

    def total_gray(self) -> float:
        """Dose of this scan so far (all distances)."""
        return float(sum(self.per_distance_gray()))

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of this scan."""
        ks = sorted(self.distances)
        return {"gray_total": self.total_gray(), "per_distance_gray": self.per_distance_gray(),
                "fluence_per_m2": [self.distances[k].fluence_per_m2 for k in ks],
                "exposed_frames": [self.distances[k].exposed_frames for k in ks],
                "exposure_s": [self.distances[k].exposure_s for k in ks],
                "frames_waiting_for_flats": [len(self.distances[k].waiting) for k in ks],
                "dead_time_s": self.dead_time_s, "mu_rho_m2_per_kg": self.mu_rho, "energy_kev": self.energy_kev,
                "photon_energy_j": self.energy_kev * KEV_TO_J}


class LedgerError(ValueError):
    """A dose ledger file that cannot be read or written."""


class DoseLedger:
    """Dose of every scan of each sample, in a JSON file shared by successive scans.

    Layout: ``{"samples": {sample: {scan_id: {"gray": float, "updated": ISO time}}}}``. Recording a scan
    again replaces its entry (a resumed or re-processed scan is not counted twice). Writes are atomic
    (temporary file + rename) under an advisory lock (``PATH.lock``).

    Parameters
    ----------
    path : str or Path
        The ledger file (created on first write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot open the dose ledger: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"samples": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LedgerError(f"{self.path}: dose ledger is not readable JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("samples"), dict):
            raise LedgerError(f"{self.path}: dose ledger lacks a 'samples' mapping")
        return data

    def scans(self, sample: str) -> dict[str, float]:
        """Dose of each recorded scan of ``sample``."""
        with self._locked():
            entries = self._read()["samples"].get(sample, {})
        return {scan: float(e["gray"]) for scan, e in entries.items()}

    def previous_gray(self, sample: str, scan_id: str) -> float:
        """Dose ``sample`` received in its other recorded scans."""
        return float(sum(g for s, g in self.scans(sample).items() if s != scan_id))

    def record(self, sample: str, scan_id: str, gray: float) -> float:
        """Set the dose of ``scan_id``; returns the sample's total over all its scans."""
        if not (math.isfinite(gray) and gray >= 0):
            raise LedgerError(f"{self.path}: refusing to record a dose of {gray} Gy for {sample}/{scan_id}")
        with self._locked():
            data = self._read()
            entries = data["samples"].setdefault(sample, {})
            entries[scan_id] = {"gray": float(gray), "updated": _dt.datetime.now(_dt.timezone.utc).isoformat()}
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                tmp.replace(self.path)
            except OSError as exc:
                raise LedgerError(f"{self.path}: cannot write the dose ledger: {exc}") from exc
            return float(sum(float(e["gray"]) for e in entries.values()))
