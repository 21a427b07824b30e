"""Scoring helpers of the segmentation benchmark on analytic cases: merges of large cells, threshold
segmentations, the Otsu and gradient-watershed baselines, the oracle threshold, time per cubic micrometre."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.segment.evaluate import (count_merges, evaluate, gradient_watershed, oracle_threshold,
                                         otsu_segmentation, seconds_per_um3, threshold_segmentation)


def slabs(sizes=(12, 12, 12, 2), edge=(12, 12)):
    """Truth: slabs along z of the given thickness (12 x 12 x 12 = 1728 voxels), ids 1..n, no background."""
    truth = np.concatenate([np.full((t, *edge), i + 1, np.int32) for i, t in enumerate(sizes)])
    return truth


def test_count_merges_counts_joins_of_large_cells_only():
    truth = slabs()  # three cells of 1728 voxels, one of 288
    assert count_merges(truth, truth) == 0
    two = truth.copy()
    two[two == 2] = 1
    assert count_merges(two, truth) == 1
    three = np.where(truth <= 3, 7, truth)
    assert count_merges(three, truth) == 2
    small = np.where(truth >= 3, 9, truth)  # cell 3 (large) joined with the small cell 4: not two large cells
    assert count_merges(small, truth) == 0
    assert count_merges(small, truth, min_voxels=200) == 1
    # a cell split in two is no merge; a segment holding a minority of another cell does not join it
    split = truth.copy()
    split[:6][split[:6] == 1] = 5
    assert count_merges(split, truth) == 0
    edge = truth.copy()
    edge[12:14] = 1  # two planes of cell 2 go to cell 1's segment: cell 2's dominant segment is still its own
    assert count_merges(edge, truth) == 0
    assert count_merges(np.zeros_like(truth), truth) == 0  # unsegmented is no merge
    mask = np.zeros(truth.shape, bool)
    mask[:20] = True  # cell 2 has 8 x 144 = 1152 voxels inside: still large
    assert count_merges(two, truth, mask=mask) == 1
    mask[:18] = True
    mask[18:] = False  # now 6 planes = 864 voxels of cell 2
    assert count_merges(two, truth, mask=mask) == 0
    with pytest.raises(ValueError, match="shapes differ"):
        count_merges(truth[:3], truth)


def walls(gap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two cells (values 1) either side of a bright wall (3), in air (0) around a 2-voxel frame."""
    vol = np.ones((10, 20, 20))
    vol[:, :, 9:11] = 3.0
    if gap:
        vol[4:6, 8:12, 9:11] = 1.0
    truth = np.zeros(vol.shape, np.int32)
    truth[:, :, :9], truth[:, :, 11:] = 1, 2
    return vol, truth


def test_threshold_segmentation_components_below_the_threshold():
    vol, truth = walls()
    seg = threshold_segmentation(vol, 2.0)
    assert len(np.unique(seg)) == 3 and not seg[:, :, 9:11].any()
    assert evaluate(seg, truth).adapted_rand == 0
    seg = threshold_segmentation(walls(gap=True)[0], 2.0)
    assert len(np.unique(seg)) == 2  # a hole in the wall joins them
    mask = np.zeros(vol.shape, bool)
    mask[:, 2:18, 2:18] = True
    assert not threshold_segmentation(vol, 2.0, mask)[~mask].any()
    assert len(np.unique(threshold_segmentation(vol, 0.5))) == 1  # nothing below: all 0


def test_otsu_oracle_and_gradient_watershed_on_two_cells():
    vol, truth = walls()
    rng = np.random.default_rng(0)
    noisy = vol + rng.normal(0, 0.1, vol.shape)
    seg, t = otsu_segmentation(noisy)
    assert 1.3 < t < 2.7  # between the two modes 1 and 3
    assert evaluate(seg, truth).adapted_rand < 0.01
    # the oracle takes the best of its thresholds: 0.5 (nothing) and 3.5 (all one) lose to 2
    t_best, seg_best, s = oracle_threshold(noisy, truth, thresholds=np.array([0.5, 2.0, 3.5]))
    assert t_best == 2.0 and s.adapted_rand < 0.01 and seg_best.max() == 2
    t_def, _, s_def = oracle_threshold(noisy, truth)  # default candidates: quantiles of the volume
    assert s_def.adapted_rand <= s.adapted_rand + 1e-9 and 1.0 < t_def < 3.0
    ws = gradient_watershed(vol + rng.normal(0, 0.02, vol.shape))
    assert ws.min() >= 1 and evaluate(ws, truth).adapted_rand < 0.05
    mask = np.zeros(vol.shape, bool)
    mask[:, 2:18, 2:18] = True
    assert not gradient_watershed(vol, mask)[~mask].any()
    with pytest.raises(ValueError, match="marker_quantile"):
        gradient_watershed(vol, marker_quantile=1.5)
    with pytest.raises(ValueError, match="no thresholds"):
        oracle_threshold(vol, truth, thresholds=np.array([]))
    with pytest.raises(ValueError, match="no finite values"):
        otsu_segmentation(vol, np.zeros(vol.shape, bool))


def test_seconds_per_um3():
    # 100^3 voxels of 100 nm are 1000 um^3 (10 um a side): 10 s is 0.01 s/um^3; at 50 nm, 125 um^3
    assert seconds_per_um3(10.0, 100**3, 100e-9) == pytest.approx(0.01)
    assert seconds_per_um3(10.0, 100**3, 50e-9) == pytest.approx(0.08)
    with pytest.raises(ValueError):
        seconds_per_um3(1.0, 0, 100e-9)


def test_kept_whole_tells_thin_splits_from_thick_ones():
    """A tube of radius 2 cut into three equal pieces and a 12-voxel cube cut 60/40: thin 1/3, thick 0.6 (the
    adapted Rand error would weigh the tube's cut by its few voxels)."""
    from xnh_stream.segment.evaluate import kept_whole

    truth = np.zeros((20, 20, 60), np.int32)
    zz, yy = np.mgrid[:20, :20]
    tube = (zz - 3) ** 2 + (yy - 3) ** 2 <= 4  # clear of the cube
    truth[tube, :] = 1
    truth[6:18, 6:18, 20:32] = 2
    seg = truth.astype(np.int64) * 10
    seg[tube, 20:40] = 11
    seg[tube, 40:] = 12
    seg[6:18, 6:18, 27:32] = 21  # 5 of 12 columns: the cube keeps 7/12
    k = kept_whole(seg, truth)
    assert (k.thin_objects, k.thick_objects) == (1, 1)
    assert k.thin_share == pytest.approx(1 / 3) and k.thick_share == pytest.approx(7 / 12)
    assert kept_whole(truth, truth).thin_share == kept_whole(truth, truth).thick_share == 1.0
    # a thicker tube counts as thick once the limit is below its depth; a mask excludes what it leaves out
    assert kept_whole(seg, truth, depth_voxels=1.0).thin_objects == 0
    only_cube = kept_whole(seg, truth, mask=truth == 2)
    assert only_cube.thin_objects == 0 and np.isnan(only_cube.thin_share) and "kept whole" in only_cube.line()
