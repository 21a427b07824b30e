"""Ingest: every frame of a running scan found exactly once, never before it is written.

References are independent of the reader: the frames simulate_scan writes with NXtomoWriter (the stream
writes the same simulated counts, so every frame read must equal its reference bit for bit), EDF files
written here with fabio, and files damaged by hand.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from collections import Counter
from pathlib import Path

import fabio
import h5py
import numpy as np
import pytest
import yaml
from fabio.edfimage import EdfImage

from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.ingest import FolderWatcher, edf_geometry, inspect_edf, inspect_nxtomo
from xnh_stream.ingest.watch import VIEWS
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, RETURN, InputError, NXtomoWriter, one_open_per_file
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.simulate.stream import LiveNXtomoFile, StreamThread, stream_scan

CFG = SimulationConfig(nx=32, ny=16, n_angles=8, n_flats=2, n_darks=2, seed=4)
K = len(CFG.z1_m)
N_PER = CFG.n_darks + 2 * CFG.n_flats + CFG.n_angles + len(CFG.return_angles_deg)  # 17
GEO = DistanceGeometry(0.01, 1.0, 3e-6, 17.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Frames and keys of every distance, as simulate_scan writes them: {distance name: (frames, keys...)}."""
    sim = simulate_scan(tmp_path_factory.mktemp("ref"), CFG)
    ref = {}
    for k, f in enumerate(sim.files):
        with h5py.File(f, "r") as h:
            det = h["entry0000/instrument/detector"]
            ref[f"{CFG.name}_{k + 1}_"] = (det["data"][()], det["image_key"][()], det["image_key_control"][()],
                                          h["entry0000/sample/rotation_angle"][()])
    return ref


@pytest.fixture(scope="module")
def chunked_scan(tmp_path_factory):
    """A finished chunked scan (copied by tests that change it)."""
    out = tmp_path_factory.mktemp("chunked")
    stream_scan(out, CFG, frames_per_second=None, chunk_frames=5)
    return out


def _check_against_reference(records, reference, file_index=lambda r: int(r.sequence)):
    for r in records:
        frames, ik, ikc, ang = reference[r.distance_name]
        i = file_index(r)
        assert (r.image_key, r.image_key_control) == (ik[i], ikc[i]), r.frame_id
        assert r.rotation_angle_deg == pytest.approx(ang[i], abs=1e-9), r.frame_id
        np.testing.assert_array_equal(r.read(), frames[i].astype(np.float32), err_msg=r.frame_id)


def _drain(watcher, until, timeout_s=20.0):
    """Poll until ``until(records)`` holds (or fail after timeout_s)."""
    got, t0 = [], time.monotonic()
    while not until(got):
        got += watcher.poll(timeout_s=0.05)
        assert time.monotonic() - t0 < timeout_s, f"timed out with {len(got)} frames, {watcher.counters}"
    return got


