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
                         ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"],
                                                     "stream.quality_every_s": 0.3}),  # the refresh, from the config
                         StreamOptions(poll_interval_s=0.05), live_page=page).run()
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
    # each image with its scale bar and caption (slice position, grey range), and the axis the final pass used
    for name in ("xy", "xz", "yz", "phase"):
        assert re.search(rf'id="sb_{name}"[^>]*data-bar-m="[0-9.e-]+"', end), f"no scale bar on {name}"
    assert re.search(r'id="cap_xy">z = [^<]*: slice 16 of 32; y down, x across · grey [^<]* delta', end)
    assert re.search(r'id="cap_phase">grey [^<]* rad', end)
    assert re.search(r'rotation axis: <b id="axis_px">[0-9.]+ px</b> of 64 detector columns \(final pass: ', end)
    assert re.search(r'delta/beta: <b id="material_db">[0-9.]+</b> \(final pass: given', end)


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


def _publish_views(page: LivePage) -> None:
    """What the stream publishes: three slices through the centre of a 40 x 64 x 64 volume of 100 nm voxels,
    a phase map binned 2x, the rotation axis, FSC and edge-fit figures."""
    from xnh_stream.live.views import slice_info

    rng = np.random.default_rng(1)
    info = slice_info((40, 64, 64), (20, 32, 32), 100e-9)
    info["phase"] = {"pixel_m": 200e-9, "binning": 2, "unit": "rad"}
    page.publish({"status": "streaming", "rotation_axis": {"px": 31.75, "columns": 64, "source": "given (fbp.cor)"},
                  "schedule": {"behind_s": 3.2, "previews_skipped": 7, "finals_coarse": 12},
                  "quality": {"fsc": {"resolution_m": 161e-9, "edge_resolution_m": 610e-9}}},
                 {"xy": 1e-6 * rng.random((64, 64)), "xz": 1e-6 * rng.random((40, 64)),
                  "yz": 1e-6 * rng.random((40, 64)), "phase": -rng.random((20, 32))}, info)


def test_live_page_states_scale_grey_range_slice_positions_axis_and_what_fsc_and_edge_fit_mean():
    """The state and the page carry what a reader needs to read the images: each image's pixel (scale bar),
    grey range (black and white values, their unit), where a slice is cut (index and position), the rotation
    axis, and a note on FSC against edge fit."""
    page = LivePage(port=0, title="t")
    try:
        _publish_views(page)
        state = json.loads(urllib.request.urlopen(page.url + "state.json", timeout=5).read())
        html = urllib.request.urlopen(page.url, timeout=5).read().decode()
    finally:
        page.close()
    xy, xz, phase = state["image_info"]["xy"], state["image_info"]["xz"], state["image_info"]["phase"]
    assert (xy["axis"], xy["index"], xy["size"], xy["rows"], xy["columns"]) == ("z", 20, 40, "y", "x")
    assert xy["position_m"] == pytest.approx(2e-6) and xy["pixel_m"] == 100e-9 and xy["unit"] == "delta"
    assert (xz["axis"], xz["index"], xz["size"], xz["shape"]) == ("y", 32, 64, [40, 64])
    lo, hi = xy["grey"]
    assert 0 < lo < 0.05e-6 and 0.95e-6 < hi < 1e-6 and xy["percentiles"] == [1.0, 99.0]
    assert phase["unit"] == "rad" and phase["pixel_m"] == 200e-9 and phase["grey"][0] < phase["grey"][1] < 0
    assert state["rotation_axis"] == {"px": 31.75, "columns": 64, "source": "given (fbp.cor)"}
    for element in ('id="sb_xy"', 'id="cap_xz"', 'id="sb_phase"', 'id="axis"', 'id="fsc_note"'):
        assert element in html, element
    note = " ".join(re.search(r'id="fsc_note">(.*?)</div>', html, re.DOTALL).group(1).split())
    assert "half-bit" in note and "finest detail resolved reproducibly" in note and "edge" in note.lower()
    assert "point-spread of the whole chain" in note and "typically larger" in note


def test_live_page_draws_scale_bars_and_captions_in_headless_chromium(tmp_path):
    """The page's script turns the state into a scale bar of a round length over each image, a caption with
    the slice's position and grey range, and the rotation axis (a published state, no stream: seconds)."""
    chromium_or_skip()
    page = LivePage(port=0, title="t")
    try:
        _publish_views(page)
        dom = headless(page.url, tmp_path, "--dump-dom")
    finally:
        page.close()
    # 64 px of 100 nm: a quarter is 1.6 um, rounded down to 1 um = 15.625 % of the width
    assert re.search(r'id="sb_xy"[^>]*data-bar-m="0.000001"', dom), dom[:3000]
    assert re.search(r'<span class="sb_label">1 µm</span><div style="width:calc\(15\.625% - 2px\)', dom)
    # 32 px of 200 nm: 1.6 um -> 1 um
    assert re.search(r'id="sb_phase"[^>]*>.*?1 µm', dom)
    cap = re.search(r'id="cap_xy">([^<]*)<', dom).group(1)
    assert "z = 2 µm: slice 20 of 40; y down, x across" in cap and "(black) to" in cap and "delta" in cap
    assert "pixel 100 nm" in cap
    assert "rad" in re.search(r'id="cap_phase">([^<]*)<', dom).group(1)
    assert re.search(r'rotation axis: <b id="axis_px">31\.750 px</b> of 64 detector columns \(given \(fbp\.cor\)\)',
                     dom)
    assert re.search(r'id="resolution">161 nm', dom) and "edge fit 610 nm" in dom
    # a stream behind its detector says so, and what it skipped or coarsened to catch up (live/schedule.py)
    assert re.search(r'live slices <b id="behind">3\.2 s</b> behind the detector', dom)
    assert re.search(r'<b id="previews_skipped">7</b> previews skipped', dom)
    assert re.search(r'<b id="finals_coarse">12</b> angles at half resolution', dom)
