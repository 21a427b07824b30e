"""Nonlinear refinement of the multi-distance CTF phase against the Fresnel forward model.

The linear CTF (:mod:`xnh_stream.physics.phase`) is the exact minimiser of

    L_lin(phi) = 1/2 sum_k || (I_k - 1)_lin(phi) - (d_k - 1) ||^2 + phi . R phi

where ``(I_k - 1)_lin = F^-1 2 A_k F phi`` is the first-order hologram of a homogeneous object and ``R`` the
regularisation ``alpha(f)`` applied in Fourier space (``R = F^-1 alpha F``; setting the gradient to zero gives
``phi_hat = sum_k A_k FT(d_k - 1) / (2 sum_k A_k^2 + alpha)``, the CTF filter). With phases of a radian and
more (a whole cell at 17 keV) the first order is not the hologram. :class:`FresnelRefiner` minimises the same
functional with the exact hologram in place of its first order::

    L(phi) = 1/2 sum_k || |P_k exp(c phi)|^2 - d_k ||^2 + phi . R phi,   c = 1 / (delta/beta) + i

(``T = exp(-B + i phi)`` with ``B = -(beta/delta) phi``; ``P_k`` the Fresnel propagator over ``D_k``,
``exp(-i pi lambda D_k f^2)``), starting from the CTF, by L-BFGS with the analytic gradient: with ``u =
exp(c phi)``, ``v_k = P_k u`` and ``r_k = |v_k|^2 - d_k``, ``dL/dphi = 2 Re(conj(G) c u) + 2 R phi`` where
``G = sum_k P_k^H (r_k v_k)``. Same padding, same regulariser and same material model as the CTF, so for weak
objects the answer is the CTF's and the difference is only what the first order left out. One material only
(the two-material envelope has no counterpart here).

Cost per angle: ``4 K + 2`` complex FFTs of the padded frame per iteration (the CTF: ``K + 1`` real ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft as _sfft
from scipy.optimize import minimize

from .phase import CTFRetriever
from .xp import fft_workers, to_numpy

__all__ = ["FresnelRefiner", "RefineResult", "fresnel_holograms"]


@dataclass(frozen=True)
class RefineResult:
    """One angle's refinement.

    Attributes
    ----------
    phase : ndarray [ny, nx] float32
        The refined phase (radians, negative for matter), cropped to the image.
    loss_start, loss_end : float
        The functional at the CTF start and at the end.
    iterations : int
        L-BFGS iterations run.
    """

    phase: np.ndarray
    loss_start: float
    loss_end: float
    iterations: int


def _propagators(shape_p: tuple[int, int], distances_m: tuple[float, ...], wavelength_m: float,
                 pixel_m: float) -> np.ndarray:
    """``exp(-i pi lambda D_k f^2)`` on the full FFT grid, complex128 ``[K, ny_p, nx_p]``."""
    fy = np.fft.fftfreq(shape_p[0], d=pixel_m)
    fx = np.fft.fftfreq(shape_p[1], d=pixel_m)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return np.stack([np.exp(-1j * np.pi * wavelength_m * d * f2) for d in distances_m])


def fresnel_holograms(phase: np.ndarray, delta_beta: float, propagators: np.ndarray) -> np.ndarray:
    """Holograms ``|P_k exp(phi / (delta/beta) + i phi)|^2`` of a homogeneous object on a periodic grid.

    Parameters
    ----------
    phase : ndarray [ny, nx]
        ``phi`` (radians, negative for matter) on the grid of ``propagators``.
    delta_beta : float
        ``delta / beta`` of the material.
    propagators : ndarray [K, ny, nx] complex
        Fresnel propagators on the full FFT grid (``exp(-i pi lambda D_k f^2)``).

    Returns
    -------
    ndarray [K, ny, nx] float64
    """
    u = np.exp(np.asarray(phase, dtype=np.float64) * (1.0 / delta_beta + 1j))
    spec = _sfft.fft2(u)
    return np.stack([np.abs(_sfft.ifft2(spec * h)) ** 2 for h in propagators])


class FresnelRefiner:
    """Refine the CTF phase of one angle against the Fresnel forward model (see the module notes).

    Parameters
    ----------
    ctf : CTFRetriever
        The single-material retriever of the scan (its geometry, padding, ``delta/beta`` and ``alpha(f)``
        define the functional); one built with an envelope is refused.
    delta_beta : float
        ``delta / beta`` the retriever was built with.
    iterations : int
        Largest number of L-BFGS iterations (10: on phases of 1-3 rad the error against the truth is lowest
        after about 10; 30 and 100 fit the noise a little more, ``tests/test_refine.py``).
    tolerance : float
        Relative decrease of the functional below which L-BFGS stops.
    """

    def __init__(self, ctf: CTFRetriever, delta_beta: float, iterations: int = 10, tolerance: float = 1e-7) -> None:
        if ctf.filter.envelope_gain is not None:
            raise ValueError("the Fresnel refinement is for one material; this CTF retriever has an envelope")
        if not delta_beta > 0:
            raise ValueError(f"delta/beta must be positive, got {delta_beta}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.ctf = ctf
        self.delta_beta = float(delta_beta)
        self.iterations = int(iterations)
        self.tolerance = float(tolerance)
        geo = ctf.geometry
        self.propagators = _propagators(ctf.shape_padded, tuple(float(d) for d in geo.propagation_distances_m),
                                        float(geo.distances[0].wavelength_m), ctf.pixel_m)
        self.alpha = to_numpy(ctf.filter.alpha).astype(np.float64)  # rfft2 grid of the padded shape
        self.c = 1.0 / self.delta_beta + 1j

    def _regulariser(self, phi: np.ndarray) -> np.ndarray:
        """``R phi = F^-1 alpha F phi``."""
        w = fft_workers(np)
        return _sfft.irfft2(self.alpha * _sfft.rfft2(phi, **w), s=phi.shape, **w)

    def loss_and_gradient(self, phi: np.ndarray, data: np.ndarray) -> tuple[float, np.ndarray]:
        """The functional and its gradient at ``phi`` (padded grid) for the padded holograms ``data``."""
        w = fft_workers(np)
        u = np.exp(phi * self.c)
        spec = _sfft.fft2(u, **w)
        g_spec = np.zeros_like(spec)
        loss = 0.0
        for h, d in zip(self.propagators, data):
            v = _sfft.ifft2(spec * h, overwrite_x=True, **w)
            r = v.real**2 + v.imag**2 - d
            loss += 0.5 * float(np.vdot(r, r).real)
            g_spec += _sfft.fft2(r * v, overwrite_x=True, **w) * np.conj(h)
        g = _sfft.ifft2(g_spec, overwrite_x=True, **w)
        rphi = self._regulariser(phi)
        loss += float(np.vdot(phi, rphi).real)
        grad = 2.0 * (np.conj(g) * self.c * u).real + 2.0 * rphi
        return loss, grad

    def __call__(self, images: Any, phase: Any | None = None) -> RefineResult:
        """Refine one angle.

        Parameters
        ----------
        images : array [K, ny, nx]
            The K aligned, flat-fielded holograms the CTF takes.
        phase : array [ny, nx], optional
            The CTF phase of these images (computed here when not given).

        Returns
        -------
        RefineResult
        """
        ctf = self.ctf
        if phase is None:
            phase = ctf(images)
        data = np.stack([to_numpy(ctf.padded(im)).astype(np.float64) for im in images])
        phi0 = to_numpy(ctf.padded(phase)).astype(np.float64)
        shape = phi0.shape

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            loss, grad = self.loss_and_gradient(x.reshape(shape), data)
            return loss, grad.ravel()

        start = fun(phi0.ravel())[0]
        res = minimize(fun, phi0.ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.iterations, "ftol": self.tolerance, "gtol": 1e-12})
        out = ctf.cropped(res.x.reshape(shape)).astype(np.float32)
        return RefineResult(np.ascontiguousarray(out), float(start), float(res.fun), int(res.nit))
