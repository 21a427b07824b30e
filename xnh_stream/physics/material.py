"""delta/beta of the sample from its holograms: the fit of the linear CTF to every distance, with the phase free
beyond the field of view.

Why
---
The CTF retrieval (:mod:`~xnh_stream.physics.phase`) needs ``eps = beta/delta``. Taken from an assumed
composition it can be off by a factor of 3 or more, and at the lowest frequencies, where a hologram holds
``2 (chi_k + eps) phi`` (``chi_k = pi lambda D_k f^2``), the retrieved phase scales with ``1 / eps``: a wrong
value adds a large smooth error to every projection (a dome or a bowl in the volume).

The information about ``eps`` sits where ``chi_k`` is comparable to it, a few cycles per field of view, and in
how the K distances differ there (the phase term grows with ``D_k``, the absorption term does not). A fit
frequency by frequency on mirror-padded frames (the CTF's own padding) is biased at those frequencies: the
holograms of a sample wider than the field of view (the XNH case) are not those of its mirror image. On
four-distance scans of a truncated sample the bias was ~2x (true 30 / 100 / 300 read as 17 / 51 / 360), while on
holograms made consistent with the mirror padding the same fit found the true value within 1 %, even at a phase
of 1 rad: the bias is the truncation, not the nonlinearity of the hologram.

Method
------
* Every flat-fielded, aligned frame ``I_k`` of an angle is low-passed by a Gaussian of ``sigma`` pixels (about
  half the period of the first CTF zero of the farthest distance, :func:`material_band`), kept only where the
  Gaussian lies inside the frame, and sampled every ``step`` pixels, in windows of at most ``41 x 41`` samples.
* In a window, the unknown phase lives on the window plus a margin of 4 samples (free: it is what lies beyond
  the field of view), and ``d_k = crop(IFFT(2 A_k(eps) G(f) M_k(f) FFT(phi)))``, ``A_k = sin chi_k + eps cos
  chi_k``, ``G`` the low-pass, ``M_k`` distance ``k``'s pixel and its resampling to the reference pixel
  (:func:`pixel_transfer`). As ``exp(i chi_k)``, ``G`` and ``M_k`` are separable, ``Q_k = Qy_k (x) Qx_k`` (1-D operators) and
  ``J^T J(eps) = (eps^2 - 1) S_1 + 2 eps S_2 + (eps^2 + 1) S_3`` with three matrices computed once, so that each
  ``eps`` costs one Cholesky factorisation, shared by every window (:class:`TruncatedCTFFit`).
* The residual ``R(eps) = |d|^2 - d^T J (J^T J)^-1 J^T d``, summed over windows and angles, is smallest at the
  sample's ``eps``. Its noise part depends on ``eps`` too (low-passed noise is coloured, and each distance's
  pixel differs): it is measured on simulated noise (white on each distance's own pixels, variance proportional
  to the intensity and to ``1 / flat counts``, aligned as the frames are) and subtracted, scaled so that the
  residual at the minimum is noise (``noise_scale``: ~1.15 on scans whose noise is plain photon noise).
* The value is the vertex of a parabola in ``log(delta/beta)`` through the lowest points of a grid; its
  uncertainty comes from a jackknife over groups of angles (:func:`estimate_delta_beta`).

A sample of two materials (a resin body, stained inclusions) gives the ``delta/beta`` of its contrast, the one
a single-material CTF should use. Numbers: ``docs/delta_beta.md``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import linalg, ndimage

from .align import align_to_reference
from .geometry import ScanGeometry

__all__ = ["DELTA_BETA_GRID", "DeltaBetaEstimate", "MaterialBand", "TruncatedCTFFit", "estimate_delta_beta",
           "material_band", "noise_frames", "pixel_transfer", "window_samples"]

#: Low-pass sigma in units of ``1 / f_1`` (``f_1 = 1 / sqrt(lambda D_max)``, the first CTF zero of the farthest
#: distance): the low-pass keeps ~60 % at ``0.3 f_1``, the band where ``eps`` shows.
SIGMA_F1 = 0.54
#: Largest window side in samples (the dense normal matrix is ``(side + 2 margin)^4`` numbers).
MAX_WINDOW = 41
#: Margin of free phase around a window, samples.
MARGIN = 4
#: Smallest window side (samples) the fit is made on: on windows of 25 samples (frames of 64 px at pixel Fresnel
#: numbers ~0.06) it was off by up to 45 % with an interval that did not hold the truth; from 33 on within 20 %.
MIN_WINDOW = 32
#: delta/beta values the profile is computed at first (then refined around its minimum).
DELTA_BETA_GRID = tuple(float(v) for v in np.geomspace(5.0, 2000.0, 16))


@dataclass(frozen=True)
class MaterialBand:
    """How frames are cut into the fit's windows.

    Attributes
    ----------
    sigma_px : float
        Gaussian low-pass, reference pixels.
    step : int
        Sampling of the low-passed frame, pixels.
    window : (int, int)
        Samples per window ``(rows, columns)``.
    origins : tuple of (int, int)
        First pixel (row, column) of each window's samples in the frame.
    margin : int
        Free phase around a window, samples.
    """

    sigma_px: float
    step: int
    window: tuple[int, int]
    origins: tuple[tuple[int, int], ...]
    margin: int = MARGIN

    @property
    def reach(self) -> int:
        """Pixels the low-pass reaches on each side of a sample (3 sigma)."""
        return math.ceil(3 * self.sigma_px)


def _starts(n_valid: int, size: int, n_max: int) -> list[int]:
    """Window starts (in samples) covering ``n_valid`` samples with windows of ``size``, at most ``n_max``."""
    if n_valid <= size:
        return [0]
    count = min(n_max, math.ceil(n_valid / size))
    return sorted({round(float(v)) for v in np.linspace(0, n_valid - size, count)})


def material_band(geometry: ScanGeometry, frame_shape: tuple[int, int], max_windows: int = 4) -> MaterialBand | None:
    """The low-pass, sampling and windows of the fit for frames of ``frame_shape`` (None: too small).

    ``max_windows`` bounds the windows per axis (frames of thousands of pixels give many)."""
    ny, nx = (int(v) for v in frame_shape)
    lam = geometry.distances[0].wavelength_m
    f1_px = geometry.voxel_m / math.sqrt(lam * max(geometry.propagation_distances_m))  # cycles per pixel
    sigma = SIGMA_F1 / f1_px
    step = max(1, round(0.87 * sigma))
    reach = math.ceil(3 * sigma)
    valid = [len(range(reach, n - reach, step)) for n in (ny, nx)]
    if min(valid) < MIN_WINDOW:
        return None
    wy, wx = (min(v, MAX_WINDOW) for v in valid)
    origins = tuple((reach + sy * step, reach + sx * step)
                    for sy in _starts(valid[0], wy, max_windows) for sx in _starts(valid[1], wx, max_windows))
    return MaterialBand(float(sigma), step, (wy, wx), origins)


def window_samples(frames: np.ndarray, band: MaterialBand) -> np.ndarray:
    """The low-passed samples of ``I - 1`` in every window: ``[windows, K, rows, columns]`` (float64).

    ``frames [K, ny, nx]``: flat-fielded, aligned frames of one angle (or simulated noise around 1)."""
    d = np.asarray(frames, dtype=np.float64) - 1.0
    r, s = band.reach, band.step
    wy, wx = band.window
    out = []
    for y0, x0 in band.origins:
        # the Gaussian at a sample only reads pixels within `reach`: filter the window's neighbourhood
        ya, xa = y0 - r, x0 - r
        yb, xb = y0 + (wy - 1) * s + r + 1, x0 + (wx - 1) * s + r + 1
        part = ndimage.gaussian_filter(d[:, ya:yb, xa:xb], (0, band.sigma_px, band.sigma_px), mode="constant",
                                       truncate=r / band.sigma_px)
        out.append(part[:, r:r + (wy - 1) * s + 1:s, r:r + (wx - 1) * s + 1:s])
    return np.stack(out)


def pixel_transfer(f_px: np.ndarray, ratio: float, resampled: bool) -> np.ndarray:
    """1-D transfer of a distance's detector pixel (``ratio`` reference pixels wide: the integration over it,
    ``sinc``) and, for a distance brought to the reference pixel, of the cubic B-spline interpolation that does it
    (``sinc^4 3 / (2 + cos 2 pi u)`` in its own frequency ``u``); ``f_px`` in cycles per reference pixel."""
    u = np.asarray(f_px, dtype=np.float64) * ratio
    out = np.sinc(u)
    if resampled:
        out = out * np.sinc(u) ** 4 * 3.0 / (2.0 + np.cos(2 * np.pi * u))
    return out


def _q1(n: int, n_window: int, margin: int, lam: float, distance_m: float, pixel_m: float, sigma_px: float,
        step: int, mtf: Any = None) -> np.ndarray:
    """1-D operator from a periodic grid of ``n`` samples to the ``n_window`` samples after ``margin``:
    ``crop(IFFT(exp(i pi lambda D f^2) G(f) M(f) FFT(.)))`` (``M = mtf(f in cycles per pixel)``, or 1)."""
    f = np.fft.fftfreq(n, pixel_m * step)
    h = np.exp(1j * np.pi * lam * distance_m * f**2) * np.exp(-2 * np.pi**2 * sigma_px**2 * (f * pixel_m) ** 2)
    if mtf is not None:
        h = h * mtf(f * pixel_m)
    m = np.fft.ifft(h[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0)
    return m[margin:margin + n_window]


class TruncatedCTFFit:
    """Residual of the linear CTF fit (phase free beyond each window) as a function of ``eps = beta/delta``.

    Parameters
    ----------
    geometry : ScanGeometry
        The distances; the frames are on the reference pixel.
    band : MaterialBand
        Low-pass, sampling and windows.
    """

    def __init__(self, geometry: ScanGeometry, band: MaterialBand, pixels: bool = True) -> None:
        self.band = band
        lam = geometry.distances[0].wavelength_m
        wy, wx = band.window
        m = band.margin
        self.shape = (wy + 2 * m, wx + 2 * m)
        self.q = []
        for k, d in enumerate(geometry.propagation_distances_m):
            mtf = None
            if pixels:  # each distance's pixel and its resampling to the reference pixel
                ratio, resampled = geometry.scale_to_reference(k), k != geometry.reference

                def mtf(f: np.ndarray, ratio: float = ratio, resampled: bool = resampled) -> np.ndarray:
                    return pixel_transfer(f, ratio, resampled)
            self.q.append(tuple(_q1(n, w, m, lam, d, geometry.voxel_m, band.sigma_px, band.step, mtf)
                                for n, w in zip(self.shape, (wy, wx))))
        n = self.shape[0] * self.shape[1]
        s1, s2, s3 = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        for qy, qx in self.q:
            t = np.kron(qy.T @ qy, qx.T @ qx)
            s1 += 2 * t.real
            s2 += 2 * t.imag
            s3 += 2 * np.kron(qy.conj().T @ qy, qx.conj().T @ qx).real
        self._s = (s1, s2, s3)

    def moments(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sum_k Qy_k^T d_k Qx_k`` (complex, flattened) and ``|d|^2`` of each window of ``samples [n, K, wy, wx]``."""
        t = sum(qy.T @ samples[:, k] @ qx for k, (qy, qx) in enumerate(self.q))
        return np.asarray(t).reshape(samples.shape[0], -1), np.sum(samples**2, axis=(1, 2, 3))

    def residuals(self, eps: float, *moments: tuple[np.ndarray, np.ndarray], ridge: float = 1e-9) -> list[np.ndarray]:
        """``R(eps)`` of every window, for each set of :meth:`moments`."""
        s1, s2, s3 = self._s
        jtj = (eps * eps - 1) * s1 + 2 * eps * s2 + (eps * eps + 1) * s3
        jtj[np.diag_indices_from(jtj)] += ridge * np.trace(jtj) / jtj.shape[0]
        factor = linalg.cho_factor(jtj, lower=True, check_finite=False, overwrite_a=True)
        out = []
        for t, dd in moments:
            g = 2 * (eps * t.real + t.imag)  # J^T d: J_k = 2 Re((eps - i) Q_k)
            x = linalg.cho_solve(factor, g.T, check_finite=False).T
            out.append(dd - np.sum(g * x, axis=1))
        return out


