"""Drift and warping of the sample from pairs of images of the same view.

Two kinds of pairs (``docs/quality.md``, "Drift and warping"; the figures the report holds:
``docs/contracts.md``, "Drift and warping"):

* a **return projection** (``image_key_control = -1``, taken at the end of a distance) against the
  projection at the same angle taken at the start of that distance: what moved or deformed during the
  distance;
* **distance k against the reference distance** at the same angle, after rescaling distance k to the
  reference pixel (:func:`xnh_stream.physics.align.rescale_shift`): the distances are recorded one after another,
  so a scale change or a non-rigid residual between them is sample deformation (their rigid offset is the
  deliberate re-positioning between distances, corrected by the alignment).

Each pair gives a patch-wise **displacement field** (:func:`patch_displacements`: low-pass NCC on
overlapping patches, :func:`xnh_stream.physics.align.register_lowpass_ncc`), which :func:`decompose_displacements`
splits into a rigid translation, an isotropic scale change about the image centre and the non-rigid
remainder.

Conventions: positions ``(y, x)`` in pixels of the images compared; a *displacement* ``d(p)`` is how far
the content at ``p`` in the first image (``reference``) has moved in the second (``moving``):
``moving(p + d(p)) = reference(p)``; it is minus the shift :func:`register_lowpass_ncc` returns.
A pure scale ``s`` about the centre ``c`` gives ``d(p) = (s - 1) (p - c)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..physics.align import register_lowpass_ncc
from ..physics.xp import bin_2d

log = logging.getLogger(__name__)

__all__ = [
    "DisplacementField",
    "WarpDecomposition",
    "patch_displacements",
    "decompose_displacements",
    "compare_views",
]


@dataclass
class DisplacementField:
    """Displacements measured on patches.

    Attributes
    ----------
    positions : ndarray [n, 2]
        Patch centres ``(y, x)``, pixels.
    displacements : ndarray [n, 2]
        Content displacement ``(dy, dx)`` from ``reference`` to ``moving`` at each centre, pixels.
    ok : ndarray [n] of bool
        Registration accepted (enough contrast, unique peak).
    peaks : ndarray [n]
        NCC peak of each patch.
    shape : tuple of int
        Shape of the images compared.
    """

    positions: np.ndarray
    displacements: np.ndarray
    ok: np.ndarray
    peaks: np.ndarray
    shape: tuple[int, int]


@dataclass
class WarpDecomposition:
    """A displacement field split as ``d(p) = t + (scale - 1) (p - c) + r(p)``.

    Attributes
    ----------
    rigid_yx : tuple of float
        Translation ``t`` (pixels): the displacement at the image centre.
    rigid_px : float
        ``|t|``.
    scale : float
        Isotropic scale factor about the image centre (1 = none; 0.99 = the sample shrank 1 %).
    nonrigid_rms_px, nonrigid_max_px : float
        RMS and largest magnitude of the non-rigid remainder ``r`` over the accepted patches.
    n_patches, n_used : int
        Patches measured and accepted.
    residuals : ndarray [n, 2]
        ``r`` at each patch (NaN for rejected patches).
    noise_px : float
        RMS misfit of the patches to the smooth model (registration noise).
    """

    rigid_yx: tuple[float, float]
    rigid_px: float
    scale: float
    nonrigid_rms_px: float
    nonrigid_max_px: float
    n_patches: int
    n_used: int
    residuals: np.ndarray = field(repr=False)
    noise_px: float = 0.0

    def as_dict(self, pixel_m: float | None = None) -> dict[str, Any]:
        """JSON-ready summary; with ``pixel_m`` also the lengths in metres."""
        d: dict[str, Any] = {"rigid_yx_px": [round(v, 4) for v in self.rigid_yx], "rigid_px": round(self.rigid_px, 4),
                             "scale": round(self.scale, 6), "nonrigid_rms_px": round(self.nonrigid_rms_px, 4),
                             "nonrigid_max_px": round(self.nonrigid_max_px, 4), "patches": self.n_patches,
                             "patches_used": self.n_used, "noise_px": round(self.noise_px, 4)}
        if pixel_m is not None:
            d.update(rigid_m=self.rigid_px * pixel_m, nonrigid_rms_m=self.nonrigid_rms_px * pixel_m,
                     nonrigid_max_m=self.nonrigid_max_px * pixel_m)
        return d


def default_patch_px(shape: tuple[int, int]) -> int:
    """Patch size for a field on images of ``shape``: half the smaller side, 16 to 128 px."""
    return int(min(128, max(16, min(shape) // 2)))


def patch_displacements(
    reference: Any,
    moving: Any,
    patch_px: int | None = None,
    step_px: int | None = None,
    sigma_px: float = 1.5,
    highpass_sigma_px: float | None = -1.0,
    min_peak: float = 0.5,
    xp: ModuleType = np,
) -> DisplacementField:
    """Displacement field between two images of the same view, on overlapping square patches.

    Parameters
    ----------
    reference, moving : array [ny, nx]
        The two images (flat-fielded holograms or phase maps), same shape and pixel.
    patch_px : int, optional
        Patch side (default :func:`default_patch_px`).
    step_px : int, optional
        Distance between patch centres (default half a patch).
    sigma_px : float
        Low-pass of the NCC (pixels).
    highpass_sigma_px : float or None
        Structures larger than about this are suppressed (flat-field residuals, beam drift); the default
        (-1) uses a quarter of the patch, None none.
    min_peak : float
        Patches whose NCC peak is lower are rejected (air, flat regions).
    xp : module
        Array module.

    Returns
    -------
    DisplacementField
    """
    reference = xp.asarray(reference, dtype=xp.float32)
    moving = xp.asarray(moving, dtype=xp.float32)
    if reference.ndim != 2 or reference.shape != moving.shape:
        raise ValueError(f"reference {reference.shape} and moving {moving.shape} must be 2-D of equal shape")
    ny, nx = (int(n) for n in reference.shape)
    patch = default_patch_px((ny, nx)) if patch_px is None else int(patch_px)
    if patch < 8 or patch > min(ny, nx):
        raise ValueError(f"patch_px={patch} must be between 8 and the image's smaller side {min(ny, nx)}")
    step = max(1, patch // 2 if step_px is None else int(step_px))

    def starts(n: int) -> list[int]:
        s = list(range(0, n - patch + 1, step))
        if s[-1] != n - patch:  # cover the far border too
            s.append(n - patch)
        return s

    pos, disp, ok, peaks = [], [], [], []
    max_shift = max(2.0, patch / 4)
    hp = patch / 4 if highpass_sigma_px is not None and highpass_sigma_px < 0 else highpass_sigma_px
    for y0 in starts(ny):
        for x0 in starts(nx):
            a = reference[y0 : y0 + patch, x0 : x0 + patch]
            b = moving[y0 : y0 + patch, x0 : x0 + patch]
            if float(xp.std(a)) == 0.0 or float(xp.std(b)) == 0.0:
                res_ok, shift, peak = False, (0.0, 0.0), 0.0
            else:
                res = register_lowpass_ncc(a, b, sigma_px=sigma_px, max_shift_px=max_shift, min_peak=min_peak,
                                           highpass_sigma_px=hp,
                                           apodize_fraction=0.25, xp=xp)
                res_ok, shift, peak = res.ok, res.shift_yx, res.peak
            pos.append((y0 + (patch - 1) / 2, x0 + (patch - 1) / 2))
            disp.append((-shift[0], -shift[1]))
            ok.append(bool(res_ok))
            peaks.append(float(peak))
    return DisplacementField(np.asarray(pos, float), np.asarray(disp, float), np.asarray(ok, bool),
                             np.asarray(peaks, float), (ny, nx))


def _monomials(p: np.ndarray, degree: int) -> np.ndarray:
    """Monomials ``y^i x^j`` with ``2 <= i + j <= degree`` of normalised positions ``p`` [n, 2]."""
    cols = [p[:, 0] ** i * p[:, 1] ** (n - i) for n in range(2, degree + 1) for i in range(n + 1)]
    return np.stack(cols, axis=1) if cols else np.zeros((p.shape[0], 0))


def _affine_fit(p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``d = t + e p``: coefficients ``(ty, tx, e)`` and the residual [n, 2]."""
    n = p.shape[0]
    a = np.zeros((2 * n, 3))
    a[0::2, 0] = 1.0
    a[1::2, 1] = 1.0
    a[0::2, 2] = p[:, 0]
    a[1::2, 2] = p[:, 1]
    coef, *_ = np.linalg.lstsq(a, d.reshape(-1), rcond=None)
    return coef, (d.reshape(-1) - a @ coef).reshape(-1, 2)


