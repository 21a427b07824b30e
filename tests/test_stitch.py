"""Stitching overlapping scans (xnh_stream.stitch) against simulated scans of one phantom with known places."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.io.nxtomo import InputError, NXtomoWriter, read_sample_translation
from xnh_stream.io.omezarr import multiscale_levels, read_volume
from xnh_stream.simulate.overlap import OverlapSet, simulate_overlap
from xnh_stream.stitch import stitch_outputs
from xnh_stream.stitch.blockwise import Stitch, StitchSpec, run_stitch
from xnh_stream.stitch.scans import fov_distance, load_scan, sample_scan
from xnh_stream.stitch.solve import Link, solve_placement

FINE = 50e-9


def _corr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    a, b = a[m] - a[m].mean(), b[m] - b[m].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _common(sim: OverlapSet, res) -> np.ndarray:
    """Shift from the stitched frame to the true one (the stitch fixes positions only up to a common shift)."""
    placed = [s["placed"] for s in res.report["scans"]]
    corr = np.array([s["correction_m"] for s in res.report["scans"]])[placed]
    err = np.array([s.error_m for s in sim.scans])[placed]
    return (err - corr).mean(axis=0)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> tuple[OverlapSet, object]:
    """Four overlapping scans at 50 and 100 nm (2 x 2 in z and x) plus one that overlaps nothing, stage
    errors up to 20 finest voxels per axis; stitched once."""
    root = tmp_path_factory.mktemp("mosaic")
    sim = simulate_overlap(root / "scans", n_scans=4, voxels_m=(FINE, 2 * FINE), max_error_voxels=20, seed=2,
                           isolated=True)
    res = stitch_outputs([s.out for s in sim.scans], root / "stitched", block_shape=(64, 64, 64))
    return sim, res


@pytest.fixture(scope="module")
def column(tmp_path_factory) -> OverlapSet:
    """Two 50-nm scans one above the other (one seam across z)."""
    return simulate_overlap(tmp_path_factory.mktemp("column") / "scans", n_scans=2, voxels_m=(FINE,),
                            max_error_voxels=20, seed=5)


def test_offsets_recovered_within_half_a_finest_voxel(mosaic):
    sim, res = mosaic
    placed = [s["placed"] for s in res.report["scans"]]
    corr = np.array([s["correction_m"] for s in res.report["scans"]])[placed]
    err = np.array([s.error_m for s in sim.scans])[placed]
    rel_err = err - err.mean(axis=0)
    assert np.abs(rel_err).max() > 10 * FINE  # the injected errors are large (up to 20 voxels)
    miss = (corr - corr.mean(axis=0)) - rel_err
    print(f"\nstitch position errors (finest voxels): {np.round(miss / FINE, 3).tolist()}")
    assert np.abs(miss).max() < 0.5 * FINE
    used = [lk for lk in res.report["links"] if lk["used"]]
    assert len(used) >= 5 and res.report["residuals"]["max_m"] < FINE  # the 4 edges and a diagonal of the 2 x 2
    assert all(lk["reason"] for lk in res.report["links"] if not lk["used"])


def test_two_voxel_sizes_in_one_volume_on_the_finest_grid(mosaic):
    sim, res = mosaic
    voxels = {s["voxel_m"] for s in res.report["scans"] if s["placed"]}
    assert voxels == {FINE, 2 * FINE} and res.voxel_m == FINE
    mixed = [lk for lk in res.report["links"] if lk["used"] and lk["register_voxel_m"] == 2 * FINE]
    assert mixed  # pairs of a 50-nm and a 100-nm scan registered at 100 nm
    levels = multiscale_levels(res.volume)
    assert levels[0]["voxel_m"] == FINE and np.allclose(levels[0]["origin_m"], res.origin_m)
    assert np.allclose(levels[1]["origin_m"], res.origin_m + FINE / 2)  # centre of the first 2x2x2 block


def test_a_scan_that_overlaps_nothing_is_reported_not_placed(mosaic):
    sim, res = mosaic
    (iso,) = res.report["isolated"]
    far = sim.scans[-1]
    assert iso["name"] == far.name and "overlaps no other scan" in iso["reason"] and not iso["placed"]
    assert res.isolated == [far.name] and far.name not in res.placed
    lo = res.origin_m - FINE / 2
    hi = lo + np.asarray(res.shape) * FINE
    assert far.nominal_origin_m[0] > hi[0] or np.any(np.asarray(far.nominal_origin_m) > hi)  # not in the volume
    on_disk = json.loads((res.out / "stitch.json").read_text())
    assert on_disk["isolated"][0]["name"] == far.name


def test_stitched_volume_matches_the_phantom_at_least_as_well_as_each_scan(mosaic):
    """In each scan's region (its field of view less the edge band where it fades out), the stitched volume
    correlates with the phantom at least as well as the scan alone on the same grid with the same
    interpolation. The stitched grid continues one scan's grid; a scan interpolated alone off its grid gets
    its noise slightly smoothed, worth up to ~1e-3 of correlation, hence the tolerance."""
    sim, res = mosaic
    vol, voxel = read_volume(res.volume)
    truth = sim.render(res.origin_m + _common(sim, res), voxel, vol.shape)
    for i, s in enumerate(res.report["scans"]):
        if not s["placed"]:
            continue
        scan = load_scan(s["out"])
        shift = np.asarray(s["correction_m"])
        region = fov_distance(scan, shift, res.origin_m, voxel, vol.shape, "cylinder") > 4 * scan.voxel_m
        alone = sample_scan(scan, scan.level_for(voxel), shift, res.origin_m, voxel, vol.shape)
        c_st, c_one = _corr(vol, truth, region), _corr(alone, truth, region)
        print(f"\n{s['name']} ({s['voxel_m'] * 1e9:.0f} nm): stitched {c_st:.4f}, alone {c_one:.4f}")
        assert c_st >= c_one - 2e-3
        assert c_st > 0.85


def test_no_seam_in_the_difference_image_across_an_overlap(column, tmp_path):
    """The difference stitched - phantom, averaged over each z plane, is flat across the overlap (intensity
    offsets matched) and no larger in the overlap than beside it (places right). Without registration and
    intensity matching (nominal places, no offsets, a hard cut) the same image shows the step."""
    sims = column
    outs = [s.out for s in sims.scans]
    good = stitch_outputs(outs, tmp_path / "good", block_shape=(64, 64, 64))
    bad = stitch_outputs(outs, tmp_path / "bad", block_shape=(64, 64, 64), max_shift_m=1e-9, intensity="none",
                         include_isolated=True, blend_m=1e-9)
    assert bad.isolated and not good.isolated

    def profile(res):
        vol, voxel = read_volume(res.volume)
        truth = sims.render(res.origin_m + _common(sims, res), voxel, vol.shape)
        inside = np.zeros(vol.shape, bool)
        for s in res.report["scans"]:
            sc = load_scan(s["out"])
            inside |= fov_distance(sc, np.asarray(s["correction_m"]), res.origin_m, voxel, vol.shape) > 4 * FINE
        diff = np.where(inside, vol - truth, np.nan)
        return np.nanmean(diff, axis=(1, 2)), np.sqrt(np.nanmean(diff**2, axis=(1, 2))), float(truth[inside].std())

    def planes(res):  # z planes of the output: of the lower scan only, of the overlap, of the upper scan only
        z = sorted((np.asarray(sc["origin_m"])[0] - res.origin_m[0]) / FINE for sc in res.report["scans"])
        n = sims.scans[0].shape[0]
        lo_top, hi_bottom = int(np.ceil(z[1])), int(np.floor(z[0])) + n - 1
        return slice(4, lo_top - 2), slice(lo_top + 2, hi_bottom - 1), slice(hi_bottom + 2, -4)

    mean_g, rms_g, signal = profile(good)
    mean_b, _, _ = profile(bad)
    before, overlap, after = planes(good)
    step_g = abs(np.nanmean(mean_g[after]) - np.nanmean(mean_g[before])) / signal
    b_before, _, b_after = planes(bad)
    step_b = abs(np.nanmean(mean_b[b_after]) - np.nanmean(mean_b[b_before])) / signal
    jump_g = np.nanmax(np.abs(np.diff(mean_g[4:-4]))) / signal
    print(f"\nseam: step of the mean difference {step_g:.3f} (unregistered, unmatched: {step_b:.3f}) of the signal;"
          f" largest plane-to-plane jump {jump_g:.3f}; rms in the overlap {np.nanmax(rms_g[overlap]):.3g}, "
          f"beside it {np.nanmedian(rms_g[before]):.3g} / {np.nanmedian(rms_g[after]):.3g}")
    assert step_g < 0.05 and step_b > 4 * step_g
    assert jump_g < 0.05
    assert np.nanmax(rms_g[overlap]) < 1.1 * max(np.nanmedian(rms_g[before]), np.nanmedian(rms_g[after]))


def test_the_outer_slices_that_one_scan_covers_are_not_blank(column, tmp_path):
    """Where a single scan covers the output (its first and last slices: the trimmed edge of its field of
    view, with no other scan there) the stitched volume holds that scan's values, not zeros (the outer two
    slices were blank)."""
    res = stitch_outputs([s.out for s in column.scans], tmp_path / "st", block_shape=(64, 64, 64))
    vol, voxel = read_volume(res.volume)
    lowest = min(res.report["scans"], key=lambda sc: sc["origin_m"][0])
    scan = load_scan(lowest["out"])
    shift = np.asarray(lowest["correction_m"])
    plane = np.asarray(res.origin_m) + [0.0, 0.0, 0.0]  # the output's first slice
    alone = sample_scan(scan, 0, shift, plane, voxel, (1,) + vol.shape[1:])[0]
    inside = fov_distance(scan, shift, plane, voxel, (1,) + vol.shape[1:])[0] > 0
    assert inside.sum() > 100
    first = vol[0]
    assert np.count_nonzero(first[inside]) == inside.sum()
    assert _corr(first, alone, inside) > 0.99


@pytest.mark.parametrize("gap", [5, 12])
def test_scans_a_few_voxels_apart_are_not_linked(gap, tmp_path):
    """Two scans that do not overlap (``gap`` voxels apart along z), within the stage error of each other:
    the registration finds some peak anyway (0.2-0.43 on this tissue, 9-44 voxels off), and it must not
    become a link (it did: min_ncc was 0.2); the report says why and how unique the peak was."""
    from xnh_stream.simulate.overlap import OverlapScan
    from xnh_stream.stitch.register import register_pair

    voxel, nz, n = 100e-9, 48, 64
    rng = np.random.default_rng(gap)
    scans = []
    for k in range(2):
        true = np.array([k * (nz + gap), 0.0, 0.0]) * voxel
        scans.append(OverlapScan(f"s{k}", voxel, (nz, n, n), tuple(true), tuple(true - rng.uniform(-3, 3, 3) * voxel)))
    sim = simulate_overlap(tmp_path / "scans", scans=scans, seed=gap)
    a, b = (load_scan(s.out) for s in sim.scans)
    res = register_pair(a, b, 0, 1)
    assert not res.ok and res.reason and res.peak_ratio > 0
    with pytest.raises(InputError, match="no two scans overlap and register"):
        stitch_outputs([s.out for s in sim.scans], tmp_path / "st", block_shape=(64, 64, 64))


def test_thin_overlaps_along_the_axis_register_to_a_tenth_of_a_voxel(tmp_path):
    """Three 64-slice scans one above the other, overlapping by 35 % (22 slices), stage errors of 2.5-3.4
    voxels along z and 1.3-3.7 across (the held-out case of issue 20, where the solved places sat 0.55-0.69
    voxel off along z): every pair's shift within 0.15 voxel of the truth on every axis. The fine step's common
    taper pulls each step short; stopped after three 1/20-voxel steps, these pairs were up to 0.64 voxel off
    (seed 2: x, seed 3: 0.28 along z)."""
    from xnh_stream.simulate.overlap import OverlapScan
    from xnh_stream.stitch.register import register_pair

    voxel, nz, n = 100e-9, 64, 64
    misses = []
    for seed in (2, 3):
        rng = np.random.default_rng(seed)
        scans = []
        for k in range(3):
            true = np.array([k * 0.65 * nz, 0.0, 0.0]) * voxel
            err = np.concatenate([rng.uniform(2.5, 3.4, 1) * rng.choice([-1, 1]),
                                  rng.uniform(1.3, 3.7, 2) * rng.choice([-1, 1], 2)])
            scans.append(OverlapScan(f"s{k}", voxel, (nz, n, n), tuple(true), tuple(true - err * voxel)))
        sim = simulate_overlap(tmp_path / f"seed{seed}", scans=scans, seed=seed)
        loaded = [load_scan(s.out) for s in sim.scans]
        for i in (0, 1):
            res = register_pair(loaded[i], loaded[i + 1], i, i + 1)
            truth = np.asarray(sim.scans[i + 1].error_m) - np.asarray(sim.scans[i].error_m)
            assert res.ok, res.reason
            misses.append((np.asarray(res.shift_m) - truth) / voxel)
    print(f"\nthin-overlap pair misses (voxels, z y x): {np.round(misses, 3).tolist()}")
    assert np.abs(misses).max() < 0.15


def _blob_pin(shape: tuple[int, int, int], radius_px: float, fraction: float, seed: int):
    """A pin in air of radius ``radius_px`` filled with scikit-image's binary blobs (features about ``fraction``
    of the longest side): a texture the tissue simulator does not make."""
    from skimage.data import binary_blobs

    from xnh_stream.simulate.phantom import Phantom

    nz, n, _ = shape
    blobs = binary_blobs(max(shape), blob_size_fraction=fraction, n_dim=3, volume_fraction=0.4, rng=seed)
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    sample = np.broadcast_to(np.hypot(yy, xx) <= radius_px, shape).copy()
    delta = np.where(sample, np.where(blobs[:nz, :n, :n], 1.0, 0.3), 0.0).astype(np.float32) * 1e-6
    none = np.zeros(shape, bool)
    return Phantom(delta=delta, beta=delta / 100, labels=sample.astype(np.uint32), membrane=none, mito=none,
                   nucleus=none, sample=sample, material=np.zeros(shape, np.uint8), voxel_m=100e-9, energy_kev=17.0,
                   cell_ids=(1,), material_names=())


def _tilted_pin_pair(tmp_path: Path, nx: int, ny: int, overlap: int, seed: int, tilt_px: float,
                     blobs: float | None = None):
    """Two outputs of a pin in air (radius 0.44 nx; neural tissue, or binary blobs of size ``blobs``) tilted by
    ``tilt_px`` voxels over its length (towards 30 degrees from x), one above the other with ``overlap`` rows in
    common, stage errors up to 5 voxels; the pair's true shift (voxels)."""
    from xnh_stream.simulate.overlap import OverlapScan, bend_phantom
    from xnh_stream.simulate.phantom import make_neural_phantom

    voxel = 100e-9
    nz, n = 2 * ny - overlap + 8, nx + 8
    slope = np.rint(np.linspace(0, tilt_px, nz)[:, None] * np.array([0.5, 0.866])).astype(int)
    straight = (make_neural_phantom((nz, n, n), voxel_m=voxel, seed=seed, sample_radius_px=0.44 * nx)
                if blobs is None else _blob_pin((nz, n, n), 0.44 * nx, blobs, seed))
    pin = bend_phantom(straight, slope)
    rng = np.random.default_rng(seed)
    scans = []
    for k, z in enumerate((4, 4 + ny - overlap)):
        oy, ox = slope[z + ny // 2]
        true = np.array([z, 4 + oy, 4 + ox], float) * voxel
        scans.append(OverlapScan(f"s{k}", voxel, (ny, nx, nx), tuple(true),
                                 tuple(true - rng.uniform(-5, 5, 3) * voxel)))
    sim = simulate_overlap(tmp_path / f"pin{seed}", scans=scans, phantom=(pin, (0.0, 0.0, 0.0)), seed=seed,
                           offset=0.0, noise=0.1)
    return [load_scan(sc.out) for sc in sim.scans], (scans[1].error_m - scans[0].error_m) / voxel


def test_a_tilted_pin_in_air_registers_along_its_axis(tmp_path):
    """A pin in air seen by two scans: its outline correlates along the pin axis whatever the shift along it
    (a ridge), and the ridge's highest point wanders with the overlap's size. On the bent leg
    (bench/bench_leg.py) 7 of 11 neighbour pairs failed this way (fine step 20-30 voxels off along z, "no
    stable peak"); these three pairs (26-row overlaps of 128 x 64 scans, the pin tilted by 30 voxels over
    its length) were all refused by the previous registration. Now: the coarse correlation on high-passed
    scans, its best places followed down a pyramid to the registration voxel, the best there refined: within
    0.15 voxel on every axis, no rival (ambiguity < 0.2). On 12-row overlaps of a 64 x 32 pin the overlap
    cannot tell the places along the ridge apart: the best place is 9-22 voxels off (as before) and the pair
    says so (ambiguity > 0.75); refused where the caller asks (``max_ambiguity``; not the default: right
    matches of 11-row overlaps of the leg gave 0.79-0.87 too)."""
    from xnh_stream.stitch.register import RegisterParams, register_pair

    for seed in (1, 2, 3):
        (a, b), truth = _tilted_pin_pair(tmp_path, 128, 64, 26, seed, 30.0)
        res = register_pair(a, b, 0, 1)
        assert res.ok, (seed, res.reason)
        assert np.abs(np.asarray(res.shift_m) / 100e-9 - truth).max() < 0.15, (seed, res.shift_m, truth)
        assert res.ambiguity < 0.2
    (a, b), truth = _tilted_pin_pair(tmp_path / "thin", 64, 32, 12, 1, 16.0)
    res = register_pair(a, b, 0, 1)
    assert res.ambiguity > 0.75 and np.abs(np.asarray(res.shift_m) / 100e-9 - truth).max() > 5
    strict = register_pair(a, b, 0, 1, RegisterParams(max_ambiguity=0.75))
    assert not strict.ok and "ambiguous" in strict.reason


def test_registration_on_a_texture_the_tissue_simulator_does_not_make(tmp_path):
    """The same kind of pair filled with binary blobs (scikit-image) instead of simulated tissue: smooth blobs
    (0.4 of the side, ~50 voxels) in a tilted pin, where the previous registration was accepted 2.4 voxels off,
    and fine blobs (0.05) in a straight one. Measured with blobs of 0.05-0.4, pin or wide, tilted or not: within
    0.17 voxel (6 pairs)."""
    from xnh_stream.stitch.register import register_pair

    for fraction, tilt, seed in ((0.4, 30.0, 1), (0.05, 0.0, 4)):
        (a, b), truth = _tilted_pin_pair(tmp_path / f"blobs{seed}", 128, 64, 26, seed, tilt, blobs=fraction)
        res = register_pair(a, b, 0, 1)
        assert res.ok, res.reason
        assert np.abs(np.asarray(res.shift_m) / 100e-9 - truth).max() < 0.25, (fraction, res.shift_m, truth)


def test_an_inconsistent_link_is_dropped_and_its_residual_reported():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1e-6, (4, 3))
    truth -= truth.mean(axis=0)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)]
    links = [Link(a, b, truth[b] - truth[a] + rng.normal(0, 2e-9, 3)) for a, b in pairs]
    links[4].shift_m = links[4].shift_m + np.array([0.0, 1.5e-6, 0.0])  # a wrong peak
    placed = solve_placement(4, links, tolerance_m=50e-9)
    assert [lk.used for lk in links] == [True, True, True, True, False, True]
    assert "inconsistent" in links[4].reason and links[4].residual_m > 1e-6
    assert np.abs(placed.corrections_m - truth).max() < 10e-9 and placed.max_residual_m < 10e-9
    assert placed.groups == [[0, 1, 2, 3]] and placed.alone == []


