"""A 3-D phantom of resin-embedded, heavy-metal stained neural tissue for XNH simulation.

Construction
------------
The sample is a cylinder of tissue (axis along ``z``, the rotation axis, at the grid centre)
surrounded by air, like the re-embedded pin samples of Kuan et al. (2020). Inside it:

* **Neurites** are tubes around straight lines in a smoothly *warped* space
  ``x' = x + D(x)`` (``D`` a sum of a few long-wavelength divergence-free sine modes), so
  they run along smooth curved paths. The sample is split into ``n_bundles`` domains (a
  Voronoi partition of the warped space); the neurites of one domain share a bundle direction
  oblique to ``z`` (20-70 degrees) with a small per-neurite jitter, and their lines are placed
  by random sequential adsorption of disks in the plane across the bundle (largest first),
  which packs them densely. Radii are log-normal with median ``calibre_px`` (clipped to
  ``[0.5, 3.75] * calibre_px``: thin axons to thick dendrites).
* **Cell bodies** are ellipsoids with a primary neurite of the same label; their **nuclei**
  (label of the cell) have a stained envelope and chromatin texture (smooth random clumps,
  heterochromatin along the envelope, a nucleolus).
* **Space is shared** by an additively weighted ("Apollonius") nearest-object diagram: a
  voxel belongs to the object of smallest ``e = distance - radius`` (for cell bodies the
  ellipsoidal distance), with a penalty for leaving the neurite's bundle domain. The second
  smallest value gives the distance to the interface: a thin, patchy extracellular gap of
  resin where the two nearly tie, and where even the best ``e`` exceeds ``slack`` there is
  resin (extracellular pockets). Everything is computed in 16^3 blocks with exact culling of
  objects that cannot matter.
* Labels are then split into 6-connected components (a neurite cut by a cell body becomes
  two neurites; specks below ``min_fragment_voxels`` become resin) and renumbered 1..N.
* **Membranes** are every labelled voxel that is face-adjacent to another label or to resin,
  plus voxels within ``membrane_px`` of a computed interface: so two different labels are
  never face-adjacent unless both voxels are membrane.
* **Mitochondria** are elongated ellipsoids along the neurite axes (and randomly oriented in
  cell bodies), clipped to the interior (non-membrane voxels) of their own neurite.

The optical constants come from :mod:`xnh_stream.simulate.materials`; the cylinder surface
is anti-aliased (its resin voxels are scaled by their area fraction inside the cylinder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.measure import label as connected_label

from .materials import MATERIAL_ORDER, material_indices

__all__ = ["Phantom", "make_neural_phantom"]

_BLOCK = 16
_N_WARP_MODES = 4


@dataclass
class Phantom:
    """Voxelised neural-tissue sample, arrays indexed ``[z, y, x]``.

    Attributes
    ----------
    delta, beta : ndarray of float32
        Refractive index decrement and absorption index (``n = 1 - delta + i beta``).
    labels : ndarray of int32
        0 for resin/air, one id (1..N) per neurite or cell; nuclei carry their cell's id.
    membrane, mito, nucleus, sample : ndarray of bool
        Stained membranes (plasma membranes and nuclear envelopes), mitochondria, nuclei
        (including their envelope) and the cylindrical sample region.
    material : ndarray of uint8
        Index into ``material_names`` per voxel.
    voxel_m : float
        Voxel size in metres.
    energy_kev : float
        Photon energy the optical constants were computed for.
    cell_ids : tuple of int
        Labels of the cell bodies.
    material_names : tuple of str
        Material names in index order (see :data:`~xnh_stream.simulate.materials.MATERIAL_ORDER`).
    """

    delta: np.ndarray
    beta: np.ndarray
    labels: np.ndarray
    membrane: np.ndarray
    mito: np.ndarray
    nucleus: np.ndarray
    sample: np.ndarray
    voxel_m: float
    energy_kev: float
    material: np.ndarray
    cell_ids: tuple[int, ...] = ()
    material_names: tuple[str, ...] = field(default=MATERIAL_ORDER)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape ``(nz, ny, nx)``."""
        return tuple(self.delta.shape)  # type: ignore[return-value]

    def map_volumes(self, fn: Callable[[np.ndarray], np.ndarray]) -> Phantom:
        """A phantom whose every volume (``delta`` ... ``material``) is ``fn`` of this one's (a crop, a shift
        onto a wider grid); voxel size, energy, cell ids and material names unchanged."""
        return replace(self, **{name: fn(getattr(self, name)) for name in VOLUME_FIELDS})


