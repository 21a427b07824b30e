"""The Prometheus exporter fed with synthetic progress reports (no Ray): values, counters, alerts, HTTP."""

from __future__ import annotations

import math
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xnh_stream.chain.report import DistanceState, StreamProgress as P
from xnh_stream.metrics import PipelineMetrics

ROOT = Path(__file__).resolve().parents[1]


def samples(m: PipelineMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed by prometheus-client's own parser."""
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: PipelineMetrics, metric: str, **labels: str) -> float:
    return samples(m)[(metric, tuple(sorted(labels.items())))]


QUALITY = {
    "fsc": {"resolution_m": 84e-9, "fraction_angles": 0.5, "edge_resolution_m": 91e-9},
    "dose": {"gray_total": 3.2e6, "per_distance_gray": [1.1e6, 0.9e6, 0.7e6, 0.5e6], "sample_gray": 9.6e6},
    "drift": {"return_px": [0.2, 0.4, 1.6, 0.1], "return_m": [2e-9, 4e-9, 16e-9, 1e-9],
              "inter_distance_px": [0.0, 0.3, 0.2, 0.1]},
    "warp": {"rigid_px": 1.25, "scale": 0.002, "nonrigid_px": 0.75, "nonrigid_m": 7.5e-9},
    "alerts": [{"name": "DoseWarning", "severity": "warning", "message": "9.6 MGy"}],
}


def test_progress_with_quality_is_exported_as_given():
    m = PipelineMetrics(process_metrics=False)
    m.update(P(journal={"received": 40, "processed": 30, "quarantined": 2, "pending": 8, "duplicates": 1},
               distances=[DistanceState(0.01, 20, 3), DistanceState(0.02, 20, 0)],
               angles_seen=12, angles_final=5,
               queues={"phase_in_flight": 4, "backprojection": 2, "waiting_for_flats": 3},
               latency_s={"landing_to_preview": [0.2, 0.7, 3.0]}, restarts={"recon_shard": 1},
               store_bytes=123456, actors={"recon_shard": 2, "phase_worker": 3},
               cluster={"nodes": 2, "cpus_total": 16.0, "cpus_available": 3.0}, quality=QUALITY))
    v = samples(m)
    assert v[("xnh_frames_received_total", ())] == 40 and v[("xnh_frames_quarantined_total", ())] == 2
    assert v[("xnh_frames_pending", ())] == 8
    assert v[("xnh_distance_frames", (("distance", "2"),))] == 20
    assert v[("xnh_angles", (("state", "final"),))] == 5
    assert v[("xnh_queue_items", (("queue", "phase_in_flight"),))] == 4
    assert v[("xnh_queue_items", (("queue", "waiting_for_flats"),))] == 3
    assert v[("xnh_queue_items", (("queue", "backprojection"),))] == 2
    lat = (("stage", "landing_to_preview"),)
    assert v[("xnh_stage_latency_seconds_count", lat)] == 3
    assert v[("xnh_stage_latency_seconds_sum", lat)] == pytest.approx(3.9)
    assert v[("xnh_stage_latency_seconds_bucket", (("le", "0.5"),) + lat)] == 1  # cumulative buckets
    assert v[("xnh_stage_latency_seconds_bucket", (("le", "5.0"),) + lat)] == 3
    assert v[("xnh_actor_restarts_total", (("kind", "recon_shard"),))] == 1
    assert v[("xnh_actors", (("kind", "phase_worker"),))] == 3
    assert v[("xnh_store_bytes", ())] == 123456
    assert v[("xnh_cluster_cpus", (("state", "available"),))] == 3
    # quality figures, in base units, per distance where the contract has lists
    assert v[("xnh_fsc_resolution_meters", ())] == 84e-9
    assert v[("xnh_fsc_edge_resolution_meters", ())] == 91e-9
    assert v[("xnh_fsc_angles_ratio", ())] == 0.5
    for k, g in enumerate(QUALITY["dose"]["per_distance_gray"]):
        assert v[("xnh_dose_gray", (("distance", str(k + 1)),))] == g
    assert v[("xnh_dose_scan_gray", ())] == 3.2e6 and v[("xnh_dose_sample_gray", ())] == 9.6e6
    assert v[("xnh_drift_return_pixels", (("distance", "3"),))] == 1.6
    assert v[("xnh_drift_return_meters", (("distance", "3"),))] == 16e-9
    assert v[("xnh_drift_inter_distance_pixels", (("distance", "2"),))] == 0.3
    assert v[("xnh_warp_rigid_pixels", ())] == 1.25 and v[("xnh_warp_nonrigid_meters", ())] == 7.5e-9
    assert v[("xnh_warp_scale_ratio", ())] == 0.002
    assert v[("xnh_alerts_firing", (("name", "DoseWarning"), ("severity", "warning")))] == 1
    # no label carries a scan id or any other unbounded value
    allowed = {"stage", "queue", "kind", "state", "distance", "name", "severity", "le", "reason"}
    assert {k for _, labels in v for k, _ in labels} <= allowed


