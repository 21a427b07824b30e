"""The final pass takes the live stream's flat-fielded frames instead of reading their files again
(xnh_stream/chain/frames.py), only where they are what it would compute: the same frame, darks and flats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xnh_stream.chain.calibration import Calibration, FlatState
from xnh_stream.chain.final import FinalChain, calibrate_task
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.physics.flatfield import DEAD_PIXEL_VALUE, flat_field, reflat
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan
from xnh_stream.state.store import DistanceStore

SHAPE = (12, 20)


def _beam(rng: np.random.Generator, level: float) -> np.ndarray:
    return (level * (1 + 0.2 * rng.random(SHAPE))).astype(np.float32)


def test_a_frame_flat_fielded_before_the_last_flats_is_flat_fielded_again_as_with_them():
    """Flats at both ends: while the scan runs only the first series is known. A frame the stream
    flat-fielded with it, carried to the final flat, equals the raw frame flat-fielded with the final flat
    to float32 rounding; the stream's stamp is the final calibration's for the first series alone."""
    rng = np.random.default_rng(0)
    dark = (5 + rng.random(SHAPE)).astype(np.float32)
    start, end = _beam(rng, 1000), _beam(rng, 700)
    live, final = Calibration(SHAPE), Calibration(SHAPE)
    for cal in (live, final):
        cal.add_dark(dark)
        cal.add_flat(start, 0.0)
    final.add_flat(end, 100.0)
    raw = dark + 0.6 * start * (0.3 + rng.random(SHAPE)).astype(np.float32)
    stored = live.correct(raw, 40.0)
    want = final.correct(raw, 40.0)
    assert np.abs(stored - want).max() > 0.05  # the two flats differ: storing it as it was would be wrong

    states = final.states(40.0)
    assert states[0] == FlatState(0, 1, pytest.approx(0.4)) and states[1:] == [FlatState(0, 0, 0.0),
                                                                                  FlatState(1, 1, 0.0)]
    stamp = live.stamp("scan.nx#7", 40.0)
    assert [stamp == final.stamp("scan.nx#7", 40.0, s) for s in states] == [False, True, False]
    assert stamp != final.stamp("scan.nx#8", 40.0, states[1])  # another frame at that angle
    again = final.reflat(stored, 40.0, states[1])
    np.testing.assert_allclose(again, want, rtol=1e-6, atol=0)
    # a frame corrected once every flat was there is stored as the final pass computes it: its own stamp
    assert final.stamp("scan.nx#7", 40.0) == final.stamp("scan.nx#7", 40.0, states[0])


def test_other_darks_change_the_stamp():
    rng = np.random.default_rng(1)
    flat = _beam(rng, 1000)
    a, b = Calibration(SHAPE), Calibration(SHAPE)
    a.add_dark(np.full(SHAPE, 5, np.float32))
    b.add_dark(np.full(SHAPE, 6, np.float32))
    for cal in (a, b):
        cal.add_flat(flat, 0.0)
    assert a.stamp("f#1", 3.0) != b.stamp("f#1", 3.0)
    assert a.stamp("f#1", 3.0) == a.compact().stamp("f#1", 3.0)  # what a task gets is the same calibration


def test_a_pixel_dead_under_the_streams_flat_is_not_invented():
    dark = np.zeros((2, 2), np.float32)
    used = np.array([[100, 0], [100, 100]], np.float32)  # pixel (0, 1) dead when the stream corrected
    raw = np.array([[50, 7], [30, 20]], np.float32)
    stored = flat_field(raw, dark, used)
    assert stored[0, 1] == DEAD_PIXEL_VALUE
    assert reflat(stored, dark, used, np.array([[80, 90], [100, 120]], np.float32)) is None
    both_dead = np.array([[80, 0], [100, 120]], np.float32)
    np.testing.assert_allclose(reflat(stored, dark, used, both_dead), flat_field(raw, dark, both_dead), rtol=1e-6)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, ProcessConfig]:
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SimulationConfig(nx=48, ny=16, n_angles=20, seed=7, oversample=1))
    _, record = read_truth(folder)
    return folder, ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"]})


def _store_as_the_stream(folder: Path, path: Path, wrong_id_at: float | None = None) -> int:
    """Every projection flat-fielded with all the flats (as the stream stores a frame that came after them)
    and stamped; with ``wrong_id_at`` the reference distance's frame at that angle carries another frame's id."""
    index = ScanIndex.read(folder)
    store = DistanceStore(path, index.frame_shape)
    n = 0
    for k, d in enumerate(index.distances):
        cal, _ = calibrate_task(d, 0)
        for rec in d.projections:
            fid = rec.frame_id + "x" if (k == index.geometry.reference and rec.rotation_angle_deg == wrong_id_at) \
                else rec.frame_id
            store.put(d.key, rec.rotation_angle_deg, cal.correct(rec.read(), rec.sequence),
                      stamp=cal.stamp(fid, rec.sequence))
            n += 1
    return n


def test_the_final_pass_takes_the_stored_frames_and_computes_the_same_volume(scan, tmp_path, caplog):
    """From the store where it holds the right frames, bit for bit the volume read from the files; a frame
    stamped as another frame, and one whose chunk is damaged, are read from their files."""
    folder, cfg = scan
    plain = FinalChain(ScanIndex.read(folder), None, cfg).run()
    assert plain.report.frames.from_stream == 0
    n = _store_as_the_stream(folder, tmp_path / "store", wrong_id_at=18.0)
    # a damaged chunk: the reference distance's frame of the second slot
    index = ScanIndex.read(folder)
    ref = index.distances[index.geometry.reference]
    chunks = sorted((tmp_path / "store" / f"distance_{round(ref.key * 1e7)}" / "frames").rglob("c/1/*/*"))
    assert chunks
    chunks[0].write_bytes(b"not a blosc chunk")
    with caplog.at_level("WARNING", logger="xnh_stream.chain.frames"):
        reused = FinalChain(ScanIndex.read(folder), None, cfg, stream_store=tmp_path / "store").run()
    assert reused.report.frames.from_stream == n - 1  # all but the frame stamped as another
    assert "the stream's flat-fielded frame is unreadable" in caplog.text and ref.projections[1].frame_id in caplog.text
    np.testing.assert_array_equal(reused.volume, plain.volume)
    assert reused.report.cor.px == plain.report.cor.px
    assert reused.report.phase["delta_beta"] == plain.report.phase["delta_beta"]


def test_no_store_or_another_layout_reads_every_frame(scan, tmp_path):
    folder, cfg = scan
    assert FinalChain(ScanIndex.read(folder), None, cfg, stream_store=tmp_path / "none").run() \
        .report.frames.from_stream == 0
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": '
                                               '{"xnh_distance_store": {"version": 1}}}')
    assert FinalChain(ScanIndex.read(folder), None, cfg, stream_store=tmp_path / "old").run() \
        .report.frames.from_stream == 0


def test_a_stream_told_not_to_reuse_its_frames_reads_every_file(scan, tmp_path):
    """``stream.reuse_frames: false``: the streamed scan's final pass reads every file, and its volume is
    ``process``'s bit for bit (with reuse: tests/test_live_driver.py, within float32 roundings)."""
    from xnh_stream.live.driver import LiveDriver, StreamOptions

    from .test_stream import ListSource

    folder, cfg = scan
    config = ProcessConfig.from_mapping({**cfg.to_dict(), "stream": {**cfg.to_dict()["stream"],
                                                                      "reuse_frames": False}})
    result = LiveDriver(ListSource(folder), folder, tmp_path / "out", config,
                        StreamOptions(n_workers=1, n_shards=1, poll_interval_s=0.0)).run()
    assert (tmp_path / "out" / "store").is_dir()  # the frames were there to take
    assert result.final.report.frames.from_stream == 0
    np.testing.assert_array_equal(result.final.volume, FinalChain(ScanIndex.read(folder), None, cfg).run().volume)
