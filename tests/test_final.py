"""The final pass out of core: the same volume on Ray tasks as here, resumable after kill -9, one frame count
(journal = report = metrics) with duplicate and vanished files, and the ID16A EDF layout end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.final import ChainLayout, FinalChain
from xnh_stream.chain.report import ScanReport
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.io.omezarr import read_volume
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan
from xnh_stream.state.journal import FrameJournal

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=64, ny=24, n_angles=32, seed=11, oversample=1)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SIM)
    return folder


@pytest.fixture(scope="module")
def serial(scan, tmp_path_factory):
    """The scan through the final pass in this process, small tasks (several slabs and angle batches)."""
    _, rec = read_truth(scan)
    config = ProcessConfig.from_mapping({"fbp.cor": rec["cor_px"], "alignment.angles": 8})
    out = tmp_path_factory.mktemp("serial")
    return config, process_scan(scan, out, config, layout=ChainLayout(angle_batch=5, slab_rows=4))


def test_ray_tasks_give_the_serial_volume(ray_local, scan, serial, tmp_path):
    from actors.executor import RayExecutor

    config, expected = serial
    result = process_scan(scan, tmp_path / "ray", config, executor=RayExecutor(),
                          layout=ChainLayout(angle_batch=5, slab_rows=4))
    np.testing.assert_array_equal(result.volume, expected.volume)
    assert result.report.frames == expected.report.frames
    # every level of the pyramid is the block mean of the one above
    vol, voxel = read_volume(tmp_path / "ray" / "volume.ome.zarr", 0)
    assert voxel == pytest.approx(SIM.geometry().voxel_m)
    assert not (tmp_path / "ray" / "work").exists()  # the work folder goes once the outputs are complete


def test_without_an_output_folder_the_temporary_work_goes_with_the_result(scan, serial):
    """process_scan(folder) with no output folder writes into a temporary folder: the result owns it,
    reads the volume from it, and removes it when dropped (1187 such folders, 38 GB, had piled up in /tmp)."""
    import gc

    config, expected = serial
    result = process_scan(scan, None, config, layout=ChainLayout(angle_batch=5, slab_rows=4))
    temporary = result.volume_path.parents[1]
    assert temporary.name.startswith("xnh-final-") and temporary.exists()
    np.testing.assert_array_equal(result.volume, expected.volume)
    del result
    gc.collect()
    assert not temporary.exists()
    # a chain whose steps are called one by one (as tests/test_plausibility.py does) removes its own
    chain = FinalChain(ScanIndex.read(scan), None, config)
    chain.calibrate()
    temporary = chain.work.path.parent
    assert temporary.name.startswith("xnh-final-") and temporary.exists()
    del chain
    gc.collect()
    assert not temporary.exists()


KILLER = """
import os, signal, sys
from pathlib import Path
from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.executor import SerialExecutor
from xnh_stream.chain.final import ChainLayout, slab_task
from xnh_stream.config import ProcessConfig

class KillAfterTwoSlabs(SerialExecutor):
    def map(self, fn, items, *shared, **kw):
        for n, (i, res) in enumerate(super().map(fn, items, *shared, **kw)):
            yield i, res
            if fn is slab_task and n == 1:  # the chain marked slabs 1 and 2 before asking for the third
                os.kill(os.getpid(), signal.SIGKILL)

process_scan(Path(sys.argv[1]), Path(sys.argv[2]), ProcessConfig.from_mapping({"fbp.cor": float(sys.argv[3]), "alignment.angles": 8}),
             executor=KillAfterTwoSlabs(), layout=ChainLayout(angle_batch=5, slab_rows=4))
