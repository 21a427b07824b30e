"""Rotation axis on foreign scans (astra + HoToPy + nxtomo, tests/foreign.py) whose axis is off-centre by
several pixels and that have no 180-degree projection; consensus and disagreement."""

from __future__ import annotations

import numpy as np
import pytest

from tests.foreign import ForeignSpec, flat_fielded, write_foreign_scan
from xnh_stream.physics.cor import (
    CorCandidate,
    consensus,
    cor_from_pairs,
    cor_sliding_window,
    cor_vo,
    estimate_rotation_axis,
)
from xnh_stream.physics.fbp import fbp
from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.physics.phase import retrieve_phase_paganin

pytest.importorskip("astra")
pytest.importorskip("hotopy")
pytest.importorskip("nxtomo")

ROWS = [2, 6, 10, 14]  # rows handed to the estimators (of 16)


def _load(tmp_path_factory, name: str, spec: ForeignSpec):
    truth = write_foreign_scan(tmp_path_factory.mktemp(name), spec)
    frames, angles, is_return = flat_fielded(truth.files[0])
    return truth, frames, angles, is_return


@pytest.fixture(scope="module")
def off_centre(tmp_path_factory):
    """[0, 180), no 180-degree projection, axis 5.3 px right of centre."""
    return _load(tmp_path_factory, "off", ForeignSpec(ny=16, axis_px=47.5 + 5.3, seed=21))


@pytest.fixture(scope="module")
def sample_off_centre(tmp_path_factory):
    """[0, 180), no 180-degree projection, axis 6.3 px left of centre, the sample 10 px beside the axis."""
    return _load(tmp_path_factory, "soff",
                 ForeignSpec(ny=16, axis_px=47.5 - 6.3, sample_offset_px=(10.0, -6.0), seed=22))


def _sinograms(frames, angles, is_return):
    reg = ~is_return
    return np.moveaxis(frames[reg][:, ROWS, :], 1, 0), np.deg2rad(angles[reg])


@pytest.mark.parametrize("scan", ["off_centre", "sample_off_centre"])
def test_axis_within_half_a_pixel_without_180_projection(scan, request):
    truth, frames, angles, is_return = request.getfixturevalue(scan)
    assert angles.max() < 180.0 and not is_return.any()  # no 180-degree projection, no return
    sino, th = _sinograms(frames, angles, is_return)
    est = estimate_rotation_axis(sinograms=sino, thetas=th)
    true = truth.axis_px[0]
    assert abs(true - (frames.shape[-1] - 1) / 2) > 5  # off-centre by several pixels
    assert abs(est.px - true) < 0.5, est.as_dict()
    assert est.agree and est.confidence_px < 0.5
    reliable = [c for c in est.candidates if c.reliable]
    assert {c.method for c in reliable} == {"vo", "window"}  # two independent estimators, both used
    for c in reliable:
        assert abs(c.px - true) < 0.5, c
    # intensities work as well as -log(I)
    assert abs(estimate_rotation_axis(sinograms=sino, thetas=th, take_log=False).px - true) < 0.5


