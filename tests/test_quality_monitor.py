"""QualityMonitor on simulated scans: drift against the simulator's truth, dose against Howells by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import xraydb

from xnh_stream.config import ProcessConfig
from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.chain.final import feed_monitor
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.quality import QualityMonitor
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan


def feed(monitor: QualityMonitor, folder) -> None:
    """Every frame of a finished scan, distance after distance, pixels only where the monitor wants them."""
    feed_monitor(monitor, ScanIndex.read(folder))


@pytest.fixture(scope="module")
def drifting_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift")
    simulate_scan(folder, SimulationConfig(nx=128, ny=64, n_angles=40, seed=2, drift_px=3.0, warp_scale=0.05))
    return folder


def test_return_projection_drift_recovers_the_simulated_drift_and_scale(drifting_scan):
    truth, record = read_truth(drifting_scan)
    mon = QualityMonitor(ProcessConfig(), str(drifting_scan))
    feed(mon, drifting_scan)
    snap = mon.snapshot()
    angles = truth["angles_deg"]
    cfg = record["config"]
    per_distance = cfg["n_darks"] + 2 * cfg["n_flats"] + cfg["n_angles"] + len(cfg["return_angles_deg"])
    total = 4 * per_distance
    checked = 0
    for k in range(4):
        pairs = [p for p in snap["warp"]["pairs"] if p["pair"].startswith(f"distance {k + 1}: return")]
        for p in pairs:
            j = int(np.flatnonzero(np.isclose(truth["return_angles_deg"], p["angle_deg"]))[0])
            i = int(np.flatnonzero(np.isclose(angles, p["angle_deg"]))[0])
            expected = truth["return_displacement_px"][k, j] - truth["displacement_px"][k, i]
            err = np.hypot(*(np.asarray(p["rigid_yx_px"]) - expected))
            # scale: 1 - warp_scale * t, t the normalised acquisition time of the frame
            t_start = (k * per_distance + cfg["n_darks"] + cfg["n_flats"] + i) / (total - 1)
            t_ret = (k * per_distance + cfg["n_darks"] + 2 * cfg["n_flats"] + cfg["n_angles"] + j) / (total - 1)
            scale = (1 - cfg["warp_scale"] * t_ret) / (1 - cfg["warp_scale"] * t_start)
            print(f"distance {k + 1} at {p['angle_deg']:5.1f} deg: drift {np.round(p['rigid_yx_px'], 3)} px, truth "
                  f"{np.round(expected, 3)} (error {err:.3f}); scale {p['scale']:.5f}, truth {scale:.5f}")
            assert err < 0.2
            assert p["scale"] == pytest.approx(scale, abs=1.5e-3)
            checked += 1
    assert checked == 8  # returns at 90 and 0 degrees of four distances (180 has no start view)
    # the per-distance figure is the largest return drift, in reference pixels and metres
    d1 = max(np.hypot(*(truth["return_displacement_px"][0, j] - truth["displacement_px"][0, i]))
             for j, i in ((1, 20), (2, 0)))
    assert snap["drift"]["return_px"][0] == pytest.approx(d1, abs=0.2)
    assert snap["drift"]["return_m"][0] == pytest.approx(snap["drift"]["return_px"][0] * record["voxel_m"])
    # the distances' rigid offsets against the reference are the simulator's offsets (plus drift)
    for k in (1, 2, 3):
        assert snap["drift"]["inter_distance_px"][k] == pytest.approx(np.hypot(*truth["displacement_px"][k, 0]
                                                                              - truth["displacement_px"][0, 0]), abs=0.6)


@dataclass(frozen=True)
class Rec:
    image_key: int
    image_key_control: int
    rotation_angle_deg: float
    geometry: DistanceGeometry
    count_time_s: float


def _mu_rho_by_hand(formula: dict[str, float], energy_ev: float) -> float:
    """Photo-absorption mass coefficient of a compound from the elements' (Elam tables), m^2/kg."""
    masses = {el: n * xraydb.atomic_mass(el) for el, n in formula.items()}
    total = sum(masses.values())
    return sum(m / total * xraydb.mu_elam(el, energy_ev, kind="photo") for el, m in masses.items()) * 0.1


