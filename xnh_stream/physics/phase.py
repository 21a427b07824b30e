"""Phase retrieval: multi-distance CTF (Cloetens 1999) and single-distance Paganin.

Conventions (project-wide)
--------------------------
Refractive index ``n = 1 - delta + i beta``, wave ``exp(i(kz - wt))``. The object
transmission is ``T = exp(-B + i phi)`` with ``phi = -k int(delta dz)`` (NEGATIVE for
matter) and ``B = k int(beta dz)``. Free-space propagation over the effective distance
``D`` multiplies the spectrum by ``exp(-i pi lambda D f^2)`` (``f`` in cycles per metre).
To first order in ``phi`` and ``B``::

    FT(I - 1) = 2 sin(chi) FT(phi) - 2 cos(chi) FT(B),   chi = pi lambda D f^2

and for a homogeneous object (``B = -(beta/delta) phi``) ``FT(I - 1) = 2 A FT(phi)`` with
``A = sin(chi) + (beta/delta) cos(chi)``. Both retrievals return ``phi`` in radians with
this sign (negative where there is matter), on the reference pixel grid.

Multi-distance CTF::

    phi_hat = sum_k A_k FT(I_k - 1) / (2 sum_k A_k^2 + alpha(f))

with a two-level regularisation ``alpha(f) = alpha_low + (alpha_high - alpha_low) s(f)``,
``s(f) = erfc((f_c - f) / (w f_c)) / 2``, rising from 0 to 1 around ``f_c``, the first CTF
maximum of the largest propagation distance (``pi lambda D_max f_c^2 = pi/2``; the
smallest Fresnel number). ``alpha_low`` is an absolute value to compare with
``2 sum_k A_k(0)^2 = 2 K (beta/delta)^2``; ``alpha_high`` with ``2 sum_k A_k^2 ~ K``.

Two-material objects (``envelope``): a stained sample in air is not homogeneous. Its outline
(sample against air) contrasts with the mean ``delta/beta`` of the sample, while the contrast
inside it comes from the stain, whose ``delta/beta`` is an order of magnitude lower (heavy metal
against resin). With a known envelope phase ``phi_e`` (the sample's support filled with its mean
``delta``) and ``A^e_k`` built with the mean ``delta/beta``, the interior is retrieved with the
contrast ``delta/beta`` from what the envelope does not explain::

    phi_hat = phi_e_hat + sum_k A_k (FT(I_k - 1) - 2 A^e_k phi_e_hat) / (2 sum_k A_k^2 + alpha)
            = sum_k A_k FT(I_k - 1) / den + G(f) phi_e_hat,   G = 1 - 2 sum_k A_k A^e_k / den

so the envelope costs one more FFT per angle (``G`` is cached with the filter).

Padding: each image is padded to ``next_fast_len(ceil(pad * n))`` per axis (``pad=2`` by
default), centred, with mirror values (``pad_mode="symmetric"``: ``... b a | a b c ... |
... c b``), which keeps the periodic extension continuous; the result is cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
from scipy import fft as _sfft
from scipy.special import erfc

from .geometry import DistanceGeometry, ScanGeometry
from .xp import fft_module, fft_workers, to_numpy

__all__ = [
    "DEFAULT_ALPHA_LOW",
    "DEFAULT_ALPHA_HIGH",
    "CTFFilter",
    "ctf_filter",
    "paganin_filter",
    "CTFRetriever",
    "retrieve_phase_ctf",
    "retrieve_phase_paganin",
    "retrieve_phase_paganin_multi",
    "padded_shape",
]

#: Regularisation below the first CTF maximum (absolute; compare with ``2 K (beta/delta)^2``).
DEFAULT_ALPHA_LOW = 1e-3
#: Regularisation above the first CTF maximum (absolute; compare with ``2 sum A_k^2 ~ K``).
DEFAULT_ALPHA_HIGH = 0.05
#: Width of the erfc transition of alpha(f), as a fraction of the transition frequency.
DEFAULT_TRANSITION_WIDTH = 0.2
#: Paganin: smallest value allowed under the logarithm.
PAGANIN_MIN_INTENSITY = 1e-6

PAD_MODES = ("symmetric", "reflect", "edge")


def padded_shape(shape: tuple[int, int], pad: float | tuple[int, int]) -> tuple[int, int]:
    """Padded FFT shape: ``next_fast_len(ceil(pad * n))`` per axis, or an explicit ``(ny, nx)``.

    ``pad == 1`` means no padding (the shape itself, even if not a fast FFT size).
    """
    if isinstance(pad, tuple):
        if len(pad) != 2 or pad[0] < shape[0] or pad[1] < shape[1]:
            raise ValueError(f"explicit padded shape {pad} must be 2-D and at least the image shape {shape}")
        return (int(pad[0]), int(pad[1]))
    if not pad >= 1:
        raise ValueError(f"pad factor must be >= 1, got {pad}")
    if pad == 1:
        return (int(shape[0]), int(shape[1]))
    ny, nx = (_sfft.next_fast_len(math.ceil(pad * n), real=True) for n in shape)
    return (int(ny), int(nx))


@lru_cache(maxsize=32)
def _pad_indices(n: int, n_pad: int, mode: str) -> tuple[int, np.ndarray]:
    """Offset of the image in the padded axis and the source index of every padded sample."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    before = (n_pad - n) // 2
    idx = np.pad(np.arange(n), (before, n_pad - n - before), mode=mode)
    return before, idx


