"""The overnight queue on real simulated scans: finished ones processed, bad ones recorded, random pixel data
flagged, every scan attempt accounted with its reason, resume, metrics."""

from __future__ import annotations

import json
from pathlib import Path
import os
import shutil
import time
import urllib.request

import h5py
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.cli import main
from xnh_stream.config import ProcessConfig
from xnh_stream.metrics import PipelineMetrics
from xnh_stream.io.nxtomo import DARK, FLAT
from xnh_stream.overnight import ERROR_NAME, SUMMARY_NAME, find_scans, run_overnight
from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.report import REPORT_NAME
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan

CFG = dict(nx=40, ny=12, n_angles=16, oversample=1, n_flats=3, n_darks=2)


def age(folder, seconds=3600.0):
    """Make every file under ``folder`` look written ``seconds`` ago."""
    t = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (t, t))


def randomise(folder):
    """Random pixel data in valid NXtomo files: darks low, flats high, projections between (the flat-field
    accepts every distance)."""
    rng = np.random.default_rng(9)
    for p in sorted(folder.glob("*.nx")):
        with h5py.File(p, "r+") as f:
            data = f["entry0000/instrument/detector/data"]
            keys = f["entry0000/instrument/detector/image_key"][()][:, None, None]
            data[...] = np.where(keys == DARK, rng.uniform(90, 110, data.shape),
                                 np.where(keys == FLAT, rng.uniform(15000, 25000, data.shape),
                                          rng.uniform(5000, 25000, data.shape))).astype(data.dtype)


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A day's root: two finished scans (one nested), a scan that makes the chain fail, a scan of garbage
    files, a scan of random pixel data, a folder of analysis HDF5 files, one scan still being written, and a
    folder of unrelated files."""
    root = tmp_path_factory.mktemp("day")
    simulate_scan(root / "scan_a", SimulationConfig(seed=1, **CFG))
    simulate_scan(root / "sample2" / "scan_b", SimulationConfig(seed=2, **CFG))
    bad = root / "scan_bad"
    bad.mkdir()
    for k in (1, 2):
        shutil.copy(root / "scan_a" / f"phantom_{k}_.nx", bad)
    for k in (1, 2):  # their flats become projections: no distance can be flat-fielded
        with h5py.File(bad / f"phantom_{k}_.nx", "r+") as f:
            ik = f["entry0000/instrument/detector/image_key"]
            keys = ik[()]
            keys[keys == 1] = 0
            ik[...] = keys
    (root / "notes").mkdir()
    (root / "notes" / "log.txt").write_text("beamline notes")
    (root / "scan_garbage").mkdir()
    for k in (1, 2, 3, 4):  # a failed transfer: names of a scan, no HDF5 inside
        (root / "scan_garbage" / f"phantom_{k}_.nx").write_bytes(b"garbage " * 100)
    # frames of 64 x 24: smaller ones are too small for the plausibility verdict
    simulate_scan(root / "scan_noise", SimulationConfig(seed=3, **{**CFG, "nx": 64, "ny": 24}))
    (root / "scan_noise" / "truth.h5").unlink()
    randomise(root / "scan_noise")
    (root / "analysis").mkdir()
    with h5py.File(root / "analysis" / "results.h5", "w") as f:
        f["volume_mean"] = 1.0
    age(root)
    shutil.copytree(root / "scan_a", root / "scan_running", copy_function=shutil.copy)
    for f in (root / "scan_running").glob("*.nx"):  # fresh files without end_time: still being written
        with h5py.File(f, "r+") as h:
            del h["entry0000/end_time"]
    return root


def families(m):
    return {s.name: s.value for fam in text_string_to_metric_families(m.exposition().decode())
            for s in fam.samples if not s.labels}


def test_find_scans_keeps_finished_scan_folders(day):
    scans = {s.name: s for s in find_scans(day, settle_s=600)}
    assert set(scans) == {"scan_a", "sample2/scan_b", "scan_bad", "scan_running", "scan_garbage", "scan_noise",
                          "analysis"}
    assert all(scans[n].finished for n in ("scan_a", "sample2/scan_b", "scan_bad", "scan_garbage", "scan_noise"))
    assert not scans["scan_running"].finished and "no end_time" in scans["scan_running"].why_not
    assert "no NXtomo entry" in scans["analysis"].skip and "results.h5" in scans["analysis"].skip
    assert not any(s.skip or s.problem for n, s in scans.items() if n != "analysis")
    assert {s.name for s in find_scans(day, settle_s=0)} == set(scans)
    assert all(s.finished for s in find_scans(day, settle_s=0))


def test_every_scan_attempt_is_found_once(day, tmp_path):
    """Broken distance sub-folders make one attempt, not one per folder; stray scan files beside scan folders
    are a problem of their own; a folder of folders is not an attempt; fresh garbage waits to settle."""
    root = tmp_path / "root"
    for d in ("chunks_bad/d1", "chunks_bad/d2", "sample/bad_1", "sample/bad_2"):
        (root / d).mkdir(parents=True)
        (root / d / "c_0000.nx").write_bytes(b"not hdf5 " * 50)
    shutil.copytree(day / "scan_a", root / "sample" / "scan_ok")
    (root / "stray.nx").write_bytes(b"not hdf5")
    (root / "edf_only").mkdir()
    (root / "edf_only" / "s_1_0000.edf").write_bytes(b"{ not an edf }")
    for d in ("one_distance", "one_and_garbage"):
        (root / d).mkdir()
        shutil.copy(day / "scan_a" / "phantom_1_.nx", root / d)
    (root / "one_and_garbage" / "phantom_2_.nx").write_bytes(b"cut short")
    age(root)
    (root / "fresh").mkdir()
    (root / "fresh" / "a.h5").write_bytes(b"being copied")
    scans = {s.name: s for s in find_scans(root, settle_s=600)}
    assert set(scans) == {"chunks_bad", "sample/bad_1", "sample/bad_2", "sample/scan_ok", "root", "edf_only",
                          "fresh", "one_distance", "one_and_garbage"}
    assert not scans["one_distance"].finished and "one distance only" in scans["one_distance"].why_not
    assert scans["one_and_garbage"].finished  # processed: the chain sets the broken file aside, or fails
    assert "stray.nx" in scans["root"].problem and "sample/scan_ok" in scans["root"].problem
    assert scans["chunks_bad"].finished and not scans["chunks_bad"].problem
    assert not scans["fresh"].finished and "a.h5" in scans["fresh"].why_not


def test_chunk_file_series_is_one_scan(tmp_path):
    """A running scan's layout (one folder of NXtomo chunk files per distance) is found as one scan, finished
    once every chunk has its end_time."""
    from xnh_stream.simulate.stream import stream_scan

    stream_scan(tmp_path / "day" / "live", SimulationConfig(seed=3, **CFG), frames_per_second=None,
                chunk_frames=16)
    (scan,) = find_scans(tmp_path / "day", settle_s=3600)
    assert scan.name == "live" and scan.finished
    assert len([d for d in scan.folder.iterdir() if d.is_dir()]) == 4


def test_queue_processes_records_failure_and_resumes(day, tmp_path):
    out = tmp_path / "out"
    m = PipelineMetrics(process_metrics=False)
    seen = []
    config = ProcessConfig.from_mapping({"alignment.angles": 6})
    lines = []
    r = run_overnight(day, out, config, metrics=m, settle_s=600, on_scan=lambda *a: seen.append(a[:2]),
                      on_progress=lines.append, progress_every_s=0.0)
    assert r.done == ["sample2/scan_b", "scan_a"]
    assert [f["scan"] for f in r.failed] == ["scan_bad", "scan_garbage"] and "flat" in r.failed[0]["error"]
    assert "no usable frame" in r.failed[1]["error"] and "phantom_1_.nx" in r.failed[1]["error"]
    assert [f["scan"] for f in r.flagged] == ["scan_noise"]
    assert "ImplausibleProjections" in r.flagged[0]["reason"] and "one sample" in r.flagged[0]["reason"]
    assert r.waiting == ["scan_running"] and "no end_time" in r.why["scan_running"]
    assert r.skipped == ["analysis"] and "no NXtomo entry" in r.why["analysis"]
    assert seen == [("analysis", "skipped"), ("sample2/scan_b", "done"), ("scan_a", "done"), ("scan_bad", "failed"),
                    ("scan_garbage", "failed"), ("scan_noise", "flagged")]
    rep = json.loads((out / "scan_noise" / REPORT_NAME).read_text())  # the flagged scan's report says why
    assert any(a["name"] == "ImplausibleProjections" and a["severity"] == "critical" for a in rep["alerts"])
    assert "contains no usable frame" in json.loads((out / "scan_garbage" / ERROR_NAME).read_text())["error"]
    # outputs: the batch chain's, bit for bit
    rep = json.loads((out / "scan_a" / REPORT_NAME).read_text())
    direct = process_scan(day / "scan_a", None, config)
    assert rep["fsc"]["resolution_m"] == direct.report.fsc.resolution_m
    assert rep["frames"]["received"] == direct.report.frames.received
    # the failure is recorded with the file the chain named, and the queue went on
    err = json.loads((out / "scan_bad" / ERROR_NAME).read_text())
    assert err["type"] == "InputError" and err["file"].endswith("phantom_1_.nx")
    assert not (out / "scan_bad" / REPORT_NAME).exists()
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["done"] == r.done and summary["queued"] == [] and summary["flagged"] == r.flagged
    # the progress view: each scan's final-pass step as it goes, then the queue finished
    assert "overnight [1/5 scans finished, processing] scan_a: phase 1/1 batch; 3 queued" in lines
    assert lines[-1] == "overnight [5/5 scans finished, finished] -"
    assert summary["stage"] == "finished" and summary["progress"] == {}
    assert summary["why"] == r.why and {f["scan"] for f in summary["failed"]} == {"scan_bad", "scan_garbage"}
    v = families(m)
    assert v["xnh_overnight_scans_done_total"] == 2 and v["xnh_overnight_scans_failed_total"] == 2
    assert v["xnh_overnight_scans_flagged_total"] == 1 and v["xnh_overnight_scans_skipped_total"] == 1
    assert v["xnh_overnight_scan_duration_seconds_count"] == 5 and v["xnh_overnight_queue_scans"] == 0
    assert v["xnh_overnight_running_scans"] == 0 and v["xnh_overnight_waiting_scans"] == 1
    reports = [json.loads((out / n / REPORT_NAME).read_text()) for n in (*r.done, "scan_noise")]
    assert v["xnh_frames_received_total"] == sum(x["frames"]["received"] for x in reports)

    # second pass: finished scans are skipped (the flagged one says so), the failed ones are tried again
    r2 = run_overnight(day, out, config, metrics=m, settle_s=600)
    assert r2.skipped == ["analysis", "sample2/scan_b", "scan_a", "scan_noise"] and r2.done == []
    assert len(r2.failed) == 2 and r2.flagged == []
    # random frames: no sample in common, and no reliable rotation axis either (its estimators far apart)
    assert r2.why["scan_noise"] == "report.json exists (flagged: ImplausibleProjections, RotationAxisUnreliable)"
    # a crash before scan_a's report was written: only scan_a is redone
    (out / "scan_a" / REPORT_NAME).unlink()
    r3 = run_overnight(day, out, config, metrics=m, settle_s=600)
    assert r3.done == ["scan_a"] and r3.skipped == ["analysis", "sample2/scan_b", "scan_noise"]
    v = families(m)
    assert v["xnh_overnight_scans_done_total"] == 3 and v["xnh_overnight_scans_skipped_total"] == 8


def test_overnight_command_serves_metrics_and_exits_1_on_a_failure(day, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["overnight", str(day), "--out", str(tmp_path / "o"), "--settle-s", "600", "--metrics-port",
                 str(port), "--local"])
    out = capsys.readouterr()
    assert code == 1
    assert "2 done, 1 flagged, 2 failed, 1 skipped, 1 not finished" in out.out
    assert "FAILED scan_bad" in out.out and "FAILED scan_garbage" in out.out and "FLAGGED scan_noise" in out.out
    assert "skipped analysis: no NXtomo entry" in out.out and "waiting scan_running" in out.out
    assert f"http://127.0.0.1:{port}/metrics" in out.err
    with pytest.raises(OSError):  # the endpoint is closed when the command ends
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert main(["overnight", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--metrics-port", "0",
                 "--local"]) == 2
    assert "missing" in capsys.readouterr().err



@pytest.mark.slow
def test_overnight_stitches_the_scans_of_one_sample(tmp_path):
    """Two overlapping raw scans of one sample (NXtomo sample/name and stage positions) processed by the queue
    two at a time, then stitched into OUT/<sample>.stitched; a second pass finds everything up to date."""
    from xnh_stream.io.omezarr import multiscale_levels
    from xnh_stream.simulate.overlap import simulate_overlap_nxtomo

    sim = simulate_overlap_nxtomo(tmp_path / "day", n_scans=2, nx=64, n_angles=60, max_error_voxels=4, seed=5,
                                  sample_name="leg-1")
    age(tmp_path / "day")
    m = PipelineMetrics(process_metrics=False)
    r = run_overnight(tmp_path / "day", tmp_path / "out", ProcessConfig.from_mapping({"alignment.angles": 6}), metrics=m, settle_s=600,
                      concurrent=2, stitch=True)
    assert sorted(r.done) == sorted(s.name for s in sim.scans) and not r.failed
    assert r.stitched == {"leg-1": sorted(r.done)}
    stitched = tmp_path / "out" / "leg-1.stitched"
    report = json.loads((stitched / "stitch.json").read_text())
    assert all(s["placed"] for s in report["scans"])
    for s in sim.scans:  # every scan's report carries the sample and its place, the volume its translation
        rep = json.loads((tmp_path / "out" / s.name / REPORT_NAME).read_text())
        assert rep["sample"]["name"] == "leg-1" and len(rep["sample"]["position_m"]) == 3
        assert multiscale_levels(tmp_path / "out" / s.name / "volume.ome.zarr")[0]["origin_m"] is not None
    again = run_overnight(tmp_path / "day", tmp_path / "out", ProcessConfig.from_mapping({"alignment.angles": 6}), settle_s=600, stitch=True)
    assert again.stitched == {} and sorted(again.skipped) == sorted(r.done)


def test_a_failed_stitch_is_in_the_account_not_only_in_its_folder(tmp_path):
    """Two scan outputs of one sample whose stitch fails (here: no pair registers): the failure is written to
    OUT/<sample>.stitched/error.json and listed with the failed in what the queue returns (overnight.json, the
    printed summary, exit status 1), not only in the log; a good stitch afterwards takes the record away."""
    from xnh_stream.errors import InputError
    from xnh_stream.overnight import stitch_samples
    from xnh_stream.simulate.overlap import simulate_overlap

    sim = simulate_overlap(tmp_path / "out", n_scans=2, voxels_m=(100e-9,), max_error_voxels=2, seed=5)
    for sc in sim.scans:  # as the chain leaves them: the sample's name beside its place
        rep = json.loads((Path(sc.out) / REPORT_NAME).read_text())
        rep["sample"]["name"] = "leg-2"
        (Path(sc.out) / REPORT_NAME).write_text(json.dumps(rep))

    def nothing_registers(spec, progress=None):
        raise InputError(spec.out, "no two scans overlap and register: nothing to stitch")

    failed: list[dict[str, str]] = []
    names = [sc.name for sc in sim.scans]
    assert stitch_samples(tmp_path / "out", names, nothing_registers, failed=failed) == {}
    record = tmp_path / "out" / "leg-2.stitched" / ERROR_NAME
    assert failed == [{"scan": "leg-2.stitched", "error": failed[0]["error"]}]
    assert "nothing to stitch" in failed[0]["error"] and str(record) in failed[0]["error"]
    assert "nothing to stitch" in json.loads(record.read_text())["error"]
    failed.clear()
    assert stitch_samples(tmp_path / "out", names, failed=failed) == {"leg-2": sorted(names)}
    assert failed == [] and not record.exists()


def test_a_critical_axis_alert_flags_a_scan_and_a_warning_does_not(tmp_path):
    """A scan whose rotation-axis estimators are all unreliable and far apart may be a wrong volume: overnight
    flags it (the same alert as a warning, estimators close together, does not)."""
    from xnh_stream.overnight import _flag_note, flagging

    critical = {"name": "RotationAxisUnreliable", "severity": "critical", "message": "25 px apart"}
    warning = {**critical, "severity": "warning"}
    noise = {"name": "ImplausibleProjections", "severity": "critical", "message": "not one sample"}
    assert flagging([warning, {"name": "RotationAxisDisagreement", "severity": "warning"}]) == []
    assert flagging([critical, warning, noise]) == [critical, noise]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"alerts": [critical, warning]}))
    assert _flag_note(report) == " (flagged: RotationAxisUnreliable)"