#: The per-voxel arrays of a :class:`Phantom`.
VOLUME_FIELDS = ("delta", "beta", "labels", "membrane", "mito", "nucleus", "sample", "material")


# --------------------------------------------------------------------------- helpers


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _perp_basis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to ``t`` and to each other."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(t, a))
    return e1, np.cross(t, e1)


@dataclass
class _Modes:
    """Sum of sine modes ``sum_m A_m sin(k_m . x + phi_m)`` (vector or scalar amplitudes)."""

    k: np.ndarray  # [m, 3]
    phase: np.ndarray  # [m]
    amp: np.ndarray  # [m, 3] or [m]

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        """Evaluate at ``pts`` ``[3, n]``; returns ``[3, n]`` (vector) or ``[n]`` (scalar)."""
        s = np.sin(self.k.astype(np.float32) @ pts + self.phase.astype(np.float32)[:, None])
        return self.amp.astype(np.float32).T @ s


def _warp_modes(rng: np.random.Generator, size: float, strength: float) -> _Modes:
    k = _unit(rng.normal(size=(_N_WARP_MODES, 3)))
    lam = size * rng.uniform(0.8, 1.6, _N_WARP_MODES)
    amp = _unit(np.cross(k, rng.normal(size=(_N_WARP_MODES, 3))))  # transverse: divergence-free
    amp *= (strength * lam / (2 * np.pi) * rng.uniform(0.6, 1.0, _N_WARP_MODES))[:, None]
    return _Modes(k * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, _N_WARP_MODES), amp)


def _scalar_modes(rng: np.random.Generator, wavelength: float, n: int = 6) -> _Modes:
    """Smooth scalar field with zero mean and unit standard deviation."""
    k = _unit(rng.normal(size=(n, 3))) * (2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, n)))[:, None]
    return _Modes(k, rng.uniform(0, 2 * np.pi, n), np.full(n, np.sqrt(2.0 / n)))


