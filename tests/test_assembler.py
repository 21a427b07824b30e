"""The stream assembler: every angle previewed, finalised exactly once, in any arrival order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xnh_stream.chain.accumulate import ProgressiveVolume
from xnh_stream.chain.assembler import ScanAssembler
from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.chain.steps import AngleProcessor
from xnh_stream.config import ProcessConfig
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan
from xnh_stream.state.store import DistanceStore


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SimulationConfig(nx=64, ny=24, n_angles=40, seed=2, oversample=1))
    index = ScanIndex.read(folder)
    frames = [(r, r.read()) for d in index.distances for r in sorted(d.frames, key=lambda r: r.sequence)]
    return folder, index, frames


def assembler(index, tmp_path, name="store"):
    return ScanAssembler(4, index.frame_shape, DistanceStore(tmp_path / name, index.frame_shape))


def run(a, frames):
    works = []
    for rec, f in frames:
        works += a.add(rec, f)
    return works


def test_sequential_acquisition(scan, tmp_path):
    folder, index, frames = scan
    a = assembler(index, tmp_path)
    works = run(a, frames)
    n = len(index.distances[0].projections)
    finals = [w for w in works if w.kind == "final"]
    previews = [w for w in works if w.kind == "preview"]
    assert sorted(w.index for w in previews) == list(range(n))  # one preview per angle
    assert all(w.preview_distance == 0 for w in finals)  # distance 1 came first
    assert all(len(set(w.frame_ids)) == 4 for w in finals)
    assert sorted(w.index for w in finals) == list(range(n))
    assert all(len(w.load(a.store).frames) == 4 for w in finals)  # no pixels until loaded
    assert a.quarantined == [] and a.state()["angles_final"] == n
    # distance 2..4 were registered progressively against the reference
    assert all(m is not None for m in a.shift_models()[1:])
    # the frames waiting on disk are the flat-fielded ones
    rec, raw = next((r, f) for r, f in frames if r.image_key == 0 and r.image_key_control == 0)
    stored = a.store.get(rec.distance_key, rec.rotation_angle_deg)
    assert np.isfinite(stored).all() and 0.2 < float(np.median(stored)) < 2.0 < float(np.median(raw))


def test_a_restart_takes_projections_back_from_the_store(scan, tmp_path):
    """A second assembler on the same store, given the projections without pixels, makes the same work."""
    folder, index, frames = scan
    first = run(assembler(index, tmp_path), frames)
    again = ScanAssembler(4, index.frame_shape, DistanceStore(tmp_path / "store"))
    works = run(again, [(r, None if again.can_restore(r) else f) for r, f in frames])
    assert [(w.kind, w.index) for w in works] == [(w.kind, w.index) for w in first]
    w0 = next(w for w in works if w.kind == "final").load(again.store)
    w1 = next(w for w in first if w.kind == "final").load(again.store)
    for k in range(4):
        np.testing.assert_array_equal(w0.frames[k], w1.frames[k])


def test_distances_at_slightly_other_angles_pair_like_the_batch_chain(scan, tmp_path):
    """A distance whose angles are off by 0.3 of a step still pairs every angle (the batch chain's
    half-step rule), so every angle is finalised live."""
    folder, index, frames = scan
    step = 180.0 / len(index.distances[0].projections)
    z_last = max(rec.geometry.z1_m for rec, _ in frames)
    shifted = [(dataclasses.replace(rec, rotation_angle_deg=rec.rotation_angle_deg + 0.3 * step)
                if rec.geometry.z1_m == z_last and rec.image_key == 0 else rec, f) for rec, f in frames]
    a = assembler(index, tmp_path)
    works = run(a, shifted)
    n = len(index.distances[0].projections)
    assert sorted(w.index for w in works if w.kind == "final") == list(range(n))
    assert a.state()["angles_seen"] == n


def test_the_reference_distance_sets_the_angle_of_a_slot(scan, tmp_path):
    """Distance 4 arriving first at angles off by 0.3 step makes the slots; the reference moves them to its
    own angles, and the final of each slot is at the reference angle with its preview's angle kept."""
    folder, index, frames = scan
    step = 180.0 / len(index.distances[0].projections)
    z_last = max(rec.geometry.z1_m for rec, _ in frames)
    shifted = [(dataclasses.replace(rec, rotation_angle_deg=rec.rotation_angle_deg + 0.3 * step)
                if rec.geometry.z1_m == z_last and rec.image_key == 0 else rec, f) for rec, f in frames]
    last_first = sorted(shifted, key=lambda rf: -rf[0].geometry.z1_m)
    a = assembler(index, tmp_path)
    finals = [w for w in run(a, last_first) if w.kind == "final"]
    ref_angles = sorted(r.rotation_angle_deg for r in index.distances[0].projections)
    assert sorted(w.theta_deg for w in finals) == pytest.approx(ref_angles)
    assert all(abs(w.preview_theta_deg - w.theta_deg - 0.3 * step) < 1e-9 for w in finals)


