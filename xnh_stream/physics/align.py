"""Alignment of the distances of one angle: magnification to the reference pixel and shift.

Coordinates and conventions
---------------------------
Images are indexed ``(y, x)``; the optical axis is the image centre ``c = (n - 1) / 2`` per
axis (the detector centre), which stays fixed under magnification.

A *shift* ``(dy, dx)`` is in OUTPUT (reference) pixels and moves the content by ``+dy, +dx``
(the :func:`scipy.ndimage.shift` convention)::

    output(y, x) = input( (y - dy - c_out_y) / scale + c_in_y , (x - dx - c_out_x) / scale + c_in_x )

so one input pixel covers ``scale`` output pixels. Outside the input field of view the
nearest edge value is used (coordinates clamped).

Registration returns the shift to APPLY to ``moving`` so that it matches ``reference``:
``reference(x) ~ moving(x - shift)``; :func:`align_to_reference` then applies magnification
and that shift in one cubic-spline interpolation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from .fsc import tukey
from .geometry import ScanGeometry
from .phase import retrieve_phase_paganin
from .xp import bin_2d, fft_module, fft_workers, ndimage_module

__all__ = [
    "rescale_shift",
    "RegistrationResult",
    "register_lowpass_ncc",
    "DistanceShifts",
    "measure_distance_shifts",
    "ShiftModel",
    "HeldShift",
    "align_to_reference",
    "unbin_2d",
]

log = logging.getLogger(__name__)

#: Registration defaults (see :func:`register_lowpass_ncc`).
DEFAULT_MIN_PEAK = 0.3
DEFAULT_UNIQUENESS = 0.8


def _kernel_weights(order: int, t: np.ndarray) -> np.ndarray:
    """Interpolation kernel at offsets ``t`` (float64): nearest, linear or cubic B-spline."""
    t = np.abs(t)
    if order == 0:
        return np.ones_like(t)
    if order == 1:
        return np.clip(1.0 - t, 0.0, None)
    return np.where(t < 1, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0))


def _resample_taps(
    n_in: int, n_out: int, scale: float, shift: float, order: int
) -> tuple[np.ndarray, np.ndarray]:
    """1-D resampling taps of one axis: input indices ``[n_out, n_taps]`` and float32 weights.

    Output sample ``i`` reads input coordinate ``c_in + (i - shift - c_out) / scale``, clamped to
    ``[0, n_in - 1]`` (outside the field of view: the edge value). Taps that fall outside the
    input use the mirror (whole-sample symmetric) extension, matching the boundary of the
    B-spline prefilter.
    """
    c_in, c_out = (n_in - 1) / 2.0, (n_out - 1) / 2.0
    x = np.clip(c_in + (np.arange(n_out) - shift - c_out) / scale, 0.0, n_in - 1.0)
    n_taps = {0: 1, 1: 2, 3: 4}[order]
    first = np.floor(x + 0.5).astype(np.int64) if order == 0 else np.floor(x).astype(np.int64) - (order // 2)
    cols = first[:, None] + np.arange(n_taps)[None, :]
    w = _kernel_weights(order, x[:, None] - cols)
    if n_in > 1:
        period = 2 * (n_in - 1)
        cols = np.mod(cols, period)
        cols = np.where(cols > n_in - 1, period - cols, cols)
    else:
        cols = np.zeros_like(cols)
    return np.ascontiguousarray(cols), np.ascontiguousarray(w, dtype=np.float32)


def _resample_matrix(n_in: int, n_out: int, scale: float, shift: float, order: int) -> Any:
    """Sparse ``[n_out, n_in]`` 1-D resampling matrix (host, float32) of :func:`_resample_taps`."""
    from scipy import sparse  # noqa: PLC0415

    cols, w = _resample_taps(n_in, n_out, scale, shift, order)
    rows = np.repeat(np.arange(n_out), cols.shape[1])
    return sparse.csr_matrix((w.ravel(), (rows, cols.ravel())), shape=(n_out, n_in), dtype=np.float32)


def rescale_shift(
    image: Any,
    scale: float,
    shift_yx: tuple[float, float] = (0.0, 0.0),
    out_shape: tuple[int, int] | None = None,
    order: int = 3,
    xp: ModuleType = np,
    workers: int = 1,
) -> Any:
    """Magnify ``image`` by ``scale`` about its centre and shift it, in one interpolation.

    The transform is separable (no rotation), so it is applied as a cubic B-spline
    prefilter (``mirror`` boundary) and two 1-D resampling passes (4 taps per axis); inside
    the field of view this equals ``scipy.ndimage.affine_transform(order=3)``. On the CPU the
    prefilter and the fused passes are compiled and multi-threaded (``workers``); on the GPU
    they are ``cupyx`` ``spline_filter`` and two sparse matrices. Output points that map
    outside the input take the nearest edge value (coordinates clamped).

    Parameters
    ----------
    image : array [ny, nx]
        Input image.
    scale : float
        Magnification (> 0): one input pixel becomes ``scale`` output pixels; to bring a
        distance to the reference pixel use ``geometry.scale_to_reference(k)`` (>= 1).
        With ``scale < 1`` there is no anti-aliasing.
    shift_yx : (float, float)
        Shift in output pixels; content moves by ``+shift``. See the module docstring for
        the exact formula.
    out_shape : (int, int), optional
        Output shape (default: the input shape); centred on the same optical axis.
    order : {3, 1, 0}
        Cubic B-spline, linear or nearest-neighbour interpolation.
    xp : module
        Array module.
    workers : int
        CPU threads (``<= 0``: all); ignored on the GPU.

    Returns
    -------
    array out_shape float32
    """
    image = xp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    dy, dx = (float(s) for s in shift_yx)
    if not (np.isfinite(dy) and np.isfinite(dx)):
        raise ValueError(f"shift must be finite, got {shift_yx}")
    out_shape = tuple(image.shape) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
    if min(out_shape) < 1:
        raise ValueError(f"out_shape must be positive, got {out_shape}")
    img = image.astype(xp.float32, copy=False)
    if scale == 1.0 and dy == 0.0 and dx == 0.0 and out_shape == tuple(image.shape):
        return img.copy()
    if xp is np:
        from ._numba_kernels import bspline3_prefilter, resample_separable, threads  # noqa: PLC0415

        ry, wy = _resample_taps(image.shape[0], out_shape[0], float(scale), dy, order)
        rx, wx = _resample_taps(image.shape[1], out_shape[1], float(scale), dx, order)
        out = np.empty(out_shape, dtype=np.float32)
        with threads(workers):
            img = np.ascontiguousarray(img)
            if order == 3:
                img = bspline3_prefilter(img, np.empty(img.shape, dtype=np.float32))
            return resample_separable(img, ry, wy, rx, wx, out)
    if order == 3:
        img = ndimage_module(xp).spline_filter(img, 3, output=xp.float32, mode="mirror")
    wy = _resample_matrix(image.shape[0], out_shape[0], float(scale), dy, order)
    wx = _resample_matrix(image.shape[1], out_shape[1], float(scale), dx, order)
    import cupyx.scipy.sparse as xsparse  # noqa: PLC0415  # pragma: no cover

    wy, wx = xsparse.csr_matrix(wy), xsparse.csr_matrix(wx)  # pragma: no cover
    rows = wy @ img  # [ny_out, nx_in]
    return xp.ascontiguousarray((wx @ rows.T).T, dtype=xp.float32)


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of one registration.

    Attributes
    ----------
    shift_yx : (float, float)
        Shift to apply to ``moving`` to match ``reference`` (pixels, subpixel).
    peak : float
        Normalised cross-correlation of the low-passed images at that shift, in [-1, 1].
    ok : bool
        False when the peak is low, on the edge of the search range or not unique.
    reason : str
        Empty when ``ok``, else why it was rejected.
    """

    shift_yx: tuple[float, float]
    peak: float
    ok: bool
    reason: str = ""