@pytest.mark.parametrize("use_inotify", [False, True])
def test_running_chunked_scan_every_frame_once_and_never_early(tmp_path, reference, use_inotify):
    # With inotify the full scan runs only at the first poll: events alone must bring every later frame.
    poll_interval = 30.0 if use_inotify else 0.02
    stream = StreamThread(tmp_path, CFG, frames_per_second=150, chunk_frames=5, hdf5_locking=False)
    early = []  # frames handed out while their file was not finished yet
    with FolderWatcher(tmp_path, poll_interval_s=poll_interval, use_inotify=use_inotify, settle_s=0.2) as w:
        w.poll()
        stream.start()
        got, t0 = [], time.monotonic()
        while stream.is_alive() or len(got) < K * N_PER:
            assert time.monotonic() - t0 < 30, f"{len(got)} frames after 30 s: {w.counters}"
            for r in w.poll(timeout_s=0.05):
                with h5py.File(r.path, "r", locking=False) as h:
                    if "end_time" not in h["entry0000"]:
                        early.append(r)
                # a frame handed out before its pixels were written would differ from the reference
                _check_against_reference([r], reference)
                got.append(r)
            assert len(got) <= K * N_PER
        result = stream.result()
        assert result.completed and result.frames_written == K * N_PER
        w.poll()
        c = w.counters
        progress = w.distance_progress()
    ids = [r.frame_id for r in got]
    assert len(ids) == len(set(ids)) == K * N_PER
    n_chunks = K * -(-N_PER // 5)
    assert c.frames_emitted == K * N_PER and c.complete_files == n_chunks
    assert c.seen_files == n_chunks + 1 and c.ignored_files == 1  # + truth.h5
    assert (c.duplicates, c.vanished, c.quarantined_files, c.incomplete_pending) == (0, 0, 0, 0)
    assert all(p.complete and p.received == p.expected == N_PER for p in progress.values())
    assert len(progress) == K
    if not use_inotify:
        assert early, "no frame was handed out from a file still being written"


def test_growing_file_frames_appear_one_by_one_and_size_says_nothing(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 4000, size=(4, 8, 16)).astype(np.uint16)
    with FolderWatcher(tmp_path, use_inotify=False, poll_interval_s=0.001, settle_s=0.0) as w:
        f = LiveNXtomoFile(tmp_path / "c_0000.nx", (8, 16), GEO, np.uint16, n_frames=4, locking=False)
        size0 = (tmp_path / "c_0000.nx").stat().st_size
        assert size0 > frames.nbytes  # pre-allocated: the whole data block is on disk already
        assert w.poll() == []
        for i, frame in enumerate(frames):
            f.write(frame, PROJECTION, PROJECTION, 10.0 * i, 0.1)
            time.sleep(0.002)
            new = w.poll()
            assert [r.index for r in new] == [i]
            np.testing.assert_array_equal(new[0].read(), frame)
            assert new[0].rotation_angle_deg == 10.0 * i and new[0].geometry == GEO
            assert w.counters.complete_files == (1 if i == 3 else 0)  # complete at the stated count
        f.close()
        assert w.poll() == [] and w.counters.frames_emitted == 4


def test_copy_and_rewritten_file_are_counted_not_emitted(tmp_path, chunked_scan):
    root = tmp_path / "scan"
    shutil.copytree(chunked_scan, root)
    with FolderWatcher(root, use_inotify=False, poll_interval_s=0.001, settle_s=0.0) as w:
        first = w.poll()
        assert len(first) == K * N_PER
        chunk = root / f"{CFG.name}_2_" / f"{CFG.name}_2_0001.nx"
        shutil.copy(chunk, root / "copy_of_chunk.nx")  # same content, another name
        time.sleep(0.01)
        assert w.poll() == []
        c = w.counters
        assert (c.duplicate_files, c.duplicates, c.complete_files) == (1, 5, 17)
        # the same file deleted and written again under its own name: its frame ids were handed out already
        data = chunk.read_bytes()
        chunk.unlink()
        w.poll()
        chunk.write_bytes(data)
        time.sleep(0.01)
        assert w.poll() == []
        assert w.counters.duplicates == 10 and w.counters.vanished == 0
        # a handled file touched again (another event for it) is counted, not read again
        other = root / f"{CFG.name}_1_" / f"{CFG.name}_1_0000.nx"
        st = other.stat()
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        assert w.poll() == [] and w.counters.duplicate_events == 1
        assert w.counters.frames_emitted == K * N_PER


def test_file_deleted_before_completion_is_vanished(tmp_path):
    with FolderWatcher(tmp_path, use_inotify=False, poll_interval_s=0.001, settle_s=0.0) as w:
        f = LiveNXtomoFile(tmp_path / "c_0000.nx", (8, 16), GEO, np.uint16, n_frames=5, locking=False)
        for i in range(2):
            f.write(np.full((8, 16), 100 + i), PROJECTION, PROJECTION, float(i), 0.1)
        assert len(w.poll()) == 2
        f.close(complete=False)
        (tmp_path / "c_0000.nx").unlink()
        assert w.poll() == []
        c = w.counters
        assert (c.vanished, c.frames_emitted, c.complete_files, c.incomplete_pending) == (1, 2, 0, 0)


def _nxtomo_file(path, frames, keys=None, geometry=GEO, dtype=np.float32):
    with NXtomoWriter(path, frames.shape[1:], geometry, dtype=dtype) as w:
        for i, fr in enumerate(frames):
            w.append(fr, PROJECTION if keys is None else keys[i], float(i), 0.1)


def test_bad_files_are_quarantined_with_the_reason_never_a_crash(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    root = tmp_path / "scan"
    root.mkdir()
    good = np.random.default_rng(1).uniform(100, 200, size=(6, 16, 16)).astype(np.float32)
    _nxtomo_file(src / "whole.nx", good)
    data = (src / "whole.nx").read_bytes()
    (root / "truncated.nx").write_bytes(data[: len(data) // 2])
    nan = good.copy()
    nan[3, 2, 5] = np.nan
    _nxtomo_file(root / "nan.nx", nan)
    # same distance (z1), another frame shape
    _nxtomo_file(root / "zz_wrong_shape.nx", good[:, :8, :])
    (root / "notes.h5").write_bytes(b"not an hdf5 file at all, just text" * 10)
    with FolderWatcher(root, use_inotify=False, poll_interval_s=0.001, settle_s=0.3) as w:
        recs = w.poll()
        # a disagreement with the distance is final at once; unreadable files may be being written: they
        # are judged once they have settled
        assert [Path(r.path).name for r in w.drain_quarantine()] == ["zz_wrong_shape.nx"]
        assert set(w.pending_files()) == {str(root / "truncated.nx"), str(root / "notes.h5")}
        time.sleep(0.35)
        recs += w.poll()
        q = {Path(r.path).name: r for r in w.quarantined}
        assert set(q) == {"truncated.nx", "zz_wrong_shape.nx", "notes.h5"}
        assert "truncated" in q["truncated.nx"].reason
        assert "shape (8, 16)" in q["zz_wrong_shape.nx"].reason and "nan.nx" in q["zz_wrong_shape.nx"].reason
        assert isinstance(q["truncated.nx"].error(), InputError)
        assert len(w.drain_quarantine()) == 2 and w.drain_quarantine() == []  # each record handed out once
        assert w.counters.quarantined_files == 3
    assert sorted(r.index for r in recs) == list(range(6))  # nan.nx: its frames are handed out ...
    for r in recs:
        if r.index == 3:  # ... and the bad one is refused when read, naming the file and the frame
            with pytest.raises(InputError, match=r"nan\.nx.*frame 3: 1 non-finite"):
                r.read(retry_s=0)
        else:
            np.testing.assert_array_equal(r.read(), good[r.index])


def test_stalled_incomplete_file_is_quarantined_only_when_asked(tmp_path):
    f = LiveNXtomoFile(tmp_path / "c_0000.nx", (8, 16), GEO, np.uint16, n_frames=5, locking=False)
    f.write(np.full((8, 16), 7), PROJECTION, PROJECTION, 0.0, 0.1)
    f.close(complete=False)
    with FolderWatcher(tmp_path, use_inotify=False, poll_interval_s=0.001, settle_s=0.0) as w:
        assert len(w.poll()) == 1
        time.sleep(0.05)
        assert w.poll() == [] and w.counters.incomplete_pending == 1
        assert list(w.pending_files()) == [str(tmp_path / "c_0000.nx")]
    with FolderWatcher(tmp_path, use_inotify=False, poll_interval_s=0.001, settle_s=0.0, stall_s=0.05) as w:
        assert len(w.poll()) == 1
        time.sleep(0.06)
        w.poll()
        (q,) = w.drain_quarantine()
        assert "1 of its 5 frames written" in q.reason and q.frames_emitted == 1


def test_restart_with_known_frame_ids_emits_only_the_rest(tmp_path, chunked_scan):
    with FolderWatcher(chunked_scan, use_inotify=False) as w:
        recs = w.poll()
    all_ids = [r.frame_id for r in recs]
    assert len(all_ids) == K * N_PER and all(not i.startswith("/") for i in all_ids)  # relative ids
    again = pickle.loads(pickle.dumps(recs[7]))  # records cross process boundaries (actors)
    assert again == recs[7]
    np.testing.assert_array_equal(again.read(), recs[7].read())
    known = set(all_ids[::3])
    root = tmp_path / "moved"  # the journal's ids stay valid when the scan folder is mounted elsewhere
    shutil.copytree(chunked_scan, root)
    with FolderWatcher(root, use_inotify=False, known_frame_ids=known) as w:
        rest = [r.frame_id for r in w.poll()]
        assert w.counters.known_skipped == len(known) and w.counters.frames_emitted == len(rest)
        assert all(p.complete for p in w.distance_progress().values())
    assert sorted(rest) == sorted(set(all_ids) - known)


def test_out_of_order_chunks_and_interleaved_whole_files(tmp_path, chunked_scan, reference):
    root = tmp_path / "scan"
    root.mkdir()
    files = sorted(chunked_scan.rglob("*.nx"))
    order = np.random.default_rng(3).permutation(len(files))
    got = []
    with FolderWatcher(root, use_inotify=False, poll_interval_s=0.001, settle_s=0.0) as w:
        for i in order:  # chunks land in random order, across distances
            dest = root / files[i].relative_to(chunked_scan)
            dest.parent.mkdir(exist_ok=True)
            shutil.copy(files[i], dest)
            got += w.poll()
        assert w.counters.complete_files == len(files)
    assert len({r.frame_id for r in got}) == len(got) == K * N_PER
    _check_against_reference(got, reference)
    # whole growing NXtomo files, every distance at each angle: readable by the batch reader too
    whole = tmp_path / "whole"
    stream_scan(whole, CFG, frames_per_second=None, layout="nxtomo", order="interleaved")
    index = ScanIndex.read(whole)
    assert len(index.distances) == K and not index.rejected and not index.rejected_files
    with FolderWatcher(whole, use_inotify=False) as w:
        recs = w.poll()
    assert len(recs) == K * N_PER
    _check_against_reference(recs, reference)


def _edf_file_index(r):
    """Position in simulate_scan's file of an EDF record, from the layout's names."""
    name = Path(r.path).name
    n, f, d = CFG.n_angles, CFG.n_flats, CFG.n_darks
    if name.startswith("darkend"):
        return r.index
    if name.startswith("ref"):
        j, at = (int(x) for x in name[3:-4].split("_"))
        return d + j if at == 0 else d + f + n + j
    i = int(name[len(r.distance_name):-4])
    return d + f + i if i < n else d + 2 * f + i


def test_edf_layout_stream_reads_back_the_frames_written(tmp_path, reference):
    s = stream_scan(tmp_path, CFG, frames_per_second=None, layout="edf")
    with FolderWatcher(tmp_path, use_inotify=False, settle_s=0.0) as w:
        recs = w.poll()
        progress = w.distance_progress()
    n_per = N_PER - CFG.n_darks + 1  # spec accumulates the dark series into one frame
    assert len(recs) == K * n_per and len({r.frame_id for r in recs}) == len(recs)
    assert all(p.complete and p.received == n_per for p in progress.values())
    darks = [r for r in recs if r.image_key == DARK]
    assert len(darks) == K and all(r.scale == 1 / CFG.n_darks for r in darks)
    for r in darks:  # the accumulated frame read back is the mean of the exposures simulate_scan wrote
        frames, ik, _, _ = reference[r.distance_name]
        np.testing.assert_allclose(r.read(), frames[ik == DARK].astype(np.float64).mean(axis=0), rtol=1e-6)
    _check_against_reference([r for r in recs if r.image_key != DARK], reference, _edf_file_index)
    geo = CFG.geometry()
    for r in recs:
        g = geo.distances[int(r.distance_name.split("_")[1]) - 1]
        assert r.geometry.z1_m == g.z1_m and r.geometry.z2_m == pytest.approx(g.z2_m, rel=1e-12)
        assert r.geometry.pixel_m == pytest.approx(g.pixel_m, rel=1e-12) and r.layout == "edf"
    assert (s.distance_paths[0] / f"{CFG.name}_1_.xml").exists()


def _write_edf(path, frames, headers):
    img = EdfImage(data=frames[0], header=headers[0])
    for fr, h in zip(frames[1:], headers[1:]):
        img.append_frame(data=fr, header=h)
    img.write(str(path))


def test_edf_reader_on_files_written_with_fabio(tmp_path):
    folder = tmp_path / "sample_1_"
    folder.mkdir()
    rng = np.random.default_rng(5)
    shape, n = (12, 20), 6
    frame = {}

    def put(name, nframes=1, header=None):
        frs = [rng.integers(10, 60000, size=shape).astype(np.uint16) for _ in range(nframes)]
        _write_edf(folder / name, frs, [dict(header or {}) for _ in frs])
        frame[name] = frs

    (folder / "sample_1_.info").write_text(
        "TOMO_N=    6\nScanRange= 180\nREF_N=     1\nREF_ON=    6\nDARK_N=    3\nDim_1=     20\nDim_2=     12\n"
        "PixelSize= 3.0\nDistance=  1200.0\nEnergy=    17.05\nCount_time= 0.25\n")
    with pytest.raises(InputError, match=r"sample_1_\.info.*z1.*xnh\.yaml") as err:
        edf_geometry(folder)
    assert err.value.field == "z1_m"
    (tmp_path / "xnh.yaml").write_text(yaml.safe_dump({"distances": {"sample_1_": {"z1_m": 0.04}}}))
    put("darkend0000.edf", 3)
    put("dark.edf")  # the averaged dark beside the raw ones: ignored
    put("ref0000_0000.edf")
    put("refHST0000.edf")  # averaged flat beside raw ones: ignored
    for i in range(n):
        put(f"sample_1_{i:04d}.edf")  # no motor in the header: angle from TOMO_N and ScanRange
    put("sample_1_0006.edf", header={"motor_mne": "sx srot", "motor_pos": "0.5 180.0"})  # return projection
    put("sample_1_0007.edf")  # return projection without its angle: 90 degrees (every 90 back to 0)
    put("sample_1_slice_0000.edf")  # a reconstructed slice: not a frame
    info = edf_geometry(folder)
    g = info.geometry
    np.testing.assert_allclose([g.z1_m, g.z2_m, g.pixel_m, g.energy_kev], [0.04, 1.2, 3e-6, 17.05], rtol=1e-12)
    assert info.tomo_n == n and info.frame_shape == shape
    with FolderWatcher(tmp_path, use_inotify=False, settle_s=0.0) as w:
        recs = w.poll()
        assert w.counters.ignored_files == 3 and w.counters.quarantined_files == 0
    by = {(Path(r.path).name, r.index): r for r in recs}
    assert len(recs) == 3 + 1 + n + 2
    for (name, i), r in by.items():
        np.testing.assert_array_equal(r.read(), frame[name][i].astype(np.float32))
        assert r.count_time_s == 0.25 and r.distance_name == "sample_1_"
    assert [by[("darkend0000.edf", i)].image_key for i in range(3)] == [DARK] * 3
    assert by[("ref0000_0000.edf", 0)].image_key == FLAT
    for i in range(n):
        r = by[(f"sample_1_{i:04d}.edf", 0)]
        assert (r.image_key, r.image_key_control, r.rotation_angle_deg, r.sequence) == (PROJECTION, 0, 30.0 * i, i)
    assert by[("sample_1_0006.edf", 0)].image_key_control == RETURN
    assert by[("sample_1_0006.edf", 0)].rotation_angle_deg == 180.0
    assert by[("sample_1_0007.edf", 0)].rotation_angle_deg == 90.0


def test_edf_half_written_and_bad_files(tmp_path):
    folder = tmp_path / "s_1_"
    folder.mkdir()
    (folder / "s_1_.info").write_text("TOMO_N= 4\nScanRange= 180\nPixelSize= 3\nDistance= 1000\nEnergy= 17\n")
    (folder / "xnh.yaml").write_text("z1_m: 0.05\n")
    frames = [np.full((8, 8), v, np.uint16) for v in (5, 6)]
    _write_edf(folder / "darkend0000.edf", frames, [{}, {}])
    whole = (folder / "darkend0000.edf").read_bytes()
    # cut inside the second frame: the first is handed out, the second waits (fabio would pad it with zeros)
    (folder / "darkend0000.edf").write_bytes(whole[: len(whole) - 40])
    (folder / "s_1_0000.edf").write_bytes(whole[:100])  # cut inside the header: unreadable
    with FolderWatcher(tmp_path, use_inotify=False, settle_s=0.2) as w:
        first = w.poll()
        assert [(Path(r.path).name, r.index) for r in first] == [("darkend0000.edf", 0)]
        np.testing.assert_array_equal(first[0].read(), frames[0])
        (folder / "darkend0000.edf").write_bytes(whole)  # the rest lands
        time.sleep(0.25)
        second = w.poll()
        assert [(Path(r.path).name, r.index) for r in second] == [("darkend0000.edf", 1)]
        (q,) = w.drain_quarantine()
        assert q.path.endswith("s_1_0000.edf") and "cannot be read as EDF" in q.reason
    inspect = inspect_edf(folder / "darkend0000.edf")
    assert inspect.consistent and inspect.n_available == 2
    (folder / "xnh.yaml").write_text("z1_m: 0.05\nenergy: 17\n")
    with pytest.raises(InputError, match=r"unknown key.*energy"):
        edf_geometry(folder)


def test_stream_scan_stops_cleanly_and_rejects_bad_arguments(tmp_path):
    t = StreamThread(tmp_path, CFG, frames_per_second=40, chunk_frames=4, hdf5_locking=False)
    t.start()
    time.sleep(1.0)
    t.stop()
    s = t.result(timeout=10)
    assert not s.completed and 0 < s.frames_written < s.frames_total

    def finished(f):
        with h5py.File(f, "r", locking=False) as h:
            return "end_time" in h["entry0000"]

    unfinished = [f for f in s.files if not finished(f)]
    in_chunk = (s.frames_written % N_PER) % 4  # frames of the chunk being written when it stopped
    assert len(unfinished) == (1 if in_chunk else 0)
    for f in unfinished:
        view = inspect_nxtomo(f)
        assert not view.complete and view.n_available == in_chunk
    with pytest.raises(ValueError, match="layout"):
        stream_scan(tmp_path, CFG, layout="tiff")
    with pytest.raises(ValueError, match="order"):
        stream_scan(tmp_path, CFG, order="random")
    assert fabio.version  # fabio is the EDF reader and writer


class _CountingFile(h5py.File):
    """h5py.File counting its opens per file name."""

    opens: Counter[str] = Counter()  # noqa: RUF012 - the class-level count is the point

    def __init__(self, name, *args, **kwargs):
        if isinstance(name, (str, os.PathLike)):
            _CountingFile.opens[Path(name).name] += 1
        super().__init__(name, *args, **kwargs)


def test_a_poll_and_the_frames_read_from_it_open_each_file_once(tmp_path, reference, monkeypatch):
    """The stream's loop holds one ``one_open_per_file`` block for a poll and the frames it reads: frames of
    chunk files still being written are read right (bit for bit, a growing file is seen afresh by the next
    block); on a finished folder a poll and every frame read cost one open per file, and a second watcher of
    the folder (the final pass's ScanIndex) opens only a file that changed since (``VIEWS``)."""
    stream = StreamThread(tmp_path, CFG, frames_per_second=150, chunk_frames=5, hdf5_locking=False)
    got = []
    with FolderWatcher(tmp_path, poll_interval_s=0.02, use_inotify=False, settle_s=0.2) as w:
        stream.start()
        t0 = time.monotonic()
        while stream.is_alive() or len(got) < K * N_PER:
            assert time.monotonic() - t0 < 60, f"{len(got)} frames: {w.counters}"
            with one_open_per_file():
                new = w.poll(timeout_s=0.05)
                _check_against_reference(new, reference)
            got += new
    assert stream.result().completed
    assert len({r.frame_id for r in got}) == len(got) == K * N_PER

    chunks = sorted(p.name for p in tmp_path.rglob("*.nx"))
    assert len(chunks) == K * -(-N_PER // 5)
    VIEWS.clear()  # a new process
    monkeypatch.setattr(h5py, "File", _CountingFile)
    _CountingFile.opens.clear()
    with FolderWatcher(tmp_path, use_inotify=False, settle_s=0.0) as w, one_open_per_file():
        records = w.poll()
        _check_against_reference(records, reference)  # every frame read
    assert len(records) == K * N_PER
    assert {n: _CountingFile.opens[n] for n in chunks} == dict.fromkeys(chunks, 1)
    _CountingFile.opens.clear()
    changed = next(tmp_path.rglob("*.nx"))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ScanIndex.read(tmp_path)
    assert {n: _CountingFile.opens[n] for n in chunks} == {n: int(n == changed.name) for n in chunks}
