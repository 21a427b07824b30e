"""Never lose a scan: faults injected into streamed and batch scans, and the plausibility checks.

Each fault of the issue "Never lose a scan" has its test here or beside the code it concerns: kill -9 of the
stream (test_stream), a killed final pass (test_final), duplicate and vanished files (test_final), a bad frame
in transit (test_stream); here: a bad frame and a truncated distance file in a watched folder, a scan without
return projections, and the checks on what a frame and a scan may be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.calibration import Calibration
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, NXtomoWriter, raw_problem
from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan
from xnh_stream.state.journal import FrameJournal

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=12, oversample=1, n_flats=3, n_darks=2,
                       return_angles_deg=())  # no return projection at all


@pytest.fixture(scope="module")
def plain_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    simulate_scan(folder, SIM)
    return folder


def test_a_watched_scan_without_returns_with_a_bad_frame_and_a_truncated_file_completes(ray_local, plain_scan,
                                                                                         tmp_path):
    """No return projection anywhere; distance 1 has an all-zero projection; distance 3's file is cut in
    half (a failed transfer). The stream quarantines the frame and the file, completes when the folder has
    been quiet, says why and what is missing, and the final volume is made of the three other distances."""
    import shutil

    from actors.stream import WatcherSource
    from xnh_stream.ingest.watch import FolderWatcher

    from .test_stream import stream

    folder = tmp_path / "scan"
    shutil.copytree(plain_scan, folder)
    with h5py.File(folder / f"{SIM.name}_1_.nx", "r+") as f:
        keys = f["entry0000/instrument/detector/image_key"][()]
        f["entry0000/instrument/detector/data"][int(np.flatnonzero(keys == PROJECTION)[5])] = 0
    blob = (folder / f"{SIM.name}_3_.nx").read_bytes()
    (folder / f"{SIM.name}_3_.nx").write_bytes(blob[: len(blob) // 2])
    _, rec = read_truth(folder)
    with FolderWatcher(folder, poll_interval_s=0.05, use_inotify=False, settle_s=0.2) as watcher:
        result = stream(WatcherSource(watcher, n_distances=4, quiet_s=1.0), folder, tmp_path / "out",
                        ProcessConfig.from_mapping({"sample.delta_beta": rec["delta_beta"], "alignment.angles": 8}), poll_interval_s=0.05,
                        timeout_s=300)
    assert result.final is not None, "the scan never completed"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "no new frame" in report["completion"]["reason"]
    assert any("distances never arrived" in m for m in report["completion"]["missing"])
    names = {a["name"] for a in report["alerts"]}
    assert {"ScanIncomplete", "DistanceFileRejected"} <= names
    assert len(report["geometry"]["distances"]) == 3
    fr = report["frames"]
    assert fr["received"] == fr["processed"] + fr["quarantined"] and fr["pending"] == 0
    reasons = [q["reason"] for q in fr["quarantine"]]
    assert any("all pixels are zero" in r for r in reasons)
    assert any(q["index"] is None and f"{SIM.name}_3_.nx" in q["file"] for q in fr["quarantine"])
    with FrameJournal(tmp_path / "out" / "journal.sqlite", readonly=True) as j:
        c = j.counts()
    assert (c["received"], c["processed"], c["quarantined"]) == (fr["received"], fr["processed"], fr["quarantined"])
    assert np.isfinite(result.final.volume).all()


def test_integer_frames_that_wrapped_or_saturated_are_refused():
    wrapped = np.full((8, 8), 100, np.int8)
    wrapped[2, 3] = -56  # 200 counts in int8
    assert "wrapped" in raw_problem(wrapped)
    sat = np.full((10, 10), 4000, np.uint16)
    sat[:2, :] = 65535
    assert "saturated" in raw_problem(sat)
    sat[:2, :] = 4000
    sat[0, 0] = 65535  # one hot pixel is not a saturated frame
    assert raw_problem(sat) is None
    assert raw_problem(np.full((4, 4), -3.0, np.float32)) is None  # floats are processed data


def test_a_scan_in_int8_is_quarantined_frame_by_frame_with_the_reason(tmp_path):
    geo = DistanceGeometry(0.04, 1.168, 3e-6, 17.0)
    rng = np.random.default_rng(0)
    with NXtomoWriter(tmp_path / "s_1_.nx", (8, 10), geo, dtype=np.int8) as w:
        w.append(np.full((2, 8, 10), 5), DARK, 0.0, 0.1)
        w.append(np.full((3, 8, 10), 120), FLAT, 0.0, 0.1)
        counts = rng.integers(90, 110, (6, 8, 10))
        w.append(counts, PROJECTION, np.linspace(0, 150, 6), 0.1)
    with h5py.File(tmp_path / "s_1_.nx", "r+") as f:
        d = f["entry0000/instrument/detector/data"]
        d[7] = np.int8(-56)  # frame 7 (projection 2): counts past 127 came back negative
    index = ScanIndex.read(tmp_path)
    bad = [r for r in index.distances[0].projections if r.index == 7][0]
    with pytest.raises(Exception, match="wrapped"):
        bad.read()


def test_dark_brighter_than_flat_is_named():
    cal = Calibration((4, 4))
    cal.add_dark(np.full((4, 4), 1000.0))
    cal.add_flat(np.full((4, 4), 100.0), 0)
    assert "dark >= flat" in cal.problem()
    good = Calibration((4, 4))
    good.add_dark(np.full((4, 4), 100.0))
    good.add_flat(np.full((4, 4), 1000.0), 0)
    assert good.problem() is None


def test_swapped_keys_in_one_distance_leave_it_out_and_the_next_becomes_the_reference(plain_scan, tmp_path):
    """The reference distance's darks and flats are swapped (image_key 1 <-> 2): it cannot be flat-fielded;
    the scan is made of the other three, with distance 2 as the reference, and an alert says so."""
    import shutil

    folder = tmp_path / "scan"
    shutil.copytree(plain_scan, folder)
    with h5py.File(folder / f"{SIM.name}_1_.nx", "r+") as f:
        k = f["entry0000/instrument/detector/image_key"]
        keys = k[()]
        swapped = keys.copy()
        swapped[keys == DARK], swapped[keys == FLAT] = FLAT, DARK
        k[...] = swapped
        f["entry0000/instrument/detector/image_key_control"][...] = swapped
    result = process_scan(folder, tmp_path / "out", ProcessConfig.from_mapping({"alignment.angles": 8}))
    rep = result.report
    assert len(rep.geometry["distances"]) == 3 and rep.geometry["distances"][0]["name"] != f"{SIM.name}_1_"
    assert any(a["name"] == "DistanceFileRejected" and "dark >= flat" in a["message"] for a in rep.alerts)
    assert rep.frames.quarantined >= SIM.n_darks + 2 * SIM.n_flats + SIM.n_angles


def test_repeated_reference_angles_are_set_aside_once_and_counted_alike(plain_scan, tmp_path):
    """Two projections of the reference at one angle: the second is quarantined with the reason, and the
    journal and the report count it the same way."""
    import shutil

    folder = tmp_path / "scan"
    shutil.copytree(plain_scan, folder)
    with h5py.File(folder / f"{SIM.name}_1_.nx", "r+") as f:
        keys = f["entry0000/instrument/detector/image_key"][()]
        ang = f["entry0000/sample/rotation_angle"]
        proj = np.flatnonzero(keys == PROJECTION)
        a = ang[()]
        a[proj[4]] = a[proj[3]]
        ang[...] = a
    out = tmp_path / "out"
    result = process_scan(folder, out, ProcessConfig.from_mapping({"alignment.angles": 8}))
    reasons = [q.reason for q in result.report.frames.quarantine]
    assert sum("repeated angle" in r for r in reasons) == 1
    with FrameJournal(out / "journal.sqlite", readonly=True) as j:
        c = j.counts()
    fr = result.report.frames
    assert (c["received"], c["processed"], c["quarantined"]) == (fr.received, fr.processed, fr.quarantined)


def test_a_file_declaring_far_more_frames_than_written_is_one_entry(tmp_path):
    """Data allocated for 100000 frames, 13 written and no end_time: the written frames are read, the file is
    set aside once with its counts (no entry per frame that does not exist)."""
    geo = DistanceGeometry(0.04, 1.168, 3e-6, 17.0)
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "s_1_.nx", "w") as f:
        e = f.create_group("entry0000")
        e.attrs["NX_class"] = "NXentry"
        e["definition"] = "NXtomo"
        det = e.create_group("instrument/detector")
        det.create_dataset("data", shape=(100000, 8, 10), dtype=np.uint16, chunks=(1, 8, 10))
        det["data"][:13] = rng.integers(100, 1000, (13, 8, 10))
        det["image_key"] = np.r_[[2, 2, 1, 1, 1], [0] * 8].astype(np.int32)
        det["x_pixel_size"], det["distance"] = geo.pixel_m, geo.z2_m
        e["instrument/source/distance"] = geo.z1_m
        e["instrument/beam/incident_energy"] = geo.energy_kev
        e["sample/rotation_angle"] = np.r_[[0.0] * 5, np.linspace(0, 150, 8)]
        for name in ("x_pixel_size", "distance"):
            det[name].attrs["units"] = "m"
        e["instrument/source/distance"].attrs["units"] = "m"
        e["instrument/beam/incident_energy"].attrs["units"] = "keV"
        e["sample/rotation_angle"].attrs["units"] = "degree"
    index = ScanIndex.read(tmp_path)
    assert len(index.frames) == 13
    assert len(index.rejected_files) == 1 and "100000" in index.rejected_files[0].reason


def test_an_embedded_ray_starts_its_own_instance_whatever_RAY_ADDRESS_says(tmp_path):
    """RAY_ADDRESS set (another Ray registered on a shared machine): the embedded Ray still starts its own."""
    script = ("from actors.runtime import start_ray\nimport ray\nprint(start_ray(None, 1))\n"
              "print(ray.get(ray.remote(lambda: 7).remote()))\n")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded local instance" in out.stdout and out.stdout.strip().endswith("7")
