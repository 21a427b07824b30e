"""The live driver in this process, without Ray (xnh_stream.live.driver with the in-process runtime): a small
simulated scan end to end, and the same live volume as the driver gives with its workers on Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import PROJECTION, RETURN
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan

from .test_stream import ListSource, assert_final_is_process

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=64, ny=16, n_angles=24, seed=4, oversample=1)
#: The same workers and pacing on both runtimes.
OPTIONS = {"n_workers": 2, "n_shards": 2, "poll_interval_s": 0.0}

#: The in-process stream in a fresh interpreter, so that "no Ray" is a fact and not a test session's state.
SCRIPT = """
import json, sys
import numpy as np
from pathlib import Path
from xnh_stream.config import ProcessConfig
from xnh_stream.live.driver import LiveDriver, StreamOptions
from tests.test_stream import ListSource
scan, out, settings, options = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
progress, pages = [], []
class Page:  # what the live page would be sent
    def publish(self, state, images=None, info=None):
        pages.append(state)
r = LiveDriver(ListSource(scan), scan, out, ProcessConfig.from_mapping(settings), StreamOptions(**options),
               on_progress=progress.append, subscribers=(progress.append,), live_page=Page()).run()
np.savez(out / "live.npz", live=r.live_volume, final=r.final.volume, **{"slice_" + k: v for k, v in r.slices.items()})
print(json.dumps({"ray": "ray" in sys.modules, "counts": r.counts, "events": [e["event"] for e in r.events],
                  "angles_final": [p.angles_final for p in progress if hasattr(p, "angles_final")],
                  "subscribed": [p["event"] for p in progress if isinstance(p, dict)],
                  "axis": r.final.report.cor.px, "material": [pages[0]["material"], pages[-1]["material"]],
                  "from_stream": r.final.report.frames.from_stream}))
"""


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The small scan, and its settings: delta/beta given, the rotation axis left to the stream (estimated
    live from the first 0/180 pair by the final pass's rule, the live volume rebuilt around it)."""
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SIM)
    _, record = read_truth(folder)
    return folder, {"sample.delta_beta": record["delta_beta"]}


@pytest.fixture(scope="module")
def in_process(scan, tmp_path_factory) -> tuple[dict, dict[str, np.ndarray]]:
    """The stream of the small scan in this machine's process, without Ray: what it said, and its volumes."""
    folder, settings = scan
    out = tmp_path_factory.mktemp("in_process")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(out), json.dumps(settings),
                          json.dumps(OPTIONS)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out / "live.npz") as f:
        arrays = dict(f)
    return json.loads(res.stdout.strip().splitlines()[-1]), arrays


