"""The network shown the volume at two scales (``SegmentParams.scales``): the 2x view, the affinities brought back
to the volume's grid, and prediction that does not depend on how the volume is cut into regions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.segment.data import affinities_from_labels
from xnh_stream.segment.pipeline import SegmentParams
from xnh_stream.segment.predict import SCALE2_SIGMA, Upsampled, downsample_affinities, predict_affinities
from xnh_stream.segment.unet import AffinityModel


@pytest.mark.parametrize("sigma", [0.0, SCALE2_SIGMA])
def test_the_2x_view_is_a_smoothed_linear_zoom_and_its_windows_equal_the_whole(sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(19, 20, 21)).astype(np.float32)
    view = Upsampled(x, sigma)
    whole = view[:, :, :]
    assert whole.shape == view.shape == (38, 40, 42)
    # scipy's grid-mode linear zoom (voxel edges kept, edge values continued) of the smoothed volume
    radius = int(np.ceil(4 * sigma))
    smooth = ndimage.gaussian_filter(x, sigma, mode="nearest", radius=radius) if sigma else x
    ref = ndimage.zoom(smooth, 2, order=1, grid_mode=True, mode="nearest")
    assert np.abs(whole - ref).max() < 1e-5
    # any window reads only what it needs and equals the same window of the whole view (odd starts included)
    for key in [(slice(3, 11), slice(0, 7), slice(5, 22)), (slice(0, 38), slice(1, 40), slice(2, 3)),
                (slice(17, 30), slice(30, 40), slice(0, 42)), (slice(37, 38), slice(0, 1), slice(41, 42))]:
        assert np.array_equal(view[key], whole[key])


def test_affinities_of_a_2x_labelling_come_back_as_the_labellings_own():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(6, 7, 8)).astype(np.int32)  # 0 included: links touching it are 0
    fine = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    back = downsample_affinities(affinities_from_labels(fine).astype(np.float32))
    assert back.shape == (3, 6, 7, 8)
    assert np.array_equal(back, affinities_from_labels(labels).astype(np.float32))
    # a link inside a coarse voxel (fine 2k+1 with 2k) never enters: set them to 0 and nothing changes
    a = affinities_from_labels(fine).astype(np.float32)
    for c in range(3):
        idx = [slice(None)] * 3
        idx[c] = slice(1, None, 2)
        a[c][tuple(idx)] = 0
    assert np.array_equal(downsample_affinities(a), back)


def test_two_scale_prediction_does_not_depend_on_the_region():
    """Regions on the downsampling grid give the whole volume's affinities at scale 2 too (the blockwise path)."""
    model = AffinityModel.load()
    rng = np.random.default_rng(2)
    raw = ndimage.gaussian_filter(rng.normal(size=(24, 32, 40)), 1.5).astype(np.float32)
    norm = (float(raw.mean()), float(raw.std()))
    whole = predict_affinities(model, raw, norm=norm, device="cpu", scales=(1, 2))
    parts = np.zeros_like(whole)
    for z0 in (0, 16):
        for x0 in (0, 24):
            start, stop = (z0, 0, x0), (min(z0 + 16, 24), 32, min(x0 + 24, 40))
            parts[(slice(None),) + tuple(slice(a, b) for a, b in zip(start, stop))] = predict_affinities(
                model, raw, (start, stop), norm=norm, device="cpu", scales=(1, 2))
    assert np.allclose(parts, whole, atol=1e-5)
    one = predict_affinities(model, raw, norm=norm, device="cpu", scales=(1,))
    two = predict_affinities(model, raw, norm=norm, device="cpu", scales=(2,))
    assert np.allclose(whole, (one + two) / 2, atol=1e-6) and not np.allclose(one, two, atol=1e-2)


def test_scales_are_checked_and_taken_from_the_model():
    with pytest.raises(ValueError, match="scales"):
        SegmentParams(scales=(3,))
    with pytest.raises(ValueError, match="scales"):
        SegmentParams(scales=(1, 1))
    with pytest.raises(ValueError, match="scales"):
        predict_affinities(AffinityModel.load(), np.zeros((8, 8, 8), np.float32), scales=())
    model = AffinityModel.load()
    assert SegmentParams.for_model(model).scales == tuple(model.record["postprocess"]["scales"])
    assert SegmentParams.for_model(model, scales=[1]).scales == (1,)


def test_scales_on_the_command_line():
    from xnh_stream.cli import build_parser

    p = build_parser()
    assert p.parse_args(["segment", "OUT", "--out", "OUT", "--scales", "1"]).scales == [1]
    assert p.parse_args(["segment", "OUT", "--out", "OUT"]).scales is None  # the model's
    a = p.parse_args(["overnight", "ROOT", "--out", "OUTROOT", "--segment", "--segment-scales", "1", "2"])
    assert a.segment and a.segment_scales == [1, 2]
    with pytest.raises(SystemExit):
        p.parse_args(["segment", "OUT", "--out", "OUT", "--scales", "3"])
