"""Two-material CTF: the sample envelope (support, its projections) and the retrieval with it."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.physics.envelope import SampleEnvelope, estimate_support
from xnh_stream.physics.phase import CTFRetriever
from xnh_stream.simulate.scan import SimulationConfig


def cylinder_phantom(n: int = 64, rows: int = 8, radius: float = 24.0, seed: int = 0) -> np.ndarray:
    """A cylinder (axis along the rows) of delta 1 with denser and lighter blobs inside."""
    rng = np.random.default_rng(seed)
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    inside = np.hypot(yy - c, xx - c) <= radius
    vol = np.zeros((rows, n, n), np.float32)
    vol[:, inside] = 1.0
    for _ in range(12):
        y, x = rng.uniform(c - radius / 2, c + radius / 2, 2)
        blob = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2))
        vol += (rng.uniform(-0.3, 0.3) * blob * inside).astype(np.float32)
    return vol


def test_support_of_a_stained_cylinder_in_air():
    vol = cylinder_phantom()
    vol += np.random.default_rng(1).normal(0, 0.05, vol.shape).astype(np.float32)  # reconstruction noise
    truth = cylinder_phantom() > 0.5
    support = estimate_support(vol)
    assert support is not None
    iou = (support & truth).sum() / (support | truth).sum()
    assert iou > 0.97
    # a sample wider than the field of view has no envelope, nor has an empty one
    assert estimate_support(np.ones((4, 64, 64), np.float32) + np.random.default_rng(2).normal(
        0, 0.01, (4, 64, 64)).astype(np.float32)) is None
    assert estimate_support(np.zeros((4, 64, 64), np.float32)) is None
    with pytest.raises(ValueError, match="3-D"):
        estimate_support(np.zeros((64, 64), np.float32))


@pytest.mark.parametrize("binning", [1, 2])
def test_envelope_projection_is_the_chord_of_the_cylinder(binning):
    n, rows, radius, delta = 64, 8, 24.0, 2e-6
    cor = (n - 1) / 2 + 1.5  # an off-centre axis: the cylinder is centred on it
    nb = n // binning
    c_b = (nb - 1) / 2
    yy, xx = np.mgrid[:nb, :nb]
    support = np.broadcast_to(np.hypot(yy - c_b, xx - c_b) <= radius / binning, (rows // binning, nb, nb))
    env = SampleEnvelope(support, delta, binning, (rows, n), cor)
    x = np.arange(n) - cor
    chord = 2 * np.sqrt(np.clip(radius**2 - x**2, 0, None)) * delta
    for theta in (0.0, 0.7, 2.0):
        p = np.asarray(env.projection(theta))
        assert p.shape == (rows, n)
        inner = np.abs(x) < 0.8 * radius  # away from the sqrt edge, where the voxelised disk steps
        np.testing.assert_allclose(p[rows // 2, inner], chord[inner], rtol=0.03 * binning)  # coarser disk
        assert abs(p.sum(axis=1).mean() - chord.sum()) < 0.02 * chord.sum()
    with pytest.raises(ValueError, match="delta_mean"):
        SampleEnvelope(support, 0.0, binning, (rows, n), cor)


def test_envelope_upsampling_equals_scipy_bilinear_interpolation():
    """The separable interpolation to detector pixels equals ndimage.map_coordinates (order 1, edges
    held) applied to the binned projection."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    support = rng.random((6, 20, 20)) > 0.4
    ny, nx, b, cor = 24, 80, 4, 41.3
    env = SampleEnvelope(support, 1.5, b, (ny, nx), cor)
    for theta in (0.2, 2.5):
        coarse = np.asarray(env._projector(theta)) * b
        ry = np.clip((np.arange(ny) + 0.5) / b - 0.5, 0, coarse.shape[0] - 1)
        rx = np.clip((np.arange(nx) + 0.5) / b - 0.5, 0, coarse.shape[1] - 1)
        yy, xx = np.meshgrid(ry, rx, indexing="ij")
        ref = ndimage.map_coordinates(coarse, [yy, xx], order=1, mode="nearest")
        np.testing.assert_allclose(env.projection(theta), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_binning_for_a_target_width_and_bin_2d():
    from xnh_stream.physics.xp import bin_2d, binning_for

    assert binning_for((64, 128), 256) == 1
    assert binning_for((2048, 2048), 256) == 8
    assert binning_for((8, 2048), 256) == 2  # at least 4 rows
    a = np.arange(35, dtype=np.float32).reshape(5, 7)
    np.testing.assert_allclose(bin_2d(a, 2), [[4, 6, 8], [18, 20, 22]])  # remainder dropped
    assert bin_2d(a, 1) is a
    with pytest.raises(ValueError):
        bin_2d(a, 0)


def _linear_intensities(phi_env, phi_int, db_env, db_int, distances, wavelength, pixel):
    """First-order (CTF) intensities of a two-material object, on a periodic grid: independent of the
    retrieval code, straight from FT(I - 1) = 2 sin(chi) FT(phi) - 2 cos(chi) FT(B)."""
    ny, nx = phi_env.shape
    f2 = np.fft.fftfreq(ny, pixel)[:, None] ** 2 + np.fft.fftfreq(nx, pixel)[None, :] ** 2
    phi = np.fft.fft2(phi_env + phi_int)
    b = np.fft.fft2(-phi_env / db_env - phi_int / db_int)  # B = k int(beta) = -(beta/delta) phi per material
    out = []
    for d in distances:
        chi = np.pi * wavelength * d * f2
        out.append(1 + np.real(np.fft.ifft2(2 * np.sin(chi) * phi - 2 * np.cos(chi) * b)))
    return np.array(out, np.float32)


def test_two_material_ctf_recovers_the_stain_contrast_inside_the_envelope():
    geo = SimulationConfig().geometry()
    lam, pixel = geo.distances[0].wavelength_m, geo.voxel_m
    n, pad = 128, 128
    c = (n + 2 * pad - 1) / 2
    yy, xx = np.mgrid[: n + 2 * pad, : n + 2 * pad]
    chord = 2 * np.sqrt(np.clip(50.0**2 - (xx - c) ** 2, 0, None))  # a pin along y, 100 px wide
    k = 2 * np.pi / lam
    phi_env = -k * 1e-6 * chord * pixel  # about -1 rad across the pin
    rng = np.random.default_rng(0)
    phi_int = np.zeros_like(phi_env)
    for _ in range(40):  # stained structures: a few percent of the envelope's phase
        y, x = rng.uniform(c - 60, c + 60), rng.uniform(c - 40, c + 40)
        phi_int += rng.uniform(-0.05, 0.05) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * rng.uniform(2, 8) ** 2))
    db_env, db_int = 100.0, 11.5
    images = _linear_intensities(phi_env, phi_int, db_env, db_int, geo.propagation_distances_m, lam, pixel)
    crop = (slice(pad, pad + n), slice(pad, pad + n))
    images = images[:, crop[0], crop[1]]
    env, interior = phi_env[crop], phi_int[crop]

    two = CTFRetriever(geo, (n, n), db_int, alpha_low=0.1 * 8 / db_int**2, envelope_delta_beta=db_env)
    one = CTFRetriever(geo, (n, n), db_env, alpha_low=0.1 * 8 / db_env**2)
    m = (slice(8, -8), slice(8, -8))  # away from the padding's reach
    err_two = np.std((two(images, envelope=env) - env - interior)[m])
    err_one = np.std((one(images) - env - interior)[m])
    print(f"\ninterior phase error (rad rms): two-material {err_two:.4f}, single-material {err_one:.4f}, "
          f"interior signal {np.std(interior[m]):.4f}")
    assert err_two < 0.25 * np.std(interior[m])
    assert err_two < 0.3 * err_one
    with pytest.raises(ValueError, match="envelope_delta_beta"):
        one(images, envelope=env)
