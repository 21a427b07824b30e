"""Flat-field correction against synthetic beams whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.physics.flatfield import DEAD_PIXEL_VALUE, FlatInterpolator, PCAFlats, flat_field

NY, NX = 128, 160


def _beam(rng: np.random.Generator, ny: int = NY, nx: int = NX) -> np.ndarray:
    """Gaussian beam envelope times fine 'mirror' speckle, in counts."""
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    env = np.exp(-(((y - ny / 2) / (0.7 * ny)) ** 2) - ((x - nx / 2) / (0.7 * nx)) ** 2)
    speckle = 1 + 0.08 * ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 1.5) / 0.19
    return 4000.0 * env * speckle


def _sample(rng: np.random.Generator, ny: int = NY, nx: int = NX) -> np.ndarray:
    """Transmission that fills the field of view: mean ~0.85, fine texture."""
    tex = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 2.0)
    return 0.85 * (1 + 0.15 * tex / tex.std())


def test_flat_field_recovers_transmission_exactly() -> None:
    rng = np.random.default_rng(0)
    dark = 100 + 5 * rng.random((NY, NX))
    flat = dark + _beam(rng)
    t = _sample(rng)
    frame = dark + t * (flat - dark)
    out = flat_field(frame, dark, flat)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, t, rtol=2e-6, atol=2e-6)
    # stacks broadcast against one dark / flat
    out3 = flat_field(np.stack([frame, dark + 0.5 * (flat - dark)]), dark, flat)
    np.testing.assert_allclose(out3[1], 0.5, rtol=1e-5)
    # a scalar dark is accepted
    np.testing.assert_allclose(flat_field(100 + t * 1000, 100.0, np.full((NY, NX), 1100.0)), t, rtol=1e-5)


def test_flat_field_dead_pixels_and_bad_input() -> None:
    dark = np.full((8, 8), 100.0)
    flat = np.full((8, 8), 1100.0)
    flat[2, 3] = 100.0  # flat == dark: no signal
    flat[5, 5] = 50.0  # flat below dark
    frame = np.full((8, 8), 600.0)
    out = flat_field(frame, dark, flat)
    assert out[2, 3] == DEAD_PIXEL_VALUE and out[5, 5] == DEAD_PIXEL_VALUE
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.delete(out.ravel(), [2 * 8 + 3, 5 * 8 + 5]), 0.5)
    bad = frame.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="frame.*NaN"):
        flat_field(bad, dark, flat)
    with pytest.raises(ValueError, match="flat.*NaN"):
        flat_field(frame, dark, np.where(flat > 1000, np.nan, flat))
    with pytest.raises(ValueError, match="flat shape"):
        flat_field(frame, dark, flat[:, :7])
    with pytest.raises(ValueError, match="dark shape"):
        flat_field(frame, dark[:7], flat)


def test_flat_interpolator_follows_linear_drift() -> None:
    """Beam drifting linearly in time (intensity decay + moving gradient): the interpolated
    flat corrects exactly, the flat of the first series does not."""
    rng = np.random.default_rng(1)
    dark = np.full((NY, NX), 90.0)
    beam0 = _beam(rng)
    x = np.arange(NX) / NX
    drift = 1 - 0.15 * x[None, :]  # after 1000 frames: 15 % less on the right-hand side

    def beam_at(t: float) -> np.ndarray:
        return beam0 * (1 + (drift - 1) * t / 1000.0)

    interp = FlatInterpolator.from_series(
        [(1000.0, np.stack([dark + beam_at(1000.0)] * 3)), (0.0, np.stack([dark + beam_at(0.0)] * 3))]
    )
    t_obj = _sample(rng)
    for t in (0.0, 250.0, 640.0, 1000.0):
        frame = dark + t_obj * beam_at(t)
        np.testing.assert_allclose(interp.correct(frame, t, dark), t_obj, rtol=1e-4)
    stale = flat_field(dark + t_obj * beam_at(640.0), dark, interp.flat_at(0.0))
    assert np.abs(stale / t_obj - 1).max() > 0.08  # the drift is real and visible without interpolation
    # clamped outside the series
    np.testing.assert_array_equal(interp.flat_at(-50.0), interp.flat_at(0.0))
    np.testing.assert_array_equal(interp.flat_at(5000.0), interp.flat_at(1000.0))
    with pytest.raises(ValueError, match="duplicate"):
        FlatInterpolator([1.0, 1.0], [beam0, beam0])
    with pytest.raises(ValueError, match="positions"):
        FlatInterpolator([1.0], [beam0, beam0])


def test_pca_flats_remove_two_mode_beam_fluctuation() -> None:
    """Beam = mean + a*mode1 + b*mode2 (horizontal beam motion, vertical intensity tilt), with
    Poisson noise; the sample fills the field of view. PCA flats fitted on low frequencies
    leave far less beam structure than the mean flat."""
    rng = np.random.default_rng(2)
    dark = np.full((NY, NX), 100.0)
    beam = _beam(rng)
    mode1 = np.gradient(beam, axis=1) * 2.0  # beam moving sideways by ~2 px
    y = (np.arange(NY) - NY / 2)[:, None] / NY
    mode2 = beam * 0.2 * y  # vertical intensity tilt, +-10 %

    def flat_with(a: float, b: float) -> np.ndarray:
        return beam + a * mode1 + b * mode2

    flats = np.stack([rng.poisson(dark + flat_with(*rng.standard_normal(2))) for _ in range(24)])
    pca = PCAFlats(flats, dark, n_components=2)
    assert pca.n_components == 2

    res_pca, res_mean, err_pca, err_mean = [], [], [], []
    mean_flat = flats.mean(axis=0)
    for _ in range(4):
        a, b = 1.5 * rng.standard_normal(2)
        t_obj = _sample(rng)
        truth_beam = flat_with(a, b)
        frame = rng.poisson(dark + t_obj * truth_beam).astype(np.float64)
        # residual beam structure = corrected / true transmission - 1, low-passed to separate
        # it from the (identical) photon noise of both corrections
        for corr, store in ((pca.correct(frame), res_pca), (flat_field(frame, dark, mean_flat), res_mean)):
            resid = ndimage.gaussian_filter(corr / t_obj - 1, 2.0)[8:-8, 8:-8]
            store.append(resid.std())
        err_pca.append(np.std(pca.flat_for(frame) / truth_beam - 1))
        err_mean.append(np.std((mean_flat - dark) / truth_beam - 1))
    print("residual beam structure pca / mean flat:", np.mean(res_pca), np.mean(res_mean))
    assert np.mean(res_pca) < 0.25 * np.mean(res_mean), (res_pca, res_mean)
    # the fitted flat itself is close to the true beam (photon noise of the flats included)
    assert np.mean(err_pca) < 0.3 * np.mean(err_mean), (err_pca, err_mean)


def test_pca_flats_bad_input() -> None:
    with pytest.raises(ValueError, match="stack"):
        PCAFlats(np.ones((1, 8, 8)), 0.0)
    pca = PCAFlats(np.random.default_rng(0).poisson(1000, (5, 16, 16)), 0.0, bin_px=2, sigma_px=2)
    with pytest.raises(ValueError, match="shape"):
        pca.correct(np.ones((16, 15)))
    with pytest.raises(ValueError, match="NaN"):
        pca.correct(np.full((16, 16), np.nan))
