"""phase.method: one registry (xnh_stream/chain/phase_methods.py) that the configuration, the final pass, the
live workers and the report read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.phase_methods import PHASE_METHODS, phase_method
from xnh_stream.chain.steps import AngleProcessor
from xnh_stream.chain.warmup import _tiny_geometry
from xnh_stream.config import ConfigError, ProcessConfig
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan


def _frames(n: int = 32) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: (1 + 0.01 * rng.standard_normal((n, n))).astype(np.float32) for k in range(4)}


def test_the_registry_names_the_configuration_choices_and_the_report_labels():
    assert list(PHASE_METHODS) == ["paganin", "ctf", "ctf-two-material", "paganin-multi-distance"]
    assert ProcessConfig().phase.method == "ctf-two-material"
    assert ProcessConfig.layered(env={"XNH_PHASE_METHOD": "paganin"}).phase.method == "paganin"
    with pytest.raises(ConfigError, match="phase.method"):
        ProcessConfig.from_mapping({"phase.method": "tie"})
    with pytest.raises(KeyError, match="known: paganin, ctf, ctf-two-material, paganin-multi-distance"):
        phase_method("tie")
    two = phase_method("ctf-two-material")
    assert (two.label(True, False), two.label(False, False), two.label(False, True)) == (
        "ctf-multi-distance-two-material", "ctf-multi-distance", "ctf-multi-distance-fresnel-refined")
    assert phase_method("ctf").label(False, False) == "ctf-multi-distance"
    assert phase_method("paganin").label(False, False) == "paganin-single-distance"
    assert two.envelope and not phase_method("ctf").envelope and not phase_method("paganin").envelope


@pytest.mark.parametrize("name", ["paganin", "ctf", "ctf-two-material"])
def test_the_processor_retrieves_by_the_configured_method(name):
    geometry, frames = _tiny_geometry(), _frames()
    proc = AngleProcessor(geometry, (32, 32), 100.0, ProcessConfig.from_mapping({"phase.method": name}))
    got = proc.retrieve(frames, 12.0)
    expected = (proc.preview(geometry.reference, frames[geometry.reference], 12.0) if name == "paganin"
                else proc.ctf(frames, 12.0))
    np.testing.assert_array_equal(got, expected)


def test_the_final_pass_runs_paganin_without_an_envelope(tmp_path):
    scan = tmp_path / "scan"
    simulate_scan(scan, SimulationConfig(nx=64, ny=24, n_angles=24))
    cfg = ProcessConfig.from_mapping({"phase.method": "paganin", "fbp.cor": 31.5})
    result = process_scan(scan, tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["phase"]["method"] == "paganin-single-distance" and report["phase"]["envelope"] is None
    assert report["config"]["phase"]["method"] == "paganin"
    assert np.isfinite(result.volume).all() and float(np.abs(result.volume).max()) > 0


def _holograms(phase: np.ndarray, delta_beta: float, geometry, photons: float, rng) -> np.ndarray:
    """Exact Fresnel holograms of a homogeneous object at every distance, on the reference grid, with Poisson
    noise."""
    from xnh_stream.physics.refine import fresnel_holograms

    f = np.fft.fftfreq(phase.shape[0], geometry.voxel_m)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    props = np.stack([np.exp(-1j * np.pi * d.wavelength_m * d.propagation_distance_m * f2)
                      for d in geometry.distances])
    return rng.poisson(fresnel_holograms(phase, delta_beta, props) * photons) / photons


def test_the_multi_distance_paganin_is_paganin_for_one_distance_and_averages_the_noise_of_four():
    """The next phase method, added by two files (physics/phase.py and chain/phase_methods.py): with one
    distance it is the single-distance Paganin; with four noisy holograms (1000 photons) of a weak, smooth
    homogeneous object it is closer to the true phase than Paganin of any one of them (this draw; over 9
    draws of 1000-5000 photons always closer than their mean, 6 times closer than the best)."""
    from xnh_stream.physics.phase import retrieve_phase_paganin, retrieve_phase_paganin_multi

    geometry = _tiny_geometry()
    n, db = 64, 100.0
    rng = np.random.default_rng(3)
    fy = np.fft.fftfreq(n)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n)))
                                  * np.exp(-2 * np.pi**2 * 3.0**2 * (fy[:, None] ** 2 + fy[None, :] ** 2))))
    phase = -0.05 - 0.05 * smooth / smooth.std()  # weak: the transport-of-intensity model holds, noise rules
    holos = _holograms(phase, db, geometry, 1000.0, rng)
    dists = [(d.propagation_distance_m, d.wavelength_m) for d in geometry.distances]
    one = retrieve_phase_paganin_multi(holos[:1], dists[:1], geometry.voxel_m, db)
    np.testing.assert_allclose(one, retrieve_phase_paganin(holos[0], (*dists[0], geometry.voxel_m), db),
                               rtol=1e-5, atol=2e-5)  # float32 rounding

    def rms(p):
        d = (p - p.mean()) - (phase - phase.mean())
        return float(np.sqrt(np.mean(d[8:-8, 8:-8] ** 2)))

    multi = rms(retrieve_phase_paganin_multi(holos, dists, geometry.voxel_m, db))
    singles = [rms(retrieve_phase_paganin(h, (*d, geometry.voxel_m), db)) for h, d in zip(holos, dists)]
    print(f"\nrms phase error: four distances {multi:.4f}, each alone {[round(v, 4) for v in singles]}")
    assert multi < min(singles) and multi < 0.8 * float(np.mean(singles))


def test_the_final_pass_runs_the_multi_distance_paganin(tmp_path):
    scan = tmp_path / "scan"
    simulate_scan(scan, SimulationConfig(nx=64, ny=24, n_angles=24))
    base = {"fbp.cor": 31.5, "sample.delta_beta": 100.0}
    multi = process_scan(scan, tmp_path / "m", ProcessConfig.from_mapping({**base,
                                                                           "phase.method": "paganin-multi-distance"}))
    ctf = process_scan(scan, None, ProcessConfig.from_mapping({**base, "phase.method": "ctf"}))
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["phase"]["method"] == "paganin-multi-distance" and report["phase"]["envelope"] is None
    r = float(np.corrcoef(multi.volume.ravel(), ctf.volume.ravel())[0, 1])
    print(f"\nmulti-distance Paganin vs CTF volume: r = {r:.3f}")
    assert r > 0.8
