"""A second family of stained neural-tissue phantoms, built another way than :mod:`.phantom` (no code shared).

Held-out validation of the segmentation needs tissue the training data's generator did not make
(issue 19): a network that learned the look of one simulator's cells and membranes must be scored on
another's. This family differs in every construction step:

* **Cell packing**: a *power diagram* (Laguerre tessellation) of jittered seeds in a cylindrical pin: a
  voxel belongs to the seed of smallest ``|x - p|^2 - w``, the weight ``w`` setting the cell's size (a few
  large somata among ordinary cells), relaxed by ``relax`` Lloyd steps (seeds moved to their cell's
  centroid on a coarse grid), which rounds the cells.
* **Neurites**: tubes swept along sinusoidally bent centre lines that cross the pin (nearest centre-line
  sample from a k-d tree), each its own cell, drawn over the diagram; a share of them are **myelinated**
  axons with a thick, dark sheath (stain, label 0) between axon and neighbours.
* **Membranes**: a band along every interface (on one side: the voxels with a face neighbour of a smaller
  label, grown by a per-cell extra thickness of 0 to 1 voxel), label 0, with a per-cell stain contrast (``stain`` range);
  pieces a membrane cuts off a cell become cells of their own, specks below ``min_voxels`` become
  membrane.
* **Nuclei** in the somata: ellipsoids at the cell's centroid with a stained envelope, nucleoplasm,
  chromatin clumps and a nucleolus; they keep their cell's label. **Mitochondria**: small ellipsoids inside
  ordinary cells and neurites, away from their membrane. **Cytoplasm texture**: a smooth random density.

Optical constants: cytoplasm and stain (:mod:`.materials` ``cytoplasm`` and ``membrane``) as two materials
mixed voxel by voxel by a stain fraction; organelles, resin and air with their own constants. The result is
a :class:`~.phantom.Phantom` (the data container :class:`~.scan.ScanModel` takes), so
``simulate_scan(out, cfg, make_voronoi_tissue(...))`` images it through the same scan physics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as connected_components

from .materials import MATERIAL_ORDER, material_indices
from .phantom import Phantom
from .pin import check_pin

__all__ = ["make_voronoi_tissue"]

_M = {name: i for i, name in enumerate(MATERIAL_ORDER)}


def _power_labels(points: np.ndarray, seeds: np.ndarray, weights: np.ndarray, k: int = 12) -> np.ndarray:
    """Index of the power-diagram cell (smallest ``|x - p|^2 - w``) of each point; among the ``k`` nearest seeds."""
    k = min(k, len(seeds))
    tree = cKDTree(seeds)
    d, idx = tree.query(points, k=k)
    d, idx = d.reshape(len(points), k), idx.reshape(len(points), k)
    power = d * d - weights[idx]
    return idx[np.arange(len(points)), np.argmin(power, axis=1)]


def _tube_path(rng: np.random.Generator, centre: np.ndarray, half_length: float, step: float = 0.5
               ) -> np.ndarray:
    """Points (z, y, x), ``step`` apart along arc length, of a sinusoidally bent line through ``centre``."""
    t = rng.normal(size=3)
    t[0] *= 0.8  # more across than along the pin's axis
    t /= np.linalg.norm(t)
    u = np.cross(t, rng.normal(size=3))
    u /= np.linalg.norm(u)
    v = np.cross(t, u)
    s = np.arange(-half_length, half_length + step, step)
    amp_u, amp_v = rng.uniform(1.0, 4.0, 2)
    wl_u, wl_v = rng.uniform(25.0, 60.0, 2)
    ph_u, ph_v = rng.uniform(0, 2 * np.pi, 2)
    return (centre[None] + s[:, None] * t[None] + (amp_u * np.sin(2 * np.pi * s / wl_u + ph_u))[:, None] * u[None]
            + (amp_v * np.sin(2 * np.pi * s / wl_v + ph_v))[:, None] * v[None])


def make_voronoi_tissue(
    shape: Sequence[int] = (96, 96, 96),
    voxel_m: float = 100e-9,
    energy_kev: float = 17.0,
    seed: int = 0,
    sample_radius_px: float | None = None,
    *,
    cell_spacing_px: float = 20.0,
    soma_fraction: float = 0.06,
    relax: int = 2,
    n_tubes: int | None = None,
    tube_radius_px: tuple[float, float] = (2.5, 5.0),
    myelin_fraction: float = 0.4,
    membrane_px: tuple[float, float] = (0.0, 1.0),
    stain: tuple[float, float] = (0.5, 1.0),
    mito_per_cell: float = 1.5,
    texture: float = 0.02,
    rim_px: float = 2.0,
    min_voxels: int = 30,
) -> Phantom:
    """Generate a labelled, stained neural-tissue pin by power-diagram cells and swept tubes (module docstring).

    Parameters
    ----------
    shape : (nz, ny, nx)
        Volume shape; ``z`` is the rotation axis (the pin's axis).
    voxel_m : float
        Voxel size in metres (stored; sizes below are in voxels).
    energy_kev : float
        Photon energy of the optical constants.
    seed : int
        Random seed; the same arguments give the same phantom.
    sample_radius_px : float, optional
        Radius of the pin (default ``0.4 * min(ny, nx)``); air outside.
    cell_spacing_px : float
        Mean distance between cell seeds.
    soma_fraction : float
        Share of seeds that become somata (a larger power weight, a nucleus).
    relax : int
        Lloyd relaxation steps of the seeds.
    n_tubes : int, optional
        Neurites swept across the pin (default: about one per 4 cell spacings of pin cross-section).
    tube_radius_px : (float, float)
        Range of neurite radii.
    myelin_fraction : float
        Share of neurites that are myelinated axons (sheath 1.5 to 3 voxels).
    membrane_px : (float, float)
        Range of the extra membrane thickness per cell, added to the one-voxel interface band.
    stain : (float, float)
        Range of the membranes' stain fraction per cell (1: the ``membrane`` material, 0: cytoplasm).
    mito_per_cell : float
        Mean mitochondria per ordinary cell or neurite.
    texture : float
        Relative amplitude of the cytoplasm's smooth density texture.
    rim_px : float
        Resin-only layer at the pin's surface.
    min_voxels : int
        Cell pieces smaller than this become membrane.

    Returns
    -------
    Phantom
        ``labels`` 1..N (membranes, myelin, resin and air 0; nuclei carry their cell's label), ``membrane``
        (stained voxels: membranes, myelin, nuclear envelopes), ``mito``, ``nucleus``, ``sample``.
    """
    nz, ny, nx, R = check_pin(shape, voxel_m, sample_radius_px, cell_spacing_px,
                              {"tube_radius_px": (tube_radius_px, 0.5, None),
                               "membrane_px": (membrane_px, 0, 5), "stain": (stain, 0, 1)})
    if not (0 <= soma_fraction <= 1 and 0 <= myelin_fraction <= 1):
        raise ValueError("soma_fraction and myelin_fraction must lie in [0, 1]")
    indices = material_indices(energy_kev)
    rng = np.random.default_rng(seed)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    yy, xx = np.mgrid[:ny, :nx]
    radial = np.hypot(yy - cy, xx - cx)
    pin2 = radial <= R
    tissue2 = radial <= R - rim_px
    tissue = np.broadcast_to(tissue2, (nz, ny, nx))

    # ---- cells: jittered seeds on a grid, power weights, Lloyd relaxation on a coarse grid
    a = cell_spacing_px
    grid = np.stack(np.meshgrid(*[np.arange(a / 2, n, a) for n in (nz, ny, nx)], indexing="ij"), -1).reshape(-1, 3)
    seeds = grid + rng.uniform(-0.35 * a, 0.35 * a, grid.shape)
    seeds = seeds[np.hypot(seeds[:, 1] - cy, seeds[:, 2] - cx) <= R - rim_px]
    if len(seeds) < 2:
        raise ValueError(f"the pin (radius {R:.1f}) holds fewer than two cells of spacing {a}")
    soma = rng.random(len(seeds)) < soma_fraction
    weights = np.where(soma, (0.9 * a) ** 2, rng.uniform(0, 0.25, len(seeds)) * a**2)
    coarse_step = 2
    cpts = np.argwhere(tissue[::coarse_step, ::coarse_step, ::coarse_step]).astype(float) * coarse_step
    for _ in range(relax):
        own = _power_labels(cpts, seeds, weights)
        counts = np.bincount(own, minlength=len(seeds))
        moved = np.stack([np.bincount(own, cpts[:, d], len(seeds)) for d in range(3)], -1)
        has = counts > 0
        seeds[has] = moved[has] / counts[has, None]
    pts = np.argwhere(tissue)
    labels = np.zeros((nz, ny, nx), np.int32)
    labels[tissue] = _power_labels(pts.astype(float), seeds, weights) + 1
    n_cells = len(seeds)

    # ---- neurites: swept tubes over the cells, some with a myelin sheath (label 0, stained)
    if n_tubes is None:
        n_tubes = max(1, round(np.pi * R * R / (4 * a * a) * nz / a / 2))
    myelin = np.zeros((nz, ny, nx), bool)
    if n_tubes:
        paths, owner = [], []
        radii = rng.uniform(*tube_radius_px, n_tubes)
        sheath = np.where(rng.random(n_tubes) < myelin_fraction, rng.uniform(1.5, 3.0, n_tubes), 0.0)
        for i in range(n_tubes):
            c = np.array([rng.uniform(0, nz - 1), *(np.array([cy, cx]) + rng.uniform(-0.6, 0.6, 2) * R)])
            p = _tube_path(rng, c, 1.5 * max(nz, ny, nx))
            paths.append(p)
            owner.append(np.full(len(p), i))
        d, j = cKDTree(np.concatenate(paths)).query(pts.astype(float), distance_upper_bound=tube_radius_px[1] + 3.5)
        hit = np.isfinite(d)
        tube = np.full(len(pts), -1)
        tube[hit] = np.concatenate(owner)[j[hit]]
        r_in = np.where(tube >= 0, radii[np.maximum(tube, 0)], -1.0)
        r_out = r_in + np.where(tube >= 0, sheath[np.maximum(tube, 0)], 0.0)
        inner = hit & (d <= r_in)
        sheath_vox = hit & (d > r_in) & (d <= r_out)
        flat = np.ravel_multi_index(pts.T, labels.shape)
        labels.ravel()[flat[inner]] = n_cells + 1 + tube[inner]
        labels.ravel()[flat[sheath_vox]] = 0
        myelin.ravel()[flat[sheath_vox]] = True

    # ---- membranes: the interface band, grown by a per-cell thickness; label 0
    n_lab = int(labels.max()) + 1
    interface = np.zeros(labels.shape, bool)  # one side of each interface: the larger label's
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        a_lo, a_hi = labels[tuple(lo)], labels[tuple(hi)]
        interface[tuple(lo)] |= a_lo > a_hi
        interface[tuple(hi)] |= a_hi > a_lo
    extra = rng.uniform(*membrane_px, n_lab)
    contrast = rng.uniform(*stain, n_lab)
    dist = ndimage.distance_transform_edt(~interface)
    membrane = (labels > 0) & (interface | (dist <= extra[labels]))
    stain_frac = np.zeros(labels.shape, np.float32)
    stain_frac[membrane] = contrast[labels[membrane]]
    stain_frac[myelin] = 1.0
    cells = np.where(membrane, 0, labels)

    # ---- every cell one connected component; specks become membrane
    comp = connected_components(cells, background=0, connectivity=1)
    size = np.bincount(comp.ravel())
    speck = (comp > 0) & (size[comp] < min_voxels)
    membrane |= speck
    stain_frac[speck] = np.maximum(stain_frac[speck], contrast[labels[speck]])
    comp[speck] = 0
    origin = np.zeros(int(comp.max()) + 1, np.int64)  # the cell each component came from (for somata)
    origin[comp.ravel()] = cells.ravel()
    ids, comp = np.unique(comp, return_inverse=True)
    comp = comp.reshape(labels.shape).astype(np.int32)
    origin = origin[ids]
    labels = comp
    membrane |= myelin

    # ---- nuclei in the somata (largest piece of each soma cell)
    nucleus = np.zeros(labels.shape, bool)
    chromatin = np.zeros(labels.shape, bool)
    envelope = np.zeros(labels.shape, bool)
    sizes = np.bincount(labels.ravel())
    cell_ids: list[int] = []
    objects = ndimage.find_objects(labels)
    for lab in range(1, len(ids)):
        src = origin[lab] - 1
        if not (0 <= src < n_cells and soma[src]) or objects[lab - 1] is None or sizes[lab] < 400:
            continue
        box = objects[lab - 1]
        own = labels[box] == lab
        inside = ndimage.distance_transform_edt(own)
        centre = np.array(np.unravel_index(np.argmax(inside), own.shape), float)
        r = 0.6 * float(inside.max())
        if r < 3:
            continue
        axes = r * rng.uniform(0.8, 1.0, 3)
        grid_l = np.indices(own.shape).reshape(3, -1).T - centre
        rn = np.sqrt(((grid_l / axes) ** 2).sum(1)).reshape(own.shape)
        nuc = own & (rn <= 1)
        env = nuc & (rn > 1 - 1.3 / r)
        clumps = ndimage.gaussian_filter(rng.normal(size=own.shape), 1.2)
        chrom = nuc & ~env & ((clumps > 0.5 * clumps.std()) | (rn < 0.25))
        nucleus[box] |= nuc
        envelope[box] |= env
        chromatin[box] |= chrom
        cell_ids.append(lab)
    membrane |= envelope
    stain_frac[envelope] = 0.7

    # ---- mitochondria: small ellipsoids away from the membranes, inside ordinary cells and neurites
    mito = np.zeros(labels.shape, bool)
    depth = ndimage.distance_transform_edt(labels > 0)
    candidates = np.argwhere((depth >= 3.5) & ~nucleus)
    n_mito = min(int(rng.poisson(mito_per_cell * max(len(ids) - 1, 0))), len(candidates))
    for c in candidates[rng.choice(len(candidates), n_mito, replace=False)]:
        half = np.array([rng.uniform(1.5, 3.0), rng.uniform(1.0, 1.6), rng.uniform(1.0, 1.6)])
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        lo = np.maximum(c - 4, 0)
        hi = np.minimum(c + 5, labels.shape)
        box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
        g = (np.indices(tuple(hi - lo)).reshape(3, -1).T + lo - c) @ rot
        ell = (((g / half) ** 2).sum(1) <= 1).reshape(tuple(hi - lo))
        mito[box] |= ell & (labels[box] == labels[tuple(c)]) & ~membrane[box] & (depth[box] >= 1.5)

    # ---- materials: cytoplasm and stain mixed by the stain fraction; organelles, resin, air
    pin = np.broadcast_to(pin2, labels.shape)
    material = np.where(pin, _M["resin"], _M["air"]).astype(np.uint8)
    material[labels > 0] = _M["cytoplasm"]
    material[nucleus & ~envelope] = _M["nucleoplasm"]
    material[chromatin] = _M["chromatin"]
    material[mito] = _M["mitochondrion"]
    material[membrane] = _M["membrane"]
    table = np.array([indices[name] for name in MATERIAL_ORDER], np.float64)
    delta = table[material, 0].copy()
    beta = table[material, 1].copy()
    cyto, stained = np.array(indices["cytoplasm"]), np.array(indices["membrane"])
    mix = membrane
    delta[mix] = (1 - stain_frac[mix]) * cyto[0] + stain_frac[mix] * stained[0]
    beta[mix] = (1 - stain_frac[mix]) * cyto[1] + stain_frac[mix] * stained[1]
    if texture > 0:
        tex = ndimage.gaussian_filter(rng.normal(size=labels.shape), 2.5)
        tex *= texture / (tex.std() + 1e-12)
        plain = material == _M["cytoplasm"]
        delta[plain] *= 1 + tex[plain]
        beta[plain] *= 1 + tex[plain]
    coverage = np.clip(R + 0.5 - radial, 0, 1)  # anti-aliased pin surface
    delta *= coverage[None]
    beta *= coverage[None]
    return Phantom(delta=delta.astype(np.float32), beta=beta.astype(np.float32), labels=labels, membrane=membrane,
                   mito=mito, nucleus=nucleus, sample=np.broadcast_to(pin2, labels.shape).copy(), voxel_m=float(voxel_m),
                   energy_kev=float(energy_kev), material=material, cell_ids=tuple(cell_ids))