def _paganin_slice(truth, frames, angles, cor: float, row: int) -> np.ndarray:
    spec = truth.spec
    geo = DistanceGeometry(spec.z1_m[0], spec.focus_detector_m - spec.z1_m[0], spec.pixel_m, spec.energy_kev)
    phase = np.stack([retrieve_phase_paganin(f, geo, 1000.0) for f in frames])
    # edge padding: the body is wider than the field of view (local tomography)
    return fbp(-phase[:, row : row + 1, :], np.deg2rad(angles), cor=cor, window="hann", padding="edge")[0]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation inside the central disc of the details (a Gaussian high-pass removes the
    local-tomography cupping, which no axis fixes)."""
    from scipy.ndimage import gaussian_filter

    a, b = a - gaussian_filter(a, 8.0), b - gaussian_filter(b, 8.0)
    n = a.shape[0]
    r = np.hypot(*np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2))
    m = r < 0.45 * n
    return float(np.corrcoef(a[m], b[m])[0, 1])


def test_reconstruction_with_the_estimate_matches_the_true_axis(sample_off_centre):
    truth, frames, angles, is_return = sample_off_centre
    sino, th = _sinograms(frames, angles, is_return)
    est = estimate_rotation_axis(sinograms=sino, thetas=th)
    row = 8
    phantom = truth.slice_delta(row, frames.shape[-1])
    r_true = _corr(_paganin_slice(truth, frames, angles, truth.axis_px[0], row), phantom)
    r_est = _corr(_paganin_slice(truth, frames, angles, est.px, row), phantom)
    r_wrong = _corr(_paganin_slice(truth, frames, angles, truth.axis_px[0] + 3.0, row), phantom)
    assert r_true > 0.6  # the phantom is recognisable
    assert r_est > r_true - 0.02
    assert r_wrong < r_true - 0.1  # the comparison can fail: a 3-px error costs correlation


def test_pairs_and_return_projection(tmp_path):
    """[0, 180] with a 180-degree projection and returns at 180 and 0: pairs join the consensus."""
    spec = ForeignSpec(ny=16, n_angles=90, include_end=True, return_angles_deg=(180.0, 0.0),
                       axis_px=47.5 + 4.6, seed=23)
    truth = write_foreign_scan(tmp_path, spec)
    frames, angles, is_return = flat_fielded(truth.files[0])
    i0 = int(np.nonzero(angles == 0)[0][0])
    pairs = [(frames[i0], frames[j], angles[j] - angles[i0]) for j in np.nonzero(np.isclose(angles, 180.0))[0]]
    pairs.append((frames[i0], frames[np.nonzero(is_return & (angles == 0))[0][0]], 360.0))
    assert len(pairs) == 3  # 0/180 (regular), 0/180 (return), 0/360-like (return at 0: same angle later)
    sino, th = _sinograms(frames, angles, is_return)
    est = estimate_rotation_axis(pairs, sino, th)
    assert abs(est.px - truth.axis_px[0]) < 0.5
    assert "pairs-180" in est.method and est.agree
    assert est.axis_drift_px is not None and est.axis_drift_px < 0.3  # no drift was simulated


def test_disagreement_is_reported(off_centre):
    truth, frames, angles, is_return = off_centre
    sino, th = _sinograms(frames, angles, is_return)
    a = frames[0]
    # the "180-degree partner" is the 179-degree frame mirrored about the true axis: a good pair ...
    n = a.shape[-1]
    s = 2 * truth.axis_px[0] - (n - 1)
    from scipy.ndimage import shift as nd_shift

    partner = nd_shift(a[:, ::-1], (0, s), order=3, mode="nearest")
    good = estimate_rotation_axis([(a, partner, 180.0)], sino, th)
    assert good.agree and abs(good.px - truth.axis_px[0]) < 0.5
    # ... whose second frame, shifted by 3 px (a jump of the stage), moves the pair estimate 1.5 px away
    bad_pair = nd_shift(partner, (0, 3.0), order=3, mode="nearest")
    bad = estimate_rotation_axis([(a, bad_pair, 180.0)], sino, th)
    assert not bad.agree and bad.disagreement_px > 1.0
    pair = next(c for c in bad.candidates if c.method == "pairs-180")
    assert abs(pair.px - truth.axis_px[0] - 1.5) < 0.3
    assert bad.method == "vo+window" and abs(bad.px - truth.axis_px[0]) < 0.5  # the majority decides
    assert bad.as_dict()["agree"] is False


@pytest.mark.slow
def test_half_acquisition_360_axis_near_the_edge(tmp_path):
    """[0, 360) with the axis 32 px right of centre (extended field of view): the sliding window finds it."""
    spec = ForeignSpec(ny=16, n_angles=360, range_deg=360.0, axis_px=80.0, body_radius_px=70.0, seed=24)
    truth = write_foreign_scan(tmp_path, spec)
    frames, angles, is_return = flat_fielded(truth.files[0])
    sino, th = _sinograms(frames, angles, is_return)
    win = cor_sliding_window(sino, th)
    assert win.reliable and abs(win.px - truth.axis_px[0]) < 0.5
    pairs = [(frames[i], frames[i + 180], 180.0) for i in (0, 45, 90)]
    est = estimate_rotation_axis(pairs, sino, th)
    assert abs(est.px - truth.axis_px[0]) < 0.5 and est.agree
    assert "window" in est.method


def test_consensus_rules():
    c = [CorCandidate("vo", 50.0, 0.1, 0.9, True), CorCandidate("window", 50.2, 0.1, 0.8, True),
         CorCandidate("pairs-180", 53.0, 0.15, 0.9, True), CorCandidate("x", 10.0, 0.1, 0.1, False)]
    est = consensus(c)
    assert est.method == "vo+window" and est.px == pytest.approx(50.1)
    assert est.disagreement_px == pytest.approx(3.0) and not est.agree  # the unreliable one is left out
    only_bad = consensus([CorCandidate("vo", 40.0, 0.1, 0.2, False)])
    assert only_bad.method == "vo (unreliable)" and only_bad.confidence_px >= 1.0
    with pytest.raises(ValueError, match="no rotation-axis candidate"):
        consensus([])


def test_bad_input_is_refused():
    rng = np.random.default_rng(0)
    a = rng.random((4, 32)) + 0.5
    with pytest.raises(ValueError, match="neither 180 nor 360"):
        cor_from_pairs([(a, a, 90.0)])
    with pytest.raises(ValueError, match="differ in shape"):
        cor_from_pairs([(a, a[:, :31], 180.0)])
    with pytest.raises(ValueError, match="need their angles"):
        estimate_rotation_axis(sinograms=rng.random((2, 40, 32)))
    with pytest.raises(ValueError, match="span"):
        cor_vo(rng.random((2, 40, 32)) + 0.5, np.linspace(0, 1.0, 40))
    with pytest.raises(ValueError, match="no pair of angles"):
        cor_sliding_window(rng.random((2, 40, 32)) + 0.5, np.linspace(0, 1.0, 40))
    with pytest.raises(ValueError, match="nothing|no rotation-axis estimate"):
        estimate_rotation_axis()