def test_links_between_scans_that_do_not_overlap_nominally_are_never_used():
    """A chain of 8 scans along a pin in air (issue 20): every pair two apart is nominally 10 rows apart and
    registered at a wrong shift of 18-37 voxels with a weight as high as the neighbours'; the solve follows the
    neighbours. Where such a link would be the one connection of two parts of the chain, the parts stay apart
    (reported) rather than placed by it."""
    rng = np.random.default_rng(1)
    voxel, n = 100e-9, 8
    truth = rng.uniform(-5, 5, (n, 3)) * voxel
    truth -= truth.mean(axis=0)
    links = [Link(i, i + 1, truth[i + 1] - truth[i] + rng.normal(0, 0.02 * voxel, 3), 1.0, nominal_overlap_m=11 * voxel)
             for i in range(n - 1)]
    wrong = [Link(i, i + 2, truth[i + 2] - truth[i] + np.array([rng.uniform(18, 37) * voxel, 0, 0]), 1.2,
                  nominal_overlap_m=-10 * voxel) for i in range(n - 2)]
    placed = solve_placement(n, links + wrong, tolerance_m=voxel)
    assert all(lk.used for lk in links) and not any(lk.used for lk in wrong)
    assert all("nominal places 1000 nm apart" in lk.reason for lk in wrong)
    assert np.abs(placed.corrections_m - truth).max() < 0.1 * voxel and placed.groups == [list(range(n))]
    # the same chain without the link 3-4 (no stable peak): the gap link 2-4 would join the halves; they stay two
    for lk in links + wrong:
        lk.used, lk.reason = True, ""
    split = [lk for lk in links if (lk.a, lk.b) != (3, 4)] + wrong
    placed = solve_placement(n, split, tolerance_m=voxel)
    assert placed.groups == [[0, 1, 2, 3], [4, 5, 6, 7]] and not any(lk.used for lk in wrong)


