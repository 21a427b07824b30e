"""Do the distances of a scan show one sample? A verdict from the final pass's distance registrations.

The align step of the final pass (:meth:`~xnh_stream.chain.final.FinalChain.align`) registers every distance
on the reference distance at a subset of angles (:func:`~xnh_stream.physics.align.measure_distance_shifts`:
band-passed normalised cross-correlation of single-distance Paganin phases). When the frames show a sample,
the same sample is seen by every distance at one angle: the correlation peaks are high, the registrations
are accepted, and the shift of a distance changes smoothly from angle to angle (a fixed offset plus a slow
drift). When the frames show no sample, or not the same one (random pixel data, frames written to the wrong
file), each registration finds the best of many chance correlations: low or non-unique peaks, at a shift
anywhere in the search range, unrelated to the shift at the neighbouring angles.

:func:`assess_distance_registrations` counts, per distance, the *consistent* registrations: accepted (peak
above the registration's minimum and unique) and within ``tol_px`` of the median shift of the same distance
at the neighbouring measured angles. The scan is implausible when the median over the distances of the
fraction of consistent registrations is below ``min_consistent``. A chance shift lands within ``tol_px`` of
another with probability about ``pi tol_px^2 / (ny nx)``; on small frames chance is helped by the pattern
that a distance's flats print on all its flat-fielded frames, which correlates the same way at every angle.
Frames where that probability is not :data:`CHANCE_MARGIN` times below ``min_consistent`` (fewer than about
1300 pixels, e.g. 48 x 16) are not judged.

Margins: the align step (16 angles, alignment defaults) on scans of three families and on random pixel data
written into their files (darks, flats and projections uniform or Poisson, darks below flats, so that the
flat-field accepts them: every distance is kept); median over the distances of the fraction of consistent
registrations, and the median NCC peak:

- ``xnh_stream.simulate``, 40x12 .. 128x64, 20000 photons per pixel: 1.00, peaks 0.93-0.96; with the
  sample warping (2 %, 1 px): 1.00, 0.91; noisy, 1000 photons: 1.00, 0.64; 500 photons: 0.31-0.38, 0.43-0.53;
  300 photons: 0.19, 0.39;
- the analytic simulator, 64x24 .. 256x96: 1.00, peaks 0.95-0.96;
- the foreign writer (astra, HoToPy, nxtomo; ``tests/foreign.py``), 64x24 and 96x32: 1.00, peaks 0.99;
- random pixel data in the files of all three, 64x24 .. 256x96: 0.00 (at most 0.06 for a single distance),
  peaks 0.10-0.31; on 48x16 frames 0.00-0.06 and 40x12 frames 0.06-0.17 (not judged: too small), peaks
  up to 0.53.

The median peak of random data grows as the frames shrink (fewer independent pixels, higher chance peaks:
0.42 at 48 x 16, above the 0.39 of the noisiest real scan at 64 x 24); the consistency of the shifts much
less, so the verdict rests on it: :data:`MIN_CONSISTENT` sits a factor 2 below the noisiest real scan and
well above random data on the frames judged. Not caught: random projections flat-fielded by real flats (the
flats' common beam structure correlates at zero shift) and real frames paired with the wrong angles (partly
consistent on a sample that looks alike from every side). NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CHANCE_MARGIN", "MIN_ANGLES", "MIN_CONSISTENT", "TOLERANCE_PX", "Plausibility",
           "assess_distance_registrations"]

#: Below this median fraction of consistent registrations the distances do not show one sample.
MIN_CONSISTENT = 0.1
#: A registration agrees with its neighbours when its shift lies within this many reference pixels of theirs.
TOLERANCE_PX = 2.0
#: Fewer measured angles than this decide nothing.
MIN_ANGLES = 4
#: Frames are judged only when a chance shift is consistent this many times less often than ``MIN_CONSISTENT``.
CHANCE_MARGIN = 10.0


@dataclass(frozen=True)
class Plausibility:
    """The verdict on a scan's distance registrations.

    Attributes
    ----------
    implausible : bool or None
        True: the distances do not show one sample; False: they do; None: too few registrations to tell
        (fewer than :data:`MIN_ANGLES` angles, or a single distance).
    consistent : dict of int to float
        Per distance number (1-based, the reference left out): fraction of its measured angles whose
        registration is consistent.
    median_peak : dict of int to float
        Per distance number: median normalised cross-correlation peak.
    n_angles : int
        Angles with a registration of every distance.
    reason : str
        The verdict in words (figures included).
    """

    implausible: bool | None
    consistent: dict[int, float] = field(default_factory=dict)
    median_peak: dict[int, float] = field(default_factory=dict)
    n_angles: int = 0
    reason: str = ""


def _local_median(values: np.ndarray, usable: np.ndarray, i: int, neighbours: int) -> np.ndarray | None:
    """Median of the usable rows of ``values`` at the ``neighbours`` nearest usable positions on each side
    of ``i`` (``i`` left out); None if fewer than two."""
    before = [j for j in range(i - 1, -1, -1) if usable[j]][:neighbours]
    after = [j for j in range(i + 1, len(values)) if usable[j]][:neighbours]
    near = before + after
    if len(near) < 2:
        return None
    return np.median(values[near], axis=0)


def assess_distance_registrations(thetas_deg: np.ndarray, peaks: np.ndarray, ok: np.ndarray,
                                  shifts_yx: np.ndarray, reference: int, frame_shape: tuple[int, int] | None = None,
                                  tol_px: float = TOLERANCE_PX, min_consistent: float = MIN_CONSISTENT,
                                  neighbours: int = 2) -> Plausibility:
    """Whether the registrations of the distances on the reference show one sample (module docstring).

    Parameters
    ----------
    thetas_deg : array [n]
        The measured angles.
    peaks : array [n, K]
        Normalised cross-correlation peak of each distance at each angle (the reference's is ignored).
    ok : array [n, K] of bool
        Registration accepted (peak high enough and unique).
    shifts_yx : array [n, K, 2]
        Shift of each distance at each angle, reference pixels.
    reference : int
        Index of the reference distance.
    frame_shape : (int, int), optional
        ``(ny, nx)`` of the reference frames: on frames where a chance shift would look consistent too often
        (``pi tol_px^2 / (ny nx)`` above ``min_consistent / CHANCE_MARGIN``) the verdict is None.
    tol_px : float
        Largest distance, in reference pixels, between a consistent shift and the median shift of the same
        distance at the neighbouring angles.
    min_consistent : float
        The scan is implausible when the median over the distances of their fraction of consistent
        registrations is below this.
    neighbours : int
        Accepted registrations taken on each side of an angle for its local median.

    Returns
    -------
    Plausibility

    Raises
    ------
    ValueError
        When the arrays' shapes disagree.
    """
    thetas = np.asarray(thetas_deg, dtype=np.float64)
    peaks = np.asarray(peaks, dtype=np.float64)
    ok = np.asarray(ok, dtype=bool)
    shifts = np.asarray(shifts_yx, dtype=np.float64)
    n = thetas.size
    if peaks.ndim != 2 or peaks.shape[0] != n or ok.shape != peaks.shape or shifts.shape != (*peaks.shape, 2):
        raise ValueError(f"need thetas [n], peaks and ok [n, K], shifts [n, K, 2]; got {thetas.shape}, "
                         f"{peaks.shape}, {ok.shape}, {shifts.shape}")
    k_total = peaks.shape[1] if peaks.ndim == 2 else 0
    others = [k for k in range(k_total) if k != reference]
    if not others:
        return Plausibility(None, n_angles=n, reason="a single distance: nothing to compare")
    if frame_shape is not None:
        chance = math.pi * tol_px**2 / max(1, int(frame_shape[0]) * int(frame_shape[1]))
        if CHANCE_MARGIN * chance > min_consistent:
            return Plausibility(None, n_angles=n, reason=f"frames of {frame_shape[0]} x {frame_shape[1]} px: "
                                f"a chance shift is consistent with probability {chance:.2f}, too often to tell")
    if n < MIN_ANGLES:
        return Plausibility(None, n_angles=n, reason=f"{n} angles registered (fewer than {MIN_ANGLES}): "
                            "too few to tell")
    order = np.argsort(thetas, kind="stable")
    peaks, ok, shifts = peaks[order], ok[order] & np.isfinite(shifts[order]).all(axis=2), shifts[order]
    consistent: dict[int, float] = {}
    median_peak: dict[int, float] = {}
    for k in others:
        good = 0
        for i in range(n):
            if not ok[i, k]:
                continue
            local = _local_median(shifts[:, k], ok[:, k], i, neighbours)
            if local is not None and float(np.hypot(*(shifts[i, k] - local))) <= tol_px:
                good += 1
        consistent[k + 1] = good / n
        median_peak[k + 1] = float(np.median(peaks[:, k]))
    score = float(np.median(list(consistent.values())))
    figures = ", ".join(f"distance {k}: {100 * c:.0f} % consistent, median peak {median_peak[k]:.2f}"
                        for k, c in consistent.items())
    if score < min_consistent:
        return Plausibility(True, consistent, median_peak, n, (
            f"the distances do not show one sample: at {n} angles, {100 * score:.0f} % (median over the "
            f"distances) of their registrations on the reference are accepted and agree within {tol_px:g} px "
            f"with the neighbouring angles, {100 * min_consistent:.0f} % at least expected ({figures}). Random "
            "or mixed-up frames?"))
    return Plausibility(False, consistent, median_peak, n, f"{100 * score:.0f} % of the registrations consistent "
                        f"(median over the distances; {figures})")
