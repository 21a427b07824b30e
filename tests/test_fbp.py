"""FBP against analytic projections of disks / spheres and against astra-toolbox's CPU FBP."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.physics.fbp import (
    WINDOWS,
    FBPAccumulator,
    _backproject_numpy,
    backproject,
    backproject_many,
    fbp,
    filter_projection,
    padded_length,
    ramp_filter,
)
from xnh_stream.physics.cor import estimate_cor, estimate_cor_sinogram

# (x0, y0, z0, radius, value): spheres relative to the rotation axis / volume centre, voxel units.
SPHERES = [
    (0.0, 0.0, 0.0, 24.0, 1.0),
    (10.0, -6.0, 2.0, 7.0, 1.5),
    (-12.0, 9.0, -3.0, 5.0, -0.6),
    (4.0, 14.0, 1.0, 3.0, 2.0),
]


def _chord_integral(s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Antiderivative of the chord length ``2 sqrt(r^2 - s^2)`` of a disk of radius ``r``."""
    r = np.maximum(r, 1e-12)
    s = np.clip(s, -r, r)
    return s * np.sqrt(np.maximum(r * r - s * s, 0.0)) + r * r * np.arcsin(s / r)


def sphere_projections(spheres, thetas, nz: int, n_det: int, cor: float) -> np.ndarray:
    """Exact line integrals of uniform spheres, averaged over each detector pixel's width.

    Module convention: detector column ``j`` is at ``t = j - cor``; a centre ``(x0, y0)`` projects to
    ``t0 = x0 cos(theta) + y0 sin(theta)``; row ``z`` is at ``z - (nz - 1) / 2``.
    """
    t = np.arange(n_det) - cor
    z = np.arange(nz) - (nz - 1) / 2.0
    out = np.zeros((len(thetas), nz, n_det))
    for x0, y0, z0, radius, value in spheres:
        r = np.sqrt(np.maximum(radius**2 - (z - z0) ** 2, 0.0))[None, :, None]
        t0 = (x0 * np.cos(thetas) + y0 * np.sin(thetas))[:, None, None]
        out += value * (_chord_integral(t + 0.5 - t0, r) - _chord_integral(t - 0.5 - t0, r))
    return out.astype(np.float32)


def sphere_volume(spheres, nz: int, n: int) -> np.ndarray:
    """Voxel-centre samples of the spheres on the reconstruction grid ``[z, y, x]``."""
    c = np.arange(n) - (n - 1) / 2.0
    z = np.arange(nz) - (nz - 1) / 2.0
    vol = np.zeros((nz, n, n))
    for x0, y0, z0, radius, value in spheres:
        d2 = (z[:, None, None] - z0) ** 2 + (c[None, :, None] - y0) ** 2 + (c[None, None, :] - x0) ** 2
        vol += value * (d2 <= radius**2)
    return vol