def decompose_displacements(fld: DisplacementField, centre_yx: tuple[float, float] | None = None,
                            min_patches: int = 3, degree: int | None = None) -> WarpDecomposition | None:
    """Split a displacement field into translation, isotropic scale and a smooth non-rigid warp.

    The field is fitted (least squares, per component) with a translation, an isotropic scale about the
    centre and the monomials of degree 2 to ``degree`` of the position: radiation-induced warping is
    smooth over the field of view, while the registration noise of single patches is not, so the
    polynomial keeps the warp and averages the noise. Patches whose misfit is far beyond the others'
    (4 robust standard deviations, at least 0.1 px: a feature-poor or ambiguous patch) are dropped.
    The smooth field at the patches is then split into its least-squares translation + scale and the
    remainder, the non-rigid warp.

    Parameters
    ----------
    fld : DisplacementField
        From :func:`patch_displacements`.
    centre_yx : tuple of float, optional
        Centre of the scale change (default the image centre ``(n - 1) / 2``, the optical axis).
    min_patches : int
        Fewer accepted patches than this: None (nothing reliable to decompose).
    degree : int, optional
        Highest polynomial degree of the non-rigid part; default 3 with 20 patches or more, 2 with 10 or
        more, else 1 (no non-rigid part beyond the patch residuals).

    Returns
    -------
    WarpDecomposition or None
        ``residuals`` holds the non-rigid warp at each patch (NaN where rejected); ``noise_px`` the RMS
        misfit of the patches to the smooth model.
    """
    ok = fld.ok.copy()
    if int(ok.sum()) < max(2, min_patches):
        return None
    c = np.asarray(centre_yx if centre_yx is not None else [(n - 1) / 2 for n in fld.shape], float)
    half = max(1.0, max(fld.shape) / 2)
    n_ok = int(ok.sum())
    deg = degree if degree is not None else (3 if n_ok >= 20 else 2 if n_ok >= 10 else 1)
    def fit(mask: np.ndarray, deg: int) -> tuple[np.ndarray, np.ndarray, int]:
        p = (fld.positions[mask] - c) / half
        extra = _monomials(p, deg)
        if 3 + extra.shape[1] >= p.shape[0]:  # too few patches for that degree
            deg, extra = 1, extra[:, :0]
        # translation + per-component polynomial (scale enters through the linear terms)
        basis = np.concatenate([np.ones((p.shape[0], 1)), p, extra], axis=1)
        coef, *_ = np.linalg.lstsq(basis, fld.displacements[mask], rcond=None)
        smooth = basis @ coef
        return smooth, np.hypot(*(fld.displacements[mask] - smooth).T), deg

    smooth, misfit, deg = fit(ok, deg)
    for _ in range(3):
        mad = float(np.median(np.abs(misfit - np.median(misfit))))
        bad = misfit > max(4 * 1.4826 * mad + float(np.median(misfit)), 0.1)
        if not bad.any() or int(ok.sum()) - int(bad.sum()) < max(3, min_patches):
            break
        ok[np.flatnonzero(ok)[bad]] = False
        smooth, misfit, deg = fit(ok, deg)
    d = fld.displacements[ok]
    p_px = fld.positions[ok] - c
    aff, resid = _affine_fit(p_px, smooth if deg > 1 else d)
    if deg <= 1:
        resid = d - (np.array([aff[0], aff[1]]) + aff[2] * p_px)
    mag = np.hypot(resid[:, 0], resid[:, 1])
    full = np.full_like(fld.displacements, np.nan)
    full[ok] = resid
    ty, tx, e = (float(v) for v in aff)
    noise = float(np.sqrt(np.mean(np.sum((d - smooth) ** 2, axis=1))))
    return WarpDecomposition(rigid_yx=(ty, tx), rigid_px=math.hypot(ty, tx), scale=1.0 + e,
                             nonrigid_rms_px=float(np.sqrt(np.mean(mag**2))), nonrigid_max_px=float(mag.max()),
                             n_patches=int(fld.ok.size), n_used=int(ok.sum()), residuals=full, noise_px=noise)


