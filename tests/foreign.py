"""A four-distance XNH scan written by tools that share no code with ``xnh_stream.simulate``.

Test helper (not a test module). The phantom is voxelised here, projected by astra-toolbox (2-D CPU
``linear`` projector, slice by slice), propagated to four distances by HoToPy's Fresnel propagator,
integrated onto detector pixels of each distance's own effective size and written with ESRF's ``nxtomo``
package, one file per distance, in the layout of README "Input" and ``docs/contracts.md`` "Input".

Geometry
--------
Cone beam from a focus, detector at ``focus_detector_m`` from it; distance ``k`` has the sample at ``z1_k``
from the focus, magnification ``M_k = focus_detector_m / z1_k``, effective propagation distance
``D_k = z1_k z2_k / (z1_k + z2_k)`` and effective pixel ``p / M_k`` (Fresnel scaling theorem). The optical
axis hits the detector centre ``((ny - 1) / 2, (nx - 1) / 2)``; the rotation axis sits ``axis_px - (nx - 1) / 2``
reference pixels beside it in the sample plane, so on distance ``k`` it projects at
``(nx - 1) / 2 + (axis_px - (nx - 1) / 2) M_k / M_ref``. The rotation sense is the project's
(``astra angle = -theta``; see ``xnh_stream/physics/fbp.py``), so a slice reconstructed by our FBP with the
true axis is the phantom slice ``delta[z, y, x]`` returned in :class:`ForeignTruth`, no flip.

Units: the phantom is ``delta`` and ``beta`` per voxel of the reference effective pixel; projections are
``k * sum(delta) * voxel`` radians, the exit wave ``exp(-k sum(beta) voxel - i k sum(delta) voxel)`` (phase
negative for matter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAMBDA_KEV_M = 1.23984198e-9  # lambda[m] = 1.23984e-9 / E[keV]

#: Materials (formula, density g/cm^3) of the phantom parts; optical constants from xraydb at the energy.
MATERIALS: dict[str, tuple[str, float]] = {
    "body": ("C5H8O2", 1.18),  # PMMA-like embedding resin: the low-contrast body
    "water": ("H2O", 1.0),
    "silica": ("SiO2", 2.2),
    "alumina": ("Al2O3", 3.95),
    "stain": ("C5H8O2Os0.1", 1.6),  # osmium-stained organic matter
    "air": ("N2", 0.0012),
}


@dataclass(frozen=True)
class ForeignSpec:
    """Options of a foreign scan.

    Attributes
    ----------
    nx, ny : int
        Detector columns and rows (every distance).
    n_angles : int
        Projections spaced ``range_deg / n_angles`` over ``[0, range_deg)``.
    range_deg : float
        180 or 360.
    include_end : bool
        Add a projection at exactly ``range_deg`` (the "180-degree projection" of a 180 scan).
    return_angles_deg : tuple of float
        Return (alignment) projections taken after the scan, written with ``image_key_control = -1``,
        e.g. ``(180.0, 90.0, 0.0)``.
    axis_px : float or None
        Rotation-axis column on the reference (most magnified) distance at the start of the scan;
        ``None``: the detector centre plus 3.7 px.
    axis_drift_px : float
        Linear drift of the axis over the acquisition (reference px, reached at the last frame).
    sample_offset_px : (float, float)
        Phantom centre ``(x, y)`` relative to the rotation axis in reference px: a sample mounted off-centre.
    body_radius_px : float or None
        Radius of the low-contrast body (a cylinder along the axis); ``None``: 0.62 nx, wider than the
        reference field of view (local tomography).
    energy_kev, pixel_m, focus_detector_m, z1_m
        Energy, detector pixel, focus-to-detector distance and focus-to-sample distances (the first one is
        the most magnified).
    photons : float
        Mean photons per pixel in a flat frame (Poisson noise).
    n_flats, n_darks : int
        Flats before and after the projections; darks at the start.
    dark_counts, read_noise : float
        Dark level and Gaussian read noise (counts).
    psf_px : float
        Gaussian sigma of the detector point-spread function (detector px).
    distance_shift_px : float
        Largest random lateral offset of distances 2..4 against the reference (their own pixels).
    margin_px : int
        Extra columns / rows of the fine grid around the largest field of view (room for the fringes).
    seed : int
        Random seed (phantom details, noise, offsets).
    delta_beta : float, optional
        A sample of one material in the optical sense: every part keeps its ``delta`` and gets
        ``beta = delta / delta_beta`` (the homogeneous object of the CTF). With ``delta_beta_inclusions`` too,
        the body has ``delta_beta`` and every inclusion ``delta_beta_inclusions`` (a two-material sample:
        resin against air, stain inside). None: each material's own optical constants.
    delta_beta_inclusions : float, optional
        See ``delta_beta``.
    """

    nx: int = 96
    ny: int = 32
    n_angles: int = 180
    range_deg: float = 180.0
    include_end: bool = False
    return_angles_deg: tuple[float, ...] = ()
    axis_px: float | None = None
    axis_drift_px: float = 0.0
    sample_offset_px: tuple[float, float] = (0.0, 0.0)
    body_radius_px: float | None = None
    energy_kev: float = 17.05
    pixel_m: float = 65e-6  # 100 nm voxels at the first distance
    focus_detector_m: float = 1.25
    z1_m: tuple[float, ...] = (0.00192, 0.00200, 0.00221, 0.00252)
    photons: float = 20000.0
    n_flats: int = 8
    n_darks: int = 4
    dark_counts: float = 100.0
    read_noise: float = 2.0
    psf_px: float = 0.4
    distance_shift_px: float = 1.5
    margin_px: int = 16
    seed: int = 7
    delta_beta: float | None = None
    delta_beta_inclusions: float | None = None

    @property
    def axis(self) -> float:
        """Rotation-axis column of the reference distance at the start of the scan."""
        return (self.nx - 1) / 2.0 + 3.7 if self.axis_px is None else float(self.axis_px)

    @property
    def magnifications(self) -> np.ndarray:
        """``M_k`` of every distance."""
        return self.focus_detector_m / np.asarray(self.z1_m, dtype=float)

    @property
    def voxel_m(self) -> float:
        """Reference effective pixel: the phantom's voxel."""
        return self.pixel_m / float(self.magnifications.max())

    @property
    def wavelength_m(self) -> float:
        """X-ray wavelength."""
        return LAMBDA_KEV_M / self.energy_kev


