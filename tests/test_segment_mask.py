"""The sample mask of the segmentation: voxels outside a sample in air are 0, in the whole-volume path and the
blockwise path alike; cells inside are still segmented."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage

from xnh_stream.segment.blockwise import BlockwiseSegmentation, BlockwiseSpec
from xnh_stream.segment.data import affinities_from_labels
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.mask import SampleMask, mask_step, outside_area, sample_mask
from xnh_stream.segment.pipeline import SegmentParams, segment_from_affinities, segment_volume
from xnh_stream.segment.postprocess import fragments_watershed
from xnh_stream.segment.unet import AffinityModel

from .test_segment_post import _finish

SHAPE = (32, 64, 64)
RADIUS = 24.0  # pin radius, voxels


def pin_in_air(shape=SHAPE, radius=RADIUS, n=40, seed=0):
    """A cylindrical pin (axis z) in air holding Voronoi cells with one-voxel membranes: (image, labels, pin)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    pin2 = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) <= radius
    pin = np.broadcast_to(pin2, shape).copy()
    seeds = np.zeros(shape, np.int32)
    pts = np.argwhere(pin)[rng.choice(int(pin.sum()), n, replace=False)]
    seeds[tuple(pts.T)] = np.arange(1, n + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(idx)]
    membrane = np.zeros(shape, bool)
    for ax in range(3):
        d = np.diff(cells, axis=ax) != 0
        sl = [slice(None)] * 3
        sl[ax] = slice(1, None)
        membrane[tuple(sl)] |= d
    labels = np.where(pin & ~membrane, cells, 0).astype(np.uint32)
    labels[~pin2[None].repeat(nz, 0)] = 0
    delta = np.where(pin, np.where(membrane, 1.2, 1.0), 0.0) * 1e-6
    image = (delta + rng.normal(0, 0.02e-6, shape)).astype(np.float32)
    return image, labels, pin


def air_affinities(labels, pin, seed=1):
    """Affinities of the labels (cells 0.9, membranes and the pin's surface 0.1, noisy) and undecided links (0.3)
    all through the air (a network trained with the air as background): without a mask the air is segmented."""
    rng = np.random.default_rng(seed)
    a = affinities_from_labels(labels) * 0.8 + 0.1
    a = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    air = ~pin
    for c in range(3):
        both = air.copy()
        sl = [slice(None)] * 3
        sl[c] = slice(1, None)
        prev = [slice(None)] * 3
        prev[c] = slice(None, -1)
        both[tuple(sl)] &= air[tuple(prev)]
        a[c][both] = 0.3
    return a.astype(np.float32)


@pytest.fixture(scope="module")
def pin():
    return pin_in_air()


def test_mask_finds_the_pin_and_only_where_there_is_air(pin):
    image, _, inside = pin
    m = sample_mask(image)
    assert m.step == 1 and m.method == "auto"
    full = m.full()
    assert full[inside].all()  # the whole pin, its outline too
    dist = ndimage.distance_transform_edt(~inside)
    assert not full[dist > 4].any()  # the air more than the margin (2) + blur away is outside
    assert sample_mask(image, "none").full() is None
    thr = sample_mask(image, "threshold").full()
    assert thr[inside].mean() > 0.99 and not thr[dist > 4].any()
    # a crop inside the tissue has no air: auto leaves it whole
    assert sample_mask(image[:, 20:44, 20:44]).full() is None
    # a volume with nothing in it has no sample
    assert sample_mask(np.zeros(SHAPE, np.float32)).full() is None
    with pytest.raises(ValueError, match="unknown mask method"):
        sample_mask(image, "otsu")
    with pytest.raises(ValueError, match="3-D"):
        sample_mask(image[0])
    with pytest.raises(ValueError, match="unknown mask method"):
        SegmentParams(mask="everything")


def test_mask_regions_come_from_one_strided_grid(tmp_path):
    assert mask_step((64, 128, 128)) == 1 and mask_step((512, 2048, 2048)) == 9
    coarse = np.zeros((3, 4, 5), bool)
    coarse[1, 2, 3] = True
    m = SampleMask((6, 8, 10), 2, coarse)
    full = m.full()
    assert full.shape == (6, 8, 10) and full.sum() == 8 and full[2:4, 4:6, 6:8].all()
    assert np.array_equal(m.region((slice(1, 5), slice(3, 8), slice(0, 10))), full[1:5, 3:8, :])
    m.save(tmp_path / "m.npz")
    back = SampleMask.load(tmp_path / "m.npz")
    assert back.shape == m.shape and back.step == 2 and np.array_equal(back.coarse, coarse)
    SampleMask((6, 8, 10), 1, None, "none").save(tmp_path / "n.npz")
    assert SampleMask.load(tmp_path / "n.npz").full() is None