def compare_views(reference: Any, moving: Any, patch_px: int | None = None, bin_px: int = 1,
                  xp: ModuleType = np) -> tuple[WarpDecomposition | None, DisplacementField]:
    """Displacement field and its decomposition between two views, in pixels of the input images.

    ``bin_px`` block-averages both images first (speed on large frames); the results are scaled back
    to input pixels. When too few patches are reliable, the decomposition is None.
    """
    if bin_px > 1:
        reference = bin_2d(xp.asarray(reference, dtype=xp.float32), bin_px)
        moving = bin_2d(xp.asarray(moving, dtype=xp.float32), bin_px)
        patch_px = None if patch_px is None else max(8, patch_px // bin_px)
    fld = patch_displacements(reference, moving, patch_px=patch_px, xp=xp)
    dec = decompose_displacements(fld)
    if bin_px > 1:
        b = float(bin_px)
        # pixel (i) of the binned image covers input pixels b*i .. b*i + b - 1: centre b*i + (b - 1) / 2
        fld = DisplacementField(fld.positions * b + (b - 1) / 2, fld.displacements * b, fld.ok, fld.peaks,
                                (fld.shape[0] * bin_px, fld.shape[1] * bin_px))
        if dec is not None:
            dec = WarpDecomposition((dec.rigid_yx[0] * b, dec.rigid_yx[1] * b), dec.rigid_px * b, dec.scale,
                                    dec.nonrigid_rms_px * b, dec.nonrigid_max_px * b, dec.n_patches, dec.n_used,
                                    dec.residuals * b, dec.noise_px * b)
    return dec, fld
