"""The shipped affinity model on a held-out simulated volume (a seed never used in training), blockwise
against single-block segmentation, the Ray tasks, the commands, pixel classification and skeletons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from actors.cli import main
from xnh_stream.io.omezarr import pyramid, read_volume, write_volume
from xnh_stream.io.precomputed import read_precomputed
from xnh_stream.segment.blockwise import BlockwiseSpec, run_blockwise
from xnh_stream.segment.data import save_labelled, simulate_labelled
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.pipeline import SegmentParams, segment_volume
from xnh_stream.segment.predict import predict_affinities
from xnh_stream.segment.unet import SHIPPED_MODEL, AffinityModel

HELD_OUT_SEED = 1000  # training used seeds 1-8, tuning 9-10 (see the model's record)
#: Bound on the held-out adapted Rand error; the shipped model's measured value is in docs/segmentation.md.
ARAND_BOUND = 0.3  # measured 0.228 on this seed (stage 11), the hardest of eight held-out neural seeds (docs/segmentation.md)
TARGET_SEED, TARGET = 2000, 0.1  # the target, on a second held-out seed (measured 0.064)
DICE_BOUND = 0.35  # measured 0.45: nucleoplasm is as light as the resin around the tissue


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.column_stack([a.ravel(), b.ravel()]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.fixture(scope="module")
def model() -> AffinityModel:
    return AffinityModel.load()


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A default scan (128 x 64 px, 180 angles) simulated and reconstructed by the batch chain."""
    folder = tmp_path_factory.mktemp("heldout")
    vol = simulate_labelled(HELD_OUT_SEED, folder)
    vol.meta["folder"] = str(folder / "scan")
    assert HELD_OUT_SEED not in [d["seed"] for d in AffinityModel.load().record["data"]]
    return vol


@pytest.fixture(scope="module")
def segmented(model, heldout):
    return segment_volume(heldout.raw, model, device="cpu")


def test_shipped_model_file_and_record(model):
    assert SHIPPED_MODEL.stat().st_size < 5e6
    rec = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    assert rec == model.record
    curve = np.array(rec["loss_curve"])
    assert curve[-5:, 1].mean() < 0.85 * curve[:2, 1].mean()  # it learned
    assert rec["iterations"] == curve[-1, 0] and rec["command"].startswith("xnh-stream train")
    val_seeds = {int(v["source"].split()[-1]) for v in rec["validation"]}  # "simulated seed N"
    assert val_seeds and {d["seed"] for d in rec["data"]}.isdisjoint(val_seeds | {HELD_OUT_SEED})
    assert all(v["adapted_rand"] < 1 for v in rec["validation"]) and "threshold" in rec["postprocess"]
    held = {int(v["source"].split()[-1]) for v in rec["heldout"]}
    assert {HELD_OUT_SEED, TARGET_SEED} <= held and held.isdisjoint({d["seed"] for d in rec["data"]} | val_seeds)


@pytest.mark.slow
def test_heldout_segmentation_scores(heldout, segmented):
    s = evaluate(segmented.labels, heldout.labels, heldout.mask)
    print(f"\nheld-out seed {HELD_OUT_SEED}: {s.line()}; timings {segmented.seconds}")
    # baselines: everything one object, and the fragments before agglomeration
    one = evaluate(np.ones_like(heldout.labels), heldout.labels, heldout.mask)
    frag = evaluate(segmented.fragments, heldout.labels, heldout.mask)
    print(f"one segment: {one.line()}\nfragments:   {frag.line()}")
    assert s.adapted_rand <= ARAND_BOUND
    assert s.adapted_rand < 0.5 * one.adapted_rand and s.voi < one.voi and s.voi < frag.voi


@pytest.mark.slow
def test_heldout_target_on_a_second_volume(model, tmp_path):
    """The issue's target (adapted Rand error <= 0.1) on another held-out simulated volume."""
    vol = simulate_labelled(TARGET_SEED, tmp_path)
    s = evaluate(segment_volume(vol.raw, model, device="cpu").labels, vol.labels, vol.mask)
    print(f"\nheld-out seed {TARGET_SEED}: {s.line()}")
    assert s.adapted_rand <= TARGET