def _shared(xp: ModuleType, a: np.ndarray) -> Any:
    """A cached array handed to many callers: read-only on the host."""
    out = xp.asarray(a)
    if isinstance(out, np.ndarray):
        out.flags.writeable = False
    return out


def _freq_squared(shape_p: tuple[int, int], pixel_m: float) -> np.ndarray:
    """``f^2`` in (cycles / m)^2 on the rfft2 grid of ``shape_p``, float64 (not cached: the
    filters built from it are)."""
    fy = np.fft.fftfreq(shape_p[0], d=pixel_m)
    fx = np.fft.rfftfreq(shape_p[1], d=pixel_m)
    return fy[:, None] ** 2 + fx[None, :] ** 2


@dataclass(frozen=True)
class CTFFilter:
    """Cached multi-distance CTF filter on the rfft2 grid of the padded shape.

    Attributes
    ----------
    numerators : array [K, ny_p, nx_p // 2 + 1] float32
        ``A_k(f) = sin(chi_k) + (beta/delta) cos(chi_k)``.
    inverse_denominator : array [ny_p, nx_p // 2 + 1] float32
        ``1 / (2 sum_k A_k^2 + alpha(f))``.
    alpha : array [ny_p, nx_p // 2 + 1] float32
        The regularisation ``alpha(f)``.
    cutoff_frequency : float
        ``f_c`` of the alpha transition, cycles per metre.
    envelope_gain : array [ny_p, nx_p // 2 + 1] float32 or None
        ``G(f) = 1 - 2 sum_k A_k A^e_k / den`` applied to the envelope phase (two-material
        retrieval); ``None`` when the filter was built without an envelope ``delta/beta``.
    """

    numerators: Any
    inverse_denominator: Any
    alpha: Any
    cutoff_frequency: float
    envelope_gain: Any = None

    @property
    def denominator(self) -> Any:
        """``2 sum_k A_k^2 + alpha(f)``."""
        return 1.0 / self.inverse_denominator


