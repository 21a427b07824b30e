"""Local shape descriptors (segment/lsd.py) against direct sums, and the training target they feed."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.segment.data import LabelledVolume
from xnh_stream.segment.lsd import LSD_CHANNELS, flip_descriptors, local_shape_descriptors, transpose_descriptors


def half_gaussian_moments(sigma: float, reach: int) -> tuple[float, float, float]:
    """Mass, mean and variance of the sampled, truncated, normalised Gaussian restricted to ``k >= 0``, by
    direct sums (what a voxel on a flat face of a large object sees along the face's normal)."""
    k = np.arange(-reach, reach + 1, dtype=float)
    g = np.exp(-(k**2) / (2 * sigma**2))
    g /= g.sum()
    inside = k >= 0
    mass = g[inside].sum()
    mean = (g[inside] * k[inside]).sum() / mass
    var = (g[inside] * k[inside] ** 2).sum() / mass - mean**2
    return mass, mean, var


def test_descriptors_on_a_face_and_along_a_tube_match_direct_sums():
    sigma, reach = 3.0, 9
    labels = np.zeros((48, 48, 64), np.int32)
    labels[4:44, 4:44, 20:] = 1  # a block whose face x = 20 is far from its other faces
    labels[30:33, 10:13, :15] = 2  # a 3 x 3 bar along x, apart from the block
    d = local_shape_descriptors(labels, sigma)
    assert d.shape == (LSD_CHANNELS,) + labels.shape and d.dtype == np.float32
    assert not d[:, labels == 0].any()  # background stays 0
    mass, mean, var = half_gaussian_moments(sigma, reach)
    face = d[:, 24, 24, 20]
    assert face[2] == pytest.approx(mean / (2 * sigma) + 0.5, abs=1e-4)  # offset into the block, along x
    assert face[0] == pytest.approx(0.5, abs=1e-4) and face[1] == pytest.approx(0.5, abs=1e-4)
    assert face[5] == pytest.approx(var / sigma**2, abs=1e-4)  # variance along the normal
    assert face[3] == pytest.approx(face[4], abs=1e-6)  # the two in-plane variances agree
    assert face[9] == pytest.approx(mass, abs=1e-4)
    np.testing.assert_allclose(face[6:9], 0.5, atol=1e-4)  # no covariance on an axis-aligned face
    bar = d[:, 31, 11, 7]  # the bar's middle: long along x, 3 voxels across
    assert bar[5] > 0.5 and bar[3] < 0.1 and bar[4] < 0.1  # elongated along x
    # across a 3-voxel bar the variance is that of {-1, 0, 1} under the Gaussian weights
    w = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma**2))
    assert bar[3] * sigma**2 == pytest.approx((w * [1, 0, 1]).sum() / w.sum(), abs=1e-4)


def test_flipped_and_transposed_descriptors_are_those_of_the_flipped_and_transposed_labels():
    """The augmentation of a patch's descriptors (flips change the signs of one offset and two covariances,
    transposes permute the channels) equals recomputing them on the augmented labels."""
    rng = np.random.default_rng(3)
    labels = np.zeros((20, 24, 28), np.int32)
    for i in range(1, 7):
        c = rng.integers(4, 16, 3)
        labels[c[0] - 3:c[0] + 4, c[1] - 2:c[1] + 6, c[2] - 4:c[2] + 9] = i
    labels[2:18, 3:5, 3:5] = 7
    labels[np.eye(20, 24, dtype=bool)[:, :, None] & (np.arange(28) < 6)] = 8  # a diagonal sheet: covariances
    d = local_shape_descriptors(labels, 2.5)
    assert np.abs(d[6:9][:, labels > 0] - 0.5).max() > 0.05  # something to permute
    for ax in range(3):
        np.testing.assert_allclose(flip_descriptors(d, ax),
                                   local_shape_descriptors(np.ascontiguousarray(np.flip(labels, ax)), 2.5), atol=1e-5)
    for perm in ((1, 0, 2), (2, 0, 1), (0, 2, 1), (1, 2, 0)):
        np.testing.assert_allclose(transpose_descriptors(d, perm),
                                   local_shape_descriptors(np.ascontiguousarray(labels.transpose(perm)), 2.5),
                                   atol=1e-5)


def test_lsd_target_is_the_whole_volume_descriptor_and_training_runs(tmp_path):
    """The sampler's descriptor target (augmentation off) is the whole volume's descriptors on the output box;
    training with --lsd-weight adds a head the saved model keeps, and inference still gives affinities."""
    from xnh_stream.segment.predict import predict_affinities
    from xnh_stream.segment.train import PatchSampler, TrainConfig, train
    from xnh_stream.segment.unet import AffinityModel, UNet3D, UNetConfig

    rng = np.random.default_rng(0)
    labels = np.zeros((32, 40, 40), np.uint32)
    for i in range(1, 9):
        c = rng.integers(6, 34, 3)
        labels[max(c[0] - 8, 0):c[0] + 6, c[1] - 5:c[1] + 7, c[2] - 6:c[2] + 5] = i
    raw = (labels > 0).astype(np.float32) + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    vol = LabelledVolume(raw, labels, np.ones(labels.shape, bool), source="blocks")
    net = UNet3D(UNetConfig(num_fmaps=2, convs_per_level=1))
    norm = {"method": "percentile", "low": 1, "high": 99}
    whole = local_shape_descriptors(labels)
    sampler = PatchSampler([vol], net, norm, (16, 16, 16), seed=2, augment=False, lsd=True)
    for _ in range(3):
        start = sampler.rng.bit_generator.state  # replay the draw to know the patch's place
        x, aff, w, lsd, lsd_w = sampler.sample()
        sampler.rng.bit_generator.state = start
        k = sampler.rng.choice(1, p=sampler.weights)
        corner = [int(sampler.rng.integers(0, s - n + 1)) for s, n in zip(labels.shape, sampler.out_shape)]
        box = tuple(slice(a, a + n) for a, n in zip(corner, sampler.out_shape))
        assert k == 0 and lsd.shape == (LSD_CHANNELS,) + tuple(sampler.out_shape)
        np.testing.assert_allclose(lsd, whole[(slice(None),) + box], atol=1e-3)  # kept as float16
        np.testing.assert_array_equal(lsd_w[0], labels[box] > 0)
    cfg = TrainConfig(iterations=6, output_shape=(16, 16, 16), lr=1e-3, checkpoint_every=0, threads=1,
                      lsd_weight=5.0)
    model = train([vol], cfg, UNetConfig(num_fmaps=2, convs_per_level=1), out=tmp_path / "m.pt", progress=False)
    assert np.isfinite(model.record["loss_curve"][-1][1])
    loaded = AffinityModel.load(tmp_path / "m.pt")
    assert loaded.net.config.lsd_channels == LSD_CHANNELS and loaded.net.lsd_head is not None
    affs = predict_affinities(loaded, raw, device="cpu")
    assert affs.shape == (3,) + labels.shape and 0 <= affs.min() and affs.max() <= 1
