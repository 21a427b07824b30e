"""Phase retrieval against exact Fresnel propagation of known objects, and against nabu.

The forward model here is independent of xnh_stream.physics.phase: the object transmission
``T = exp(-B + i phi)`` is propagated exactly (FFT, transfer function
``exp(-i pi lambda D f^2)``) and the intensity ``|.|^2`` taken, so the linear CTF model
and its sign are what is being tested.
"""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry, wavelength_m
from xnh_stream.physics.phase import (
    DEFAULT_ALPHA_HIGH,
    DEFAULT_ALPHA_LOW,
    CTFRetriever,
    ctf_filter,
    retrieve_phase_ctf,
    retrieve_phase_paganin,
)

ENERGY_KEV = 17.0
LAM = wavelength_m(ENERGY_KEV)
Z_TOTAL = 1.2  # focus-to-detector, fixed; the sample moves (ID16A style)
VOXEL = 100e-9
Z1 = (0.0120, 0.0131, 0.0149, 0.0178)  # D_k from 11.9 to 17.5 mm, F_k = 0.011 ... 0.0078


def make_geometry(z1s=Z1) -> ScanGeometry:
    pixel = VOXEL * Z_TOTAL / min(z1s)  # detector pixel giving a VOXEL reference pixel
    return ScanGeometry(tuple(DistanceGeometry(z1, Z_TOTAL - z1, pixel, ENERGY_KEV) for z1 in z1s))


def propagate(t: np.ndarray, d_m: float, pixel_m: float) -> np.ndarray:
    """Exact Fresnel propagation (periodic) of transmission ``t``; returns the intensity."""
    fy = np.fft.fftfreq(t.shape[0], pixel_m)
    fx = np.fft.fftfreq(t.shape[1], pixel_m)
    h = np.exp(-1j * np.pi * LAM * d_m * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return np.abs(np.fft.ifft2(np.fft.fft2(t) * h)) ** 2


def random_phase(n: int, rng: np.random.Generator, sigma_px: float, std: float, mean: float) -> np.ndarray:
    """Smooth random phase field (white noise through a Gaussian of ``sigma_px``)."""
    f = np.fft.fftfreq(n)
    g = np.exp(-2 * np.pi**2 * sigma_px**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * g))
    return mean + std * field / field.std()


def holograms(phi: np.ndarray, delta_beta: float, geom: ScanGeometry, crop: int) -> np.ndarray:
    """Intensities of a homogeneous object (B = -phi / (delta/beta)) at every D_k, on the reference pixel,
    cropped by ``crop`` pixels each side (the sample extends beyond the field of view)."""
    t = np.exp(phi / delta_beta + 1j * phi)
    out = np.stack([propagate(t, d, geom.voxel_m) for d in geom.propagation_distances_m])
    return out[:, crop:-crop, crop:-crop]


def _fit(r: np.ndarray, truth: np.ndarray, margin: int) -> tuple[float, float, float]:
    """Correlation, regression slope and RMS error of mean-removed fields in the interior."""
    a = r[margin:-margin, margin:-margin].astype(np.float64)
    b = truth[margin:-margin, margin:-margin]
    a, b = a - a.mean(), b - b.mean()
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float((a * b).sum() / (b * b).sum()), float(
        np.sqrt(np.mean((a - b) ** 2))
    )


@pytest.fixture(scope="module")
def textured() -> dict:
    rng = np.random.default_rng(7)
    geom = make_geometry()
    delta_beta = 100.0
    phi = random_phase(384, rng, sigma_px=2.0, std=0.05, mean=-0.1)
    clean = holograms(phi, delta_beta, geom, crop=64)
    noisy = rng.poisson(clean * 2000.0) / 2000.0  # 2000 photons per pixel
    return {"geom": geom, "db": delta_beta, "phi": phi[64:-64, 64:-64], "clean": clean, "noisy": noisy}