def _domain_planes(seeds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each Voronoi cell, the outward unit normals and offsets of its bisector planes."""
    planes = []
    for k, s in enumerate(seeds):
        others = np.delete(seeds, k, axis=0)
        n = _unit(others - s)
        b = np.einsum("ij,ij->i", n, (others + s) / 2)
        planes.append((n, b))
    return planes


def _domain_distance(planes: list[tuple[np.ndarray, np.ndarray]], pts: np.ndarray) -> np.ndarray:
    """Signed distance-like value to each domain (``<= 0`` inside), ``[K, n]``."""
    out = np.zeros((len(planes), pts.shape[1]), np.float32)
    for k, (n, b) in enumerate(planes):
        if len(n):
            out[k] = np.max(n.astype(np.float32) @ pts - b.astype(np.float32)[:, None], axis=0)
    return out


def _pack_disks(
    rng: np.random.Generator,
    radii: np.ndarray,
    allowed: np.ndarray,
    origin: np.ndarray,
    pitch: float,
    fixed: list[tuple[np.ndarray, float]],
    overlap: float,
    tries: int = 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential adsorption of disks (largest first) on the ``allowed`` 2-D mask."""
    cand = np.argwhere(allowed).astype(np.float64)
    pos = [p for p, _ in fixed]
    rad = [r for _, r in fixed]
    out_p, out_r = [], []
    if cand.size == 0:
        return np.zeros((0, 2)), np.zeros(0)
    for r in np.sort(radii)[::-1]:
        pick = cand[rng.integers(0, len(cand), tries)] + rng.uniform(-0.5, 0.5, (tries, 2))
        pts = origin + pick * pitch
        if pos:
            P = np.asarray(pos)
            R = np.asarray(rad)
            d = np.sqrt(((pts[:, None, :] - P[None]) ** 2).sum(-1))
            ok = np.all(d >= overlap * (r + R[None]), axis=1)
            if not ok.any():
                continue
            p = pts[np.argmax(ok)]
        else:
            p = pts[0]
        pos.append(p)
        rad.append(r)
        out_p.append(p)
        out_r.append(r)
    return np.asarray(out_p).reshape(-1, 2), np.asarray(out_r)


def _wiggle(rng: np.random.Generator, t: np.ndarray, r: float, straight: bool = False) -> list[float]:
    """Per-neurite meander (offset ``amp sin(k s + phase)`` along a normal of ``t``) and
    varicosities (radius ``r (1 + var sin(k_var s + phase))``)."""
    n = rng.normal(size=3)
    n = _unit(n - (n @ t) * t)
    amp = 0.0 if straight else rng.uniform(0.0, 0.35 * r + 0.5)
    k = 2 * np.pi / (r * rng.uniform(10, 30))
    var = rng.uniform(0.0, 0.2)
    k_var = 2 * np.pi / (r * rng.uniform(4, 12))
    return [*n, amp, k, rng.uniform(0, 2 * np.pi), var, k_var]


def _neurite_e(X: np.ndarray, P: np.ndarray, T: np.ndarray, r: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``distance - radius`` of points ``X`` ``[3, m]`` to meandering tubes ``[n, m]`` (float32).

    ``P``, ``T``: points on and directions of the tube axes ``[n, 3]``; the axis is offset by
    ``amp sin(k s + phase)`` along the normal ``W[:, :3]``, ``s`` the coordinate along ``T``.
    """
    f32 = np.float32
    s = T @ X - np.einsum("ij,ij->i", P, T)[:, None]
    # squared distance to the straight axis
    d2 = (X * X).sum(0)[None] - 2 * (P @ X) + (P * P).sum(1)[:, None] - s * s
    amp = W[:, 3].astype(f32)[:, None]
    if np.any(amp):
        nrm = W[:, :3].astype(f32)
        off = amp * np.sin(W[:, 4].astype(f32)[:, None] * s + W[:, 5].astype(f32)[:, None])
        d2 += off * (off - 2 * (nrm @ X - np.einsum("ij,ij->i", P, nrm)[:, None]))
    var, k_var, phase = (W[:, i].astype(f32)[:, None] for i in (6, 7, 5))
    rad = r.astype(f32)[:, None] * (1 + var * np.sin(k_var * s + phase))
    return np.sqrt(np.maximum(d2, 0)) - rad


def _axis_point(P: np.ndarray, T: np.ndarray, W: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points on the meandering axes at coordinates ``s`` (rows of ``P``, ``T``, ``W``), ``[m, 3]``."""
    off = W[:, 3] * np.sin(W[:, 4] * s + W[:, 5])
    return P + s[:, None] * T + off[:, None] * W[:, :3]


def _check_args(shape: Sequence[int], voxel_m: float, calibre_px: float) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape must be (nz, ny, nx), got {shape!r}")
    shp = tuple(int(s) for s in shape)
    if min(shp) < 16:
        raise ValueError(f"every axis of the phantom needs at least 16 voxels, got {shp}")
    if not (np.isfinite(voxel_m) and voxel_m > 0):
        raise ValueError(f"voxel_m must be positive and finite, got {voxel_m!r}")
    if not (np.isfinite(calibre_px) and calibre_px >= 1.0):
        raise ValueError(f"calibre_px must be >= 1 voxel, got {calibre_px!r}")
    return shp  # type: ignore[return-value]


# --------------------------------------------------------------------------- the phantom


def make_neural_phantom(
    shape: Sequence[int] = (96, 96, 96),
    voxel_m: float = 100e-9,
    energy_kev: float = 17.0,
    seed: int = 0,
    sample_radius_px: float | None = None,
    *,
    calibre_px: float = 4.0,
    n_bundles: int = 3,
    n_cells: int | None = None,
    cell_radius_px: float | None = None,
    membrane_px: float = 1.0,
    ecs_gap_px: float = 0.25,
    mito_fraction: float = 0.06,
    warp: float = 0.12,
    rim_px: float = 2.0,
    min_fragment_voxels: int | None = None,
) -> Phantom:
    """Generate a dense neural-tissue phantom in a cylindrical resin-embedded sample.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Volume shape; ``z`` is the rotation axis.
    voxel_m : float
        Voxel size in metres (stored; sizes below are in voxels).
    energy_kev : float
        Photon energy for the optical constants.
    seed : int
        Random seed; the same arguments give the same phantom.
    sample_radius_px : float, optional
        Radius of the tissue cylinder (default ``0.4 * min(ny, nx)``).
    calibre_px : float
        Median neurite radius in voxels; radii span ``[0.5, 3.75] * calibre_px``.
    n_bundles : int
        Number of bundle domains with distinct neurite directions.
    n_cells : int, optional
        Number of cell bodies (default: about 8 % of the sample volume).
    cell_radius_px : float, optional
        Mean cell-body radius (default ``4.5 * calibre_px``).
    membrane_px : float
        Membrane thickness of each cell, in voxels (membranes are at least one voxel).
    ecs_gap_px : float
        Mean width of the extracellular (resin) gap between cells; patchy, 0 in places.
    mito_fraction : float
        Target volume fraction of mitochondria in neurites and cell bodies.
    warp : float
        Strength of the smooth bending of the neurite paths (0 = straight).
    rim_px : float
        Resin-only layer at the cylinder surface.
    min_fragment_voxels : int, optional
        Connected pieces smaller than this become resin (default ``max(8, calibre_px**3)``).

    Returns
    -------
    Phantom
    """
    nz, ny, nx = _check_args(shape, voxel_m, calibre_px)
    indices = material_indices(energy_kev)
    if n_bundles < 1:
        raise ValueError(f"n_bundles must be >= 1, got {n_bundles}")
    if not (0 <= mito_fraction < 0.5):
        raise ValueError(f"mito_fraction must be in [0, 0.5), got {mito_fraction}")
    if membrane_px < 0 or ecs_gap_px < 0 or rim_px < 0 or warp < 0:
        raise ValueError("membrane_px, ecs_gap_px, rim_px and warp must be >= 0")
    R = 0.4 * min(ny, nx) if sample_radius_px is None else float(sample_radius_px)
    if not (np.isfinite(R) and 4 <= R <= min(ny, nx) / 2):
        raise ValueError(f"sample_radius_px must be in [4, min(ny, nx)/2 = {min(ny, nx) / 2}], got {R}")
    cal = float(calibre_px)
    rc = 4.5 * cal if cell_radius_px is None else float(cell_radius_px)
    min_frag = int(max(8, cal**3)) if min_fragment_voxels is None else int(min_fragment_voxels)
    rng = np.random.default_rng(seed)
    r_in = R - rim_px
    half_z = (nz - 1) / 2.0

    # ---- smooth fields
    size = max(2 * R, nz)
    warp_field = _warp_modes(rng, size, warp) if warp > 0 else None
    gap_field = _scalar_modes(rng, 12 * cal)

    def warped(pts: np.ndarray) -> np.ndarray:
        return pts + warp_field(pts) if warp_field is not None else pts

    def unwarp(pts_w: np.ndarray) -> np.ndarray:
        x = pts_w.copy()
        for _ in range(12):
            x = pts_w - (warp_field(x) if warp_field is not None else 0.0)
        return x

    # ---- bundle domains and directions (vectors are (z, y, x), origin at the grid centre)
    seeds = _sample_in_cylinder(rng, n_bundles, 0.6 * R, 0.6 * half_z, min_sep=0.5 * R)
    planes = _domain_planes(seeds)
    az0 = rng.uniform(0, 2 * np.pi)
    dirs = []
    for b in range(n_bundles):
        pol = np.deg2rad(rng.uniform(20, 70))
        az = az0 + 2 * np.pi * b / n_bundles + rng.uniform(-0.3, 0.3)
        dirs.append([np.cos(pol), np.sin(pol) * np.sin(az), np.sin(pol) * np.cos(az)])
    dirs = np.asarray(dirs)

    # coarse samples of the (warped) tissue to find where each domain lives
    g = np.stack(
        np.meshgrid(
            np.arange(0, nz, 3) - half_z,
            np.arange(0, ny, 3) - (ny - 1) / 2.0,
            np.arange(0, nx, 3) - (nx - 1) / 2.0,
            indexing="ij",
        )
    ).reshape(3, -1)
    g = g[:, g[1] ** 2 + g[2] ** 2 <= r_in**2].astype(np.float32)
    gw = warped(g)
    gdom = np.argmin(_domain_distance(planes, gw), axis=0)

    # ---- cell bodies
    if n_cells is None:
        v_sample = np.pi * r_in**2 * nz
        n_cells = int(round(0.08 * v_sample / (4 / 3 * np.pi * rc**3)))
    centres = _sample_in_cylinder(rng, n_cells, max(r_in - 0.6 * rc, 0), max(half_z - 0.4 * rc, 0), 2.2 * rc)
    nc = len(centres)
    if nc:
        centres = warped(centres.T.astype(np.float32)).T.astype(np.float64)
    rots = Rotation.from_quat(_unit(rng.normal(size=(max(nc, 1), 4)))).as_matrix()[:nc]
    axes = np.stack([np.ones(nc), rng.uniform(0.8, 1.0, nc), rng.uniform(0.65, 0.9, nc)], 1)
    axes /= np.cbrt(axes.prod(1))[:, None]  # unit geometric mean: volume of a ball of radius rc
    cell_domain = np.argmin(_domain_distance(planes, centres.T.astype(np.float32)), axis=0) if nc else []

    # ---- neurite lines, bundle by bundle: point p, direction t, radius r, label, domain
    P, T, Rr, lab, dom, W = [], [], [], [], [], []
    sigma = 0.55
    next_id = 1
    primary = []
    for c_i in range(len(centres)):
        primary.append((c_i, float(np.clip(0.3 * rc, cal, 3.75 * cal))))
    for b in range(n_bundles):
        t_b = _unit(dirs[b])
        e1, e2 = _perp_basis(t_b)
        pts = gw[:, gdom == b].astype(np.float64)
        if pts.shape[1] == 0:
            continue
        uv = np.stack([e1 @ pts, e2 @ pts], 1)
        pitch = 2.0
        lo = uv.min(0) - 3.75 * cal
        shp2 = np.ceil((uv.max(0) + 3.75 * cal - lo) / pitch).astype(int) + 1
        occ = np.zeros(shp2, bool)
        idx = np.round((uv - lo) / pitch).astype(int)
        occ[idx[:, 0], idx[:, 1]] = True
        occ = ndimage.binary_dilation(occ, iterations=max(1, int(np.ceil(1.5 * cal / pitch))))
        occ = ndimage.binary_fill_holes(occ)
        fixed = []
        for c_i, r_p in primary:
            if cell_domain[c_i] == b:
                c = centres[c_i]
                fixed.append((np.array([e1 @ c, e2 @ c]), r_p))
                P.append(c)
                T.append(t_b)
                Rr.append(r_p)
                lab.append(-(c_i + 1))  # resolved to the cell's id below
                dom.append(b)
                W.append(_wiggle(rng, t_b, r_p, straight=True))
        area = occ.sum() * pitch**2
        mean_area = np.pi * cal**2 * np.exp(2 * sigma**2)
        n_try = int(1.3 * area / mean_area) + 8
        radii = np.clip(cal * np.exp(sigma * rng.normal(size=n_try)), 0.5 * cal, 3.75 * cal)
        p2, r2 = _pack_disks(rng, radii, occ, lo, pitch, fixed, overlap=0.9)
        for (u, v), r in zip(p2, r2):
            P.append(u * e1 + v * e2)
            T.append(_unit(t_b + rng.normal(scale=0.06, size=3)))
            W.append(_wiggle(rng, T[-1], r))
            Rr.append(r)
            lab.append(next_id)
            dom.append(b)
            next_id += 1
    cell_label = {c_i: next_id + c_i for c_i in range(len(centres))}
    lab = [cell_label[-v - 1] if v < 0 else v for v in lab]
    P = np.asarray(P, np.float64).reshape(-1, 3)
    T = np.asarray(T, np.float64).reshape(-1, 3)
    Rr = np.asarray(Rr, np.float64)
    lab = np.asarray(lab, np.int32)
    dom = np.asarray(dom, np.int64)
    W = np.asarray(W, np.float64).reshape(-1, 8)  # normal(3), amp, k, phase, varicosity, k_var
    r_top = Rr * (1 + W[:, 6]) + W[:, 3]  # bound on how far a neurite's surface reaches

    # ---- the Apollonius diagram, block by block
    slack = 0.75 * cal
    gap_max = 2.0 * ecs_gap_px
    keep = slack + 2 * (gap_max + membrane_px) + 1.0  # objects with e above this cannot matter
    dom_penalty = 3.0
    cell_penalty = 4.0
    labels0 = np.zeros((nz, ny, nx), np.int32)
    near_iface = np.zeros((nz, ny, nx), bool)
    A_cells = [np.diag(1 / axes[i]) @ rots[i].T for i in range(len(centres))]
    a_max = axes.max(1) if len(centres) else np.zeros(0)  # largest relative semi-axis
    B = _BLOCK
    zc, yc, xc = half_z, (ny - 1) / 2.0, (nx - 1) / 2.0
    for z0 in range(0, nz, B):
        for y0 in range(0, ny, B):
            for x0 in range(0, nx, B):
                zs = np.arange(z0, min(z0 + B, nz)) - zc
                ys = np.arange(y0, min(y0 + B, ny)) - yc
                xs = np.arange(x0, min(x0 + B, nx)) - xc
                # nearest point of the block's (y, x) rectangle to the axis
                dy = 0.0 if ys[0] <= 0 <= ys[-1] else min(abs(ys[0]), abs(ys[-1]))
                dx = 0.0 if xs[0] <= 0 <= xs[-1] else min(abs(xs[0]), abs(xs[-1]))
                if dy * dy + dx * dx > r_in**2:
                    continue
                X = np.stack(np.meshgrid(zs, ys, xs, indexing="ij")).reshape(3, -1).astype(np.float32)
                rho = np.sqrt(X[1] ** 2 + X[2] ** 2)
                Xw = warped(X)
                cw = Xw.mean(1)
                hb = float(np.sqrt(((Xw - cw[:, None]) ** 2).sum(0).max()))
                Xl = Xw - cw[:, None].astype(np.float32)
                rows_e, rows_lab = [], []
                # cell bodies (ellipsoidal distance); neurites are pushed out of them
                inside_cells = None
                for c_i in range(len(centres)):
                    if np.linalg.norm(centres[c_i] - cw) - hb > a_max[c_i] * (rc + keep):
                        continue
                    Y = A_cells[c_i].astype(np.float32) @ (Xw - centres[c_i].astype(np.float32)[:, None])
                    e_c = np.sqrt((Y * Y).sum(0)) - rc  # Y in voxels: axes have unit mean
                    rows_e.append(e_c[None])
                    rows_lab.append(np.array([cell_label[c_i]], np.int32))
                    push = cell_penalty * np.maximum(-e_c, 0)
                    inside_cells = push if inside_cells is None else inside_cells + push
                # neurites
                if len(P):
                    q = P - cw
                    along = np.einsum("ij,ij->i", q, T)
                    dist = np.sqrt(np.maximum((q * q).sum(1) - along**2, 0))
                    cand = dist - hb - r_top <= keep
                    if n_bundles > 1:
                        phi_c = _domain_distance(planes, cw[:, None].astype(np.float32))[:, 0]
                        cand &= dom_penalty * np.maximum(phi_c[dom] - hb, 0) <= keep
                    ci = np.flatnonzero(cand)
                    if ci.size:
                        Pl = q[ci].astype(np.float32)
                        Tl = T[ci].astype(np.float32)
                        e = _neurite_e(Xl, Pl, Tl, Rr[ci], W[ci])
                        if n_bundles > 1:
                            phi = _domain_distance(planes, Xw)
                            e += dom_penalty * np.maximum(phi[dom[ci]], 0)
                        if inside_cells is not None:
                            e += inside_cells[None]
                        rows_e.append(e)
                        rows_lab.append(lab[ci])
                if not rows_e:
                    continue
                E = np.concatenate(rows_e)
                L = np.concatenate(rows_lab)
                i1 = np.argmin(E, axis=0)
                cols = np.arange(E.shape[1])
                e1 = E[i1, cols]
                l1 = L[i1]
                E[L[:, None] == l1[None, :]] = np.inf
                e2 = E.min(axis=0) if E.shape[0] > 1 else np.full_like(e1, np.inf)
                e1 = e1 + 3.0 * np.maximum(rho - r_in, 0)
                gap = ecs_gap_px * np.clip(1 + 1.5 * gap_field(X), 0, 3)
                margin = e2 - e1
                tissue = (e1 <= slack) & (margin >= 2 * gap) & (rho <= r_in)
                blk = (slice(z0, z0 + len(zs)), slice(y0, y0 + len(ys)), slice(x0, x0 + len(xs)))
                bshape = (len(zs), len(ys), len(xs))
                labels0[blk] = np.where(tissue, l1, 0).reshape(bshape)
                near_iface[blk] = (tissue & (margin < 2 * (gap + membrane_px))).reshape(bshape)

    # ---- connected pieces, specks to resin, renumber 1..N
    labels, cell_ids = _split_components(labels0, min_frag, [cell_label[i] for i in range(len(centres))])

    # ---- membranes
    membrane = near_iface & (labels > 0)
    for ax in range(3):
        a = [slice(None)] * 3
        b_ = [slice(None)] * 3
        a[ax] = slice(0, -1)
        b_[ax] = slice(1, None)
        diff = labels[tuple(a)] != labels[tuple(b_)]
        membrane[tuple(a)] |= diff
        membrane[tuple(b_)] |= diff
    membrane &= labels > 0

    # ---- nuclei
    nucleus = np.zeros_like(membrane)
    chromatin = np.zeros_like(membrane)
    grid_c = np.array([zc, yc, xc])
    for c_i, cid in enumerate(cell_ids):
        if cid == 0:
            continue
        c_w = centres[c_i]
        c = unwarp(c_w[:, None].astype(np.float32))[:, 0].astype(np.float64)
        c = c + rng.normal(scale=0.08 * rc, size=3)
        ax_n = axes[c_i] * rc * 0.5 * rng.uniform(0.9, 1.1, 3)
        A = np.diag(1 / ax_n) @ rots[c_i].T
        box, Xn = _local_box(c + grid_c, ax_n.max() + 2, (nz, ny, nx))
        if box is None:
            continue
        Y = A @ (Xn - c[:, None])
        rn = np.sqrt((Y * Y).sum(0)).reshape(tuple(s.stop - s.start for s in box))
        inside = (rn <= 1) & (labels[box] == cid)
        depth = (1 - rn) * ax_n.min()  # ~distance inside the envelope, in voxels
        env = inside & (depth < max(membrane_px, 1.0))
        nrng = np.random.default_rng(rng.integers(2**32))
        tex = ndimage.gaussian_filter(nrng.normal(size=rn.shape), max(1.0, 0.12 * ax_n.min()))
        tex /= tex.std() + 1e-12
        tex += 1.5 * np.exp(-depth / 1.5)
        nucleolus_c = rng.uniform(-0.35, 0.35, 3)
        Yc = Y - nucleolus_c[:, None]
        tex = np.where(np.sqrt((Yc * Yc).sum(0)).reshape(rn.shape) < 0.3, 10.0, tex)
        nucleus[box] |= inside
        membrane[box] |= env
        chromatin[box] |= inside & ~env & (tex > 1.0)

    # ---- mitochondria
    mito = np.zeros_like(membrane)
    if mito_fraction > 0:
        _place_mitochondria(
            rng, mito, labels, labels0, membrane | nucleus, (P, T, Rr, lab, W),
            (centres, rots, axes, rc, cell_ids), cal, mito_fraction, unwarp, grid_c,
        )

    # ---- materials and optical constants
    idx = {name: i for i, name in enumerate(MATERIAL_ORDER)}
    zz = (np.arange(ny) - yc)[:, None] ** 2 + (np.arange(nx) - xc)[None, :] ** 2
    coverage = np.clip(R + 0.5 - np.sqrt(zz), 0, 1).astype(np.float32)
    sample2d = coverage >= 0.5
    sample = np.broadcast_to(sample2d, (nz, ny, nx)).copy()
    material = np.where(sample2d[None] | (coverage > 0)[None], idx["resin"], idx["air"]).astype(np.uint8)
    material = np.broadcast_to(material, (nz, ny, nx)).copy()
    material[labels > 0] = idx["cytoplasm"]
    material[nucleus] = idx["nucleoplasm"]
    material[chromatin] = idx["chromatin"]
    material[mito] = idx["mitochondrion"]
    material[membrane] = idx["membrane"]
    table = np.array([indices[name] for name in MATERIAL_ORDER], np.float32)
    delta = table[material, 0]
    beta = table[material, 1]
    edge = (coverage > 0) & (coverage < 1)
    delta[:, edge] *= coverage[edge]
    beta[:, edge] *= coverage[edge]
    return Phantom(
        delta=delta,
        beta=beta,
        labels=labels,
        membrane=membrane,
        mito=mito,
        nucleus=nucleus,
        sample=sample,
        material=material,
        voxel_m=float(voxel_m),
        energy_kev=float(energy_kev),
        cell_ids=tuple(int(c) for c in cell_ids if c),
    )


def _sample_in_cylinder(
    rng: np.random.Generator, n: int, r: float, hz: float, min_sep: float, tries: int = 2000
) -> np.ndarray:
    """Up to ``n`` random points (z, y, x) in a cylinder, pairwise at least ``min_sep`` apart."""
    pts: list[np.ndarray] = []
    for _ in range(tries):
        if len(pts) >= n:
            break
        rr = r * np.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * np.pi)
        p = np.array([rng.uniform(-hz, hz), rr * np.sin(a), rr * np.cos(a)])
        if all(np.linalg.norm(p - q) >= min_sep for q in pts):
            pts.append(p)
    while len(pts) < n:  # crowded: accept anyway rather than return fewer domains
        pts.append(np.array([rng.uniform(-hz, hz), *rng.uniform(-r, r, 2) / np.sqrt(2)]))
    return np.asarray(pts).reshape(-1, 3)


def _local_box(centre: np.ndarray, half: float, shape: tuple[int, int, int]):
    """Slices of the box of half-width ``half`` around ``centre`` (grid indices) and its
    voxel coordinates relative to the grid centre, ``[3, n]``; ``(None, None)`` if empty."""
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    gc = (np.asarray(shape) - 1) / 2.0
    X = np.stack(
        np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, gc)], indexing="ij")
    ).reshape(3, -1)
    return box, X


