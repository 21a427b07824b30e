"""Segmentation post-processing, evaluation and blockwise scheduling, on synthetic labels (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from scipy import ndimage

from xnh_stream.segment.blockwise import BlockwiseSegmentation, BlockwiseSpec, block_grid
from xnh_stream.segment.data import NEAREST_OFFSETS, LabelledVolume, affinities_from_labels, load_labelled, save_labelled
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.postprocess import (agglomerate, apply_lut, fragments_watershed, merge_tree,
                                            segment_affinities, segment_lut)


def cells(shape=(40, 48, 48), n=30, seed=0) -> np.ndarray:
    """Voronoi cells (labels 1..n) separated by one-voxel-wide background-free borders."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    pts = np.column_stack([rng.integers(0, s, n) for s in shape])
    seeds[tuple(pts.T)] = np.arange(1, n + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(idx)].astype(np.uint32)


def noisy_affinities(labels: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = affinities_from_labels(labels) * 0.8 + 0.1
    return np.clip(a + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are equal up to a relabelling (a one-to-one map between ids)."""
    pairs = np.unique(np.column_stack([a.ravel(), b.ravel()]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def test_affinities_from_labels_nearest_neighbours():
    lab = np.zeros((2, 3, 4), np.uint32)
    lab[:, :, :2], lab[:, :, 2:] = 1, 2
    lab[1, 0, 0] = 0
    aff = affinities_from_labels(lab)
    assert aff.shape == (3, 2, 3, 4) and [list(o) for o in NEAREST_OFFSETS] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert aff[2, 0, 1, 1] == 1 and aff[2, 0, 1, 2] == 0  # x link across the 1|2 border is cut
    assert aff[:, 0].sum() == aff[0, 0].sum() == 0 or aff[0, 0].sum() == 0  # no z neighbour before slice 0
    assert aff[0, 1, 0, 0] == 0 and aff[2, 1, 0, 1] == 0  # links to background are 0
    assert aff[0, 1, 2, 3] == 1


def test_segment_affinities_recovers_cells_and_merge_tree_matches_waterz():
    lab = cells()
    affs = noisy_affinities(lab, 0.1)
    seg = segment_affinities(affs, threshold=0.5)
    s = evaluate(seg, lab)
    print("noisy ground-truth affinities:", s.line())
    assert s.adapted_rand < 0.02 and s.voi < 0.1
    frag = fragments_watershed(affs)
    assert frag.min() >= 1 and len(np.unique(frag)) > len(np.unique(lab))  # over-segmentation, every voxel
    tree = merge_tree(affs, frag)
    assert np.all(np.diff(tree[:, 2]) >= -1e-6)  # merges come in non-decreasing score order
    for t, ref in zip((0.3, 0.5, 0.7), agglomerate(affs, frag, (0.3, 0.5, 0.7))):
        ids, segs = segment_lut(tree, np.unique(frag), t)
        assert same_partition(apply_lut(frag, ids, segs), ref)


def test_evaluate_cremi_conventions_analytic():
    gt = np.zeros((4, 4, 8), np.uint32)
    gt[:, :, :4], gt[:, :, 4:] = 1, 2
    assert evaluate(gt * 7, gt).adapted_rand == 0.0 and evaluate(gt * 7, gt).voi == 0.0
    split = gt.copy()
    split[:2, :, :4] = 3  # object 1 cut in two halves
    s = evaluate(split, gt)
    assert s.voi_split == pytest.approx(0.5)  # bits: half the voxels carry one bit
    assert s.voi_merge == pytest.approx(0.0, abs=1e-12)
    # pairs of distinct voxels together: truth 2 * 64 * 63, prediction (all also together in truth)
    # 2 * 32 * 31 + 64 * 63: precision 1, recall = their ratio
    recall = (2 * 32 * 31 + 64 * 63) / (2 * 64 * 63)
    assert s.rand_precision == pytest.approx(1.0) and s.rand_recall == pytest.approx(recall)
    assert s.adapted_rand == pytest.approx(1 - 2 * recall / (1 + recall))
    merged = np.ones_like(gt)
    m = evaluate(merged, gt)
    assert m.voi_merge == pytest.approx(1.0) and m.voi_split == pytest.approx(0.0, abs=1e-12)
    gt_bg = gt.copy()
    gt_bg[0] = 0  # background in the truth is ignored whatever the prediction says there
    pred = gt.copy()
    pred[0] = 9
    assert evaluate(pred, gt_bg).adapted_rand == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        evaluate(gt[:2], gt)


def test_labelled_file_roundtrip_and_errors(tmp_path):
    lab = cells((8, 12, 12), 5)
    vol = LabelledVolume(np.random.default_rng(0).random(lab.shape).astype(np.float32), lab, lab > 2,
                         voxel_m=50e-9, source="x", meta={"seed": 3})
    back = load_labelled(save_labelled(tmp_path / "v.h5", vol))
    assert np.array_equal(back.labels, lab) and np.array_equal(back.mask, lab > 2) and back.voxel_m == 50e-9
    assert back.meta == {"seed": 3}
    z = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    z["image"], z["gt"] = vol.raw, lab
    assert np.array_equal(load_labelled(tmp_path / "v.zarr", "image", "gt").labels, lab)
    with pytest.raises(ValueError, match=r"v\.zarr \[raw\]: dataset missing"):
        load_labelled(tmp_path / "v.zarr")
    with pytest.raises(ValueError, match="no such file"):
        load_labelled(tmp_path / "nope.h5")
    with pytest.raises(ValueError, match="differs from image shape"):
        LabelledVolume(vol.raw, lab[:4], vol.mask, source="bad.h5")


def _prepared(tmp_path, affs, block_shape, context, **spec_options):
    """A blockwise work folder whose prediction stage is replaced by given affinities."""
    raw = tmp_path / "raw.zarr"
    zarr.open_array(str(raw), mode="w", shape=affs.shape[1:], dtype="float32")[...] = affs.mean(0)
    spec = BlockwiseSpec(str(tmp_path / "work"), str(raw), block_shape, context, norm=(0.0, 1.0), **spec_options)
    bw = BlockwiseSegmentation.prepare(spec)
    zarr.open_array(str(tmp_path / "work" / "affinities.zarr"), mode="r+")[...] = affs
    for b in bw.blocks:
        bw._mark("predict", b.index)
    return bw


def _finish(bw):
    for stage in ("fragments", "agglomerate"):
        for i in bw.pending(stage):
            getattr(bw, stage)(i)
    bw.solve()
    for i in bw.pending("relabel"):
        bw.relabel(i)
    return bw.segmentation()


def test_block_grid_covers_volume_once():
    blocks = block_grid((20, 33, 40), (8, 16, 16))
    cover = np.zeros((20, 33, 40), int)
    for b in blocks:
        cover[b.slices()] += 1
    assert (cover == 1).all() and len(blocks) == 3 * 3 * 3


def test_blockwise_single_block_equals_whole_volume_and_multi_block_has_no_seams(tmp_path):
    lab = cells((40, 48, 48), 30, seed=2)
    affs = noisy_affinities(lab, 0.1, seed=3)
    whole = segment_affinities(affs, threshold=0.5)
    one = _finish(_prepared(tmp_path / "one", affs, (64, 64, 64), 8))
    assert same_partition(one, whole)
    many = _prepared(tmp_path / "many", affs, (16, 24, 24), 8)
    assert len(many.blocks) == 3 * 2 * 2
    seg = _finish(many)
    s = evaluate(seg, lab)
    print("blockwise on 12 blocks:", s.line())
    assert s.adapted_rand < 0.02  # no object is split at the block borders
    ids = np.unique(np.load(tmp_path / "many" / "work" / "lut.npz")["ids"])
    assert len(ids) == len(np.unique(zarr.open_array(str(tmp_path / "many" / "work" / "fragments.zarr"))[...]))


def test_blockwise_resumes_from_done_markers(tmp_path):
    lab = cells((32, 32, 32), 12, seed=4)
    affs = noisy_affinities(lab, 0.05, seed=5)
    bw = _prepared(tmp_path, affs, (16, 16, 16), 6)
    bw.fragments(0)
    stamp = (tmp_path / "work" / "done" / "fragments" / "0.json").stat().st_mtime_ns
    assert bw.pending("fragments") == list(range(1, 8))
    again = BlockwiseSegmentation.prepare(BlockwiseSpec(str(tmp_path / "work"), str(tmp_path / "raw.zarr"),
                                                        (16, 16, 16), 6))
    assert again.spec.norm == (0.0, 1.0) and again.pending("fragments") == list(range(1, 8))
    seg = _finish(again)
    assert (tmp_path / "work" / "done" / "fragments" / "0.json").stat().st_mtime_ns == stamp
    assert evaluate(seg, lab).adapted_rand < 0.02
    # the one work folder's rule (state/work.py): a folder of another run is started afresh, not reused
    other = BlockwiseSegmentation.prepare(BlockwiseSpec(str(tmp_path / "work"), str(tmp_path / "raw.zarr"),
                                                        (8, 16, 16), 6, norm=(0.0, 1.0)))
    assert other.pending("predict") == list(range(len(other.blocks))) and not (tmp_path / "work" / "lut.npz").exists()
    spec_file = tmp_path / "work" / "spec.json"  # a folder written before the format field: started afresh too
    old = json.loads(spec_file.read_text())
    del old["format"]
    spec_file.write_text(json.dumps(old))
    other._mark("predict", 0)
    again = BlockwiseSegmentation.prepare(BlockwiseSpec(str(tmp_path / "work"), str(tmp_path / "raw.zarr"),
                                                        (8, 16, 16), 6, norm=(0.0, 1.0)))
    assert again.pending("predict") == list(range(len(again.blocks)))


@pytest.mark.slow
def test_training_learns_boundaries_and_resumes(tmp_path):
    """A tiny U-Net learns affinities of cells whose borders are dark in the image; checkpoints and resume."""
    import torch

    from xnh_stream.segment.predict import predict_affinities
    from xnh_stream.segment.train import TrainConfig, train
    from xnh_stream.segment.unet import AffinityModel, UNet3D, UNetConfig

    lab = cells((32, 40, 40), 12, seed=6)
    border = affinities_from_labels(lab).min(axis=0) < 1
    raw = (1.0 - 0.8 * border + np.random.default_rng(0).normal(0, 0.05, lab.shape)).astype(np.float32)
    vol = LabelledVolume(raw, lab, np.ones(lab.shape, bool), source="cells")
    net_cfg = UNetConfig(num_fmaps=4, convs_per_level=1)
    net = UNet3D(net_cfg)
    i = net.valid_input_shape((8, 8, 8))
    assert net.output_shape(i) is not None and all(a - b == c for a, b, c in zip(i, net.output_shape(i), net.context))
    cfg = TrainConfig(iterations=60, output_shape=(16, 16, 16), lr=3e-3, checkpoint_every=30, threads=1)
    model = train([vol], cfg, net_cfg, out=tmp_path / "m.pt", progress=False)
    curve = np.array(model.record["loss_curve"])
    assert (tmp_path / "m.checkpoint.pt").exists() and (tmp_path / "m.json").exists()
    more = train([vol], TrainConfig(iterations=60, output_shape=(16, 16, 16), lr=3e-3, checkpoint_every=0,
                                    threads=1, seed=1), out=tmp_path / "m2.pt",
                 resume=AffinityModel.load(tmp_path / "m.pt"), progress=False)
    assert more.record["iterations"] == 120 and len(more.record["loss_curve"]) > len(curve)
    gt = affinities_from_labels(lab)
    pred = predict_affinities(more, raw, device="cpu")
    inside = gt[:, 2:-2, 2:-2, 2:-2] > 0
    p = pred[:, 2:-2, 2:-2, 2:-2]
    print(f"\ntiny net: loss {curve[0, 1]:.3f} -> {more.record['loss_curve'][-1][1]:.3f}; mean affinity "
          f"inside {p[inside].mean():.2f}, across borders {p[~inside].mean():.2f}")
    assert p[inside].mean() - p[~inside].mean() > 0.3
    if torch.cuda.is_available():  # the GPU path gives the CPU result within float tolerance
        assert np.allclose(predict_affinities(more, raw, device="cuda"), pred, atol=1e-3)
    else:  # asking for CUDA without a GPU is an error, never a silent fallback
        with pytest.raises(RuntimeError, match="no CUDA"):
            predict_affinities(more, raw[:16, :16, :16], device="cuda")


def test_train_command_records_validation_and_names_bad_files(tmp_path, capsys):
    from actors.cli import main
    from xnh_stream.segment.unet import AffinityModel

    lab = cells((24, 32, 32), 8, seed=7)
    raw = (1.0 - 0.8 * (affinities_from_labels(lab).min(axis=0) < 1)).astype(np.float32)
    h5 = save_labelled(tmp_path / "cells.h5", LabelledVolume(raw, lab, np.ones(lab.shape, bool)))
    assert main(["train", str(h5), "--out", str(tmp_path / "m.pt"), "--iterations", "3", "--output-patch",
                 "8", "8", "8", "--fmaps", "2", "--validate", str(h5), "--device", "cpu",
                 "--checkpoint-every", "2"]) == 0
    rec = AffinityModel.load(tmp_path / "m.pt").record
    assert rec["iterations"] == 3 and rec["validation"][0]["source"].endswith("cells.h5")
    assert AffinityModel.load(tmp_path / "m.checkpoint.pt").record["iterations"] == 2  # beside --out
    assert rec["loss"].startswith("class-balanced")
    assert main(["train", str(h5), "--out", str(tmp_path / "u.pt"), "--iterations", "2", "--output-patch",
                 "8", "8", "8", "--fmaps", "2", "--device", "cpu", "--no-class-balance"]) == 0
    assert AffinityModel.load(tmp_path / "u.pt").record["loss"].startswith("binary cross-entropy")
    assert set(rec["postprocess"]) >= {"threshold", "fragment_method"} and len(rec["tuning"]) > 1
    assert main(["train", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "nope.h5: no such file" in capsys.readouterr().err


def test_patch_weights_balanced_or_plain():
    """Balanced: boundary and interior links carry equal total weight in each patch; plain: every known
    link weighs 1 and unknown links (outside the mask) 0 in both."""
    from xnh_stream.segment.train import PatchSampler
    from xnh_stream.segment.unet import UNet3D, UNetConfig

    lab = cells((24, 32, 32), 8, seed=3)
    mask = np.ones(lab.shape, bool)
    mask[:, :, :6] = False
    vol = LabelledVolume(lab.astype(np.float32), lab, mask)
    net = UNet3D(UNetConfig(num_fmaps=2))
    for balance in (True, False):
        sampler = PatchSampler([vol], net, {"method": "percentile", "low": 1, "high": 99}, (8, 8, 8), seed=1,
                               augment=False, class_balance=balance)
        for _ in range(5):
            _, aff, w = sampler.sample()
            known = w > 0
            pos, neg = known & (aff > 0), known & (aff == 0)
            if balance and pos.any() and neg.any():
                assert w[pos].sum() == pytest.approx(w[neg].sum(), rel=1e-5)
                assert w[neg].max() > w[pos].max()  # boundaries are the rarer class here
            if not balance:
                assert set(np.unique(w)) <= {0.0, 1.0}


def test_fragment_graph_agglomeration_is_waterz_and_blocks_sum_to_the_volume():
    """Contact statistics summed over blocks equal the whole volume's, and agglomerating the fragment graph
    by mean affinity gives waterz's whole-volume segmentation at every threshold."""
    from xnh_stream.segment.postprocess import agglomerate_contacts, contact_statistics, sum_contacts

    lab = cells()
    affs = noisy_affinities(lab, 0.25, seed=4)
    frag = fragments_watershed(affs)
    whole = contact_statistics(affs, frag, (False, False, False))
    parts = []
    for b in block_grid(frag.shape, (16, 24, 20)):
        region, grow = b.with_planes_before()
        parts.append(contact_statistics(affs[(slice(None),) + b.slices()], frag[region], grow))
    summed = sum_contacts(np.concatenate(parts))
    np.testing.assert_array_equal(summed[:, [0, 1, 3]], whole[:, [0, 1, 3]])  # same pairs, same link counts
    np.testing.assert_allclose(summed[:, 2], whole[:, 2], rtol=1e-9)
    assert whole[:, 3].sum() > 0 and (whole[:, 0] < whole[:, 1]).all()
    ids = np.unique(frag)
    for t, ref in zip((0.3, 0.5, 0.7), agglomerate(affs, frag, (0.3, 0.5, 0.7))):
        merges = agglomerate_contacts(whole, t)
        assert (merges[:, 2] < t).all()
        lut_ids, segs = segment_lut(merges, ids, t)
        assert same_partition(apply_lut(frag, lut_ids, segs), ref)


def test_shading_darkens_object_interiors_with_depth():
    """The shading augmentation darkens a large object towards its centre and leaves its boundary and the
    background untouched (as phase retrieval leaves large cells); it is on by default and only when augmenting."""
    from xnh_stream.segment.train import SHADING_STRENGTH, PatchSampler, TrainConfig
    from xnh_stream.segment.unet import UNet3D, UNetConfig

    z, y, x = np.mgrid[:40, :48, :48]
    r = np.sqrt((z - 20) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    ball = r < 14
    vol = LabelledVolume(ball.astype(np.float32), ball.astype(np.uint32), np.ones(ball.shape, bool))
    net = UNet3D(UNetConfig(num_fmaps=2))
    norm = {"method": "percentile", "low": 1, "high": 99}
    sampler = PatchSampler([vol], net, norm, (8, 8, 8), seed=1, augment=True, shading=1.0)
    depth = sampler.depth[0][tuple(slice(c, c + n) for c, n in zip(sampler.ctx, ball.shape))].astype(float)
    assert depth[~ball].max() == 0 and depth[r > 12.5].max() <= 1.5  # background and the rim stay
    assert 13 <= depth[20, 24, 24] <= 14  # the centre is 14 voxels deep
    drops = []
    for seed in range(12):  # the same patch with and without shading
        plain = PatchSampler([vol], net, norm, (8, 8, 8), seed=seed, augment=False)
        shaded = PatchSampler([vol], net, norm, (8, 8, 8), seed=seed, augment=True, shading=1.0)
        shaded.augment = False  # shading alone (flips, intensity and noise off)
        (x0, _, _), (x1, _, _) = plain.sample(), shaded.sample()
        drop = x0 - x1
        assert drop.min() >= 0 and drop.max() <= SHADING_STRENGTH + 1e-6
        drops.append(drop)
    assert np.max(drops) > 0.1  # some patches were darkened
    assert PatchSampler([vol], net, norm, (8, 8, 8), augment=False, shading=1.0).depth == []
    assert 0 < TrainConfig().shading <= 1


def test_thin_weight_weighs_the_links_inside_thin_objects_only():
    """--thin-weight: the positive links inside a tube of radius 2 weigh that many times more; those inside a
    large block, the boundaries and everything else keep their class-balanced weight."""
    from xnh_stream.segment.evaluate import thin_objects
    from xnh_stream.segment.train import PatchSampler
    from xnh_stream.segment.unet import UNet3D, UNetConfig

    labels = np.zeros((32, 40, 40), np.uint32)
    z, y = np.mgrid[:32, :40]
    labels[(z - 16) ** 2 + (y - 8) ** 2 <= 4, :] = 1  # a tube along x
    labels[4:28, 16:36, 4:36] = 2  # a block
    thin = thin_objects(labels)
    assert thin[labels == 1].all() and not thin[labels != 1].any()
    vol = LabelledVolume(labels.astype(np.float32), labels, np.ones(labels.shape, bool))
    net = UNet3D(UNetConfig(num_fmaps=2))
    norm = {"method": "percentile", "low": 1, "high": 99}
    seen_thin = 0
    for seed in range(6):
        plain = PatchSampler([vol], net, norm, (16, 16, 16), seed=seed, augment=False)
        heavy = PatchSampler([vol], net, norm, (16, 16, 16), seed=seed, augment=False, thin_weight=4.0)
        (_, aff, w0), (_, aff1, w1) = plain.sample(), heavy.sample()
        np.testing.assert_array_equal(aff, aff1)  # the same patch
        ratio = np.divide(w1, w0, out=np.ones_like(w1), where=w0 > 0)
        assert set(np.unique(np.round(ratio, 6))) <= {1.0, 4.0}
        seen_thin += int((ratio > 1).sum())
        assert not (ratio[aff == 0] > 1).any()  # boundaries never
    assert seen_thin > 0
    assert PatchSampler([vol], net, norm, (16, 16, 16)).thin == []  # off by default: nothing computed


def test_merge_enclosed_joins_organelles_to_their_cell_only(tmp_path):
    """A nucleus inside a cell (with a nucleolus inside it: a chain), and one cut by the volume's face, join
    their cells; two cells side by side and a small cell between two others stay apart."""
    from xnh_stream.segment.pipeline import merge_enclosed_segments
    from xnh_stream.segment.postprocess import contact_statistics, face_area, merge_enclosed

    z, y, x = np.mgrid[:32, :40, :40]
    lab = np.where(x < 20, 1, 2).astype(np.uint64)  # two cells
    lab[(z - 16) ** 2 + (y - 20) ** 2 + (x - 10) ** 2 < 36] = 3  # nucleus of cell 1
    lab[(z - 16) ** 2 + (y - 20) ** 2 + (x - 10) ** 2 < 4] = 4  # its nucleolus
    lab[z ** 2 + (y - 20) ** 2 + (x - 30) ** 2 < 25] = 5  # nucleus of cell 2, cut by the face z = 0
    lab[20:26, 30:40, 17:23] = 6  # a small cell astride the border of cells 1 and 2
    affs = affinities_from_labels(lab).astype(np.float32)
    merged = merge_enclosed_segments(affs, lab, lab, 0.6)
    expect = lab.copy()
    expect[np.isin(lab, [3, 4])] = 1
    expect[lab == 5] = 2
    assert same_partition(merged, expect)
    assert merge_enclosed_segments(affs, lab, lab, 0.0) is lab  # 0 = off
    # on the fragment graph (as the blockwise solve uses it): fragments = half-cells, one segment per cell
    frag = (lab * 2 + (y >= 20)).astype(np.uint64)
    ids = np.unique(frag)
    contacts = contact_statistics(affs, frag, (False, False, False))
    segs = merge_enclosed(contacts, ids, ids // 2, 0.6, face_area(frag))
    assert same_partition(apply_lut(frag, ids, segs), expect)
    # without the volume's surface the two cells, which touch only each other, would look enclosed
    wrong = merge_enclosed(contacts, ids, ids // 2, 0.6)
    assert wrong[np.searchsorted(ids, 2)] == wrong[np.searchsorted(ids, 4)]  # fragments of cells 1 and 2
    # blockwise (eight blocks; the surface areas come from the blocks on the volume's edge): the same result
    bw = _prepared(tmp_path, affs, (16, 24, 24), 4, enclosed=0.6)
    assert len(bw.blocks) == 8 and same_partition(_finish(bw), expect)


def test_randomised_looks_keep_what_the_patch_shows():
    """Domain randomisation of the imaging (train.randomise_look) changes grey levels, sharpness and contrast,
    never which side of a boundary is brighter: on a step patch (a membrane-like edge) the bright side stays
    brighter in every draw, while the looks differ from the input and from each other."""
    from xnh_stream.segment.train import TrainConfig, randomise_look

    rng = np.random.default_rng(4)
    x = np.full((24, 32, 32), -0.8, np.float32)
    x[:, :, 16:] = 0.8
    x += rng.normal(0, 0.05, x.shape).astype(np.float32)
    looks = [randomise_look(x, rng) for _ in range(40)]
    for y in looks:
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
        assert y[:, :, 18:].mean() - y[:, :, :14].mean() > 0.3
    spread = np.std([y[:, :, 18:].mean() - y[:, :, :14].mean() for y in looks])
    assert spread > 0.05 and max(np.abs(y - x).max() for y in looks) > 0.2
    assert TrainConfig().randomise == 0.0  # off unless asked for: the shipped model was trained without it
