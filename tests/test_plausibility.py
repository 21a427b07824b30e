"""Do the distances show one sample? The verdict on the distance registrations, on arrays, on a simulated scan
and on random pixel data, and the final pass's critical alert."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.final import FinalChain
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import DARK, FLAT
from xnh_stream.quality.plausibility import MIN_CONSISTENT, assess_distance_registrations
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan

# 64 x 24: on smaller frames random data can look consistent by chance, and the verdict stays open
SIM = SimulationConfig(nx=64, ny=24, n_angles=16, seed=12, oversample=1, n_flats=3, n_darks=2)
ALIGN = {"alignment.angles": 12}


def registrations(rng: np.random.Generator, random: bool, n: int = 16, k: int = 4, half_range: float = 20.0):
    """Angles, peaks, ok flags and shifts of ``k`` distances at ``n`` angles, distance 0 the reference: a
    sample (a fixed offset per distance, a slow drift, 0.1 px of noise, high peaks) or chance peaks (anywhere
    within +-``half_range`` px, low peaks, some accepted)."""
    thetas = np.linspace(0, 180, n, endpoint=False)
    if random:
        shifts = rng.uniform(-half_range, half_range, (n, k, 2))
        peaks = rng.uniform(0.1, 0.45, (n, k))
        ok = peaks > 0.3
    else:
        offsets = rng.uniform(-4, 4, (1, k, 2))
        drift = 0.5 * np.sin(np.deg2rad(thetas))[:, None, None]
        shifts = offsets + drift + rng.normal(0, 0.1, (n, k, 2))
        peaks = rng.uniform(0.85, 0.97, (n, k))
        ok = np.ones((n, k), bool)
    shifts[:, 0], peaks[:, 0], ok[:, 0] = 0.0, 1.0, True
    return thetas, peaks, ok, shifts


def test_a_sample_is_plausible_and_chance_peaks_are_not():
    rng = np.random.default_rng(0)
    real = assess_distance_registrations(*registrations(rng, False), reference=0, frame_shape=(64, 128))
    assert real.implausible is False and min(real.consistent.values()) == 1.0
    assert set(real.consistent) == {2, 3, 4} and all(p > 0.8 for p in real.median_peak.values())
    noise = assess_distance_registrations(*registrations(rng, True), reference=0, frame_shape=(64, 128))
    assert noise.implausible is True and max(noise.consistent.values()) < MIN_CONSISTENT
    assert "do not show one sample" in noise.reason and "distance 2" in noise.reason


def test_one_distance_of_chance_peaks_does_not_condemn_the_scan():
    rng = np.random.default_rng(1)
    thetas, peaks, ok, shifts = registrations(rng, False)
    _, p2, o2, s2 = registrations(rng, True)
    peaks[:, 3], ok[:, 3], shifts[:, 3] = p2[:, 3], o2[:, 3], s2[:, 3]
    v = assess_distance_registrations(thetas, peaks, ok, shifts, reference=0)
    assert v.implausible is False and v.consistent[4] < MIN_CONSISTENT <= v.consistent[2]


def test_the_reference_may_be_any_distance_and_angles_in_any_order():
    rng = np.random.default_rng(2)
    thetas, peaks, ok, shifts = registrations(rng, False)
    order = rng.permutation(thetas.size)
    v = assess_distance_registrations(thetas[order], peaks[order][:, ::-1], ok[order][:, ::-1],
                                      shifts[order][:, ::-1], reference=3)
    assert v.implausible is False and set(v.consistent) == {1, 2, 3}


def test_too_little_to_tell_decides_nothing():
    rng = np.random.default_rng(3)
    thetas, peaks, ok, shifts = registrations(rng, True)
    assert assess_distance_registrations(thetas[:3], peaks[:3], ok[:3], shifts[:3], 0).implausible is None
    assert assess_distance_registrations(thetas, peaks[:, :1], ok[:, :1], shifts[:, :1], 0).implausible is None
    tiny = assess_distance_registrations(thetas, peaks, ok, shifts, 0, frame_shape=(16, 48))
    assert tiny.implausible is None and "16 x 48" in tiny.reason
    with pytest.raises(ValueError, match="peaks and ok"):
        assess_distance_registrations(thetas, peaks, ok[:, :2], shifts, 0)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A simulated scan, and the same files with random pixel data (darks low, flats high, projections
    between: the flat-field accepts every distance)."""
    root = tmp_path_factory.mktemp("plausible")
    simulate_scan(root / "real", SIM)
    (root / "real" / "truth.h5").unlink()
    shutil.copytree(root / "real", root / "noise")
    rng = np.random.default_rng(5)
    for p in sorted((root / "noise").glob("*.nx")):
        with h5py.File(p, "r+") as f:
            data = f["entry0000/instrument/detector/data"]
            keys = f["entry0000/instrument/detector/image_key"][()][:, None, None]
            shape = data.shape
            data[...] = np.where(keys == DARK, rng.uniform(90, 110, shape),
                                 np.where(keys == FLAT, rng.uniform(15000, 25000, shape),
                                          rng.uniform(5000, 25000, shape))).astype(data.dtype)
    return root


def _align(folder: Path) -> FinalChain:
    chain = FinalChain(ScanIndex.read(folder), None, ProcessConfig.from_mapping(ALIGN))
    cals = chain.calibrate()
    slots = chain.pair()
    chain.align(slots, chain.corrected_frames(cals, slots))
    return chain


def test_the_align_step_tells_a_simulated_scan_from_random_pixel_data(scans):
    real = _align(scans / "real")
    assert not [a for a in real.alerts if a.name == "ImplausibleProjections"]  # the chain keeps Alert objects
    noise = _align(scans / "noise")
    assert len(noise.index.distances) == 4  # nothing else set the random data aside
    (alert,) = [a for a in noise.alerts if a.name == "ImplausibleProjections"]
    assert alert.severity == "critical" and "do not show one sample" in alert.message


def test_the_report_of_random_pixel_data_carries_the_critical_alert(scans, tmp_path):
    rep = process_scan(scans / "noise", tmp_path / "out", ProcessConfig.from_mapping(ALIGN)).report
    assert any(a["name"] == "ImplausibleProjections" and a["severity"] == "critical" for a in rep.alerts)
    verdict = rep.alignment["plausibility"]
    assert verdict["implausible"] is True and max(verdict["consistent"].values()) < MIN_CONSISTENT
