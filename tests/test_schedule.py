"""Which phase work goes first in the live stream (xnh_stream.live.schedule.LiveQueue), and the driver using it:
finals before previews, a preview skipped when its angle's final is queued or when it is late, nothing lost."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.chain.assembler import AngleWork
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, RETURN
from xnh_stream.live.driver import LiveDriver, StreamOptions
from xnh_stream.live.schedule import LiveQueue
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan

from .test_stream import ListSource

SIM = SimulationConfig(nx=64, ny=16, n_angles=24, seed=4, oversample=1)


def work(kind: str, index: int) -> AngleWork:
    return AngleWork(kind, index, 7.5 * index, None, {}, [f"{kind}{index}"])


def popped(q: LiveQueue, now: float) -> list[tuple[str, int]]:
    out = []
    while (item := q.pop(now)) is not None:
        out.append((item.work.kind, item.work.index))
    return out


def test_finals_go_first_oldest_first_then_the_newest_previews():
    q = LiveQueue(preview_deadline_s=0)
    for i, (kind, index) in enumerate([("preview", 0), ("preview", 1), ("final", 5), ("preview", 2), ("final", 6)]):
        q.push(work(kind, index), None, float(i))
    assert len(q) == 5
    assert q.behind_s(10.0) == pytest.approx(8.0)  # the oldest final waited since t = 2
    assert popped(q, 10.0) == [("final", 5), ("final", 6), ("preview", 2), ("preview", 1), ("preview", 0)]
    assert len(q) == 0 and q.behind_s(10.0) == 0.0
    assert q.skipped == {"superseded": 0, "late": 0}  # deadline 0: never skipped for its age


def test_a_preview_is_skipped_when_its_final_is_queued_or_it_is_late():
    q = LiveQueue(preview_deadline_s=2.0)
    q.push(work("preview", 0), None, 0.0)  # its final comes: moot
    q.push(work("preview", 1), None, 0.0)  # waits 3 s: late
    q.push(work("preview", 2), None, 2.5)  # waits 0.5 s: sent
    q.push(work("final", 0), None, 2.6)
    assert popped(q, 3.0) == [("final", 0), ("preview", 2)]
    assert q.skipped == {"superseded": 1, "late": 1}
    assert q.skipped_angles == {0, 1}  # their finals replace no preview


def test_a_replay_is_never_skipped_and_gives_the_angle_its_preview_back():
    q = LiveQueue(preview_deadline_s=1.0)
    q.push(work("preview", 3), None, 0.0)
    q.push(work("final", 3), None, 0.0)
    assert popped(q, 5.0) == [("final", 3)] and q.skipped_angles == {3}
    q.push(work("preview", 3), ["rebuilt shard"], 0.0, replay=True)  # a rebuilt worker gets every angle again
    item = q.pop(5.0)
    assert (item.work.kind, item.work.index, item.targets, item.replay) == ("preview", 3, ["rebuilt shard"], True)
    assert q.skipped_angles == set()  # a worker has this preview: a later final must carry it
    q.restart()
    assert len(q) == 0
    with pytest.raises(ValueError, match="preview_deadline_s"):
        LiveQueue(-1.0)


class Interleaved(ListSource):
    """The scan's frames as an interleaved acquisition would write them: darks and flats, then each angle at
    every distance in turn, then the return projections, all in one poll."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, per_poll=10_000)
        recs = self.records
        calib = [r for r in recs if r.image_key in (DARK, FLAT)]
        returns = [r for r in recs if r.image_key == PROJECTION and r.image_key_control == RETURN]
        proj = [r for r in recs if r.image_key == PROJECTION and r.image_key_control != RETURN]
        proj.sort(key=lambda r: (r.rotation_angle_deg, r.geometry.z1_m))
        self.records = calib + proj + returns


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    folder = tmp_path_factory.mktemp("interleaved")
    simulate_scan(folder, SIM)
    _, record = read_truth(folder)
    return folder, {"sample.delta_beta": record["delta_beta"], "fbp.cor": (SIM.nx - 1) / 2}


def run(source, folder: Path, out: Path, settings: dict[str, float], max_in_flight: int = 2):
    booked: list[tuple[str, int]] = []
    progress: list = []
    result = LiveDriver(source, folder, out, ProcessConfig.from_mapping(settings),
                        StreamOptions(n_workers=2, n_shards=2, max_in_flight=max_in_flight, poll_interval_s=0.0,
                                      final_pass=False),
                        on_result=lambda w: booked.append((w.kind, w.index)), on_progress=progress.append).run()
    return result, booked, progress


