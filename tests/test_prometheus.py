"""Prometheus side: promtool on the alert rules and the scrape config, and on real scrapes of a running stream.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without it these tests skip,
unless ``XNH_REQUIRE_PROMETHEUS=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from xnh_stream.config import ProcessConfig
from xnh_stream.metrics import PipelineMetrics
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"


def require_tool(name: str) -> str:
    """Path of a Prometheus tool; skip without it, fail without it when CI requires it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found (Debian package 'prometheus')"
        if os.environ.get("XNH_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(msg + " but XNH_REQUIRE_PROMETHEUS=1")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def alert_names() -> list[str]:
    rules = yaml.safe_load((PROM / "rules" / "xnh.yml").read_text())
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_alert_rules_fire_and_stay_silent(promtool):
    r = run([promtool, "test", "rules", "tests/xnh_test.yml"], cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    cases = yaml.safe_load((PROM / "tests" / "xnh_test.yml").read_text())["tests"]
    fired, silent = set(), set()
    for case in cases:
        for t in case["alert_rule_test"]:
            (fired if t["exp_alerts"] else silent).add(t["alertname"])
    names = set(alert_names())
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_rule_tests_catch_a_changed_threshold(promtool, tmp_path):
    """Mutation check: the rule tests fail when a threshold moves (they are not vacuous)."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    rules = copy / "rules" / "xnh.yml"
    text = rules.read_text()
    assert "xnh_warp_nonrigid_pixels > 0.5" in text
    rules.write_text(text.replace("xnh_warp_nonrigid_pixels > 0.5", "xnh_warp_nonrigid_pixels > 1.0"))
    r = run([promtool, "test", "rules", "tests/xnh_test.yml"], cwd=copy)
    assert r.returncode != 0 and "XnhWarpWarning" in r.stdout + r.stderr


def test_rule_thresholds_are_the_config_defaults():
    """The quality rules fire where the pipeline's own alerts do with a default configuration."""
    import re

    c = ProcessConfig()
    rules = yaml.safe_load((PROM / "rules" / "xnh.yml").read_text())
    exprs = {r["alert"]: r["expr"].strip() for g in rules["groups"] for r in g["rules"]}
    expected = {"XnhDoseWarning": c.dose.warning_gray, "XnhDoseCritical": c.dose.critical_gray,
                "XnhDriftWarning": c.alerts.drift_warning_px, "XnhDriftCritical": c.alerts.drift_critical_px,
                "XnhWarpWarning": c.alerts.warp_warning_px, "XnhWarpCritical": c.alerts.warp_critical_px,
                "XnhScaleWarning": c.alerts.scale_warning, "XnhScaleCritical": c.alerts.scale_critical}
    for name, value in expected.items():
        threshold = float(re.search(r">\s*([0-9.eE+-]+)$", exprs[name]).group(1))
        assert threshold == pytest.approx(value), f"{name}: rule {threshold} vs config default {value}"


def test_scrape_config_and_rules_are_valid(promtool):
    r = run([promtool, "check", "config", "prometheus.yml"], cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr


def test_alerts_are_documented():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    missing = [a for a in alert_names() if f"`{a}`" not in doc]
    assert not missing, f"alerts missing from docs/metrics.md: {missing}"


def test_promtool_check_metrics_has_teeth(promtool):
    bad = "# HELP xnh_bad_milliseconds x\n# TYPE xnh_bad_milliseconds counter\nxnh_bad_milliseconds 1\n"
    r = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "xnh_bad_milliseconds" in r.stdout + r.stderr


# --- a real stream, scraped over HTTP while it runs -------------------------------------------------------
@pytest.fixture(scope="module")
def scraped_stream(ray_local, tmp_path_factory):
    """A small simulated scan streamed through the stream driver on Ray, its exporter scraped over HTTP
    mid-scan and at the end."""
    from tests.test_stream import ListSource, stream

    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SimulationConfig(nx=48, ny=16, n_angles=24, seed=5, oversample=1))
    _, record = read_truth(folder)
    m = PipelineMetrics()
    port = m.serve(0)
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes, progress = [], []

    def on_progress(state):
        m.update(state)
        progress.append(state)
        if not scrapes and state.angles_final >= 8:  # mid-scan
            scrapes.append(urllib.request.urlopen(url, timeout=5).read().decode())

    out = tmp_path_factory.mktemp("out")
    try:
        result = stream(ListSource(folder, per_poll=10), folder, out,
                        ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"]}),
                        poll_interval_s=0.0, on_progress=on_progress, subscribers=(m.scan_complete,))
        scrapes.append(urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        m.close()
    return result, scrapes, out


def parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.slow
def test_real_scrapes_pass_promtool_check_metrics(promtool, scraped_stream):
    _, scrapes, _ = scraped_stream
    assert len(scrapes) == 2, "no mid-scan scrape"
    for text in scrapes:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_real_scrape_matches_the_stream(scraped_stream):
    result, scrapes, out = scraped_stream
    mid, end = parse(scrapes[0]), parse(scrapes[-1])
    c = result.counts
    # the journal's account, exactly
    assert end[("xnh_frames_received_total", ())] == c["received"]
    assert end[("xnh_frames_processed_total", ())] == c["processed"]
    assert end[("xnh_frames_quarantined_total", ())] == c["quarantined"]
    assert end[("xnh_frames_pending", ())] == 0
    assert 0 < mid[("xnh_frames_received_total", ())] < c["received"]
    assert end[("xnh_scans_completed_total", ())] == 1
    assert end[("xnh_angles", (("state", "final"),))] == 24
    # every angle went through phase retrieval with the CTF once and every work item was back-projected
    lat = {s: end[("xnh_stage_latency_seconds_count", (("stage", s),))]
           for s in ("phase_preview", "phase_ctf", "backprojection", "landing_to_preview", "landing_to_final")}
    assert lat["phase_ctf"] == 24 and lat["landing_to_final"] == 24
    assert lat["backprojection"] == lat["phase_preview"] + lat["phase_ctf"]
    assert 0 < lat["landing_to_preview"] <= lat["phase_preview"]
    # landing-to-final includes phase retrieval and back-projection, so its mean is not below either
    mean = {s: end[("xnh_stage_latency_seconds_sum", (("stage", s),))] / lat[s] for s in ("phase_ctf", "landing_to_final")}
    assert mean["landing_to_final"] >= mean["phase_ctf"] > 0
    on_disk = sum(f.stat().st_size for f in (out / "store").rglob("*") if f.is_file())
    assert 0 < end[("xnh_store_bytes", ())] <= on_disk  # sampled every 5 s; the store only grows
    assert end[("xnh_cluster_cpus", (("state", "total"),))] == 2  # ray_local: num_cpus=2
    assert end[("xnh_actors", (("kind", "recon_shard"),))] == 1  # tests/test_stream.stream(): one shard
    assert end[("xnh_actors", (("kind", "slice_keeper"),))] == 1
    assert end[("xnh_actor_restarts_total", (("kind", "recon_shard"),))] == 0
    assert end[("process_resident_memory_bytes", ())] > 0