def test_a_flat_series_arriving_twice_is_one_series(scan, tmp_path):
    """Flats replayed after other frames (a resumed stream) join their own series instead of making a
    second series at the same position (which the flat interpolation cannot take)."""
    folder, index, frames = scan
    flats = [(rec, f) for rec, f in frames[:40] if rec.image_key == 1]
    first_projection = next(j for j, (rec, _) in enumerate(frames) if rec.image_key == 0)
    replay = frames[: first_projection + 3] + flats + frames[first_projection + 3 :]
    a = assembler(index, tmp_path)
    works = run(a, replay)
    n = len(index.distances[0].projections)
    assert sorted(w.index for w in works if w.kind == "final") == list(range(n))


def test_interleaved_order_and_bad_frames(scan, tmp_path):
    folder, index, frames = scan
    # every distance's darks and flats first, then projections of all distances interleaved by angle
    calib = [fr for fr in frames if fr[0].image_key != 0]
    proj = sorted((fr for fr in frames if fr[0].image_key == 0),
                  key=lambda fr: (fr[0].rotation_angle_deg, fr[0].geometry.z1_m))
    victim = next(j for j, (r, _) in enumerate(proj) if r.image_key_control == 0 and r.rotation_angle_deg > 0
                  and r.geometry.z1_m == index.distances[1].geometry.z1_m)
    proj[victim] = (proj[victim][0], np.full_like(proj[victim][1], np.nan))
    a = assembler(index, tmp_path)
    works = run(a, calib + proj)
    finals = [w for w in works if w.kind == "final"]
    n = len(index.distances[0].projections)
    assert len(finals) == n - 1  # the angle that lost a frame waits (and is never final)
    assert len(a.quarantined) == 1 and "non-finite" in a.quarantined[0][1]


def test_stream_volume_matches_batch(scan, tmp_path):
    """Finals from the assembler, reconstructed progressively, match the batch chain on the same files."""
    folder, index, frames = scan
    truth, record = read_truth(folder)
    # the live path's single-material CTF on both sides (the batch chain's envelope pass is tested elsewhere)
    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"], "ctf.envelope": False})
    a = assembler(index, tmp_path)
    works = run(a, frames)
    geo = works[-1].geometry
    proc = AngleProcessor(geo, index.frame_shape, record["delta_beta"], config)
    proc.models = a.shift_models()
    vol = ProgressiveVolume(*index.frame_shape, cor=record["cor_px"])
    for w in works:
        if w.kind == "final":
            vol.add(w.index, np.deg2rad(w.theta_deg), proc.ctf(w.load(a.store).frames, w.theta_deg), final=True)
    batch = process_scan(folder, None, config).volume
    stream = np.asarray(vol.volume())
    r = np.corrcoef(stream.ravel(), batch.ravel())[0, 1]
    print(f"\nstream vs batch volume: r = {r:.4f}")
    # Live flat-fielding has only the flats taken before the projections (the batch interpolates to the
    # series taken after them), and the shift models grow as angles complete: close, not equal. The
    # exact final volume comes from the final pass at scan completion.
    assert r > 0.9


def test_a_final_takes_back_the_preview_kept_for_it(scan, tmp_path):
    """A preview kept under its key is what the final of its angle loads (so it is not recomputed); without it
    the final carries none (recomputed by the worker); dropping the kept previews deletes them."""
    folder, index, frames = scan
    a = assembler(index, tmp_path)
    works = run(a, frames)
    for w in works:
        if w.kind == "preview":
            a.previews_store.put(*w.preview_key(), np.full(index.frame_shape, w.index + 1, np.float32))
    finals = [w for w in works if w.kind == "final"]
    assert len(finals) == len(index.distances[0].projections)
    for w in finals:
        w.load(a.store, a.previews_store)
        assert w.preview is not None and np.all(w.preview == w.index + 1)  # its own angle's preview
        w.unload()
        assert w.preview is None and not w.frames
    path = a.previews_store.path
    a.drop_previews()
    assert not path.exists()
    assert finals[0].load(a.store, a.previews_store).preview is None


def test_a_projection_result_names_its_four_arrays():
    """The phase worker's hand-off: the binned pair for the live volume, the full-resolution pair for the
    slices; frozen, and without a preview for preview work."""
    from xnh_stream.chain.assembler import ProjectionResult

    rng = np.random.default_rng(0)
    proj, prev = rng.random((8, 12), dtype=np.float32), rng.random((8, 12), dtype=np.float32)
    r = ProjectionResult.of(proj, prev, 2)
    assert r.binned.shape == r.binned_previous.shape == (4, 6)
    np.testing.assert_allclose(r.binned[0, 0], proj[:2, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(r.binned_previous[1, 2], prev[2:4, 4:6].mean(), rtol=1e-6)
    assert r.full is proj and r.full_previous is prev
    preview = ProjectionResult.of(proj, None, 2)
    assert preview.binned_previous is None and preview.full_previous is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.full = prev  # type: ignore[misc]