def test_the_driver_sends_finals_first_and_skips_moot_previews_losing_nothing(scan, tmp_path, monkeypatch):
    """An interleaved acquisition lands an angle's four distances together: its preview would be replaced at
    once. The driver's queue sends each final as soon as a slot frees, skips the moot previews (counted, in the
    progress and the result), and the live volume and slices at the end are those of the same frames with no
    queue (a slot for every work item: every preview computed): the skipped work was never needed. The live
    alignment models are held at zero in both runs: they depend on how many frames had arrived when a final was
    sent, which the queue changes on purpose (3 % of the volume's peak on this small scan)."""
    from xnh_stream.chain.assembler import ScanAssembler

    monkeypatch.setattr(ScanAssembler, "shift_models", lambda self: [None] * len(self.distance_keys))
    folder, settings = scan
    result, booked, progress = run(Interleaved(folder), folder, tmp_path / "interleaved", settings)
    skipped = result.previews_skipped
    assert skipped["superseded"] > 0 and skipped["late"] == 0
    assert progress[-1].previews_skipped == skipped and progress[-1].queues["phase_waiting"] == 0
    finals = [i for k, i in booked if k == "final"]
    assert sorted(finals) == list(range(SIM.n_angles))  # every angle's final, once
    previews = {i for k, i in booked if k == "preview"}
    assert len(previews) + skipped["superseded"] == SIM.n_angles
    for i in previews:  # a preview never lands after its angle's final
        assert booked.index(("preview", i)) < booked.index(("final", i))
    c = result.counts  # nothing received is lost: every frame processed or quarantined
    assert c["pending"] == 0 and c["processed"] + c["quarantined"] == c["received"]
    assert "phase_waiting" in {k for p in progress for k in p.latency_s}
    assert "landing_to_slices" in {k for p in progress for k in p.latency_s}

    unqueued, booked_all, _ = run(Interleaved(folder), folder, tmp_path / "unqueued", settings, max_in_flight=10_000)
    assert unqueued.previews_skipped == {"superseded": 0, "late": 0}
    assert sum(k == "preview" for k, _ in booked_all) == SIM.n_angles
    a, b = result.live_volume, unqueued.live_volume
    np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max(), rtol=0)  # measured 1.4e-6: float32 sums
    for name, cut in unqueued.slices.items():
        np.testing.assert_allclose(result.slices[name], cut, atol=1e-5 * np.abs(cut).max(), rtol=0)


def test_a_final_that_waited_too_long_goes_coarse_and_a_replay_never_does():
    q = LiveQueue(preview_deadline_s=0, coarse_after_s=1.0)
    q.push(work("final", 0), None, 0.0)
    q.push(work("final", 1), None, 0.5)
    q.push(work("final", 2), None, 0.0, replay=True)
    got = [(it.work.index, it.coarse) for it in (q.pop(1.2), q.pop(1.2), q.pop(1.2))]
    assert got == [(0, True), (1, False), (2, False)] and q.coarse_finals == 1
    never = LiveQueue(preview_deadline_s=0, coarse_after_s=0)
    never.push(work("final", 0), None, 0.0)
    assert not never.pop(1e6).coarse


def test_coarse_final_work_is_the_full_resolution_projection_blurred(scan):
    """A coarse final (frames binned twice, CTF on the binned pixel, brought back to the frames' grid) is the
    full-resolution projection at the same scale, blurred: binned 4x (as the live volume of a real-size scan
    takes it) the two agree to a few percent of the projection's range."""
    from xnh_stream.chain.assembler import ScanAssembler
    from xnh_stream.live.workers import COARSE_BINNING, PhaseWorker
    from xnh_stream.physics.xp import bin_2d
    from xnh_stream.state.store import DistanceStore

    folder, settings = scan
    config = ProcessConfig.from_mapping(settings)
    src = Interleaved(folder)
    shape = src.records[0].frame_shape
    store = DistanceStore(Path(folder).parent / "coarse_store", shape)
    a = ScanAssembler(4, shape, store, delta_beta_align=config.alignment.delta_beta)
    finals = []
    for rec in src.records:
        finals += [w for w in a.add(rec, rec.read()) if w.kind == "final"]
    w = PhaseWorker(shape, settings["sample.delta_beta"], config, binning=1)
    w.prepare(a.geometry)
    final = finals[len(finals) // 3].load(a.store)
    full = w.project(final, [None] * 4).full
    coarse = w.project(dataclasses.replace(final, coarse=COARSE_BINNING), [None] * 4).full
    assert coarse.shape == full.shape == shape
    span = np.ptp(full)
    f4, c4 = bin_2d(full, 4), bin_2d(coarse, 4)
    print(f"\ncoarse vs full: r {np.corrcoef(full.ravel(), coarse.ravel())[0, 1]:.5f}, max |diff| {np.abs(full - coarse).max() / span:.3f} of the range; binned 4x: max |diff| "
          f"{np.abs(f4 - c4).max() / span:.3f} of the range, means {full.mean():.4g} / {coarse.mean():.4g}")
    assert np.corrcoef(full.ravel(), coarse.ravel())[0, 1] > 0.95
    assert np.abs(full - coarse).max() > 0.02 * span  # it is coarse: blurred
    assert np.abs(f4 - c4)[1:-1, 1:-1].max() < 0.1 * span
    assert coarse.mean() == pytest.approx(full.mean(), rel=0.05)


def test_the_driver_coarsens_late_finals_only_where_the_live_volume_is_binned(scan, tmp_path):
    """Every final waits a little in this process; with ``stream.coarse_after_s`` tiny each goes coarse, and is
    counted, where the live volume is binned 2x; there the live volume stays the full-resolution one to a few
    percent of its range. With the live volume at full resolution nothing is coarsened."""
    folder, settings = scan
    late = {**settings, "stream.coarse_after_s": 1e-9}
    binned = {"stream.live_binning": 2}
    coarse, _, progress = run(ListSource(folder), folder, tmp_path / "c", {**late, **binned})
    full, _, _ = run(ListSource(folder), folder, tmp_path / "f", {**settings, **binned, "stream.coarse_after_s": 0})
    unbinned, _, _ = run(ListSource(folder), folder, tmp_path / "u", late)
    assert coarse.finals_coarse == SIM.n_angles and progress[-1].finals_coarse == SIM.n_angles
    assert full.finals_coarse == 0 and unbinned.finals_coarse == 0
    a, b = coarse.live_volume, full.live_volume
    err = np.abs(a - b).max() / np.ptp(b)
    print(f"\nlive volume binned 2x, coarse finals vs full resolution: max |diff| {err:.3f} of the range")
    assert 0 < err < 0.1