@dataclass
class ForeignTruth:
    """What the foreign writer knows and the chain must find.

    Attributes
    ----------
    files : list of Path
        One NXtomo file per distance, most magnified first.
    axis_px : numpy.ndarray
        Rotation-axis column of every distance at the start of the scan.
    delta, beta : numpy.ndarray ``[nz, n, n]``
        Phantom on the fine grid (reference voxels), ``[z, y, x]``, centred on the rotation axis.
    z_of_row0 : int
        Phantom slice imaged by reference detector row 0 (row ``j`` is slice ``z_of_row0 + j``).
    angles_deg : numpy.ndarray
        Angles of the regular projections (returns excluded).
    shifts_px : numpy.ndarray ``[K, 2]``
        Lateral ``(y, x)`` offset of each distance in its own pixels.
    """

    files: list[Path]
    axis_px: np.ndarray
    delta: np.ndarray
    beta: np.ndarray
    z_of_row0: int
    angles_deg: np.ndarray
    shifts_px: np.ndarray
    spec: ForeignSpec = field(repr=False, default_factory=ForeignSpec)

    def slice_delta(self, row: int, n_out: int) -> np.ndarray:
        """Phantom ``delta`` slice imaged by reference row ``row``, ``n_out x n_out`` around the axis."""
        sl = self.delta[self.z_of_row0 + row]
        n = sl.shape[0]
        a = (n - n_out) // 2
        if (n - n_out) % 2:
            raise ValueError(f"n_out={n_out} and the phantom grid {n} differ in parity")
        return sl[a : a + n_out, a : a + n_out]


# --------------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------------
def _optical_constants(energy_kev: float) -> dict[str, tuple[float, float]]:
    import xraydb  # noqa: PLC0415

    out = {}
    for name, (formula, density) in MATERIALS.items():
        d, b, _ = xraydb.xray_delta_beta(formula, density, energy_kev * 1e3)
        out[name] = (float(d), float(b))
    return out


