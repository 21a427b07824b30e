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
    assert list(PHASE_METHODS) == ["paganin", "ctf", "ctf-two-material"]
    assert ProcessConfig().phase.method == "ctf-two-material"
    assert ProcessConfig.layered(env={"XNH_PHASE_METHOD": "paganin"}).phase.method == "paganin"
    with pytest.raises(ConfigError, match="phase.method"):
        ProcessConfig.from_mapping({"phase.method": "tie"})
    with pytest.raises(KeyError, match="known: paganin, ctf, ctf-two-material"):
        phase_method("tie")
    two = phase_method("ctf-two-material")
    assert (two.label(True, False), two.label(False, False), two.label(False, True)) == (
        "ctf-multi-distance-two-material", "ctf-multi-distance", "ctf-multi-distance-fresnel-refined")
    assert phase_method("ctf").label(False, False) == "ctf-multi-distance"
    assert phase_method("paganin").label(False, False) == "paganin-single-distance"
    assert two.envelope and not phase_method("ctf").envelope and not phase_method("paganin").envelope


@pytest.mark.parametrize("name", list(PHASE_METHODS))
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
