"""Frame journal: state machine, idempotence, kill -9 safety, exact resume set, throughput."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from xnh_stream.state.journal import (
    PROCESSED,
    QUARANTINED,
    RECEIVED,
    FrameJournal,
    FrameRecord,
    TransitionError,
    frame_id_of,
    split_frame_id,
)

# --------------------------------------------------------------------------------------------------
# A writer in a child process, killed with SIGKILL while it writes. Transaction b receives batch b,
# finishes batch b-1 (every 10th frame quarantined, every 5th+1 left pending for good, the rest
# processed) and re-receives frame 0 of batch 0 (one duplicate per transaction after the first).
BATCH = 250
CHILD = r"""
import sys
from xnh_stream.state.journal import FrameJournal, FrameRecord
B = int(sys.argv[3])
j = FrameJournal(sys.argv[1], synchronous=sys.argv[2])
b = 0
while True:
    recs = [FrameRecord(f"/scan/d{i % 4}.nx#{b * B + i}", "received", i % 4, 0, (b * B + i) * 0.01)
            for i in range(B)]
    if b:
        recs.append(FrameRecord(f"/scan/d0.nx#0"))
        for i in range(B):
            fid = f"/scan/d{i % 4}.nx#{(b - 1) * B + i}"
            if i % 10 == 0:
                recs.append(FrameRecord(fid, "quarantined", stage="flatfield", reason=f"bad {b - 1} {i}"))
            elif i % 5 != 1:
                recs.append(FrameRecord(fid, "processed", stage="fbp"))
    j.record_many(recs)
    print(b, flush=True)
    b += 1
