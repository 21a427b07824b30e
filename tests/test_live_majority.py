"""The live stream trusts the distances by the batch side's majority rule, whichever distance arrives first.

A distance whose frame shape or energy disagrees with the others' is set aside by ``process``
(:func:`~xnh_stream.chain.scan.trusted_distances`); the stream must give the same frame account (received,
processed, quarantined, with the same reasons), the same alert and the same volume, also when that odd
distance is the first one to arrive (the live side used to take the first frame's shape and energy as the
scan's and quarantine the three good distances against it) or the last one.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_input_faults import SIM, name, rewrite_data, scan_copy, seen_first, set_field
from tests.test_stream import assert_final_is_process, stream
from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.report import Completion
from xnh_stream.config import ProcessConfig
from xnh_stream.ingest.watch import FolderWatcher
from xnh_stream.simulate.scan import simulate_scan
from xnh_stream.state.journal import FrameJournal

CONFIG = {"alignment.angles": 6, "fbp.cor": (SIM.nx - 1) / 2}  # a given axis: no live axis search (time)
ENERGY = "entry0000/instrument/beam/incident_energy"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    simulate_scan(folder, SIM)
    (folder / "truth.h5").unlink()
    return folder


class FolderSource:
    """A finished scan folder as the live watcher hands it out (``FolderWatcher`` with the ``watch`` command's
    settings, files in the order they were written), released a few frames at a time; complete once all
    are out. Files the watcher set aside are passed on as the stream's source passes them."""

    def __init__(self, folder, per_poll: int = 12):
        with FolderWatcher(folder, use_inotify=False, settle_s=0.0) as watcher:
            self.records = watcher.poll()
            self._quarantine = watcher.drain_quarantine()
        self.pos, self.per_poll = 0, per_poll

    def drain_quarantine(self):
        out, self._quarantine = self._quarantine, []
        return out

    def poll(self):
        batch = self.records[self.pos : self.pos + self.per_poll]
        self.pos += len(batch)
        return batch

    def completion(self):
        return Completion("every frame of the folder delivered") if self.pos >= len(self.records) else None


def odd_shape(folder, k: int) -> None:
    rewrite_data(folder / name(k), lambda d: d[:, :, 4:44])


def odd_energy(folder, k: int) -> None:
    set_field(folder / name(k), ENERGY, lambda e: 20.0)


CASES = {
    # the odd distance, its fault, whether its file is written first (else last), distances of the scan
    "odd shape first": (1, odd_shape, True, (1, 2, 3, 4)),
    "odd shape last": (4, odd_shape, False, (1, 2, 3, 4)),
    "odd energy first": (1, odd_energy, True, (1, 2, 3, 4)),
    # three of the four distances arrive: the vote is decided when the scan completes, on those three
    "odd shape first of three": (1, odd_shape, True, (1, 2, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_stream_sets_aside_the_odd_distance_as_process_does(ray_local, good, tmp_path, case):
    """The journal, the stream's report and process's report give the same account (received, processed,
    quarantined, with the same reasons), the same alert and the same volume; the live volume is made of the
    agreeing distances' frames."""
    k, fault, first, present = CASES[case]
    folder = scan_copy(good, tmp_path / "scan")
    for gone in {1, 2, 3, 4} - set(present):
        (folder / name(gone)).unlink()
    fault(folder, k)
    if first:
        seen_first(folder / name(k))
    config = ProcessConfig.from_mapping(CONFIG)
    source = FolderSource(folder)
    arrives = [r.distance_name for r in source.records]
    assert arrives[0 if first else -1] == f"{SIM.name}_{k}_"
    out = tmp_path / "out"
    result = stream(source, folder, out, config, poll_interval_s=0.0, live_slices=False)
    batch = process_scan(folder, tmp_path / "batch", config)
    want = batch.report.frames
    assert want.quarantined == len([r for r in source.records if r.distance_name == f"{SIM.name}_{k}_"])

    # the same account: the journal's, the stream's report and process's report
    with FrameJournal(out / "journal.sqlite", readonly=True) as j:
        c = j.counts()
        summary = j.summary()
    assert (c["received"], c["processed"], c["quarantined"], c["pending"]) == (
        want.received, want.processed, want.quarantined, 0)
    got = result.final.report.frames
    assert (got.received, got.processed, got.quarantined) == (want.received, want.processed, want.quarantined)
    # the same reasons, naming the odd distance's files and what differs
    reasons = sorted((q["file"], q["index"], q["reason"]) for q in summary["quarantine"])
    assert reasons == sorted((q.file, q.index, q.reason) for q in want.quarantine)
    assert all(f == name(k) and r.startswith("distance left out: ") for f, _, r in reasons)
    words = "frame shape (16, 40)" if fault is odd_shape else "energy 20 keV"
    assert all(words in r for _, _, r in reasons)
    # the same alert, in the report and (live) in the journal
    alerts = [a for a in result.final.report.alerts if a["name"] == "DistanceFileRejected"]
    assert alerts == [a for a in batch.report.alerts if a["name"] == "DistanceFileRejected"]
    assert len(alerts) == 1 and alerts[0]["severity"] == "critical"
    assert f"{SIM.name}_{k}_" in alerts[0]["message"]
    live = [e["payload"] for e in result.events if e["event"] == "alert"
            and e["payload"]["name"] == "DistanceFileRejected"]
    assert live == alerts
    # the same volume, from the agreeing distances; the live one from their frames too
    assert [d["name"] for d in result.final.report.geometry["distances"]] == [
        f"{SIM.name}_{n}_" for n in present if n != k]
    assert_final_is_process(result.final.volume, batch.volume)
    assert result.live_volume.shape == (SIM.ny, SIM.nx, SIM.nx)


def test_the_vote_follows_the_majority_and_decides_once_every_distance_arrived(good, tmp_path):
    """Distance 1 (first) has narrower frames: trusted alone, then tied with distance 2, outvoted by 2 and 3;
    set aside, with the final pass's reason, only once the fourth distance arrived (or the scan completed)."""
    from xnh_stream.chain.scan import DistanceVote, ScanIndex

    folder = scan_copy(good, tmp_path / "scan")
    odd_shape(folder, 1)
    seen_first(folder / name(1))
    records = FolderSource(folder).records
    keys = list(dict.fromkeys(r.distance_key for r in records))
    vote = DistanceVote(folder, 4)
    trusted, verdicts = [], []
    for rec in records:
        if vote.add(rec):
            trusted.append(vote.trusted_now())
            verdicts.append(vote.verdict())
    assert trusted == [{keys[0]}, None, {keys[1], keys[2]}, {keys[1], keys[2], keys[3]}]
    assert verdicts[:3] == [None, None, None]
    (rejected,) = ScanIndex.read(folder).rejected
    assert verdicts[3] == {keys[0]: rejected.reason}
    odd = [r.frame_id for r in records if r.distance_key == keys[0]]
    assert [r.frame_id for r in vote.arrived(keys[0])] == odd

    three = DistanceVote(folder, 4)
    for rec in records:
        if rec.distance_key != keys[3]:
            three.add(rec)
    assert three.verdict() is None
    assert set(three.verdict(complete=True)) == {keys[0]}