def test_outside_area_counts_each_face_once():
    frag = np.zeros((3, 4, 4), np.uint64)
    frag[1, 1:3, 1:3] = 5  # a 2 x 2 slab in the middle plane, the rest outside
    inside = frag > 0
    rows = outside_area(frag, inside)
    assert rows.tolist() == [[5.0, 16.0]]  # 4 faces up, 4 down, 8 around
    assert outside_area(frag, None).shape == (0, 2)
    # the same volume cut after plane 1: the block holding plane 2 sees plane 1 (grown) and counts the rest
    top = outside_area(frag[:2], inside[:2])
    bottom = outside_area(frag[1:], inside[1:], (True, False, False))
    assert top[:, 1].sum() + bottom[:, 1].sum() == 16


@pytest.mark.parametrize("method", ["affinity", "distance"])
def test_fragments_zero_outside_the_mask(pin, method):
    _, labels, inside = pin
    affs = air_affinities(labels, inside)
    frag = fragments_watershed(affs, 0.5, 2, method=method, mask=inside)
    assert not frag[~inside].any()
    assert (frag[labels > 0] > 0).all()  # every cell voxel in a fragment
    free = fragments_watershed(affs, 0.5, 2, method=method)
    assert frag.max() < free.max() or (free[~inside] > 0).any()  # without the mask the air is fragments too
    with pytest.raises(ValueError, match="mask shape"):
        fragments_watershed(affs, mask=inside[:-1])


def _blockwise(tmp_path, image, affs, block_shape, params):
    raw = tmp_path / "raw.zarr"
    zarr.open_array(str(raw), mode="w", shape=image.shape, dtype="float32")[...] = image
    spec = BlockwiseSpec(str(tmp_path / "work"), str(raw), block_shape, 8, None, params.threshold,
                         params.fragment_threshold, params.seed_distance, params.fragment_method, params.enclosed,
                         norm=(0.0, 1.0), mask=params.mask)
    bw = BlockwiseSegmentation.prepare(spec)
    zarr.open_array(str(tmp_path / "work" / "affinities.zarr"), mode="r+")[...] = affs
    for b in bw.blocks:
        bw._mark("predict", b.index)
    return _finish(bw)


def same_partition(a, b):
    pairs = np.unique(np.column_stack([a.ravel(), b.ravel()]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("method", ["affinity", "distance"])
def test_whole_volume_and_blockwise_mask_alike(tmp_path, pin, method):
    image, labels, inside = pin
    affs = air_affinities(labels, inside)
    params = SegmentParams(0.5, 0.5, 2, method, 0.5, "auto")
    sample = sample_mask(image, params.mask)
    mask = sample.full()
    whole, _ = segment_from_affinities(affs, params, sample)
    assert not whole[~mask].any()
    s = evaluate(whole, labels)
    assert s.adapted_rand < 0.05, s.line()  # the cells are segmented, not joined through the air
    free, _ = segment_from_affinities(affs, params, None)
    assert (free[~mask] > 0).mean() > 0.9 and evaluate(free, labels).adapted_rand < 0.05  # the air is segments
    one = _blockwise(tmp_path / "one", image, affs, SHAPE, params)
    assert same_partition(one, whole)
    many = _blockwise(tmp_path / "many", image, affs, (16, 32, 32), params)
    assert np.array_equal(many == 0, whole == 0)  # the same voxels are 0, outside the sample all of them
    assert evaluate(many, labels).adapted_rand < 0.05


def test_segment_volume_masks_a_pin_in_air(pin):
    """The shipped network on a pin in air: the air is 0, the cells inside are segments."""
    import torch

    torch.set_num_threads(1)
    image, labels, inside = pin
    res = segment_volume(image, device="cpu")
    assert res.mask is not None and not res.labels[~res.mask].any()
    assert res.mask[inside].all()
    cell_voxels = labels > 0
    assert (res.labels[cell_voxels] > 0).mean() > 0.9
    free = segment_volume(image, params=SegmentParams.for_model(AffinityModel.load(), mask="none"), device="cpu")
    assert free.mask is None and (free.labels[~inside] > 0).any()
