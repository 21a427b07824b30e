"""Fast analytic XNH scans of simple shapes, at ID16A sizes, for size, memory and speed tests of the chain.

The full simulator (:mod:`xnh_stream.simulate.scan`) projects a voxel phantom and is the one to use for
fidelity. This one describes the sample as a few hundred ellipsoids and cylinders, each with its own
``delta`` and ``beta`` (values add where shapes overlap), and computes every projection from exact chord
lengths, so a frame costs the same whatever the scan length and no volume is ever held in memory.

Coordinates (reference voxels: the effective pixel ``p / M`` of the most magnified distance, the
reconstruction voxel). ``(x, y, z)``: ``z`` along the rotation axis, increasing with the detector row; the
origin is on the rotation axis at the height of the reference detector's centre row. At angle ``theta`` a
point projects onto ``t = x cos(theta) + y sin(theta)`` along the ray direction ``(-sin theta, cos theta,
0)``: the convention of :mod:`xnh_stream.physics.projector` and :mod:`xnh_stream.physics.fbp`, so voxel
``[iz, iy, ix]`` of the chain's volume (``ny x nx x nx``) is the point ``(ix - c, iy - c, iz - (ny - 1) / 2)``
with ``c = (nx - 1) / 2``.

Imaging (the physics of :mod:`xnh_stream.simulate.scan`, ``n = 1 - delta + i beta``): distance ``k`` sees
the sample at its own effective pixel ``p / M_k`` (``r_k = scale_to_reference(k)`` reference voxels):
detector pixel ``(i, j)`` looks at ``t = (j - (nx - 1) / 2) r_k - cor_offset - s_x``, ``z = (i - (ny - 1) / 2)
r_k - s_y``, magnified about the optical axis at the detector centre, with ``s`` the distance's lateral
offset plus a slow common drift (the content moves by ``+s``). The exit wave ``exp(-k int beta - i k int
delta)`` is formed on that grid, extended by two Fresnel zones on every side with its true (analytic)
values, propagated over ``D_k`` by :func:`~xnh_stream.simulate.scan.propagate` (single precision, one FFT
thread per process) and sampled at the pixel centres (no pixel integration, no scintillator blur).

Counts are ``photons * beam_k(t) * I + dark`` with a slowly varying beam (a smooth separable profile whose
shape drifts over the acquisition), plus noise of variance ``mean + read_noise^2``: exact Poisson draws when
a flat pixel receives fewer than :data:`POISSON_EXACT_BELOW` photons, else the normal approximation of the
Poisson law (three times faster; the chain cannot tell them apart at XNH flat counts). Every frame draws its
noise from its own seed ``(seed, distance, index)``, so a scan is the same for any number of workers.

Files: one NXtomo file per distance (:class:`~xnh_stream.io.nxtomo.NXtomoWriter`), NXtomo chunk-file
series or the ID16A EDF layout (the writers of :mod:`xnh_stream.simulate.stream`), plus ``analytic.json``
(the configuration, the shapes, offsets and axis: :func:`read_analytic_model` rebuilds the model and so the
ground truth on any block) and, on request, ``truth.h5`` (delta and beta on the reconstruction grid,
written slab by slab).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np
import scipy.fft as sfft
from scipy.spatial.transform import Rotation

from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN, NXtomoWriter
from ..physics.geometry import wavelength_m
from .materials import material_indices
from .scan import TRUTH_FILE, SimFrame, SimulationConfig, fresnel_transfer, propagate
from .stream import distance_path, distance_writer

__all__ = [
    "AnalyticPhantom", "AnalyticScan", "AnalyticScanModel", "Cylinder", "Ellipsoid", "LAYOUTS",
    "cylinder_chords", "ellipsoid_chords", "make_analytic_phantom", "read_analytic_model", "write_analytic_scan",
]

#: Output layouts: one NXtomo file per distance, NXtomo chunk series per distance, legacy ID16A EDF.
LAYOUTS = ("nxtomo", "chunks", "edf")
_STREAM_LAYOUT = {"nxtomo": "nxtomo", "chunks": "nxtomo-chunks", "nxtomo-chunks": "nxtomo-chunks", "edf": "edf"}
#: The model and its shapes, written next to the scan (small).
MODEL_FILE = "analytic.json"
#: Below this many photons per flat pixel the noise is drawn from the Poisson law itself.
POISSON_EXACT_BELOW = 1000.0
_EPS = 1e-9


# ------------------------------------------------------------------------------------------------ shapes


def _rotation(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    """A uniformly random 3-D rotation matrix."""
    return tuple(tuple(float(v) for v in row) for row in Rotation.random(random_state=rng).as_matrix())


@dataclass(frozen=True)
class Ellipsoid:
    """A uniform ellipsoid ``{p : |R^T (p - centre) / semi_axes| <= 1}``.

    Attributes
    ----------
    centre : tuple of float
        ``(x, y, z)`` in reference voxels.
    semi_axes : tuple of float
        Semi-axes along the columns of ``rotation`` (reference voxels).
    rotation : tuple of tuple of float
        3 x 3 rotation matrix (identity: axes along x, y, z).
    delta, beta : float
        Refractive index decrement and absorption index added inside.
    """

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    delta: float
    beta: float
    rotation: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", tuple(float(v) for v in self.centre))
        object.__setattr__(self, "semi_axes", tuple(float(v) for v in self.semi_axes))
        object.__setattr__(self, "rotation", tuple(tuple(float(v) for v in row) for row in self.rotation))
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "beta", float(self.beta))
        if min(self.semi_axes) <= 0:
            raise ValueError(f"ellipsoid semi-axes must be positive, got {self.semi_axes}")
        r = np.asarray(self.rotation, float)
        if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6):
            raise ValueError("ellipsoid rotation must be a 3 x 3 orthonormal matrix")

    @property
    def matrix(self) -> np.ndarray:
        """Quadric matrix ``A``: inside is ``(p - c)^T A (p - c) <= 1``."""
        r = np.asarray(self.rotation, float)
        return r @ np.diag(1.0 / np.asarray(self.semi_axes, float) ** 2) @ r.T

    def inside(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Whether points at offsets ``(dx, dy, dz)`` from the centre (broadcasting arrays) are inside."""
        a = self.matrix
        q = (a[0, 0] * dx * dx + a[1, 1] * dy * dy + a[2, 2] * dz * dz
             + 2 * (a[0, 1] * dx * dy + a[0, 2] * dx * dz + a[1, 2] * dy * dz))
        return q <= 1.0

    @property
    def inverse_matrix(self) -> np.ndarray:
        """``A^-1``: the half-width along a unit vector ``e`` is ``sqrt(e^T A^-1 e)``."""
        r = np.asarray(self.rotation, float)
        return r @ np.diag(np.asarray(self.semi_axes, float) ** 2) @ r.T

    def half_extent(self, direction: np.ndarray) -> float:
        """Half-width of the shape along a unit vector (its support function)."""
        return float(np.sqrt(direction @ self.inverse_matrix @ direction))


