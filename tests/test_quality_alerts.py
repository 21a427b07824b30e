"""Alerts: each fires above its threshold and stays silent below; the webhook gets Alertmanager v2 JSON."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from xnh_stream.config import ConfigError, ProcessConfig
from xnh_stream.quality.alerts import Alert, AlertRouter, CallbackSink, WebhookSink, evaluate_alerts

CFG = ProcessConfig.from_mapping({"dose.warning_gray": 1e8, "dose.critical_gray": 1e9, "alerts.drift_warning_px": 1.0, "alerts.drift_critical_px": 3.0, "alerts.drift_warning_nm": 150.0, "alerts.warp_warning_px": 0.5, "alerts.warp_critical_px": 1.5, "alerts.scale_warning": 0.002, "alerts.scale_critical": 0.01, "alerts.fsc_warning_voxels": 4.0, "alerts.fsc_min_fraction": 0.5})


def quality(dose=0.0, drift_px=None, warp_px=None, scale=None, res_m=None, fraction=1.0, voxel=50e-9):
    return {"dose": {"sample_gray": dose, "gray_total": dose, "sample": "s"},
            "drift": {"return_px": [0.1, drift_px], "return_m": [0.1 * voxel, None if drift_px is None
                                                                 else drift_px * voxel]},
            "warp": {"nonrigid_px": warp_px, "nonrigid_m": None if warp_px is None else warp_px * voxel,
                     "scale": scale},
            "fsc": {"resolution_m": res_m, "voxel_m": voxel, "fraction_angles": fraction, "full_coverage": True}}


def fired(q):
    return {a.name: a.severity for a in evaluate_alerts(q, CFG)}


@pytest.mark.parametrize("name, below, warning, critical", [
    ("SampleDoseHigh", dict(dose=0.9e8), dict(dose=1.1e8), dict(dose=1.1e9)),
    ("SampleDrift", dict(drift_px=0.9), dict(drift_px=1.1), dict(drift_px=3.1)),
    ("SampleWarping", dict(warp_px=0.45), dict(warp_px=0.55), dict(warp_px=1.6)),
    ("SampleScaleChange", dict(scale=0.9985), dict(scale=0.997), dict(scale=1.011)),
    ("ResolutionPoor", dict(res_m=190e-9), dict(res_m=210e-9), None),
])
def test_each_alert_fires_above_its_threshold_and_stays_silent_below(name, below, warning, critical):
    assert name not in fired(quality(**below))
    assert fired(quality(**warning))[name] == "warning"
    if critical:
        assert fired(quality(**critical))[name] == "critical"


def test_thresholds_in_nm_and_the_fsc_fraction_gate():
    # 2.9 px at 60 nm = 174 nm: below the 3 px critical threshold but above the 150 nm warning one
    assert fired(quality(drift_px=2.9, voxel=60e-9))["SampleDrift"] == "warning"
    assert fired(quality(drift_px=0.9, voxel=200e-9))["SampleDrift"] == "warning"  # 180 nm > 150 nm
    assert "ResolutionPoor" not in fired(quality(res_m=400e-9, fraction=0.3))  # too early to judge
    assert not fired(quality())  # nothing measured: nothing fires
    with pytest.raises(ConfigError, match="drift_critical_px"):
        ProcessConfig.from_mapping({"alerts.drift_warning_px": 2.0, "alerts.drift_critical_px": 1.0})


class Receiver(BaseHTTPRequestHandler):
    bodies: list = []
    delay = 0.0

    def do_POST(self):  # noqa: N802
        time.sleep(self.delay)
        n = int(self.headers["Content-Length"])
        Receiver.bodies.append((self.path, self.headers["Content-Type"], json.loads(self.rfile.read(n))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def receiver():
    Receiver.bodies, Receiver.delay = [], 0.0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_webhook_receives_alertmanager_v2_json_and_resolutions(receiver):
    url = f"http://127.0.0.1:{receiver.server_port}/api/v2/alerts"
    sink = WebhookSink(url, timeout_s=2.0, resend_s=3600)
    journal = []
    router = AlertRouter([sink, CallbackSink(journal.append)])
    router.update(evaluate_alerts(quality(dose=2e9, drift_px=1.2), CFG))
    router.update(evaluate_alerts(quality(dose=2e9, drift_px=1.2), CFG))  # unchanged: not re-sent
    router.update(evaluate_alerts(quality(dose=2e9), CFG))  # drift resolved
    assert sink.flush(5.0)
    assert [b[0] for b in Receiver.bodies] == ["/api/v2/alerts"] * 2
    assert all(b[1] == "application/json" for b in Receiver.bodies)
    first, second = Receiver.bodies[0][2], Receiver.bodies[1][2]
    assert isinstance(first, list) and {a["labels"]["alertname"] for a in first} == {"SampleDoseHigh", "SampleDrift"}
    for a in first + second:
        assert set(a) >= {"labels", "annotations", "startsAt", "endsAt"}
        assert a["labels"]["severity"] in ("warning", "critical") and a["annotations"]["description"]
        assert a["startsAt"].endswith("Z") and a["endsAt"].endswith("Z")
    dose = next(a for a in first if a["labels"]["alertname"] == "SampleDoseHigh")
    assert dose["labels"]["severity"] == "critical" and dose["endsAt"] > dose["startsAt"]
    resolved = next(a for a in second if a["labels"]["alertname"] == "SampleDrift")
    assert resolved["endsAt"] <= next(a for a in second if a["labels"]["alertname"] == "SampleDoseHigh")["endsAt"]
    assert [a.name for a in journal] == ["SampleDoseHigh", "SampleDrift"]  # once each
    assert {h["name"] for h in router.history} == {"SampleDoseHigh", "SampleDrift"}
    router.close()


def test_a_slow_or_absent_webhook_never_blocks(receiver):
    Receiver.delay = 1.5
    slow = WebhookSink(f"http://127.0.0.1:{receiver.server_port}/api/v2/alerts", timeout_s=0.3)
    t = time.perf_counter()
    for i in range(30):
        slow.publish(evaluate_alerts(quality(dose=2e8 * (i + 1)), CFG), [], changed=True)
    assert time.perf_counter() - t < 0.2
    slow.flush(3.0)
    assert slow.failures >= 1 and slow.superseded >= 1  # timed out, and newer payloads replaced older ones
    dead = WebhookSink("http://127.0.0.1:9/api/v2/alerts", timeout_s=0.5)  # nothing listens on port 9
    dead.publish(evaluate_alerts(quality(dose=2e9), CFG), [], changed=True)
    assert dead.flush(3.0) and dead.failures == 1 and dead.sent == 0
    with pytest.raises(ValueError, match="http"):
        WebhookSink("alertmanager:9093")


def test_webhook_credentials_are_sent_as_basic_auth_and_never_logged_or_reported(caplog):
    """``http://user:secret@host/...``: the password goes in the Authorization header only; logs, the sink's
    url and the report's config show ``***@``."""
    import base64
    import http.server
    import logging
    import threading

    from xnh_stream.config import ProcessConfig
    from xnh_stream.quality.alerts import WebhookSink, redact_url

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://alice:s3cr%40t@127.0.0.1:{server.server_port}/api/v2/alerts"
    try:
        with caplog.at_level(logging.DEBUG):
            sink = WebhookSink(url, timeout_s=2.0)
            sink.publish([Alert("DoseWarning", "warning", "x", 1.0, 0.5)], [], True)
            assert sink.flush(10)
            bad = WebhookSink("http://bob:hunter2@127.0.0.1:1/x", timeout_s=0.5)  # refused: logged
            bad.publish([Alert("DoseWarning", "warning", "x", 1.0, 0.5)], [], True)
            bad.flush(10)
    finally:
        server.shutdown()
    assert seen == ["Basic " + base64.b64encode(b"alice:s3cr@t").decode()]
    assert sink.url.startswith("http://***@127.0.0.1") and bad.failures == 1
    logs = caplog.text
    assert "s3cr" not in logs and "hunter2" not in logs and "***@127.0.0.1:1/x" in logs
    assert "hunter2" not in str(ProcessConfig.from_mapping({"alerts.webhook": "http://bob:hunter2@am:9093/a"}).to_dict())
    assert redact_url("http://am:9093/a") == "http://am:9093/a"


def test_an_alert_entry_holds_only_what_is_set():
    """The final pass's and the stream's alerts keep their report.json form (name, severity, message);
    a figure, a threshold and labels appear where given."""
    plain = Alert("RotationAxisUnknown", "critical", "no estimate")
    assert plain.as_entry() == {"name": "RotationAxisUnknown", "severity": "critical", "message": "no estimate"}
    assert list(plain.as_entry()) == ["name", "severity", "message"]
    full = Alert("SampleDrift", "warning", "moved", value=1.5, threshold=1.0, labels={"distance": "2"})
    assert full.as_entry() == full.as_dict()
    assert json.loads(json.dumps(plain.as_entry())) == plain.as_entry()
    with pytest.raises(ValueError, match="severity"):
        Alert("X", "info", "y")