def test_counters_follow_cumulative_counts_and_restart_per_scan():
    m = PipelineMetrics(process_metrics=False)
    m.update(P(journal={"received": 10, "processed": 4}))
    m.update(P(journal={"received": 25, "processed": 20}))
    assert value(m, "xnh_frames_received_total") == 25 and value(m, "xnh_frames_processed_total") == 20
    m.update(P(journal={"received": 25, "processed": 20}))  # no news: no increase
    assert value(m, "xnh_frames_received_total") == 25
    m.new_scan()
    m.update(P(journal={"received": 7, "processed": 7}))
    assert value(m, "xnh_frames_received_total") == 32  # counters never go down across scans
    m.update(P(restarts={"recon_shard": 2}))
    m.update(P(restarts={"recon_shard": 3}))
    assert value(m, "xnh_actor_restarts_total", kind="recon_shard") == 3


def test_alerts_clear_and_absent_quality_leaves_figures_unmeasured():
    m = PipelineMetrics(process_metrics=False)
    m.update(P(journal={"received": 1}))  # no quality: nothing fails, FSC not measured yet
    assert math.isnan(value(m, "xnh_fsc_resolution_meters"))
    assert ("xnh_dose_scan_gray", ()) in samples(m)  # the series exists (0) so dashboards show it
    m.update(P(quality={"alerts": QUALITY["alerts"] + [{"name": "WarpCritical", "severity": "critical",
                                                        "message": "x"}]}))
    m.update(P(quality={"alerts": [{"name": "WarpCritical", "severity": "critical", "message": "x"}],
                        "fsc": {"resolution_m": None, "fraction_angles": 0.1, "edge_resolution_m": None}}))
    assert value(m, "xnh_alerts_firing", name="DoseWarning", severity="warning") == 0
    assert value(m, "xnh_alerts_firing", name="WarpCritical", severity="critical") == 1
    assert math.isnan(value(m, "xnh_fsc_resolution_meters"))


def test_report_and_overnight_accounting():
    m = PipelineMetrics(process_metrics=False)
    report = {"frames": {"received": 100, "processed": 97, "quarantined": 3}, "fsc": {"resolution_m": 1e-7},
              "edge": {"resolution_m": 1.2e-7}, "dose": {"gray": 5e6, "per_distance_gray": [2e6, 3e6]},
              "alerts": [{"name": "AlignmentPeakRejected", "severity": "warning", "message": "m"}]}
    m.observe_report(report)
    m.observe_report(report)
    assert value(m, "xnh_frames_quarantined_total") == 6  # two scans' reports
    assert value(m, "xnh_dose_gray", distance="2") == 3e6 and value(m, "xnh_fsc_resolution_meters") == 1e-7
    m.overnight_queue_length(4)
    m.overnight_scan("done", 12.0)
    m.overnight_scan("failed", 0.5)
    m.overnight_scan("skipped")
    assert value(m, "xnh_overnight_queue_scans") == 4
    assert value(m, "xnh_overnight_scans_done_total") == 1 and value(m, "xnh_overnight_scans_failed_total") == 1
    assert value(m, "xnh_overnight_scans_skipped_total") == 1
    assert value(m, "xnh_overnight_scan_duration_seconds_count") == 2
    assert value(m, "xnh_overnight_scan_duration_seconds_bucket", le="1.0") == 1
    m.overnight_scan("flagged", 3.0)
    assert value(m, "xnh_overnight_scans_flagged_total") == 1
    assert value(m, "xnh_overnight_scan_duration_seconds_count") == 3
    with pytest.raises(ValueError, match="done, flagged, failed or skipped"):
        m.overnight_scan("lost")


def test_http_endpoint_serves_the_registry_only():
    m = PipelineMetrics()
    port = m.serve(0)
    try:
        m.update(P(journal={"received": 3}))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "xnh_frames_received_total 3.0" in body
        assert "process_resident_memory_bytes" in body
        assert "python_gc_objects_collected_total" not in body  # not the global default registry
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            PipelineMetrics(process_metrics=False).serve(port)
    finally:
        m.close()


def test_every_metric_family_is_documented():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    m = PipelineMetrics(process_metrics=False)
    names = {fam.name for fam in m.registry.collect()}
    documented = set(re.findall(r"`(xnh_[a-z_]+)", doc))
    exported = {n + "_total" if n + "_total" in doc else n for n in names}
    assert exported - documented == set(), "metrics missing from docs/metrics.md"
