"""Running FSC: resolution improves as angles arrive; binned and region estimates agree with the full one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.physics.fbp import FBPAccumulator
from xnh_stream.physics.fsc import half_volume_resolution
from xnh_stream.physics.projector import ParallelProjector
from xnh_stream.quality.fsc import RunningFSC, bin_volume, central_region


def _phantom(nz=16, n=64, seed=1):
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal((nz, n, n)), 1.2)
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    v *= (np.hypot(yy, xx) < 0.4 * n)[None]
    return (v / v.std()).astype(np.float32)


def test_running_fsc_resolution_decreases_as_the_fraction_of_angles_grows():
    n_angles, n = 192, 64
    vol = _phantom(n=n)
    proj = ParallelProjector(vol, n_det=n)
    rng = np.random.default_rng(7)
    acc = FBPAccumulator(vol.shape[0], n)
    run = RunningFSC(voxel_m=50e-9, bin_factor=2, region_px=32)
    thetas = np.arange(n_angles) * np.pi / n_angles
    clean = [proj(t).reshape(vol.shape[0], n) for t in thetas]
    scale = np.std(clean[0])
    marks = {n_angles // 8, n_angles // 4, n_angles // 2, n_angles}
    # Interlaced acquisition (eight passes over 180 degrees, bit-reversed): every fraction covers the whole
    # range. (In a sequential scan a fraction is a wedge of angles, whose half-volumes agree with each
    # other however few angles there are: the monitor reports the angular coverage next to the FSC.)
    order = np.concatenate([np.arange(p, n_angles, 8) for p in (0, 4, 2, 6, 1, 5, 3, 7)])
    for i, j in enumerate(order):  # the FSC half is the parity of the arrival index, as in the stream
        acc.add(clean[j] + rng.normal(0, 1.5 * scale, clean[j].shape).astype(np.float32), thetas[j], index=i)
        if i + 1 in marks:
            run.update((i + 1) / n_angles, i + 1, halves=acc.half_volumes())
    res = [p.resolution_m for p in run.history]
    binned = [p.binned_resolution_m for p in run.history]
    print("\nfraction", [p.fraction_angles for p in run.history], "resolution nm", [round(r * 1e9) for r in res],
          "binned nm", [round(r * 1e9) for r in binned])
    assert all(a > b for a, b in zip(res, res[1:])), res
    assert res[0] > 1.5 * res[-1]
    # the binned whole-volume estimate follows the same trend and cannot beat its own voxel (2 x 50 nm)
    assert binned[0] > binned[-1] and min(binned) >= 100e-9 - 1e-15
    # the full-resolution estimate equals the plain FSC of the central region
    h0, h1 = acc.half_volumes()
    direct = half_volume_resolution(central_region(h0, 32), central_region(h1, 32), 50e-9).resolution_m
    assert run.history[-1].region_resolution_m == pytest.approx(direct)
    assert run.curves["region"]["freq_per_m"][-1] == pytest.approx(1 / (2 * 50e-9))


def test_bin_volume_is_a_block_mean_and_bad_input_is_refused():
    v = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    b = bin_volume(v, 2)
    assert b.shape == (2, 3, 4) and b[0, 0, 0] == pytest.approx(v[:2, :2, :2].mean())
    w = np.random.default_rng(0).normal(size=(7, 11, 10)).astype(np.float32)  # trailing voxels cut
    for f in (2, 3):
        n = [(s // f) * f for s in w.shape]
        ref = w[: n[0], : n[1], : n[2]].astype(np.float64).reshape(n[0] // f, f, n[1] // f, f, n[2] // f, f)
        np.testing.assert_allclose(bin_volume(w, f), ref.mean(axis=(1, 3, 5)), rtol=0, atol=1e-6)
    assert bin_volume(w, 1) is w  # nothing to do
    with pytest.raises(ValueError, match="3-D"):
        bin_volume(v[0], 2)
    with pytest.raises(ValueError, match="needs"):
        RunningFSC(1e-7).update(0.5, 10)