@lru_cache(maxsize=4)  # ~ (K + 2) x 34 MB each for a 4096 x 4096 padded frame
def ctf_filter(
    shape_padded: tuple[int, int],
    distances_m: tuple[float, ...],
    wavelength_m: float,
    pixel_m: float,
    delta_beta: float,
    alpha_low: float = DEFAULT_ALPHA_LOW,
    alpha_high: float = DEFAULT_ALPHA_HIGH,
    transition_width: float = DEFAULT_TRANSITION_WIDTH,
    xp: ModuleType = np,
    envelope_delta_beta: float | None = None,
) -> CTFFilter:
    """Multi-distance CTF filter for one geometry, cached on its (hashable) parameters.

    Parameters
    ----------
    shape_padded : (int, int)
        FFT shape (after padding).
    distances_m : tuple of float
        Effective propagation distances ``D_k``.
    wavelength_m, pixel_m : float
        Wavelength and the (common, reference) pixel size in the sample plane.
    delta_beta : float
        ``delta / beta`` of the homogeneous-object assumption (``> 0``; ``inf`` = pure phase).
    alpha_low, alpha_high : float
        Regularisation below / above the first CTF maximum of the largest ``D``.
    transition_width : float
        Width of the erfc transition as a fraction of ``f_c``.
    xp : module
        Array module of the returned arrays.
    envelope_delta_beta : float, optional
        ``delta / beta`` of the sample envelope (two-material retrieval, see the module notes);
        ``delta_beta`` is then that of the contrast inside the sample.
    """
    if envelope_delta_beta is not None and not envelope_delta_beta > 0:
        raise ValueError(f"envelope delta/beta must be positive, got {envelope_delta_beta}")
    if not distances_m or any(not (d > 0) for d in distances_m):
        raise ValueError(f"propagation distances must be positive, got {distances_m}")
    if not delta_beta > 0:
        raise ValueError(f"delta/beta must be positive, got {delta_beta}")
    if alpha_low < 0 or alpha_high < 0 or transition_width <= 0:
        raise ValueError("alpha_low, alpha_high must be >= 0 and transition_width > 0")
    f2 = _freq_squared(tuple(shape_padded), float(pixel_m))
    beta_delta = 1.0 / delta_beta
    num = np.empty((len(distances_m),) + f2.shape, dtype=np.float32)
    den = np.zeros(f2.shape, dtype=np.float64)
    cross = np.zeros(f2.shape, dtype=np.float64) if envelope_delta_beta is not None else None
    for k, d in enumerate(distances_m):
        chi = np.pi * wavelength_m * d * f2
        a = np.sin(chi) + beta_delta * np.cos(chi)
        num[k] = a
        den += 2.0 * a * a
        if cross is not None:
            cross += 2.0 * a * (np.sin(chi) + np.cos(chi) / envelope_delta_beta)
    f_c = 1.0 / math.sqrt(2.0 * wavelength_m * max(distances_m))
    step = 0.5 * erfc((f_c - np.sqrt(f2)) / (transition_width * f_c))
    alpha = alpha_low + (alpha_high - alpha_low) * step
    den += alpha
    if not np.all(den > 0):
        raise ValueError("CTF denominator is not positive everywhere; use alpha_low > 0")
    return CTFFilter(
        numerators=_shared(xp, num),
        inverse_denominator=_shared(xp, (1.0 / den).astype(np.float32)),
        alpha=_shared(xp, alpha.astype(np.float32)),
        cutoff_frequency=f_c,
        envelope_gain=None if cross is None else _shared(xp, (1.0 - cross / den).astype(np.float32)),
    )


@lru_cache(maxsize=8)
def paganin_filter(
    shape_padded: tuple[int, int],
    distance_m: float,
    wavelength_m: float,
    pixel_m: float,
    delta_beta: float,
    xp: ModuleType = np,
) -> Any:
    """Paganin low-pass ``1 / (1 + pi lambda D (delta/beta) f^2)`` on the rfft2 grid, float32."""
    if not (distance_m >= 0 and delta_beta > 0):
        raise ValueError(f"need distance >= 0 and delta/beta > 0, got {distance_m}, {delta_beta}")
    f2 = _freq_squared(tuple(shape_padded), float(pixel_m))
    return _shared(xp, (1.0 / (1.0 + np.pi * wavelength_m * distance_m * delta_beta * f2)).astype(np.float32))