def test_resumes_after_an_interrupted_run(column, tmp_path):
    outs = [s.out for s in column.scans]
    spec = StitchSpec(str(tmp_path / "run"), [str(o) for o in outs], block_shape=(64, 64, 64))
    seen: list[tuple[str, int]] = []

    def crash_after_three(stage: str, done: int, total: int) -> None:
        seen.append((stage, total))
        if stage == "fuse" and done == 3:
            raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        run_stitch(spec, progress=crash_after_three)
    st = Stitch.prepare(spec)
    n_blocks = len(st.blocks(0))
    assert len(st.pending("fuse")) == n_blocks - 3 and not st.pending("register") and st.solved
    resumed: list[tuple[str, int]] = []
    run_stitch(spec, progress=lambda stage, done, total: resumed.append((stage, total)))
    assert ("register", 1) not in resumed and ("fuse", n_blocks - 3) in resumed  # only the rest was done
    assert Stitch.prepare(spec).finished()
    fresh = run_stitch(StitchSpec(str(tmp_path / "fresh"), spec.inputs, block_shape=(64, 64, 64)))
    np.testing.assert_array_equal(read_volume(tmp_path / "run" / "volume.ome.zarr")[0],
                                  read_volume(fresh.out / "volume.ome.zarr")[0])
    other = Stitch.prepare(StitchSpec(spec.out, spec.inputs, block_shape=(128, 128, 128)))
    assert not other.solved and other.pending("register") == list(range(len(other.pairs)))  # started afresh


