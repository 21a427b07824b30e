"""Resolution of a reconstruction: Fourier shell correlation of two half-volumes, and an edge fit.

Conventions
-----------
* Frequencies are radial spatial frequencies in units of the Nyquist frequency ``1 / (2 voxel)``
  (0 = DC, 1 = Nyquist), computed per axis so that a non-cubic volume still gets spherical shells in
  physical frequency (isotropic voxels assumed).
* Shell ``i`` holds the Fourier coefficients whose radius rounds to ``i / n_shells``; its
  frequency is ``i / n_shells``; shells run from 0 to Nyquist (corners beyond Nyquist are dropped).
  The voxel counts are those of the full (two-sided) spectrum, as the half-bit threshold requires.
* ``FSC(r) = Re(sum F1 F2*) / sqrt(sum |F1|^2 sum |F2|^2)`` over the shell; the half-bit threshold is
  ``T(n) = (0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))`` (van Heel & Schatz 2005).
* The resolution is the half-period ``voxel / f_cross`` at the first crossing of the FSC below ``T``
  above ``min_freq`` (linear interpolation); with no crossing it is the voxel size, flagged
  ``limited_by_sampling``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft
import scipy.optimize
import scipy.special

from xnh_stream.physics.xp import fft_module, fft_workers, to_numpy

#: Fraction of each axis covered by the cosine tapers of the default Tukey apodisation.
DEFAULT_TUKEY_ALPHA = 0.25


# --------------------------------------------------------------------------------------------------
# Fourier shell correlation
# --------------------------------------------------------------------------------------------------
def tukey(n: int, alpha: float) -> np.ndarray:
    """Symmetric Tukey window of ``n`` points (flat top, cosine edges covering ``alpha`` of the length; 1 is
    Hann), float64: ``scipy.signal.windows.tukey``'s formula, written out because importing ``scipy.signal``
    costs every process 0.5 s (a third of a small scan's steps; ``tests/test_fsc.py`` compares the two)."""
    if alpha <= 0 or n <= 1:
        return np.ones(max(n, 0))
    a = min(float(alpha), 1.0)
    k = np.arange(n, dtype=np.float64)
    width = int(np.floor(a * (n - 1) / 2.0))
    w = np.ones(n)
    w[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * k[:width + 1] / a / (n - 1))))
    w[n - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / a + 1 + 2.0 * k[n - width - 1:] / a / (n - 1))))
    return w


@lru_cache(maxsize=16)
def tukey_window(n: int, alpha: float) -> np.ndarray:
    """:func:`tukey`, cached, read-only float32 (flat below 3 points)."""
    w = tukey(n, alpha).astype(np.float32) if n >= 3 else np.ones(n, np.float32)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=4)
def _shell_map(shape: tuple[int, ...], n_shells: int, xp: ModuleType) -> tuple[Any, np.ndarray]:
    """Shell index of every coefficient of the real-FFT half spectrum of ``shape``, and shell counts.

    Coefficients beyond Nyquist go to the overflow bin ``n_shells + 1``. The counts are those of the
    full two-sided spectrum (each half-spectrum coefficient stands for two, except the planes
    ``k_last = 0`` and ``k_last = Nyquist`` of an even last axis).
    """
    axes = [np.fft.fftfreq(n) / 0.5 for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) / 0.5]
    r2 = np.zeros([len(a) for a in axes], dtype=np.float32)
    for i, a in enumerate(axes):
        sl: list[Any] = [None] * len(axes)
        sl[i] = slice(None)
        r2 += (a.astype(np.float32) ** 2)[tuple(sl)]
    np.sqrt(r2, out=r2)
    r2 *= np.float32(n_shells)
    np.rint(r2, out=r2)
    np.minimum(r2, n_shells + 1, out=r2)
    # Small integer type: the map is cached, and bincount widens one slab at a time.
    idx = r2.astype(np.uint16 if n_shells + 1 < 2**16 else np.int32)
    del r2
    flat = idx.ravel()
    counts = 2 * np.bincount(flat, minlength=n_shells + 2)
    counts -= np.bincount(idx[..., 0].ravel(), minlength=n_shells + 2)
    if shape[-1] % 2 == 0:
        counts -= np.bincount(idx[..., -1].ravel(), minlength=n_shells + 2)
    counts = counts[: n_shells + 1]
    counts.flags.writeable = False
    idx.flags.writeable = False
    return xp.asarray(idx), counts


