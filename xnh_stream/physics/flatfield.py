"""Flat-field correction: static, interpolated between flat series, and dynamic (PCA).

Conventions
-----------
``flat_field(I, dark, flat) = (I - dark) / (flat - dark)`` in float32. A pixel whose
denominator ``flat - dark`` is not positive (dead or saturated-dark pixel) carries no
information; its output is set to ``1.0`` (neutral transmission: no absorption, no phase
contrast), which leaves phase retrieval and tomography undisturbed. Negative values of
``I - dark`` (noise below the dark level) are kept: the correction is linear and the
downstream CTF retrieval is too.

Dynamic flat-field (:class:`PCAFlats`) follows the idea of Van Nieuwenhove et al., Opt.
Express 23 (2015) 27975: the beam is the mean flat plus a combination of principal
components ("eigen-flats") of the flat fluctuations. The weights of the components are
fitted on the LOW-FREQUENCY content of each frame (block-averaged and Gaussian
low-passed), because in XNH the sample fills the whole field of view and there are no
empty side strips to fit on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .xp import check_finite, ndimage_module, to_numpy

__all__ = ["flat_field", "FlatInterpolator", "PCAFlats"]

log = logging.getLogger(__name__)

#: Output value of pixels whose ``flat - dark`` is not positive (neutral transmission).
DEAD_PIXEL_VALUE = 1.0


def flat_field(frame: Any, dark: Any, flat: Any, xp: ModuleType = np) -> Any:
    """Flat-field correct one frame or a stack: ``(frame - dark) / (flat - dark)``.

    Parameters
    ----------
    frame : array [..., ny, nx]
        Raw frame(s), any real dtype.
    dark, flat : array [ny, nx] or scalar (dark only)
        Dark current and (mean or interpolated) flat, same detector shape as ``frame``.
    xp : module
        Array module (numpy or cupy).

    Returns
    -------
    array [..., ny, nx] float32
        Corrected frame(s); pixels where ``flat - dark <= 0`` are set to
        :data:`DEAD_PIXEL_VALUE` (1.0).

    Raises
    ------
    ValueError
        On shape mismatch or NaN / inf in any input.
    """
    frame = xp.asarray(frame)
    dark = xp.asarray(dark)
    flat = xp.asarray(flat)
    if frame.ndim < 2:
        raise ValueError(f"frame must be at least 2-D [ny, nx], got shape {frame.shape}")
    det = frame.shape[-2:]
    if flat.shape != det:
        raise ValueError(f"flat shape {flat.shape} does not match frame detector shape {det}")
    if dark.ndim != 0 and dark.shape != det:
        raise ValueError(f"dark shape {dark.shape} does not match frame detector shape {det}")
    for name, a in (("frame", frame), ("dark", dark), ("flat", flat)):
        check_finite(a, name, xp)
    dark32 = dark.astype(xp.float32, copy=False)
    den = flat.astype(xp.float32) - dark32
    bad = den <= 0
    den = xp.where(bad, xp.float32(1.0), den)
    out = frame.astype(xp.float32) - dark32
    out /= den
    if bool(bad.any()):
        out = xp.where(bad, xp.float32(DEAD_PIXEL_VALUE), out)
    return out


class FlatInterpolator:
    """Flat field at any position, linearly interpolated between flat series.

    Parameters
    ----------
    positions : sequence of float
        Where each flat series was taken (frame index or time; any monotonic scan coordinate).
    flats : sequence of arrays [ny, nx] or array [m, ny, nx]
        The mean (or median) image of each series, same order as ``positions``.
    xp : module
        Array module.

    Notes
    -----
    Between two series the flat is ``(1 - t) F_a + t F_b`` with ``t`` the fractional
    position; outside the first / last series it is clamped to that series.
    """

    def __init__(self, positions: Sequence[float], flats: Any, xp: ModuleType = np) -> None:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 1 or pos.size == 0:
            raise ValueError(f"positions must be a non-empty 1-D sequence, got shape {pos.shape}")
        if not np.all(np.isfinite(pos)):
            raise ValueError("positions contain NaN or inf")
        stack = xp.stack([xp.asarray(f, dtype=xp.float32) for f in flats])
        if stack.ndim != 3:
            raise ValueError(f"flats must be a stack [m, ny, nx], got shape {stack.shape}")
        if stack.shape[0] != pos.size:
            raise ValueError(f"{stack.shape[0]} flat images but {pos.size} positions")
        check_finite(stack, "flats", xp)
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        if np.any(np.diff(pos) == 0):
            raise ValueError(f"duplicate flat positions {pos.tolist()}")
        self.xp = xp
        self.positions = pos
        self.flats = stack[xp.asarray(order)]

    @classmethod
    def from_series(
        cls, series: Sequence[tuple[float, Any]], reducer: str = "median", xp: ModuleType = np
    ) -> FlatInterpolator:
        """Build from raw series ``[(position, stack [n, ny, nx]), ...]`` reduced by mean or median."""
        if reducer not in ("mean", "median"):
            raise ValueError(f"reducer must be 'mean' or 'median', got {reducer!r}")
        red = xp.median if reducer == "median" else xp.mean
        positions, images = [], []
        for p, s in series:
            s = xp.asarray(s, dtype=xp.float32)
            if s.ndim == 2:
                s = s[None]
            images.append(red(s, axis=0).astype(xp.float32))
            positions.append(float(p))
        return cls(positions, images, xp=xp)

    @property
    def shape(self) -> tuple[int, int]:
        """Detector shape ``(ny, nx)``."""
        return tuple(self.flats.shape[1:])  # type: ignore[return-value]

    def bracket(self, position: float) -> tuple[int, int, float]:
        """The series ``(a, b)`` (by position) whose flats make the flat at ``position``, and the weight ``t`` of
        ``b``: ``(1 - t) F_a + t F_b``; ``a == b`` and ``t == 0`` outside the series (clamped)."""
        if not np.isfinite(position):
            raise ValueError(f"position must be finite, got {position}")
        pos = self.positions
        if position <= pos[0]:
            return 0, 0, 0.0
        if position >= pos[-1]:
            return len(pos) - 1, len(pos) - 1, 0.0
        j = int(np.searchsorted(pos, position, side="right"))  # pos[j-1] <= position < pos[j]
        return j - 1, j, float((position - pos[j - 1]) / (pos[j] - pos[j - 1]))

    def flat_at(self, position: float) -> Any:
        """Flat image [ny, nx] float32 at ``position`` (linear between series, clamped outside)."""
        return self.combine(*self.bracket(position))

    def combine(self, a: int, b: int, t: float) -> Any:
        """The flat ``(1 - t) F_a + t F_b`` of series ``a`` and ``b`` (by position), float32."""
        if a == b:
            return self.flats[a]
        return (self.flats[a] * np.float32(1.0 - t) + self.flats[b] * np.float32(t)).astype(
            self.xp.float32, copy=False
        )

    def correct(self, frame: Any, position: float, dark: Any) -> Any:
        """Flat-field ``frame`` taken at ``position`` with the interpolated flat."""
        return flat_field(frame, dark, self.flat_at(position), xp=self.xp)


def reflat(corrected: Any, dark: Any, flat_used: Any, flat: Any, xp: ModuleType = np) -> Any | None:
    """A frame flat-fielded with ``flat_used`` (:func:`flat_field`) as it would be with ``flat``, without its
    raw pixels: its counts ``corrected * (flat_used - dark) + dark`` flat-fielded with ``flat``, equal to
    flat-fielding the raw frame with ``flat`` within a few float32 roundings (the live stream's frames,
    corrected before the last flats came).

    Returns
    -------
    array [ny, nx] float32 or None
        The frame; None where a pixel dead under ``flat_used`` (``flat_used <= dark``: its value is lost)
        is alive under ``flat``. Pixels dead under ``flat`` are :data:`DEAD_PIXEL_VALUE`, as
        :func:`flat_field` sets them.
    """
    dark32 = xp.asarray(dark, dtype=xp.float32)
    used = xp.asarray(flat_used, dtype=xp.float32) - dark32
    if bool(xp.any((used <= 0) & (xp.asarray(flat, dtype=xp.float32) > dark32))):
        return None
    # the raw counts again, then flat-fielded as any frame is (its dead pixels and checks included)
    return flat_field(xp.asarray(corrected, dtype=xp.float32) * used + dark32, dark32, flat, xp=xp)


def _block_mean(xp: ModuleType, a: Any, b: int) -> Any:
    """Block-average the last two axes by ``b`` (trailing rows/columns that do not fill a block dropped)."""
    if b == 1:
        return a
    ny, nx = a.shape[-2] // b * b, a.shape[-1] // b * b
    a = a[..., :ny, :nx]
    new = a.shape[:-2] + (ny // b, b, nx // b, b)
    return a.reshape(new).mean(axis=(-3, -1))


class PCAFlats:
    """Dynamic flat-field from principal components of the flat fluctuations.

    Parameters
    ----------
    flats : array [m, ny, nx]
        Individual raw flat frames (not averaged), m >= 2.
    dark : array [ny, nx] or scalar
        Dark current.
    n_components : int, optional
        Number of eigen-flats kept. Default: the smallest number explaining
        ``variance_fraction`` of the flat fluctuation variance.
    variance_fraction : float
        See ``n_components``.
    bin_px : int
        Block-averaging factor applied before the weight fit (speed; low frequencies only).
    sigma_px : float
        Gaussian low-pass sigma in detector pixels (applied after binning as ``sigma_px / bin_px``).
        Structures much finer than this (the sample's fringes) do not enter the fit.
    xp : module
        Array module.

    Notes
    -----
    The model of a frame is ``P - dark = T * (F_mean + sum_j w_j U_j)`` with ``T`` the
    sample transmission. On the low-passed images ``L[.]`` we fit
    ``L[P - dark] ~ a_0 L[F_mean] + sum_j a_j L[U_j]`` by linear least squares, which
    assumes the sample's transmission is roughly uniform at the fit scale
    (``a_0`` is its mean) and gives ``w_j = a_j / a_0``. The flat used is
    ``F_mean + sum_j w_j U_j`` at full resolution; the sample's mean transmission is kept.
    """

    def __init__(
        self,
        flats: Any,
        dark: Any,
        n_components: int | None = None,
        variance_fraction: float = 0.95,
        bin_px: int = 4,
        sigma_px: float = 16.0,
        xp: ModuleType = np,
    ) -> None:
        flats = xp.asarray(flats)
        if flats.ndim != 3 or flats.shape[0] < 2:
            raise ValueError(f"flats must be a stack [m >= 2, ny, nx], got shape {flats.shape}")
        dark = xp.asarray(dark, dtype=xp.float32)
        if dark.ndim != 0 and dark.shape != flats.shape[1:]:
            raise ValueError(f"dark shape {dark.shape} does not match flats shape {flats.shape[1:]}")
        check_finite(flats, "flats", xp)
        check_finite(dark, "dark", xp)
        if bin_px < 1 or sigma_px < 0:
            raise ValueError(f"bin_px must be >= 1 and sigma_px >= 0, got {bin_px}, {sigma_px}")
        self.xp = xp
        self.dark = dark
        self.bin_px = int(bin_px)
        self.sigma_px = float(sigma_px)
        f = flats.astype(xp.float32) - dark
        m, ny, nx = f.shape
        self.mean_flat = f.mean(axis=0)
        dev = (f - self.mean_flat).reshape(m, ny * nx)
        # eigen-decomposition of the small m x m Gram matrix (m << number of pixels)
        gram = (dev.astype(xp.float64) @ dev.T.astype(xp.float64))
        evals, evecs = np.linalg.eigh(to_numpy(gram))
        evals, evecs = evals[::-1].clip(min=0), evecs[:, ::-1]
        total = float(evals.sum())
        if n_components is None:
            if total <= 0:
                n_components = 0
            else:
                frac = np.cumsum(evals) / total
                n_components = int(np.searchsorted(frac, variance_fraction) + 1)
        n_components = int(min(max(n_components, 0), m - 1))
        self.explained_variance = evals[:n_components] / max(m - 1, 1)
        comps = []
        for j in range(n_components):
            if evals[j] <= 0:
                break
            v = xp.asarray(evecs[:, j].astype(np.float32))
            u = (v @ dev) / np.float32(np.sqrt(evals[j]))  # unit-norm eigen-flat
            comps.append(u.reshape(ny, nx) * np.float32(np.sqrt(evals[j] / max(m - 1, 1))))
        # components scaled to one standard deviation of their fluctuation
        self.components = xp.stack(comps) if comps else xp.zeros((0, ny, nx), xp.float32)
        basis = xp.concatenate([self.mean_flat[None], self.components])
        lp_basis = to_numpy(self._lowpass(basis).reshape(basis.shape[0], -1)).astype(np.float64)
        # least-squares solver of  lp(frame) ~ lp_basis.T @ coef , computed once
        self._lp_pinv = np.linalg.pinv(lp_basis.T)

    @property
    def n_components(self) -> int:
        """Number of eigen-flats in the model."""
        return int(self.components.shape[0])

    def _lowpass(self, a: Any) -> Any:
        ndi = ndimage_module(self.xp)
        b = _block_mean(self.xp, a, self.bin_px)
        s = self.sigma_px / self.bin_px
        if s > 0:
            sig = (0.0,) * (b.ndim - 2) + (s, s)
            b = ndi.gaussian_filter(b, sig, mode="nearest")
        return b

    def weights(self, frame: Any) -> np.ndarray:
        """Fitted eigen-flat weights ``w_j`` (in units of each component's standard deviation)."""
        xp = self.xp
        frame = xp.asarray(frame)
        if frame.shape != self.mean_flat.shape:
            raise ValueError(f"frame shape {frame.shape} does not match flats shape {self.mean_flat.shape}")
        check_finite(frame, "frame", xp)
        if self.n_components == 0:
            return np.zeros(0)
        target = to_numpy(self._lowpass(frame.astype(xp.float32) - self.dark).reshape(-1))
        coef = self._lp_pinv @ target.astype(np.float64)
        if not coef[0] > 0:
            raise ValueError("dynamic flat fit failed: the frame's low-frequency content is not positive")
        return coef[1:] / coef[0]

    def flat_for(self, frame: Any) -> Any:
        """Dark-subtracted flat ``F_mean + sum_j w_j U_j`` [ny, nx] float32 fitted to ``frame``."""
        w = self.weights(frame)
        flat = self.mean_flat.copy()
        for j, wj in enumerate(w):
            flat += np.float32(wj) * self.components[j]
        return flat

    def correct(self, frame: Any) -> Any:
        """Flat-field ``frame`` with its fitted dynamic flat (same rules as :func:`flat_field`)."""
        flat = self.flat_for(frame)
        return flat_field(frame, self.dark, flat + self.dark, xp=self.xp)
