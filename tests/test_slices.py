"""Full-resolution live slices: equal to the slices of the full FBP volume, updated angle by angle."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_fbp import SPHERES, sphere_projections
from xnh_stream.physics.fbp import FBPAccumulator, filter_projection
from xnh_stream.physics.slices import OrthoSlices, slice_from_projections

NZ, NDET, NOUT, NANG = 10, 44, 40, 50
COR = (NDET - 1) / 2 + 2.7
THETAS = np.linspace(0, np.pi, NANG, endpoint=False)
PROJ = sphere_projections(SPHERES[:3], THETAS, NZ, NDET, COR)


@pytest.fixture(scope="module")
def volume():
    acc = FBPAccumulator(NZ, NDET, n_out=NOUT, cor=COR)
    acc.add_many(PROJ, THETAS)
    return acc.volume()


def _views(vol, point):
    z0, y0, x0 = point
    return {"z": vol[z0], "y": vol[:, y0, :], "x": vol[:, :, x0]}


def test_slices_after_all_angles_equal_the_volume_slices(volume):
    point = (3, 13, 27)
    live = OrthoSlices(NZ, NDET, n_out=NOUT, cor=COR, point=point, workers=2)
    for i in np.random.default_rng(0).permutation(NANG):  # any order of arrival
        live.add(PROJ[i], THETAS[i])
    assert live.counts == {"z": NANG, "y": NANG, "x": NANG}
    scale = np.abs(volume).max()
    got = live.slices()
    for axis, ref in _views(volume, point).items():
        assert got[axis].shape == ref.shape
        np.testing.assert_allclose(got[axis], ref, rtol=0, atol=1e-5 * scale)


def test_set_point_keeps_unmoved_slices_and_refills_moved_ones(volume):
    filtered = filter_projection(PROJ)
    live = OrthoSlices(NZ, NDET, n_out=NOUT, cor=COR)
    assert live.point == (NZ // 2, NOUT // 2, NOUT // 2)
    live.add_filtered(filtered[:20], THETAS[:20])
    live.set_point(NZ // 2, 7, NOUT // 2)  # only the y slice moves: it restarts empty
    assert live.counts == {"z": 20, "y": 0, "x": 20}
    assert set(live.slices()) == {"z", "x"}
    with pytest.raises(ValueError, match="no projection"):
        live.slice("y")
    live.add_filtered(filtered[20:], THETAS[20:])
    live.set_point(1, 7, 30, filtered=filtered, thetas=THETAS)  # z and x move, recomputed from all angles
    live.set_point(1, 9, 30, filtered=filtered, thetas=THETAS)  # y moves, recomputed
    assert live.counts == {"z": NANG, "y": NANG, "x": NANG}
    scale = np.abs(volume).max()
    for axis, ref in _views(volume, (1, 9, 30)).items():
        np.testing.assert_allclose(live.slice(axis), ref, rtol=0, atol=1e-5 * scale)


def test_on_demand_slice_and_correction_without_count(volume):
    filtered = filter_projection(PROJ)
    scale = np.abs(volume).max()
    for axis, index, ref in (("z", 6, volume[6]), ("y", 0, volume[:, 0]), ("x", NOUT - 1, volume[:, :, -1])):
        got = slice_from_projections(filtered, THETAS, axis, index, cor=COR, n_out=NOUT, workers=2)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)
    # a preview replaced by the final projection through its difference (FBP is linear)
    rng = np.random.default_rng(1)
    preview = PROJ + rng.normal(0, 0.3, PROJ.shape).astype(np.float32)
    live = OrthoSlices(NZ, NDET, n_out=NOUT, cor=COR, point=(4, 20, 11))
    live.add_filtered(filter_projection(preview), THETAS)
    live.add_filtered(filter_projection(PROJ - preview), THETAS, count=False)
    assert live.counts["z"] == NANG
    for axis, ref in _views(volume, (4, 20, 11)).items():
        np.testing.assert_allclose(live.slice(axis), ref, rtol=0, atol=2e-5 * scale)


def test_validation():
    live = OrthoSlices(4, 16)
    with pytest.raises(ValueError, match="outside"):
        live.set_point(4, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        live.add(np.zeros((4, 15)), 0.0)
    with pytest.raises(ValueError, match="angles"):
        live.add_filtered(np.zeros((2, 4, 16), np.float32), [0.0])
    with pytest.raises(ValueError, match="axis"):
        slice_from_projections(np.zeros((1, 4, 16), np.float32), [0.0], "w", 0)
    with pytest.raises(ValueError, match="outside"):
        OrthoSlices(4, 16, cor=30.0)
