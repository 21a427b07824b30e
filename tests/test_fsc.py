"""FSC and edge-fit resolution against analytic expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from xnh_stream.physics.fsc import (
    FWHM_PER_SIGMA,
    edge_resolution,
    fourier_shell_correlation,
    half_bit_threshold,
    half_volume_resolution,
    resolution_from_fsc,
)


def _gaussian_blurred_noise(shape, sigma, rng) -> np.ndarray:
    """White noise of unit variance blurred exactly (periodically) by a Gaussian of ``sigma`` voxels."""
    white = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    f2 = sum(f**2 for f in freqs)  # cycles / voxel, squared
    axes = tuple(range(len(shape)))
    return np.fft.irfftn(np.fft.rfftn(white) * np.exp(-2 * np.pi**2 * sigma**2 * f2), s=shape, axes=axes)


def test_identical_halves_correlate_perfectly():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 48, 36)).astype(np.float32)
    freq, fsc, n = fourier_shell_correlation(v, v)
    assert freq[0] == 0 and freq[-1] == pytest.approx(1.0)
    assert np.all(np.abs(fsc - 1) < 1e-5)
    res = resolution_from_fsc(freq, fsc, n, voxel_m=50e-9)
    assert res.limited_by_sampling and res.resolution_m == 50e-9 and res.crossing_freq is None


def test_shell_counts_and_values_match_a_full_complex_fft():
    """Half-spectrum bookkeeping (odd and even last axes) equals the two-sided sums."""
    rng = np.random.default_rng(1)
    for shape in [(24, 30, 17), (32, 32, 32), (64, 50)]:
        a = rng.standard_normal(shape)
        b = a + rng.standard_normal(shape)
        shells = min(shape) // 2
        freq, fsc, n = fourier_shell_correlation(a, b, apodize=False)
        grids = np.meshgrid(*[np.fft.fftfreq(k) / 0.5 for k in shape], indexing="ij")
        idx = np.rint(np.sqrt(sum(g**2 for g in grids)) * shells).astype(int).ravel()
        keep = idx <= shells
        f1, f2 = np.fft.fftn(a).ravel()[keep], np.fft.fftn(b).ravel()[keep]
        cnt = np.bincount(idx[keep], minlength=shells + 1)
        cross = np.bincount(idx[keep], (f1 * f2.conj()).real, minlength=shells + 1)
        p1 = np.bincount(idx[keep], np.abs(f1) ** 2, minlength=shells + 1)
        p2 = np.bincount(idx[keep], np.abs(f2) ** 2, minlength=shells + 1)
        np.testing.assert_array_equal(n, cnt)
        np.testing.assert_allclose(fsc, cross / np.sqrt(p1 * p2), atol=1e-5)


@pytest.mark.parametrize("shape", [(24, 30, 17), (40, 33)])
def test_apodised_fsc_equals_apodising_first(shape):
    """The compiled separable apodisation equals the array-module one (window volume, weighted mean)."""
    from xnh_stream.physics.fsc import _apodise

    rng = np.random.default_rng(6)
    a = (rng.standard_normal(shape) + 3.0).astype(np.float32)
    b = (a + rng.standard_normal(shape)).astype(np.float32)
    _, ours, _ = fourier_shell_correlation(a, b, apodize=0.3)
    _, ref, _ = fourier_shell_correlation(_apodise(a, 0.3, np), _apodise(b, 0.3, np), apodize=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_independent_noise_gives_no_correlation():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((48, 48, 48))
    b = rng.standard_normal((48, 48, 48))
    freq, fsc, n = fourier_shell_correlation(a, b)
    sel = n >= 50
    # Std of the FSC of independent noise is ~1/sqrt(n / 2) (half the voxels are independent).
    assert np.all(np.abs(fsc[sel]) < 5 / np.sqrt(n[sel] / 2))
    assert abs(np.mean(fsc[sel])) < 0.02


def test_half_bit_threshold_values():
    assert half_bit_threshold(1) == pytest.approx(2.1173 / 2.1173, rel=1e-4)
    assert half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    with pytest.raises(ValueError):
        half_bit_threshold(0)


def test_crossing_is_interpolated_linearly():
    freq = np.linspace(0, 1, 51)
    n = np.full(51, 10**12)
    t_inf = float(half_bit_threshold(10**12))
    res = resolution_from_fsc(freq, 1.0 - freq, n, voxel_m=100e-9)
    assert res.crossing_freq == pytest.approx(1 - t_inf, abs=1e-9)
    assert res.resolution_m == pytest.approx(100e-9 / (1 - t_inf), rel=1e-9)
    assert not res.limited_by_sampling
    # A dip below the threshold at the lowest frequencies is ignored (min_freq).
    fsc = 1.0 - freq
    fsc[1] = 0.0
    assert resolution_from_fsc(freq, fsc, n, 100e-9, min_freq=0.05).crossing_freq == pytest.approx(1 - t_inf)
    with pytest.raises(ValueError, match="equal length"):
        resolution_from_fsc(freq, fsc[:-1], n, 1e-7)


@pytest.mark.parametrize(("shape", "sigma", "snr0"), [((64, 64, 64), 1.2, 10.0), ((256, 256), 1.5, 30.0)])
def test_resolution_matches_analytic_blur_plus_noise(shape, sigma, snr0):
    """Blurred white signal + independent white noise in each half.

    Expected FSC(f) = SNR(f) / (1 + SNR(f)), SNR(f) = S exp(-4 pi^2 sigma^2 f^2) / N (f in cycles /
    voxel), crossing the half-bit curve of the same shells.
    """
    rng = np.random.default_rng(3)
    signal = _gaussian_blurred_noise(shape, sigma, rng)
    # Power per Fourier voxel of the blurred unit white noise at f is exp(-4 pi^2 sigma^2 f^2):
    # add white noise of variance 1 / snr0 so that S / N = snr0.
    noise_sd = 1.0 / math.sqrt(snr0)
    h1 = signal + noise_sd * rng.standard_normal(shape)
    h2 = signal + noise_sd * rng.standard_normal(shape)
    voxel = 40e-9
    measured = half_volume_resolution(h1.astype(np.float32), h2.astype(np.float32), voxel)

    freq, n = measured.freq, measured.n_voxels
    snr = snr0 * np.exp(-4 * np.pi**2 * sigma**2 * (freq / 2) ** 2)
    expected = resolution_from_fsc(freq, snr / (1 + snr), n, voxel)
    assert not expected.limited_by_sampling and 0.2 < expected.crossing_freq < 0.9
    assert measured.resolution_m == pytest.approx(expected.resolution_m, rel=0.15)


def test_fsc_validates_input():
    with pytest.raises(ValueError, match="shape"):
        fourier_shell_correlation(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match="NaN"):
        fourier_shell_correlation(np.full((8, 8), np.nan), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="2D"):
        fourier_shell_correlation(np.zeros(16), np.zeros(16))


# --------------------------------------------------------------------------------------------------
# Edge fit
# --------------------------------------------------------------------------------------------------
def _blurred_edge_image(shape, point, normal, sigma, lo=1.0, hi=3.0) -> np.ndarray:
    """Exact Gaussian-blurred step across the plane through ``point`` with ``normal`` (``lo`` to ``hi``)."""
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    d = sum((g - p) * c for g, p, c in zip(grids, point, normal))
    return lo + (hi - lo) * 0.5 * (1 + erf(d / (math.sqrt(2) * sigma)))


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_edge_fit_recovers_blur_2d(sigma):
    rng = np.random.default_rng(4)
    normal = (math.sin(0.4), math.cos(0.4))  # (y, x) components: a tilted edge
    img = _blurred_edge_image((80, 90), (40.0, 44.3), normal, sigma)
    img += rng.normal(0, 0.02, img.shape)
    voxel = 30e-9
    given = edge_resolution(img, voxel, point=(40.0, 44.3), normal=normal)
    auto = edge_resolution(img, voxel)
    for fit in (given, auto):
        assert fit.sigma_m == pytest.approx(sigma * voxel, rel=0.10)
        assert fit.resolution_m == pytest.approx(FWHM_PER_SIGMA * fit.sigma_m)
        assert fit.amplitude == pytest.approx(1.0, rel=0.05)  # (hi - lo) / 2
    assert abs(abs(np.dot(auto.normal, normal)) - 1) < 0.01


def test_edge_fit_3d_and_1d_profile():
    rng = np.random.default_rng(5)
    normal = np.array([0.3, -0.5, 0.8])
    vol = _blurred_edge_image((40, 40, 40), (20.0, 19.5, 20.2), normal, 1.8)
    vol += rng.normal(0, 0.03, vol.shape)
    fit = edge_resolution(vol, 1.0)
    assert fit.sigma_m == pytest.approx(1.8, rel=0.10)
    x = np.arange(60.0)
    prof = 5 - 2 * erf((x - 31.7) / (math.sqrt(2) * 3.0)) + rng.normal(0, 0.01, x.size)
    fit1 = edge_resolution(prof, 2.0)
    assert fit1.sigma_m == pytest.approx(6.0, rel=0.10) and fit1.x0 == pytest.approx(31.7, abs=0.1)
    with pytest.raises(ValueError, match="normal"):
        edge_resolution(vol, 1.0, point=(20, 20, 20), normal=(0, 0, 0))


def test_the_tukey_window_is_scipys():
    """physics/fsc.tukey writes out scipy.signal.windows.tukey (whose import costs 0.5 s a process)."""
    from scipy.signal.windows import tukey as scipy_tukey

    from xnh_stream.physics.fsc import tukey, tukey_window

    for n in (1, 2, 3, 4, 5, 16, 17, 64, 101, 512):
        for alpha in (0.0, 0.1, 0.25, 0.5, 0.99, 1.0, 1.5):
            np.testing.assert_allclose(tukey(n, alpha), scipy_tukey(n, alpha), rtol=0, atol=1e-15,
                                       err_msg=f"n={n} alpha={alpha}")
    assert tukey_window(64, 0.5).dtype == np.float32 and not tukey_window(64, 0.5).flags.writeable