def test_blockwise_equals_single_block(tmp_path, model, heldout):
    """At one scale (eight times less inference): the blocks' two-scale prediction equals the whole volume's by
    tests/test_segment_scales.py, and what follows prediction does not depend on the scales."""
    raw = tmp_path / "raw.zarr"
    zarr.open_array(str(raw), mode="w", shape=heldout.raw.shape, dtype="float32")[...] = heldout.raw
    params = SegmentParams.for_model(model, scales=[1])
    segmented = segment_volume(heldout.raw, model, params, device="cpu")
    common = dict(model=None, threshold=params.threshold, fragment_threshold=params.fragment_threshold,
                  seed_distance=params.seed_distance, fragment_method=params.fragment_method,
                  enclosed=params.enclosed, device="cpu", scales=params.scales)
    one = run_blockwise(BlockwiseSpec(str(tmp_path / "one"), str(raw), heldout.raw.shape, 16, **common))
    assert len(one.blocks) == 1
    assert np.allclose(zarr.open_array(str(tmp_path / "one" / "affinities.zarr"))[...], segmented.affinities,
                       atol=1e-5)
    assert same_partition(one.segmentation(), segmented.labels)  # no seams, same ids up to a relabelling
    # eight blocks: prediction is seamless (equal to whole-volume prediction), the segmentation nearly so
    many = run_blockwise(BlockwiseSpec(str(tmp_path / "many"), str(raw), (32, 64, 64), 16, **common))
    assert len(many.blocks) == 8
    assert np.allclose(zarr.open_array(str(tmp_path / "many" / "affinities.zarr"))[...], segmented.affinities,
                       atol=1e-4)
    tissue = heldout.mask & (heldout.labels > 0)
    d = evaluate(many.segmentation(), segmented.labels, tissue)
    t_many = evaluate(many.segmentation(), heldout.labels, heldout.mask)
    t_one = evaluate(segmented.labels, heldout.labels, heldout.mask)
    print(f"\n8 blocks against one block, in the tissue: {d.line()}\n8 blocks against the truth: {t_many.line()}")
    # the fragments of a block see 16 voxels of context, not the whole volume (agglomeration of the summed
    # contacts is exact). Measured on the chain's current reconstruction: 0.17 against one block, and 0.247
    # (8 blocks) vs 0.170 (one block) against the truth; on the reconstruction before the compiled
    # back-projector and the axis consensus: 0.022, and 0.226 vs 0.243.
    assert d.adapted_rand < 0.2 and t_many.adapted_rand < t_one.adapted_rand + 0.1


def test_blockwise_on_ray(tmp_path, ray_local, heldout):
    from actors.segment import run_blockwise_ray

    crop = heldout.raw[:32, 32:96, 32:96]
    raw = tmp_path / "raw.zarr"
    zarr.open_array(str(raw), mode="w", shape=crop.shape, dtype="float32")[...] = crop
    local = run_blockwise(BlockwiseSpec(str(tmp_path / "local"), str(raw), (32, 32, 32), 8, device="cpu"))
    remote = run_blockwise_ray(BlockwiseSpec(str(tmp_path / "ray"), str(raw), (32, 32, 32), 8, device="cpu"))
    assert same_partition(local.segmentation(), remote.segmentation())
    done = sorted(p.name for p in (tmp_path / "ray" / "done" / "relabel").iterdir())
    assert done == [f"{i}.json" for i in range(4)]