def test_dose_matches_howells_by_hand_with_gain_efficiency_dead_time_and_magnification():
    e_kev, gain, eff, dead, ct = 17.0, 2.5, 0.8, 0.03, 0.1
    geos = [DistanceGeometry(z1, 1.208 - z1, 3e-6, e_kev) for z1 in (0.0025, 0.0030)]
    cfg = ProcessConfig.from_mapping({"sample.formula": "C5H8O2", "sample.density": 1.2, "dose.detector_gain": gain, "dose.detector_efficiency": eff, "dose.dead_time_s": dead})
    mon = QualityMonitor(cfg, "scan-a")
    dark, flat_counts, n_proj = 100.0, 5100.0, 7
    shape = (8, 8)
    for geo in geos:
        mon.add_frame(Rec(2, 2, 0.0, geo, ct), np.full(shape, dark))
        for _ in range(3):
            mon.add_frame(Rec(1, 1, 0.0, geo, ct), np.full(shape, flat_counts))
        for i in range(n_proj):
            mon.add_frame(Rec(0, 0, 10.0 * i + 1, geo, ct), None)
        mon.add_frame(Rec(0, -1, 1.0, geo, ct), np.full(shape, 3000.0))  # a return projection: exposed too
    dose = mon.snapshot()["dose"]
    mu_rho = _mu_rho_by_hand({"C": 5, "H": 8, "O": 2}, e_kev * 1e3)
    expected = []
    for geo in geos:
        photons = (flat_counts - dark) / (gain * eff)  # per detector pixel per flat (count time ct)
        fluence = photons / (geo.pixel_m / geo.magnification) ** 2 * (ct + dead) / ct * (n_proj + 1)
        expected.append(mu_rho * fluence * e_kev * 1.602176634e-16)
    print(f"\ndose per distance {dose['per_distance_gray']} Gy, by hand {expected}")
    assert dose["per_distance_gray"] == pytest.approx(expected, rel=2e-3)
    assert dose["gray_total"] == pytest.approx(sum(expected), rel=2e-3)
    # xraydb's material routine gives the same coefficient
    assert dose["mu_rho_m2_per_kg"] == pytest.approx(mu_rho, rel=2e-3)
    assert dose["sample_gray"] == dose["gray_total"]  # no ledger: the sample's dose is this scan's


def test_dose_accumulates_across_scans_of_the_same_sample_in_the_ledger(tmp_path):
    geo = DistanceGeometry(0.0025, 1.2, 3e-6, 17.0)
    cfg = ProcessConfig.from_mapping({"dose.ledger": str(tmp_path / "ledger.json"), "sample.name": "fly-7"})

    def scan(scan_id: str, n: int) -> QualityMonitor:
        mon = QualityMonitor(cfg, scan_id)
        mon.add_frame(Rec(1, 1, 0.0, geo, 0.1), np.full((4, 4), 1000.0))
        for i in range(n):
            mon.add_frame(Rec(0, 0, float(i), geo, 0.1), None)
        return mon

    first = scan("scan-1", 10)
    g1 = first.snapshot()["dose"]["gray_total"]
    first.close()
    second = scan("scan-2", 20)
    d2 = second.snapshot()["dose"]
    assert d2["gray_total"] == pytest.approx(2 * g1)
    assert d2["previous_scans_gray"] == pytest.approx(g1) and d2["sample_gray"] == pytest.approx(3 * g1)
    second.close()
    again = scan("scan-2", 20)  # the same scan re-processed: replaces its own entry, not counted twice
    assert again.snapshot()["dose"]["sample_gray"] == pytest.approx(3 * g1)
    other = QualityMonitor(ProcessConfig.from_mapping({"dose.ledger": cfg.dose.ledger, "sample.name": "another"}), "scan-9")
    other.add_frame(Rec(1, 1, 0.0, geo, 0.1), np.full((4, 4), 1000.0))
    assert other.snapshot()["dose"]["previous_scans_gray"] == 0.0


def test_a_corrupt_ledger_is_named_and_a_dark_without_pixels_refused(tmp_path):
    from xnh_stream.quality.dose import LedgerError

    bad = tmp_path / "ledger.json"
    bad.write_text("{not json")
    mon = QualityMonitor(ProcessConfig.from_mapping({"dose.ledger": str(bad)}), "s")
    geo = DistanceGeometry(0.0025, 1.2, 3e-6, 17.0)
    mon.add_frame(Rec(1, 1, 0.0, geo, 0.1), np.full((4, 4), 1000.0))
    with pytest.raises(LedgerError, match="ledger.json"):
        mon.snapshot()
    with pytest.raises(ValueError, match="dark frame needs its pixels"):
        mon.add_frame(Rec(2, 2, 0.0, geo, 0.1), None)
    assert math.isfinite(mon.dose.total_gray())