# --------------------------------------------------------------------------------------------------
# Filter
# --------------------------------------------------------------------------------------------------
def test_ramp_filter_matches_abs_frequency_and_windows():
    n_det = 100
    length = padded_length(n_det)
    assert length >= 2 * n_det
    f = np.fft.rfftfreq(length)
    ramp = ramp_filter(n_det, "ram-lak")
    # Spatial discrete ramp: equal to |f| up to a small truncation term, positive at DC (no DC bias).
    assert np.max(np.abs(ramp - f)) < 2.0 / (np.pi**2 * length) * 2
    tail = 2.0 / np.pi**2 * sum(1.0 / k**2 for k in range(length // 2 + 1, 200000, 2))
    assert ramp[0] > 0 and abs(ramp[0] - tail) < 0.02 * ramp[0]
    nyq = ramp[-1]
    assert ramp_filter(n_det, "shepp-logan")[-1] == pytest.approx(nyq * 2 / np.pi, rel=1e-5)
    assert abs(ramp_filter(n_det, "cosine")[-1]) < 1e-6
    assert abs(ramp_filter(n_det, "hann")[-1]) < 1e-6
    assert ramp_filter(n_det, "hamming")[-1] == pytest.approx(0.08 * nyq, rel=1e-4)
    assert ramp_filter(n_det, "shepp-logan") is ramp_filter(n_det, "shepp-logan")  # cached
    with pytest.raises(ValueError, match="window"):
        ramp_filter(n_det, "parzen")


def test_filter_projection_is_convolution_with_spatial_ramp():
    """Filtering a delta gives the Kak & Slaney kernel itself (zero-padded, so no wrap-around)."""
    n_det = 64
    delta = np.zeros((3, n_det), np.float32)
    delta[:, 20] = 1.0
    out = filter_projection(delta, window="ram-lak")
    assert out.dtype == np.float32 and out.shape == (3, n_det)
    k = np.arange(n_det) - 20
    h = np.where(k == 0, 0.25, np.where(k % 2 == 1, -1.0 / (np.pi * np.maximum(np.abs(k), 1)) ** 2, 0.0))
    h[k % 2 == 0] = 0.0
    h[k == 0] = 0.25
    np.testing.assert_allclose(out[1], h, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        filter_projection(np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="padding"):
        filter_projection(delta, padding="mirror")


# --------------------------------------------------------------------------------------------------
# Reconstruction against analytic phantoms
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", WINDOWS)
def test_fbp_disk_value_and_position_with_off_centre_axis(window):
    n_det, nz, n_angles = 96, 3, 180
    cor = (n_det - 1) / 2 + 7.3
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    disk = [(10.0, -6.0, 0.0, 12.0, 0.8)]  # off-centre sphere; the middle row cuts it through its centre
    proj = sphere_projections(disk, thetas, nz, n_det, cor)
    rec = fbp(proj, thetas, cor=cor, n_out=80, window=window)
    assert rec.shape == (nz, 80, 80) and rec.dtype == np.float32
    c = np.arange(80) - 39.5
    r2 = (c[None, :] - 10.0) ** 2 + (c[:, None] + 6.0) ** 2
    sl = rec[nz // 2]  # the middle row passes through the sphere centre: a disk of radius 12
    r_mid = 12.0
    interior = sl[r2 < (r_mid - 3) ** 2]
    assert abs(interior.mean() - 0.8) < 0.02 * 0.8
    assert np.abs(interior - 0.8).max() < 0.08 * 0.8
    assert np.abs(sl[r2 > (r_mid + 4) ** 2]).max() < 0.1 * 0.8
    # Centroid lands at (x, y) = (10, -6) relative to the grid centre.
    w = np.clip(sl, 0, None) * (r2 < (r_mid + 4) ** 2)
    yy, xx = np.mgrid[0:80, 0:80] - 39.5
    assert (w * xx).sum() / w.sum() == pytest.approx(10.0, abs=0.05)
    assert (w * yy).sum() / w.sum() == pytest.approx(-6.0, abs=0.05)


def test_fbp_spheres_volume_and_360_scan():
    n_det, nz = 72, 8
    cor = (n_det - 1) / 2 - 3.6
    truth = sphere_volume(SPHERES, nz, n_det)
    th180 = np.linspace(0, np.pi, 120, endpoint=False)
    th360 = np.linspace(0, 2 * np.pi, 240, endpoint=False) + 0.01
    rec180 = fbp(sphere_projections(SPHERES, th180, nz, n_det, cor), th180, cor=cor)
    rec360 = fbp(sphere_projections(SPHERES, th360, nz, n_det, cor), th360, cor=cor)
    # Big sphere interior, away from the small ones: value 1 in both.
    inside = (truth == 1.0)
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(inside, iterations=3)
    for rec in (rec180, rec360):
        assert abs(rec[inside].mean() - 1.0) < 0.02
        corr = np.corrcoef(rec.ravel(), truth.ravel())[0, 1]
        assert corr > 0.95
    # 2 pi coverage with the same pi/N scaling: same reconstruction as pi coverage.
    assert np.abs(rec360 - rec180)[inside].max() < 0.05


def test_backproject_validates_inputs():
    out = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="rows"):
        backproject(np.zeros((3, 16), np.float32), 0.0, 7.5, out)
    with pytest.raises(ValueError, match="float32"):
        backproject(np.zeros((2, 16), np.float32), 0.0, 7.5, out.astype(np.float64))
    with pytest.raises(ValueError, match="finite"):
        backproject(np.zeros((2, 16), np.float32), np.nan, 7.5, out)
    with pytest.raises(ValueError, match="angles"):
        fbp(np.zeros((4, 2, 16)), np.zeros(3))
    with pytest.raises(ValueError, match="outside"):
        fbp(np.zeros((4, 2, 16)), np.zeros(4), cor=40.0)


def test_rays_off_the_detector_contribute_nothing():
    """A slice larger than the detector: voxels whose rays miss the detector at every angle stay 0."""
    n_det = 20
    filt = np.ones((1, n_det), np.float32)
    out = np.zeros((1, 64, 64), np.float32)
    backproject(filt, 0.0, (n_det - 1) / 2, out)  # theta = 0: t = x, detector covers |x| <= 10
    c = np.arange(64) - 31.5
    row = out[0, 10]
    assert np.all(row[np.abs(c) > 10.5] == 0)
    assert np.all(row[np.abs(c) < 9.5] == 1)


# --------------------------------------------------------------------------------------------------
# Compiled back-projector against the NumPy reference and a float64 one built on np.interp
# --------------------------------------------------------------------------------------------------
def _backproject_interp64(filtered, thetas, cor, n):
    """Independent float64 back-projection: ``np.interp`` on each detector row, extended by one zero
    column on each side (linear interpolation towards 0 within one pixel off the detector)."""
    n_angles, nz, n_det = filtered.shape
    x = np.arange(n) - (n - 1) / 2
    cols = np.arange(-1, n_det + 1, dtype=np.float64)
    out = np.zeros((nz, n, n))
    for a in range(n_angles):
        t = cor + x[None, :] * np.cos(thetas[a]) + x[:, None] * np.sin(thetas[a])
        for z in range(nz):
            row = np.concatenate([[0.0], filtered[a, z].astype(np.float64), [0.0]])
            out[z] += np.interp(t, cols, row, left=0.0, right=0.0)
    return out


@pytest.mark.parametrize(("nz", "n_det", "n", "cor"), [
    (3, 64, 64, 31.5),    # centred axis
    (2, 50, 70, 20.3),    # slice wider than the detector, off-centre axis
    (1, 33, 20, 17.0),    # slice narrower than the detector
    (2, 40, 41, 0.0),     # axis on the first column
])
def test_compiled_backprojection_matches_references(nz, n_det, n, cor):
    rng = np.random.default_rng(n_det)
    n_angles = 23
    filtered = rng.normal(size=(n_angles, nz, n_det)).astype(np.float32)
    thetas = rng.uniform(-np.pi, 2 * np.pi, n_angles)
    ref32 = np.zeros((nz, n, n), np.float32)
    for i in range(n_angles):
        _backproject_numpy(filtered[i], thetas[i], cor, ref32)
    exact = _backproject_interp64(filtered, thetas, cor, n)
    scale = np.abs(exact).max()
    many = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32), workers=2)
    one = np.zeros((nz, n, n), np.float32)
    for i in range(n_angles):
        assert backproject(filtered[i], thetas[i], cor, one) is one
    # float32 agreement with the NumPy reference; closer to float64 than that reference (exact index map)
    np.testing.assert_allclose(many, ref32, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(many, exact, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(one, many, rtol=0, atol=2e-6 * scale)
    # accumulates into what is there
    again = backproject_many(filtered, thetas, cor, many.copy(), workers=1)
    np.testing.assert_allclose(again, 2 * many, rtol=0, atol=4e-6 * scale)


def test_backproject_many_threads_and_chunks_do_not_change_the_result(monkeypatch):
    import xnh_stream.physics.backprojection as bpmod
    import xnh_stream.physics.fbp as fbpmod

    rng = np.random.default_rng(4)
    filtered = rng.normal(size=(37, 9, 48)).astype(np.float32)
    thetas = np.linspace(0, np.pi, 37, endpoint=False)
    base = backproject_many(filtered, thetas, 22.2, np.zeros((9, 48, 48), np.float32), workers=1)
    # tiny angle blocks, row chunks and per-call line tables: many loops, same sums
    monkeypatch.setattr(bpmod, "_BLOCK_BYTES_PER_SLICE", 1)
    monkeypatch.setattr(bpmod, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(bpmod, "_MIN_PARALLEL_UPDATES", 0)  # small work runs on 2 threads too
    monkeypatch.setattr(fbpmod, "_LINES_PER_CALL", 100)
    small = backproject_many(filtered, thetas, 22.2, np.zeros((9, 48, 48), np.float32), workers=2)
    np.testing.assert_allclose(small, base, rtol=0, atol=2e-6 * np.abs(base).max())
    import numba

    before = numba.get_num_threads()
    backproject_many(filtered, thetas, 22.2, np.zeros((9, 48, 48), np.float32), workers=1)
    assert numba.get_num_threads() == before  # restored after the call


@pytest.mark.parametrize(("nz", "cor"), [(37, 30.4), (16, 25.0), (5, 21.7)])
def test_stacked_kernel_equals_line_kernel_and_float64(monkeypatch, nz, cor):
    """Rows taken 16 at a time (vector lanes) give the line kernel's sums, whatever the block boundaries,
    segment length and angle blocks."""
    import xnh_stream.physics.backprojection as bpmod

    rng = np.random.default_rng(nz)
    n_det, n, n_angles = 56, 60, 29
    filtered = rng.normal(size=(n_angles, nz, n_det)).astype(np.float32)
    thetas = rng.uniform(0, 2 * np.pi, n_angles)
    exact = _backproject_interp64(filtered, thetas, cor, n)
    scale = np.abs(exact).max()
    stacked = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32), workers=2)
    monkeypatch.setattr(bpmod, "_STACK_SEGMENT", 13)  # segments end inside a block of 8 voxels
    monkeypatch.setattr(bpmod, "_STACK_MIN_ANGLES", 1)
    monkeypatch.setattr(bpmod, "_STACK_BLOCK_BYTES", 1)  # one angle per block
    monkeypatch.setattr(bpmod, "_CHUNK_BYTES", 1)  # one block of rows per chunk
    small = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32), workers=2)
    monkeypatch.setattr(bpmod, "_MIN_STACKED", 10**9)  # every line to the line kernel
    lines = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32), workers=2)
    np.testing.assert_allclose(stacked, exact, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(stacked, lines, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(small, lines, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize(("n", "segment"), [(150, 512), (150, 40), (11, 512), (8, 8)])
def test_register_blocked_kernel_matches_line_kernel_and_float64(monkeypatch, n, segment):
    """The register-blocked stacked kernel (8 voxels x 16 rows in registers over the angles, tiles of 16 lines,
    windows of 64 voxels, an overlapping last block when a line is not a multiple of 8) against the scalar line
    kernel and an independent float64 back-projection: slabs (tiles of lines sharing their rows) and the live
    slices' vertical lines (one line per block of rows: tiles of one), windows and segments ending anywhere."""
    import xnh_stream.physics.backprojection as bpmod
    from xnh_stream.physics.backprojection import backproject_lines

    rng = np.random.default_rng(n + segment)
    nz, n_det, n_angles, cor = 21, n + 6, 13, (n + 5) / 2 + 0.37
    filtered = rng.normal(size=(n_angles, nz, n_det)).astype(np.float32)
    thetas = rng.uniform(0, 2 * np.pi, n_angles)
    monkeypatch.setattr(bpmod, "_STACK_SEGMENT", segment)
    exact = _backproject_interp64(filtered, thetas, cor, n)
    scale = np.abs(exact).max()
    slab = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32))
    np.testing.assert_allclose(slab, exact, rtol=0, atol=1e-5 * scale)
    c = (n - 1) / 2
    y0 = 3
    zrow = np.arange(nz)  # the vertical slice volume[:, y0, :]: one line per row, 2 blocks of rows
    part = np.zeros((nz, n), np.float32)
    backproject_lines(filtered, thetas, cor, zrow, np.full(nz, -c), np.full(nz, y0 - c), (1.0, 0.0), part)
    np.testing.assert_allclose(part, exact[:, y0, :], rtol=0, atol=1e-5 * scale)
    monkeypatch.setattr(bpmod, "_MIN_STACKED", 10**9)  # every line to the line kernel
    lines = backproject_many(filtered, thetas, cor, np.zeros((nz, n, n), np.float32))
    np.testing.assert_allclose(slab, lines, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize(("nz", "n"), [(64, 40), (21, 33), (5, 10), (37, 17), (1, 12)])
def test_slab_line_groups_are_group_lines_of_the_slab(nz, n):
    """backproject_many hands its slab's groups to backproject_lines built directly: the same as sorted."""
    from xnh_stream.physics.backprojection import group_lines, slab_line_groups

    c = (n - 1) / 2
    zrow = np.repeat(np.arange(nz), n)
    yr = np.tile(np.arange(n) - c, nz)
    sorted_ = group_lines(zrow, np.full(zrow.size, -c), yr, np.ones(zrow.size), np.zeros(zrow.size), 16)
    direct = slab_line_groups(nz, n, 16)
    for field in ("block", "xr", "yr", "dx", "dy", "rows", "singles"):
        np.testing.assert_array_equal(getattr(direct, field), getattr(sorted_, field))


def test_vector_steps_compile_to_the_widest_fma_the_cpu_has():
    """The kernel's vector step (16 float32 lanes: two loads, a broadcast fraction, an FMA and an add) is one
    zmm FMA on an AVX-512 CPU, two ymm FMAs on AVX2 (checked on a small uncached function using the same step)."""
    import llvmlite.binding as llvm
    import numba

    from xnh_stream.physics._numba_kernels import _interp_step, vec_store_transposed, vec_zero

    @numba.njit(fastmath=True)
    def step(pf, t, res):
        a = _interp_step(vec_zero(), pf, t)
        vec_store_transposed(res, 0, 8, a, a, a, a, a, a, a, a)
        return res

    pf = np.zeros(64, np.float32)  # position 0: values 0..15, differences 2 (scaled by 2^-32, as stacked_pairs)
    pf[:16] = np.arange(16)
    pf[16:32] = 2.0 * 2.0**-32
    res = step(pf, np.uint64(1 << 31), np.zeros(128, np.float32))  # position 0.5
    np.testing.assert_array_equal(res.reshape(16, 8), np.repeat(np.arange(16, dtype=np.float32) + 1, 8).reshape(16, 8))
    asm = next(iter(step.inspect_asm().values()))
    features = llvm.get_host_cpu_features()
    if features.get("avx512f", False):
        assert "zmm" in asm and "vfmadd" in asm
    elif features.get("avx2", False):
        assert "ymm" in asm and "vfmadd" in asm


def test_register_blocked_kernel_validates():
    from xnh_stream.physics._numba_kernels import bp_stacked

    stacked = np.zeros((1, 2, 30, 2, 16), np.float32)
    args = (np.zeros(1, np.int64), np.zeros(1), np.zeros(1), np.ones(1), np.zeros(1), np.zeros((1, 16), np.int64))
    with pytest.raises(ValueError, match="at least 8 voxels"):
        bp_stacked(stacked, *args, 512, 16, np.ones(2), np.zeros(2), 5.0, np.zeros((16, 7), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        bp_stacked(stacked[..., ::2], *args, 512, 16, np.ones(2), np.zeros(2), 5.0, np.zeros((16, 9), np.float32))


def test_group_lines_covers_every_line_once():
    from xnh_stream.physics.backprojection import group_lines

    # rows 0..20 share two geometries; row 3 has a duplicate of the first; rows 30, 31 a lone geometry
    zrow = np.r_[np.arange(21), np.arange(21), 3, 30, 31]
    xr = np.r_[np.zeros(21), np.ones(21), 0.0, 5.0, 5.0]
    yr = np.zeros(zrow.size)
    dx, dy = np.ones(zrow.size), np.zeros(zrow.size)
    order = np.argsort(zrow, kind="stable")
    g = group_lines(zrow[order], xr[order], yr[order], dx[order], dy[order], stack=16, min_lines=4)
    members = g.rows[g.rows >= 0]
    covered = np.sort(np.r_[members, g.singles])
    np.testing.assert_array_equal(covered, np.arange(zrow.size))  # each line exactly once
    assert np.all(np.diff(g.block) >= 0)
    for k in range(g.block.size):  # members sit on their lane's row and share the group's geometry
        for j in np.flatnonzero(g.rows[k] >= 0):
            line = g.rows[k, j]
            assert zrow[order][line] == g.block[k] * 16 + j
            assert xr[order][line] == g.xr[k]
    # the lone geometry (2 lines) and the rows 16..20 of each geometry (5 lines) as groups of >= 4
    assert set(zrow[order][g.singles]) == {30, 31}


def test_backproject_many_validates():
    out = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="angles"):
        backproject_many(np.zeros((3, 2, 16), np.float32), [0.0, 1.0], 7.5, out)
    with pytest.raises(ValueError, match=r"\[n_angles, nz, n_det\]"):
        backproject_many(np.zeros((2, 16), np.float32), [0.0, 1.0], 7.5, out)
    with pytest.raises(ValueError, match="finite"):
        backproject_many(np.zeros((1, 2, 16), np.float32), [np.inf], 7.5, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        strided = np.zeros((2, 16, 32), np.float32)[:, :, ::2]
        backproject_many(np.zeros((1, 2, 16), np.float32), [0.0], 7.5, strided)


def test_numba_cache_falls_back_when_no_cache_location_is_writable(monkeypatch):
    """A read-only install: numba raises at decoration time; the kernel is then compiled uncached."""
    import numba

    from xnh_stream.physics import _numba_kernels

    calls = []
    real = numba.njit

    def fake_njit(*args, cache=False, **kw):
        calls.append(cache)
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, cache=cache, **kw)

    monkeypatch.setattr(numba, "njit", fake_njit)

    @_numba_kernels._jit()
    def twice(x):
        return 2 * x

    assert calls == [True, False] and twice(3) == 6


def test_accumulator_add_many_equals_add():
    rng = np.random.default_rng(2)
    proj = rng.normal(size=(11, 3, 32)).astype(np.float32)
    thetas = rng.uniform(0, np.pi, 11)
    idx = rng.permutation(11)
    one, many = FBPAccumulator(3, 32, cor=15.0), FBPAccumulator(3, 32, cor=15.0)
    for p, th, i in zip(proj, thetas, idx):
        one.add(p, th, int(i))
    many.add_many(proj[:4], thetas[:4], idx[:4])
    many.add_many(proj[4:], thetas[4:], idx[4:])
    assert many.counts == one.counts
    scale = np.abs(one.volume()).max()
    for a, b in zip(many.half_volumes(), one.half_volumes()):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale)
    with pytest.raises(ValueError, match="angles"):
        many.add_many(proj[:2], thetas[:3])
    # filtered once outside, and a correction (difference) that does not count as an angle
    pre = FBPAccumulator(3, 32, cor=15.0)
    noisy = proj + rng.normal(size=proj.shape).astype(np.float32)
    for p, q, th, i in zip(noisy, proj, thetas, idx):
        pre.add_filtered(filter_projection(p), th, int(i))
        pre.add_filtered(filter_projection(q - p), th, int(i), count=False)
    assert pre.counts == one.counts
    np.testing.assert_allclose(pre.volume(), one.volume(), rtol=0, atol=2e-5 * scale)


# --------------------------------------------------------------------------------------------------
# CuPy back-projector (runs only where CuPy sees a GPU)
# --------------------------------------------------------------------------------------------------
def _cupy_or_skip():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable GPU here
        pytest.skip(f"CuPy with a CUDA device is needed for the GPU back-projector "
                    f"({exc.__class__.__name__})")
    return cupy


def test_gpu_backprojection_matches_cpu_with_bounded_chunks():
    cp = _cupy_or_skip()
    from xnh_stream.physics.backprojection import backproject_slab_gpu

    rng = np.random.default_rng(9)
    filtered = rng.normal(size=(70, 5, 48)).astype(np.float32)
    thetas = rng.uniform(0, 2 * np.pi, 70)
    cpu = backproject_many(filtered, thetas, 20.7, np.zeros((5, 56, 56), np.float32))
    gpu = backproject_many(cp.asarray(filtered), thetas, 20.7, cp.zeros((5, 56, 56), cp.float32), xp=cp)
    scale = np.abs(cpu).max()
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=0, atol=1e-5 * scale)
    # chunks of one slice x a few angles (a 1 kB bound): same result
    small = backproject_slab_gpu(cp.asarray(filtered), thetas, 20.7, cp.zeros((5, 56, 56), cp.float32),
                                 max_bytes=1024)
    np.testing.assert_allclose(cp.asnumpy(small), cpu, rtol=0, atol=1e-5 * scale)


def test_gpu_fbp_matches_cpu_fbp():
    cp = _cupy_or_skip()
    n_det, nz, n_angles = 64, 3, 90
    cor = (n_det - 1) / 2 + 3.4
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    proj = sphere_projections(SPHERES[:2], thetas, nz, n_det, cor)
    cpu = fbp(proj, thetas, cor=cor)
    gpu = cp.asnumpy(fbp(cp.asarray(proj), thetas, cor=cor, xp=cp))
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4 * np.abs(cpu).max())