def test_peak_memory_is_bounded_by_the_block_not_the_output(column, tmp_path):
    """A stitch onto a 20-nm grid whose output (float32) is several times the memory it is allowed: the
    traced peak of the whole run stays under a quarter of the output."""
    spec = StitchSpec(str(tmp_path / "fine"), [str(s.out) for s in column.scans], voxel_m=20e-9,
                      block_shape=(64, 64, 64))
    tracemalloc.start()
    st = run_stitch(spec)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    nbytes = int(np.prod(st.plan.shape)) * 4
    print(f"\nstitch output {nbytes / 2**20:.0f} MiB ({st.plan.shape}), {len(st.blocks(0))} blocks: "
          f"peak traced {peak / 2**20:.1f} MiB")
    assert nbytes > 64 * 2**20 and peak < nbytes / 4


def test_sample_translation_read_from_nxtomo_matches_the_nxtomo_package(tmp_path):
    nxtomo = pytest.importorskip("nxtomo")
    import pint

    ureg = pint.get_application_registry()
    nx = nxtomo.NXtomo()
    n = 5
    nx.instrument.detector.data = np.zeros((n, 4, 4), np.uint16)
    nx.instrument.detector.image_key_control = np.array([2, 1, 0, 0, 0])
    nx.sample.rotation_angle = np.linspace(0, 90, n) * ureg.degree
    nx.sample.x_translation = np.array([9.0, 9.0, 1.25, 1.25, 1.25]) * ureg.mm  # darks/flats moved aside
    nx.sample.y_translation = np.full(n, -40.0) * ureg.um
    path = tmp_path / "t.nx"
    nx.save(str(path), data_path="/entry0000")
    t = read_sample_translation(path)
    back = nxtomo.NXtomo().load(str(path), "entry0000")
    assert t.x_m == pytest.approx(float(np.median(back.sample.x_translation.to("m").magnitude[2:])))
    assert t.y_m == pytest.approx(-40e-6) and t.z_m is None and t.frame == "McStas"
    assert t.lab_m() == {"vertical": t.y_m, "beam": None, "transverse": t.x_m}