def _paint(vol: dict[str, np.ndarray], value: tuple[float, float], inside, bbox, sub: int = 2) -> None:
    """Set the voxels of ``bbox`` to ``value`` in proportion to the fraction of ``sub^3`` sub-samples inside."""
    (z0, z1), (y0, y1), (x0, x1) = bbox
    if z1 <= z0 or y1 <= y0 or x1 <= x0:
        return
    o = (np.arange(sub) + 0.5) / sub - 0.5
    y = (np.arange(y0, y1)[:, None] + o[None, :]).ravel()
    x = (np.arange(x0, x1)[:, None] + o[None, :]).ravel()
    for za in range(z0, z1, 4):  # a few slices at a time: bounded temporaries
        zb = min(z1, za + 4)
        z = (np.arange(za, zb)[:, None] + o[None, :]).ravel()
        m = inside(z[:, None, None], y[None, :, None], x[None, None, :])
        m = np.broadcast_to(m, (z.size, y.size, x.size)).astype(np.float32)
        frac = m.reshape(zb - za, sub, y1 - y0, sub, x1 - x0, sub).mean(axis=(1, 3, 5))
        for arr, v in zip((vol["delta"], vol["beta"]), value):
            region = arr[za:zb, y0:y1, x0:x1]
            region += frac * (v - region)  # the new part replaces what was there