# --------------------------------------------------------------------------------------------------
# Accumulation
# --------------------------------------------------------------------------------------------------
def test_accumulator_equals_batch_any_order_and_halves_combine():
    n_det, nz, n_angles = 48, 4, 60
    cor = (n_det - 1) / 2 + 2.25
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    proj = sphere_projections(SPHERES[:2], thetas, nz, n_det, cor)
    ref = fbp(proj, thetas, cor=cor, n_out=40)
    scale = np.abs(ref).max()

    rng = np.random.default_rng(1)
    order = rng.permutation(n_angles)
    acc = FBPAccumulator(nz, n_det, n_out=40, cor=cor)
    for i in order:
        acc.add(proj[i], thetas[i], index=int(i))
    assert acc.n_added == n_angles and acc.counts == (30, 30)
    np.testing.assert_allclose(acc.volume(), ref, rtol=0, atol=1e-5 * scale)

    h0, h1 = acc.half_volumes()
    n0, n1 = acc.counts
    np.testing.assert_allclose((h0 * n0 + h1 * n1) / n_angles, acc.volume(), rtol=0, atol=1e-5 * scale)
    # Halves are the even / odd angle subsets, reconstructed with their own pi / N_half.
    ref_even = fbp(proj[0::2], thetas[0::2], cor=cor, n_out=40)
    np.testing.assert_allclose(h0, ref_even, rtol=0, atol=1e-5 * scale)
    # Without an index, the order of arrival decides the half.
    acc2 = FBPAccumulator(nz, n_det, n_out=40, cor=cor)
    for i in range(n_angles):
        acc2.add(proj[i], thetas[i])
    np.testing.assert_allclose(acc2.half_volumes()[1], acc.half_volumes()[1], rtol=0, atol=1e-5 * scale)
    # Pieces taken from the sums (what the live views read) equal the same pieces of the full copies.
    from xnh_stream.physics.xp import bin_volume

    for got, full in zip(acc.binned_halves(2), (h0, h1)):
        np.testing.assert_allclose(got, bin_volume(full, 2), rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(acc.binned_halves(1)[0], h0, rtol=0, atol=1e-6 * scale)
    assert acc.binned_halves(1)[0] is not acc._sums[0]  # never the live sums themselves
    np.testing.assert_allclose(acc.volume((slice(None), 17)), acc.volume()[:, 17], rtol=0, atol=1e-6 * scale)


def test_accumulator_batches_equal_one_angle_at_a_time():
    """Angles gathered in batches give the sums of angles back-projected one by one; whatever reads the
    volume back-projects what waits first."""
    n_det, nz, n_angles = 40, 18, 24
    rng = np.random.default_rng(7)
    proj = rng.normal(size=(n_angles, nz, n_det)).astype(np.float32)
    thetas = rng.uniform(0, np.pi, n_angles)
    one = FBPAccumulator(nz, n_det, cor=20.6)
    batched = FBPAccumulator(nz, n_det, cor=20.6, batch=5, max_wait_s=1e9)
    for acc in (one, batched):
        for i in range(n_angles):
            acc.add(proj[i], thetas[i], index=i)
        acc.replace(proj[3], 2 * proj[3], thetas[3], 3)  # a preview swapped for its final
        acc.add_filtered(filter_projection(proj[4]), thetas[4], index=4, count=False)
    assert one.waiting == 0 and batched.waiting == 1  # 26 back-projections: 5 batches of 5, 1 waits
    scale = np.abs(one.volume()).max()
    np.testing.assert_allclose(batched.volume(), one.volume(), rtol=0, atol=2e-6 * scale)
    assert batched.waiting == 0 and batched.counts == one.counts
    for a, b in zip(batched.half_volumes(), one.half_volumes()):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale)
    # a projection never waits longer than max_wait_s (checked at the next add)
    eager = FBPAccumulator(nz, n_det, cor=20.6, batch=100, max_wait_s=0.0)
    eager.add(proj[0], thetas[0])
    eager.add(proj[1], thetas[1])
    assert eager.waiting == 0
    with pytest.raises(ValueError, match="batch"):
        FBPAccumulator(nz, n_det, batch=0)


