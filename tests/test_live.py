"""The live page: served read-only during a real stream, driven in headless Chromium, content updates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.config import ProcessConfig
from xnh_stream.live import LivePage
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan

from .test_stream import ListSource

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> str:
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("XNH_REQUIRE_CHROMIUM") == "1":
        pytest.fail("XNH_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("chromium is not installed")


def headless(url: str, tmp: Path, *extra: str) -> str:
    """Run headless Chromium on ``url`` (letting the page's script poll for a few seconds); its stdout."""
    cmd = [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=4000", "--window-size=1400,1500",
           *extra, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


class PausableSource(ListSource):
    """A finished scan's frames a few per poll, distance after distance; holds back at ``pause_at`` until released."""

    def __init__(self, folder: Path, per_poll: int = 20, pause_at: int = 0) -> None:
        super().__init__(folder, per_poll)
        self.pause_at = pause_at
        self.paused, self.release = threading.Event(), threading.Event()

    def poll(self):
        if self.pause_at and self.pos >= self.pause_at and not self.release.is_set():
            self.paused.set()
            return []
        return super().poll()


def frames_shown(dom: str) -> list[int]:
    return [int(v) for v in re.findall(r'<b class="frames">(\d+)</b>', dom)]


@pytest.mark.slow
def test_live_page_updates_in_headless_chromium_during_a_real_stream(ray_local, tmp_path):
    from actors.stream import StreamDriver, StreamOptions

    chromium_or_skip()
    folder = tmp_path / "scan"
    simulate_scan(folder, SimulationConfig(nx=64, ny=32, n_angles=40, seed=3, drift_px=2.0))
    _, record = read_truth(folder)
    source = PausableSource(folder, per_poll=20, pause_at=150)  # pauses during the third distance
    page = LivePage(port=0, title="simulated scan")
    errors = []

    def stream():
        try:
            StreamDriver(source, folder, tmp_path / "out",
                         ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"]}),
                         StreamOptions(poll_interval_s=0.05, quality_every_s=0.3), live_page=page).run()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=stream)
    t.start()
    try:
        assert source.paused.wait(120), "the stream never reached the pause"
        time.sleep(1.0)  # a quality refresh with images after the pause
        mid = headless(page.url, tmp_path, "--dump-dom")
    finally:
        source.release.set()
        t.join(300)
    assert not errors, errors
    shot = tmp_path / "live-page.png"
    end = headless(page.url, tmp_path, "--dump-dom")
    headless(page.url, tmp_path, f"--screenshot={shot}")
    print(f"\nlive page screenshot: {shot}")
    if os.environ.get("XNH_ARTIFACTS"):
        dest = Path(os.environ["XNH_ARTIFACTS"]) / "live-page.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest)
        print(f"copied to {dest}")
    assert shot.stat().st_size > 10_000
    # the script drew the state into the page, and it changed as the scan went on
    before, after = frames_shown(mid), frames_shown(end)
    print(f"frames shown mid-scan {before}, at the end {after}")
    assert before and after and sum(after) > sum(before)
    assert "streaming" in mid and "complete" in end
    assert re.search(r'id="resolution">\d+ nm', end)  # the final FSC resolution
    assert re.search(r'id="dose_total">[0-9.e+]+ Gy', end)
    for img in ("img_xy", "img_xz", "img_yz", "img_phase"):
        assert re.search(rf'id="{img}"[^>]*data-loaded="1"', end), f"{img} not loaded"
    assert "<polyline" in end  # FSC curve drawn


def test_live_page_is_read_only_and_serves_json_and_png():
    page = LivePage(port=0, title="t")
    try:
        page.publish({"status": "x", "quality": {"fsc": {"resolution_m": float("nan")}}},
                     {"xy": np.random.default_rng(0).random((16, 20))})
        state = json.loads(urllib.request.urlopen(page.url + "state.json", timeout=5).read())
        assert state["quality"]["fsc"]["resolution_m"] is None and state["images"]["xy"].startswith("/img/xy.png")
        png = urllib.request.urlopen(page.url + "img/xy.png", timeout=5).read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        for method in ("POST", "PUT", "DELETE"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(page.url + "state.json", data=b"{}", method=method),
                                       timeout=5)
            assert e.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(page.url + "img/nothing.png", timeout=5)
        assert e.value.code == 404
        with pytest.raises(ValueError, match="alphanumeric"):
            page.publish(images={"../x": np.zeros((2, 2))})
    finally:
        page.close()
