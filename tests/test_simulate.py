"""The simulator against analytic optics: weak phase grating (sign and Talbot behaviour), a sphere."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.physics.geometry import wavelength_m
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.io.nxtomo import RETURN
from xnh_stream.simulate.phantom import Phantom
from xnh_stream.simulate.scan import SimulationConfig, propagate, simulate_scan, simulation_grid

LAM = wavelength_m(17.0)
PIX = 100e-9


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_weak_phase_grating_contrast_and_sign(fraction):
    """I(x) = 1 + 2 sin(pi lambda D / P^2) phi0 cos(2 pi x / P) for a weak grating phi0 cos(2 pi x / P).

    With phi0 < 0 (matter retards the wave, phi = -k delta t) the fringe is dark over the ridges at small
    D, vanishes at the Talbot half-distance D = P^2 / lambda, and at D = P^2 / (2 lambda) has its largest
    contrast.
    """
    period_px = 16
    p = period_px * PIX
    d = fraction * p**2 / LAM
    n = 128
    x = np.arange(n)
    phi0 = -0.01
    wave = np.exp(1j * phi0 * np.cos(2 * np.pi * x / period_px))[None, :].repeat(16, axis=0)
    inten = propagate(wave, d, LAM, PIX, pad=0)[8]  # periodic grid, whole periods: exact
    measured = 2 * np.mean((inten - 1) * np.cos(2 * np.pi * x / period_px))  # Fourier coefficient
    expected = 2 * np.sin(np.pi * LAM * d / p**2) * phi0
    assert measured == pytest.approx(expected, abs=2e-4 + 0.02 * abs(expected))
    if fraction == 1.0:
        assert abs(measured) < 1e-3  # Talbot: a pure phase grating is invisible again
    if fraction == 0.5:
        assert measured < 0 and abs(measured) > 0.019  # maximum contrast, dark on the ridges


def test_intensity_is_conserved_by_propagation():
    rng = np.random.default_rng(0)
    phase = rng.normal(0, 0.3, (64, 64))
    wave = np.exp(1j * phase) * 0.9
    inten = propagate(wave, 0.01, LAM, PIX, pad=64)
    assert inten.mean() == pytest.approx(0.81, rel=0.02)


def _sphere_phantom(cfg: SimulationConfig, radius_px: float, delta: float, beta: float) -> Phantom:
    nz, n, _ = simulation_grid(cfg)
    z, y, x = np.mgrid[0:nz, 0:n, 0:n].astype(np.float32)
    r = np.sqrt((z - (nz - 1) / 2) ** 2 + (y - (n - 1) / 2) ** 2 + (x - (n - 1) / 2) ** 2)
    inside = r <= radius_px
    zeros = np.zeros(inside.shape, bool)
    return Phantom(delta=np.where(inside, delta, 0).astype(np.float32),
                   beta=np.where(inside, beta, 0).astype(np.float32), labels=inside.astype(np.int32),
                   membrane=zeros, mito=zeros, nucleus=zeros, sample=inside, voxel_m=cfg.geometry().voxel_m,
                   energy_kev=cfg.energy_kev, material=inside.astype(np.uint8), cell_ids=(), material_names=())


def test_sphere_through_the_detector_chain_gives_its_thickness(tmp_path):
    """Simulated frames of a homogeneous sphere, flat-fielded and Paganin-retrieved, give 2 sqrt(R^2 - r^2)."""
    from xnh_stream.physics.phase import retrieve_phase_paganin

    cfg = SimulationConfig(nx=96, ny=64, n_angles=2, photons=1e6, offset_px=0, drift_px=0, cor_offset_px=0,
                           beam_drift=0, detector_blur_px=0, read_noise=0, n_flats=3, n_darks=2)
    radius, delta, beta = 20.0, 1e-6, 1e-8
    sim = simulate_scan(tmp_path, cfg, phantom=_sphere_phantom(cfg, radius, delta, beta))
    d = ScanIndex.read(sim.folder).distances[0]
    frame = d.projections[0].read()
    flat = np.mean([r.read() for r in d.flats], axis=0)
    dark = np.mean([r.read() for r in d.darks], axis=0)
    phi = retrieve_phase_paganin((frame - dark) / (flat - dark), d.geometry, delta / beta)
    thickness = -phi / (2 * np.pi / LAM * delta) / cfg.geometry().voxel_m  # voxels
    yy, xx = np.mgrid[0:64, 0:96]
    rho = np.hypot(yy - 31.5, xx - 47.5)
    inner = rho < 0.7 * radius
    expected = 2 * np.sqrt(radius**2 - rho[inner] ** 2)
    np.testing.assert_allclose(thickness[inner], expected, rtol=0.06)
    assert abs(thickness[rho > radius + 6]).max() < 1.5  # air around it


def test_scan_layout_and_noise(tmp_path):
    cfg = SimulationConfig(nx=64, ny=24, n_angles=12, photons=8000, beam_drift=0)
    sim = simulate_scan(tmp_path, cfg)
    index = ScanIndex.read(sim.folder)
    assert len(index.distances) == 4 and index.rejected == [] and index.rejected_files == []
    geo = cfg.geometry()
    for d, g in zip(index.distances, geo.distances):
        assert d.geometry.z1_m == pytest.approx(g.z1_m) and d.geometry.z2_m == pytest.approx(g.z2_m)
        assert len(d.projections) == 12
        np.testing.assert_allclose([r.rotation_angle_deg for r in d.returns], cfg.return_angles_deg)
        assert all(r.image_key_control == RETURN for r in d.returns)
        flats = np.stack([r.read() for r in d.flats]) - cfg.dark_level
        centre = flats[:, 8:16, 24:40]
        # Poisson statistics: the variance over repeated flats equals the mean (plus read noise)
        var = centre.var(axis=0, ddof=1).mean()
        assert var == pytest.approx(centre.mean() + cfg.read_noise**2, rel=0.15)
        assert 0.6 * cfg.photons < centre.mean() < 1.4 * cfg.photons
    assert sim.truth_file.exists()


def test_bad_simulation_parameters_are_rejected():
    with pytest.raises(ValueError, match="z1"):
        SimulationConfig(z1_m=(0.0, 0.1)).validate()
    with pytest.raises(ValueError, match="detector too small"):
        SimulationConfig(nx=4).validate()
    with pytest.raises(ValueError, match="pixel_m"):
        SimulationConfig(pixel_m=-1.0).validate()  # the geometry itself is checked too