def test_accumulator_validates():
    acc = FBPAccumulator(2, 16)
    assert acc.cor == 7.5
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 15)), 0.0)
    with pytest.raises(ValueError, match="no projection"):
        acc.volume()
    acc.add(np.zeros((2, 16)), 0.0)
    with pytest.raises(ValueError, match="both halves"):
        acc.half_volumes()
    with pytest.raises(ValueError, match="window"):
        FBPAccumulator(2, 16, window="boxcar")


# --------------------------------------------------------------------------------------------------
# astra-toolbox as independent implementation
# --------------------------------------------------------------------------------------------------
def _astra_fbp(sino: np.ndarray, thetas: np.ndarray, n: int, cor: float, filter_type: str) -> np.ndarray:
    """astra-toolbox CPU FBP ('linear' projector) of a sinogram in our convention.

    Mapping: our ``t = x cos(theta) + y sin(theta)`` is astra's detector coordinate at angle
    ``-theta`` with the astra image equal to our ``[y, x]`` slice; astra's detector centre, column
    ``(n_det - 1) / 2``, is on the axis, and its CPU FBP only takes the plain 'parallel' geometry, so
    an (integer) off-centre axis is handled by moving the sinogram columns.
    """
    astra = pytest.importorskip("astra")
    n_det = sino.shape[1]
    offset = cor - (n_det - 1) / 2.0
    shift = int(round(offset))
    assert shift == offset, "only integer axis offsets are compared with astra"
    moved = np.zeros_like(sino)
    if shift >= 0:
        moved[:, : n_det - shift] = sino[:, shift:]
    else:
        moved[:, -shift:] = sino[:, : n_det + shift]
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, -thetas)
    pid = astra.create_projector("linear", proj_geom, vol_geom)
    sid = astra.data2d.create("-sino", proj_geom, moved)
    rid = astra.data2d.create("-vol", vol_geom)
    cfg = astra.astra_dict("FBP")
    cfg["ProjectorId"] = pid
    cfg["ProjectionDataId"] = sid
    cfg["ReconstructionDataId"] = rid
    cfg["FilterType"] = filter_type
    aid = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(aid)
        return astra.data2d.get(rid)
    finally:
        astra.algorithm.delete(aid)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)