"""


def expected_state(last: int) -> dict[str, tuple[str, str | None]]:
    """Frame id -> (state, reason) after transactions 0..last of the child."""
    out = {}
    for b in range(last + 1):
        for i in range(BATCH):
            fid = f"/scan/d{i % 4}.nx#{b * BATCH + i}"
            if b == last or i % 5 == 1:
                out[fid] = (RECEIVED, None)
            elif i % 10 == 0:
                out[fid] = (QUARANTINED, f"bad {b} {i}")
            else:
                out[fid] = (PROCESSED, None)
    return out


def run_and_kill(path, synchronous: str, min_batches: int, extra_s: float) -> int:
    """Start the child, SIGKILL it after ``min_batches`` commits plus ``extra_s``; last batch it reported."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), synchronous, str(BATCH)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(min_batches):
            line = proc.stdout.readline()
            assert line, f"child died early: {proc.stderr.read()}"
        time.sleep(extra_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return int(out.split()[-1]) if out.split() else min_batches - 1


@pytest.mark.parametrize("synchronous,extra_s", [("FULL", 0.13), ("NORMAL", 0.07)])
def test_kill9_mid_write_then_reopen_and_resume(tmp_path, synchronous, extra_s):
    path = tmp_path / "journal.sqlite"
    printed = run_and_kill(path, synchronous, min_batches=5, extra_s=extra_s)
    with FrameJournal(path) as j:
        assert j.integrity_check() == "ok"
        records = list(j.iter_records())
        # The last transaction may have committed after the child's last print, never more than that one.
        last = max(int(r.frame_id.rsplit("#", 1)[1]) for r in records) // BATCH
        assert last in (printed, printed + 1), (last, printed)
        exp = expected_state(last)
        # Every committed frame is there, nothing else, each in exactly its committed state: no partial
        # batch, no half-applied transition, no torn row.
        assert {r.frame_id: (r.state, r.reason) for r in records} == exp
        for r in records:
            assert r.distance in range(4) and r.image_key == 0 and r.angle_deg is not None
            assert r.received_at is not None and r.updated_at >= r.received_at
        c = j.counts()
        assert c["received"] == len(exp) == len(j.known_ids())
        assert c["received"] == c["processed"] + c["quarantined"] + c["pending"]
        assert c["duplicates"] == last  # one per transaction after the first: committed together
        # Resume: exactly the received-but-unfinished frames, in arrival order.
        pending = [r.frame_id for r in j.pending()]
        assert pending == [f for f, (s, _) in exp.items() if s == RECEIVED]
        j.mark_many(pending, PROCESSED, stage="resume")
        assert j.counts()["pending"] == 0 and j.counts()["processed"] == c["processed"] + len(pending)
    print(f"\nkill -9 ({synchronous}): {last + 1} transactions committed, last reported {printed}, "
          f"{c['received']} frames intact")


def test_transitions_are_validated_and_idempotent(tmp_path):
    j = FrameJournal(tmp_path / "j.sqlite")
    a, b = frame_id_of("scan/d1.nx", 3), frame_id_of("scan/d1.nx", 4)
    assert split_frame_id(a) == (os.path.abspath("scan/d1.nx"), 3)
    assert j.receive(a, distance=0, image_key=0, angle_deg=1.5) is True
    assert j.receive(a, distance=0, image_key=0, angle_deg=1.5) is False  # duplicate, counted
    j.mark(a, RECEIVED, stage="flatfield")  # in progress at a stage
    assert j.get(a).stage == "flatfield" and j.get(a).state == RECEIVED
    j.processed(a, stage="fbp")
    j.processed(a)  # idempotent
    assert j.receive(a) is False  # a processed frame arriving again is a duplicate, still processed
    assert j.get(a).state == PROCESSED and j.get(a).duplicates == 2 and j.get(a).stage == "fbp"
    with pytest.raises(TransitionError, match="processed -> received"):
        j.mark(a, RECEIVED)
    with pytest.raises(TransitionError, match="processed -> quarantined"):
        j.quarantine(a, "late")
    with pytest.raises(TransitionError, match="never received"):
        j.processed(b)
    j.receive(b, distance=1, image_key=0, angle_deg=2.0)
    j.quarantine(b, "NaN in frame", stage="ingest")
    j.quarantine(b, "another reason")  # idempotent: keeps the first reason
    assert j.get(b).reason == "NaN in frame"
    with pytest.raises(TransitionError, match="quarantined -> processed"):
        j.processed(b)
    with pytest.raises(ValueError, match="needs a reason"):
        j.mark(a, QUARANTINED)
    with pytest.raises(ValueError, match="state must be one of"):
        j.mark(a, "done")
    with pytest.raises(ValueError, match="image_key"):
        j.receive(frame_id_of("x", 1), image_key=7)
    with pytest.raises(ValueError, match="angle_deg must be finite"):
        j.receive(frame_id_of("x", 1), angle_deg=float("nan"))
    with pytest.raises(ValueError, match="non-negative int"):
        frame_id_of("x", -1)
    assert j.counts() == {"received": 2, "processed": 1, "quarantined": 1, "pending": 0, "duplicates": 2}
    s = j.summary()
    assert s["quarantine"] == [{"file": os.path.abspath("scan/d1.nx"), "index": 4, "reason": "NaN in frame",
                                "stage": "ingest"}]
    j.close()


def test_record_many_is_atomic_and_ordered(tmp_path):
    j = FrameJournal(tmp_path / "j.sqlite", synchronous="NORMAL")
    # Arrival and completion of the same frame in one batch, plus an in-batch duplicate.
    n = j.record_many([FrameRecord("f1", RECEIVED, 0, 0, 0.0), FrameRecord("f1", PROCESSED, stage="fbp"),
                       FrameRecord("f2", RECEIVED, 1, 0, 0.1), FrameRecord("f2"),
                       FrameRecord("f3", QUARANTINED, 2, 0, 0.2, reason="vanished")])
    assert n == 3
    assert j.get("f1").state == PROCESSED and j.get("f1").distance == 0 and j.get("f1").stage == "fbp"
    assert j.get("f2").duplicates == 1 and j.get("f3").reason == "vanished"
    before = j.counts()
    # A refused transition anywhere in a batch leaves the journal as it was.
    with pytest.raises(TransitionError):
        j.record_many([FrameRecord("f4", RECEIVED, 0, 0, 1.0), FrameRecord("f2", PROCESSED),
                       FrameRecord("f3", PROCESSED)])
    assert j.counts() == before and "f4" not in j and j.get("f2").state == RECEIVED
    with pytest.raises(TransitionError):
        j.mark_many(["f2", "nope"], PROCESSED)
    assert j.get("f2").state == RECEIVED
    with pytest.raises(ValueError, match="2 reasons for 1 frames"):
        j.mark_many(["f2"], QUARANTINED, reasons=["a", "b"])
    j.close()


def test_progress_per_distance_and_angle(tmp_path):
    j = FrameJournal(tmp_path / "j.sqlite", synchronous="NORMAL")
    recs = [FrameRecord(f"d{k}#{i}", RECEIVED, k, 0, float(i)) for k in range(4) for i in range(10)]
    recs += [FrameRecord(f"flat{k}", RECEIVED, k, 1) for k in range(4)]
    j.record_many(recs)
    j.mark_many([f"d{k}#{i}" for k in range(4) for i in range(k + 1)], PROCESSED)
    j.quarantine("d3#9", "saturated")
    p = j.progress()
    assert list(p) == [0, 1, 2, 3]
    for k in range(4):
        q = 1 if k == 3 else 0
        assert p[k] == {"received": 10, PROCESSED: k + 1, QUARANTINED: q, "pending": 10 - (k + 1) - q}
    assert j.progress(image_key=None)[2]["received"] == 11
    assert j.angles(2) == [0.0, 1.0, 2.0]
    assert j.angles(3, QUARANTINED) == [9.0]
    j.close()


def test_events_emit_once_and_poll(tmp_path):
    path = tmp_path / "j.sqlite"
    with FrameJournal(path) as j:
        a = j.emit("alert", {"name": "DoseHigh", "gray": 1.5e8})
        c = j.emit("scan_complete", {"frames": 40}, key="scan_complete")
    with FrameJournal(path) as j:  # after a restart the completion is not emitted twice
        assert j.emit("scan_complete", {"frames": 40}, key="scan_complete") == c
        d = j.emit("alert", {"name": "Warp"})
        ev = j.events()
        assert [e["id"] for e in ev] == [a, c, d]
        assert ev[0]["payload"] == {"name": "DoseHigh", "gray": 1.5e8}
        assert [e["id"] for e in j.events("alert")] == [a, d]
        assert [e["event"] for e in j.events(after_id=c)] == ["alert"]
        with pytest.raises(ValueError):
            j.emit("alert", {"x": float("nan")})  # not JSON
        with pytest.raises(ValueError, match="non-empty"):
            j.emit("")


def test_threads_share_one_journal_and_a_reader_process_sees_commits(tmp_path):
    path = tmp_path / "j.sqlite"
    j = FrameJournal(path, synchronous="NORMAL")

    def work(t: int) -> None:
        for b in range(20):
            ids = [f"t{t}#{b * 50 + i}" for i in range(50)]
            j.record_many([FrameRecord(f, RECEIVED, t, 0, 0.0) for f in ids] + [FrameRecord("shared")])
            j.mark_many(ids[::2], PROCESSED)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = j.counts()
    assert c["received"] == 4 * 1000 + 1 and c["processed"] == 4 * 500 and c["duplicates"] == 4 * 20 - 1
    # A second process reads the live journal (WAL) while the writer keeps it open.
    code = ("import sys; from xnh_stream.state.journal import FrameJournal as J; "
            "print(J(sys.argv[1], readonly=True).counts()['received'])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 4001
    r = FrameJournal(path, readonly=True)
    with pytest.raises(ValueError, match="readonly"):
        r.receive("x")
    r.close()
    j.close()
    with pytest.raises(ValueError, match="does not exist"):
        FrameJournal(tmp_path / "none.sqlite", readonly=True)
    (tmp_path / "empty.sqlite").touch()  # what a reader sees between the writer's connect and its schema
    with pytest.raises(ValueError, match="empty.sqlite has no schema yet"):
        FrameJournal(tmp_path / "empty.sqlite", readonly=True)


def test_throughput_100k_frames(tmp_path):
    j = FrameJournal(tmp_path / "j.sqlite")  # FULL: the default, durable setting
    n, batch = 100_000, 5_000
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        j.record_many([FrameRecord(f"/data/scan/d{i % 4}/chunk_{i // 400:05d}.h5#{(i // 4) % 100}", RECEIVED, i % 4, 0,
                                   i * 0.05) for i in range(s, s + batch)])
    t_recv = time.perf_counter() - t0
    ids = [r.frame_id for r in j.pending()]
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        j.mark_many(ids[s:s + batch], PROCESSED, stage="fbp")
    t_done = time.perf_counter() - t0
    t0 = time.perf_counter()
    dup = j.record_many([FrameRecord(f) for f in ids[:batch]])
    t_dup = time.perf_counter() - t0
    assert dup == 0 and j.counts() == {"received": n, "processed": n, "quarantined": 0, "pending": 0,
                                       "duplicates": batch}
    print(f"\njournal (WAL, synchronous=FULL, batches of {batch}): received {n / t_recv:,.0f} frames/s, "
          f"processed {n / t_done:,.0f} frames/s, duplicate arrivals {batch / t_dup:,.0f} frames/s; "
          f"{os.path.getsize(j.path) / n:.0f} B/frame")
    assert t_recv < 5.0 and t_done < 5.0
    j.close()