def test_a_scan_streams_end_to_end_in_process_without_ray(scan, in_process):
    folder, settings = scan
    said, arrays = in_process
    assert said["ray"] is False  # Ray was never imported
    n = len(ListSource(folder).records)
    c = said["counts"]
    assert c["received"] == n and c["pending"] == 0 and c["processed"] + c["quarantined"] == n
    assert said["events"] == ["scan_complete"] and said["subscribed"] == ["scan_complete"]
    assert said["angles_final"][-1] == SIM.n_angles
    # the final pass (here on the serial executor) is the batch chain's, although it read no projection's
    # file again: it took every one flat-fielded from the stream's store (chain/frames.py)
    batch = process_scan(folder, None, ProcessConfig.from_mapping(settings))
    assert_final_is_process(arrays["final"], batch.volume)
    projections = [r for r in ListSource(folder).records if r.image_key == PROJECTION and r.image_key_control != RETURN]
    assert said["from_stream"] == len(projections) == SIM.n_angles * 4
    assert batch.report.frames.from_stream == 0
    assert said["axis"] == pytest.approx(batch.report.cor.px, abs=1e-6)
    # the live page says which delta/beta the live CTF uses and, at the end, the final pass's and why
    first, last = said["material"]
    assert first["delta_beta"] == settings["sample.delta_beta"] and first["source"].startswith("given")
    assert last["delta_beta"] == batch.report.phase["delta_beta"] and last["source"].startswith("final pass: given")
    live = arrays["live"]
    r = np.corrcoef(live.ravel(), batch.volume.ravel())[0, 1]
    print(f"\nin-process live vs final volume r = {r:.3f}")
    assert r > 0.85
    # the full-resolution live slices are the live volume's (as on Ray, tests/test_stream.py)
    ny, m, _ = live.shape
    for name, cut in (("xy", live[ny // 2]), ("xz", live[:, m // 2, :]), ("yz", live[:, :, m // 2])):
        np.testing.assert_allclose(arrays[f"slice_{name}"], cut, atol=2e-4 * np.abs(live).max())


def test_the_in_process_live_volume_is_the_one_on_ray(ray_local, scan, in_process, tmp_path):
    """The driver decides the same on both runtimes (same work, same shift models at dispatch, same axis,
    calls to a worker in order): the live volumes differ only by the order of float32 sums. A shard
    back-projects its angles in batches flushed by count or by time (``stream.bp_batch``, ``bp_wait_s``) and
    Ray's timing groups them differently; FBP is linear, so the grouping changes rounding only: about 1e-7
    relative per sum, over a few dozen angles and a preview replaced by its final each. 1e-5 of the volume's
    largest value (the tolerance tests/test_stream.py uses between two Ray runs) is 10x above that and far
    below any wrong angle, axis or shift (those move voxels by percents)."""
    from actors.stream import StreamDriver, StreamOptions

    folder, settings = scan
    _, arrays = in_process
    on_ray = StreamDriver(ListSource(folder), folder, tmp_path / "out", ProcessConfig.from_mapping(settings),
                          StreamOptions(**OPTIONS, final_pass=False)).run()
    a, b = arrays["live"], on_ray.live_volume
    scale = np.abs(b).max()
    diff = np.abs(a - b).max()
    print(f"\nin-process vs Ray live volume: max |diff| {diff:.3g} = {diff / scale:.2e} of max |V|")
    np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0)
    for name, cut in on_ray.slices.items():
        np.testing.assert_allclose(arrays[f"slice_{name}"], cut, atol=1e-5 * np.abs(cut).max(), rtol=0)


def test_watch_local_streams_a_folder_in_this_process(scan, tmp_path, capsys):
    """``watch --local``: the command drives the live stream with its workers here (no runtime needed, the
    core's ``main`` has none); ``--local`` with ``--address`` is refused."""
    from xnh_stream.cli import main

    folder, settings = scan
    config = tmp_path / "config.yaml"
    config.write_text(f"sample:\n  delta_beta: {settings['sample.delta_beta']}\n")
    args = ["-q", "watch", str(folder), "--local", "--config", str(config), "--quiet-s", "2", "--poll-s", "0.05",
            "--live-port", "0", "--metrics-port", "0", "--no-segment"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    n = len(ListSource(folder).records)
    assert report["frames"]["received"] == n and report["frames"]["processed"] == n
    assert main([*args, "--out", str(tmp_path / "b"), "--address", "auto"]) == 2
    assert "--local runs here: it excludes --address" in capsys.readouterr().err


def test_the_in_process_runtime_keeps_a_workers_error_for_the_reader():
    """As a Ray task's error: a call that failed answers at once, and its error is raised where the result
    is read (the driver's _settle reads every back-projection's result for that)."""
    from xnh_stream.live.runtime import InProcessRuntime

    class Worker:
        def twice(self, x):
            return 2 * x

        def fail(self):
            raise ValueError("broken slab")

    rt, w = InProcessRuntime(), Worker()
    four = rt.call(w, "twice", rt.call(w, "twice", 1))  # a pending result passed on is its value
    bad = rt.call(w, "fail")
    assert rt.wait([four, bad], 2, 0) == ([four, bad], [])
    assert rt.get(four) == 4
    with pytest.raises(ValueError, match="broken slab"):
        rt.get_all([four, bad])


def test_the_live_axis_is_decided_by_the_final_pass_rule():
    """chain/axis.py is the one rule: no estimate gives the detector centre, an alert, and nothing the live
    volume would be rebuilt around; sinograms of too few angles are left out."""
    from xnh_stream.chain.axis import MIN_SINOGRAM_ANGLES, axis_rows, decide_rotation_axis

    none = decide_rotation_axis([], None, None, 64)
    assert none.axis.px == 31.5 and not none.trusted and none.problem
    assert [a.name for a in none.alerts] == ["RotationAxisUnknown"]
    few = np.ones((len(axis_rows(16)), MIN_SINOGRAM_ANGLES - 1, 64), np.float32)
    assert decide_rotation_axis([], few, np.linspace(0, 1, MIN_SINOGRAM_ANGLES - 1), 64).problem == none.problem
    assert axis_rows(16) == (2, 4, 6, 9, 11, 13) and axis_rows(3) == (0, 1, 2)
