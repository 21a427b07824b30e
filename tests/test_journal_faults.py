"""The journal under faults (issue "Never report success on a wrong volume", the journal): its main file
holds what was checkpointed, a lost or cut ``-wal`` file leaves a journal that is still this scan's, a
damaged one is named as such, every frame is booked with its distance, and a restart opens each file once.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import h5py
import pytest

from xnh_stream.cli import check_output, journal_belongs_to
from xnh_stream.io.nxtomo import InputError
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan
from xnh_stream.state.journal import (
    PROCESSED,
    RECEIVED,
    FrameJournal,
    FrameRecord,
    JournalDamaged,
    JournalEmpty,
)

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=12, oversample=1, n_flats=3, n_darks=2)


def frames_in_main_file_alone(journal: Path, tmp: Path) -> int:
    """Frames a copy of the journal's main file holds without its -wal file (what survives losing the log)."""
    tmp.mkdir(parents=True, exist_ok=True)
    copy = tmp / f"copy{len(list(tmp.iterdir()))}.sqlite"
    shutil.copyfile(journal, copy)
    try:
        with FrameJournal(copy, readonly=True) as j:
            return len(j)
    except JournalEmpty:
        return 0


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passed (no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------------------------------------ checkpoints
def test_the_main_file_holds_the_checkpointed_frames_during_a_run(tmp_path):
    path = tmp_path / "journal.sqlite"
    j = FrameJournal(path, checkpoint_every=50, checkpoint_s=3600.0)
    assert frames_in_main_file_alone(path, tmp_path / "c") == 0  # the schema is there from the start
    size0 = path.stat().st_size
    for b in range(4):  # each batch of 50 is due: copied into the main file at once
        j.record_many([FrameRecord(f"s_1_.nx#{b * 50 + i}", RECEIVED, 0.0123, 0, float(i)) for i in range(50)])
    assert j.checkpoints >= 5 and path.stat().st_size > size0
    assert frames_in_main_file_alone(path, tmp_path / "c") == 200
    j.record_many([FrameRecord(f"s_1_.nx#{200 + i}", RECEIVED, 0.0123, 0, 0.0) for i in range(20)])
    assert frames_in_main_file_alone(path, tmp_path / "c") == 200  # not due yet: in the log only
    j.mark_many([f"s_1_.nx#{i}" for i in range(100)], PROCESSED)  # 100 more rows: due
    assert frames_in_main_file_alone(path, tmp_path / "c") == 220
    j.close()
    with FrameJournal(path, readonly=True) as r:
        assert r.counts()["processed"] == 100 and len(r) == 220


def test_a_journal_left_idle_is_checkpointed_by_its_timer(tmp_path):
    path = tmp_path / "journal.sqlite"
    j = FrameJournal(path, checkpoint_every=10**6, checkpoint_s=0.05)
    before = j.checkpoints
    j.record_many([FrameRecord(f"s_1_.nx#{i}", RECEIVED, 0.0123, 0, 0.0) for i in range(5)])
    assert wait_for(lambda: j.checkpoints > before), "no checkpoint after the writes stopped"
    assert frames_in_main_file_alone(path, tmp_path / "c") == 5
    j.close()


# ------------------------------------------------------------------------------------- lost or cut log
WRITER = r"""
import sys
from xnh_stream.state.journal import FrameJournal, FrameRecord
j = FrameJournal(sys.argv[1], checkpoint_every=50, checkpoint_s=3600.0)
for b in range(4):  # 200 frames, checkpointed
    j.record_many([FrameRecord(f"s_1_.nx#{b * 50 + i}", "received", 0.0123, 0, float(i)) for i in range(50)])
j.record_many([FrameRecord(f"s_1_.nx#{200 + i}", "received", 0.0123, 0, 0.0) for i in range(30)])  # log only
print(j.checkpoints, flush=True)
sys.stdin.read()  # killed here
"""


@pytest.mark.parametrize("fault", ["deleted", "cut"])
def test_a_journal_whose_wal_was_lost_or_cut_is_this_scans_with_what_was_checkpointed(tmp_path, fault):
    """kill -9 of the writer, then its -wal file deleted or cut in half: the restart of ``watch`` resumes
    the journal (it is this scan's) with at least the checkpointed frames, and writes on in it."""
    scan, out = tmp_path / "scan", tmp_path / "out"
    scan.mkdir()
    out.mkdir()
    (scan / "s_1_.nx").write_bytes(b"")
    path = out / "journal.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        assert int(line) >= 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    wal = out / "journal.sqlite-wal"
    assert wal.exists() and wal.stat().st_size > 0
    if fault == "deleted":  # the log and its index gone
        wal.unlink()
        (out / "journal.sqlite-shm").unlink(missing_ok=True)
    else:  # the log cut in half, its index left as the killed writer left it
        blob = wal.read_bytes()
        wal.write_bytes(blob[: len(blob) // 2])
    assert journal_belongs_to(path, scan)
    check_output(out, "resume", scan=scan)  # a resume: no "journal of another scan"
    with FrameJournal(path, readonly=True) as j:
        j.check()
        n = len(j)
        assert 200 <= n <= 230 and {r.frame_id for r in j.iter_records()} >= {f"s_1_.nx#{i}" for i in range(200)}
    with FrameJournal(path) as j:  # the restarted writer goes on in it
        j.record_many([FrameRecord("s_1_.nx#999", RECEIVED, 0.0123, 0, 1.0)])
        assert len(j) == n + 1 and j.integrity_check() == "ok"


# ------------------------------------------------------------------------------------------- damage
def _damaged(out: Path, how: str) -> Path:
    path = out / "journal.sqlite"
    if how == "garbage":
        path.write_bytes(os.urandom(3) + b"not a database" * 700)
    else:  # a real journal whose main file was cut in half (a failed copy)
        with FrameJournal(path, synchronous="NORMAL") as j:
            j.record_many([FrameRecord(f"s_1_.nx#{i}", RECEIVED, 0.0123, 0, float(i)) for i in range(3000)])
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    return path


@pytest.mark.parametrize("how", ["garbage", "cut"])
def test_a_damaged_journal_is_named_as_damaged_not_as_another_scans(tmp_path, how):
    scan, out = tmp_path / "scan", tmp_path / "out"
    scan.mkdir()
    out.mkdir()
    (scan / "s_1_.nx").write_bytes(b"")
    path = _damaged(out, how)
    with pytest.raises(JournalDamaged), FrameJournal(path, readonly=True) as j:
        j.check()
    for call in (lambda: journal_belongs_to(path, scan), lambda: check_output(out, "resume", scan=scan)):
        with pytest.raises(InputError) as err:
            call()
        text = str(err.value)
        assert str(path) in text and "damaged or unreadable" in text and "another scan" not in text
        assert "frame account" in text and "processed again" in text  # what is lost
        assert "journal.sqlite.damaged" in text and "--overwrite" in text  # what to do
    (out / "work").mkdir()  # an unfinished final pass of `process` with that journal
    (out / "work" / "spec.json").write_text("{}")
    with pytest.raises(InputError, match="damaged or unreadable"):
        check_output(out, "final", scan=scan)
    check_output(out, "resume", overwrite=True, scan=scan)  # --overwrite replaces it
    assert not path.exists()


def test_a_main_file_without_tables_is_an_empty_journal_of_this_scan(tmp_path):
    scan, out = tmp_path / "scan", tmp_path / "out"
    scan.mkdir()
    out.mkdir()
    (out / "journal.sqlite").touch()  # a writer killed before its first checkpoint, its log lost
    assert journal_belongs_to(out / "journal.sqlite", scan)
    check_output(out, "resume", scan=scan)


# ------------------------------------------------------------------------------- distance, file opens
@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SIM)
    return folder


def _distance_keys(folder: Path) -> set[float]:
    from xnh_stream.chain.scan import ScanIndex

    return {d.key for d in ScanIndex.read(folder).distances}


def test_the_final_pass_books_every_frame_with_its_distance(scan_folder, tmp_path):
    from xnh_stream.chain.batch import process_scan
    from xnh_stream.config import ProcessConfig

    process_scan(scan_folder, tmp_path / "out", ProcessConfig.from_mapping({"alignment.angles": 8}))
    with FrameJournal(tmp_path / "out" / "journal.sqlite", readonly=True) as j:
        records = list(j.iter_records())
    assert records and all(r.distance is not None for r in records if not r.frame_id.endswith("#file"))
    assert {r.distance for r in records} == _distance_keys(scan_folder)
    assert {r.distance for r in records if r.image_key == 0} == _distance_keys(scan_folder)


class CountingFile(h5py.File):
    """h5py.File that counts its opens per file name."""

    opens: ClassVar[Counter] = Counter()

    def __init__(self, name, *args, **kwargs):
        if isinstance(name, (str, os.PathLike)):
            CountingFile.opens[Path(name).name] += 1
        super().__init__(name, *args, **kwargs)


def test_a_stream_books_distances_checkpoints_and_a_restart_opens_each_file_once(ray_local, scan_folder, tmp_path,
                                                                                   monkeypatch):
    """A watched scan streamed to the end, then the stream restarted on the same OUT (every distance fully
    journalled): the journal's main file held frames while the stream ran, every frame has its distance,
    and the restart (its watcher, the frames it reads again: darks, flats, returns, drift views; the scan
    index of the final pass) opens each distance file at most once."""
    from actors.stream import StreamDriver, StreamOptions, WatcherSource
    from xnh_stream.chain.scan import ScanIndex
    from xnh_stream.config import ProcessConfig
    from xnh_stream.ingest.watch import VIEWS, FolderWatcher

    _, rec = read_truth(scan_folder)
    config = ProcessConfig.from_mapping({"sample.delta_beta": rec["delta_beta"], "fbp.cor": rec["cor_px"]})
    out = tmp_path / "out"
    in_main: list[int] = []

    def watch(on_progress=None):
        with FolderWatcher(scan_folder, poll_interval_s=0.05, use_inotify=False, settle_s=0.2) as watcher:
            return StreamDriver(WatcherSource(watcher, n_distances=4, quiet_s=1.0), scan_folder, out, config,
                                StreamOptions(n_workers=1, n_shards=1, poll_interval_s=0.05, final_pass=False,
                                              live_slices=False), on_progress=on_progress).run()

    def look(_progress) -> None:
        if (out / "journal.sqlite").exists():
            try:
                in_main.append(frames_in_main_file_alone(out / "journal.sqlite", tmp_path / "copies"))
            except (ValueError, sqlite3.DatabaseError):  # copied while a checkpoint wrote into it: the next one
                pass

    first = watch(on_progress=look)
    n = first.counts["received"]
    assert n > 100 and first.counts["pending"] == 0
    assert max(in_main) > 0, "the main file held no frame while the stream ran (never checkpointed)"
    with FrameJournal(out / "journal.sqlite", readonly=True) as j:
        records = list(j.iter_records())
    assert all(r.distance is not None for r in records)
    assert {r.distance for r in records} == _distance_keys(scan_folder)

    VIEWS.clear()  # a restart is a new process: nothing inspected yet
    CountingFile.opens.clear()
    monkeypatch.setattr(h5py, "File", CountingFile)
    again = watch()
    ScanIndex.read(scan_folder)  # what the final pass starts with
    monkeypatch.undo()
    assert again.counts == first.counts
    frame_files = {p.name for p in scan_folder.glob("*.nx")}
    assert len(frame_files) == 4
    opens = {name: CountingFile.opens[name] for name in frame_files}
    print(f"\nrestart: h5py opens per distance file {opens}")
    assert all(v <= 1 for v in opens.values()), opens