def _apodise(v: Any, alpha: float, xp: ModuleType) -> Any:
    """Remove the window-weighted mean and multiply by a separable Tukey window."""
    win = None
    for axis, n in enumerate(v.shape):
        shape = [1] * v.ndim
        shape[axis] = n
        w = xp.asarray(tukey_window(n, alpha)).reshape(shape)
        win = w if win is None else win * w
    mean = (v * win).sum(dtype=xp.float64) / win.sum(dtype=xp.float64)
    return (v - v.dtype.type(float(mean))) * win


def _fsc_host(
    v1: np.ndarray, v2: np.ndarray, shells: int, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CPU body of :func:`fourier_shell_correlation`: compiled apodisation (separable window, never a
    volume), multi-threaded float32 real FFTs, one compiled pass over both half spectra into the shells."""
    from ._numba_kernels import apodise_separable, shell_sums, threads  # noqa: PLC0415

    shape = tuple(int(n) for n in v1.shape)
    as3 = (1,) * (3 - len(shape)) + shape  # 2-D images as one slab
    spectra = []
    with threads(-1):
        for v in (v1, v2):
            a = np.ascontiguousarray(v, dtype=np.float32)
            if alpha > 0:
                w = [np.ones(1, np.float32)] * (3 - len(shape)) + [tukey_window(n, alpha) for n in shape]
                a = apodise_separable(a.reshape(as3), *w, np.empty(as3, np.float32)).reshape(shape)
            spectra.append(scipy.fft.rfftn(a, workers=-1))
            del a
        idx, counts = _shell_map(shape, shells, np)
        nh = spectra[0].shape[-1]
        totals = shell_sums(spectra[0].reshape(-1, nh), spectra[1].reshape(-1, nh), idx.reshape(-1, nh),
                            shape[-1] % 2 == 0, shells + 2)
    cross, p1, p2 = (t[: shells + 1] for t in totals)
    denom = np.sqrt(p1 * p2)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    freq = np.arange(shells + 1, dtype=np.float64) / shells
    return freq, fsc, np.asarray(counts, dtype=np.int64)


def fourier_shell_correlation(
    v1: Any,
    v2: Any,
    n_shells: int | None = None,
    apodize: bool | float = True,
    xp: ModuleType = np,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fourier shell (3D) or ring (2D) correlation of two independent reconstructions.

    Parameters
    ----------
    v1, v2 : array, same shape, 2D or 3D
        The two half reconstructions (e.g. even / odd angles).
    n_shells : int, optional
        Number of shells between DC and Nyquist (default ``min(shape) // 2``, one voxel wide).
    apodize : bool or float
        Mean removal and a separable Tukey window before the FFT; a float sets the window's taper
        fraction (default 0.25). ``False`` uses the raw (periodic) volumes.
    xp : module
        Array module.

    Returns
    -------
    freq : ndarray ``[n_shells + 1]``
        Shell frequencies in units of Nyquist (``i / n_shells``).
    fsc : ndarray ``[n_shells + 1]``
        Correlation per shell (NaN where a half has no power in the shell).
    n_voxels : ndarray ``[n_shells + 1]``
        Fourier voxels per shell (full spectrum).
    """
    v1 = xp.asarray(v1)
    v2 = xp.asarray(v2)
    if v1.shape != v2.shape:
        raise ValueError(f"half-volumes differ in shape: {v1.shape} vs {v2.shape}")
    if v1.ndim not in (2, 3):
        raise ValueError(f"FSC needs 2D images or 3D volumes, got {v1.ndim} dimensions")
    if min(v1.shape) < 4:
        raise ValueError(f"volume too small for an FSC: {v1.shape}")
    for name, v in (("v1", v1), ("v2", v2)):
        if not bool(xp.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    shells = min(v1.shape) // 2 if n_shells is None else int(n_shells)
    if shells < 2:
        raise ValueError(f"n_shells must be >= 2, got {n_shells}")
    alpha = DEFAULT_TUKEY_ALPHA if apodize is True else float(apodize)
    if xp is np:
        return _fsc_host(v1, v2, shells, alpha if apodize is not False else 0.0)
    a = v1.astype(xp.float32, copy=False)
    b = v2.astype(xp.float32, copy=False)
    if apodize is not False and alpha > 0:
        a = _apodise(a, alpha, xp)
        b = _apodise(b, alpha, xp)
    fft = fft_module(xp)
    f1 = fft.rfftn(a, **fft_workers(xp))
    del a
    f2 = fft.rfftn(b, **fft_workers(xp))
    del b
    idx, counts = _shell_map(tuple(int(n) for n in v1.shape), shells, xp)
    even = v1.shape[-1] % 2 == 0
    m = shells + 2
    totals = [xp.zeros(m, dtype=xp.float64) for _ in range(3)]
    # Slabs along the first axis keep the temporaries small (and in cache).
    step = max(1, (1 << 20) // max(1, int(np.prod(f1.shape[1:]))))
    for s0 in range(0, f1.shape[0], step):
        g1, g2, ix = f1[s0 : s0 + step], f2[s0 : s0 + step], idx[s0 : s0 + step]
        for total, values in zip(
            totals,
            (
                g1.real * g2.real + g1.imag * g2.imag,
                g1.real * g1.real + g1.imag * g1.imag,
                g2.real * g2.real + g2.imag * g2.imag,
            ),
        ):
            # Two-sided sums from the half spectrum: every coefficient twice, except the planes
            # k_last = 0 and (even length) k_last = Nyquist, which are their own mirror images.
            total += 2 * xp.bincount(ix.ravel(), weights=values.ravel(), minlength=m)
            total -= xp.bincount(ix[..., 0].ravel(), weights=values[..., 0].ravel(), minlength=m)
            if even:
                total -= xp.bincount(ix[..., -1].ravel(), weights=values[..., -1].ravel(), minlength=m)
    cross, p1, p2 = (to_numpy(t)[: shells + 1].astype(np.float64) for t in totals)
    denom = np.sqrt(p1 * p2)
    with np.errstate(invalid="ignore", divide="ignore"):
        fsc = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    freq = np.arange(shells + 1, dtype=np.float64) / shells
    return freq, fsc, np.asarray(counts, dtype=np.int64)


def half_bit_threshold(n: Any) -> np.ndarray:
    """Half-bit information threshold for shells of ``n`` Fourier voxels (van Heel & Schatz 2005)."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1):
        raise ValueError("shell voxel counts must be >= 1")
    s = 1.0 / np.sqrt(n)
    return (0.2071 + 1.9102 * s) / (1.2071 + 0.9102 * s)


@dataclass
class FSCResolution:
    """Resolution read from an FSC curve (see :func:`resolution_from_fsc`)."""

    resolution_m: float
    crossing_freq: float | None
    limited_by_sampling: bool
    voxel_m: float
    min_freq: float
    freq: np.ndarray = field(repr=False)
    fsc: np.ndarray = field(repr=False)
    threshold: np.ndarray = field(repr=False)
    n_voxels: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists for the curves, NaN shells as None)."""
        d = asdict(self)
        for key in ("freq", "fsc", "threshold", "n_voxels"):
            values = np.asarray(d[key]).tolist()
            d[key] = [None if (isinstance(v, float) and math.isnan(v)) else v for v in values]
        return d


def resolution_from_fsc(
    freq: Any, fsc: Any, n: Any, voxel_m: float, min_freq: float = 0.05
) -> FSCResolution:
    """Half-period resolution at the first FSC crossing of the half-bit curve above ``min_freq``.

    Parameters
    ----------
    freq, fsc, n : array ``[n_shells + 1]``
        Output of :func:`fourier_shell_correlation` (frequency in units of Nyquist).
    voxel_m : float
        Voxel size in metres.
    min_freq : float
        Shells below this frequency (in units of Nyquist) are ignored when looking for a crossing.

    Returns
    -------
    FSCResolution
        ``resolution_m = voxel_m / f_cross``; ``voxel_m`` and ``limited_by_sampling=True`` when the
        curve stays above the threshold up to Nyquist.
    """
    freq = np.asarray(freq, dtype=np.float64)
    fsc = np.asarray(fsc, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if not (freq.shape == fsc.shape == n.shape) or freq.ndim != 1:
        raise ValueError(
            f"freq, fsc and n must be 1-D of equal length, got {freq.shape}, {fsc.shape}, {n.shape}"
        )
    if not (math.isfinite(voxel_m) and voxel_m > 0):
        raise ValueError(f"voxel_m must be positive, got {voxel_m}")
    threshold = np.full_like(freq, np.nan)
    ok = n >= 1
    threshold[ok] = half_bit_threshold(n[ok])
    valid = ok & np.isfinite(fsc)
    diff = fsc - threshold
    crossing = None
    prev = None  # last valid shell
    for i in range(freq.size):
        if not valid[i]:
            continue
        if freq[i] >= min_freq and diff[i] < 0:
            if prev is None or diff[prev] < 0:
                crossing = float(freq[i])
            else:
                t = diff[prev] / (diff[prev] - diff[i])
                crossing = float(freq[prev] + t * (freq[i] - freq[prev]))
            break
        prev = i
    if crossing is None:
        res, limited = float(voxel_m), True
    else:
        res, limited = float(voxel_m / crossing), False
    return FSCResolution(
        resolution_m=res,
        crossing_freq=crossing,
        limited_by_sampling=limited,
        voxel_m=float(voxel_m),
        min_freq=float(min_freq),
        freq=freq,
        fsc=fsc,
        threshold=threshold,
        n_voxels=n.astype(np.int64),
    )


def half_volume_resolution(
    v1: Any,
    v2: Any,
    voxel_m: float,
    min_freq: float = 0.05,
    n_shells: int | None = None,
    apodize: bool | float = True,
    xp: ModuleType = np,
) -> FSCResolution:
    """:func:`fourier_shell_correlation` followed by :func:`resolution_from_fsc`."""
    freq, fsc, n = fourier_shell_correlation(v1, v2, n_shells=n_shells, apodize=apodize, xp=xp)
    return resolution_from_fsc(freq, fsc, n, voxel_m, min_freq=min_freq)


# --------------------------------------------------------------------------------------------------
# Edge fit
# --------------------------------------------------------------------------------------------------
#: FWHM of a Gaussian line-spread function in units of its sigma, ``2 sqrt(2 ln 2)``.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: 10 %-90 % rise distance of an erf edge in units of sigma, ``2 * 1.2816``.
RISE_10_90_PER_SIGMA = 2.0 * float(scipy.special.ndtri(0.9))


@dataclass
class EdgeFit:
    """Erf fit ``a + b erf((x - x0) / (sqrt(2) sigma))`` of a profile across an edge.

    ``resolution_m`` is the FWHM of the Gaussian line-spread function, ``2.355 sigma``;
    ``rise_10_90_m`` (``2.563 sigma``) is given as well. Positions are in voxels along the profile.
    """

    sigma_m: float
    sigma_err_m: float
    resolution_m: float
    rise_10_90_m: float
    x0: float
    amplitude: float
    offset: float
    point: tuple[float, ...] | None
    normal: tuple[float, ...] | None
    x: np.ndarray = field(repr=False)
    profile: np.ndarray = field(repr=False)
    model: np.ndarray = field(repr=False)


def _erf_model(x: np.ndarray, a: float, b: float, x0: float, sigma: float) -> np.ndarray:
    return a + b * scipy.special.erf((x - x0) / (math.sqrt(2.0) * sigma))


def _fit_edge_profile(x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = max(2, x.size // 8)
    lo, hi = float(np.mean(p[:k])), float(np.mean(p[-k:]))
    grad = np.gradient(p, x)
    x0 = float(x[int(np.argmax(np.abs(grad)))])
    step = (hi - lo) / 2.0
    # An erf step of height |hi - lo| has a peak slope |hi - lo| / (sqrt(2 pi) sigma).
    peak = max(float(np.abs(grad).max()), 1e-30)
    sigma0 = max(0.5 * (x[1] - x[0]), abs(hi - lo) / (math.sqrt(2 * math.pi) * peak))
    sigma0 = min(sigma0, 0.25 * (x[-1] - x[0]))
    popt, pcov = scipy.optimize.curve_fit(
        _erf_model,
        x,
        p,
        p0=[(lo + hi) / 2.0, step, x0, sigma0],
        bounds=([-np.inf, -np.inf, x[0], 1e-3], [np.inf, np.inf, x[-1], x[-1] - x[0]]),
        maxfev=20000,
    )
    return popt, pcov


def _unit(v: Any, ndim: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).ravel()
    if v.size != ndim:
        raise ValueError(f"normal must have {ndim} components, got {v.size}")
    norm = float(np.linalg.norm(v))
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"normal must be a finite non-zero vector, got {v}")
    return v / norm


def _tangents(normal: np.ndarray) -> list[np.ndarray]:
    """Orthonormal vectors spanning the plane (3D) or line (2D) perpendicular to ``normal``."""
    if normal.size == 2:
        return [np.array([-normal[1], normal[0]])]
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return [u, np.cross(normal, u)]


def edge_resolution(
    data: Any,
    voxel_m: float = 1.0,
    point: Any = None,
    normal: Any = None,
    half_length: float = 12.0,
    half_width: int = 6,
    step: float = 0.5,
) -> EdgeFit:
    """Blur of a sharp edge from an erf fit (cross-check of the FSC resolution).

    Parameters
    ----------
    data : array
        A 1D profile across the edge (used as is, unit spacing), or a 2D image / 3D volume.
    voxel_m : float
        Voxel size in metres (``sigma_m = sigma_voxels * voxel_m``).
    point : sequence of float, optional
        A point on the edge in array index coordinates (``(y, x)`` or ``(z, y, x)``). Default: the
        strongest gradient of the Gaussian-smoothed data (away from the borders).
    normal : sequence of float, optional
        Direction across the edge, same axis order; default the smoothed gradient direction at ``point``.
    half_length : float
        Profile half-length along the normal, voxels.
    half_width : int
        Profiles are averaged over offsets ``-half_width .. half_width`` (voxels) along the edge
        (a square patch of the tangent plane in 3D).
    step : float
        Sampling step along the normal, voxels (cubic-spline interpolation).

    Returns
    -------
    EdgeFit
        ``sigma_m`` of the Gaussian blur and ``resolution_m`` = FWHM of the line-spread function.
    """
    from scipy import ndimage  # noqa: PLC0415

    if not (math.isfinite(voxel_m) and voxel_m > 0):
        raise ValueError(f"voxel_m must be positive, got {voxel_m}")
    arr = np.asarray(to_numpy(data), dtype=np.float64)
    if arr.ndim not in (1, 2, 3):
        raise ValueError(f"edge_resolution takes a 1D profile, 2D image or 3D volume, got {arr.ndim}D")
    if not np.isfinite(arr).all():
        raise ValueError("data contains NaN or infinite values")
    if arr.ndim == 1:
        if arr.size < 8:
            raise ValueError(f"profile too short for an edge fit: {arr.size} samples")
        x = np.arange(arr.size, dtype=np.float64)
        prof = arr
        pt = nrm = None
    else:
        margin = int(math.ceil(half_length)) + 1
        if min(arr.shape) <= 2 * margin:
            raise ValueError(f"data {arr.shape} too small for half_length={half_length}")
        if point is None or normal is None:
            orders = [tuple(int(i == k) for i in range(arr.ndim)) for k in range(arr.ndim)]
            grads = np.stack([ndimage.gaussian_filter(arr, 1.5, order=o) for o in orders])
        if point is None:
            mag = np.sqrt((grads**2).sum(axis=0))
            inner = tuple(slice(margin, n - margin) for n in arr.shape)
            sub = np.unravel_index(int(np.argmax(mag[inner])), mag[inner].shape)
            pt = np.array([s + margin for s in sub], dtype=np.float64)
        else:
            pt = np.asarray(point, dtype=np.float64).ravel()
            if pt.size != arr.ndim:
                raise ValueError(f"point must have {arr.ndim} coordinates, got {pt.size}")
        if normal is None:
            loc = tuple(int(round(c)) for c in pt)
            nrm = _unit([g[loc] for g in grads], arr.ndim)
        else:
            nrm = _unit(normal, arr.ndim)
        x = np.arange(-half_length, half_length + 1e-9, step)
        offsets = np.arange(-int(half_width), int(half_width) + 1, dtype=np.float64)
        tangents = _tangents(nrm)
        grid = np.meshgrid(*([offsets] * len(tangents)), indexing="ij")
        shift = sum(g.ravel()[:, None] * t[None, :] for g, t in zip(grid, tangents))  # [n_prof, ndim]
        coords = pt[None, None, :] + shift[:, None, :] + x[None, :, None] * nrm[None, None, :]
        samples = ndimage.map_coordinates(arr, coords.reshape(-1, arr.ndim).T, order=3, mode="nearest")
        prof = samples.reshape(coords.shape[:2]).mean(axis=0)
        pt, nrm = tuple(float(c) for c in pt), tuple(float(c) for c in nrm)
    popt, pcov = _fit_edge_profile(x, prof)
    a, b, x0, sigma = (float(v) for v in popt)
    err = float(np.sqrt(max(pcov[3, 3], 0.0))) if np.isfinite(pcov[3, 3]) else float("nan")
    return EdgeFit(
        sigma_m=sigma * voxel_m,
        sigma_err_m=err * voxel_m,
        resolution_m=FWHM_PER_SIGMA * sigma * voxel_m,
        rise_10_90_m=RISE_10_90_PER_SIGMA * sigma * voxel_m,
        x0=x0,
        amplitude=b,
        offset=a,
        point=pt,
        normal=nrm,
        x=x,
        profile=prof,
        model=_erf_model(x, *popt),
    )
