"""Simulate a four-distance XNH scan in the NXtomo input layout, with its ground truth.

Physics (SI units, sign convention of :mod:`xnh_stream.physics.phase`): the refractive index is
``n = 1 - delta + i beta``; the exit wave behind the sample is ``T = exp(-k int beta dz) exp(-i k int delta dz)``
(phase negative for matter). By the Fresnel scaling theorem the cone-beam geometry of distance k is
simulated as a plane wave propagated over ``D_k = z1 z2 / (z1 + z2)`` in the sample plane, exactly, with
the Fresnel transfer function ``exp(-i pi lambda D_k f^2)``, then imaged onto detector pixels of size
``p / M_k`` (integrated over the pixel, magnified about the optical axis at the detector centre).

Detector counts are ``Poisson(N0 * beam_k(t) * I) + dark`` with a beam profile that drifts during the
scan; flats are taken before and after each distance, darks at the start, return projections (image key
control -1) at 180, 90 and 0 degrees at the end of each distance. Each distance has a random lateral
offset (the sample re-positioned between distances), all frames a slow common drift, and optionally the
sample warps (a growing scale change plus a smooth non-rigid displacement).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..physics.geometry import DistanceGeometry, ScanGeometry, wavelength_m
from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN, NXtomoWriter
from ..physics.projector import ParallelProjector
from .phantom import Phantom, make_neural_phantom

TRUTH_FILE = "truth.h5"


@dataclass
class SimulationConfig:
    """Parameters of a simulated XNH scan (17 keV, 100 nm voxels, a stained neural-tissue pin).

    The default distances are those of ID16A scaled down 16 times (pixel Fresnel numbers 0.055 to
    0.072 instead of 0.0035 to 0.0046) so that a small test frame (128 px) spans about as many Fresnel
    zones as a 2048-px ID16A frame does; at the real Fresnel numbers the first Fresnel zone (17 px) and
    the Paganin kernel (~80 px at delta/beta ~ 300) are a large fraction of a 128-px frame and edge
    truncation dominates. :meth:`id16a` gives the real distances, for frames of 1024 px and more.

    Attributes
    ----------
    nx, ny : int
        Detector columns and rows.
    n_angles : int
        Projections per distance over ``angular_range_deg``.
    z1_m : tuple of float
        Focus-to-sample distance of each distance (the first is the most magnified).
    focus_detector_m : float
        Focus-to-detector distance ``z1 + z2`` (fixed detector, the sample moves).
    pixel_m : float
        Detector pixel size.
    energy_kev : float
        Photon energy.
    photons : float
        Mean photons per detector pixel in a flat frame (sets the noise level).
    count_time_s, dead_time_s : float
        Exposure per frame and read-out dead time between frames.
    n_flats, n_darks : int
        Frames per flat series and darks.
    offset_px : float
        Maximum lateral offset of distances 2..K relative to the first (reference pixels).
    drift_px : float
        Amplitude of the slow common drift over the whole acquisition (reference pixels).
    cor_offset_px : float
        Rotation-axis position relative to the detector centre (reference pixels).
    warp_scale : float
        Fractional scale change of the sample reached at the end of the acquisition (0 = none).
    warp_px : float
        Amplitude of the smooth non-rigid warp reached at the end (reference pixels).
    beam_drift : float
        Relative amplitude of the beam-profile change over the acquisition.
    detector_blur_px : float
        Gaussian sigma of the scintillator point-spread function (detector pixels).
    dark_level, read_noise : float
        Mean dark counts and read noise (counts).
    oversample : int
        The exit wave is formed and propagated on a grid this many times finer than the voxel grid, then
        integrated onto detector pixels: the intensity ``|U|^2`` has twice the bandwidth of the wave, so
        propagating on the voxel grid itself can alias the finest fringes. Default 1: on the default scan
        2 changed the reconstruction's correlation with the phantom by less than 0.01 and made the
        simulation 5 times slower.
    seed : int
        Random seed (phantom, offsets, noise).
    membrane_px, calibre_px : float
        Phantom membrane thickness and typical neurite radius, in voxels.
    sample_radius_px : float or None
        Radius of the cylindrical sample pin (reference pixels). ``None``: 0.44 nx, a re-embedded pin
        just inside the field of view (the paper's sample preparation). A radius beyond the simulation
        grid makes the sample fill the field of view of every distance (local tomography).
    """

    nx: int = 128
    ny: int = 64
    n_angles: int = 180
    angular_range_deg: float = 180.0
    z1_m: tuple[float, ...] = (0.00250, 0.002575, 0.00280, 0.00325)
    focus_detector_m: float = 1.208
    pixel_m: float = 100e-9 * 1.208 / 0.00250  # 100 nm voxels at the first distance
    energy_kev: float = 17.0
    photons: float = 20000.0
    count_time_s: float = 0.1
    dead_time_s: float = 0.01
    n_flats: int = 11
    n_darks: int = 5
    offset_px: float = 4.0
    drift_px: float = 0.3
    cor_offset_px: float = 2.3
    warp_scale: float = 0.0
    warp_px: float = 0.0
    beam_drift: float = 0.02
    detector_blur_px: float = 0.5
    dark_level: float = 100.0
    read_noise: float = 2.0
    oversample: int = 1
    seed: int = 0
    membrane_px: float = 2.0
    calibre_px: float = 6.0
    sample_radius_px: float | None = None
    name: str = "phantom"
    return_angles_deg: tuple[float, ...] = (180.0, 90.0, 0.0)

    @classmethod
    def id16a(cls, **overrides: object) -> SimulationConfig:
        """ID16A-like distances at 17 keV (Fresnel numbers ~0.004, 100 nm voxels) on a 2048-px frame."""
        z1 = (0.0400, 0.0412, 0.0448, 0.0520)
        base = {"z1_m": z1, "pixel_m": 100e-9 * 1.208 / z1[0], "nx": 2048, "ny": 2048, "n_angles": 1800}
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    def geometry(self) -> ScanGeometry:
        """The scan geometry these parameters describe."""
        return ScanGeometry(tuple(DistanceGeometry(z1, self.focus_detector_m - z1, self.pixel_m, self.energy_kev)
                                  for z1 in self.z1_m))

    def validate(self) -> None:
        """Raise ValueError for parameters that cannot describe a scan."""
        if self.nx < 16 or self.ny < 8:
            raise ValueError(f"detector too small: {self.ny} x {self.nx} (need at least 8 x 16)")
        if self.n_angles < 2:
            raise ValueError("n_angles must be at least 2")
        if any(z <= 0 or z >= self.focus_detector_m for z in self.z1_m):
            raise ValueError(f"every z1 must lie between 0 and focus_detector_m={self.focus_detector_m}")
        if self.photons <= 0:
            raise ValueError("photons must be positive")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.detector_dtype is np.uint32 and self.photons * 2 > np.iinfo(np.uint32).max:
            raise ValueError(f"photons={self.photons} overflows the 32-bit detector")
        self.geometry()

    @property
    def detector_dtype(self) -> type:
        """uint16 like a real detector, or uint32 when the flat counts would saturate 16 bits."""
        peak = self.photons * (1 + self.beam_drift) * 1.6 + self.dark_level + 6 * self.read_noise
        return np.uint16 if peak < np.iinfo(np.uint16).max else np.uint32


@dataclass
class SimulatedScan:
    """Where a simulated scan was written and what the truth is."""

    folder: Path
    files: list[Path]
    truth_file: Path
    config: SimulationConfig
    offsets_px: np.ndarray  # [K, 2] (dy, dx) per distance, reference pixels
    cor_px: float  # rotation axis in reference-detector columns
    extra: dict = field(default_factory=dict)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f / (np.abs(f).max() + 1e-12)).astype(np.float32)


class _Beam:
    """Beam profile on the detector: a broad Gaussian with low-frequency ripple that drifts in time."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], drift: float) -> None:
        ny, nx = shape
        y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
        cy, cx = ny / 2 + rng.uniform(-0.1, 0.1) * ny, nx / 2 + rng.uniform(-0.1, 0.1) * nx
        self.base = np.exp(-(((y - cy) / (1.2 * ny)) ** 2 + ((x - cx) / (1.0 * nx)) ** 2)).astype(np.float32)
        self.base *= 1 + 0.05 * _smooth_field(rng, shape, max(2.0, nx / 24))
        self.mode1 = self.base * _smooth_field(rng, shape, max(3.0, nx / 10))
        self.mode2 = self.base * _smooth_field(rng, shape, max(3.0, nx / 10))
        self.drift = drift

    def at(self, t: float) -> np.ndarray:
        """Profile at normalised acquisition time ``t`` in [0, 1] (mean ~1)."""
        return self.base + self.drift * (t * self.mode1 + np.sin(2 * np.pi * 1.5 * t) * self.mode2)


def _warp_maps(maps: np.ndarray, scale: float, disp: np.ndarray | None, amount: float) -> np.ndarray:
    """Apply isotropic scaling about the centre and a displacement field to projected maps [c, ny, nx]."""
    c, ny, nx = maps.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    sy = cy + (yy - cy) / scale
    sx = cx + (xx - cx) / scale
    if disp is not None and amount:
        sy = sy - amount * disp[0]
        sx = sx - amount * disp[1]
    return np.stack([ndimage.map_coordinates(m, [sy, sx], order=1, mode="nearest") for m in maps])


def _fourier_shift(maps: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    """Shift real maps [c, ny, nx] by a subpixel amount (periodic; the grid has an air margin)."""
    spec = sfft.rfft2(maps, workers=-1)
    fy = sfft.fftfreq(maps.shape[-2])[:, None]
    fx = sfft.rfftfreq(maps.shape[-1])[None, :]
    spec *= np.exp(-2j * np.pi * (fy * shift_yx[0] + fx * shift_yx[1]))
    return sfft.irfft2(spec, s=maps.shape[-2:], workers=-1).astype(np.float32)


def fresnel_transfer(shape: tuple[int, int], distance_m: float, wavelength: float, pixel_m: float,
                     dtype: type = np.complex128) -> np.ndarray:
    """Fresnel transfer function ``exp(-i pi lambda D f^2)`` of a periodic grid (FFT frequency order).

    Parameters
    ----------
    shape : tuple of int
        Grid ``(ny, nx)``.
    distance_m, wavelength, pixel_m : float
        Propagation distance ``D``, wavelength and sampling pitch, in metres.
    dtype : numpy complex type
        ``complex64`` keeps a single-precision wave single-precision in :func:`propagate`.

    Returns
    -------
    ndarray
        ``[ny, nx]`` transfer function.
    """
    fy = sfft.fftfreq(shape[0], d=pixel_m)[:, None]
    fx = sfft.fftfreq(shape[1], d=pixel_m)[None, :]
    return np.exp(-1j * np.pi * wavelength * distance_m * (fx**2 + fy**2)).astype(dtype, copy=False)


def propagate(wave: np.ndarray, distance_m: float, wavelength: float, pixel_m: float, pad: int,
              transfer: np.ndarray | None = None, workers: int = -1) -> np.ndarray:
    """Exact Fresnel propagation of a complex wave with reflect padding; returns the intensity.

    Parameters
    ----------
    wave : ndarray, complex
        Exit wave ``[ny, nx]`` sampled at ``pixel_m``.
    distance_m : float
        Effective propagation distance ``D``.
    wavelength, pixel_m : float
        Wavelength and sampling pitch in metres.
    pad : int
        Padding on each side (reflect), removed afterwards; 0 propagates the wave as periodic.
    transfer : ndarray, optional
        :func:`fresnel_transfer` of the padded grid, to reuse it over many frames (computed if omitted).
    workers : int
        Threads of the FFTs (``scipy.fft``; -1: all cores).

    Returns
    -------
    ndarray
        ``|U|^2`` on the input grid: float64, or float32 for a ``complex64`` wave and transfer function.
    """
    w = np.pad(wave, pad, mode="reflect") if pad else wave
    if transfer is None:
        transfer = fresnel_transfer(w.shape, distance_m, wavelength, pixel_m)
    elif transfer.shape != w.shape:
        raise ValueError(f"transfer function shape {transfer.shape} differs from the padded wave's {w.shape}")
    u = sfft.ifft2(sfft.fft2(w, workers=workers) * transfer, workers=workers)
    if pad:
        u = u[pad:-pad, pad:-pad]
    return np.abs(u) ** 2


def _detector_sample(intensity: np.ndarray, ratio: float, origin_yx: tuple[float, float], shape: tuple[int, int],
                     blur_px: float) -> np.ndarray:
    """Integrate ``intensity`` (sim grid, pitch 1) over detector pixels of pitch ``ratio`` and sample them.

    Detector pixel (i, j) is centred on sim-grid position ``origin + ((i, j) - centre) * ratio``.
    """
    spec = sfft.rfft2(intensity, workers=-1)
    fy = sfft.fftfreq(intensity.shape[0])[:, None]
    fx = sfft.rfftfreq(intensity.shape[1])[None, :]
    # Box of one detector pixel (sinc) times the scintillator PSF (Gaussian), both in sim-grid units.
    mtf = np.sinc(fy * ratio) * np.sinc(fx * ratio) * np.exp(-2 * (np.pi * blur_px * ratio) ** 2 * (fx**2 + fy**2))
    smooth = sfft.irfft2(spec * mtf, s=intensity.shape, workers=-1)
    ny, nx = shape
    ii, jj = np.mgrid[0:ny, 0:nx].astype(np.float64)
    coords = [origin_yx[0] + (ii - (ny - 1) / 2) * ratio, origin_yx[1] + (jj - (nx - 1) / 2) * ratio]
    return ndimage.map_coordinates(smooth, coords, order=3, mode="nearest")


def simulation_grid(cfg: SimulationConfig) -> tuple[int, int, int]:
    """Size ``(nz, n, margin)`` of the phantom grid that covers every distance's field of view."""
    geo = cfg.geometry()
    r_max = max(geo.scale_to_reference(k) for k in range(len(geo.distances)))
    reach = cfg.offset_px + cfg.drift_px + abs(cfg.cor_offset_px) + cfg.warp_px + 4
    margin = int(np.ceil(0.5 * (r_max - 1) * max(cfg.nx, cfg.ny) + reach))
    return cfg.ny + 2 * margin, cfg.nx + 2 * margin, margin


@dataclass(frozen=True)
class SimFrame:
    """One detector frame of a simulated scan, as the simulator draws it.

    Attributes
    ----------
    distance : int
        Index of the distance (0 = first z1 of the config).
    index : int
        Position of the frame in its distance's file (acquisition order within the distance).
    image_key, image_key_control : int
        NXtomo keys (0 projection, 1 flat, 2 dark; control -1 for return projections).
    angle_deg, count_time_s : float
        Rotation angle and exposure.
    counts : ndarray
        Detector counts ``[ny, nx]`` (float64, before digitisation to the detector type).
    """

    distance: int
    index: int
    image_key: int
    image_key_control: int
    angle_deg: float
    count_time_s: float
    counts: np.ndarray


class ScanModel:
    """The physics of one simulated scan: phantom, offsets, drift, beams, and a generator of its frames.

    :func:`simulate_scan` writes all frames at once; :func:`xnh_stream.simulate.stream.stream_scan` writes
    the same frames progressively. Frames are drawn in one fixed order (darks and flats of every distance,
    then each angle at every distance, then the closing flats and the return projections), so a given
    ``cfg`` gives the same counts whatever the order the frames are later written in.

    Parameters
    ----------
    cfg : SimulationConfig, optional
        Parameters; defaults give a small, moderately noisy scan.
    phantom : Phantom, optional
        A phantom on the grid of :func:`simulation_grid`; generated from ``cfg.seed`` if omitted.
    """

    def __init__(self, cfg: SimulationConfig | None = None, phantom: Phantom | None = None) -> None:
        cfg = cfg or SimulationConfig()
        cfg.validate()
        self.cfg = cfg
        geo = self.geometry = cfg.geometry()
        K = len(geo.distances)
        nz_sim, n_sim, self._margin = simulation_grid(cfg)
        rng = self._rng = np.random.default_rng(cfg.seed)
        voxel = self._voxel = geo.voxel_m
        if phantom is None:
            radius = cfg.sample_radius_px if cfg.sample_radius_px is not None else 0.44 * cfg.nx
            phantom = make_neural_phantom((nz_sim, n_sim, n_sim), voxel_m=voxel, energy_kev=cfg.energy_kev,
                                          seed=cfg.seed, sample_radius_px=radius, membrane_px=cfg.membrane_px,
                                          calibre_px=cfg.calibre_px)
        if phantom.delta.shape != (nz_sim, n_sim, n_sim):
            raise ValueError(f"phantom shape {phantom.delta.shape} must be {(nz_sim, n_sim, n_sim)} for this config")
        self.phantom = phantom

        offsets = np.zeros((K, 2))
        for k in range(K):
            if k != geo.reference:
                offsets[k] = rng.uniform(-cfg.offset_px, cfg.offset_px, size=2)
        self.offsets_px = offsets
        drift_dir = rng.standard_normal(2)
        self._drift_dir = drift_dir / np.linalg.norm(drift_dir)
        self._warp_field = np.stack([_smooth_field(rng, (nz_sim, n_sim), n_sim / 6) for _ in range(2)])
        self._beams = [_Beam(rng, (cfg.ny, cfg.nx), cfg.beam_drift) for _ in range(K)]
        self._lam = wavelength_m(cfg.energy_kev)
        self._c_sim = (n_sim - 1) / 2
        self._cz_sim = (nz_sim - 1) / 2
        self.cor_px = (cfg.nx - 1) / 2 + cfg.cor_offset_px
        self._pad = max(16, int(2 * np.sqrt(self._lam * max(geo.propagation_distances_m)) / voxel))
        self._shape_sim = (nz_sim, n_sim)
        self.angles_deg = np.arange(cfg.n_angles) * cfg.angular_range_deg / cfg.n_angles
        self.return_angles_deg = np.asarray(cfg.return_angles_deg, dtype=float)
        #: frames in each distance's file: darks, flats, projections, flats, return projections
        self.frames_per_distance = cfg.n_darks + 2 * cfg.n_flats + cfg.n_angles + self.return_angles_deg.size
        self._projector: ParallelProjector | None = None

    def _t(self, k: int, i: int) -> float:
        """Normalised acquisition time of frame i of distance k (distances recorded one after another)."""
        total = len(self.geometry.distances) * self.frames_per_distance
        return (k * self.frames_per_distance + i) / max(total - 1, 1)

    def _drift(self, t: float) -> np.ndarray:
        return self.cfg.drift_px * self._drift_dir * np.sin(0.5 * np.pi * t)

    def _counts(self, k: int, intensity: np.ndarray, t: float) -> np.ndarray:
        cfg = self.cfg
        mean = cfg.photons * self._beams[k].at(t) * np.clip(intensity, 0, None)
        return self._rng.poisson(mean) + cfg.dark_level + cfg.read_noise * self._rng.standard_normal(mean.shape)

    def _hologram(self, k: int, maps: np.ndarray, t: float) -> np.ndarray:
        """Detector intensity (no noise, unit beam) of distance k for projected maps [2, nz, n] in voxels."""
        cfg, geo, voxel = self.cfg, self.geometry, self._voxel
        shift = self.offsets_px[k] + self._drift(t)
        m = _fourier_shift(maps, (shift[0], shift[1]))
        if cfg.warp_scale or cfg.warp_px:
            m = _warp_maps(m, 1.0 - cfg.warp_scale * t, self._warp_field, cfg.warp_px * t)
        q = cfg.oversample
        if q > 1:  # fine sub-pixels: fine index i covers coarse coordinate (i - (q - 1) / 2) / q
            m = ndimage.zoom(m, (1, q, q), order=3, grid_mode=True, mode="nearest")
        k_wave = 2 * np.pi / self._lam
        wave = np.exp(-k_wave * voxel * m[1] - 1j * k_wave * voxel * m[0])
        inten = propagate(wave, geo.distances[k].propagation_distance_m, self._lam, voxel / q, self._pad * q)
        ratio = geo.scale_to_reference(k) * q
        origin = (q * self._cz_sim + (q - 1) / 2, q * (self._c_sim - cfg.cor_offset_px) + (q - 1) / 2)  # optical axis
        return _detector_sample(inten, ratio, origin, (cfg.ny, cfg.nx), cfg.detector_blur_px)

    def _project(self, theta_deg: float) -> np.ndarray:
        """Line integrals of delta and beta (voxel units) at one angle, [2, nz, n]."""
        if self._projector is None:
            self._projector = ParallelProjector(np.concatenate([self.phantom.delta, self.phantom.beta], axis=0),
                                                n_det=self._shape_sim[1], cor=self._c_sim)
        nz_sim, n_sim = self._shape_sim
        return self._projector(np.deg2rad(theta_deg)).reshape(2, nz_sim, n_sim)

    def frames(self, progress: Callable[[int, int], None] | None = None) -> Iterator[SimFrame]:
        """Draw every frame of the scan, once (the generator consumes the model's random stream).

        Parameters
        ----------
        progress : callable, optional
            Called as ``progress(done, total)`` after each angle (projections and return projections).
        """
        if getattr(self, "_drawn", False):
            raise RuntimeError("ScanModel.frames() can be drawn only once; make a new ScanModel")
        self._drawn = True
        cfg, K = self.cfg, len(self.geometry.distances)
        ones = np.ones((cfg.ny, cfg.nx))
        n_steps = cfg.n_angles + self.return_angles_deg.size
        for k in range(K):
            dark = cfg.dark_level + cfg.read_noise * self._rng.standard_normal((cfg.n_darks, cfg.ny, cfg.nx))
            for i in range(cfg.n_darks):
                yield SimFrame(k, i, DARK, DARK, 0.0, cfg.count_time_s, dark[i])
            for i in range(cfg.n_flats):
                j = cfg.n_darks + i
                yield SimFrame(k, j, FLAT, FLAT, 0.0, cfg.count_time_s, self._counts(k, ones, self._t(k, j)))
        start = cfg.n_darks + cfg.n_flats
        for i, theta in enumerate(self.angles_deg):
            maps = self._project(theta)
            for k in range(K):
                t = self._t(k, start + i)
                yield SimFrame(k, start + i, PROJECTION, PROJECTION, float(theta), cfg.count_time_s,
                               self._counts(k, self._hologram(k, maps, t), t))
            if progress:
                progress(i + 1, n_steps)
        t0 = start + cfg.n_angles
        for k in range(K):
            for i in range(cfg.n_flats):
                yield SimFrame(k, t0 + i, FLAT, FLAT, float(self.angles_deg[-1]), cfg.count_time_s,
                               self._counts(k, ones, self._t(k, t0 + i)))
        for j, theta in enumerate(self.return_angles_deg):
            maps = self._project(theta)
            for k in range(K):
                idx = t0 + cfg.n_flats + j
                t = self._t(k, idx)
                yield SimFrame(k, idx, PROJECTION, RETURN, float(theta), cfg.count_time_s,
                               self._counts(k, self._hologram(k, maps, t), t))
            if progress:
                progress(cfg.n_angles + j + 1, n_steps)

    def displacement_px(self) -> np.ndarray:
        """Lateral displacement of the sample (reference pixels; content moves by +d), ``[K, n_angles, 2]``."""
        cfg, K = self.cfg, len(self.geometry.distances)
        start = cfg.n_darks + cfg.n_flats
        return np.stack([[self.offsets_px[k] + self._drift(self._t(k, start + i)) for i in range(cfg.n_angles)]
                         for k in range(K)])

    def return_displacement_px(self) -> np.ndarray:
        """Displacement of the return projections (reference pixels), ``[K, n_returns, 2]`` (quality tests)."""
        cfg, K = self.cfg, len(self.geometry.distances)
        t0 = cfg.n_darks + 2 * cfg.n_flats + cfg.n_angles
        return np.stack([[self.offsets_px[k] + self._drift(self._t(k, t0 + j)) for j in range(self.return_angles_deg.size)]
                         for k in range(K)]).reshape(K, self.return_angles_deg.size, 2)

    def write_truth(self, out: str | Path) -> Path:
        """Write ``truth.h5`` (ground truth on the reference reconstruction grid and the simulation record).

        The file is written under a temporary name and renamed, so a folder watcher never sees it half-written.
        """
        cfg, phantom = self.cfg, self.phantom
        # Ground truth on the reference reconstruction grid: rows of the reference detector, an nx x nx slice
        # centred on the rotation axis.
        z0 = self._margin
        x0 = int(round(self._c_sim - (cfg.nx - 1) / 2))
        crop = (slice(z0, z0 + cfg.ny), slice(x0, x0 + cfg.nx), slice(x0, x0 + cfg.nx))
        truth_file = Path(out) / TRUTH_FILE
        part = truth_file.with_name(truth_file.name + ".part")
        sample = phantom.sample[crop]
        record = {"config": asdict(cfg), "offsets_px": self.offsets_px.tolist(), "cor_px": self.cor_px,
                  "delta_beta": float(phantom.delta[crop][sample].sum()
                                      / max(phantom.beta[crop][sample].sum(), 1e-30)),
                  "voxel_m": self._voxel,
                  "sign_convention": "n = 1 - delta + i beta; phase = -k * integral(delta)"}
        # Voxels seen at every angle: the cylinder inscribed in the reference field of view.
        yy, xx = np.mgrid[0 : cfg.nx, 0 : cfg.nx] - (cfg.nx - 1) / 2
        seen = np.hypot(yy, xx) <= (cfg.nx - 1) / 2 - abs(cfg.cor_offset_px) - cfg.drift_px - 1
        with h5py.File(part, "w") as f:
            for name in ("delta", "beta", "labels", "membrane", "mito", "nucleus", "sample"):
                f.create_dataset(name, data=getattr(phantom, name)[crop], compression="gzip")
            f.create_dataset("field_of_view", data=np.broadcast_to(seen, (cfg.ny, cfg.nx, cfg.nx)),
                             compression="gzip")
            f.create_dataset("displacement_px", data=self.displacement_px())  # [K, n_angles, (dy, dx)]
            f.create_dataset("angles_deg", data=self.angles_deg)
            f.create_dataset("return_displacement_px", data=self.return_displacement_px())  # [K, n_returns, 2]
            f.create_dataset("return_angles_deg", data=self.return_angles_deg)
            f["delta"].attrs["voxel_m"] = self._voxel
            f.attrs["record"] = json.dumps(record)
        part.replace(truth_file)
        return truth_file


def simulate_scan(out: str | Path, cfg: SimulationConfig | None = None, phantom: Phantom | None = None,
                  progress: Callable[[int, int], None] | None = None) -> SimulatedScan:
    """Write a simulated multi-distance scan and its ground truth into folder ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder (created). Receives one ``{name}_{k}_.nx`` NXtomo file per distance and
        ``truth.h5`` (delta, beta, labels on the reference reconstruction grid, and the simulation record).
    cfg : SimulationConfig, optional
        Parameters; defaults give a small, moderately noisy scan.
    phantom : Phantom, optional
        A phantom on the grid of :func:`simulation_grid`; generated from ``cfg.seed`` if omitted.
    progress : callable, optional
        Called as ``progress(done, total)`` after each angle.

    Returns
    -------
    SimulatedScan
    """
    model = ScanModel(cfg, phantom)
    cfg = model.cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    geo = model.geometry
    files = [out / f"{cfg.name}_{k + 1}_.nx" for k in range(len(geo.distances))]
    writers = [NXtomoWriter(files[k], (cfg.ny, cfg.nx), geo.distances[k], dtype=cfg.detector_dtype)
               for k in range(len(geo.distances))]
    try:
        for fr in model.frames(progress):
            writers[fr.distance].append(fr.counts, fr.image_key, fr.angle_deg, fr.count_time_s,
                                        image_key_control=fr.image_key_control)
    finally:
        for w in writers:
            w.close()
    truth_file = model.write_truth(out)
    return SimulatedScan(out, files, truth_file, cfg, model.offsets_px, model.cor_px)


def read_truth(folder: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read the ground truth and simulation record written by :func:`simulate_scan`."""
    with h5py.File(Path(folder) / TRUTH_FILE, "r") as f:
        return {k: f[k][()] for k in f}, json.loads(f.attrs["record"])