def _check_image(xp: ModuleType, img: Any, shape: tuple[int, int], name: str) -> None:
    if img.shape != tuple(shape):
        raise ValueError(f"{name} has shape {img.shape}, expected {tuple(shape)}")
    if not bool(xp.isfinite(img).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _runs(idx: np.ndarray, offset: int, lo: int, hi: int) -> list[tuple[slice, slice]]:
    """Copy plan for the margin samples of one padded axis.

    ``idx[j]`` is the image sample that padded position ``j`` repeats; positions in
    ``[lo, hi)`` hold the image itself. Consecutive margin positions whose source index
    steps by -1, 0 or +1 are grouped into one ``(dst, src)`` pair of slices into the
    padded axis (``src`` inside the image block, so one slicing copy per run).
    """
    plan: list[tuple[slice, slice]] = []
    j, n_pad = 0, idx.size
    while j < n_pad:
        if lo <= j < hi:
            j = hi
            continue
        end = hi if j < lo else n_pad
        step = int(idx[j + 1] - idx[j]) if j + 1 < end else 0
        if step not in (-1, 0, 1):
            step = 0
        k = j + 1
        while k < end and idx[k] - idx[k - 1] == step:
            k += 1
        if step == 0 and k - j > 1 and np.any(idx[j:k] != idx[j]):
            k = j + 1
        s0 = int(idx[j]) + offset
        if step == 0:
            src = slice(s0, s0 + 1)
        elif step == 1:
            src = slice(s0, s0 + (k - j))
        else:
            stop = s0 - (k - j)
            src = slice(s0, stop if stop >= 0 else None, -1)
        plan.append((slice(j, k), src))
        j = k
    return plan


class _Padder:
    """Mirror/edge padding into a reusable float32 buffer (slicing copies), and the crop back."""

    def __init__(self, shape: tuple[int, int], shape_p: tuple[int, int], mode: str, xp: ModuleType) -> None:
        self.xp = xp
        self.shape = shape
        self.shape_p = shape_p
        self.y0, iy = _pad_indices(shape[0], shape_p[0], mode)
        self.x0, ix = _pad_indices(shape[1], shape_p[1], mode)
        self._row_plan = _runs(iy, self.y0, self.y0, self.y0 + shape[0])
        self._col_plan = _runs(ix, self.x0, self.x0, self.x0 + shape[1])
        self.buffer = xp.empty(shape_p, dtype=xp.float32)

    def __call__(self, img: Any) -> Any:
        buf = self.buffer
        ys = slice(self.y0, self.y0 + self.shape[0])
        buf[ys, self.x0 : self.x0 + self.shape[1]] = img
        for dst, src in self._col_plan:
            buf[ys, dst] = buf[ys, src]
        for dst, src in self._row_plan:
            buf[dst, :] = buf[src, :]
        return buf

    def crop(self, a: Any) -> Any:
        return a[self.y0 : self.y0 + self.shape[0], self.x0 : self.x0 + self.shape[1]]


class CTFRetriever:
    """Multi-distance CTF phase retrieval for one geometry and image shape (streaming path).

    Holds the cached filter and a reusable padding buffer; call it on the K aligned,
    flat-fielded images of one angle.

    Parameters
    ----------
    geometry : ScanGeometry
        The scan; every image must already be on the reference pixel ``geometry.voxel_m``;
        each distance keeps its own ``D_k``.
    shape : (int, int)
        Image shape ``(ny, nx)``.
    delta_beta : float
        ``delta / beta`` of the homogeneous-object assumption.
    alpha_low, alpha_high, transition_width : float
        Regularisation, see :func:`ctf_filter`.
    pad : float or (int, int)
        Padding factor or explicit padded shape, see :func:`padded_shape`.
    pad_mode : {"symmetric", "reflect", "edge"}
        Values in the padded margin.
    pixel_m : float, optional
        Pixel of the images; default ``geometry.voxel_m``. Give the full scan's reference pixel when
        ``geometry`` holds only the distances present at an angle.
    xp : module
        Array module.
    envelope_delta_beta : float, optional
        Mean ``delta / beta`` of the sample: enables the two-material retrieval, where calls pass
        the envelope phase and ``delta_beta`` is the contrast's (see the module notes).

    Notes
    -----
    Not thread-safe: one padding buffer is reused across calls.
    """

    def __init__(
        self,
        geometry: ScanGeometry,
        shape: tuple[int, int],
        delta_beta: float,
        alpha_low: float = DEFAULT_ALPHA_LOW,
        alpha_high: float = DEFAULT_ALPHA_HIGH,
        transition_width: float = DEFAULT_TRANSITION_WIDTH,
        pad: float | tuple[int, int] = 2.0,
        pad_mode: str = "symmetric",
        pixel_m: float | None = None,
        xp: ModuleType = np,
        envelope_delta_beta: float | None = None,
    ) -> None:
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"shape must be (ny, nx) with both >= 2, got {shape}")
        self.geometry = geometry
        self.shape = (int(shape[0]), int(shape[1]))
        self.shape_padded = padded_shape(self.shape, pad)
        self.pixel_m = float(geometry.voxel_m if pixel_m is None else pixel_m)
        if not (np.isfinite(self.pixel_m) and self.pixel_m > 0):
            raise ValueError(f"pixel_m must be a positive finite number, got {pixel_m}")
        self.xp = xp
        self.filter = ctf_filter(
            self.shape_padded,
            tuple(float(d) for d in geometry.propagation_distances_m),
            float(geometry.distances[0].wavelength_m),
            self.pixel_m,
            float(delta_beta),
            float(alpha_low),
            float(alpha_high),
            float(transition_width),
            xp,
            None if envelope_delta_beta is None else float(envelope_delta_beta),
        )
        self._pad = _Padder(self.shape, self.shape_padded, pad_mode, xp)
        n_pix = self.shape_padded[0] * self.shape_padded[1]
        # FT(I - 1) = FT(I) - N delta(f): the "- 1" only touches the DC sample
        self._dc = float(n_pix * np.sum(to_numpy(self.filter.numerators[:, 0, 0]).astype(np.float64)))
        self._fft = fft_module(xp)
        self._workers = fft_workers(xp)

    def padded(self, image: Any) -> Any:
        """``image`` [ny, nx] padded as the filter sees it: a new float32 array of the retriever's module."""
        return self._pad(self.xp.asarray(image, dtype=self.xp.float32)).copy()

    def cropped(self, padded: Any) -> Any:
        """The image region of a padded array (a view)."""
        return self._pad.crop(padded)

    def __call__(self, images: Any, envelope: Any = None) -> Any:
        """Phase ``phi`` [ny, nx] float32 (radians, negative for matter) from K images [K, ny, nx].

        ``envelope`` is the sample envelope's phase [ny, nx] at this angle (radians, same sign), for
        a retriever built with ``envelope_delta_beta``; it is part of the returned phase.
        """
        xp = self.xp
        if envelope is not None and self.filter.envelope_gain is None:
            raise ValueError("an envelope phase needs a retriever built with envelope_delta_beta")
        k_expected = len(self.geometry.distances)
        if len(images) != k_expected:
            raise ValueError(f"got {len(images)} images for a geometry with {k_expected} distances")
        acc = None
        for k in range(k_expected):
            img = xp.asarray(images[k])
            _check_image(xp, img, self.shape, f"image of distance {k}")
            spec = self._fft.rfft2(self._pad(img), overwrite_x=True, **self._workers)
            spec *= self.filter.numerators[k]
            if acc is None:
                acc = spec
            else:
                acc += spec
        acc[0, 0] -= self._dc
        acc *= self.filter.inverse_denominator
        if envelope is not None:
            env = xp.asarray(envelope)
            _check_image(xp, env, self.shape, "envelope phase")
            acc += self._fft.rfft2(self._pad(env), overwrite_x=True, **self._workers) * self.filter.envelope_gain
        phi = self._fft.irfft2(acc, s=self.shape_padded, overwrite_x=True, **self._workers)
        return xp.ascontiguousarray(self._pad.crop(phi), dtype=xp.float32)