def test_commands_segment_evaluate_and_errors(tmp_path, heldout, capsys):
    out = tmp_path / "out"
    crop = (slice(0, 32), slice(24, 104), slice(24, 104))
    write_volume(out / "volume.ome.zarr", heldout.raw[crop], heldout.voxel_m)
    truth = tmp_path / "truth.h5"
    from xnh_stream.segment.data import LabelledVolume

    save_labelled(truth, LabelledVolume(heldout.raw[crop], heldout.labels[crop], heldout.mask[crop]))
    assert main(["segment", str(out), "--out", str(out), "--device", "cpu", "--swc", str(out / "swc")]) == 0
    seg, voxel = read_volume(out / "volume.ome.zarr" / "labels" / "segmentation")  # labels of the volume
    assert seg.shape == (32, 80, 80) and voxel == pytest.approx(heldout.voxel_m) and seg.dtype == np.uint32
    assert main(["evaluate", str(out), str(truth), "--mask-key", "mask",  # the output folder names its labels
                 "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    ref = evaluate(seg, heldout.labels[crop], heldout.mask[crop])
    assert scores["adapted_rand"] == pytest.approx(ref.adapted_rand) and "VOI split" in capsys.readouterr().out
    assert list((out / "swc").glob("*.swc"))
    # Blockwise: the labels go from the work folder to the OME-Zarr chunk by chunk, pyramid included.
    assert json.loads((out / "segmentation.json").read_text())["params"]["scales"] == [1, 2]  # the model's
    # (one scale here, the blockwise run's plumbing is the subject: eight times less inference)
    assert main(["segment", str(out), "--out", str(tmp_path / "bw"), "--device", "cpu", "--scales", "1",
                 "--block-shape", "16", "40", "40", "--context", "8", "--precomputed", str(tmp_path / "ng")]) == 0
    assert json.loads((tmp_path / "bw" / "segmentation.json").read_text())["params"]["scales"] == [1]
    work = zarr.open_array(str(tmp_path / "bw" / "segmentation.work" / "segmentation.zarr"), mode="r")[...]
    for level, expected in enumerate(pyramid(work.astype(np.uint32), labels=True)):
        got, _ = read_volume(tmp_path / "bw" / "segmentation.ome.zarr", level)
        np.testing.assert_array_equal(got, expected)
    assert f"({len(np.unique(work)) - (0 in work)} segments" in capsys.readouterr().out
    np.testing.assert_array_equal(read_precomputed(tmp_path / "ng" / "segmentation"), work)
    np.testing.assert_array_equal(read_precomputed(tmp_path / "ng" / "image"), heldout.raw[crop])
    # a block the network cannot use: refused before any work, not a traceback
    assert main(["segment", str(out), "--out", str(tmp_path / "bad"), "--block-shape", "12", "12", "12"]) == 2
    assert "--block-shape 12 12 12: each edge must be a positive multiple of 8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["evaluate", str(out), str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: no such file" in capsys.readouterr().err
    assert main(["evaluate", str(out), str(truth), "--labels-key", "nope"]) == 2
    assert "truth.h5 [nope]: dataset missing" in capsys.readouterr().err


def test_pixel_classifier_finds_nuclei(heldout):
    """The APEX2 case: stained nuclei told apart from the rest by a forest trained on a few strokes."""
    from xnh_stream.segment.classify import PixelClassifier, strokes_from_truth
    from xnh_stream.simulate.scan import read_truth

    truth, _ = read_truth(heldout.meta["folder"])
    nuclei = truth["nucleus"] & truth["field_of_view"]
    assert nuclei.sum() > 1000, "the held-out phantom should hold cell bodies with nuclei"
    strokes = strokes_from_truth(nuclei, n_per_class=400, seed=0) * truth["field_of_view"]
    clf = PixelClassifier.fit(heldout.raw, strokes, n_estimators=30, sigma_max=16)
    pred = clf.predict(heldout.raw) == 2
    fov = truth["field_of_view"]
    dice = 2 * (pred & nuclei & fov).sum() / ((pred & fov).sum() + nuclei.sum())
    print(f"\nnuclei from {int((strokes > 0).sum())} stroke voxels: Dice {dice:.3f}")
    assert dice > DICE_BOUND


def test_skeletons_lie_inside_their_objects(heldout, tmp_path):
    from xnh_stream.segment.skeleton import skeletonize, write_swc

    lab = heldout.labels[:32, 32:96, 32:96]
    skels = skeletonize(lab, heldout.voxel_m, min_voxels=300)
    assert len(skels) >= 3
    files = write_swc(skels, tmp_path)
    inside = total = 0
    for f in files:
        rows = np.array([list(map(float, ln.split()[:7])) for ln in f.read_text().splitlines()
                         if ln.strip() and not ln.startswith("#")])
        idx = np.round(rows[:, 2:5] / (heldout.voxel_m * 1e9)).astype(int)  # SWC x y z (nm) -> voxel
        z, y, x = idx[:, 2], idx[:, 1], idx[:, 0]
        inside += (lab[z, y, x] == int(f.stem)).sum()
        total += len(rows)
        assert (rows[1:, 6] >= 1).all() or (rows[:, 6] == -1).sum() >= 1  # parents point at nodes or are roots
    assert inside / total > 0.95


def test_scan_complete_subscriber_segments_the_output(tmp_path, heldout, model):
    from xnh_stream.cli import _segment_subscribers, build_parser

    out = tmp_path / "out"
    crop = heldout.raw[:24, 32:96, 32:96]
    write_volume(out / "volume.ome.zarr", crop, heldout.voxel_m)
    args = ["watch", str(tmp_path), "--out", str(out), "--segment-device", "cpu"]
    (subscriber,) = _segment_subscribers(build_parser().parse_args(args))
    subscriber({"event": "scan_complete", "id": 1, "scan": str(tmp_path), "out": str(out)})
    seg, voxel = read_volume(out / "volume.ome.zarr" / "labels" / "segmentation")
    assert voxel == pytest.approx(heldout.voxel_m)
    assert same_partition(seg, segment_volume(crop, model, device="cpu").labels)
    assert json.loads((out / "segmentation.json").read_text())["shape"] == [24, 64, 64]
    assert _segment_subscribers(build_parser().parse_args(args + ["--no-segment"])) == ()