"""


@pytest.mark.slow
def test_process_killed_with_sigkill_resumes_where_it_stopped(scan, serial, tmp_path):
    """kill -9 of the final pass mid back-projection; ``xnh-stream process`` on the same output finishes the
    scan without redoing the finished units, and the volume is the uninterrupted one."""
    config, expected = serial
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(scan), str(out), str(config.fbp.cor)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    slabs, phase = out / "work" / "done" / "slab_r4", out / "work" / "done" / "phase_b5"
    done_before = {p.name: p.stat().st_mtime_ns for p in slabs.glob("*.json")}
    phase_before = {p.name: p.stat().st_mtime_ns for p in phase.glob("*.json")}
    assert len(done_before) == 2 and len(phase_before) == 7  # 32 angles in batches of 5
    assert not (out / "report.json").exists() and not (out / "volume.ome.zarr").exists()
    cmd = [sys.executable, "-m", "actors.cli", "process", str(scan), "--out", str(out), "--local", "--cor",
           str(config.fbp.cor), "--config", str(_config_file(tmp_path)), "--slab-rows", "4", "--angle-batch", "5",
           "--keep-work"]
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in slabs.glob("*.json")}
    assert all(after[n] == t for n, t in done_before.items())  # finished slabs were not redone
    assert all((phase / n).stat().st_mtime_ns == t for n, t in phase_before.items())
    assert len(after) == 6  # 24 rows in slabs of 4
    vol, _ = read_volume(out / "volume.ome.zarr")
    np.testing.assert_array_equal(vol, expected.volume)


def _config_file(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text("alignment:\n  angles: 8\n")
    return p


def test_duplicate_and_vanished_files_are_counted_alike_everywhere(ray_local, scan, tmp_path):
    """A copied distance file is one distance, its frames set aside as copies; a file deleted after its frames
    were received is missing from the final volume, counted and alerted; journal = report = metrics."""
    from xnh_stream.metrics import PipelineMetrics

    from .test_stream import ListSource, stream

    folder = tmp_path / "scan"
    shutil.copytree(scan, folder)
    shutil.copy(folder / f"{SIM.name}_1_.nx", folder / f"{SIM.name}_1_copy.nx")
    _, rec = read_truth(folder)
    config = ProcessConfig.from_mapping({"sample.delta_beta": rec["delta_beta"], "fbp.cor": rec["cor_px"], "alignment.angles": 8})

    class Vanishing(ListSource):
        """Delivers everything, then the last distance's file disappears before the final pass."""

        def completion(self):
            done = super().completion()
            if done is not None and (folder / f"{SIM.name}_4_.nx").exists():
                (folder / f"{SIM.name}_4_.nx").unlink()
            return done

    source = Vanishing(folder)
    metrics = PipelineMetrics(process_metrics=False)
    result = stream(source, folder, tmp_path / "out", config, poll_interval_s=0.0, on_progress=metrics.update)
    report = ScanReport.load(tmp_path / "out")
    with FrameJournal(tmp_path / "out" / "journal.sqlite", readonly=True) as j:
        counts = j.counts()
        reasons = [q.reason for q in j.quarantined()]
    per_file = SIM.n_darks + 2 * SIM.n_flats + SIM.n_angles + len(SIM.return_angles_deg)
    assert counts["received"] == 5 * per_file  # four distances and the copy: every frame received
    assert sum("copy of" in r for r in reasons) == per_file
    fr = report.frames
    assert (fr.received, fr.processed, fr.quarantined) == (counts["received"], counts["processed"],
                                                           counts["quarantined"])
    assert fr.missing_from_volume == per_file  # every frame of the vanished file had been used live
    assert any(a["name"] == "FramesVanished" for a in report.alerts)
    text = metrics.exposition().decode()
    assert f"xnh_frames_received_total {float(counts['received'])}" in text
    assert f"xnh_frames_quarantined_total {float(counts['quarantined'])}" in text
    # the final volume is made of three distances (the fourth vanished) and is still a volume
    assert report.scan["distances"] and len(report.geometry["distances"]) == 3
    assert np.isfinite(result.final.volume).all()