@pytest.mark.parametrize(("cor_offset", "window", "astra_filter"), [
    (0.0, "ram-lak", "ram-lak"),
    (0.0, "shepp-logan", "shepp-logan"),
    (0.0, "hann", "hann"),
    (5.0, "ram-lak", "ram-lak"),
])
def test_fbp_agrees_with_astra_cpu(cor_offset, window, astra_filter):
    n_det, nz, n_angles = 96, 1, 150
    cor = (n_det - 1) / 2 + cor_offset
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    spheres = [(x * 1.2, y * 1.2, z, r * 1.2, v) for x, y, z, r, v in SPHERES]
    sino = sphere_projections(spheres, thetas, nz, n_det, cor)[:, 0, :]
    ours = fbp(sino, thetas, cor=cor, window=window)
    theirs = _astra_fbp(sino, thetas, n_det, cor, astra_filter)
    c = np.arange(n_det) - (n_det - 1) / 2
    mask = (c[None, :] ** 2 + c[:, None] ** 2) < (n_det / 2 - abs(cor_offset) - 4) ** 2
    a, b = ours[mask], theirs[mask]
    assert np.corrcoef(a, b)[0, 1] > 0.99
    scale = float(a @ b / (b @ b))
    assert scale == pytest.approx(1.0, abs=0.03)