def retrieve_phase_ctf(
    images: Any,
    geometry: ScanGeometry,
    delta_beta: float,
    alpha_low: float = DEFAULT_ALPHA_LOW,
    alpha_high: float = DEFAULT_ALPHA_HIGH,
    pad: float | tuple[int, int] = 2.0,
    pad_mode: str = "symmetric",
    transition_width: float = DEFAULT_TRANSITION_WIDTH,
    pixel_m: float | None = None,
    xp: ModuleType = np,
) -> Any:
    """Multi-distance CTF phase retrieval of one angle.

    Parameters
    ----------
    images : array [K, ny, nx] or sequence of K arrays [ny, nx]
        Flat-fielded intensities (mean ~ transmission, not log), already rescaled and
        aligned to the reference pixel ``geometry.voxel_m``, in the order of
        ``geometry.distances``.
    geometry : ScanGeometry
        Gives ``D_k``, the wavelength and the reference pixel.
    delta_beta : float
        ``delta / beta``.
    alpha_low, alpha_high, pad, pad_mode, transition_width, pixel_m :
        See :class:`CTFRetriever`.
    xp : module
        Array module.

    Returns
    -------
    array [ny, nx] float32
        ``phi`` in radians (negative for matter).
    """
    first = xp.asarray(images[0])
    if first.ndim != 2:
        raise ValueError(f"each image must be 2-D, got shape {first.shape}")
    retr = CTFRetriever(
        geometry,
        first.shape,
        delta_beta,
        alpha_low=alpha_low,
        alpha_high=alpha_high,
        transition_width=transition_width,
        pad=pad,
        pad_mode=pad_mode,
        pixel_m=pixel_m,
        xp=xp,
    )
    return retr(images)


