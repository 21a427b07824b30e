"""The exporter on real quality figures: a QualityMonitor fed a simulated scan with injected drift, warping and
overdose. The exported gauges carry the monitor's figures, and the Prometheus rules, evaluated by promtool on
those gauges, fire exactly the alerts the pipeline itself raises with the default configuration."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from xnh_stream.config import ProcessConfig
from xnh_stream.chain.report import StreamProgress
from xnh_stream.metrics import PipelineMetrics
from xnh_stream.quality.monitor import QualityMonitor
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan

from .test_prometheus import PROM, require_tool
from .test_stream import ListSource

#: Pipeline alert -> the rules that evaluate the same condition from the gauges (warning, critical).
RULES_FOR = {"SampleDoseHigh": ("XnhDoseWarning", "XnhDoseCritical"),
             "SampleDrift": ("XnhDriftWarning", "XnhDriftCritical"),
             "SampleWarping": ("XnhWarpWarning", "XnhWarpCritical"),
             "SampleScaleChange": ("XnhScaleWarning", "XnhScaleCritical")}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    # 2e7 photons per pixel: about 5e8 Gy on this sample (default warning 1e8 Gy, critical 1e9 Gy); warping
    # and a 1 % shrinkage over the scan; a 2 px drift
    simulate_scan(folder, SimulationConfig(nx=64, ny=48, n_angles=24, seed=7, oversample=1, photons=2e7,
                                           warp_px=2.0, warp_scale=0.01, drift_px=2.0))
    monitor = QualityMonitor(ProcessConfig(), str(folder))
    m = PipelineMetrics(process_metrics=False)
    for rec, pixels in ListSource(folder).items:
        monitor.add_frame(rec, pixels)
    quality = monitor.snapshot()
    m.update(StreamProgress(quality=quality))
    return quality, m


def scrape(m):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(m.exposition().decode()) for s in fam.samples}


def test_gauges_carry_the_monitors_figures(monitored):
    q, m = monitored
    v = scrape(m)
    print(f"\ndose {q['dose']['sample_gray']:.3g} Gy, drift {q['drift']['return_px']} px, warp "
          f"{q['warp']['nonrigid_px']} px, scale {q['warp']['scale']}, alerts "
          f"{[(a['name'], a['severity']) for a in q['alerts']]}")
    assert v[("xnh_dose_sample_gray", ())] == q["dose"]["sample_gray"]
    assert v[("xnh_dose_scan_gray", ())] == q["dose"]["gray_total"]
    for k, g in enumerate(q["dose"]["per_distance_gray"]):
        assert v[("xnh_dose_gray", (("distance", str(k + 1)),))] == g
    for k, px in enumerate(q["drift"]["return_px"]):
        assert v[("xnh_drift_return_pixels", (("distance", str(k + 1)),))] == px
    assert v[("xnh_warp_nonrigid_pixels", ())] == q["warp"]["nonrigid_px"]
    assert v[("xnh_warp_scale_ratio", ())] == q["warp"]["scale"]
    for a in q["alerts"]:
        assert v[("xnh_alerts_firing", (("name", a["name"]), ("severity", a["severity"])))] == 1
    # the injected overdose and shrinkage are seen (the scan is built to raise them; the warping here sits
    # near its 0.5 px threshold, so it is not required)
    assert {a["name"] for a in q["alerts"]} >= {"SampleDoseHigh", "SampleScaleChange"}


def test_prometheus_rules_fire_the_pipelines_own_alerts(monitored, tmp_path):
    """promtool evaluates the shipped rules on the exported gauges; expected: the monitor's alerts."""
    promtool = require_tool("promtool")
    q, m = monitored
    v = scrape(m)
    names = ("xnh_dose_sample_gray", "xnh_drift_return_pixels", "xnh_warp_nonrigid_pixels", "xnh_warp_scale_ratio")
    series = []
    for (name, labels), value in v.items():
        if name in names and not math.isnan(value):
            lab = ", ".join(f'{k}="{x}"' for k, x in labels)
            series.append({"series": f"{name}{{{lab}}}", "values": f"{value!r} {value!r}"})
    raised = {a["name"]: a["severity"] for a in q["alerts"]}
    cases = []
    for alert, (warning, critical) in RULES_FOR.items():
        severity = raised.get(alert)
        for rule, fires in ((warning, severity is not None), (critical, severity == "critical")):
            level = "critical" if rule.endswith("Critical") else "warning"
            exp = []
            if fires and alert == "SampleDrift":  # one rule alert per distance above the threshold
                c = ProcessConfig()
                limit = c.alerts.drift_critical_px if level == "critical" else c.alerts.drift_warning_px
                exp = [{"exp_labels": {"severity": level, "distance": str(k + 1)}}
                       for k, px in enumerate(q["drift"]["return_px"]) if px is not None and abs(px) > limit]
            elif fires:
                exp = [{"exp_labels": {"severity": level}}]
            cases.append({"eval_time": "1m", "alertname": rule, "exp_alerts": exp})
    rules = yaml.safe_load((PROM / "rules" / "xnh.yml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)  # the figures' texts are checked in deploy/prometheus/tests
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}]}))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