@lru_cache(maxsize=16)
def _apodisation(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Separable Tukey window tapering ``fraction`` of each side to zero."""
    wy = tukey(shape[0], min(1.0, 2 * fraction))
    wx = tukey(shape[1], min(1.0, 2 * fraction))
    return (wy[:, None] * wx[None, :]).astype(np.float32)


@lru_cache(maxsize=16)
def _lowpass_squared(shape: tuple[int, int], sigma_px: float, highpass_sigma_px: float | None) -> np.ndarray:
    """``|H(f)|^2`` on the rfft2 grid: Gaussian low-pass (times ``1 - Gaussian`` high-pass if given)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f2 = fy**2 + fx**2
    h = np.exp(-2 * np.pi**2 * sigma_px**2 * f2)
    if highpass_sigma_px:
        h = h * (1 - np.exp(-2 * np.pi**2 * highpass_sigma_px**2 * f2))
    return (h * h).astype(np.float32)


def _half_weights(nx: int) -> np.ndarray:
    """Multiplicity of each rfft column in the full spectrum (1 for DC and Nyquist, else 2)."""
    w = np.full(nx // 2 + 1, 2.0)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


def _prepare(xp: ModuleType, img: Any, window: Any) -> Any:
    img = img.astype(xp.float32, copy=False)
    m = (img * window).sum() / window.sum()
    return (img - m) * window


def _refine_peak(
    xp: ModuleType, cw: Any, shape: tuple[int, int], s0: tuple[float, float], norm: float
) -> tuple[float, float, float]:
    """Newton ascent of the band-limited correlation ``c(s) = Re sum cw exp(2 pi i f.s) / norm``.

    ``cw`` is the rfft2 cross-spectrum already weighted by the column multiplicities.
    Returns ``(sy, sx, c(s))``; stays at ``s0`` if Newton does not behave.
    """
    ny, nx = shape
    fy = xp.asarray(np.fft.fftfreq(ny))
    fx = xp.asarray(np.fft.rfftfreq(nx))
    two_pi = 2 * math.pi

    def derivs(sy: float, sx: float) -> tuple[float, np.ndarray, np.ndarray]:
        ey = xp.exp((1j * two_pi * sy) * fy).astype(xp.complex64)
        ex = xp.exp((1j * two_pi * sx) * fx).astype(xp.complex64)
        s = cw * ey[:, None]
        s *= ex[None, :]
        rows = s.sum(axis=1, dtype=xp.complex128)  # sum over fx, per fy
        cols = s.sum(axis=0, dtype=xp.complex128)  # sum over fy, per fx
        fy64, fx64 = fy.astype(xp.float64), fx.astype(xp.float64)
        tot = complex(rows.sum())
        g_y = complex((fy64 * rows).sum())
        g_x = complex((fx64 * cols).sum())
        h_yy = complex((fy64**2 * rows).sum())
        h_xx = complex((fx64**2 * cols).sum())
        h_xy = complex((fy64 * (s @ fx64.astype(xp.complex128))).sum())
        val = tot.real / norm
        grad = np.array([-two_pi * g_y.imag, -two_pi * g_x.imag]) / norm
        hess = -(two_pi**2) * np.array([[h_yy.real, h_xy.real], [h_xy.real, h_xx.real]]) / norm
        return val, grad, hess

    s = np.array(s0, dtype=np.float64)
    val, grad, hess = derivs(*s)
    for _ in range(8):
        if not (np.all(np.linalg.eigvalsh(hess) < 0)):
            break
        step = -np.linalg.solve(hess, grad)
        if np.abs(step).max() > 1.0:
            break
        s_new = s + step
        if np.abs(s_new - np.asarray(s0)).max() > 1.5:
            break
        v_new, g_new, h_new = derivs(*s_new)
        if v_new < val - 1e-9:
            break
        s, val, grad, hess = s_new, v_new, g_new, h_new
        if np.abs(step).max() < 1e-4:
            break
    return float(s[0]), float(s[1]), float(val)


def register_lowpass_ncc(
    reference: Any,
    moving: Any,
    sigma_px: float = 2.0,
    max_shift_px: float | None = None,
    highpass_sigma_px: float | None = None,
    min_peak: float = DEFAULT_MIN_PEAK,
    uniqueness: float = DEFAULT_UNIQUENESS,
    apodize_fraction: float = 0.15,
    refine: bool = True,
    xp: ModuleType = np,
) -> RegistrationResult:
    """Register ``moving`` onto ``reference`` by low-pass normalised cross-correlation.

    Both images are mean-removed and apodised (separable Tukey window over
    ``apodize_fraction`` of each side), then cross-correlated through FFTs with the
    cross-spectrum weighted by a Gaussian low-pass of ``sigma_px`` on each image
    (NOT whitened: detector patterns do not dominate). The map is normalised by the
    energies of the two filtered images, so values are correlation coefficients in
    [-1, 1] (circular; the apodisation makes the wrap-around negligible for shifts well
    below the image size). The integer peak in the search range is refined to subpixel
    precision by Newton ascent on the continuous (band-limited) correlation, then
    (``refine``) once more after pre-shifting ``moving`` by that estimate.

    Parameters
    ----------
    reference, moving : array [ny, nx]
        Images of the same shape.
    sigma_px : float
        Gaussian low-pass sigma in pixels.
    max_shift_px : float, optional
        Search range ``|dy|, |dx| <= max_shift_px`` (default: the whole map).
    highpass_sigma_px : float, optional
        Also suppress structures larger than about this (``1 - Gaussian``), e.g. flat-field
        residuals; off by default.
    min_peak : float
        Peaks below this are rejected.
    uniqueness : float
        Rejected when another local maximum, outside the main lobe, reaches
        ``uniqueness * peak``.
    apodize_fraction : float
        Fraction of each side tapered to zero.
    refine : bool
        Second pass on ``moving`` pre-shifted by the first estimate (cubic spline), which
        removes the small bias of the apodisation towards zero shift.
    xp : module
        Array module.

    Returns
    -------
    RegistrationResult
        A rejected result (``ok=False``) is also logged as a warning.
    """
    reference = xp.asarray(reference)
    moving = xp.asarray(moving)
    if reference.ndim != 2 or reference.shape != moving.shape:
        raise ValueError(
            f"reference {reference.shape} and moving {moving.shape} must be 2-D of the same shape"
        )
    for name, a in (("reference", reference), ("moving", moving)):
        if not bool(xp.isfinite(a).all()):
            raise ValueError(f"{name} image contains NaN or inf")
    if not sigma_px >= 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    shape = (int(reference.shape[0]), int(reference.shape[1]))
    ny, nx = shape
    n_pix = ny * nx
    fftm, workers = fft_module(xp), fft_workers(xp)
    win = xp.asarray(_apodisation(shape, float(apodize_fraction)))
    h2 = xp.asarray(_lowpass_squared(shape, float(sigma_px), highpass_sigma_px))
    colw = xp.asarray(_half_weights(nx).astype(np.float32))

    def spectrum(img: Any) -> tuple[Any, float]:
        f = fftm.rfft2(_prepare(xp, img, win), **workers)
        return f, float((xp.abs(f) ** 2 * h2 * colw).sum(dtype=xp.float64)) / n_pix

    fr, e_r = spectrum(reference)
    fm, e_m = spectrum(moving)
    if not (e_r > 0 and e_m > 0):
        res = RegistrationResult((0.0, 0.0), 0.0, False, "an image has no content in the pass band")
        log.warning("registration rejected: %s", res.reason)
        return res
    norm = math.sqrt(e_r * e_m)
    cross = fr * xp.conj(fm)
    cross *= h2
    cmap = fftm.irfft2(cross, s=shape, **workers) / norm
    cmap = xp.fft.fftshift(cmap)  # zero shift at index (ny // 2, nx // 2)
    cy, cx = ny // 2, nx // 2
    if max_shift_px is not None:
        m = int(math.floor(max_shift_px))
        if m < 1:
            raise ValueError(f"max_shift_px must be >= 1, got {max_shift_px}")
        my, mx = min(m, cy - 1), min(m, cx - 1)
    else:
        my, mx = cy - 1, cx - 1
    region = cmap[cy - my : cy + my + 1, cx - mx : cx + mx + 1]
    flat_idx = int(xp.argmax(region))
    iy, ix = divmod(flat_idx, region.shape[1])
    peak0 = float(region[iy, ix])
    sy0, sx0 = iy - my, ix - mx
    # uniqueness: best local maximum outside the main lobe
    ndi = ndimage_module(xp)
    local_max = region == ndi.maximum_filter(region, size=3, mode="nearest")
    yy = xp.arange(region.shape[0])[:, None] - iy
    xx = xp.arange(region.shape[1])[None, :] - ix
    r_excl = max(3.0, 3.0 * sigma_px)
    others = region[local_max & ((yy**2 + xx**2) > r_excl**2)]
    second = float(others.max()) if others.size else -1.0

    sy, sx, peak = float(sy0), float(sx0), peak0
    reasons = []
    if abs(sy0) == my or abs(sx0) == mx:
        reasons.append(f"peak at the edge of the search range (shift {sy0}, {sx0}; range +-{my}, +-{mx})")
    else:
        sy, sx, peak = _refine_peak(xp, cross * colw, shape, (float(sy0), float(sx0)), norm * n_pix)
        # The apodisation window, applied to both images, pulls the estimate towards zero
        # shift (by ~ a percent of the shift). Second pass: pre-shift ``moving`` by the
        # estimate and measure the (small, hence unbiased) residual.
        if refine and (sy != 0.0 or sx != 0.0):
            moved = rescale_shift(moving, 1.0, (sy, sx), xp=xp)
            fm2, e_m2 = spectrum(moved)
            if e_m2 > 0:
                norm2 = math.sqrt(e_r * e_m2)
                cross2 = fr * xp.conj(fm2)
                cross2 *= h2 * colw
                ry, rx, peak2 = _refine_peak(xp, cross2, shape, (0.0, 0.0), norm2 * n_pix)
                if abs(ry) < 1.0 and abs(rx) < 1.0:
                    sy, sx, peak = sy + ry, sx + rx, max(peak, peak2)
    peak = float(min(1.0, max(-1.0, peak)))
    if peak < min_peak:
        reasons.append(f"low correlation peak {peak:.3f} < {min_peak}")
    if peak > 0 and second > uniqueness * peak:
        reasons.append(f"peak not unique (second maximum {second:.3f} vs {peak:.3f})")
    res = RegistrationResult((sy, sx), peak, not reasons, "; ".join(reasons))
    if not res.ok:
        log.warning("registration rejected: %s", res.reason)
    return res


@dataclass(frozen=True)
class DistanceShifts:
    """Shifts of every distance relative to the reference at one angle.

    Attributes
    ----------
    shifts_yx : ndarray [K, 2]
        Shift to apply to each distance (after rescale to the reference pixel) to match the
        reference, in reference pixels; zero for the reference itself.
    peaks : ndarray [K]
        Normalised correlation peaks (1 for the reference).
    ok : ndarray [K] of bool
        Registration accepted.
    reasons : tuple of str
        Why a distance was rejected (empty string when ok).
    """

    shifts_yx: np.ndarray
    peaks: np.ndarray
    ok: np.ndarray
    reasons: tuple[str, ...]


def _bin(a: Any, b: int) -> Any:
    if a.shape[0] % b or a.shape[1] % b:
        raise ValueError(f"bin_px={b} must divide the image shape {a.shape}")
    return bin_2d(a, b)


def measure_distance_shifts(
    images: Sequence[Any] | Any,
    geometry: ScanGeometry,
    delta_beta: float,
    sigma_px: float = 1.5,
    max_shift_px: float | None = None,
    highpass_sigma_px: float | None = 8.0,
    min_peak: float = DEFAULT_MIN_PEAK,
    apodize_fraction: float = 0.15,
    bin_px: int = 1,
    paganin_pad: float = 1.5,
    xp: ModuleType = np,
) -> DistanceShifts:
    """Measure the shift of every distance relative to the reference distance at one angle.

    Each distance's hologram is turned into a comparable image, a single-distance
    Paganin phase at its own ``D_k`` and native pixel (Fresnel fringes differ between
    distances, Paganin phases much less), rescaled to the reference pixel
    (:func:`rescale_shift` with ``scale_to_reference(k)``, reference shape), then
    registered on the reference's with :func:`register_lowpass_ncc`.

    Parameters
    ----------
    images : sequence of K arrays [ny_k, nx_k]
        Flat-fielded frames of one angle at their native pixel sizes, in geometry order.
    geometry : ScanGeometry
        The scan geometry.
    delta_beta : float
        ``delta / beta`` used by the Paganin filter.
    sigma_px, max_shift_px, highpass_sigma_px, min_peak, apodize_fraction :
        Registration parameters (:func:`register_lowpass_ncc`), lengths in reference
        pixels. The default band (low-pass 1.5 px, high-pass 8 px) discards the broad,
        noisy and edge-dominated low frequencies of Paganin phases, which differ between
        distances; on simulated 4-distance data it gives errors of a few 0.01 px.
    bin_px : int
        Block-average every image by this factor first (speed; must divide the shapes).
    paganin_pad : float
        FFT padding factor of the Paganin filter (mirror values; ``alignment.paganin_pad`` of the
        configuration).
    xp : module
        Array module.

    Returns
    -------
    DistanceShifts
    """
    n_dist = len(geometry.distances)
    if len(images) != n_dist:
        raise ValueError(f"got {len(images)} images for a geometry with {n_dist} distances")
    ref = geometry.reference
    phases = []
    for k, dist in enumerate(geometry.distances):
        img = xp.asarray(images[k])
        if img.ndim != 2:
            raise ValueError(f"image of distance {k} must be 2-D, got shape {img.shape}")
        img = _bin(img.astype(xp.float32, copy=False), bin_px)
        trip = (dist.propagation_distance_m, dist.wavelength_m, dist.effective_pixel_m * bin_px)
        phases.append(retrieve_phase_paganin(img, trip, delta_beta, pad=paganin_pad, xp=xp))
    ref_shape = phases[ref].shape
    shifts = np.zeros((n_dist, 2))
    peaks = np.ones(n_dist)
    ok = np.ones(n_dist, dtype=bool)
    reasons = [""] * n_dist
    mx = None if max_shift_px is None else max(1.0, max_shift_px / bin_px)
    hp = None if highpass_sigma_px is None else highpass_sigma_px / bin_px
    for k in range(n_dist):
        if k == ref:
            continue
        moved = rescale_shift(phases[k], geometry.scale_to_reference(k), (0.0, 0.0), ref_shape, xp=xp)
        res = register_lowpass_ncc(
            phases[ref], moved, sigma_px=sigma_px / bin_px, max_shift_px=mx, highpass_sigma_px=hp,
            min_peak=min_peak, apodize_fraction=apodize_fraction, xp=xp,
        )
        shifts[k] = np.asarray(res.shift_yx) * bin_px
        peaks[k], ok[k], reasons[k] = res.peak, res.ok, res.reason
        if not res.ok:
            log.warning("distance %d rejected against reference %d: %s", k, ref, res.reason)
    return DistanceShifts(shifts, peaks, ok, tuple(reasons))


def align_to_reference(
    image: Any,
    k: int,
    geometry: ScanGeometry,
    shift_yx: tuple[float, float] = (0.0, 0.0),
    out_shape: tuple[int, int] | None = None,
    order: int = 3,
    xp: ModuleType = np,
    workers: int = 1,
) -> Any:
    """Bring distance ``k``'s frame onto the reference pixel grid: magnify by
    ``geometry.scale_to_reference(k)`` about the centre and apply ``shift_yx`` (reference
    pixels, e.g. from :func:`measure_distance_shifts` or a :class:`ShiftModel`) in one
    interpolation (:func:`rescale_shift`, ``workers`` CPU threads). ``out_shape`` defaults to
    the input shape."""
    if not 0 <= k < len(geometry.distances):
        raise ValueError(f"distance index {k} out of range for {len(geometry.distances)} distances")
    return rescale_shift(image, geometry.scale_to_reference(k), shift_yx, out_shape, order=order, xp=xp,
                         workers=workers)


@dataclass(frozen=True)
class HeldShift:
    """A shift model's value at one angle, held: what a live work item was queued with (evaluated when it was
    made, so that when it reaches a worker does not change its projection).

    Attributes
    ----------
    value : tuple of float
        The model's value, e.g. ``(dy, dx)``.
    """

    value: tuple[float, ...]

    @classmethod
    def of(cls, model: ShiftModel, angle_deg: float) -> HeldShift:
        """``model``'s value at ``angle_deg``, held."""
        return cls(tuple(float(v) for v in model(angle_deg)))

    def __call__(self, angle_deg: float) -> np.ndarray:
        """The held value (at any angle)."""
        return np.asarray(self.value)


def unbin_2d(image: Any, b: int, out_shape: tuple[int, int], xp: ModuleType = np) -> Any:
    """An image binned ``b`` times by :func:`~xnh_stream.physics.xp.bin_2d` brought back to the ``out_shape``
    grid it was binned from, by linear interpolation between the block centres (``scipy.ndimage.zoom(order=1,
    grid_mode=True)``; the rows and columns ``bin_2d`` dropped take the edge value).

    Parameters
    ----------
    image : array [out_shape[0] // b, out_shape[1] // b]
        The binned image.
    b : int
        The binning.
    out_shape : (int, int)
        The shape it was binned from.
    xp : module
        Array module.

    Returns
    -------
    array out_shape float32
    """
    ny, nx = (int(v) for v in out_shape)
    if tuple(image.shape) != (ny // b, nx // b):
        raise ValueError(f"image of shape {tuple(image.shape)} is not {out_shape} binned {b} times")
    # block j's centre is fine pixel b j + (b - 1) / 2: the grids' centres differ by half the dropped remainder
    shift = (-(ny % b) / 2.0, -(nx % b) / 2.0)
    return rescale_shift(image, float(b), shift, out_shape=(ny, nx), order=1, xp=xp)


class ShiftModel:
    """Smooth, outlier-robust model of a shift (or any few values) against rotation angle.

    One model per distance; the values are e.g. ``(dy, dx)`` or ``(dy, dx, scale - 1)``.

    Feed it measurements as they arrive (:meth:`add`), evaluate at any angle
    (:meth:`__call__`). The fit is linear least squares on a low-order basis, with
    iterative rejection of points whose residual exceeds ``k_mad`` robust standard
    deviations (``1.4826 MAD``, floored at ``min_scale``) in any component; rejected
    points are re-admitted if they fit a later model.

    Parameters
    ----------
    basis : {"poly", "fourier"}
        ``"poly"``: Legendre polynomials of degree <= ``order`` in the angle, normalised to
        the measured angle range; outside that range the model is held at the end value
        (no extrapolation). ``"fourier"``: ``1, cos(j theta), sin(j theta)`` for
        ``j <= order`` (periodic over 360 degrees).
    order : int
        Polynomial degree or number of harmonics.
    k_mad : float
        Rejection threshold in robust standard deviations.
    min_scale : float
        Floor of the robust standard deviation (units of the values, e.g. pixels).
    points_per_term : int
        The number of basis functions used is limited to ``n_good // points_per_term``
        (at least one: a constant), so that early in a scan the model stays simple.
    """

    def __init__(
        self,
        basis: str = "poly",
        order: int = 2,
        k_mad: float = 4.0,
        min_scale: float = 0.02,
        points_per_term: int = 3,
    ) -> None:
        if basis not in ("poly", "fourier"):
            raise ValueError(f"basis must be 'poly' or 'fourier', got {basis!r}")
        if order < 0 or k_mad <= 0 or min_scale <= 0 or points_per_term < 1:
            raise ValueError("need order >= 0, k_mad > 0, min_scale > 0, points_per_term >= 1")
        self.basis = basis
        self.order = int(order)
        self.k_mad = float(k_mad)
        self.min_scale = float(min_scale)
        self.points_per_term = int(points_per_term)
        self._angles: list[float] = []
        self._values: list[np.ndarray] = []
        self._valid: list[bool] = []
        self._coef: np.ndarray | None = None
        self._inliers = np.zeros(0, dtype=bool)
        self._range = (0.0, 1.0)
        self._n_terms = 0

    def add(self, angle_deg: float, value: Sequence[float] | float, ok: bool = True) -> None:
        """Add one measurement (e.g. ``(dy, dx)``); ``ok=False`` stores it but never fits it."""
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if v.ndim != 1:
            raise ValueError(f"value must be a scalar or 1-D, got shape {v.shape}")
        if self._values and v.shape != self._values[0].shape:
            raise ValueError(f"value has {v.size} components, earlier ones had {self._values[0].size}")
        if not np.isfinite(angle_deg):
            raise ValueError(f"angle must be finite, got {angle_deg}")
        valid = bool(ok) and bool(np.all(np.isfinite(v)))
        self._angles.append(float(angle_deg))
        self._values.append(v)
        self._valid.append(valid)
        self._coef = None

    @property
    def n_points(self) -> int:
        """Number of measurements added."""
        return len(self._angles)

    @property
    def n_valid(self) -> int:
        """Number of measurements added with ``ok=True`` and finite values."""
        return int(sum(self._valid))

    @property
    def inliers(self) -> np.ndarray:
        """Bool mask over the added points: used by the current fit."""
        self._ensure_fit()
        return self._inliers.copy()

    def _design(self, angles: np.ndarray, n_terms: int) -> np.ndarray:
        if self.basis == "poly":
            lo, hi = self._range
            t = np.clip((angles - (lo + hi) / 2) / max((hi - lo) / 2, 1e-12), -1.0, 1.0)
            return np.polynomial.legendre.legvander(t, n_terms - 1)
        th = np.deg2rad(angles)
        cols = [np.ones_like(th)]
        for j in range(1, (n_terms - 1) // 2 + 1):
            cols += [np.cos(j * th), np.sin(j * th)]
        return np.stack(cols, axis=-1)

    def _terms_for(self, n_good: int) -> int:
        full = self.order + 1 if self.basis == "poly" else 2 * self.order + 1
        n = max(1, min(full, n_good // self.points_per_term))
        if self.basis == "fourier" and n % 2 == 0:
            n -= 1
        return n

    def fit(self) -> ShiftModel:
        """(Re)fit the model on the points added so far."""
        if not self._angles:
            raise ValueError("ShiftModel has no measurements")
        ang = np.asarray(self._angles)
        val = np.stack(self._values)
        valid = np.asarray(self._valid)
        if not valid.any():
            raise ValueError("ShiftModel has no valid measurement (all flagged not ok)")
        self._range = (float(ang[valid].min()), float(ang[valid].max()))
        inl = valid.copy()
        coef = None
        for _ in range(20):
            n_terms = self._terms_for(int(inl.sum()))
            a = self._design(ang, n_terms)
            coef, *_ = np.linalg.lstsq(a[inl], val[inl], rcond=None)
            resid = val - a @ coef
            r_in = resid[inl]
            mad = np.median(np.abs(r_in - np.median(r_in, axis=0)), axis=0)
            scale = np.maximum(1.4826 * mad, self.min_scale)
            new = valid & np.all(np.abs(resid) <= self.k_mad * scale, axis=1)
            if new.sum() < 1 or np.array_equal(new, inl):
                break
            inl = new
        self._coef, self._inliers, self._n_terms = coef, inl, n_terms
        n_out = int((valid & ~inl).sum())
        if n_out:
            log.info("ShiftModel: %d of %d valid points rejected as outliers", n_out, int(valid.sum()))
        return self

    def _ensure_fit(self) -> None:
        if self._coef is None:
            self.fit()

    def __call__(self, angle_deg: float | Sequence[float]) -> np.ndarray:
        """Model value(s): shape ``(m,)`` for a scalar angle, ``(n, m)`` for n angles."""
        self._ensure_fit()
        ang = np.atleast_1d(np.asarray(angle_deg, dtype=np.float64))
        out = self._design(ang, self._n_terms) @ self._coef
        return out[0] if np.ndim(angle_deg) == 0 else out

    def residuals(self) -> np.ndarray:
        """Measured minus modelled values at the added angles, ``(n_points, m)``."""
        self._ensure_fit()
        return np.stack(self._values) - self(np.asarray(self._angles))

    def __len__(self) -> int:
        return self.n_points

    def __repr__(self) -> str:
        return (
            f"ShiftModel(basis={self.basis!r}, order={self.order}, points={self.n_points}, "
            f"inliers={int(self._inliers.sum()) if self._coef is not None else 'unfitted'})"
        )