@dataclass(frozen=True)
class Cylinder:
    """A uniform circular cylinder of radius ``radius`` around the axis ``centre + s axis``, ``|s| <= half_length``.

    Attributes
    ----------
    centre, axis : tuple of float
        Centre ``(x, y, z)`` (reference voxels) and axis direction (normalised here).
    radius, half_length : float
        Reference voxels; ``half_length`` may be ``inf``.
    delta, beta : float
        Values added inside.
    """

    centre: tuple[float, float, float]
    axis: tuple[float, float, float]
    radius: float
    half_length: float
    delta: float
    beta: float

    def __post_init__(self) -> None:
        n = np.asarray(self.axis, float)
        if not (self.radius > 0 and self.half_length > 0 and np.linalg.norm(n) > 0):
            raise ValueError(f"cylinder needs a positive radius and length and a non-zero axis, got {self}")
        object.__setattr__(self, "axis", tuple(float(v) for v in n / np.linalg.norm(n)))
        object.__setattr__(self, "centre", tuple(float(v) for v in self.centre))
        for name in ("radius", "half_length", "delta", "beta"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def inside(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Whether points at offsets ``(dx, dy, dz)`` from the centre (broadcasting arrays) are inside."""
        nx_, ny_, nz_ = self.axis
        along = nx_ * dx + ny_ * dy + nz_ * dz
        ok = dx * dx + dy * dy + dz * dz - along * along <= self.radius**2
        return ok & (np.abs(along) <= self.half_length) if np.isfinite(self.half_length) else ok

    def half_extent(self, direction: np.ndarray) -> float:
        """Half-width along a unit vector (``inf`` for an infinite cylinder not perpendicular to it)."""
        c = float(np.dot(direction, self.axis))
        side = self.radius * np.sqrt(max(0.0, 1.0 - c * c))
        if not np.isfinite(self.half_length):
            return side if abs(c) < _EPS else float("inf")
        return self.half_length * abs(c) + side


Shape = Union[Ellipsoid, Cylinder]


def _ray_frame(theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector direction ``e_t``, ray direction ``d`` and rotation axis ``e_z`` at angle ``theta``."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([c, s, 0.0]), np.array([-s, c, 0.0]), np.array([0.0, 0.0, 1.0])


def _offsets(centre: Sequence[float], theta: float, t: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector coordinates relative to the projection of ``centre``: ``(tau, zeta)`` float32."""
    m = np.asarray(centre, float)
    return ((np.asarray(t, float) - m @ _ray_frame(theta)[0]).astype(np.float32),
            (np.asarray(z, float) - m[2]).astype(np.float32))


def _ellipsoid_coefficients(matrices: np.ndarray, theta: float) -> tuple[np.ndarray, ...]:
    """``(a, c_tt, c_tz, c_zz)`` of ellipsoids ``[n, 3, 3]``: the chord is ``2 sqrt(a + c_tt tau^2 + c_tz tau zeta
    + c_zz zeta^2) / a`` for the ray at ``(tau, zeta)`` from the projected centre.

    With ``q = tau e_t + zeta e_z - (m.d) d`` the ray ``q + u d`` is inside while ``a u^2 + 2 b u + q^T A q - 1
    <= 0`` (``a = d^T A d``, ``b = d^T A q``); the discriminant ``b^2 - a (q^T A q - 1)`` does not depend on
    the position along the ray and reduces to the quadratic form above.
    """
    e_t, d, e_z = _ray_frame(theta)
    ad = matrices @ d
    a = ad @ d
    p1, p2 = ad @ e_t, ad @ e_z
    att = np.einsum("i,nij,j->n", e_t, matrices, e_t)
    atz = np.einsum("i,nij,j->n", e_t, matrices, e_z)
    return a, p1 * p1 - a * att, 2 * (p1 * p2 - a * atz), p2 * p2 - a * matrices[:, 2, 2]


def _weighted_chords(a: float, ctt: float, ctz: float, czz: float, weight: float, tau: np.ndarray,
                     zeta: np.ndarray) -> np.ndarray:
    """``|weight| *`` chord lengths ``[zeta.size, tau.size]`` float32 from :func:`_ellipsoid_coefficients`.

    The weight goes under the square root (``sqrt(disc (2 w / a)^2)``), which saves a pass over the block.
    """
    s2 = (2 * weight / a) ** 2
    disc = np.multiply.outer(np.float32(s2 * ctz) * zeta, tau)
    disc += (np.float32(s2 * a) + np.float32(s2 * czz) * zeta * zeta)[:, None]
    disc += (np.float32(s2 * ctt) * tau * tau)[None, :]
    np.maximum(disc, 0, out=disc)
    return np.sqrt(disc, out=disc)


def ellipsoid_chords(shape: Ellipsoid, theta: float, t: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Chord lengths of parallel rays through an ellipsoid.

    Parameters
    ----------
    shape : Ellipsoid
        The ellipsoid.
    theta : float
        Projection angle (radians).
    t, z : ndarray
        1-D detector coordinates (columns ``t``, rows ``z``) in reference voxels.

    Returns
    -------
    ndarray
        ``[z.size, t.size]`` float32 chord lengths (reference voxels).
    """
    a, ctt, ctz, czz = (float(v[0]) for v in _ellipsoid_coefficients(shape.matrix[None], theta))
    return _weighted_chords(a, ctt, ctz, czz, 1.0, *_offsets(shape.centre, theta, t, z))


def _cylinder_frame(axis: Sequence[float], theta: float) -> tuple[float, float, float, float, float]:
    """``(dn, area, v_t, v_z, n_t)`` of a cylinder axis ``n`` at angle ``theta``: ``dn = d.n``, ``area = |d x n|^2``,
    ``v = d x n`` on the detector axes (``v_t = n_z``, ``v_z = -(sin n_y + cos n_x)``) and ``n_t = e_t.n``."""
    c, s = np.cos(theta), np.sin(theta)
    nx_, ny_, nz_ = (float(v) for v in axis)
    dn = -s * nx_ + c * ny_
    return dn, max(0.0, 1.0 - dn * dn), nz_, -(s * ny_ + c * nx_), c * nx_ + s * ny_


def _cylinder_weighted_chords(cyl: Cylinder, theta: float, weight: float, tau: np.ndarray,
                              zeta: np.ndarray) -> np.ndarray:
    """``|weight| *`` chord lengths ``[zeta.size, tau.size]`` float32 through a cylinder (see :func:`cylinder_chords`)."""
    dn, area, vt, vz, nt = _cylinder_frame(cyl.axis, theta)
    r2, h = float(cyl.radius) ** 2, float(cyl.half_length)
    finite = np.isfinite(h)
    w = abs(weight)
    if area < _EPS:  # ray along the axis: inside the disc, the whole length
        rho2 = np.add.outer(zeta * zeta, tau * tau)
        return np.where(rho2 <= r2, np.float32(w * 2 * h if finite else np.inf), np.float32(0)).astype(np.float32)
    # half-chord of the infinite cylinder, weighted under the square root: sqrt(s^2 (R^2 A - (tau v_t + zeta v_z)^2))
    scale = w / area
    half = np.add.outer(np.float32(scale * vz) * zeta, np.float32(scale * vt) * tau)
    np.multiply(half, half, out=half)
    np.subtract(np.float32(scale * scale * r2 * area), half, out=half)
    np.maximum(half, 0, out=half)
    np.sqrt(half, out=half)
    if not finite:
        return np.add(half, half, out=half)
    axial = np.add.outer(np.float32(cyl.axis[2]) * zeta, np.float32(nt) * tau)  # axial offset of the ray's midpoint
    if abs(dn) < _EPS:  # ray perpendicular to the axis: in the slab or not, along its whole length
        return np.where(np.abs(axial) <= h, half + half, np.float32(0)).astype(np.float32)
    g = axial * np.float32(w / (area * dn))  # distance between the middles of the two intervals along the ray
    hs = np.float32(w * h / abs(dn))
    hi = np.minimum(g + half, hs)
    lo = np.maximum(g - half, -hs)
    hi -= lo
    return np.maximum(hi, 0, out=hi)


def cylinder_chords(shape: Cylinder, theta: float, t: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Chord lengths of parallel rays through a (finite or infinite) cylinder.

    The ray at ``(tau, zeta)`` from the projected centre meets the infinite cylinder over ``|u - g| <= w``
    and the slab ``|axial| <= half_length`` over ``|u| <= half_length / |d.n|`` (``u`` along the ray, from
    the slab's middle), with ``w = sqrt(R^2 A - (tau v_t + zeta v_z)^2) / A``, ``A = |d x n|^2``, ``v = d x n``
    and ``g = (tau n_t + zeta n_z) / (A d.n)``; the chord is the length of the intersection.

    Parameters
    ----------
    shape : Cylinder
        The cylinder.
    theta : float
        Projection angle (radians).
    t, z : ndarray
        1-D detector coordinates in reference voxels.

    Returns
    -------
    ndarray
        ``[z.size, t.size]`` float32 chord lengths (reference voxels).
    """
    return _cylinder_weighted_chords(shape, theta, 1.0, *_offsets(shape.centre, theta, t, z))


def _accumulate(block_d: np.ndarray, block_b: np.ndarray, val: np.ndarray, fd: float, fb: float) -> None:
    """Add ``fd val`` to ``block_d`` and ``fb val`` to ``block_b`` (``val`` is overwritten)."""
    if fd == 1:
        block_d += val
    elif fd == -1:
        block_d -= val
    elif fd:
        block_d += np.float32(fd) * val
    if fb:
        val *= np.float32(fb)
        block_b += val


class AnalyticPhantom:
    """A sample made of ellipsoids and cylinders, with exact projections and point values.

    Parameters
    ----------
    shapes : sequence of Ellipsoid or Cylinder
        The shapes; their ``delta`` and ``beta`` add where they overlap.
    """

    def __init__(self, shapes: Sequence[Shape]) -> None:
        self.shapes = tuple(shapes)
        for s in self.shapes:
            if not isinstance(s, (Ellipsoid, Cylinder)):
                raise TypeError(f"not a shape: {s!r}")
        ell = [s for s in self.shapes if isinstance(s, Ellipsoid)]
        self._ellipsoids = ell
        self._e_centre = np.array([s.centre for s in ell], float).reshape(-1, 3)
        self._e_matrix = np.array([s.matrix for s in ell], float).reshape(-1, 3, 3)
        self._e_inverse = np.array([s.inverse_matrix for s in ell], float).reshape(-1, 3, 3)
        self._e_values = np.array([(s.delta, s.beta) for s in ell], float).reshape(-1, 2)
        cyl = [s for s in self.shapes if isinstance(s, Cylinder)]
        # infinite cylinders along z (the sample pin) project the same on every row: done in 1-D
        self._pins = [s for s in cyl if not np.isfinite(s.half_length) and abs(abs(s.axis[2]) - 1) < _EPS]
        self._cylinders = [s for s in cyl if s not in self._pins]

    # -------------------------------------------------------------------------------------- projections

    def project(self, theta: float, t: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Line integrals of delta and beta along the rays of one angle.

        Parameters
        ----------
        theta : float
            Angle (radians).
        t, z : ndarray
            1-D increasing detector coordinates (columns, rows) in reference voxels.

        Returns
        -------
        tuple of ndarray
            ``(int delta, int beta)``, each ``[z.size, t.size]`` float32, in reference-voxel lengths.
        """
        t = np.asarray(t, float)
        z = np.asarray(z, float)
        out_d = np.zeros((z.size, t.size), np.float32)
        out_b = np.zeros((z.size, t.size), np.float32)
        e_t = _ray_frame(theta)[0]
        for pin in self._pins:  # chord depends on t only
            tau = t - np.asarray(pin.centre) @ e_t
            chord = (2 * np.sqrt(np.maximum(pin.radius**2 - tau * tau, 0))).astype(np.float32)
            out_d += np.float32(pin.delta) * chord
            out_b += np.float32(pin.beta) * chord
        if len(self._ellipsoids):
            self._add_ellipsoids(theta, t, z, out_d, out_b)
        t32, z32 = t.astype(np.float32), z.astype(np.float32)
        for cyl in self._cylinders:
            weight = cyl.delta if cyl.delta != 0 else cyl.beta
            if weight == 0:
                continue
            fd, fb = cyl.delta / abs(weight), cyl.beta / abs(weight)
            tc, zc = float(np.asarray(cyl.centre) @ e_t), float(cyl.centre[2])
            for rows, cols in self._cylinder_strips(cyl, theta, t, z):
                val = _cylinder_weighted_chords(cyl, theta, weight, t32[cols] - np.float32(tc),
                                                z32[rows] - np.float32(zc))
                _accumulate(out_d[rows, cols], out_b[rows, cols], val, fd, fb)
        return out_d, out_b

    @staticmethod
    def _cylinder_strips(cyl: Cylinder, theta: float, t: np.ndarray, z: np.ndarray) -> Iterator[tuple[slice, slice]]:
        """Blocks of rows and columns that cover a cylinder's projection.

        The projection is a band around the projected axis, ``|tau v_t + zeta v_z| <= R |v|`` (``v = d x n``);
        a tilted cylinder is covered by strips of rows, each with the columns of its part of the band, so a
        long tilted tube is not evaluated over its whole bounding box.
        """
        e_t, _, e_z = _ray_frame(theta)
        c = np.asarray(cyl.centre, float)
        tc, zc = float(c @ e_t), float(c[2])
        ht, hz = cyl.half_extent(e_t), cyl.half_extent(e_z)
        i0, i1 = int(np.searchsorted(z, zc - hz, "left")), int(np.searchsorted(z, zc + hz, "right"))
        t_lo, t_hi = tc - ht, tc + ht
        if i1 <= i0 or t[0] > t_hi or t[-1] < t_lo:
            return
        _, area, vt, vz, _ = _cylinder_frame(cyl.axis, theta)
        if abs(vt) < 1e-3:  # band across the rows: the bounding box is tight
            strips = [(i0, i1)]
            slope, half = 0.0, np.inf
        else:
            slope, half = -vz / vt, cyl.radius * np.sqrt(area) / abs(vt)
            pitch = abs(z[1] - z[0]) if z.size > 1 else 1.0
            rows = max(8, int(2 * half / max(abs(slope) * pitch, 1e-6)))
            strips = [(i, min(i + rows, i1)) for i in range(i0, i1, rows)]
        for a, b in strips:
            lo, hi = t_lo, t_hi
            if np.isfinite(half):
                za, zb = z[a] - zc, z[b - 1] - zc
                lo = max(lo, tc + min(slope * za, slope * zb) - half)
                hi = min(hi, tc + max(slope * za, slope * zb) + half)
            j0, j1 = int(np.searchsorted(t, lo, "left")), int(np.searchsorted(t, hi, "right"))
            if j1 > j0:
                yield slice(a, b), slice(j0, j1)

    def _add_ellipsoids(self, theta: float, t: np.ndarray, z: np.ndarray, out_d: np.ndarray,
                        out_b: np.ndarray) -> None:
        """All ellipsoids at once for the coefficients and windows, one block per ellipsoid for the pixels."""
        e_t = _ray_frame(theta)[0]
        m = self._e_centre
        a, ctt, ctz, czz = _ellipsoid_coefficients(self._e_matrix, theta)
        tc = m @ e_t
        ht = np.sqrt(np.einsum("i,nij,j->n", e_t, self._e_inverse, e_t))
        hz = np.sqrt(self._e_inverse[:, 2, 2])
        j0, j1 = np.searchsorted(t, tc - ht, "left"), np.searchsorted(t, tc + ht, "right")
        i0, i1 = np.searchsorted(z, m[:, 2] - hz, "left"), np.searchsorted(z, m[:, 2] + hz, "right")
        t32, z32 = t.astype(np.float32), z.astype(np.float32)
        delta, beta = self._e_values[:, 0], self._e_values[:, 1]
        weight = np.where(delta != 0, delta, beta)  # chords come out weighted by |weight|
        todo = np.flatnonzero((j1 > j0) & (i1 > i0) & (weight != 0))
        # Python scalars in the loop: numpy scalar arithmetic costs more than the small blocks themselves
        cols = zip(j0[todo].tolist(), j1[todo].tolist(), i0[todo].tolist(), i1[todo].tolist(), a[todo].tolist(),
                   ctt[todo].tolist(), ctz[todo].tolist(), czz[todo].tolist(), weight[todo].tolist(),
                   (delta[todo] / np.abs(weight[todo])).tolist(), (beta[todo] / np.abs(weight[todo])).tolist(),
                   tc[todo].tolist(), m[todo, 2].tolist())
        for c0, c1, r0, r1, an, tt, tz, zz, w, fd, fb, tcn, zcn in cols:
            val = _weighted_chords(an, tt, tz, zz, w, t32[c0:c1] - np.float32(tcn), z32[r0:r1] - np.float32(zcn))
            _accumulate(out_d[r0:r1, c0:c1], out_b[r0:r1, c0:c1], val, fd, fb)

    # ---------------------------------------------------------------------------------------- values

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delta and beta at the points of a tensor grid (point sampling).

        Parameters
        ----------
        x, y, z : ndarray
            1-D increasing coordinates (reference voxels).

        Returns
        -------
        tuple of ndarray
            ``(delta, beta)``, each ``[z.size, y.size, x.size]`` float32.
        """
        x, y, z = (np.asarray(v, float) for v in (x, y, z))
        delta = np.zeros((z.size, y.size, x.size), np.float32)
        beta = np.zeros_like(delta)
        axes = [np.eye(3)[i] for i in range(3)]
        for s in self.shapes:
            c = np.asarray(s.centre, float)
            lo_hi = []
            for v, i in ((x, 0), (y, 1), (z, 2)):
                h = s.half_extent(axes[i])
                lo_hi.append((int(np.searchsorted(v, c[i] - h, "left")), int(np.searchsorted(v, c[i] + h, "right"))))
            (x0, x1), (y0, y1), (z0, z1) = lo_hi
            if x1 <= x0 or y1 <= y0 or z1 <= z0:
                continue
            dx = (x[x0:x1] - c[0])[None, None, :]
            dy = (y[y0:y1] - c[1])[None, :, None]
            dz = (z[z0:z1] - c[2])[:, None, None]
            inside = s.inside(dx, dy, dz)
            delta[z0:z1, y0:y1, x0:x1] += np.float32(s.delta) * inside
            beta[z0:z1, y0:y1, x0:x1] += np.float32(s.beta) * inside
        return delta, beta

    def values_at(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Delta and beta at arbitrary points ``[..., 3]`` (x, y, z)."""
        p = np.asarray(points, float)
        delta = np.zeros(p.shape[:-1])
        beta = np.zeros(p.shape[:-1])
        for s in self.shapes:
            q = p - np.asarray(s.centre, float)
            inside = s.inside(q[..., 0], q[..., 1], q[..., 2])
            delta += s.delta * inside
            beta += s.beta * inside
        return delta, beta

    # ------------------------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, shapes in order (values add in that order; ``half_length`` ``None`` if infinite)."""
        out = []
        for s in self.shapes:
            if isinstance(s, Ellipsoid):
                out.append({"kind": "ellipsoid", "centre": list(s.centre), "semi_axes": list(s.semi_axes),
                            "rotation": [list(r) for r in s.rotation], "delta": s.delta, "beta": s.beta})
            else:
                out.append({"kind": "cylinder", "centre": list(s.centre), "axis": list(s.axis), "radius": s.radius,
                            "half_length": s.half_length if np.isfinite(s.half_length) else None,
                            "delta": s.delta, "beta": s.beta})
        return {"shapes": out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalyticPhantom:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            For a shape of unknown kind.
        """
        shapes: list[Shape] = []
        for e in d["shapes"]:
            if e["kind"] == "ellipsoid":
                shapes.append(Ellipsoid(tuple(e["centre"]), tuple(e["semi_axes"]), e["delta"], e["beta"],
                                        tuple(tuple(r) for r in e["rotation"])))
            elif e["kind"] == "cylinder":
                shapes.append(Cylinder(tuple(e["centre"]), tuple(e["axis"]), e["radius"],
                                       float("inf") if e["half_length"] is None else e["half_length"],
                                       e["delta"], e["beta"]))
            else:
                raise ValueError(f"unknown shape kind {e['kind']!r}")
        return cls(shapes)


def _random_direction(rng: np.random.Generator, max_tilt_rad: float) -> tuple[float, float, float]:
    """A unit vector within ``max_tilt_rad`` of +z (uniform in azimuth)."""
    tilt = np.arccos(rng.uniform(np.cos(max_tilt_rad), 1.0))
    phi = rng.uniform(0, 2 * np.pi)
    return (float(np.sin(tilt) * np.cos(phi)), float(np.sin(tilt) * np.sin(phi)), float(np.cos(tilt)))


def make_analytic_phantom(cfg: SimulationConfig, density: float = 1.0) -> AnalyticPhantom:
    """A stained neural-tissue pin of simple shapes, sized for the frames of ``cfg``.

    A vertical cylinder of cytoplasm (radius ``cfg.sample_radius_px``, default 0.44 nx, infinite along the
    axis) holds cells (ellipsoids about 0.07 nx across with a stained shell ``cfg.membrane_px`` thick and a
    chromatin-rich nucleus, 10 % of the volume), neurites (straight tubes of stained membrane around a lighter
    axoplasm crossing the whole field, radius about ``cfg.calibre_px`` times ``max(1, nx / 256)``, within 35
    degrees of the axis, 4 %) and mitochondria (small stained ellipsoids, 0.2 %). Values are those of
    :mod:`~xnh_stream.simulate.materials` at the scan energy, as increments over the cytoplasm. Shapes fill
    the height seen by the least magnified distance; their sizes scale with the frame width.

    Parameters
    ----------
    cfg : SimulationConfig
        Frame size, geometry, energy and seed (``cfg.seed``).
    density : float
        Scales the number of shapes (the cost of a frame is about proportional to it).

    Returns
    -------
    AnalyticPhantom
    """
    if not density >= 0:
        raise ValueError(f"density must be >= 0, got {density}")
    rng = np.random.default_rng([cfg.seed, 2])
    geo = cfg.geometry()
    mat = material_indices(cfg.energy_kev)
    base = np.array(mat["cytoplasm"])
    membrane = np.array(mat["membrane"]) - base
    nucleus = np.array(mat["chromatin"]) - base
    mito = np.array(mat["mitochondrion"]) - base
    radius = cfg.sample_radius_px if cfg.sample_radius_px is not None else 0.44 * cfg.nx
    r_max = max(geo.scale_to_reference(k) for k in range(len(geo.distances)))
    half_height = 0.5 * cfg.ny * r_max + cfg.offset_px + cfg.drift_px + 2
    shapes: list[Shape] = [Cylinder((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), radius, float("inf"), *base)]
    volume = np.pi * radius**2 * 2 * half_height
    shell = max(float(cfg.membrane_px), 0.5)

    def place(extent: float) -> tuple[float, float, float] | None:
        if extent >= 0.8 * radius:
            return None
        rho = (radius - extent) * np.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * np.pi)
        return (float(rho * np.cos(phi)), float(rho * np.sin(phi)), float(rng.uniform(-half_height, half_height)))

    # cells: about 7 % of the frame width across, 10 % of the volume
    cell = max(0.07 * cfg.nx, 3 * shell + 2)
    n_cells = int(round(density * 0.10 * volume / (4 / 3 * np.pi * cell**3)))
    for _ in range(n_cells):
        axes = cell * rng.uniform(0.75, 1.3, 3)
        centre = place(axes.max())
        if centre is None:
            continue
        rot = _rotation(rng)
        shapes.append(Ellipsoid(centre, tuple(axes), *membrane, rot))
        shapes.append(Ellipsoid(centre, tuple(axes - shell), *(-membrane), rot))
        offset = rng.uniform(-0.15, 0.15, 3) * axes
        nuc = 0.45 * axes
        shapes.append(Ellipsoid(tuple(np.asarray(centre) + offset), tuple(nuc), *nucleus, rot))
    # neurites: straight tubes across the field (axons), within 35 degrees of the pin axis, 4 % of the volume
    calibre = max(float(cfg.calibre_px), 1.5 * shell + 1) * max(1.0, cfg.nx / 256)
    length = 2 * half_height
    n_neurites = int(round(density * 0.04 * volume / (np.pi * calibre**2 * length)))
    tilt = min(np.deg2rad(35), np.arctan(0.5 * radius / half_height))  # a tube stays in the pin at every row
    for _ in range(n_neurites):
        r = calibre * rng.uniform(0.7, 1.4)
        centre = place(r + np.tan(tilt) * half_height)
        if centre is None:
            continue
        axis = _random_direction(rng, tilt)
        shapes.append(Cylinder(centre, axis, r, float("inf"), *membrane))
        shapes.append(Cylinder(centre, axis, r - shell, float("inf"), *(-membrane)))
    # mitochondria: elongated ellipsoids, 0.2 % of the volume (each small shape costs ~25 us of numpy calls a frame)
    m_axes = np.array([0.4, 0.4, 1.0]) * max(calibre, 2.0)
    n_mito = int(round(density * 0.002 * volume / (4 / 3 * np.pi * m_axes.prod())))
    for _ in range(n_mito):
        axes = m_axes * rng.uniform(0.7, 1.3, 3)
        centre = place(axes.max())
        if centre is None:
            continue
        rot = _rotation(rng)
        shapes.append(Ellipsoid(centre, tuple(axes), *mito, rot))
    return AnalyticPhantom(shapes)


# ------------------------------------------------------------------------------------------- the scan


class _SeparableBeam:
    """Beam profile on the detector as a sum of separable terms, evaluated by one small matrix product.

    ``beam(t) = gy gx (1 + ripple + drift (t mode1 + sin(3 pi t) mode2))`` with Gaussian ``gy``, ``gx`` (1.2 and 1
    frame wide) and ``ripple`` (5 %), ``mode1``, ``mode2`` each a sum of three products of cosines of 1 to 4
    periods over the frame: the shape of the beam changes slowly during the acquisition, as flats show.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], drift: float) -> None:
        ny, nx = shape
        y, x = np.arange(ny) / ny, np.arange(nx) / nx
        cy, cx = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)
        gy, gx = np.exp(-(((y - cy) / 1.2) ** 2)), np.exp(-(((x - cx) / 1.0) ** 2))
        us, vs = [gy[None]], [gx[None]]
        for amplitude in (0.05, 1.0, 1.0):
            f = rng.uniform(1, 4, (3, 2))
            ph = rng.uniform(0, 2 * np.pi, (3, 2))
            us.append(amplitude / 3 * rng.uniform(0.5, 1.0, (3, 1)) * gy * np.cos(2 * np.pi * f[:, :1] * y + ph[:, :1]))
            vs.append(gx * np.cos(2 * np.pi * f[:, 1:] * x + ph[:, 1:]))
        self._u = np.concatenate(us).astype(np.float32)  # [10, ny]
        self._v = np.concatenate(vs).astype(np.float32)  # [10, nx]
        self.drift = drift

    def at(self, t: float) -> np.ndarray:
        """Profile ``[ny, nx]`` float32 at normalised acquisition time ``t`` in [0, 1] (peak about 1)."""
        c = np.ones(self._u.shape[0], np.float32)
        c[4:7] = self.drift * t
        c[7:10] = self.drift * np.sin(2 * np.pi * 1.5 * t)
        return np.einsum("ki,kj->ij", c[:, None] * self._u, self._v)  # not BLAS: no thread pool to contend for


@dataclass
class _Grid:
    """The padded wave grid of one distance: pads (rows, columns), effective pixel in reference voxels, and the
    Fresnel transfer function of the padded grid."""

    pad_y: tuple[int, int]
    pad_x: tuple[int, int]
    ratio: float
    transfer: np.ndarray


class AnalyticScanModel:
    """One analytic scan: phantom, geometry, offsets, beams and the rendering of every frame.

    Frames of distance ``k`` are, in acquisition (file) order: ``n_darks`` darks, ``n_flats`` flats, the
    ``n_angles`` projections over ``[0, angular_range_deg)``, ``n_flats`` flats, the return projections
    at ``cfg.return_angles_deg`` (image key control -1). The distances are recorded one after another.

    Parameters
    ----------
    cfg : SimulationConfig, optional
        Frame size, geometry, photons, offsets, rotation axis, beam drift, seed (``warp_*``, ``oversample``
        and ``detector_blur_px`` are not modelled here: warping needs :func:`~xnh_stream.simulate.scan.simulate_scan`).
    phantom : AnalyticPhantom, optional
        The sample; :func:`make_analytic_phantom` of ``cfg`` if omitted.
    offsets_px : array_like, optional
        ``[K, 2]`` lateral offsets ``(dy, dx)`` of the distances (reference pixels); drawn within
        ``cfg.offset_px`` (none for the reference distance) if omitted.
    """

    def __init__(self, cfg: SimulationConfig | None = None, phantom: AnalyticPhantom | None = None,
                 offsets_px: np.ndarray | None = None) -> None:
        cfg = cfg or SimulationConfig()
        cfg.validate()
        if cfg.warp_scale or cfg.warp_px:
            raise ValueError("the analytic simulator does not model warping (warp_scale, warp_px): "
                             "use xnh_stream.simulate.scan.simulate_scan")
        self.cfg = cfg
        geo = self.geometry = cfg.geometry()
        K = len(geo.distances)
        self.phantom = phantom if phantom is not None else make_analytic_phantom(cfg)
        if offsets_px is None:
            rng = np.random.default_rng([cfg.seed, 1])
            offsets_px = np.zeros((K, 2))
            for k in range(K):
                if k != geo.reference:
                    offsets_px[k] = rng.uniform(-cfg.offset_px, cfg.offset_px, 2)
        self.offsets_px = np.asarray(offsets_px, float).reshape(K, 2)
        rng = np.random.default_rng([cfg.seed, 3])
        direction = rng.standard_normal(2)
        self._drift_dir = direction / np.linalg.norm(direction)
        self.cor_px = (cfg.nx - 1) / 2 + cfg.cor_offset_px
        self.angles_deg = np.arange(cfg.n_angles) * cfg.angular_range_deg / cfg.n_angles
        self.return_angles_deg = np.asarray(cfg.return_angles_deg, dtype=float)
        #: frames in each distance's file: darks, flats, projections, flats, return projections
        self.frames_per_distance = cfg.n_darks + 2 * cfg.n_flats + cfg.n_angles + self.return_angles_deg.size
        self._lam = wavelength_m(cfg.energy_kev)
        self._beams: dict[int, _SeparableBeam] = {}
        self._grids: dict[int, _Grid] = {}
        self.fft_workers = 1

    # ------------------------------------------------------------------------------------- frame plan

    def _t(self, k: int, i: int) -> float:
        """Normalised acquisition time of frame ``i`` of distance ``k``."""
        total = len(self.geometry.distances) * self.frames_per_distance
        return (k * self.frames_per_distance + i) / max(total - 1, 1)

    def displacement_px(self, k: int, i: int) -> np.ndarray:
        """Lateral displacement ``(dy, dx)`` of the sample in frame ``i`` of distance ``k`` (reference px)."""
        return self.offsets_px[k] + self.cfg.drift_px * self._drift_dir * np.sin(0.5 * np.pi * self._t(k, i))

    def frame_specs(self, k: int) -> list[SimFrame]:
        """The frames of distance ``k`` in file order (``counts`` empty: :meth:`render` draws them)."""
        cfg = self.cfg
        empty = np.empty(0, np.float32)
        specs = [SimFrame(k, i, DARK, DARK, 0.0, cfg.count_time_s, empty) for i in range(cfg.n_darks)]
        i = cfg.n_darks
        specs += [SimFrame(k, i + j, FLAT, FLAT, 0.0, cfg.count_time_s, empty) for j in range(cfg.n_flats)]
        i += cfg.n_flats
        specs += [SimFrame(k, i + j, PROJECTION, PROJECTION, float(a), cfg.count_time_s, empty)
                  for j, a in enumerate(self.angles_deg)]
        i += cfg.n_angles
        last = float(self.angles_deg[-1])
        specs += [SimFrame(k, i + j, FLAT, FLAT, last, cfg.count_time_s, empty) for j in range(cfg.n_flats)]
        i += cfg.n_flats
        specs += [SimFrame(k, i + j, PROJECTION, RETURN, float(a), cfg.count_time_s, empty)
                  for j, a in enumerate(self.return_angles_deg)]
        return specs

    # ---------------------------------------------------------------------------------------- render

    def _beam(self, k: int) -> _SeparableBeam:
        if k not in self._beams:
            self._beams[k] = _SeparableBeam(np.random.default_rng([self.cfg.seed, 3, k]),
                                            (self.cfg.ny, self.cfg.nx), self.cfg.beam_drift)
        return self._beams[k]

    def _grid(self, k: int) -> _Grid:
        if k not in self._grids:
            cfg, d = self.cfg, self.geometry.distances[k]
            pad = max(4, int(np.ceil(2 / np.sqrt(d.fresnel_number))))  # two Fresnel zones, in pixels
            shape = [sfft.next_fast_len(n + 2 * pad) for n in (cfg.ny, cfg.nx)]
            pads = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, (cfg.ny, cfg.nx))]
            transfer = fresnel_transfer(tuple(shape), d.propagation_distance_m, self._lam, d.effective_pixel_m,
                                        np.complex64)
            self._grids[k] = _Grid(pads[0], pads[1], self.geometry.scale_to_reference(k), transfer)
        return self._grids[k]

    def intensity(self, k: int, theta_deg: float, shift_yx: Sequence[float]) -> np.ndarray:
        """Noise-free detector intensity (unit beam) of distance ``k`` at one angle, ``[ny, nx]`` float32.

        Parameters
        ----------
        k : int
            Distance.
        theta_deg : float
            Rotation angle.
        shift_yx : sequence of float
            Displacement of the sample (reference pixels; the content moves by ``+shift``).
        """
        cfg, g = self.cfg, self._grid(k)
        voxel = self.geometry.voxel_m
        rows = np.arange(-g.pad_y[0], cfg.ny + g.pad_y[1])
        cols = np.arange(-g.pad_x[0], cfg.nx + g.pad_x[1])
        t = (cols - (cfg.nx - 1) / 2) * g.ratio - cfg.cor_offset_px - shift_yx[1]
        z = (rows - (cfg.ny - 1) / 2) * g.ratio - shift_yx[0]
        int_d, int_b = self.phantom.project(np.deg2rad(theta_deg), t, z)
        k_wave = np.float32(2 * np.pi / self._lam * voxel)
        int_d *= -k_wave  # phase
        amp = np.exp(int_b * -k_wave)
        wave = np.empty(int_d.shape, np.complex64)
        np.multiply(amp, np.cos(int_d), out=wave.real)
        np.multiply(amp, np.sin(int_d), out=wave.imag)
        d = self.geometry.distances[k]
        inten = propagate(wave, d.propagation_distance_m, self._lam, d.effective_pixel_m, pad=0,
                          transfer=g.transfer, workers=self.fft_workers)
        return inten[g.pad_y[0]:g.pad_y[0] + cfg.ny, g.pad_x[0]:g.pad_x[0] + cfg.nx]

    def render(self, spec: SimFrame) -> np.ndarray:
        """Detector counts of one frame, ``[ny, nx]`` in ``cfg.detector_dtype``.

        Parameters
        ----------
        spec : SimFrame
            A frame of :meth:`frame_specs` (its distance, index, keys and angle).
        """
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 4, spec.distance, spec.index])
        shape = (cfg.ny, cfg.nx)
        if spec.image_key == DARK:
            counts = rng.standard_normal(shape, dtype=np.float32)
            counts *= np.float32(cfg.read_noise)
            counts += np.float32(cfg.dark_level)
        else:
            mean = self._beam(spec.distance).at(self._t(spec.distance, spec.index))
            mean *= np.float32(cfg.photons)
            if spec.image_key == PROJECTION:
                mean *= self.intensity(spec.distance, spec.angle_deg, self.displacement_px(spec.distance, spec.index))
            if cfg.photons < POISSON_EXACT_BELOW:
                counts = rng.poisson(np.maximum(mean, 0)).astype(np.float32)
                counts += rng.standard_normal(shape, dtype=np.float32) * np.float32(cfg.read_noise)
            else:
                counts = rng.standard_normal(shape, dtype=np.float32)
                counts *= np.sqrt(np.maximum(mean, 0) + np.float32(cfg.read_noise**2))
                counts += mean
            counts += np.float32(cfg.dark_level)
        dtype = np.dtype(cfg.detector_dtype)
        info = np.iinfo(dtype)
        np.rint(counts, out=counts)
        np.clip(counts, info.min, info.max, out=counts)
        return counts.astype(dtype)

    # ----------------------------------------------------------------------------------------- truth

    def reconstruction_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates ``(z, y, x)`` (reference voxels) of the chain's volume axes ``[ny, nx, nx]``."""
        cfg = self.cfg
        c = (cfg.nx - 1) / 2
        xy = np.arange(cfg.nx) - c
        return np.arange(cfg.ny) - (cfg.ny - 1) / 2, xy, xy.copy()

    def truth_block(self, z: slice = slice(None), y: slice = slice(None),
                    x: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Delta and beta of the phantom on a block of the reconstruction grid (no drift, no offset).

        Parameters
        ----------
        z, y, x : slice
            The block, in voxel indices of the chain's volume ``[ny, nx, nx]``.

        Returns
        -------
        tuple of ndarray
            ``(delta, beta)`` float32 of the block's shape.
        """
        zc, yc, xc = self.reconstruction_coordinates()
        return self.phantom.sample(xc[x], yc[y], zc[z])

    def field_of_view(self) -> np.ndarray:
        """``[nx, nx]`` mask of the voxels every angle sees (the cylinder inscribed in the reference field)."""
        cfg = self.cfg
        _, yc, xc = self.reconstruction_coordinates()
        reach = (cfg.nx - 1) / 2 - abs(cfg.cor_offset_px) - cfg.drift_px - 1
        return np.hypot(yc[:, None], xc[None, :]) <= reach

    def mean_delta_beta(self, points: int = 48) -> float:
        """Mean delta over mean beta of the sample in the field of view (the chain's ``delta_beta`` for it).

        Estimated on a coarse grid of about ``points`` per axis of the reconstruction volume.
        """
        cfg = self.cfg
        zc, yc, xc = self.reconstruction_coordinates()
        zs, xs = (slice(None, None, max(1, n // points)) for n in (cfg.ny, cfg.nx))
        delta, beta = self.phantom.sample(xc[xs], yc[xs], zc[zs])
        seen = self.field_of_view()[xs, xs][None]
        sb = float((beta * seen).sum())
        return float((delta * seen).sum()) / sb if sb > 0 else float("inf")

    def record(self) -> dict[str, Any]:
        """Configuration, shapes, offsets and axis: everything :func:`read_analytic_model` needs."""
        return {"kind": "xnh-stream analytic scan", "config": asdict(self.cfg), "phantom": self.phantom.to_dict(),
                "offsets_px": self.offsets_px.tolist(), "cor_px": self.cor_px, "voxel_m": self.geometry.voxel_m,
                "delta_beta": self.mean_delta_beta(),
                "sign_convention": "n = 1 - delta + i beta; phase = -k * integral(delta)",
                "coordinates": "reference voxels; volume [iz, iy, ix] is (x, y, z) = (ix - c, iy - c, iz - (ny-1)/2)"}

    def write_truth(self, out: str | Path, slab: int = 16) -> Path:
        """Write ``truth.h5``: delta and beta on the reconstruction grid ``[ny, nx, nx]``, slab by slab.

        The file also holds ``field_of_view`` (``[nx, nx]``) and the :meth:`record` (attribute ``record``); it is
        written under a temporary name and renamed. Memory: one slab of ``slab`` rows.
        """
        cfg = self.cfg
        path = Path(out) / TRUTH_FILE
        part = path.with_name(path.name + ".part")
        shape = (cfg.ny, cfg.nx, cfg.nx)
        chunks = (min(slab, cfg.ny), min(256, cfg.nx), min(256, cfg.nx))
        with h5py.File(part, "w") as f:
            ds_d = f.create_dataset("delta", shape=shape, dtype=np.float32, chunks=chunks)
            ds_b = f.create_dataset("beta", shape=shape, dtype=np.float32, chunks=chunks)
            for z0 in range(0, cfg.ny, slab):
                zs = slice(z0, min(z0 + slab, cfg.ny))
                ds_d[zs], ds_b[zs] = self.truth_block(z=zs)
            f.create_dataset("field_of_view", data=self.field_of_view())
            f["delta"].attrs["voxel_m"] = self.geometry.voxel_m
            f.attrs["record"] = json.dumps(self.record())
        part.replace(path)
        return path


def read_analytic_model(folder: str | Path) -> AnalyticScanModel:
    """Rebuild the model of a scan written by :func:`write_analytic_scan` from its ``analytic.json``.

    Raises
    ------
    FileNotFoundError
        When the folder holds no ``analytic.json``.
    """
    return _model_from_record(json.loads((Path(folder) / MODEL_FILE).read_text()))


def _model_from_record(record: dict[str, Any]) -> AnalyticScanModel:
    cfg_d = dict(record["config"])
    for key in ("z1_m", "return_angles_deg"):
        cfg_d[key] = tuple(cfg_d[key])
    return AnalyticScanModel(SimulationConfig(**cfg_d), AnalyticPhantom.from_dict(record["phantom"]),
                             np.asarray(record["offsets_px"]))


# ------------------------------------------------------------------------------------------- writing

_WORKER_MODEL: AnalyticScanModel | None = None


def _worker_init(record: dict[str, Any]) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = _model_from_record(record)


def _worker_render(specs: list[SimFrame]) -> np.ndarray:
    assert _WORKER_MODEL is not None
    return np.stack([_WORKER_MODEL.render(s) for s in specs])


def _start_method(requested: str | None) -> str:
    """``fork`` from a single-threaded process where the platform has it (works from any ``__main__``,
    including ``python -c``), else ``spawn`` (forking a multi-threaded process can deadlock its children)."""
    if requested is not None:
        return requested
    if "fork" in get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _rendered(model: AnalyticScanModel, specs: list[SimFrame], workers: int, batch: int,
              start_method: str | None = None) -> Iterator[tuple[SimFrame, np.ndarray]]:
    """Frames of ``specs`` in order, rendered here or by ``workers`` processes (at most ``2 workers``
    batches in flight: memory stays bounded whatever the scan length)."""
    if workers <= 1:
        for s in specs:
            yield s, model.render(s)
        return
    batches = [specs[i:i + batch] for i in range(0, len(specs), batch)]
    with ProcessPoolExecutor(workers, mp_context=get_context(_start_method(start_method)), initializer=_worker_init,
                             initargs=(model.record(),)) as pool:
        pending: deque[tuple[list[SimFrame], Future]] = deque()
        it = iter(batches)
        for b in it:
            pending.append((b, pool.submit(_worker_render, b)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            b, fut = pending.popleft()
            frames = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_worker_render, nxt)))
            yield from zip(b, frames)


class _NXtomoDistance:
    """One NXtomo file per distance through :class:`~xnh_stream.io.nxtomo.NXtomoWriter`."""

    def __init__(self, path: Path, model: AnalyticScanModel, k: int) -> None:
        cfg = model.cfg
        self.files = [path]
        self._w = NXtomoWriter(path, (cfg.ny, cfg.nx), model.geometry.distances[k], dtype=cfg.detector_dtype)

    def write(self, spec: SimFrame, frame: np.ndarray) -> None:
        self._w.append(frame, spec.image_key, spec.angle_deg, spec.count_time_s,
                       image_key_control=spec.image_key_control)

    def close(self, complete: bool) -> None:
        self._w.close(complete)


@dataclass
class AnalyticScan:
    """What :func:`write_analytic_scan` wrote."""

    folder: Path
    layout: str
    distance_paths: list[Path]  #: per distance: its file (nxtomo) or its folder (chunks, EDF)
    files: list[Path]  #: every frame file written
    model_file: Path  #: ``analytic.json``: :func:`read_analytic_model` rebuilds the model and the truth
    truth_file: Path | None  #: ``truth.h5`` when asked for
    config: SimulationConfig
    offsets_px: np.ndarray
    cor_px: float
    frames_written: int
    elapsed_s: float
    extra: dict = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        """Frames written per second of wall time (everything included)."""
        return self.frames_written / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def write_analytic_scan(out: str | Path, cfg: SimulationConfig | None = None, phantom: AnalyticPhantom | None = None,
                        layout: str = "nxtomo", workers: int = 1, chunk_frames: int = 32, truth: bool = False,
                        batch: int = 4, hdf5_locking: bool = True,
                        progress: Callable[[int, int], None] | None = None,
                        start_method: str | None = None) -> AnalyticScan:
    """Write an analytic four-distance scan into folder ``out``, distance after distance.

    Parameters
    ----------
    out : str or Path
        Scan folder (created).
    cfg : SimulationConfig, optional
        Size and physics (see :class:`AnalyticScanModel`); e.g. ``SimulationConfig(nx=1024, ny=512,
        n_angles=400)`` or ``SimulationConfig.id16a(nx=1024, ny=512, n_angles=400)`` for the real distances.
    phantom : AnalyticPhantom, optional
        The sample (:func:`make_analytic_phantom` of ``cfg`` if omitted).
    layout : {"nxtomo", "chunks", "edf"}
        One NXtomo file per distance ``{name}_{k}_.nx``; per distance a folder ``{name}_{k}_/`` of NXtomo
        chunk files of ``chunk_frames`` frames (entry attributes ``expected_frames``, ``frame_offset``,
        ``distance_frames``, ``distance_name``); or the legacy ID16A EDF folders (see
        :mod:`xnh_stream.simulate.stream`).
    workers : int
        Processes that render frames (1: in this process); each uses one FFT thread.
    chunk_frames : int
        Frames per chunk file (``"chunks"``).
    truth : bool
        Also write ``truth.h5`` (delta and beta on the reconstruction grid, ``4 ny nx^2`` bytes each).
    batch : int
        Frames per task sent to a worker.
    hdf5_locking : bool
        Hold the HDF5 file lock while writing chunk files.
    progress : callable, optional
        ``progress(frames_written, frames_total)`` after each frame.
    start_method : {"fork", "spawn", "forkserver"}, optional
        How worker processes start; by default ``fork`` from a single-threaded caller, else ``spawn``
        (which needs an importable ``__main__``: a script with an ``if __name__ == "__main__"`` guard).

    Returns
    -------
    AnalyticScan

    Notes
    -----
    Memory: the parent holds at most ``2 workers batch`` frames; a worker one padded frame and its FFTs.
    """
    if layout not in _STREAM_LAYOUT:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if workers < 1 or batch < 1 or chunk_frames < 1:
        raise ValueError(f"workers, batch and chunk_frames must be >= 1, got {workers}, {batch}, {chunk_frames}")
    t0 = time.perf_counter()
    model = AnalyticScanModel(cfg, phantom)
    cfg = model.cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / MODEL_FILE
    part = model_file.with_name(model_file.name + ".part")
    part.write_text(json.dumps(model.record()))
    part.replace(model_file)
    truth_file = model.write_truth(out) if truth else None
    K = len(model.geometry.distances)
    n_per = model.frames_per_distance
    stream_layout = _STREAM_LAYOUT[layout]
    names = [f"{cfg.name}_{k + 1}_" for k in range(K)]
    paths = [distance_path(out, n, stream_layout) for n in names]
    specs = [s for k in range(K) for s in model.frame_specs(k)]
    files: list[Path] = []
    written = 0
    writer = None
    current = -1
    try:
        for spec, frame in _rendered(model, specs, workers, batch, start_method):
            if spec.distance != current:
                if writer is not None:
                    writer.close(complete=True)
                    files.extend(writer.files)
                current = spec.distance
                writer = (_NXtomoDistance(paths[current], model, current) if stream_layout == "nxtomo" else
                          distance_writer(stream_layout, out, names[current], model.geometry.distances[current], cfg,
                                          n_per, chunk_frames, hdf5_locking))
            writer.write(spec, frame)
            written += 1
            if progress:
                progress(written, len(specs))
    finally:
        if writer is not None:
            writer.close(complete=written == len(specs))
            files.extend(writer.files)
    return AnalyticScan(out, layout, paths, files, model_file, truth_file, cfg, model.offsets_px, model.cor_px,
                        written, time.perf_counter() - t0)