# --------------------------------------------------------------------------------------------------
# Centre of rotation
# --------------------------------------------------------------------------------------------------
CUBE_SPHERES = [
    (0.0, 0.0, 0.0, 20.0, 0.3),
    (9.0, -5.0, 4.0, 6.0, 1.0),
    (-11.0, 7.0, -6.0, 4.0, 0.8),
    (3.0, 12.0, 7.0, 3.0, 1.5),
    (-6.0, -12.0, -2.0, 5.0, 0.6),
    (14.0, 6.0, -9.0, 3.5, 1.2),
]


@pytest.mark.parametrize("theta0", [0.0, 0.7, 2.1])
def test_estimate_cor_from_180_pair(theta0):
    n_det, nz = 96, 32
    cor = (n_det - 1) / 2 + 7.3
    rng = np.random.default_rng(int(theta0 * 10))
    p = sphere_projections(CUBE_SPHERES, np.array([theta0, theta0 + np.pi]), nz, n_det, cor)
    p += rng.normal(0, 0.05 * p.max(), p.shape).astype(np.float32)
    est = estimate_cor(p[0], p[1])
    assert abs(est - cor) < 0.1
    # 1-D profiles (one row) work too, with a looser bound.
    assert abs(estimate_cor(p[0, nz // 2], p[1, nz // 2]) - cor) < 0.3


def test_estimate_cor_validates():
    with pytest.raises(ValueError, match="shape"):
        estimate_cor(np.zeros((4, 32)), np.zeros((4, 31)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_cor(np.full((4, 32), np.nan), np.zeros((4, 32)))


@pytest.mark.parametrize("offset", [7.3, -4.6])
def test_estimate_cor_sinogram_without_180_pairs(offset):
    n_det, n_angles = 80, 151  # 151 angles over [0, pi): no two are 180 degrees apart
    cor = (n_det - 1) / 2 + offset
    thetas = np.linspace(0, np.pi, n_angles, endpoint=False) + 0.013
    rng = np.random.default_rng(5)
    sino = sphere_projections(CUBE_SPHERES, thetas, 1, n_det, cor)[:, 0, :]
    sino += rng.normal(0, 0.02 * sino.max(), sino.shape).astype(np.float32)
    est = estimate_cor_sinogram(sino, thetas, search_px=12)
    assert abs(est - cor) < 0.1


def test_stacked_pairs_are_the_padded_pairs_rows_last():
    from xnh_stream.physics.backprojection import padded_pairs, stacked_pairs

    rng = np.random.default_rng(11)
    filtered = rng.normal(size=(3, 21, 17)).astype(np.float32)  # 21 rows: a second, partial block of 16
    stacked = stacked_pairs(filtered, 4, 6, 16, slope_scale=0.5)
    pairs = padded_pairs(filtered, 4, 6, slope_scale=0.5)  # [nz, n_angles, length, 2]
    assert stacked.shape == (2, 3, 27, 2, 16)
    for z in range(21):
        np.testing.assert_array_equal(stacked[z // 16, :, :, :, z % 16], pairs[z])
    assert not stacked[1, :, :, :, 5:].any()  # rows beyond the last are zeros
