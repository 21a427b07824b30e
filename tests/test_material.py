"""delta/beta from the holograms (xnh_stream/physics/material.py): the fit of the linear CTF with the phase free
beyond the field of view, the envelope's sample-in-air rule, the options, and the chain's use of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xnh_stream.config import ConfigError, ProcessConfig
from xnh_stream.physics.envelope import surroundings
from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry
from xnh_stream.physics.material import (
    TruncatedCTFFit,
    estimate_delta_beta,
    material_band,
    noise_frames,
    window_samples,
)

#: The foreign writer's geometry (tests/foreign.py): 100 nm voxels, pixel Fresnel numbers 0.055-0.072.
GEOMETRY = ScanGeometry(tuple(DistanceGeometry(z1, 1.25 - z1, 65e-6, 17.05) for z1 in (0.00192, 0.002, 0.00221, 0.00252)))


def truncated_holograms(delta_beta: float, n_angles: int = 24, n: int = 96, photons: float = 20000.0,
                        seed: int = 0) -> np.ndarray:
    """``[angles, K, n, n]`` flat-fielded holograms of objects wider than the frame (a body crossing it and
    denser blobs, about 1 rad of phase), one object of one material per angle, propagated exactly (Fresnel, on
    a grid twice the frame) and cropped, with photon noise as the estimator models it."""
    rng = np.random.default_rng(seed)
    big = 2 * n
    v = GEOMETRY.voxel_m
    f = np.fft.fftfreq(big, v)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    lam = GEOMETRY.distances[0].wavelength_m
    yy, xx = np.mgrid[:big, :big] - (big - 1) / 2
    out = []
    for _ in range(n_angles):
        body = np.clip(1 - (xx / (0.62 * big)) ** 2, 0, None) ** 0.5  # chord of a cylinder wider than the frame
        phi = -0.8 * body
        for _ in range(12):
            y, x, r = rng.uniform(-n / 2, n / 2), rng.uniform(-n / 2, n / 2), rng.uniform(1.5, 8)
            phi -= rng.uniform(0.05, 0.4) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r**2))
        wave = np.fft.fft2(np.exp((1 / delta_beta + 1j) * phi))  # exp(-B + i phi), B = -phi / (delta/beta)
        a = (big - n) // 2
        holo = np.stack([np.abs(np.fft.ifft2(wave * np.exp(-1j * np.pi * lam * d * f2))) ** 2
                         for d in GEOMETRY.propagation_distances_m])[:, a:a + n, a:a + n]
        out.append(holo + noise_frames(holo, np.full(4, 1 / photons), GEOMETRY, rng) - 1.0)
    return np.stack(out)


def fit_delta_beta(holos: np.ndarray, photons: float = 20000.0):
    band = material_band(GEOMETRY, holos.shape[2:])
    fit = TruncatedCTFFit(GEOMETRY, band)
    rng = np.random.default_rng(99)
    mean = holos.mean(axis=0)
    noise = np.stack([window_samples(noise_frames(mean, np.full(4, 1 / photons), GEOMETRY, rng), band)
                      for _ in range(32)])
    return estimate_delta_beta(fit, [window_samples(h, band) for h in holos], noise)


@pytest.mark.parametrize("truth", [30.0, 100.0])
def test_the_fit_finds_delta_beta_of_a_sample_wider_than_the_field_of_view(truth):
    est = fit_delta_beta(truncated_holograms(truth))
    print(f"\ndelta/beta {truth:g}: estimate {est.value:.1f}, interval {est.interval}, noise scale "
          f"{est.noise_scale:.2f}")
    assert est.value is not None and abs(est.value / truth - 1) < 0.2
    lo, hi = est.interval
    assert lo < est.value < hi and hi / lo < 2.5
    assert 0.8 < est.noise_scale < 1.5  # the residual at the minimum is the photon noise
    d = est.as_dict()
    assert d["profile"]["residual"][int(np.argmin(d["profile"]["residual"]))] == 0.0
    json.dumps(d)


def test_the_fit_needs_frames_larger_than_its_low_pass():
    assert material_band(GEOMETRY, (40, 128)) is None  # 3 sigma of the low-pass each side leave 13 rows of samples
    assert material_band(GEOMETRY, (64, 64)) is None  # windows of 25 samples: off by up to 45 % (docs/delta_beta.md)
    band = material_band(GEOMETRY, (2048, 2048))
    assert band is not None and band.window == (41, 41) and len(band.origins) == 16  # at most 4 x 4 windows
    band = material_band(GEOMETRY, (80, 300))
    assert band.window == (len(range(band.reach, 80 - band.reach, band.step)), 41) and len(band.origins) == 4


def test_surroundings_tell_a_sample_in_air_from_a_part_of_a_wider_one():
    n, rows = 48, 4
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    pin = np.broadcast_to(np.hypot(yy, xx) < 18, (rows, n, n))
    vol = np.where(pin, 1.0, 0.0) + np.random.default_rng(0).normal(0, 0.03, (rows, n, n))
    s = surroundings(vol, pin)
    assert s["disk_fraction"] > 0.5 and abs(s["outside_ratio"]) < 0.1
    inclusion = np.broadcast_to(np.hypot(yy - 5, xx) < 8, (rows, n, n))  # a dense part of a body filling the view
    vol = 1.0 + 1.5 * inclusion
    s = surroundings(vol, inclusion)
    assert s["disk_fraction"] < 0.25 and s["outside_ratio"] > 0.3


def test_options_of_delta_beta_and_the_envelope():
    cfg = ProcessConfig()
    assert cfg.sample.delta_beta is None and cfg.sample.delta_beta_from == "data" and cfg.ctf.envelope == "auto"
    assert ProcessConfig.from_mapping({"sample.delta_beta": "auto"}).sample.delta_beta is None
    assert ProcessConfig.from_mapping({"sample.delta_beta": 30}).sample.delta_beta == 30.0
    assert ProcessConfig.from_mapping({"ctf.envelope": False}).ctf.envelope is False
    assert ProcessConfig.layered(env={"XNH_CTF_ENVELOPE": "true"}).ctf.envelope is True
    assert ProcessConfig.layered(env={"XNH_CTF_ENVELOPE": "auto"}).ctf.envelope == "auto"
    for bad in ({"ctf.envelope": 1}, {"ctf.envelope": "sometimes"}, {"sample.delta_beta_from": "guess"},
                {"sample.delta_beta": "unknown"}, {"sample.delta_beta_angles": 2}):
        with pytest.raises(ConfigError):
            ProcessConfig.from_mapping(bad)


@pytest.fixture(scope="module")
def foreign_scan(tmp_path_factory):
    from .foreign import ForeignSpec, write_foreign_scan

    spec = ForeignSpec(nx=80, ny=80, n_angles=64, delta_beta=30.0, seed=5)
    return write_foreign_scan(tmp_path_factory.mktemp("scan") / "scan", spec)


def test_the_final_pass_estimates_delta_beta_and_a_given_value_overrides_it(foreign_scan, tmp_path):
    from xnh_stream.chain.batch import process_scan

    folder = foreign_scan.files[0].parent
    cfg = {"alignment.angles": 12}
    res = process_scan(folder, tmp_path / "out", ProcessConfig.from_mapping(cfg))
    phase = json.loads((tmp_path / "out" / "report.json").read_text())["phase"]
    est = phase["delta_beta_estimate"]
    print(f"\nforeign scan, delta/beta 30: estimate {est['value']} {est['interval']}, {est['decision']}; "
          f"{est['material_model']}; {res.report.timing_s.get('material fit')} s")
    assert est["decision"] == "estimated" and phase["delta_beta"] == pytest.approx(est["value"], rel=1e-3)
    assert abs(math.log(est["value"] / 30.0)) < math.log(1.3)
    assert phase["method"] == "ctf-multi-distance" and est["material_model"].startswith("one material")
    given = process_scan(folder, None, ProcessConfig.from_mapping({**cfg, "sample.delta_beta": 55}))
    assert given.report.phase["delta_beta"] == 55 and "material fit" not in given.report.timing_s
    assert given.report.phase["delta_beta_estimate"]["decision"].startswith("given")
