"""Rotation-axis (centre-of-rotation) estimation: independent estimators and their consensus.

Convention: the axis position ``cor`` is in detector columns of the reference distance (``0 .. n_det - 1``;
a centred axis is ``(n_det - 1) / 2``), as in :mod:`xnh_stream.physics.fbp`. A projection at ``theta + pi``
is the one at ``theta`` mirrored about the axis: ``p(theta + pi, t) = p(theta, 2 cor - t)``. Fresnel
propagation commutes with that mirror, so every estimator here works on flat-fielded holograms as well as
on line integrals; they take flat-fielded intensities and use ``-log(I)`` by default (``take_log``).

Estimators (each returns a :class:`CorCandidate` with its own uncertainty and quality)
-----------------------------------------------------------------------------------------
* ``pairs-180``: registration of a frame with the mirrored frame taken 180 degrees later
  (:func:`estimate_cor`), for every 0/180 pair handed in (return projections included); 0/360 pairs
  (the same angle one turn later) give the axis drift instead (:func:`cor_from_pairs`).
* ``vo``: a full-sinogram method after Vo et al. (Opt. Express 22, 19078, 2014): the 180-degree
  sinogram stacked with its mirror (the 180..360 degree half) is a consistent 360-degree sinogram only
  for the right axis; a wrong one leaves a seam whose energy falls in the double-wedge region of the 2-D
  spectrum where an object within the field of view has none (:func:`cor_vo`). Several rows at full
  resolution; coarse on binned columns, then sub-pixel.
* ``window``: a coarse-to-fine sliding-window search over the whole detector: the normalised
  correlation, over their overlap only, of each sinogram row at ``theta`` with the mirrored row near
  ``theta + pi`` (:func:`cor_sliding_window`). Pairs a few angular steps short of 180 degrees (all a
  [0, 180) scan has) are extrapolated to a zero gap, so no 180-degree projection is needed; a 360-degree
  scan gives exact pairs at every angle, and the overlap-only correlation finds an axis near the
  detector edge (half acquisition).

:func:`estimate_rotation_axis` runs them and forms the consensus (:class:`CorEstimate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft
import scipy.optimize
from scipy.ndimage import gaussian_filter1d, median_filter

from xnh_stream.physics.fbp import backproject_many, padded_length, ramp_filter
from xnh_stream.physics.fsc import tukey_window
from xnh_stream.physics.xp import check_finite

#: Candidates farther apart than this (pixels) are reported as a disagreement.
DISAGREEMENT_PX = 1.0
#: Uncertainty floor of a 0/180 pair registration, px (measured within 0.03 px on simulated scans).
PAIR_FLOOR_PX = 0.05
#: Uncertainty floor of Vo's method, px: it showed a steady bias of 0.1-0.2 px on simulated and foreign scans,
#: so a pair, where there is one, outweighs it.
VO_FLOOR_PX = 0.2

# --------------------------------------------------------------------------------------------------
# Pair registration and the sharpness search (moved here from fbp.py)
# --------------------------------------------------------------------------------------------------
def _correlation_shift(
    a: np.ndarray, b: np.ndarray, lowpass_px: float, max_dy: int
) -> tuple[float, float]:
    """Shift ``(dy, dx)`` with ``b(y, x) ~ a(y + dy, x + dx)``: low-passed cross-correlation peak.

    Mean-removed, Tukey-apodised, zero-padded to twice the size (no wrap-around); the integer peak is
    refined by maximising the correlation evaluated off-grid by its Fourier series.
    """
    ny, nx = a.shape
    win = tukey_window(ny, 0.25).astype(np.float64)[:, None] * tukey_window(nx, 0.25)[None, :]

    def prep(im: np.ndarray) -> np.ndarray:
        return (im - np.average(im, weights=win)) * win

    py, px = (2 * ny if ny > 1 else 1), 2 * nx
    fa = scipy.fft.rfft2(prep(a), s=(py, px), workers=-1)
    fb = scipy.fft.rfft2(prep(b), s=(py, px), workers=-1)
    fy = np.fft.fftfreq(py)[:, None]
    fx = np.fft.rfftfreq(px)[None, :]
    cross = fa * np.conj(fb) * np.exp(-2 * (np.pi * lowpass_px) ** 2 * (fx**2 + fy**2))
    cc = scipy.fft.irfft2(cross, s=(py, px), workers=-1)
    # cc[dy, dx] = sum a(y + dy, x + dx) b(y, x)
    dys = np.unique(np.r_[0 : max_dy + 1, -max_dy:0] % py)
    dxs = np.r_[0:nx, -nx + 1 : 0] % px
    sub = cc[np.ix_(dys, dxs)]
    iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
    dy0 = int(dys[iy])
    dy0 = dy0 - py if dy0 > py // 2 else dy0
    dx0 = int(dxs[ix])
    dx0 = dx0 - px if dx0 > px // 2 else dx0

    wx = np.full(fx.shape[1], 2.0)  # Hermitian weights of the half spectrum
    wx[0] = 1.0
    if px % 2 == 0:
        wx[-1] = 1.0
    kx = np.arange(fx.shape[1])
    ky = np.fft.fftfreq(py) * py

    def neg_cc(p: np.ndarray) -> float:
        ey = np.exp(2j * np.pi * ky * p[0] / py)
        ex = wx * np.exp(2j * np.pi * kx * p[1] / px)
        return -float(np.real(ey @ cross @ ex))

    start = np.array([dy0, dx0], dtype=float)
    if ny > 1:
        res = scipy.optimize.minimize(
            neg_cc,
            start,
            method="Nelder-Mead",
            options={
                "xatol": 1e-4,
                "fatol": 1e-12 * abs(neg_cc(start)),
                "initial_simplex": start + np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]),
            },
        )
        dy, dx = float(res.x[0]), float(res.x[1])
    else:
        res1 = scipy.optimize.minimize_scalar(
            lambda v: neg_cc(np.array([0.0, v])),
            bounds=(dx0 - 1.0, dx0 + 1.0),
            method="bounded",
            options={"xatol": 1e-5},
        )
        dy, dx = 0.0, float(res1.x)
    if abs(dx - dx0) > 1.5 or abs(dy - dy0) > 1.5:
        raise ValueError(f"correlation peak refinement diverged ({dy0}, {dx0}) -> ({dy:.2f}, {dx:.2f})")
    return dy, dx


def estimate_cor(
    proj0: Any,
    proj180: Any,
    xp: ModuleType = np,
    lowpass_px: float = 2.0,
    max_vertical_shift: int | None = None,
) -> float:
    """Rotation-axis position from a projection and the one taken 180 degrees later.

    The second projection is mirrored left-right, which turns it into the first one shifted by
    ``s = 2 cor - (n_det - 1)`` columns; ``s`` is found by zero-padded cross-correlation of the
    mean-removed, Tukey-apodised images with a Gaussian low-pass (``lowpass_px``; not whitened),
    integer peak then a continuous refinement. The apodisation pulls the peak towards zero shift, so
    the mirrored image is shifted back by the estimate (cubic spline) and the small residual is
    measured again until it vanishes.

    Parameters
    ----------
    proj0, proj180 : array ``[rows, n_det]`` or ``[n_det]``
        Projections at ``theta`` and ``theta + pi``.
    xp : module
        Array module of the inputs (the correlation runs on the host).
    lowpass_px : float
        Standard deviation (pixels) of the Gaussian low-pass applied to the correlation.
    max_vertical_shift : int, optional
        Largest row shift searched (default ``rows // 4``).

    Returns
    -------
    float
        ``cor`` in detector pixel coordinates.
    """
    from scipy.ndimage import shift as nd_shift  # noqa: PLC0415

    a = np.asarray(proj0 if xp is np else xp.asnumpy(proj0), dtype=np.float64)
    b = np.asarray(proj180 if xp is np else xp.asnumpy(proj180), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"proj0 {a.shape} and proj180 {b.shape} differ in shape")
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.ndim != 2 or a.shape[1] < 4:
        raise ValueError(f"projections must be [rows, n_det] with n_det >= 4, got {a.shape}")
    check_finite(a, "proj0", np)
    check_finite(b, "proj180", np)
    ny, nx = a.shape
    mirrored = b[:, ::-1]
    max_dy = ny // 4 if max_vertical_shift is None else int(max_vertical_shift)
    dy, s = _correlation_shift(a, mirrored, lowpass_px, max_dy)
    for _ in range(4):
        # moved(y, x) = mirrored(y - dy, x - s) ~ a(y, x): only a residual is left to measure.
        moved = nd_shift(mirrored, (dy, s), order=3, mode="nearest")
        ry, rs = _correlation_shift(a, moved, lowpass_px, 1 if ny > 1 else 0)
        dy, s = dy + ry, s + rs
        if abs(rs) < 1e-3 and abs(ry) < 1e-3:
            break
    return (nx - 1 + s) / 2.0


def _sharpness_metric(img: np.ndarray, mask: np.ndarray) -> float:
    """Normalised total variation ``||grad f||_1 / ||grad f||_2`` inside ``mask``; smallest when sharpest.

    A detector shift only changes the phases of the slice's Fourier data, so ``||grad f||_2`` is
    (nearly) unchanged by a wrong axis while the gradient spreads over doubled edges and arcs, which
    raises the L1 norm; the ratio is insensitive to structures leaving the masked region.
    """
    gy = np.diff(img, axis=0)[:, :-1]
    gx = np.diff(img, axis=1)[:-1, :]
    g = np.sqrt(gx * gx + gy * gy)[mask[:-1, :-1]].astype(np.float64)
    l2 = float(np.sqrt(np.sum(g * g)))
    return float(np.sum(g)) / l2 if l2 > 0 else 0.0


def estimate_cor_sinogram(
    sino: Any,
    thetas: Any,
    search_px: float | None = None,
    window: str = "hann",
    step_px: float = 1.0,
) -> float:
    """Rotation-axis position from one sinogram when no projection pair is 180 degrees apart.

    Reconstructs the slice for candidate axis positions and keeps the sharpest one (lowest normalised
    total variation inside the reconstruction circle; a wrong axis turns every edge into a doubled
    edge or an arc). Coarse grid of ``step_px``
    over ``+-search_px`` around the detector centre, then a 0.1-pixel grid within one step of the
    best node and a parabola through the values near its minimum.

    Parameters
    ----------
    sino : array ``[n_angles, n_det]``
        Sinogram (line integrals) of one detector row.
    thetas : array ``[n_angles]``
        Angles in radians; should span about 180 degrees or more.
    search_px : float, optional
        Half-width of the searched range around ``(n_det - 1) / 2`` (default ``n_det / 8``).
    window : str
        Ramp window for the trial reconstructions; the smooth "hann" default keeps noise out of the
        sharpness and gave errors below 0.1 pixel in our trials where "ram-lak" gave up to 0.3.
    step_px : float
        Coarse grid step in pixels.

    Returns
    -------
    float
        ``cor`` in detector pixel coordinates.
    """
    sino = np.asarray(sino, dtype=np.float32)
    thetas = np.asarray(thetas, dtype=np.float64).ravel()
    if sino.ndim != 2:
        raise ValueError(f"sinogram must be [n_angles, n_det], got shape {sino.shape}")
    n_angles, n_det = sino.shape
    if thetas.size != n_angles:
        raise ValueError(f"{thetas.size} angles for {n_angles} sinogram rows")
    if n_det < 8 or n_angles < 8:
        raise ValueError(f"sinogram too small for a centre search: {sino.shape}")
    check_finite(sino, "sinogram", np)
    check_finite(thetas, "thetas", np)
    centre = (n_det - 1) / 2.0
    search = n_det / 8.0 if search_px is None else float(search_px)
    if not 0 < search < n_det / 2:
        raise ValueError(f"search_px must be in (0, {n_det / 2}), got {search_px}")
    # Filter once; a candidate axis is applied as an exact Fourier shift of the filtered rows by the
    # fractional part, then back-projected with the integer part, so that the interpolation pattern
    # (and with it the sharpness) does not change with the fractional axis position.
    length = padded_length(n_det)
    spec = scipy.fft.rfft(sino, n=length, axis=-1, workers=-1) * ramp_filter(n_det, window, "float32")
    freq = np.fft.rfftfreq(length)
    # Slice region that stays inside the field of view for every candidate.
    n_out = max(8, int(2 * ((n_det - 1) / 2.0 - search)) - 2)
    rr = np.arange(n_out) - (n_out - 1) / 2.0
    mask = (rr[None, :] ** 2 + rr[:, None] ** 2) <= ((n_out - 2) / 2.0) ** 2
    cache: dict[float, float] = {}

    def metric(cor: float) -> float:
        key = round(float(cor), 6)
        if key not in cache:
            whole = float(np.round(cor))
            frac = cor - whole
            rows = scipy.fft.irfft(spec * np.exp(2j * np.pi * freq * frac), n=length, axis=-1, workers=-1)
            rows = np.ascontiguousarray(rows[:, None, :n_det], dtype=np.float32)
            img = np.zeros((1, n_out, n_out), dtype=np.float32)
            backproject_many(rows, thetas, whole, img, workers=-1)
            cache[key] = _sharpness_metric(img[0], mask)
        return cache[key]

    coarse = centre + np.arange(-search, search + 1e-9, step_px)
    best = float(coarse[int(np.argmin([metric(c) for c in coarse]))])
    fine = best + np.linspace(-step_px, step_px, 2 * int(np.ceil(step_px / 0.1)) + 1)
    values = np.array([metric(c) for c in fine])
    i0 = int(np.argmin(values))
    near = np.abs(fine - fine[i0]) <= 0.55
    a2, a1, _ = np.polyfit(fine[near] - fine[i0], values[near], 2)
    if a2 <= 0:
        return float(fine[i0])
    return float(fine[i0] + np.clip(-a1 / (2 * a2), -0.5, 0.5))


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorCandidate:
    """One estimator's answer.

    Attributes
    ----------
    method : str
        ``"pairs-180"``, ``"vo"`` or ``"window"``.
    px : float
        Axis position (detector columns).
    uncertainty_px : float
        The estimator's own uncertainty (spread over rows / pairs, or a floor).
    quality : float
        Figure of merit in ``[0, 1]`` (correlation at the peak, or notch significance mapped to [0, 1]).
    reliable : bool
        Whether it takes part in the consensus.
    detail : str
        What it used and, if unreliable, why.
    """

    method: str
    px: float
    uncertainty_px: float
    quality: float
    reliable: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"method": self.method, "px": round(float(self.px), 3),
                "uncertainty_px": round(float(self.uncertainty_px), 3), "quality": round(float(self.quality), 3),
                "reliable": bool(self.reliable), "detail": self.detail}


@dataclass(frozen=True)
class CorEstimate:
    """Consensus rotation axis.

    Attributes
    ----------
    px : float
        Axis position used (detector columns of the reference distance).
    method : str
        The estimators that decided, joined by ``+`` (e.g. ``"vo+window"``); ``"<name> (unreliable)"`` when
        no estimator was reliable and the best one was taken anyway.
    confidence_px : float
        Spread of the agreeing estimates, or their combined uncertainty if larger.
    disagreement_px : float
        Largest distance between reliable candidates (0 with fewer than two).
    candidates : tuple of CorCandidate
        Every estimator's answer, reliable or not.
    axis_drift_px : float or None
        Largest lateral shift between frames one turn (360 degrees) apart, if such pairs were given.
    """

    px: float
    method: str
    confidence_px: float
    disagreement_px: float
    candidates: tuple[CorCandidate, ...]
    axis_drift_px: float | None = None

    @property
    def agree(self) -> bool:
        """Whether the reliable candidates agree within :data:`DISAGREEMENT_PX`."""
        return self.disagreement_px <= DISAGREEMENT_PX

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record for ``report.json["cor"]``."""
        return {"px": round(float(self.px), 3), "method": self.method,
                "confidence_px": round(float(self.confidence_px), 3),
                "disagreement_px": round(float(self.disagreement_px), 3), "agree": self.agree,
                "axis_drift_px": None if self.axis_drift_px is None else round(float(self.axis_drift_px), 3),
                "candidates": [c.as_dict() for c in self.candidates]}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _line_integrals(x: Any, take_log: bool, name: str) -> np.ndarray:
    """Float64 copy, ``-log(I)`` of flat-fielded intensities if ``take_log`` (clipped at 1e-6)."""
    a = np.asarray(x, dtype=np.float64)
    check_finite(a, name, np)
    if take_log:
        a = -np.log(np.clip(a, 1e-6, None))
    return a


def _fourier_shift(rows: np.ndarray, d: float) -> np.ndarray:
    """``rows`` moved by ``d`` columns along the last axis (``out[j] = in[j - d]``), edge-padded, band-limited."""
    if d == 0:
        return rows
    n = rows.shape[-1]
    pad = max(8, n // 4)
    width = [(0, 0)] * (rows.ndim - 1) + [(pad, pad)]
    p = np.pad(rows, width, mode="edge")
    m = p.shape[-1]
    spec = scipy.fft.rfft(p, axis=-1) * np.exp(-2j * np.pi * np.fft.rfftfreq(m) * d)
    return scipy.fft.irfft(spec, n=m, axis=-1)[..., pad : pad + n]


def _mirror_shifted(b: np.ndarray, s: float) -> np.ndarray:
    """``b`` mirrored left-right then moved by ``s`` columns; columns moved in from outside repeat the edge.

    For ``s = 2 cor - (n - 1)`` this is ``b(2 cor - j)``: the mirror of ``b`` about ``cor``.
    """
    flip = b[..., ::-1]
    si = int(math.floor(s))
    frac = s - si
    if frac > 1e-9:
        flip = _fourier_shift(flip, frac)
    n = flip.shape[-1]
    si = max(-n + 1, min(n - 1, si))
    out = np.empty_like(flip)
    if si >= 0:
        out[..., si:] = flip[..., : n - si]
        out[..., :si] = flip[..., :1]
    else:
        out[..., :si] = flip[..., -si:]
        out[..., si:] = flip[..., -1:]
    return out


def _bin_columns(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of ``f`` adjacent columns (the last ``n % f`` columns are dropped)."""
    if f == 1:
        return a
    n = (a.shape[-1] // f) * f
    return a[..., :n].reshape(a.shape[:-1] + (n // f, f)).mean(axis=-1)


def _parabola_vertex(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """Vertex of the parabola through the three samples around index ``i`` (clipped to one step)."""
    if i <= 0 or i >= len(x) - 1:
        return float(x[i])
    a2, a1, _ = np.polyfit(x[i - 1 : i + 2] - x[i], y[i - 1 : i + 2], 2)
    if a2 == 0:
        return float(x[i])
    step = float(x[i + 1] - x[i])
    return float(x[i] + np.clip(-a1 / (2 * a2), -step, step))


def _wide_vertex(x: np.ndarray, y: np.ndarray, half_width: float) -> float:
    """Minimum of a least-squares parabola through the samples within ``half_width`` of the smallest one
    (several samples: robust to ripples of the curve), clipped to that interval."""
    i = int(np.argmin(y))
    near = np.abs(x - x[i]) <= half_width
    if near.sum() < 3:
        return float(x[i])
    a2, a1, _ = np.polyfit(x[near] - x[i], y[near], 2)
    if a2 <= 0:
        return float(x[i])
    return float(x[i] + np.clip(-a1 / (2 * a2), -half_width, half_width))


def _check_sinograms(sinograms: Any, thetas: Any, take_log: bool) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sinograms)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise ValueError(f"sinograms must be [rows, n_angles, n_det], got shape {s.shape}")
    th = np.asarray(thetas, dtype=np.float64).ravel()
    if th.size != s.shape[1]:
        raise ValueError(f"{th.size} angles for {s.shape[1]} sinogram angles")
    if s.shape[2] < 16 or s.shape[1] < 8:
        raise ValueError(f"sinograms too small for an axis search: {s.shape}")
    check_finite(th, "thetas", np)
    return _line_integrals(s, take_log, "sinograms"), th


def _overlap_ncc(a: np.ndarray, bm: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Normalised correlation over columns ``lo:hi`` of ``a`` and ``bm`` ``[..., rows, n]`` -> ``[...]``."""
    x = a[..., lo:hi]
    y = bm[..., lo:hi]
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    y = y - y.mean(axis=(-2, -1), keepdims=True)
    den = np.sqrt((x * x).sum(axis=(-2, -1)) * (y * y).sum(axis=(-2, -1)))
    return (x * y).sum(axis=(-2, -1)) / np.where(den > 0, den, np.inf)


# --------------------------------------------------------------------------------------------------
# Pairs of frames
# --------------------------------------------------------------------------------------------------
def cor_from_pairs(
    pairs: Sequence[tuple[Any, Any, float]], take_log: bool = True, min_quality: float = 0.3
) -> tuple[CorCandidate | None, float | None]:
    """Axis from 0/180 pairs of frames and axis drift from 0/360 pairs.

    Parameters
    ----------
    pairs : sequence of ``(a, b, delta_deg)``
        Flat-fielded frames ``[rows, n_det]`` (or rows ``[n_det]``) of the reference distance; ``b`` taken
        ``delta_deg`` (180 or 360, within 0.5 degree) after ``a``.
    take_log : bool
        Register ``-log(I)`` rather than ``I``.
    min_quality : float
        Smallest median normalised correlation (``a`` against mirrored ``b`` at the estimate) for the
        candidate to be reliable.

    Returns
    -------
    (CorCandidate or None, float or None)
        The ``pairs-180`` candidate (median over the 0/180 pairs) and the largest absolute lateral shift
        between the frames of the 0/360 pairs (pixels), each None when there were no such pairs.

    Raises
    ------
    ValueError
        When a pair's ``delta_deg`` is neither 180 nor 360, or its frames differ in shape.
    """
    cors, quals, drifts = [], [], []
    for a, b, delta in pairs:
        A = _line_integrals(a, take_log, "pair frame a")
        B = _line_integrals(b, take_log, "pair frame b")
        if A.shape != B.shape:
            raise ValueError(f"pair frames differ in shape: {A.shape} and {B.shape}")
        if A.ndim == 1:
            A, B = A[None], B[None]
        d = float(delta) % 360.0
        if abs(d - 180.0) <= 0.5:
            c = estimate_cor(A, B)
            n = A.shape[-1]
            s = 2 * c - (n - 1)
            lo, hi = max(0, int(math.ceil(s))) + 2, min(n, n + int(math.floor(s))) - 2
            q = float(_overlap_ncc(A, _mirror_shifted(B, s), lo, hi)) if hi - lo >= 8 else 0.0
            cors.append(c)
            quals.append(q)
        elif min(d, 360.0 - d) <= 0.5:
            dy, dx = _correlation_shift(A, B, 2.0, max(1, A.shape[0] // 4) if A.shape[0] > 1 else 0)
            drifts.append(abs(dx))  # b(y, x) ~ a(y + dy, x + dx): b is a moved by -dx columns
        else:
            raise ValueError(f"pair delta_deg={delta} is neither 180 nor 360 degrees")
    drift = max(drifts) if drifts else None
    if not cors:
        return None, drift
    cors_a = np.asarray(cors)
    px = float(np.median(cors_a))
    spread = float(1.4826 * np.median(np.abs(cors_a - px))) if cors_a.size > 2 else float(np.ptp(cors_a) / 2)
    unc = max(PAIR_FLOOR_PX, spread)
    q = float(np.median(quals))
    ok = q >= min_quality
    detail = f"{cors_a.size} pair(s), correlation {q:.2f}" + ("" if ok else f" < {min_quality}: unreliable")
    return CorCandidate("pairs-180", px, unc, q, ok, detail), drift


# --------------------------------------------------------------------------------------------------
# Vo: Fourier double-wedge metric of the sinogram stacked with its mirror
# --------------------------------------------------------------------------------------------------
def _half_turn(sino: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """Rows ``[rows, n_half, n_det]`` on a regular grid over ``[theta_0, theta_0 + pi)``.

    The mirrored half then lands on ``[theta_0 + pi, theta_0 + 2 pi)``, continuing the grid: no
    180-degree projection is needed. Rows are interpolated linearly in angle where the measured angles
    are not regular (missing or quarantined frames); target angles past the last measured one repeat it.
    """
    order = np.argsort(thetas)
    th = thetas[order] - thetas[order][0]
    step = float(np.median(np.diff(th)))
    if not step > 0:
        raise ValueError("sinogram angles must not all be equal")
    n_half = int(round(np.pi / step))
    if th[-1] < np.pi - 1.5 * step:
        raise ValueError(f"sinogram angles span {np.degrees(th[-1]):.1f} degrees; the axis search needs ~180")
    target = np.arange(n_half) * (np.pi / n_half)
    keep = th < np.pi - 0.5 * step
    th, rows = th[keep], sino[:, order[keep], :]
    if th.size == n_half and np.allclose(th, target, atol=1e-3 * step):
        return rows
    idx = np.clip(np.searchsorted(th, target, side="right") - 1, 0, th.size - 1)
    nxt = np.clip(idx + 1, 0, th.size - 1)
    gap = np.where(nxt > idx, th[nxt] - th[idx], 1.0)
    w = np.clip((target - th[idx]) / gap, 0.0, 1.0)[None, :, None]
    return rows[:, idx, :] * (1 - w) + rows[:, nxt, :] * w


def _wedge_mask(n_rows: int, n_cols: int, ratio: float, drop: int, u_min: int) -> np.ndarray:
    """Region of the 2-D spectrum of a 360-degree sinogram ``[n_rows, n_cols]`` an object of radius
    ``ratio * n_cols / 2`` leaves empty: angular harmonic ``|k| > 2 pi r |u| / n_cols + drop``, with
    detector frequency ``|u| >= u_min`` (the lowest ones carry the truncated body's slow trend)."""
    k = np.abs(np.fft.fftfreq(n_rows) * n_rows)[:, None]
    u = np.abs(np.fft.rfftfreq(n_cols) * n_cols)[None, :]
    r = ratio * n_cols / 2.0
    return (k > 2 * np.pi * r * u / n_cols + drop) & (u >= u_min)


def _vo_metric(half: np.ndarray, s: float, mask: np.ndarray, u_min: int) -> float:
    """Fraction of the (detector frequency >= ``u_min``) spectral energy of ``[half; mirror_s(half)]``
    that falls in ``mask``."""
    n = half.shape[-1]
    # both halves are weighted by one window that is zero where the shifted mirror has no data (the
    # columns it repeats), with cosine ramps: no candidate gains from a smaller fill (s near 0)
    j = np.arange(n)
    lo, hi = max(0.0, s), min(n - 1.0, n - 1.0 + s)
    ramp = max(4.0, n / 24)
    w = np.clip((j - lo) / ramp, 0, 1) * np.clip((hi - j) / ramp, 0, 1)
    w = 0.5 - 0.5 * np.cos(np.pi * w)
    m0 = half.mean()
    mat = np.concatenate([(half - m0) * w, (_mirror_shifted(half, s) - m0) * w], axis=0)
    f2 = np.abs(scipy.fft.rfft2(mat)) ** 2
    u = np.fft.rfftfreq(mat.shape[1]) * mat.shape[1]
    total = float(f2[:, u >= u_min].sum())
    return float(f2[mask].sum()) / total if total > 0 else 1.0


def cor_vo(
    sinograms: Any,
    thetas: Any,
    search_px: float | None = None,
    take_log: bool = True,
    ratio: float = 1.5,
    min_significance: float = 5.0,
) -> CorCandidate:
    """Axis from the sinogram's consistency with its own mirror (Fourier double-wedge metric, after Vo 2014).

    The 180-degree half of each row's sinogram is stacked with its mirror about the candidate axis; the
    fraction of spectral energy inside the double wedge where a consistent sinogram has none is smallest
    at the right axis. On truncated (local-tomography) holograms that fraction also drifts slowly with
    the candidate, so the curve is detrended (running median over ~6 coarse steps) and the sharp notch
    is taken. Coarse: integer shifts of the mirror on columns binned to <= 256 (all rows summed);
    fine: per row at full resolution, steps of 0.25 in the shift (0.125 px in the axis) and a parabola.

    Parameters
    ----------
    sinograms : array ``[rows, n_angles, n_det]``
        Flat-fielded intensities (or line integrals with ``take_log=False``) of a few detector rows.
    thetas : array ``[n_angles]``
        Angles in radians, covering at least 180 degrees (a 360-degree scan: the first half is used).
    search_px : float, optional
        Half-width of the searched range around the detector centre (default ``n_det / 4``).
    take_log : bool
        Work on ``-log(I)``.
    ratio : float
        Radius of the object support as a fraction of half the detector width. The default 1.5 allows a
        sample wider than the field of view or off-centre (1 moved the estimate by 1 px on a sample 10 px
        off-centre; 3 let a spurious notch at zero shift win).
    min_significance : float
        Smallest notch depth, in robust standard deviations of the detrended curve, for a reliable result.

    Returns
    -------
    CorCandidate
        Method ``"vo"``: median over rows, uncertainty = spread over rows (floor 0.1 px).
    """
    L, th = _check_sinograms(sinograms, thetas, take_log)
    half = _half_turn(L, th)
    n_rows, n_half, n = half.shape
    search = n / 4.0 if search_px is None else float(search_px)
    if not 0 < search < n / 2:
        raise ValueError(f"search_px must be in (0, {n / 2}), got {search_px}")
    f = max(1, n // 256)
    hb = _bin_columns(half, f)
    nb = hb.shape[-1]
    # binned column k holds full columns f k .. f k + f - 1: full position x = f k + (f - 1) / 2
    s_max = int(math.floor(2 * search / f))
    ss = np.arange(-s_max, s_max + 1)
    u_min_b = max(1, nb // 24)
    mask_b = _wedge_mask(2 * n_half, nb, ratio, 2, u_min_b)
    curves = []
    for r in range(n_rows):
        v = np.array([_vo_metric(hb[r], float(s), mask_b, u_min_b) for s in ss])
        v = v / np.median(v)
        curves.append(v - median_filter(v, size=13, mode="nearest"))
    total = np.sum(curves, axis=0)
    i0 = int(np.argmin(total))
    robust = 1.4826 * float(np.median(np.abs(total - np.median(total))))
    significance = float(-total[i0] / robust) if robust > 0 else 0.0
    cb = (nb - 1 + ss[i0]) / 2.0
    c0 = f * cb + (f - 1) / 2.0
    # fine, per row, at full resolution
    u_min = max(1, n // 24)
    mask = _wedge_mask(2 * n_half, n, ratio, 2, u_min)
    s0 = 2 * c0 - (n - 1)
    fine = s0 + np.arange(-(f + 1), f + 1 + 1e-9, 0.25)
    per_row = []
    for r in range(n_rows):
        v = np.array([_vo_metric(half[r], float(s), mask, u_min) for s in fine])
        v = v - np.polyval(np.polyfit(fine, v, 1), fine)  # the slow trend, across the window
        per_row.append((n - 1 + _wide_vertex(fine, v, 1.5)) / 2.0)
    per_row_a = np.asarray(per_row)
    px = float(np.median(per_row_a))
    spread = float(1.4826 * np.median(np.abs(per_row_a - px))) if n_rows > 2 else float(np.ptp(per_row_a) / 2)
    unc = max(VO_FLOOR_PX, spread / math.sqrt(max(1, n_rows - 1)) * 2)
    ok = significance >= min_significance and abs(px - c0) <= f + 0.5
    q = float(1.0 - math.exp(-max(significance, 0.0) / min_significance))
    detail = f"{n_rows} row(s), notch {significance:.1f} sigma, row spread {spread:.2f} px"
    if not ok:
        detail += f"; unreliable (needs >= {min_significance} sigma)"
    return CorCandidate("vo", px, unc, q, ok, detail)


# --------------------------------------------------------------------------------------------------
# Sliding window over the whole detector, on near-opposite sinogram rows
# --------------------------------------------------------------------------------------------------
def _opposite_pairs(thetas: np.ndarray, max_gap: float, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` with ``theta_j - theta_i`` within ``max_gap`` of ``pi`` and their gaps
    ``pi - (theta_j - theta_i)``, at most ``max_pairs``, smallest gaps first, spread over angle.

    Angles are not wrapped: ``(179, 360)`` would be ``(179, 0)`` swapped, the same pair with the opposite
    gap, and would cancel the gap extrapolation."""
    d = thetas[None, :] - thetas[:, None]  # b after a: no wrap, so each pair appears once
    gap = np.pi - d
    ii, jj = np.nonzero((np.abs(gap) <= max_gap) & (d > 0))
    g = gap[ii, jj]
    if ii.size == 0:
        return ii, jj, g
    levels = np.round(g / max(max_gap, 1e-12) * 8).astype(int)
    keep: list[int] = []
    per_level = max(2, max_pairs // max(1, np.unique(levels).size))
    for lev in sorted(np.unique(levels), key=abs):
        idx = np.nonzero(levels == lev)[0]
        idx = idx[np.argsort(thetas[ii[idx]])]
        take = idx[np.unique(np.linspace(0, idx.size - 1, min(per_level, idx.size)).round().astype(int))]
        keep.extend(take.tolist())
        if len(keep) >= max_pairs:
            break
    keep_a = np.asarray(keep[:max_pairs])
    return ii[keep_a], jj[keep_a], g[keep_a]


def cor_sliding_window(
    sinograms: Any,
    thetas: Any,
    take_log: bool = True,
    max_gap_steps: float = 4.5,
    min_overlap: int | None = None,
    max_pairs: int = 48,
    min_quality: float = 0.3,
) -> CorCandidate:
    """Axis from overlap-only correlation of sinogram rows with the mirrored rows about 180 degrees later.

    Pairs of angles ``(theta_i, theta_j)`` with ``theta_j - theta_i = pi - g``, ``|g|`` up to
    ``max_gap_steps`` angular steps, are formed from the rows (a [0, 180) scan has ``g >= 1`` step only, a
    [0, 180] or 360-degree scan has ``g = 0``). Coarse: every integer shift of the mirrored row over the
    whole detector with at least ``min_overlap`` columns in common, on columns binned to <= 256, scored
    by the normalised correlation over the overlap (Fisher z, mean over pairs, times the square root of
    the overlap width, after a high-pass that removes the body's slow trend). Fine: per pair at full resolution, steps of 0.1 in the shift and a parabola. The
    pair estimates are fitted by ``cor + beta g`` (a rotation by ``g`` moves features linearly) and the
    intercept, the axis at zero gap, is returned.

    Parameters
    ----------
    sinograms : array ``[rows, n_angles, n_det]``
        Flat-fielded intensities of a few rows (or line integrals with ``take_log=False``).
    thetas : array ``[n_angles]``
        Angles in radians.
    take_log : bool
        Work on ``-log(I)``.
    max_gap_steps : float
        Largest angular gap from 180 degrees used, in angular steps.
    min_overlap : int, optional
        Fewest columns in common (default ``max(12, n_det // 8)``): the axis may lie within
        ``min_overlap / 2`` of the detector edge.
    max_pairs : int
        Most pairs used.
    min_quality : float
        Smallest mean correlation at the peak for a reliable result.

    Returns
    -------
    CorCandidate
        Method ``"window"``.
    """
    L, th = _check_sinograms(sinograms, thetas, take_log)
    n_rows, n_ang, n = L.shape
    step = float(np.median(np.diff(np.sort(th))))
    ii, jj, gaps = _opposite_pairs(th, max_gap_steps * step, max_pairs)
    if ii.size == 0:
        raise ValueError("no pair of angles within the allowed gap of 180 degrees apart")
    # [pairs, rows, n] with the body's slow trend removed (it would dominate the correlation)
    hp = L - gaussian_filter1d(L, sigma=max(4.0, n / 24), axis=-1, mode="nearest")
    A = np.moveaxis(hp[:, ii, :], 1, 0)
    B = np.moveaxis(hp[:, jj, :], 1, 0)
    overlap = max(12, n // 8) if min_overlap is None else int(min_overlap)
    if not 4 <= overlap <= n:
        raise ValueError(f"min_overlap must be in [4, {n}], got {min_overlap}")
    # coarse: binned columns, every integer shift
    f = max(1, n // 256)
    Ab, Bb = _bin_columns(A, f), _bin_columns(B, f)
    nb = Ab.shape[-1]
    ob = max(4, overlap // f)
    Bm = Bb[..., ::-1]
    ss = np.arange(-(nb - ob), nb - ob + 1)
    score = np.empty(ss.size)
    for k, s in enumerate(ss):
        lo, hi = max(0, s), min(nb, nb + s)
        shifted = np.empty_like(Bm)
        if s >= 0:
            shifted[..., s:] = Bm[..., : nb - s]
        else:
            shifted[..., :s] = Bm[..., -s:]
        # significance of the correlation (Fisher z times the square root of the samples), so that a
        # chance match over a narrow overlap near the detector edge does not beat the true one
        r = np.clip(_overlap_ncc(Ab, shifted, lo, hi), -0.999, 0.999)
        score[k] = float(np.mean(np.arctanh(r))) * math.sqrt(hi - lo)
    k0 = int(np.argmax(score))
    c0 = f * (nb - 1 + ss[k0]) / 2.0 + (f - 1) / 2.0
    # fine: per pair, full resolution, +-(f + 1) around the coarse shift
    s0 = 2 * c0 - (n - 1)
    lo = max(0, int(math.ceil(s0 + f + 1))) + 2
    hi = min(n, n + int(math.floor(s0 - f - 1))) - 2
    if hi - lo < 4:
        lo, hi = max(0, int(math.ceil(s0))), min(n, n + int(math.floor(s0)))
    fine = s0 + np.arange(-(f + 1), f + 1 + 1e-9, 0.1)
    per_pair, peaks = [], []
    for p in range(A.shape[0]):
        v = np.array([float(_overlap_ncc(A[p], _mirror_shifted(B[p], float(s)), lo, hi)) for s in fine])
        i = int(np.argmax(v))
        per_pair.append((n - 1 + _parabola_vertex(fine, v, i)) / 2.0)
        peaks.append(v[i])
    cp = np.asarray(per_pair)
    g = gaps / step  # in angular steps
    if np.ptp(g) >= 0.5:
        design = np.stack([np.ones_like(g), g], axis=1)
        coef, *_ = np.linalg.lstsq(design, cp, rcond=None)
        resid = cp - design @ coef
        dof = max(1, cp.size - 2)
        cov = np.linalg.pinv(design.T @ design) * float(resid @ resid) / dof
        px, unc = float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
        slope = float(coef[1])
    else:
        px = float(np.median(cp))
        unc = float(1.4826 * np.median(np.abs(cp - px)) / math.sqrt(cp.size))
        slope = 0.0
    unc = max(0.05, unc)
    q = float(np.mean(peaks))
    robust = 1.4826 * float(np.median(np.abs(score - np.median(score))))
    prominence = float((score[k0] - np.median(score)) / robust) if robust > 0 else 0.0
    ok = q >= min_quality and unc <= 0.5 and prominence >= 4.0
    detail = (f"{cp.size} pair(s), gaps {g.min():.1f}..{g.max():.1f} steps, slope {slope:.3f} px/step, "
              f"correlation {q:.2f}, peak {prominence:.1f} sigma")
    if not ok:
        detail += "; unreliable"
    return CorCandidate("window", px, unc, q, ok, detail)


# --------------------------------------------------------------------------------------------------
# Consensus
# --------------------------------------------------------------------------------------------------
def consensus(candidates: Sequence[CorCandidate], drift_px: float | None = None) -> CorEstimate:
    """Combine candidates: the largest group of reliable ones within :data:`DISAGREEMENT_PX` of each other.

    Parameters
    ----------
    candidates : sequence of CorCandidate
        Every estimator's answer.
    drift_px : float, optional
        Axis drift from 0/360 pairs, passed through.

    Returns
    -------
    CorEstimate
        Inverse-variance weighted mean of the winning group; ``confidence_px`` is the larger of the
        group's spread and its combined uncertainty; ``disagreement_px`` the largest distance between any
        two reliable candidates.

    Raises
    ------
    ValueError
        When there is no candidate at all.
    """
    cands = tuple(candidates)
    if not cands:
        raise ValueError("no rotation-axis candidate: give projection pairs or sinograms")
    rel = [c for c in cands if c.reliable and math.isfinite(c.px)]
    if not rel:
        finite = [c for c in cands if math.isfinite(c.px)]
        if not finite:
            raise ValueError("no rotation-axis estimator gave a result: " + "; ".join(c.detail for c in cands))
        best = max(finite, key=lambda c: c.quality)
        return CorEstimate(best.px, f"{best.method} (unreliable)", max(best.uncertainty_px, DISAGREEMENT_PX),
                           0.0, cands, drift_px)
    px_all = np.array([c.px for c in rel])
    disagreement = float(px_all.max() - px_all.min())
    groups = [[c for c in rel if abs(c.px - r.px) <= DISAGREEMENT_PX] for r in rel]

    def rank(grp: list[CorCandidate]) -> tuple[int, float]:
        return len(grp), sum(1.0 / c.uncertainty_px**2 for c in grp)

    grp = max(groups, key=rank)
    w = np.array([1.0 / c.uncertainty_px**2 for c in grp])
    x = np.array([c.px for c in grp])
    px = float(np.sum(w * x) / np.sum(w))
    combined = float(1.0 / math.sqrt(np.sum(w)))
    spread = float(np.ptp(x) / 2) if x.size > 1 else 0.0
    method = "+".join(sorted({c.method for c in grp}))
    return CorEstimate(px, method, max(combined, spread), disagreement, cands, drift_px)


def estimate_rotation_axis(
    pairs: Sequence[tuple[Any, Any, float]] = (),
    sinograms: Any = None,
    thetas: Any = None,
    take_log: bool = True,
    search_px: float | None = None,
    methods: Sequence[str] = ("pairs", "vo", "window"),
) -> CorEstimate:
    """Rotation axis of the reference distance from every estimator the data allow, and their consensus.

    Parameters
    ----------
    pairs : sequence of ``(a, b, delta_deg)``
        Flat-fielded reference-distance frames ``[rows, n_det]``, ``b`` taken 180 degrees after ``a``
        (a return projection counts) or 360 degrees after (the same angle one turn later: axis drift).
    sinograms : array ``[rows, n_angles, n_det]``, optional
        Flat-fielded intensities of a few full-resolution rows of every reference-distance projection.
    thetas : array ``[n_angles]``, optional
        Their angles in radians (required with ``sinograms``).
    take_log : bool
        Estimate on ``-log(I)`` (default) rather than on ``I``.
    search_px : float, optional
        Half-width of the Vo search around the detector centre (default ``n_det / 4``); the sliding
        window always searches the whole detector.
    methods : sequence of str
        Subset of ``("pairs", "vo", "window")``.

    Returns
    -------
    CorEstimate
        The consensus; ``method`` names the estimators that decided.

    Raises
    ------
    ValueError
        When nothing usable is given, or inputs are malformed.
    """
    unknown = set(methods) - {"pairs", "vo", "window"}
    if unknown:
        raise ValueError(f"unknown rotation-axis methods {sorted(unknown)}")
    cands: list[CorCandidate] = []
    drift = None
    if pairs and "pairs" in methods:
        cand, drift = cor_from_pairs(pairs, take_log=take_log)
        if cand is not None:
            cands.append(cand)
    if sinograms is not None:
        if thetas is None:
            raise ValueError("sinograms need their angles (thetas, radians)")
        th = np.asarray(thetas, dtype=np.float64)
        span = float(np.ptp(np.mod(th - th.min(), 2 * np.pi)))
        if "window" in methods:
            try:
                cands.append(cor_sliding_window(sinograms, th, take_log=take_log))
            except ValueError as err:
                cands.append(CorCandidate("window", float("nan"), float("inf"), 0.0, False, str(err)))
        if "vo" in methods and span >= np.pi * 0.97:
            try:
                cands.append(cor_vo(sinograms, th, search_px=search_px, take_log=take_log))
            except ValueError as err:
                cands.append(CorCandidate("vo", float("nan"), float("inf"), 0.0, False, str(err)))
    if not cands:
        raise ValueError("no rotation-axis estimate possible: give 0/180 pairs or sinograms over >= 180 degrees")
    return consensus(_outside_vo_range(cands, sinograms, search_px), drift)


def _outside_vo_range(cands: list[CorCandidate], sinograms: Any, search_px: float | None) -> list[CorCandidate]:
    """Vo's estimate marked unreliable where a reliable other estimator puts the axis outside Vo's search
    range (an off-centre axis of a half acquisition): there Vo can only have found a spurious notch."""
    vo = next((c for c in cands if c.method == "vo" and c.reliable), None)
    if vo is None or sinograms is None:
        return cands
    n = np.shape(sinograms)[-1]
    search = n / 4.0 if search_px is None else float(search_px)
    centre = (n - 1) / 2.0
    outside = [c for c in cands if c is not vo and c.reliable and abs(c.px - centre) > search]
    if not outside:
        return cands
    note = (f"; unreliable: {outside[0].method} puts the axis at {outside[0].px:.1f} px, outside Vo's search "
            f"range ({centre - search:.1f}-{centre + search:.1f} px)")
    return [CorCandidate(c.method, c.px, c.uncertainty_px, c.quality, False, c.detail + note) if c is vo else c
            for c in cands]