@pytest.mark.slow
def test_an_edf_scan_streams_and_completes(ray_local, tmp_path):
    """The legacy ID16A EDF layout written live: the stream follows it and the final pass reads it too."""
    import threading

    from actors.stream import WatcherSource
    from xnh_stream.ingest.watch import FolderWatcher
    from xnh_stream.simulate.stream import stream_scan

    from .test_stream import stream

    cfg = SimulationConfig(nx=48, ny=16, n_angles=24, seed=6, oversample=1, n_flats=3, n_darks=2)
    scan_dir = tmp_path / "scan"
    scan_dir.mkdir()
    writer = threading.Thread(target=stream_scan, args=(scan_dir, cfg),
                              kwargs={"frames_per_second": 400.0, "layout": "edf"}, daemon=True)
    writer.start()
    with FolderWatcher(scan_dir, poll_interval_s=0.05, use_inotify=False, settle_s=0.3) as watcher:
        result = stream(WatcherSource(watcher, n_distances=4, quiet_s=1.0), scan_dir, tmp_path / "out",
                        ProcessConfig.from_mapping({"alignment.angles": 8}), poll_interval_s=0.05, timeout_s=240)
    writer.join()
    assert result.final is not None and result.completion is not None
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    c = result.counts
    assert report["frames"]["received"] == c["received"] > 4 * cfg.n_angles
    assert c["pending"] == 0 and report["completion"]["reason"]
    assert np.isfinite(result.final.volume).all() and result.final.volume.std() > 0


@pytest.mark.slow
def test_a_foreign_scan_with_an_off_centre_axis_and_no_180_projection(tmp_path):
    """The issue's case: a four-distance scan written by astra + HoToPy + nxtomo (no code of ours), axis 5.3 px
    off-centre, angles over [0, 180) without a 180-degree or return projection. The chain finds the axis within
    0.5 px and the volume matches the phantom as well as with the true axis."""
    from .foreign import ForeignSpec, write_foreign_scan

    spec = ForeignSpec(nx=96, ny=16, n_angles=180, range_deg=180.0, axis_px=47.5 + 5.3, seed=3)
    truth = write_foreign_scan(tmp_path / "scan", spec)
    found = process_scan(tmp_path / "scan", tmp_path / "out", ProcessConfig.from_mapping({"alignment.angles": 12}))
    exact = process_scan(tmp_path / "scan", None, ProcessConfig.from_mapping({"alignment.angles": 12, "fbp.cor": float(truth.axis_px[0])}))
    err = found.report.cor.px - truth.axis_px[0]
    n = spec.nx
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disk = np.hypot(yy, xx) < 0.4 * n

    def r(vol: np.ndarray) -> float:
        rows = range(4, spec.ny - 4)
        a = np.concatenate([vol[j][disk] for j in rows])
        b = np.concatenate([truth.slice_delta(j, n)[disk] for j in rows])
        return float(np.corrcoef(a, b)[0, 1])

    r_found, r_exact = r(found.volume), r(exact.volume)
    print(f"\nforeign scan: axis error {err:+.3f} px ({found.report.cor.method}, confidence "
          f"{found.report.cor.confidence_px} px); r with the phantom {r_found:.3f} (true axis {r_exact:.3f})")
    assert abs(err) < 0.5
    assert r_found >= r_exact - 0.02
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cor"]["method"] and len(report["cor"]["candidates"]) >= 2
    assert not any(a["name"].startswith("RotationAxis") for a in report["alerts"])


def test_the_final_pass_alerts_are_typed_and_reported_as_before():
    """The chain keeps Alert objects; report.json gets name, severity, message (as the hand-built entries
    had them); an alert saved as a dict by an earlier version's work folder is read back as an Alert."""
    from xnh_stream.chain.final import alert_entries, as_alert
    from xnh_stream.chain.scan import left_out_alert
    from xnh_stream.quality.alerts import Alert

    alert = left_out_alert("scan_1_", "frame shape (16, 40)")
    assert isinstance(alert, Alert)
    entries = alert_entries([alert, Alert("AlignmentFailed", "critical", "not aligned")])
    assert entries == [{"name": "DistanceFileRejected", "severity": "critical",
                        "message": "distance scan_1_ left out: frame shape (16, 40)"},
                       {"name": "AlignmentFailed", "severity": "critical", "message": "not aligned"}]
    old = {"name": "RotationAxisUnknown", "severity": "critical", "message": "no estimate"}
    assert as_alert(old) == Alert("RotationAxisUnknown", "critical", "no estimate")
    assert as_alert(alert) is alert
