"""Live views: the pieces each shard sends, merged on the driver, are those of the whole live volume."""

from __future__ import annotations

import numpy as np

from xnh_stream.live.views import merge_views, slab_views
from xnh_stream.physics.fbp import FBPAccumulator
from xnh_stream.physics.xp import bin_volume
from xnh_stream.quality.fsc import region_bounds


def _accumulators(rows_per_shard, n_det=32, n_angles=12, seed=3):
    rng = np.random.default_rng(seed)
    nz = sum(rows_per_shard)
    proj = rng.normal(size=(n_angles, nz, n_det)).astype(np.float32)
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    whole = FBPAccumulator(nz, n_det, cor=15.2)
    shards, r0 = [], 0
    for rows in rows_per_shard:
        shards.append((r0, FBPAccumulator(rows, n_det, cor=15.2, batch=4)))  # batches left waiting
        r0 += rows
    for i in range(n_angles):
        whole.add(proj[i], thetas[i], i)
        for r0, acc in shards:
            acc.add(proj[i, r0 : r0 + acc.n_slices], thetas[i], i)
    return whole, shards


def test_merged_pieces_equal_those_of_the_whole_volume():
    whole, shards = _accumulators([10, 14])
    nz, n = whole.n_slices, whole.n_out
    merged = merge_views([slab_views(acc, r0, nz, 2, 8) for r0, acc in reversed(shards)])  # any order
    h0, h1 = whole.half_volumes()
    vol = whole.volume()
    scale = np.abs(vol).max()
    for got, full in zip(merged["binned"], (h0, h1)):
        np.testing.assert_allclose(got, bin_volume(full, 2), rtol=0, atol=1e-5 * scale)
    region = region_bounds((nz, n, n), 8)
    np.testing.assert_allclose(merged["region"][0], h0[region], rtol=0, atol=1e-5 * scale)
    images = merged["images"]
    np.testing.assert_allclose(images["xy"], vol[nz // 2], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(images["xz"], vol[:, n // 2, :], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(images["yz"], vol[:, :, n // 2], rtol=0, atol=1e-5 * scale)


def test_pieces_left_out_on_request_and_an_empty_shard_empties_the_merge():
    whole, shards = _accumulators([10, 14])
    parts = [slab_views(acc, r0, whole.n_slices, 2, 8, binned=False, planes=False) for r0, acc in shards]
    merged = merge_views(parts)
    assert "binned" not in merged and "region" in merged and merged["images"] == {}
    assert merge_views(parts + [{"r0": 24, "empty": True}]) == {"images": {}}
