"""Drift and warping: patch displacement fields split into rigid drift, scale change and non-rigid warp."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.quality.drift import compare_views, decompose_displacements, patch_displacements


def _texture(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (1.5, 3.0, 6.0))
    return (img / img.std()).astype(np.float32)


def _warp(img, field_yx):
    """moving(p + d(p)) = img(p), to first order: moving(q) = img(q - d(q))."""
    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    return ndimage.map_coordinates(img, [yy - field_yx[0], xx - field_yx[1]], order=3, mode="reflect")


def _field(shape, t, scale, amp, period):
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    wy = amp * np.sin(2 * np.pi * xx / period)
    wx = amp * np.cos(2 * np.pi * yy / period)
    return np.stack([t[0] + (scale - 1) * (yy - cy) + wy, t[1] + (scale - 1) * (xx - cx) + wx]), np.stack([wy, wx])


def test_decomposition_recovers_rigid_shift_scale_and_a_known_nonrigid_field():
    shape = (192, 192)
    ref = _texture(shape)
    t, scale, amp, period = (1.3, -0.7), 1.01, 0.8, 192.0
    d, w = _field(shape, t, scale, amp, period)
    mov = _warp(ref, d)
    fld = patch_displacements(ref, mov, patch_px=48, step_px=24)
    assert fld.ok.all()
    dec = decompose_displacements(fld)
    # truth at the patch centres, decomposed the same way (the sinusoid has its own small affine part)
    iy, ix = fld.positions[:, 0], fld.positions[:, 1]
    true_d = np.stack([ndimage.map_coordinates(d[i], [iy, ix], order=1) for i in range(2)], axis=1)
    a = np.zeros((2 * iy.size, 3))
    a[0::2, 0] = a[1::2, 1] = 1
    a[0::2, 2], a[1::2, 2] = iy - (shape[0] - 1) / 2, ix - (shape[1] - 1) / 2
    coef, *_ = np.linalg.lstsq(a, true_d.ravel(), rcond=None)
    true_r = (true_d.ravel() - a @ coef).reshape(-1, 2)
    true_rms = float(np.sqrt(np.mean(np.sum(true_r**2, axis=1))))
    print(f"\nrigid {dec.rigid_yx} (true {coef[:2]}), scale {dec.scale:.5f} (true {1 + coef[2]:.5f}), "
          f"non-rigid rms {dec.nonrigid_rms_px:.3f} px (true {true_rms:.3f})")
    assert dec.rigid_yx == pytest.approx(tuple(coef[:2]), abs=0.08)
    assert dec.scale == pytest.approx(1 + coef[2], abs=5e-4)
    assert dec.nonrigid_rms_px == pytest.approx(true_rms, rel=0.2)
    r = np.corrcoef(dec.residuals.ravel(), true_r.ravel())[0, 1]
    assert r > 0.9


def test_a_rigid_shift_has_no_scale_and_no_warp():
    shape = (128, 160)
    ref = _texture(shape, seed=3)
    d, _ = _field(shape, (2.4, 1.1), 1.0, 0.0, 100.0)
    dec, fld = compare_views(ref, _warp(ref, d))
    assert dec.rigid_yx == pytest.approx((2.4, 1.1), abs=0.05)
    assert abs(dec.scale - 1) < 3e-4 and dec.nonrigid_rms_px < 0.05


def test_binning_keeps_results_in_input_pixels():
    shape = (256, 256)
    ref = _texture(shape, seed=5)
    d, _ = _field(shape, (3.0, -2.0), 0.99, 0.0, 100.0)
    dec, _ = compare_views(ref, _warp(ref, d), bin_px=2)
    assert dec.rigid_yx == pytest.approx((3.0, -2.0), abs=0.15)
    assert dec.scale == pytest.approx(0.99, abs=1e-3)


def test_flat_images_give_no_decomposition_and_bad_shapes_are_refused():
    flat = np.ones((64, 64), np.float32)
    fld = patch_displacements(flat, flat)
    assert not fld.ok.any() and decompose_displacements(fld) is None
    with pytest.raises(ValueError, match="equal shape"):
        patch_displacements(flat, flat[:32])
