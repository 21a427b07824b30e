"""The live stream on an embedded local Ray: every frame journaled, progressive volume, exact final."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.report import Completion
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import InputError
from xnh_stream.io.sources import FrameRecord
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan


@dataclasses.dataclass(frozen=True)
class CorruptRecord(FrameRecord):
    """A frame whose pixels turn to NaN in transit (the reader refuses it, as it would a NaN frame on disk)."""

    def read(self, retry_s: float = 2.0) -> np.ndarray:
        raise InputError(self.path, f"frame {self.index}: {self.frame_shape[0] * self.frame_shape[1]} non-finite "
                         "pixel values (NaN or inf)", "data")


@dataclasses.dataclass(frozen=True)
class CountingRecord(FrameRecord):
    """A frame record that notes every read of its pixels (driver side)."""

    reads = []  # noqa: RUF012 - class-level log of frame ids read

    def read(self, retry_s: float = 2.0) -> np.ndarray:
        CountingRecord.reads.append(self.frame_id)
        return super().read(retry_s)


class ListSource:
    """Releases a finished scan's frame records a few at a time, in acquisition order (distance after
    distance), read with the one reader; complete once all are out."""

    def __init__(self, folder, per_poll: int = 25, corrupt: int | None = None):
        self.folder = folder
        index = ScanIndex.read(folder)
        self.records = [r for d in index.distances for r in sorted(d.frames, key=lambda r: (r.sequence, r.frame_id))]
        if corrupt is not None:
            self.records[corrupt] = CorruptRecord(**{f.name: getattr(self.records[corrupt], f.name)
                                                     for f in dataclasses.fields(FrameRecord)})
        self.pos, self.per_poll = 0, per_poll

    @property
    def items(self) -> list[tuple[FrameRecord, np.ndarray]]:
        """Every record with its pixels (for consumers that want both)."""
        return [(r, r.read()) for r in self.records]

    def poll(self):
        batch = self.records[self.pos : self.pos + self.per_poll]
        self.pos += len(batch)
        return batch

    def completion(self):
        return Completion("every frame of the list delivered") if self.pos >= len(self.records) else None


def stream(source, folder, out, config, **options):
    """Run the stream driver with these options (one phase worker and one shard unless asked: fewer actor
    processes to start on a 2-core test machine)."""
    from actors.stream import StreamDriver, StreamOptions

    hooks = {k: options.pop(k) for k in ("on_progress", "subscribers", "on_result") if k in options}
    options = {"n_workers": 1, "n_shards": 1, **options}
    return StreamDriver(source, folder, out, config, StreamOptions(**options), **hooks).run()


def assert_final_is_process(final: np.ndarray, batch: np.ndarray) -> None:
    """The final pass of a streamed scan against ``process`` on its folder. It takes the stream's flat-fielded
    frames instead of reading the files (xnh_stream/chain/frames.py); with flats at both ends of a scan the
    stream flat-fielded each with the first series alone, and the final pass flat-fields it again with the
    interpolated flat: a few float32 roundings per pixel (~1e-7), which the CTF's inverse filter (1 / alpha at
    the lowest frequencies) and the FBP sum carry to 3e-6 of the volume's largest value with four distances,
    2.5e-5 with three (a CTF less well conditioned). A wrong flat (5 % on a frame), axis or frame moves it by
    percents; tests/test_corrected_frames.py: bit for bit where no flat came later."""
    scale = np.abs(batch).max()
    diff = np.abs(final - batch).max()
    print(f"\nfinal pass from the stream's frames vs process: max |diff| = {diff / scale:.2e} of max |V|")
    np.testing.assert_allclose(final, batch, rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SimulationConfig(nx=64, ny=16, n_angles=24, seed=4, oversample=1))
    return folder


def test_stream_journals_every_frame_and_ends_at_the_batch_result(ray_local, small_scan, tmp_path):
    _, record = read_truth(small_scan)
    # The live volume uses the configured rotation axis (live estimation is not written yet); the final
    # pass would estimate it itself.
    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"]})
    source = ListSource(small_scan)
    seen = []
    progress = []
    result = stream(source, small_scan, tmp_path / "out", config, n_shards=2, max_in_flight=4,
                    poll_interval_s=0.0, on_progress=progress.append, subscribers=(seen.append,))
    n_frames = len(source.records)
    assert result.counts["received"] == n_frames and result.counts["pending"] == 0
    assert result.counts["processed"] + result.counts["quarantined"] == n_frames
    assert [e["event"] for e in result.events] == ["scan_complete"] and seen[0]["event"] == "scan_complete"
    # live progress reached every angle with the CTF
    assert progress[-1].angles_final == 24
    # the final volume is the batch chain's on the same files, read from the stream's store
    batch = process_scan(small_scan, None, config).volume
    assert_final_is_process(result.final.volume, batch)
    assert result.final.report.frames.from_stream == 24 * 4
    assert (tmp_path / "out" / "volume.ome.zarr").exists() and (tmp_path / "out" / "report.json").exists()
    # the live volume is close to it
    r = np.corrcoef(result.live_volume.ravel(), batch.ravel())[0, 1]
    print(f"\nlive vs final volume r = {r:.3f}")
    assert r > 0.85
    # the full-resolution live slices (one back-projection per angle, in O(N^2)) are the live volume's
    ny, n, _ = result.live_volume.shape
    scale = np.abs(result.live_volume).max()
    for name, cut in (("xy", result.live_volume[ny // 2]), ("xz", result.live_volume[:, n // 2, :]),
                      ("yz", result.live_volume[:, :, n // 2])):
        np.testing.assert_allclose(result.slices[name], cut, atol=2e-4 * scale)
    # the shards account their CPU: back-projection (every angle went in) and the live views
    assert result.shard_cpu_s["add"] > 0 and result.shard_cpu_s["views"] >= 0


def test_a_binned_live_volume_matches_the_binned_final_one(ray_local, small_scan, tmp_path):
    """live_binning 2: the live volume has half the voxels per axis (8x fewer to back-project into) and
    agrees with the full-resolution final volume binned the same way."""
    _, record = read_truth(small_scan)
    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"], "stream.live_binning": 2})
    result = stream(ListSource(small_scan), small_scan, tmp_path / "out", config, n_shards=2, poll_interval_s=0.0)
    final = result.final.volume
    assert result.live_binning == 2
    assert result.live_volume.shape == tuple(n // 2 for n in final.shape)
    binned = final.reshape(final.shape[0] // 2, 2, final.shape[1] // 2, 2, final.shape[2] // 2, 2).mean(axis=(1, 3, 5))
    r = np.corrcoef(result.live_volume.ravel(), binned.ravel())[0, 1]
    print(f"\nbinned live vs binned final volume r = {r:.3f}")
    assert r > 0.85


def test_a_bad_frame_is_quarantined_and_the_stream_goes_on(ray_local, small_scan, tmp_path):
    _, record = read_truth(small_scan)
    source = ListSource(small_scan, corrupt=60)  # a projection of distance 1 turns to NaN in transit
    result = stream(source, small_scan, tmp_path / "out", ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"]}),
                    poll_interval_s=0.0, final_pass=False)
    assert result.counts["quarantined"] == 1
    assert result.counts["received"] == len(source.records)
    assert result.live_volume is not None and np.isfinite(result.live_volume).all()


def test_a_live_volume_over_the_limit_stays_in_the_shards(ray_local, small_scan, tmp_path):
    """A full-resolution live volume of a real scan (tens of GiB) is never gathered into the driver."""
    _, record = read_truth(small_scan)
    source = ListSource(small_scan)
    result = stream(source, small_scan, tmp_path / "out", ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"]}),
                    poll_interval_s=0.0, final_pass=False, live_result_max_bytes=1024)
    assert result.live_volume is None
    assert result.counts["processed"] == len(source.records) and result.shard_cpu_s["add"] > 0


def test_watch_a_scan_while_it_is_written(ray_local, tmp_path):
    """stream_scan writes growing NXtomo chunk files; the FolderWatcher + Ray stream follow them live."""
    import threading

    from actors.stream import WatcherSource
    from xnh_stream.ingest.watch import FolderWatcher
    from xnh_stream.simulate.stream import stream_scan

    cfg = SimulationConfig(nx=48, ny=16, n_angles=24, seed=6, oversample=1, n_flats=3, n_darks=2)
    scan_dir, out = tmp_path / "scan", tmp_path / "out"
    scan_dir.mkdir()
    writer = threading.Thread(target=stream_scan, args=(scan_dir, cfg),
                              kwargs={"frames_per_second": 400.0, "chunk_frames": 8}, daemon=True)
    writer.start()
    with FolderWatcher(scan_dir, poll_interval_s=0.05, use_inotify=False, settle_s=0.3) as watcher:
        source = WatcherSource(watcher, n_distances=4, quiet_s=1.0)
        config = ProcessConfig.from_mapping({"alignment.angles": 8})
        result = stream(source, scan_dir, out, config, poll_interval_s=0.05, timeout_s=240)
    writer.join()
    per_distance = cfg.n_darks + 2 * cfg.n_flats + cfg.n_angles + len(cfg.return_angles_deg)
    c = result.counts
    assert c["received"] == 4 * per_distance and c["pending"] == 0
    assert c["processed"] + c["quarantined"] == c["received"]
    assert result.final is not None
    batch = process_scan(scan_dir, None, config)
    assert_final_is_process(result.final.volume, batch.volume)
    assert batch.report.frames.received == c["received"]
    # no rotation axis was given: the stream estimated it from the first 0/180 pair and rebuilt the live
    # volume around it, so the live volume is close to the final one
    r = np.corrcoef(result.live_volume.ravel(), batch.volume.ravel())[0, 1]
    print(f"\nlive vs final (axis estimated live) r = {r:.3f}")
    assert r > 0.85


@pytest.fixture(scope="module")
def undisturbed(ray_local, small_scan, tmp_path_factory):
    """The live stream of the small scan with nothing killed (what the kill tests compare against)."""
    _, record = read_truth(small_scan)
    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"]})
    return config, stream(ListSource(small_scan), small_scan, tmp_path_factory.mktemp("undisturbed"), config,
                          poll_interval_s=0.0, final_pass=False, n_workers=2, n_shards=2)


class KeepsNoPreview:
    """A previews store that keeps nothing (every final recomputes its preview) and notes what it was offered."""

    def __init__(self):
        self.offered = []

    def put(self, distance_key, angle_deg, frame):
        self.offered.append((distance_key, angle_deg))
        return True

    def has(self, distance_key, angle_deg):
        return False


def test_kept_previews_are_the_recomputed_ones(ray_local, small_scan, undisturbed, tmp_path, monkeypatch):
    """Finals take their preview back from disk instead of recomputing it: every preview is offered for keeping
    once, the live volume is the one of a stream that recomputes each, and the kept previews go at the end."""
    from xnh_stream.chain.assembler import ScanAssembler

    config, kept = undisturbed
    store = KeepsNoPreview()
    monkeypatch.setattr(ScanAssembler, "previews_store", property(lambda self: store))
    monkeypatch.setattr(ScanAssembler, "drop_previews", lambda self: None)
    recomputed = stream(ListSource(small_scan), small_scan, tmp_path / "r", config, poll_interval_s=0.0,
                        final_pass=False, n_workers=2, n_shards=2)
    angles = sorted(angle for _, angle in store.offered)
    # a preview whose angle's final was queued first (or that came too late) is skipped, not computed
    assert len(angles) == len(set(angles)) == 24 - sum(recomputed.previews_skipped.values())
    b = recomputed.live_volume
    np.testing.assert_allclose(kept.live_volume, b, atol=1e-5 * np.abs(b).max())
    for name, cut in recomputed.slices.items():
        np.testing.assert_allclose(kept.slices[name], cut, atol=1e-5 * np.abs(cut).max())
    assert list(small_scan.parent.glob("undisturbed*/store")) and not list(small_scan.parent.glob(
        "undisturbed*/store_previews"))


def stream_killing_one(ray_local, small_scan, out, config, kind: str, need_in_flight: bool = False):
    """Stream the small scan and kill the first actor of ``kind`` (shards, workers) once a quarter of the
    angles are final; returns the result and the ``restarts`` figures of every progress report."""
    from actors.stream import StreamDriver, StreamOptions

    killed, restarts = [], []
    driver = None

    def kill_once(p):
        restarts.append(p.restarts)
        if not killed and p.angles_final >= 6 and (p.queues["phase_in_flight"] > 0 or not need_in_flight):
            ray_local.kill(getattr(driver, kind)[0], no_restart=False)  # distance 4 is arriving
            killed.append(p.angles_final)

    # two frames a poll: the last distance's finals are dispatched a pair at a time, so a progress report finds
    # tasks in flight (with 25 a poll the few reports after the sixth final could all find none: flaky)
    source = ListSource(small_scan, per_poll=2 if need_in_flight else 25)
    driver = StreamDriver(source, small_scan, out, config,
                          StreamOptions(poll_interval_s=0.0, final_pass=False), on_progress=kill_once)
    result = driver.run()
    assert killed, f"no actor of {kind} was killed"
    return result, restarts


def test_a_shard_killed_mid_scan_is_restarted_and_replayed(ray_local, small_scan, undisturbed, tmp_path):
    """Ray restarts a killed reconstruction shard empty; the stream notices and replays its slab from disk."""
    config, undisturbed = undisturbed
    result, restarts = stream_killing_one(ray_local, small_scan, tmp_path / "b", config, "shards")
    assert restarts[-1] == {"phase_worker": 0, "recon_shard": 1, "slice_keeper": 0}  # what the metrics export
    assert result.counts == undisturbed.counts
    # The replayed slab is whole again. It is not bit-identical: its angles were recomputed with the
    # distance-shift models fitted so far, where the undisturbed run used each angle's models of the time.
    ny = result.live_volume.shape[0]
    slab = slice(0, ny // 2)
    a, b = result.live_volume[slab].ravel(), undisturbed.live_volume[slab].ravel()
    r = np.corrcoef(a, b)[0, 1]
    print(f"\nrestarted slab vs undisturbed: r = {r:.4f}, mean ratio {a.mean() / b.mean():.3f}")
    assert r > 0.98 and abs(a.mean() / b.mean() - 1) < 0.05
    np.testing.assert_allclose(result.live_volume[ny // 2 :], undisturbed.live_volume[ny // 2 :],
                               atol=1e-5 * np.abs(b).max())  # the other shard was untouched


def test_a_phase_worker_killed_mid_scan_is_restarted_and_its_tasks_retried(ray_local, small_scan, undisturbed,
                                                                           tmp_path):
    """Ray restarts a killed phase-retrieval worker and retries the tasks it held (same arguments): no angle
    is lost and the live volume is the undisturbed one."""
    config, undisturbed = undisturbed
    result, restarts = stream_killing_one(ray_local, small_scan, tmp_path / "b", config, "workers",
                                          need_in_flight=True)
    assert restarts[-1] == {"phase_worker": 1, "recon_shard": 0, "slice_keeper": 0}  # what the metrics export
    assert result.counts == undisturbed.counts and result.counts["pending"] == 0
    b = undisturbed.live_volume
    np.testing.assert_allclose(result.live_volume, b, atol=1e-5 * np.abs(b).max())


@pytest.mark.slow
def test_resume_after_kill_9_loses_no_frame(ray_local, small_scan, tmp_path):
    """kill -9 of the whole stream (driver and its Ray) mid-scan, then a restart on the same OUT: every frame
    ends processed exactly once, none counted twice, and the final volume is the batch chain's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from xnh_stream.state.journal import FrameJournal

    out = tmp_path / "out"
    _, record = read_truth(small_scan)
    root = Path(__file__).resolve().parents[1]
    script = f"""
import ray, time
from pathlib import Path
from xnh_stream.config import ProcessConfig
from tests.test_stream import ListSource, stream
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
class Slow(ListSource):
    def poll(self):
        time.sleep(0.2)
        return super().poll()
stream(Slow(Path(r"{small_scan}"), per_poll=5), Path(r"{small_scan}"), Path(r"{out}"),
       ProcessConfig.from_mapping({{"sample.delta_beta": {record["delta_beta"]}, "fbp.cor": {record["cor_px"]}}}), poll_interval_s=0.0)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    received = 0
    while time.time() < deadline and received < 110:
        time.sleep(0.5)
        if (out / "journal.sqlite").exists():
            try:
                with FrameJournal(out / "journal.sqlite", readonly=True) as j:
                    received = j.counts()["received"]
            except ValueError as exc:  # the file exists a moment before its schema does
                assert "no schema yet" in str(exc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every process it started
    proc.wait()
    assert 110 <= received < len(ListSource(small_scan).records), "the kill did not land mid-scan"

    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"]})
    from xnh_stream.state.store import DistanceStore

    with FrameJournal(out / "journal.sqlite", readonly=True) as j:
        known = j.known_ids()
    stored = DistanceStore(out / "store", readonly=True)
    source = ListSource(small_scan)
    source.records = [CountingRecord(**{f.name: getattr(r, f.name) for f in dataclasses.fields(FrameRecord)})
                      for r in source.records]
    CountingRecord.reads.clear()
    result = stream(source, small_scan, out, config, poll_interval_s=0.0)
    n = len(source.records)
    c = result.counts
    assert c["received"] == n and c["pending"] == 0 and c["duplicates"] == 0
    assert c["processed"] + c["quarantined"] == n
    # the restart read no projection that was already flat-fielded in the store, except the drift
    # monitor's few start views (its state is not journalled); darks, flats and returns are read again
    from xnh_stream.quality.monitor import QualityMonitor

    probe = QualityMonitor(config, "probe")
    in_store = {r.frame_id for r in source.records if r.frame_id in known and r.image_key == 0
                and r.image_key_control == 0 and stored.has(r.distance_key, r.rotation_angle_deg)}
    re_read = in_store & set(CountingRecord.reads)
    assert in_store and all(probe._is_drift_angle(r.rotation_angle_deg)
                            for r in source.records if r.frame_id in re_read)
    assert len(re_read) < len(in_store) / 10
    assert_final_is_process(result.final.volume, process_scan(small_scan, None, config).volume)
