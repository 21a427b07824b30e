"""Simulate a set of overlapping XNH scans of one larger sample, for the stitching (:mod:`xnh_stream.stitch`).

One neural-tissue phantom (:func:`~.phantom.make_neural_phantom`, at the finest voxel size) covers every scan.
Scans sit on a grid: rows along ``z`` (the pin axis, as the paper's leg and nerve scans follow it) and, from
four scans on, two columns along ``x``; neighbours alternate between the voxel sizes given (e.g. 50 and
100 nm). Each scan has a **true** place (where its voxels really are) and a **nominal** one (the stage
position it reports), off by a random error of up to ``max_error_voxels`` finest voxels per axis.

:func:`simulate_overlap` writes each scan as the chain would leave it (``OUT/volume.ome.zarr`` and
``OUT/report.json``): the phantom's delta blurred by a Gaussian point-spread function of ``blur_voxels``
scan voxels, sampled at the scan's voxels in its true place, plus noise and a per-scan offset (phase
retrieval leaves the mean of each scan free); outside the cylinder that tomography reconstructs (the disc
inscribed in each ``y x`` slice) the values are unrelated noise. The nominal position goes into
``report["sample"]["position_m"]`` (the volume centre, ``z y x`` metres).

:func:`simulate_overlap_nxtomo` instead writes raw four-distance NXtomo scans of the same sample (through
:func:`~.scan.simulate_scan`), with the nominal position as ``sample/{x,y,z}_translation``, for an end-to-end
run through the chain.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from ..io.names import REPORT_NAME, VOLUME_NAME
from ..io.omezarr import write_volume
from .materials import MATERIAL_ORDER, material_indices
from .phantom import Phantom, make_neural_phantom

TRUTH_NAME = "overlap.json"


@dataclass
class OverlapScan:
    """One simulated scan: its grid and its true and nominal places.

    Attributes
    ----------
    name : str
        Output folder name.
    voxel_m : float
        Voxel size.
    shape : (int, int, int)
        Volume shape ``z y x``.
    true_origin_m, nominal_origin_m : (float, float, float)
        Position ``z y x`` of the centre of voxel ``[0, 0, 0]``: where it really is, and where the stage says.
    offset : float
        Constant added to the scan's values (the freedom phase retrieval leaves).
    out : str
        Output folder (or scan folder for NXtomo scans).
    """

    name: str
    voxel_m: float
    shape: tuple[int, int, int]
    true_origin_m: tuple[float, float, float]
    nominal_origin_m: tuple[float, float, float]
    offset: float = 0.0
    out: str = ""

    @property
    def nominal_position_m(self) -> np.ndarray:
        """Nominal position of the volume centre (``report["sample"]["position_m"]``)."""
        return np.asarray(self.nominal_origin_m) + (np.asarray(self.shape) - 1) / 2 * self.voxel_m

    @property
    def error_m(self) -> np.ndarray:
        """True minus nominal origin (what the stitching has to find, up to a common shift)."""
        return np.asarray(self.true_origin_m) - np.asarray(self.nominal_origin_m)


@dataclass
class OverlapSet:
    """A simulated set of overlapping scans and the phantom they image.

    Attributes
    ----------
    folder : Path
        Where the scans were written (one sub-folder per scan).
    scans : list of OverlapScan
    delta : ndarray
        The phantom's delta on its grid (finest voxel size).
    voxel_m : float
        Phantom voxel size.
    origin_m : (float, float, float)
        Position of the centre of the phantom's voxel ``[0, 0, 0]``.
    blur_voxels : float
        Gaussian PSF sigma of every scan, in the scan's voxels.
    noise : float
        Noise standard deviation relative to each scan's signal.
    extra : dict
        Anything else the writer records.
    labels : ndarray, optional
        The phantom's object ids on its grid (0: resin), the truth of a segmentation.
    neurites : tuple of int
        Ids of the long neurites threaded through every scan (:func:`thread_neurites`).
    """

    folder: Path
    scans: list[OverlapScan]
    delta: np.ndarray
    voxel_m: float
    origin_m: tuple[float, float, float]
    blur_voxels: float
    noise: float
    extra: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    neurites: tuple[int, ...] = ()

    def render(self, origin_m: np.ndarray | tuple, voxel_m: float, shape: tuple[int, int, int],
               blur_voxels: float | None = None) -> np.ndarray:
        """The phantom seen on a grid: blurred by ``blur_voxels`` of ``voxel_m`` and sampled at its voxels.

        Parameters
        ----------
        origin_m : (float, float, float)
            Position of the centre of the grid's voxel ``[0, 0, 0]``.
        voxel_m : float
            Grid voxel size.
        shape : (int, int, int)
            Grid shape.
        blur_voxels : float, optional
            PSF sigma in grid voxels (default: the scans' ``blur_voxels``).

        Returns
        -------
        ndarray of float32
            Voxels outside the phantom take its nearest edge value.
        """
        return render_phantom(self.delta, self.voxel_m, self.origin_m, origin_m, voxel_m, shape,
                              self.blur_voxels if blur_voxels is None else blur_voxels)

    def render_labels(self, origin_m: np.ndarray | tuple, voxel_m: float, shape: tuple[int, int, int]) -> np.ndarray:
        """The phantom's labels on a grid: the id of the phantom voxel nearest each grid voxel's centre.

        Parameters
        ----------
        origin_m : (float, float, float)
            Position of the centre of the grid's voxel ``[0, 0, 0]`` (in the phantom's, i.e. the true, frame).
        voxel_m : float
            Grid voxel size.
        shape : (int, int, int)
            Grid shape.

        Returns
        -------
        ndarray
            Ids of :attr:`labels`; 0 outside the phantom.
        """
        if self.labels is None:
            raise ValueError("this overlap set carries no labels")
        axes = [np.rint((o + voxel_m * np.arange(n) - p) / self.voxel_m).astype(np.int64)
                for o, n, p in zip(origin_m, shape, self.origin_m)]
        out = self.labels[np.ix_(*[np.clip(a, 0, m - 1) for a, m in zip(axes, self.labels.shape)])]
        for k, (a, m) in enumerate(zip(axes, self.labels.shape)):
            out[(slice(None),) * k + ((a < 0) | (a >= m),)] = 0
        return out


def render_phantom(delta: np.ndarray, phantom_voxel_m: float, phantom_origin_m: tuple | np.ndarray,
                   origin_m: tuple | np.ndarray, voxel_m: float, shape: tuple[int, int, int],
                   blur_voxels: float) -> np.ndarray:
    """Sample a phantom, blurred by a Gaussian PSF of ``blur_voxels`` grid voxels, on a grid (cubic spline).

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    ratio = voxel_m / phantom_voxel_m
    sigma = blur_voxels * ratio  # phantom voxels
    offset = (np.asarray(origin_m) - np.asarray(phantom_origin_m)) / phantom_voxel_m
    margin = int(np.ceil(4 * sigma)) + 4  # only the part of the phantom the grid needs
    lo = [int(np.clip(np.floor(o) - margin, 0, n - 1)) for o, n in zip(offset, delta.shape)]
    hi = [int(np.clip(np.ceil(o + ratio * (m - 1)) + margin + 1, a + 1, n))
          for o, m, n, a in zip(offset, shape, delta.shape, lo)]
    src = delta[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    if sigma > 0:
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    return ndimage.affine_transform(src, np.full(3, ratio), offset=offset - np.asarray(lo), output_shape=tuple(shape),
                                    order=3, mode="nearest").astype(np.float32)


def inscribed_cylinder(shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean ``[ny, nx]`` mask of the disc inscribed in a slice (the region tomography reconstructs)."""
    ny, nx = shape[1], shape[2]
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = min(ny, nx) / 2
    return np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) <= r - 0.5


def plan_overlap(n_scans: int = 4, voxels_m: tuple[float, ...] = (50e-9, 100e-9),
                 extent_m: float = 4.8e-6, overlap: float = 0.45, max_error_voxels: float = 20.0,
                 seed: int = 0, isolated: bool = False) -> list[OverlapScan]:
    """Place ``n_scans`` scans of one sample on a grid, with their nominal-position errors.

    Parameters
    ----------
    n_scans : int
        Scans that overlap their neighbours (at least 2).
    voxels_m : tuple of float
        Voxel sizes, alternating between neighbours.
    extent_m : float
        Physical edge of every scan (cubic field of view; its voxel count follows from the voxel size).
    overlap : float
        Fraction of the extent shared by neighbouring rows (along ``z``) and of the cylinder diameter shared
        by the two columns (along ``x``).
    max_error_voxels : float
        Largest nominal-position error per axis, in units of the finest voxel.
    seed : int
        Random seed of the errors and of the small lateral jitter of the true places.
    isolated : bool
        Add one more scan far from the others (it overlaps nothing).

    Returns
    -------
    list of OverlapScan
        Without ``out`` and ``offset`` (set by the writers).
    """
    if n_scans < 2:
        raise ValueError(f"need at least 2 overlapping scans, got {n_scans}")
    if not 0.05 <= overlap < 1:
        raise ValueError(f"overlap must be in [0.05, 1), got {overlap}")
    rng = np.random.default_rng(seed)
    fine = min(voxels_m)
    n_cols = 1 if n_scans < 4 else 2
    step_z = extent_m * (1 - overlap)
    step_x = extent_m * (1 - overlap)
    scans = []
    for k in range(n_scans + int(isolated)):
        far = k == n_scans
        row, col = (k // n_cols, k % n_cols) if not far else ((n_scans - 1) // n_cols + 4, 0)
        voxel = voxels_m[(row + col) % len(voxels_m)]
        n = int(round(extent_m / voxel))
        shape = (n, n, n)
        centre = np.array([row * step_z, 0.0, (col - (n_cols - 1) / 2) * step_x])
        centre[1:] += rng.uniform(-0.03, 0.03, 2) * extent_m  # a little lateral wander of the sample
        true_origin = centre - (n - 1) / 2 * voxel
        error = rng.uniform(-max_error_voxels, max_error_voxels, 3) * fine
        scans.append(OverlapScan(f"scan{k:02d}", voxel, shape, tuple(true_origin.tolist()),
                                 tuple((true_origin - error).tolist())))
    return scans


def thread_neurites(phantom: Phantom, n: int = 1, radius_px: float = 4.0, seed: int = 0,
                    membrane_px: float = 2.0, meander: float = 0.3, within_px: float | None = None,
                    min_piece_voxels: int = 64) -> tuple[int, ...]:
    """Thread ``n`` long neurites along ``z`` through the whole phantom, in place (the objects a chain of scans
    along the pin has to keep as one: issue 20's neurites that run through every scan).

    Each is a tube of radius ``radius_px`` around a centre line that meanders smoothly in ``y`` and ``x``
    (amplitude up to ``meander`` of the tissue radius, one to two periods over the phantom's length), inside
    the sample and apart from the others; cytoplasm inside, a stained membrane of ``membrane_px`` at its
    surface, a new label id. What it crosses (neurites, cell bodies) is cut through; pieces of them smaller than
    ``min_piece_voxels`` left beside it become resin (as the phantom does with its own small pieces).

    Parameters
    ----------
    phantom : Phantom
        Modified in place: ``delta``, ``beta``, ``labels``, ``material``, ``membrane``, ``mito``, ``nucleus``.
    n : int
        Number of neurites.
    radius_px : float
        Tube radius, phantom voxels.
    seed : int
        Random seed of the centre lines.
    membrane_px : float
        Membrane thickness, phantom voxels (2: its own and the membrane of what it touches, as two cells meet).
    meander : float
        Largest sideways excursion of a centre line, as a fraction of the sample radius.
    within_px : float, optional
        Keep the tubes within this distance of the ``z`` axis (e.g. a field of view narrower than the sample);
        default the sample's radius.
    min_piece_voxels : int
        Smaller (6-connected) pieces of the objects cut become resin.

    Returns
    -------
    tuple of int
        The neurites' label ids.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = phantom.shape
    centre = np.array([(ny - 1) / 2, (nx - 1) / 2])
    radius = float(np.sqrt(phantom.sample[nz // 2].sum() / np.pi)) if within_px is None else float(within_px)
    radius -= radius_px + 2
    z = np.arange(nz, dtype=np.float64)
    lines: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(lines) == n:
            break
        amp = rng.uniform(0, meander * radius, 2)
        base = rng.uniform(-1, 1, 2) * max(radius - amp.max(), 0) / np.sqrt(2)
        period = nz / rng.uniform(1, 2, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        line = centre + base + amp * np.sin(2 * np.pi * z[:, None] / period + phase)  # [nz, (y, x)]
        if np.any(np.hypot(*(line - centre).T) > radius):
            continue
        if all(np.hypot(*(line - other).T).min() > 2 * radius_px + 3 for other in lines):
            lines.append(line)
    if len(lines) < n:
        raise ValueError(f"no room for {n} neurites of radius {radius_px} voxels in this phantom")
    table = material_indices(phantom.energy_kev)
    index = {name: k for k, name in enumerate(MATERIAL_ORDER)}
    yy, xx = np.mgrid[0:ny, 0:nx]
    ids = []
    for line in lines:
        label = int(phantom.labels.max()) + 1
        slope = np.hypot(*np.gradient(line, axis=0).T)  # the tube's tilt: distances in a slice are 1/cos
        for k in range(nz):
            d = np.hypot(yy - line[k, 0], xx - line[k, 1]) / np.sqrt(1 + slope[k] ** 2)
            inside, shell = d <= radius_px, (d <= radius_px) & (d > radius_px - membrane_px)
            phantom.labels[k][inside] = label
            for mask in (phantom.mito, phantom.nucleus):
                mask[k][inside] = False
            phantom.membrane[k][inside] = shell[inside]
            phantom.material[k][inside] = np.where(shell[inside], index["membrane"], index["cytoplasm"])
            for field_, j in (("delta", 0), ("beta", 1)):
                getattr(phantom, field_)[k][inside] = np.where(shell[inside], table["membrane"][j],
                                                               table["cytoplasm"][j])
        ids.append(label)
    import cc3d

    pieces = cc3d.connected_components(phantom.labels, connectivity=6)
    small = np.bincount(pieces.ravel()) < min_piece_voxels
    small[0] = False
    sliver = small[pieces]
    phantom.labels[sliver] = 0
    for mask in (phantom.membrane, phantom.mito, phantom.nucleus):
        mask[sliver] = False
    phantom.material[sliver] = index["resin"]
    phantom.delta[sliver], phantom.beta[sliver] = table["resin"]
    return tuple(ids)


def bend_offsets(nz: int, bend_px: float, angle_deg: float = 30.0) -> np.ndarray:
    """Whole-voxel sideways offsets ``[nz, (y, x)]`` of a parabolic arc: 0 at both ends, ``bend_px`` voxels at
    the middle, towards ``angle_deg`` from ``x`` in the ``y x`` plane (non-negative along each axis for angles
    in [0, 90])."""
    if not (np.isfinite(bend_px) and bend_px >= 0):
        raise ValueError(f"bend_px must be >= 0, got {bend_px}")
    t = np.arange(nz) / max(nz - 1, 1)
    sag = bend_px * 4 * t * (1 - t)
    a = np.deg2rad(angle_deg)
    return np.rint(sag[:, None] * np.array([np.sin(a), np.cos(a)])).astype(int)


def bend_phantom(phantom: Phantom, offsets: np.ndarray) -> Phantom:
    """The phantom with slice ``z`` moved sideways by ``offsets[z]`` (whole voxels, ``y x``, non-negative) on a
    grid wide enough to hold every slice; air where no slice lands."""
    nz, ny, nx = phantom.shape
    offsets = np.asarray(offsets, dtype=int)
    if offsets.shape != (nz, 2) or offsets.min() < 0:
        raise ValueError(f"offsets must be non-negative whole voxels of shape ({nz}, 2), got {offsets.shape}")
    wide = (nz, ny + int(offsets[:, 0].max()), nx + int(offsets[:, 1].max()))

    def moved(src: np.ndarray) -> np.ndarray:
        dst = np.zeros(wide, dtype=src.dtype)  # air: delta = beta = 0, label 0, material 0 (MATERIAL_ORDER)
        for z, (oy, ox) in enumerate(offsets):
            dst[z, oy : oy + ny, ox : ox + nx] = src[z]
        return dst

    return phantom.map_volumes(moved)


def _phantom_for(scans: list[OverlapScan], voxel_m: float, seed: int, margin_voxels: int = 8):
    lo = np.min([np.asarray(s.true_origin_m) for s in scans], axis=0) - margin_voxels * voxel_m
    hi = np.max([np.asarray(s.true_origin_m) + (np.asarray(s.shape) - 1) * s.voxel_m for s in scans], axis=0) \
        + margin_voxels * voxel_m
    shape = tuple(int(np.ceil(v)) + 1 for v in (hi - lo) / voxel_m)
    ny = nx = max(shape[1], shape[2])  # the tissue cylinder (axis z) covers every scan
    phantom = make_neural_phantom((shape[0], ny, nx), voxel_m=voxel_m, seed=seed, sample_radius_px=ny / 2)
    origin = lo - (np.array([0, ny - shape[1], nx - shape[2]]) / 2) * voxel_m
    return phantom, tuple(origin.tolist())


def simulate_overlap(out: str | Path, n_scans: int = 4, voxels_m: tuple[float, ...] = (50e-9, 100e-9),
                     extent_m: float = 4.8e-6, overlap: float = 0.45, max_error_voxels: float = 20.0,
                     blur_voxels: float = 0.8, noise: float = 0.3, offset: float = 0.5, seed: int = 0,
                     isolated: bool = False, scans: list[OverlapScan] | None = None, neurites: int = 0,
                     neurite_radius_m: float = 400e-9, phantom: tuple[Phantom, tuple] | None = None) -> OverlapSet:
    """Write overlapping scan outputs (``volume.ome.zarr`` + ``report.json`` each) of one phantom.

    Parameters
    ----------
    out : str or Path
        Folder that receives one sub-folder per scan and ``overlap.json`` (the true and nominal places).
    n_scans, voxels_m, extent_m, overlap, max_error_voxels, seed, isolated
        Layout, see :func:`plan_overlap`.
    blur_voxels : float
        Gaussian PSF sigma in each scan's voxels.
    noise : float
        White-noise standard deviation relative to the standard deviation of the scan's signal (its blurred
        phantom inside its field of view).
    offset : float
        Largest per-scan constant offset, relative to the same.
    scans : list of OverlapScan, optional
        A layout to use instead of :func:`plan_overlap`'s.
    neurites : int
        Long neurites of radius ``neurite_radius_m`` threaded along ``z`` through every scan
        (:func:`thread_neurites`); their ids are ``OverlapSet.neurites``.
    phantom : (Phantom, origin_m), optional
        The sample to image instead of a tissue cylinder made to cover the scans (e.g. a bent pin in air,
        :func:`bend_phantom`), with the position of its voxel ``[0, 0, 0]``; at the finest scan voxel.

    Returns
    -------
    OverlapSet
        With the phantom's labels (the truth of a segmentation).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scans = scans if scans is not None else plan_overlap(n_scans, voxels_m, extent_m, overlap, max_error_voxels,
                                                         seed, isolated)
    fine = min(s.voxel_m for s in scans)
    if phantom is None:
        phantom, origin = _phantom_for(scans, fine, seed)
    else:
        phantom, origin = phantom[0], tuple(float(v) for v in phantom[1])
        if abs(phantom.voxel_m - fine) > 1e-3 * fine:
            raise ValueError(f"the phantom's voxel {phantom.voxel_m} m is not the finest scan voxel {fine} m")
    threaded = thread_neurites(phantom, neurites, neurite_radius_m / fine, seed) if neurites else ()
    delta = phantom.delta
    rng = np.random.default_rng(seed + 1)
    for s in scans:
        s.out = str(out / s.name)
        vol = render_phantom(delta, fine, origin, s.true_origin_m, s.voxel_m, s.shape, blur_voxels)
        outside = ~inscribed_cylinder(s.shape)
        contrast = float(vol[:, ~outside].std())  # the signal this scan sees
        s.offset = float(rng.uniform(-offset, offset) * contrast)
        vol += rng.normal(0.0, noise * contrast, vol.shape).astype(np.float32) + np.float32(s.offset)
        vol[:, outside] = (float(delta.mean()) + s.offset
                           + rng.normal(0.0, contrast, (s.shape[0], int(outside.sum())))).astype(np.float32)
        folder = Path(s.out)
        folder.mkdir(parents=True, exist_ok=True)
        write_volume(folder / VOLUME_NAME, vol, s.voxel_m, chunks=(64, 64, 64))
        report = {"software": {"name": "xnh-stream simulate overlap"},
                  "scan": {"folder": str(folder), "name": s.name},
                  "geometry": {"voxel_m": s.voxel_m},
                  "sample": {"position_m": s.nominal_position_m.tolist()},
                  "simulation": {"true_origin_m": list(s.true_origin_m), "nominal_origin_m": list(s.nominal_origin_m),
                                 "offset": s.offset}}
        (folder / REPORT_NAME).write_text(json.dumps(report, indent=1))
    record = {"phantom": {"voxel_m": fine, "origin_m": list(origin), "shape": list(delta.shape), "seed": seed},
              "blur_voxels": blur_voxels, "noise": noise, "scans": [asdict(s) for s in scans],
              "neurites": list(threaded)}
    (out / TRUTH_NAME).write_text(json.dumps(record, indent=1))
    return OverlapSet(out, scans, delta, fine, origin, blur_voxels, noise, labels=phantom.labels, neurites=threaded)


def simulate_overlap_nxtomo(out: str | Path, n_scans: int = 2, voxel_m: float = 100e-9, nx: int = 64,
                            overlap: float = 0.5, max_error_voxels: float = 10.0, seed: int = 0,
                            n_angles: int = 120, sample_name: str = "overlap-sample", neurites: int = 0,
                            neurite_radius_m: float = 400e-9, sample_radius_px: float | None = None,
                            bend_px: float = 0.0, bend_angle_deg: float = 30.0) -> OverlapSet:
    """Write raw four-distance NXtomo scans of one phantom at overlapping places, for an end-to-end run.

    Scans are stacked along ``z`` (the rotation axis), each ``nx // 2`` rows high, at the voxel size of the
    simulator's first distance (``voxel_m``); true places are whole phantom voxels apart, nominal ones off
    by up to ``max_error_voxels``. The nominal place of each scan's volume centre is written into every
    distance file as ``sample/x_translation`` (horizontal), ``y_translation`` (vertical), ``z_translation``
    (along the beam) in micrometres (NXtomo McStas frame), with the mapping to volume axes used in the chain:
    volume ``z`` = vertical, ``y`` = along the beam at angle 0, ``x`` = horizontal; ``sample/name`` is
    ``sample_name`` in every file (the overnight queue stitches the scans of one sample). ``neurites`` long
    neurites of radius ``neurite_radius_m`` are threaded along ``z`` through every scan's field of view
    (:func:`thread_neurites`). ``sample_radius_px`` is the radius of the tissue cylinder in voxels: by default
    wider than the field of view (local tomography); ``0.44 * nx`` puts the sample in air inside it, as the
    single scans the segmentation network was trained on. ``bend_px`` bends the pin sideways along a parabolic
    arc whose middle lies ``bend_px`` voxels off the line through its ends, towards ``bend_angle_deg`` from
    ``x`` in the ``y x`` plane (as the paper's leg bends): each ``z`` slice of the straight phantom, neurites
    included, is moved by the arc's whole-voxel offset at that height, and each scan is centred on the arc at
    its middle row, so neighbours are offset across the axis as well as along it.

    Returns
    -------
    OverlapSet
        ``scans[k].out`` is the scan folder (input of the chain); with the phantom's labels and the neurites' ids.
    """
    from .scan import SimulationConfig, simulate_scan, simulation_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ny = nx // 2
    cfg0 = SimulationConfig(nx=nx, ny=ny, n_angles=n_angles, seed=seed, pixel_m=voxel_m * 1.208 / 0.00250,
                            sample_radius_px=10 * nx)
    nz_sim, n_sim, margin = simulation_grid(cfg0)
    step = int(round(ny * (1 - overlap)))
    total_z = nz_sim + step * (n_scans - 1)
    radius = n_sim / 2 if sample_radius_px is None else float(sample_radius_px)
    big = make_neural_phantom((total_z, n_sim, n_sim), voxel_m=voxel_m, seed=seed, sample_radius_px=radius)
    arc = bend_offsets(total_z, bend_px, bend_angle_deg)
    # within a scan the bent pin drifts off the scan's axis by up to this much: neurites kept inside the view
    drift = float(np.abs(arc[nz_sim // 2 :] - arc[: total_z - nz_sim // 2]).max()) if total_z > nz_sim // 2 else 0.0
    threaded = thread_neurites(big, neurites, neurite_radius_m / voxel_m, seed,
                               within_px=min(0.4 * nx, radius - 2) - drift) if neurites else ()
    if bend_px:
        big = bend_phantom(big, arc)
    # the chain's volume [ny, nx, nx] is the grid's rows margin.., columns x0.. (see ScanModel.write_truth)
    x0 = int(round((n_sim - 1) / 2 - (nx - 1) / 2))
    scans = []
    for k in range(n_scans):
        z = k * step
        oy, ox = arc[min(z + nz_sim // 2, total_z - 1)]  # the pin's place at the scan's middle row
        crop = tuple(slice(a, a + n) for a, n in ((z, nz_sim), (oy, n_sim), (ox, n_sim)))
        ph = big.map_volumes(operator.itemgetter(crop))
        cfg = SimulationConfig(**{**asdict(cfg0), "seed": seed + k, "name": f"scan{k:02d}"})
        folder = out / f"scan{k:02d}"
        sim = simulate_scan(folder, cfg, phantom=ph)
        true_origin = np.array([z + margin, x0 + oy, x0 + ox], dtype=float) * voxel_m
        error = rng.uniform(-max_error_voxels, max_error_voxels, 3) * voxel_m
        nominal_origin = true_origin - error
        shape = (ny, nx, nx)
        centre = nominal_origin + (np.array(shape) - 1) / 2 * voxel_m
        for f in sim.files:  # McStas: x horizontal, y vertical, z along the beam
            with h5py.File(f, "a") as h5:
                entry = h5[next(iter(h5))]
                for axis, value in (("x", centre[2]), ("y", centre[0]), ("z", centre[1])):
                    key = f"sample/{axis}_translation"
                    if key in entry:  # the writer's own (zeros): the stage's position replaces it
                        del entry[key]
                    entry[key] = value * 1e6
                    entry[key].attrs["units"] = "um"
                if "sample/name" in entry:
                    del entry["sample/name"]
                entry["sample/name"] = sample_name  # the scans of one sample (overnight stitches them)
        scans.append(OverlapScan(f"scan{k:02d}", voxel_m, shape, tuple(true_origin.tolist()),
                                 tuple(nominal_origin.tolist()), 0.0, str(folder)))
    record = {"phantom": {"voxel_m": voxel_m, "origin_m": [0.0, 0.0, 0.0], "shape": list(big.delta.shape)},
              "scans": [asdict(s) for s in scans], "neurites": list(threaded),
              "bend": {"bend_px": bend_px, "angle_deg": bend_angle_deg}}
    (out / TRUTH_NAME).write_text(json.dumps(record, indent=1))
    return OverlapSet(out, scans, big.delta, voxel_m, (0.0, 0.0, 0.0), 0.0, 0.0, labels=big.labels,
                      neurites=threaded)