def test_forward_model_sign_matches_tie() -> None:
    """Sanity of the test's own propagator: at short distance a pure phase object gives
    I = 1 - (lambda D / 2 pi) laplacian(phi) (transport of intensity)."""
    n = 256
    y, x = np.mgrid[:n, :n] - n / 2
    phi = -0.2 * np.exp(-(x**2 + y**2) / (2 * 12.0**2))  # matter: negative phase
    d = 2e-4
    i = propagate(np.exp(1j * phi), d, VOXEL)
    lap = np.roll(phi, 1, 0) + np.roll(phi, -1, 0) + np.roll(phi, 1, 1) + np.roll(phi, -1, 1) - 4 * phi
    lap /= VOXEL**2
    tie = 1 - LAM * d / (2 * np.pi) * lap
    np.testing.assert_allclose(i - 1, tie - 1, atol=0.03 * np.abs(tie - 1).max())
    assert i[n // 2, n // 2] < 1  # a converging (negative) phase bump darkens its centre at short D


def test_ctf_four_distances_recover_phase(textured: dict) -> None:
    g, db = textured["geom"], textured["db"]
    r = retrieve_phase_ctf(textured["noisy"], g, db)
    assert r.dtype == np.float32 and r.shape == textured["phi"].shape
    corr, slope, _ = _fit(r, textured["phi"], margin=32)
    assert corr > 0.95, corr
    assert 0.9 < slope < 1.1, slope  # sign AND scale: a sign error gives slope ~ -1


def test_ctf_four_distances_beat_one(textured: dict) -> None:
    g, db = textured["geom"], textured["db"]
    r4 = retrieve_phase_ctf(textured["noisy"], g, db)
    errs = []
    for k in range(4):
        g1 = ScanGeometry((g.distances[k],))
        errs.append(_fit(retrieve_phase_ctf(textured["noisy"][k : k + 1], g1, db), textured["phi"], 32)[2])
    err4 = _fit(r4, textured["phi"], 32)[2]
    assert err4 < 0.75 * min(errs), (err4, errs)


def test_live_padding_gives_the_final_padding_result(textured: dict) -> None:
    """The live path pads 1.25x (``stream.phase_pad``) where the final pass pads 2x: on a sample wider than the
    field (mirror padding) both retrievals recover the phase equally well, inside and in the edge band."""
    g, db, phi, noisy = textured["geom"], textured["db"], textured["phi"], textured["noisy"]
    shape = phi.shape
    live, final = (CTFRetriever(g, shape, db, pad=pad) for pad in (1.25, 2.0))
    assert live.shape_padded[0] < 0.7 * final.shape_padded[0]  # a third of the FFT work at 2048^2
    r_live, r_final = live(noisy), final(noisy)
    fit_live, fit_final = _fit(r_live, phi, 16), _fit(r_final, phi, 16)
    assert fit_live[0] > 0.95 and abs(fit_live[0] - fit_final[0]) < 0.005, (fit_live, fit_final)
    assert abs(fit_live[1] - fit_final[1]) < 0.02, (fit_live, fit_final)
    band = (slice(0, 16), slice(None))  # the outer rows, next to the padded margin

    def band_r(r: np.ndarray) -> float:
        return float(np.corrcoef(r[band].ravel(), phi[band].ravel())[0, 1])

    assert band_r(r_live) > band_r(r_final) - 0.02, (band_r(r_live), band_r(r_final))
    d = g.distances[0]
    p_live, p_final = (retrieve_phase_paganin(noisy[0], d, db, pad=pad) for pad in (1.25, 2.0))
    pag_live, pag_final = _fit(p_live, phi, 16), _fit(p_final, phi, 16)
    assert abs(pag_live[0] - pag_final[0]) < 0.01 and abs(pag_live[1] - pag_final[1]) < 0.05, (pag_live, pag_final)


def test_ctf_sign_of_localised_objects() -> None:
    """A blob of matter (phi < 0) and a void in matter (phi > 0 relative) come back with their sign."""
    g = make_geometry()
    n = 320
    y, x = np.mgrid[:n, :n] - n / 2
    blob = np.exp(-(x**2 + y**2) / (2 * 6.0**2))
    for amp in (-0.1, +0.1):
        phi = amp * blob
        r = retrieve_phase_ctf(holograms(phi, 300.0, g, crop=32), g, 300.0)
        c = r.shape[0] // 2
        centre = float(r[c - 2 : c + 3, c - 2 : c + 3].mean() - np.median(r))
        truth = float(phi[n // 2 - 2 : n // 2 + 3, n // 2 - 2 : n // 2 + 3].mean())
        assert np.sign(centre) == np.sign(amp)
        assert abs(centre - truth) < 0.15 * abs(truth), (centre, truth)


def test_ctf_retriever_reuse_cache_and_bad_input(textured: dict) -> None:
    g, db = textured["geom"], textured["db"]
    shape = textured["noisy"].shape[1:]
    retr = CTFRetriever(g, shape, db)
    a = retr(textured["noisy"])
    b = retr(list(textured["noisy"]))  # a list of frames works as well, buffers reused
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, retrieve_phase_ctf(textured["noisy"], g, db), atol=1e-6)
    assert CTFRetriever(g, shape, db).filter is retr.filter  # cached per geometry
    filt = retr.filter
    assert filt.numerators.dtype == np.float32 and filt.numerators.shape[0] == 4
    assert filt.alpha[0, 0] == pytest.approx(DEFAULT_ALPHA_LOW, rel=1e-3)
    assert filt.alpha[filt.alpha.shape[0] // 2, -1] == pytest.approx(DEFAULT_ALPHA_HIGH, rel=1e-3)
    with pytest.raises(ValueError, match="3 images"):
        retr(textured["noisy"][:3])
    with pytest.raises(ValueError, match="shape"):
        retr(textured["noisy"][:, :-1])
    bad = textured["noisy"].copy()
    bad[2, 5, 5] = np.nan
    with pytest.raises(ValueError, match="distance 2.*NaN"):
        retr(bad)
    with pytest.raises(ValueError, match="delta/beta"):
        ctf_filter((8, 8), (0.01,), LAM, VOXEL, -1.0)
    # a subset of distances without the scan's reference: same pixel given explicitly
    sub = ScanGeometry(g.distances[1:])
    assert sub.voxel_m != g.voxel_m
    r_sub = retrieve_phase_ctf(textured["noisy"][1:], sub, db, pixel_m=g.voxel_m)
    corr, slope, _ = _fit(r_sub, textured["phi"], 32)
    assert corr > 0.9 and 0.85 < slope < 1.15, (corr, slope)


def test_paganin_recovers_sphere_thickness() -> None:
    """Homogeneous sphere: phi = -k delta 2 sqrt(R^2 - r^2); Paganin at the exact delta/beta gives
    the projected thickness within a few percent away from the sharp rim."""
    n, radius = 256, 4e-6
    delta, delta_beta = 5e-7, 300.0
    k = 2 * np.pi / LAM
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.5) * VOXEL
    r2 = x**2 + y**2
    thick = 2 * np.sqrt(np.clip(radius**2 - r2, 0, None))
    phi = -k * delta * thick
    dist = DistanceGeometry(Z1[0], Z_TOTAL - Z1[0], VOXEL * Z_TOTAL / Z1[0], ENERGY_KEV)
    i = propagate(np.exp(phi / delta_beta + 1j * phi), dist.propagation_distance_m, VOXEL)
    r = retrieve_phase_paganin(i, dist, delta_beta)
    assert r.dtype == np.float32
    inner = r2 < (0.8 * radius) ** 2
    t_ret = -r / (k * delta)
    assert np.abs(t_ret[inner] - thick[inner]).max() < 0.04 * thick.max()
    assert t_ret[n // 2, n // 2] == pytest.approx(thick.max(), rel=0.03)
    assert np.abs(r[r2 > (1.5 * radius) ** 2]).max() < 0.03 * abs(phi.min())
    # explicit (D, wavelength, pixel) triple is the same thing
    r_b = retrieve_phase_paganin(i, (dist.propagation_distance_m, LAM, VOXEL), delta_beta)
    np.testing.assert_allclose(r, r_b, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        retrieve_phase_paganin(np.where(inner, np.nan, i), dist, delta_beta)


def test_single_distance_ctf_matches_nabu(textured: dict) -> None:
    """nabu's CTFPhaseRetrieval uses A = sin(chi) + (1/(delta/beta)) cos(chi), removes the DC of I - 1 and
    returns phi with our sign and scale: the regression slope of ours on nabu's is ~ +1."""
    ctf = pytest.importorskip("nabu.preproc.ctf")
    g, db = textured["geom"], textured["db"]
    d0 = g.distances[0]
    img = textured["noisy"][0].astype(np.float32)
    geo = ctf.GeoPars(z1_vh=d0.z1_m, z2=d0.z2_m, pix_size_det=d0.pixel_m, wavelength=d0.wavelength_m)
    nab = ctf.CTFPhaseRetrieval(
        img.shape,
        geo,
        db,
        padded_shape="auto",
        padding_mode="symmetric",
        lim1=DEFAULT_ALPHA_LOW,
        lim2=DEFAULT_ALPHA_HIGH,
        use_rfft=True,
    )
    ref = nab.retrieve_phase(img)
    ours = retrieve_phase_ctf(img[None], ScanGeometry((d0,)), db)
    corr, slope, _ = _fit(ours, ref, margin=8)
    assert corr > 0.9, corr
    assert 0.9 < slope < 1.1, slope


@pytest.mark.parametrize("mode", ["symmetric", "reflect", "edge"])
def test_padding_matches_numpy_pad(mode: str) -> None:
    """The slicing padder equals numpy.pad (centred), including margins wider than the image."""
    from xnh_stream.physics.phase import _Padder

    rng = np.random.default_rng(0)
    cases = (((7, 9), (20, 31)), ((5, 4), (40, 33)), ((64, 64), (128, 128)), ((10, 11), (10, 11)))
    for shape, shape_p in cases:
        img = rng.standard_normal(shape).astype(np.float32)
        y0, x0 = (shape_p[0] - shape[0]) // 2, (shape_p[1] - shape[1]) // 2
        ref = np.pad(img, ((y0, shape_p[0] - shape[0] - y0), (x0, shape_p[1] - shape[1] - x0)), mode=mode)
        pad = _Padder(shape, shape_p, mode, np)
        np.testing.assert_array_equal(pad(img), ref)
        np.testing.assert_array_equal(pad.crop(ref), img)