def noise_frames(intensity: np.ndarray, relative_variance: np.ndarray, geometry: ScanGeometry,
                 rng: np.random.Generator) -> np.ndarray:
    """Simulated noise around 1 ``[K, ny, nx]`` on the reference grid: white on each distance's own pixels with
    variance ``relative_variance[k] * intensity[k]`` (photon noise), brought to the reference pixel as the
    frames are (:func:`~xnh_stream.physics.align.align_to_reference`)."""
    out = np.empty(intensity.shape, dtype=np.float64)
    for k in range(intensity.shape[0]):
        w = rng.standard_normal(intensity.shape[1:]) * np.sqrt(np.clip(intensity[k], 0, None) * relative_variance[k])
        out[k] = align_to_reference(w.astype(np.float32), k, geometry, (0.0, 0.0))
    return out + 1.0


@dataclass
class DeltaBetaEstimate:
    """delta/beta found in the holograms.

    Attributes
    ----------
    value : float or None
        The estimate (None: no minimum inside the grid).
    interval : (float, float) or None
        About 95 %: ``value * exp(+-2 se)``, ``se`` the jackknife standard error of ``log(value)`` over groups
        of angles.
    log_se : float or None
        That standard error.
    noise_scale : float
        Residual at the minimum over the simulated noise's (1: the model explains everything but the noise).
    windows : int
        Windows fitted (angles times windows per frame).
    grid, profile : list of float
        ``delta/beta`` values and the debiased residual there, relative to its minimum.
    """

    value: float | None
    interval: tuple[float, float] | None
    log_se: float | None
    noise_scale: float
    windows: int
    grid: list[float] = field(default_factory=list)
    profile: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Figures for the report."""
        return {"value": None if self.value is None else round(self.value, 2),
                "interval": None if self.interval is None else [round(v, 2) for v in self.interval],
                "log_se": None if self.log_se is None else round(self.log_se, 4),
                "noise_scale": round(self.noise_scale, 3), "windows": self.windows,
                "profile": {"delta_beta": [round(v, 2) for v in self.grid], "residual": [round(v, 5) for v in self.profile]}}


def _vertex(x: np.ndarray, y: np.ndarray) -> float | None:
    """Vertex of the parabola through the lowest point of ``y(x)`` and its neighbours (None: at an end)."""
    i = int(np.argmin(y))
    if i == 0 or i == len(y) - 1:
        return None
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    return float(-b / (2 * a)) if a > 0 else float(x[i])


def _minimum(grid: np.ndarray, r: np.ndarray, rn: np.ndarray) -> tuple[float | None, float]:
    """log(delta/beta) at the minimum of ``sum R - s Rn`` with ``s`` such that the residual at the minimum is noise
    (fixed point), and ``s``."""
    x = np.log(grid)
    tot = r.sum(axis=1)
    s = 1.0
    v = _vertex(x, tot - rn)
    for _ in range(30):
        if v is None:
            return None, s
        s_new = float(np.interp(v, x, tot) / np.interp(v, x, rn))
        v_new = _vertex(x, tot - s_new * rn)
        done = v_new is not None and abs(v_new - v) < 1e-4
        v, s = v_new, s_new
        if done:
            break
    return v, s


def estimate_delta_beta(fit: TruncatedCTFFit, samples: list[np.ndarray], noise: np.ndarray,
                        grid: tuple[float, ...] = DELTA_BETA_GRID, groups: int = 16) -> DeltaBetaEstimate:
    """The delta/beta that minimises the debiased residual (see the module notes).

    Parameters
    ----------
    fit : TruncatedCTFFit
        The windows' model.
    samples : list of ndarray ``[windows, K, wy, wx]``
        :func:`window_samples` of each angle.
    noise : ndarray ``[realisations, windows, K, wy, wx]``
        :func:`window_samples` of :func:`noise_frames`, with the frames' intensity.
    grid : tuple of float
        delta/beta values of the first pass; two more are added either side of its minimum.
    groups : int
        Groups of angles of the jackknife.
    """
    n_angles = len(samples)
    per_angle = [s.shape[0] for s in samples]
    data = fit.moments(np.concatenate(samples))
    nz = fit.moments(noise.reshape((-1,) + noise.shape[2:]))
    n_real = noise.shape[0]
    bounds = np.cumsum([0] + per_angle)

    def evaluate(db: float) -> tuple[np.ndarray, float]:
        r, rn = fit.residuals(1.0 / db, data, nz)
        per = np.array([r[a:b].sum() for a, b in itertools.pairwise(bounds)])
        return per, float(rn.sum() / n_real)  # the expected noise residual of one angle's windows

    values = {float(db): evaluate(db) for db in grid}
    g = np.array(sorted(values))
    i = int(np.argmin([values[v][0].sum() - values[v][1] * n_angles for v in g]))
    for j in (i - 1, i):  # refine: the geometric midpoints beside the coarse minimum
        if 0 <= j < len(g) - 1:
            mid = float(math.sqrt(g[j] * g[j + 1]))
            values[mid] = evaluate(mid)
    g = np.array(sorted(values))
    r = np.stack([values[v][0] for v in g])  # [grid, angles]
    rn = np.array([values[v][1] for v in g]) * n_angles  # expected noise residual of all the angles
    v, s = _minimum(g, r, rn)
    prof = r.sum(axis=1) - s * rn
    prof = (prof - prof.min()) / max(float(r.sum(axis=1).min()), 1e-300)
    windows = int(sum(per_angle))
    if v is None:
        return DeltaBetaEstimate(None, None, None, s, windows, g.tolist(), prof.tolist())
    # jackknife over groups of angles
    idx = np.array_split(np.arange(n_angles), min(groups, n_angles))
    est = []
    for part in idx:
        keep = np.ones(n_angles, bool)
        keep[part] = False
        frac = keep.sum() / n_angles
        vj, _ = _minimum(g, r[:, keep], rn * frac)
        if vj is not None:
            est.append(vj)
    se = None
    if len(est) >= 3:
        e = np.array(est)
        se = float(math.sqrt((len(e) - 1) / len(e) * np.sum((e - e.mean()) ** 2)))
    value = float(math.exp(v))
    interval = None if se is None else (value * math.exp(-2 * se), value * math.exp(2 * se))
    return DeltaBetaEstimate(value, interval, se, s, windows, g.tolist(), prof.tolist())