def _split_components(
    labels0: np.ndarray, min_frag: int, cell_labels: list[int]
) -> tuple[np.ndarray, list[int]]:
    """6-connected pieces of equal label; largest piece keeps the object, other pieces become
    new objects, pieces below ``min_frag`` voxels become 0; renumbered 1..N (int32)."""
    comp = connected_label(labels0, background=0, connectivity=1)
    n = int(comp.max())
    flat = comp.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    orig = np.zeros(n + 1, np.int64)
    orig[flat] = labels0.ravel()
    ids = np.arange(1, n + 1)
    order = np.lexsort((-sizes[1:], orig[1:]))  # by original label, then size descending
    o = orig[1:][order]
    first = np.ones(n, bool)
    first[1:] = o[1:] != o[:-1]
    main_of = {int(o[i]): int(ids[order][i]) for i in np.flatnonzero(first)}
    keep = sizes[1:] >= min_frag
    keep[ids[order][first] - 1] |= True  # the main piece of an object is kept even if small...
    keep &= sizes[1:] >= 8  # ...unless it is a speck
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out = lut[comp].astype(np.int32, copy=False)
    cells = [int(lut[main_of[c]]) if c in main_of else 0 for c in cell_labels]
    return out, cells


def _place_mitochondria(
    rng: np.random.Generator,
    mito: np.ndarray,
    labels: np.ndarray,
    labels0: np.ndarray,
    excluded: np.ndarray,
    neurites: tuple[np.ndarray, ...],
    cells: tuple[np.ndarray, np.ndarray, np.ndarray, float, list[int]],
    cal: float,
    fraction: float,
    unwarp,
    grid_c: np.ndarray,
) -> None:
    """Mark elongated ellipsoids along the neurite axes and inside cell bodies in ``mito``.

    A mitochondrion is kept only where its centre lies in its own neurite (``labels0``) and
    only on that neurite's non-membrane, non-nuclear voxels.
    """
    P, T, Rr, lab, W = neurites
    centres, rots, axes, rc, cell_ids = cells
    shape = labels.shape
    half_diag = float(np.linalg.norm(np.asarray(shape) / 2))
    # neurites: radius a ~ r/2, half-length c = 2..4 a, spacing set by the volume fraction
    a_n = np.clip(0.5 * Rr, 1.0, cal)
    c_n = a_n * rng.uniform(2.0, 4.0, len(Rr))
    spacing = (4 / 3) * a_n**2 * c_n / (fraction * Rr**2)
    count = np.where(Rr >= 1.5, rng.poisson(2 * half_diag / spacing), 0)
    row = np.repeat(np.arange(len(Rr)), count)
    s = rng.uniform(-half_diag, half_diag, row.size)
    off = rng.normal(size=(row.size, 3))
    off -= np.einsum("ij,ij->i", off, T[row])[:, None] * T[row]
    off *= (np.maximum(Rr[row] - a_n[row] - 1.0, 0) * 0.5 / (np.linalg.norm(off, axis=1) + 1e-12))[:, None]
    cw = _axis_point(P[row], T[row], W[row], s) + off
    todo = [(row, cw, T[row], a_n[row], c_n[row], lab[row])]
    # cell bodies: random positions and orientations in the cytoplasm
    a_c = float(np.clip(0.5 * cal, 1.0, cal))
    for c_i, cid in enumerate(cell_ids):
        if not cid:
            continue
        n = rng.poisson(fraction * 0.85 * rc**3 / (a_c * a_c * 3 * a_c))
        u = rng.uniform(-1, 1, (n, 3)) * axes[c_i] * rc * 0.9
        pts = centres[c_i] + u @ rots[c_i].T
        dirs = _unit(rng.normal(size=(n, 3)))
        todo.append((np.full(n, -1), pts, dirs, np.full(n, a_c), np.full(n, 3 * a_c), np.full(n, -1 - c_i)))
    for _, cw, dirs, a_all, c_all, want0 in todo:
        if not len(cw):
            continue
        cen = unwarp(cw.T.astype(np.float32)).T.astype(np.float64)
        j = np.round(cen + grid_c).astype(int)
        ok = np.all((j >= 0) & (j < np.asarray(shape)), axis=1)
        for k in np.flatnonzero(ok):
            jk = tuple(j[k])
            if want0[k] >= 0:
                if labels0[jk] != want0[k]:
                    continue
                want = int(labels[jk])
            else:
                want = int(cell_ids[-want0[k] - 1])
                if labels[jk] != want:
                    continue
            if not want:
                continue
            a, c, d = a_all[k], c_all[k], dirs[k]
            box, X = _local_box(cen[k] + grid_c, c + 1.5, shape)
            if box is None:
                continue
            q = X - cen[k][:, None]
            sa = d @ q
            perp2 = np.maximum((q * q).sum(0) - sa * sa, 0)
            inside = ((sa / c) ** 2 + perp2 / a**2 <= 1).reshape(tuple(b.stop - b.start for b in box))
            inside &= (labels[box] == want) & ~excluded[box]
            mito[box] |= inside
