"""Distance alignment: rescale+shift, low-pass NCC registration, per-angle distance shifts,
smooth shift model. Inputs are simulated from an analytic phase object (Gaussian blobs),
sampled at each distance's own effective pixel with a known offset, propagated exactly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.physics.align import (
    ShiftModel,
    align_to_reference,
    measure_distance_shifts,
    register_lowpass_ncc,
    rescale_shift,
)
from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry, wavelength_m
from xnh_stream.physics.phase import retrieve_phase_ctf

ENERGY_KEV = 17.0
LAM = wavelength_m(ENERGY_KEV)
Z_TOTAL = 1.2
VOXEL = 100e-9
Z1 = (0.0120, 0.0127, 0.0139, 0.0150)  # magnifications 1, 1.06, 1.16, 1.25 times smaller
DELTA_BETA = 200.0
N = 256


def make_geometry() -> ScanGeometry:
    pixel = VOXEL * Z_TOTAL / min(Z1)
    return ScanGeometry(tuple(DistanceGeometry(z1, Z_TOTAL - z1, pixel, ENERGY_KEV) for z1 in Z1))


def make_object(rng: np.random.Generator, n_blob: int = 1500, half_width_m: float = 20e-6) -> tuple:
    centres = rng.uniform(-half_width_m, half_width_m, (n_blob, 2))
    sigmas = rng.uniform(0.15e-6, 0.5e-6, n_blob)
    amps = rng.uniform(-0.12, -0.02, n_blob)  # matter: negative phase
    return centres, sigmas, amps


def phase_on_grid(
    obj: tuple, n: int | tuple[int, int], pixel_m: float, offset_m: tuple[float, float]
) -> np.ndarray:
    """Phase at pixel centres ``(j - (n-1)/2) * pixel`` (optical axis at the centre), content
    moved by ``+offset``; separable blobs, so the sum is one matrix product."""
    c, s, a = obj
    ny, nx = (n, n) if np.isscalar(n) else n
    uy = (np.arange(ny) - (ny - 1) / 2) * pixel_m
    ux = (np.arange(nx) - (nx - 1) / 2) * pixel_m
    gy = np.exp(-((uy[None, :] - offset_m[0] - c[:, :1]) ** 2) / (2 * s[:, None] ** 2))
    gx = np.exp(-((ux[None, :] - offset_m[1] - c[:, 1:]) ** 2) / (2 * s[:, None] ** 2))
    return (gy * a[:, None]).T @ gx


def propagate(t: np.ndarray, d_m: float, pixel_m: float) -> np.ndarray:
    fy = np.fft.fftfreq(t.shape[0], pixel_m)
    fx = np.fft.fftfreq(t.shape[1], pixel_m)
    h = np.exp(-1j * np.pi * LAM * d_m * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return np.abs(np.fft.ifft2(np.fft.fft2(t) * h)) ** 2


def holograms(geom, obj, offsets_px, rng, counts=3000.0, margin=64):
    """Flat-fielded frames of every distance at its native pixel; ``offsets_px`` moves the
    sample (in reference pixels) per distance."""
    out = []
    for k, d in enumerate(geom.distances):
        pix = d.effective_pixel_m
        off = (offsets_px[k][0] * geom.voxel_m, offsets_px[k][1] * geom.voxel_m)
        phi = phase_on_grid(obj, N + 2 * margin, pix, off)
        i = propagate(np.exp(phi / DELTA_BETA + 1j * phi), d.propagation_distance_m, pix)
        i = i[margin:-margin, margin:-margin]
        out.append((rng.poisson(i * counts) / counts).astype(np.float32) if counts else i.astype(np.float32))
    return out


OFFSETS = [(0.0, 0.0), (2.3, -1.6), (-3.7, 0.45), (0.8, 4.1)]  # sample moved, reference pixels


@pytest.fixture(scope="module")
def scene() -> dict:
    rng = np.random.default_rng(3)
    geom = make_geometry()
    obj = make_object(rng)
    frames = holograms(geom, obj, OFFSETS, rng)
    return {"geom": geom, "obj": obj, "frames": frames, "rng": rng}


def test_rescale_shift_matches_analytic_sampling() -> None:
    """A smooth analytic image at a coarse pixel, magnified to the fine pixel and shifted,
    equals the same function sampled on the fine grid with the content moved."""
    rng = np.random.default_rng(0)
    obj = (rng.uniform(-12e-6, 12e-6, (60, 2)), rng.uniform(0.8e-6, 2e-6, 60), rng.uniform(-1, 1, 60))
    coarse_pix, fine_pix = 125e-9, 100e-9
    coarse = phase_on_grid(obj, 200, coarse_pix, (0.0, 0.0))
    dy, dx = 3.3, -7.25  # fine pixels
    # output grid of another shape (odd/even sizes): same optical axis at its centre
    out = rescale_shift(coarse, coarse_pix / fine_pix, (dy, dx), out_shape=(181, 190))
    truth = phase_on_grid(obj, (181, 190), fine_pix, (dy * fine_pix, dx * fine_pix))
    assert out.dtype == np.float32 and out.shape == (181, 190)
    np.testing.assert_allclose(out[10:-10, 10:-10], truth[10:-10, 10:-10], atol=2e-3 * np.abs(truth).max())
    # a shift of the wrong sign or a centre off by half a pixel would be far outside this
    wrong = phase_on_grid(obj, (181, 190), fine_pix, (-dy * fine_pix, -dx * fine_pix))
    assert np.abs(out - wrong)[10:-10, 10:-10].max() > 0.1 * np.abs(truth).max()
    # scale 1 is scipy.ndimage.shift (same content-moves-by-+shift convention)
    img = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 2)
    np.testing.assert_allclose(
        rescale_shift(img, 1.0, (1.7, -0.4))[12:-12, 12:-12],
        ndimage.shift(img, (1.7, -0.4), order=3, mode="nearest")[12:-12, 12:-12],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="scale"):
        rescale_shift(img, 0.0)
    with pytest.raises(ValueError, match="order"):
        rescale_shift(img, 1.1, order=2)
    with pytest.raises(ValueError, match="2-D"):
        rescale_shift(img[None], 1.0)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (2, 3), (5, 41), (43, 60), (130, 97)])
def test_compiled_bspline_prefilter_equals_scipy(shape) -> None:
    """Short lines (exact mirror initialisation) and long ones (truncated at z^40)."""
    from xnh_stream.physics._numba_kernels import bspline3_prefilter

    img = np.random.default_rng(shape[0] * 100 + shape[1]).standard_normal(shape).astype(np.float32)
    ref = ndimage.spline_filter(img, 3, output=np.float64, mode="mirror")
    ours = bspline3_prefilter(img, np.empty(shape, np.float32))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("order", [0, 1, 3])
def test_rescale_shift_equals_sparse_matrix_form(order: int) -> None:
    """The compiled CPU path equals the prefilter + two sparse resampling matrices (the GPU form)."""
    from xnh_stream.physics.align import _resample_matrix

    img = ndimage.gaussian_filter(np.random.default_rng(8).standard_normal((70, 83)), 1.2).astype(np.float32)
    cases = ((1.083, (1.37, -2.61), (75, 90), 1), (0.93, (-0.2, 4.4), (70, 83), 2))
    for scale, shift, out_shape, workers in cases:
        ours = rescale_shift(img, scale, shift, out_shape, order=order, workers=workers)
        pre = ndimage.spline_filter(img, 3, output=np.float32, mode="mirror") if order == 3 else img
        wy = _resample_matrix(70, out_shape[0], scale, shift[0], order)
        wx = _resample_matrix(83, out_shape[1], scale, shift[1], order)
        ref = (wx @ (wy @ pre).T).T
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("order", [0, 1, 3])
def test_rescale_shift_equals_ndimage_affine_transform(order: int) -> None:
    """The separable sparse implementation against scipy's general affine_transform (same
    spline order) wherever the output maps inside the input; outside: the edge value."""
    rng = np.random.default_rng(5)
    img = ndimage.gaussian_filter(rng.standard_normal((90, 77)), 1.5).astype(np.float32)
    cases = ((1.25, (3.2, -5.7), (101, 96)), (0.8, (0.4, 1.3), (90, 77)), (1.0, (-2.5, 0.0), (90, 77)))
    for scale, shift, out_shape in cases:
        ours = rescale_shift(img, scale, shift, out_shape, order=order)
        c_in = np.array([(n - 1) / 2 for n in img.shape])
        c_out = np.array([(n - 1) / 2 for n in out_shape])
        offset = c_in - (c_out + np.array(shift)) / scale
        ref = ndimage.affine_transform(
            img, [1 / scale, 1 / scale], offset=offset, output_shape=out_shape, order=order, mode="mirror"
        )
        # input coordinate of every output pixel; compare where all spline taps stay inside
        yy = c_in[0] + (np.arange(out_shape[0]) - shift[0] - c_out[0]) / scale
        xx = c_in[1] + (np.arange(out_shape[1]) - shift[1] - c_out[1]) / scale
        iny = (yy >= 2) & (yy <= img.shape[0] - 3)
        inx = (xx >= 2) & (xx <= img.shape[1] - 3)
        if order == 0:  # ties at exactly .5 may round either way; compare away from them
            iny &= np.abs(yy % 1 - 0.5) > 1e-6
            inx &= np.abs(xx % 1 - 0.5) > 1e-6
        np.testing.assert_allclose(ours[np.ix_(iny, inx)], ref[np.ix_(iny, inx)], atol=2e-6)
        # rows that map above the field of view all repeat the input's edge row
        outy = yy < 0
        if outy.any():
            edge = ndimage.map_coordinates(img, [np.zeros(inx.sum()), xx[inx]], order=order, mode="mirror")
            expected = np.broadcast_to(edge, (outy.sum(), inx.sum()))
            np.testing.assert_allclose(ours[outy][:, inx], expected, atol=2e-6)


def test_register_recovers_subpixel_shifts() -> None:
    rng = np.random.default_rng(1)
    big = ndimage.gaussian_filter(rng.standard_normal((320, 320)), 2.5)
    ref = big[32:-32, 32:-32]
    for true in ((0.3, -1.7), (3.25, 2.6), (-12.4, 7.7)):
        moving = ndimage.shift(big, (-true[0], -true[1]), order=5, mode="wrap")[32:-32, 32:-32]
        moving = moving + 0.3 * moving.std() * rng.standard_normal(moving.shape)
        res = register_lowpass_ncc(ref, moving)
        assert res.ok, res.reason
        np.testing.assert_allclose(res.shift_yx, true, atol=0.03)
        assert 0.9 < res.peak <= 1.0
        # applying the returned shift to moving brings it onto reference
        back = ndimage.shift(moving, res.shift_yx, order=3, mode="nearest")
        assert np.corrcoef(back[20:-20, 20:-20].ravel(), ref[20:-20, 20:-20].ravel())[0, 1] > 0.9


def test_register_rejects_bad_peaks_loudly(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.standard_normal((256, 256)), 2.5)
    with caplog.at_level(logging.WARNING, logger="xnh_stream.physics.align"):
        noise = register_lowpass_ncc(ref, rng.standard_normal((256, 256)))
    assert not noise.ok and "low correlation" in noise.reason and noise.peak < 0.3
    assert any("registration rejected" in r.message for r in caplog.records)
    # shift beyond the search range: the maximum sits on its edge
    far = np.roll(ref, 10, axis=1)
    edge = register_lowpass_ncc(far, ref, max_shift_px=5)
    assert not edge.ok and "edge" in edge.reason
    assert register_lowpass_ncc(far, ref, max_shift_px=15).ok
    # periodic object: several equal maxima
    y, x = np.mgrid[:256, :256]
    grating = np.sin(2 * np.pi * x / 16) + np.sin(2 * np.pi * y / 16)
    per = register_lowpass_ncc(grating, np.roll(grating, 3, axis=1))
    assert not per.ok and "unique" in per.reason
    with pytest.raises(ValueError, match="same shape"):
        register_lowpass_ncc(ref, ref[:-1])
    with pytest.raises(ValueError, match="moving.*NaN"):
        register_lowpass_ncc(ref, np.where(ref > 0.2, np.nan, ref))


def test_measure_distance_shifts_recovers_injected_offsets(scene: dict) -> None:
    g = scene["geom"]
    res = measure_distance_shifts(scene["frames"], g, DELTA_BETA)
    expected = np.array([[OFFSETS[0][0] - o[0], OFFSETS[0][1] - o[1]] for o in OFFSETS])
    assert g.reference == 0 and res.ok.all(), res.reasons
    err = np.abs(res.shifts_yx - expected)
    assert err.max() < 0.1, err  # brief: < 0.2 px, aim 0.05 (typically ~0.03 here)
    assert np.sqrt(np.mean(err[1:] ** 2)) < 0.05, err
    assert np.all(res.peaks[1:] > 0.6)
    # binned 2x for speed: same answer within the same tolerance
    binned = measure_distance_shifts(scene["frames"], g, DELTA_BETA, bin_px=2)
    assert binned.ok.all() and np.abs(binned.shifts_yx - expected).max() < 0.1
    # the Paganin padding is a parameter (alignment.paganin_pad): 1.5 is the default, 2 moves the answer a little
    same = measure_distance_shifts(scene["frames"], g, DELTA_BETA, paganin_pad=1.5)
    np.testing.assert_array_equal(same.shifts_yx, res.shifts_yx)
    wider = measure_distance_shifts(scene["frames"], g, DELTA_BETA, paganin_pad=2.0)
    assert wider.ok.all() and np.abs(wider.shifts_yx - expected).max() < 0.1
    assert not np.array_equal(wider.shifts_yx, res.shifts_yx)


def test_bad_frame_is_flagged(scene: dict, caplog: pytest.LogCaptureFixture) -> None:
    frames = list(scene["frames"])
    frames[2] = np.random.default_rng(9).poisson(3000.0, frames[2].shape).astype(np.float32) / 3000
    with caplog.at_level(logging.WARNING, logger="xnh_stream.physics.align"):
        res = measure_distance_shifts(frames, scene["geom"], DELTA_BETA)
    assert list(res.ok) == [True, True, False, True]
    assert "distance 2" in caplog.text
    with pytest.raises(ValueError, match="3 images"):
        measure_distance_shifts(frames[:3], scene["geom"], DELTA_BETA)


def test_alignment_then_ctf_recovers_phase(scene: dict) -> None:
    """End to end on the reference grid: measured shifts + magnification applied in one
    interpolation, then 4-distance CTF; without alignment the retrieval is far worse."""
    g, frames = scene["geom"], scene["frames"]
    shifts = measure_distance_shifts(frames, g, DELTA_BETA).shifts_yx
    truth = phase_on_grid(scene["obj"], N, g.voxel_m, (0.0, 0.0))
    aligned = np.stack([align_to_reference(f, k, g, tuple(shifts[k])) for k, f in enumerate(frames)])
    naive = np.stack([align_to_reference(f, k, g) for k, f in enumerate(frames)])

    def corr(r: np.ndarray) -> float:
        a, b = r[32:-32, 32:-32], truth[32:-32, 32:-32]
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    c_al = corr(retrieve_phase_ctf(aligned, g, DELTA_BETA))
    c_na = corr(retrieve_phase_ctf(naive, g, DELTA_BETA))
    assert c_al > 0.95 and (1 - c_al) < 0.5 * (1 - c_na), (c_al, c_na)


def test_shift_model_smooth_drift_and_outlier() -> None:
    rng = np.random.default_rng(4)
    angles = np.linspace(0, 180, 91)
    drift = np.stack([0.5 + 2.0 * angles / 180 - 0.8 * (angles / 180) ** 2, -1.0 + 0.01 * angles], axis=1)
    meas = drift + 0.03 * rng.standard_normal(drift.shape)
    meas[40] += (6.0, -4.0)  # one bad angle
    model = ShiftModel(basis="poly", order=2)
    for a, m in zip(angles, meas):
        model.add(a, m)
    model.add(95.0, (50.0, 50.0), ok=False)  # registration said not ok: never fitted
    fine = np.linspace(0, 180, 181)
    truth = np.stack([0.5 + 2.0 * fine / 180 - 0.8 * (fine / 180) ** 2, -1.0 + 0.01 * fine], axis=1)
    np.testing.assert_allclose(model(fine), truth, atol=0.03)
    inl = model.inliers
    assert not inl[40] and not inl[-1] and inl.sum() == 90
    assert model.n_points == 92 and model.n_valid == 91
    assert model(90.0).shape == (2,)
    # a naive least-squares fit would be pulled by the outlier
    naive = np.polynomial.legendre.legval(0.0, np.polynomial.legendre.legfit(angles / 90 - 1, meas[:, 0], 2))
    assert abs(naive - truth[90, 0]) > abs(model(90.0)[0] - truth[90, 0])


def test_shift_model_streaming_and_fourier() -> None:
    model = ShiftModel(basis="poly", order=2)
    with pytest.raises(ValueError, match="no measurements"):
        model(0.0)
    model.add(0.0, (1.0, 2.0))
    np.testing.assert_allclose(model(30.0), (1.0, 2.0))  # one point: a constant
    model.add(10.0, (1.2, 2.0))
    model.add(20.0, (1.4, 2.0))
    model.add(30.0, (1.6, 2.0))
    model.add(40.0, (1.8, 2.0))
    model.add(50.0, (2.0, 2.0))
    np.testing.assert_allclose(model(25.0), (1.5, 2.0), atol=1e-9)  # enough points for a line
    np.testing.assert_allclose(model(400.0), (2.0, 2.0), atol=1e-9)  # held at the end, no extrapolation
    with pytest.raises(ValueError, match="components"):
        model.add(60.0, (1.0, 2.0, 3.0))
    # eccentric rotation: periodic in the angle
    four = ShiftModel(basis="fourier", order=1)
    ang = np.arange(0, 360, 10.0)
    for a in ang:
        four.add(a, (3 * np.cos(np.deg2rad(a)) + 0.5, 2 * np.sin(np.deg2rad(a))))
    np.testing.assert_allclose(four(45.0), (3 * np.cos(np.pi / 4) + 0.5, 2 * np.sin(np.pi / 4)), atol=1e-9)