def test_sample_translation_absent_or_bad(tmp_path):
    from xnh_stream.physics.geometry import DistanceGeometry

    path = tmp_path / "s.nx"
    with NXtomoWriter(path, (4, 4), DistanceGeometry(0.04, 1.168, 3e-6, 17.0)) as w:
        w.append(np.ones((2, 4, 4)), 0, [0.0, 90.0], 0.1)
    import h5py

    with h5py.File(path, "a") as f:  # our writer records the stage (zeros); a file of another writer may not
        for axis in "xyz":
            del f[f"entry0000/sample/{axis}_translation"]
    assert read_sample_translation(path) is None
    with h5py.File(path, "a") as f:
        f["entry0000/sample/z_translation"] = 3.0
        f["entry0000/sample/z_translation"].attrs["units"] = "kilogram"  # not a length
    with pytest.raises(InputError, match=r"sample/z_translation.*unknown unit"):
        read_sample_translation(path)


def test_inputs_without_a_place_are_refused_naming_the_file(column, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(column.scans[0].out, out)
    rep = json.loads((out / "report.json").read_text())
    del rep["sample"]
    (out / "report.json").write_text(json.dumps(rep))
    with pytest.raises(InputError, match=r"report.json \[sample.position_m\]"):
        load_scan(out)
    from actors.cli import main

    assert main(["stitch", str(out), str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2


def test_command_line_stitch(column, tmp_path, capsys):
    from actors.cli import main

    rc = main(["stitch", *[str(s.out) for s in column.scans], "--out", str(tmp_path / "cli"),
               "--block-shape", "64", "64", "64", "--precomputed", str(tmp_path / "ng")])
    assert rc == 0
    report = json.loads((tmp_path / "cli" / "stitch.json").read_text())
    assert len(report["scans"]) == 2 and all(s["placed"] for s in report["scans"])
    assert "stitched:" in capsys.readouterr().out
    # one frame: the precomputed layer's corner (neuroglancer: voxel i spans [i, i+1) * resolution) is the
    # stitched volume's (stitch.json origin_m, the centre of voxel 0) within half a voxel, at every scale
    out = report["output"]
    info = json.loads((tmp_path / "ng" / "info").read_text())
    for level, scale in enumerate(info["scales"]):
        corner_nm = (np.asarray(out["origin_m"][::-1]) - out["voxel_m"] / 2) * 1e9
        np.testing.assert_allclose(np.asarray(scale["voxel_offset"]) * scale["resolution"], corner_nm,
                                   atol=scale["resolution"][0] / 2)
    assert out["precomputed_voxel_offset"] == info["scales"][0]["voxel_offset"]
    # labels written into the stitched volume (as `segment` does) carry its transforms, level by level
    from xnh_stream.io.omezarr import write_labels

    vol = tmp_path / "cli" / "volume.ome.zarr"
    write_labels(vol, np.ones(tuple(out["shape"]), np.uint32))
    levels, labels = multiscale_levels(vol), multiscale_levels(vol / "labels" / "segmentation")
    assert [(m["voxel_m"], m["origin_m"]) for m in labels] == [(m["voxel_m"], m["origin_m"]) for m in levels]
    np.testing.assert_allclose(levels[0]["origin_m"], out["origin_m"])


@pytest.mark.slow
def test_ray_tasks_give_the_same_volume(column, tmp_path, ray_local):
    from actors.stitch import run_stitch_ray

    outs = [str(s.out) for s in column.scans]
    serial = run_stitch(StitchSpec(str(tmp_path / "serial"), outs, block_shape=(64, 64, 64)))
    on_ray = run_stitch_ray(StitchSpec(str(tmp_path / "ray"), outs, block_shape=(64, 64, 64)))
    np.testing.assert_array_equal(read_volume(serial.out / "volume.ome.zarr")[0],
                                  read_volume(on_ray.out / "volume.ome.zarr")[0])


@pytest.mark.slow
def test_end_to_end_from_raw_nxtomo_scans(tmp_path):
    """Raw four-distance NXtomo scans of one phantom, stacked along z with nominal places off by up to 10
    voxels, through the chain; the places read from the NXtomo files (as the chain is to write them into
    report.json) are corrected by the stitch to within a third of a voxel on every axis. Measured (7 Dec 2026):
    this seed 0.07 / 0.19 / 0.06 voxel (z y x); seeds 5-7 at most 0.22; 128 x 64 windows overlapping 35 %
    (docs/stitching.md, *End to end*) at most 0.15 with tissue wider than the view, 0.05 for a pin in air.
    Earlier versions of the chain left 0.87-1.08 voxel across the axis here."""
    from xnh_stream.chain.batch import process_scan
    from xnh_stream.simulate.overlap import simulate_overlap_nxtomo

    sim = simulate_overlap_nxtomo(tmp_path / "raw", n_scans=2, nx=64, n_angles=90, max_error_voxels=10, seed=3)
    outs = []
    for s in sim.scans:
        out = tmp_path / "out" / s.name
        process_scan(s.out, out=out)
        t = read_sample_translation(next(Path(s.out).glob("*_1_.nx"))).lab_m()
        rep = json.loads((out / "report.json").read_text())  # the hook the chain is to provide
        rep["sample"] = {"position_m": [t["vertical"], t["beam"], t["transverse"]]}
        (out / "report.json").write_text(json.dumps(rep))
        outs.append(out)
    res = stitch_outputs(outs, tmp_path / "stitched", block_shape=(64, 64, 64))
    corr = np.array([s["correction_m"] for s in res.report["scans"]])
    err = np.array([s.error_m for s in sim.scans])
    miss = (corr - corr.mean(axis=0)) - (err - err.mean(axis=0))
    print(f"\nend to end: position errors {np.round(miss / sim.voxel_m, 3).tolist()} voxels, "
          f"links {[(lk['ncc'], lk['reason']) for lk in res.report['links']]}")
    assert not res.isolated and np.abs(miss).max() < 0.33 * sim.voxel_m