def make_phantom(spec: ForeignSpec, nz: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``delta`` and ``beta`` volumes ``[nz, n, n]`` on the reference voxel grid, centred on the axis.

    A cylindrical body along the axis, ellipsoids and cylinders of four materials inside it, an air
    bubble, and fine structure (sub-micron spheres and thin fibres), all placed relative to the sample
    centre ``sample_offset_px``.
    """
    rng = np.random.default_rng(spec.seed)
    oc = _optical_constants(spec.energy_kev)
    if spec.delta_beta is not None:  # one material, or two: the body's and the inclusions' delta/beta
        inner = spec.delta_beta if spec.delta_beta_inclusions is None else spec.delta_beta_inclusions
        oc = {name: (d, d / (spec.delta_beta if name == "body" else inner)) for name, (d, _) in oc.items()}
    vol = {"delta": np.zeros((nz, n, n), np.float32), "beta": np.zeros((nz, n, n), np.float32)}
    c = (n - 1) / 2.0
    cz = (nz - 1) / 2.0
    sx, sy = c + spec.sample_offset_px[0], c + spec.sample_offset_px[1]
    rb = 0.62 * spec.nx if spec.body_radius_px is None else float(spec.body_radius_px)

    def box(zc: float, yc: float, xc: float, r: float) -> tuple[tuple[int, int], ...]:
        def lim(a: float, size: int) -> tuple[int, int]:
            return max(0, int(math.floor(a - r - 1))), min(size, int(math.ceil(a + r + 2)))

        return lim(zc, nz), lim(yc, n), lim(xc, n)

    # body: a cylinder along z, slightly elliptic
    _paint(vol, oc["body"], lambda z, y, x: ((x - sx) / rb) ** 2 + ((y - sy) / (0.93 * rb)) ** 2 <= 1.0,
           ((0, nz), (0, n), (0, n)))
    # inclusions: ellipsoids of four materials spread over the imaged rows, random orientation in the slice
    zr = 0.5 * spec.ny * float(spec.magnifications.max() / spec.magnifications.min())
    mats = ("silica", "alumina", "stain", "water", "air", "stain", "alumina", "stain", "silica", "stain")
    for j in range(int(10 * max(1.0, spec.ny / 32))):
        mat = mats[j % len(mats)]
        rr = 0.75 * rb * math.sqrt(rng.random()) if spec.body_radius_px is None else 0.7 * rb * rng.random()
        pa = rng.uniform(0, 2 * np.pi)
        xc, yc, zc = sx + rr * math.cos(pa), sy + rr * math.sin(pa), cz + rng.uniform(-zr, zr)
        a, b = spec.nx * rng.uniform(0.04, 0.12), spec.nx * rng.uniform(0.03, 0.08)
        h = spec.nx * rng.uniform(0.08, 0.3)
        phi = rng.uniform(0, np.pi)
        cp, sp = math.cos(phi), math.sin(phi)

        def ell(z, y, x, xc=xc, yc=yc, zc=zc, a=a, b=b, h=h, cp=cp, sp=sp):
            u = (x - xc) * cp + (y - yc) * sp
            v = -(x - xc) * sp + (y - yc) * cp
            return (u / a) ** 2 + (v / b) ** 2 + ((z - zc) / h) ** 2 <= 1.0

        _paint(vol, oc[mat], ell, box(zc, yc, xc, max(a, b, h)))
    scale = 0.3 * spec.nx
    # a stained cylinder crossing the slices obliquely
    d = np.array([0.3, 0.2, 1.0])
    d /= np.linalg.norm(d)
    p0 = np.array([cz, sy - 0.3 * scale, sx + 0.5 * scale])
    rc = 0.05 * scale + 1.0

    def cyl(z, y, x):
        q = (z - p0[0], y - p0[1], x - p0[2])
        t = q[0] * d[0] + q[1] * d[1] + q[2] * d[2]
        return (q[0] - t * d[0]) ** 2 + (q[1] - t * d[1]) ** 2 + (q[2] - t * d[2]) ** 2 <= rc * rc

    _paint(vol, oc["stain"], cyl, ((0, nz), (0, n), (0, n)))
    # fine structure: small dense spheres spread over the body
    for _ in range(int(0.25 * nz * spec.nx / 8)):
        r = rng.uniform(0.7, 2.2)
        ang, rad = rng.uniform(0, 2 * np.pi), rb * 0.9 * math.sqrt(rng.random())
        xc, yc, zc = sx + rad * math.cos(ang), sy + rad * math.sin(ang), rng.uniform(0, nz - 1)
        mat = "alumina" if rng.random() < 0.4 else "stain"
        _paint(vol, oc[mat], lambda z, y, x, xc=xc, yc=yc, zc=zc, r=r:
               (x - xc) ** 2 + (y - yc) ** 2 + (z - zc) ** 2 <= r * r, box(zc, yc, xc, r))
    return vol["delta"], vol["beta"]


# --------------------------------------------------------------------------------------------------
# Projection, propagation, detection
# --------------------------------------------------------------------------------------------------
def project(volume: np.ndarray, thetas: np.ndarray, n_det: int) -> np.ndarray:
    """Line integrals ``[n_angles, nz, n_det]`` of ``volume [nz, n, n]`` (voxel units) by astra's 2-D CPU projector.

    The rotation axis is the volume centre and detector column ``(n_det - 1) / 2``; astra angles are
    ``-thetas`` (the project's rotation sense).
    """
    import astra  # noqa: PLC0415

    nz, n, _ = volume.shape
    vg = astra.create_vol_geom(n, n)
    pg = astra.create_proj_geom("parallel", 1.0, n_det, -np.asarray(thetas, dtype=np.float64))
    pid = astra.create_projector("linear", pg, vg)
    out = np.empty((len(thetas), nz, n_det), np.float32)
    try:
        for z in range(nz):
            sid, sino = astra.create_sino(np.ascontiguousarray(volume[z], dtype=np.float32), pid)
            astra.data2d.delete(sid)
            out[:, z, :] = sino
    finally:
        astra.projector.delete(pid)
    return out


def _box_matrix(n_out: int, centres: np.ndarray, width: float, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` averaging weights of fine cells ``[i - 0.5, i + 0.5]`` over ``[c - w/2, c + w/2]``."""
    lo = centres[:, None] - width / 2.0
    hi = centres[:, None] + width / 2.0
    i = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, i + 0.5) - np.maximum(lo, i - 0.5), 0.0, None)
    if np.any(lo < -0.5) or np.any(hi > n_in - 0.5):
        raise ValueError("detector pixels fall off the fine grid: increase margin_px")
    return overlap / width


