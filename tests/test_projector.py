"""Forward projector against analytic line integrals and scikit-image's radon."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import radon

from xnh_stream.physics.projector import ParallelProjector, forward_project, project_angle


def _disk_slice(n: int, r: float, x0: float = 0.0, y0: float = 0.0, sub: int = 8) -> np.ndarray:
    """Partial-volume disk (area fraction by ``sub x sub`` supersampling), ``[1, n, n]``."""
    off = (np.arange(sub) + 0.5) / sub - 0.5
    c = (n - 1) / 2.0
    y = np.arange(n)[:, None, None, None] - c + off[None, None, :, None]
    x = np.arange(n)[None, :, None, None] - c + off[None, None, None, :]
    inside = (x - x0) ** 2 + (y - y0) ** 2 <= r**2
    return inside.mean(axis=(2, 3)).astype(np.float32)[None]


def _ball(shape: tuple[int, int, int], r: float) -> np.ndarray:
    """Ball with a linear partial-volume rim: value clip(r + 0.5 - |p|, 0, 1)."""
    z, y, x = (np.arange(s) - (s - 1) / 2.0 for s in shape)
    rr = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    return np.clip(r + 0.5 - rr, 0, 1).astype(np.float32)


ANGLES = np.deg2rad([0.0, 17.0, 45.0, 90.0, 123.4, 180.0, 251.0])


def test_uniform_disk_matches_chord_length():
    r = 30.0
    vol = _disk_slice(97, r)
    sino = forward_project(vol, ANGLES)
    t = np.arange(97) - 48.0
    expect = 2 * np.sqrt(np.clip(r**2 - t**2, 0, None))
    # bilinear sampling blurs by about a pixel: compare where the chord's curvature is mild
    core = np.abs(t) < r - 3
    for p in sino[:, 0]:
        assert np.max(np.abs(p[core] - expect[core]) / expect[core]) < 0.01
        assert np.all(p[np.abs(t) > r + 1.5] < 1e-6)


def test_off_centre_disk_lands_at_x_cos_plus_y_sin():
    x0, y0, n_det, cor = 15.0, -9.0, 120, 50.3
    vol = _disk_slice(81, 4.0, x0=x0, y0=y0)
    sino = forward_project(vol, ANGLES, n_det=n_det, cor=cor)
    j = np.arange(n_det)
    for th, p in zip(ANGLES, sino[:, 0]):
        centre = np.sum(j * p) / np.sum(p)
        assert centre == pytest.approx(x0 * np.cos(th) + y0 * np.sin(th) + cor, abs=0.03)
        assert p.max() == pytest.approx(8.0, rel=0.03)  # chord through the centre = diameter


def test_sphere_projection_is_two_sqrt_r2_minus_rho2():
    shape, r = (48, 64, 64), 20.0
    vol = _ball(shape, r)
    for th in (0.3, 1.9):
        p = project_angle(vol, th)
        z = np.arange(shape[0]) - (shape[0] - 1) / 2.0
        t = np.arange(shape[2]) - (shape[2] - 1) / 2.0
        rho2 = z[:, None] ** 2 + t[None, :] ** 2
        expect = 2 * np.sqrt(np.clip(r**2 - rho2, 0, None))
        core = rho2 < (r - 2) ** 2
        assert np.max(np.abs(p[core] - expect[core]) / expect[core]) < 0.03
        assert np.all(p[rho2 > (r + 1.5) ** 2] < 1e-6)


def test_mass_is_conserved_at_every_angle():
    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.random((6, 72, 80)), 2.0).astype(np.float32)
    yy, xx = np.mgrid[:72, :80]
    vol *= ((yy - 35.5) ** 2 + (xx - 39.5) ** 2 < 33**2)[None]
    thetas = np.linspace(0, np.pi, 13)
    sino = forward_project(vol, thetas, n_det=110)
    sums = sino.sum(axis=2)  # [angle, z]
    np.testing.assert_allclose(sums, np.broadcast_to(vol.sum(axis=(1, 2)), sums.shape), rtol=0.01)


def test_agrees_with_scikit_image_radon():
    """skimage ``radon`` at angle ``a`` (degrees) rotates the image so that
    ``tau = x cos(a) - y sin(a)`` with x = column, y = row from the centre ``n // 2``:
    that is our projection at ``theta = -radians(a)`` with ``cor = n // 2`` (odd ``n``)."""
    n = 65
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    img = np.exp(-((xx - 10) ** 2 + (yy + 6) ** 2) / 8.0) + 0.3 * (xx**2 + yy**2 < 20**2)
    img += 0.2 * ndimage.gaussian_filter(np.random.default_rng(1).random((n, n)), 1.5)
    img[xx**2 + yy**2 > 30**2] = 0
    angles_deg = np.array([0.0, 30.0, 77.0, 135.0, 212.0])
    ref = radon(img, angles_deg, circle=True, preserve_range=True)  # [n, angle]
    ours = forward_project(img[None].astype(np.float32), -np.deg2rad(angles_deg), cor=n // 2)[:, 0]
    np.testing.assert_allclose(ours, ref.T, atol=1e-4 * ref.max())


def test_slices_are_independent_and_stacking_matches():
    rng = np.random.default_rng(0)
    vol = rng.random((3, 40, 50)).astype(np.float32)
    sino = forward_project(vol, ANGLES[:3], n_det=60, cor=28.0)
    assert sino.shape == (3, 3, 60) and sino.dtype == np.float32
    for i, th in enumerate(ANGLES[:3]):
        np.testing.assert_allclose(sino[i], project_angle(vol, th, 60, 28.0), rtol=1e-6)
        np.testing.assert_allclose(sino[i, 1], project_angle(vol[1:2], th, 60, 28.0)[0], rtol=1e-6)


def test_prepared_projector_stacks_volumes_along_z():
    rng = np.random.default_rng(5)
    a = rng.random((4, 30, 36)).astype(np.float32)
    b = rng.random((4, 30, 36)).astype(np.float32)
    proj = ParallelProjector(np.concatenate([a, b]), n_det=44, cor=21.7)
    for th in (0.4, 2.2, 0.4):
        both = proj(th)
        assert both.shape == (8, 44)
        np.testing.assert_allclose(both[:4], project_angle(a, th, 44, 21.7), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(both[4:], project_angle(b, th, 44, 21.7), rtol=1e-6, atol=1e-6)


def test_bad_input_is_rejected():
    good = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="3-D"):
        project_angle(np.zeros((8, 8)), 0.0)
    bad = good.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        forward_project(bad, [0.0])
    with pytest.raises(ValueError, match="n_det"):
        project_angle(good, 0.0, n_det=0)
    with pytest.raises(ValueError, match="thetas"):
        forward_project(good, [0.0, np.nan])
    with pytest.raises(ValueError, match="theta"):
        project_angle(good, np.inf)


def test_compiled_projector_equals_the_sparse_ray_matrix():
    """The CPU kernel sums the same samples with the same weights as the sparse matrix product."""
    from xnh_stream.physics.projector import ray_matrix

    rng = np.random.default_rng(11)
    vol = rng.random((5, 30, 37)).astype(np.float32)
    proj = ParallelProjector(vol, n_det=45, cor=20.3, workers=2)
    cols = vol.reshape(5, -1).T
    for th in (0.0, 0.37, 1.9, 4.4):
        ref = (ray_matrix(th, 30, 37, 45, 20.3) @ cols).T
        np.testing.assert_allclose(proj(th), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