def retrieve_phase_paganin(
    image: Any,
    distance: DistanceGeometry | tuple[float, float, float],
    delta_beta: float,
    pad: float | tuple[int, int] = 2.0,
    pad_mode: str = "symmetric",
    xp: ModuleType = np,
) -> Any:
    """Single-distance Paganin phase.

    ``phi = (delta/beta)/2 ln(IFFT[FFT(I) / (1 + pi lambda D (delta/beta) f^2)])``.

    Parameters
    ----------
    image : array [ny, nx]
        Flat-fielded intensity.
    distance : DistanceGeometry or (D_m, wavelength_m, pixel_m)
        A :class:`DistanceGeometry` (its effective ``D``, wavelength and effective pixel
        ``p/M``: the image is at its native pixel), or an explicit triple, e.g. the
        reference pixel for an image already rescaled to it.
    delta_beta : float
        ``delta / beta``.
    pad, pad_mode :
        See :class:`CTFRetriever`.
    xp : module
        Array module.

    Returns
    -------
    array [ny, nx] float32
        ``phi`` in radians (negative for matter). Filtered intensities below
        :data:`PAGANIN_MIN_INTENSITY` are clipped to it before the logarithm.
    """
    if isinstance(distance, DistanceGeometry):
        d_m, lam, pix = distance.propagation_distance_m, distance.wavelength_m, distance.effective_pixel_m
    else:
        if len(distance) != 3:
            raise ValueError("distance must be a DistanceGeometry or a (D_m, wavelength_m, pixel_m) triple")
        d_m, lam, pix = (float(v) for v in distance)
        if not (lam > 0 and pix > 0):
            raise ValueError(f"wavelength and pixel must be positive, got {lam}, {pix}")
    image = xp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    _check_image(xp, image, image.shape, "image")
    shape_p = padded_shape(image.shape, pad)
    filt = paganin_filter(shape_p, float(d_m), float(lam), float(pix), float(delta_beta), xp)
    padder = _Padder(image.shape, shape_p, pad_mode, xp)
    fftm, workers = fft_module(xp), fft_workers(xp)
    spec = fftm.rfft2(padder(image), overwrite_x=True, **workers)
    spec *= filt
    low = padder.crop(fftm.irfft2(spec, s=shape_p, overwrite_x=True, **workers))
    low = xp.maximum(low, xp.float32(PAGANIN_MIN_INTENSITY))
    return (xp.log(low) * xp.float32(0.5 * delta_beta)).astype(xp.float32)


def retrieve_phase_paganin_multi(
    stack: Any,
    distances: Sequence[tuple[float, float]],
    pixel_m: float,
    delta_beta: float,
    pad: float | tuple[int, int] = 2.0,
    pad_mode: str = "symmetric",
    xp: ModuleType = np,
) -> Any:
    """Paganin's homogeneous-object phase from several distances at once, by least squares.

    Each distance's intensity is, in the transport-of-intensity approximation,
    ``FT(I_k) = g_k(f) FT(exp(-mu T))`` with ``g_k = 1 + pi lambda D_k (delta/beta) f^2``; the ``exp(-mu T)``
    that fits every distance best is ``sum_k g_k FT(I_k) / sum_k g_k^2``, and
    ``phi = (delta/beta)/2 ln(IFFT[...])``. With one distance this is :func:`retrieve_phase_paganin`; with
    several, the noise of all of them averages, and the longest distances weigh most where their phase
    contrast is strongest. Robust where the CTF's linearisation fails (strong absorption, phases of
    several radians), blurrier than the CTF (no phase contrast beyond the first CTF maximum).

    Parameters
    ----------
    stack : array [K, ny, nx]
        Flat-fielded intensities of the distances, on one grid (the reference pixel).
    distances : sequence of (D_m, wavelength_m)
        Effective propagation distance and wavelength of each.
    pixel_m : float
        The grid's pixel (sample plane).
    delta_beta : float
        ``delta / beta``.
    pad, pad_mode, xp :
        See :func:`retrieve_phase_paganin`.

    Returns
    -------
    array [ny, nx] float32
        ``phi`` in radians (negative for matter).
    """
    stack = xp.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] != len(distances) or not distances:
        raise ValueError(f"stack must be [K, ny, nx] with one (D, wavelength) per distance, got {stack.shape} and "
                         f"{len(distances)} distances")
    shape = tuple(stack.shape[1:])
    for k in range(stack.shape[0]):
        _check_image(xp, stack[k], shape, f"distance {k}")
    shape_p = padded_shape(shape, pad)
    padder = _Padder(shape, shape_p, pad_mode, xp)
    fftm, workers = fft_module(xp), fft_workers(xp)
    num, den = None, None
    for k, (d_m, lam) in enumerate(distances):
        g = 1.0 / paganin_filter(shape_p, float(d_m), float(lam), float(pixel_m), float(delta_beta), xp)
        spec = fftm.rfft2(padder(stack[k]), **workers) * g
        num = spec if num is None else num + spec
        den = g * g if den is None else den + g * g
    low = padder.crop(fftm.irfft2(num / den, s=shape_p, overwrite_x=True, **workers))
    low = xp.maximum(low, xp.float32(PAGANIN_MIN_INTENSITY))
    return (xp.log(low) * xp.float32(0.5 * delta_beta)).astype(xp.float32)