def _psf(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    return gaussian_filter(img, sigma, mode="nearest")


def write_foreign_scan(folder: str | Path, spec: ForeignSpec | None = None) -> ForeignTruth:
    """Simulate and write a four-distance scan, one NXtomo file per distance, into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Output folder (created); files ``foreign_<k>.nx``, ``k = 1`` the most magnified.
    spec : ForeignSpec, optional
        Scan options.

    Returns
    -------
    ForeignTruth
        Files, true axis per distance, phantom and row-to-slice mapping.
    """
    import pint  # noqa: PLC0415
    from hotopy.holo import FresnelTFPropagator, simulate_hologram  # noqa: PLC0415
    from nxtomo import NXtomo  # noqa: PLC0415

    spec = spec or ForeignSpec()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed + 1)
    K = len(spec.z1_m)
    mags = spec.magnifications
    ref = int(np.argmax(mags))
    if ref != 0:
        raise ValueError("z1_m must list the most magnified distance (smallest z1) first")
    ratio = mags[ref] / mags  # size of a distance-k pixel in fine (reference) voxels
    lam = spec.wavelength_m
    k_wave = 2 * np.pi / lam
    voxel = spec.voxel_m
    shifts = np.zeros((K, 2))
    if K > 1:
        shifts[1:] = rng.uniform(-spec.distance_shift_px, spec.distance_shift_px, size=(K - 1, 2))

    # fine grid: reference voxels, wide enough for the largest field of view, the axis offset and fringes
    off0 = spec.axis - (spec.nx - 1) / 2.0
    reach_x = max(ratio) * (spec.nx / 2.0 + spec.distance_shift_px + 1) + abs(off0) + abs(spec.axis_drift_px)
    n_det = 2 * int(math.ceil(reach_x + spec.margin_px)) + (spec.nx % 2)
    reach_z = max(ratio) * (spec.ny / 2.0 + spec.distance_shift_px + 1)
    nz = 2 * int(math.ceil(reach_z + spec.margin_px)) + (spec.ny % 2)
    rb = 0.62 * spec.nx if spec.body_radius_px is None else float(spec.body_radius_px)
    n_vol = max(n_det, 2 * int(math.ceil(rb + max(abs(v) for v in spec.sample_offset_px) + 3)) + (spec.nx % 2))
    n_vol += (n_vol - spec.nx) % 2  # same parity as nx: slice_delta can crop a centred n_out = nx
    delta, beta = make_phantom(spec, nz, n_vol)

    # angles and frame order (per file): darks, flats, projections, flats, returns
    step = spec.range_deg / spec.n_angles
    angles = np.arange(spec.n_angles) * step
    if spec.include_end:
        angles = np.append(angles, spec.range_deg)
    returns = np.asarray(spec.return_angles_deg, dtype=float)
    proj_angles = np.concatenate([angles, returns])
    thetas = np.deg2rad(proj_angles)
    # time fraction of each projection (the axis drifts linearly with it)
    tfrac = np.linspace(0.0, 1.0, proj_angles.size) if proj_angles.size > 1 else np.zeros(1)

    pd = project(delta, thetas, n_det) * np.float32(voxel * k_wave)  # phase magnitude, radians
    pb = project(beta, thetas, n_det) * np.float32(voxel * k_wave)
    fres = [voxel**2 / (lam * (z1 * (spec.focus_detector_m - z1) / spec.focus_detector_m)) for z1 in spec.z1_m]
    prop = FresnelTFPropagator((nz, n_det), fres, npad=2, pad_mode="edge")

    cz_f, cx_f = (nz - 1) / 2.0, (n_det - 1) / 2.0
    rows_det = np.arange(spec.ny) - (spec.ny - 1) / 2.0
    cols_det = np.arange(spec.nx) - (spec.nx - 1) / 2.0
    Ry = [_box_matrix(spec.ny, cz_f + (rows_det - shifts[k, 0]) * ratio[k], ratio[k], nz) for k in range(K)]
    profile = 1.0 + 0.06 * _psf(rng.standard_normal((spec.ny, spec.nx)), 6.0) * 6.0
    profile *= 1.0 - 0.15 * (np.hypot(*np.meshgrid(rows_det / spec.ny, cols_det / spec.nx, indexing="ij")))
    holo = np.empty((K, proj_angles.size, spec.ny, spec.nx), np.float32)
    for i in range(proj_angles.size):
        h = (-pb[i] - 1j * pd[i]).astype(np.complex64)
        inten = simulate_hologram(h, fres, propagator=prop)  # [K, nz, n_det]
        axis_i = off0 + spec.axis_drift_px * tfrac[i]  # axis offset from the optical axis, reference px
        for k in range(K):
            # detector column j sits at (j - c + shift) p / M_k from the optical axis, i.e. at
            # (cols - shift) * ratio - axis_i fine voxels from the rotation axis.
            Rx = _box_matrix(spec.nx, cx_f + (cols_det - shifts[k, 1]) * ratio[k] - axis_i, ratio[k], n_det)
            holo[k, i] = _psf(Ry[k] @ np.asarray(inten[k]) @ Rx.T, spec.psf_px)

    u = pint.get_application_registry()
    files = []
    n_proj = proj_angles.size
    for k in range(K):
        keys, ctrl, frames, rot = [], [], [], []

        def add(img: np.ndarray, key: int, control: int, angle: float) -> None:
            counts = rng.poisson(np.clip(img, 0, None) * spec.photons * profile) + spec.dark_counts
            counts = counts + rng.normal(0.0, spec.read_noise, counts.shape)
            frames.append(np.clip(np.round(counts), 0, 65535).astype(np.uint16))
            keys.append(key)
            ctrl.append(control)
            rot.append(angle)

        for _ in range(spec.n_darks):
            add(np.zeros((spec.ny, spec.nx)), 2, 2, 0.0)
        for _ in range(spec.n_flats):
            add(np.ones((spec.ny, spec.nx)), 1, 1, 0.0)
        for i in range(angles.size):
            add(holo[k, i], 0, 0, float(proj_angles[i]))
        for _ in range(spec.n_flats):
            add(np.ones((spec.ny, spec.nx)), 1, 1, float(angles[-1]))
        for i in range(angles.size, n_proj):
            add(holo[k, i], 0, -1, float(proj_angles[i]))
        nx_ = NXtomo()
        nx_.instrument.detector.data = np.stack(frames)
        nx_.instrument.detector.image_key_control = np.asarray(ctrl)
        nx_.instrument.detector.x_pixel_size = spec.pixel_m * u.m
        nx_.instrument.detector.y_pixel_size = spec.pixel_m * u.m
        nx_.instrument.detector.distance = (spec.focus_detector_m - spec.z1_m[k]) * u.m
        nx_.instrument.detector.count_time = np.full(len(frames), 0.1) * u.s
        nx_.instrument.source.distance = spec.z1_m[k] * u.m
        nx_.instrument.beam.incident_energy = spec.energy_kev * u.keV
        nx_.sample.rotation_angle = np.asarray(rot) * u.deg
        nx_.start_time = "2026-01-01T00:00:00"
        nx_.end_time = "2026-01-01T01:00:00"
        path = folder / f"foreign_{k + 1}.nx"
        nx_.save(str(path), "entry0000", overwrite=True)
        files.append(path)

    axis_k = (spec.nx - 1) / 2.0 + off0 / ratio + shifts[:, 1]
    z_of_row0 = int(round(cz_f - (spec.ny - 1) / 2.0))
    return ForeignTruth(files=files, axis_px=axis_k, delta=delta, beta=beta, z_of_row0=z_of_row0,
                        angles_deg=angles, shifts_px=shifts, spec=spec)


def flat_fielded(path: str | Path, entry: str = "entry0000") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat-fielded projections of one foreign file: ``(frames [n, ny, nx], angles_deg, is_return)``.

    A plain ``(I - mean dark) / (mean flat - mean dark)``, read with h5py (independent of our readers).
    """
    import h5py  # noqa: PLC0415

    with h5py.File(path, "r") as f:
        g = f[entry]
        data = g["instrument/detector/data"][()].astype(np.float64)
        key = g["instrument/detector/image_key"][()]
        ctrl = g["instrument/detector/image_key_control"][()]
        ang = g["sample/rotation_angle"][()].astype(float)
    dark = data[key == 2].mean(axis=0)
    flat = data[key == 1].mean(axis=0) - dark
    sel = key == 0
    return ((data[sel] - dark) / flat).astype(np.float32), ang[sel], ctrl[sel] == -1
