"""The overnight queue on real simulated scans: finished ones processed, a bad one recorded, resume, metrics."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import h5py
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.cli import main
from xnh_stream.config import ProcessConfig
from xnh_stream.metrics import PipelineMetrics
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


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """A day's root: two finished scans (one nested), a scan that makes the chain fail, one still being
    written, and a folder of unrelated files."""
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
    assert set(scans) == {"scan_a", "sample2/scan_b", "scan_bad", "scan_running"}
    assert scans["scan_a"].finished and scans["sample2/scan_b"].finished and scans["scan_bad"].finished
    assert not scans["scan_running"].finished and "no end_time" in scans["scan_running"].why_not
    assert {s.name for s in find_scans(day, settle_s=0)} == set(scans)
    assert all(s.finished for s in find_scans(day, settle_s=0))


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
    r = run_overnight(day, out, config, metrics=m, settle_s=600, on_scan=lambda *a: seen.append(a[:2]))
    assert r.done == ["sample2/scan_b", "scan_a"]
    assert [f["scan"] for f in r.failed] == ["scan_bad"] and "flat" in r.failed[0]["error"]
    assert r.waiting == ["scan_running"] and r.skipped == []
    assert seen == [("sample2/scan_b", "done"), ("scan_a", "done"), ("scan_bad", "failed")]
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
    assert summary["done"] == r.done and summary["queued"] == []
    v = families(m)
    assert v["xnh_overnight_scans_done_total"] == 2 and v["xnh_overnight_scans_failed_total"] == 1
    assert v["xnh_overnight_scan_duration_seconds_count"] == 3 and v["xnh_overnight_queue_scans"] == 0
    assert v["xnh_overnight_running_scans"] == 0
    reports = [json.loads((out / n / REPORT_NAME).read_text()) for n in r.done]
    assert v["xnh_frames_received_total"] == sum(x["frames"]["received"] for x in reports)

    # second pass: finished scans are skipped, the failed one is tried again (and fails again)
    r2 = run_overnight(day, out, config, metrics=m, settle_s=600)
    assert r2.skipped == ["sample2/scan_b", "scan_a"] and r2.done == [] and len(r2.failed) == 1
    # a crash before scan_a's report was written: only scan_a is redone
    (out / "scan_a" / REPORT_NAME).unlink()
    r3 = run_overnight(day, out, config, metrics=m, settle_s=600)
    assert r3.done == ["scan_a"] and r3.skipped == ["sample2/scan_b"]
    v = families(m)
    assert v["xnh_overnight_scans_done_total"] == 3 and v["xnh_overnight_scans_skipped_total"] == 3


def test_overnight_command_serves_metrics_and_exits_1_on_a_failure(day, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["overnight", str(day), "--out", str(tmp_path / "o"), "--settle-s", "600", "--metrics-port",
                 str(port), "--local"])
    out = capsys.readouterr()
    assert code == 1
    assert "2 done, 1 failed, 0 skipped" in out.out and "FAILED scan_bad" in out.out
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
