"""Back-projection speed: ns per voxel update against the compute floor measured in the same run, the memory
traffic of the batched kernel, and astra-toolbox's CPU FBP.

Run ``python bench/bench_fbp.py`` (about 3 minutes on 2 cores) or ``--quick``. Ours, the floors and astra are
timed in turn in every repeat (``--repeat``, default 5), so each ratio is taken within one repeat on a shared
machine; medians and the spread (min-max) over the repeats are printed, with the load average before and after.
Timings are process CPU time on one thread unless marked wall. No asserts: figures only.

What is printed
---------------
1. The compute floor on this CPU, from loops that keep everything in registers and L1 cache (64-byte aligned
   rows, 64 angles, 8 voxels x 16 detector rows of accumulators):

   - *FP issue*: the two vector operations of an update (a fused multiply-add and an add per 16 updates),
     nothing else: the arithmetic bound;
   - *interpolation, positions given*: the kernel's loads, broadcast, FMA and add with the detector offset and
     fraction of each voxel and angle read from small tables;
   - *interpolation floor*: the kernel's inner loop itself (32.32 fixed-point position, shift, fraction
     conversion and broadcast, two loads, FMA, add per 16 updates), data in L1. This is the floor "ours" is
     compared with: the same instructions per update, nothing waiting on memory.

   Then, interleaved in each repeat: the batched back-projection (``backproject_many``, a 64 x 512^2 slab from
   64 angles, one thread: stacking the rows, the kernel and adding into the slab, all included) and its ratio to
   the floor; and FBP (ramp filter + back-projection, 8 slices x 256 angles x 512 columns) against astra's CPU
   FBP on the same sinograms (one slice at a time, its only mode), CPU time ratio, and their agreement.
2. Memory traffic of the batched kernel (a model from the blocking the code uses: the slab read and written
   once per block of angles, the stacked rows written and read once, the input read once), the bandwidth it
   implies at the measured speed, and a measured streaming read+write of 256 MiB for comparison.
3. ns per update by slab height (1, 16, 64) and threads (1, 2): batches of angles and one angle per call (the
   streaming case), beside the NumPy reference.
4. N^4 growth: ``fbp`` of 16 slices with N angles at N = 128, 256, 512, scaled to the full N^3 volume.
5. Full-resolution live slices (:class:`xnh_stream.physics.slices.OrthoSlices`) per 2048^2 angle.
6. A cost model for 2048^3 from 2000 angles on CPU nodes and on one GPU, with its assumptions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np


def cpu_time(fn: Callable[[], object]) -> float:
    """Process CPU time (all threads) of one call, seconds (waiting for a core is not counted)."""
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def best_of_both(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time (all threads) of ``repeat`` calls (seconds)."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def spread(values: list[float], fmt: str = ".3f") -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------------------------------
# Compute floor: the kernel's own vector steps (xnh_stream.physics._numba_kernels) on data in L1 cache
# --------------------------------------------------------------------------------------------------
def _floor_kernels():
    import numba

    from xnh_stream.physics._numba_kernels import (
        _interp_step,
        vec_interp,
        vec_load,
        vec_store_transposed,
        vec_zero,
    )

    @numba.njit(fastmath=True, nogil=True)
    def fp_issue(v, f, reps, res):  # pragma: no cover - compiled
        """8 independent chains of acc + fma(f, acc, v) (f = -1: stays bounded): 2 vector ops per step."""
        a0 = vec_load(v, 0)
        a1 = vec_load(v, 16)
        a2 = vec_load(v, 32)
        a3 = vec_load(v, 48)
        a4 = vec_load(v, 64)
        a5 = vec_load(v, 80)
        a6 = vec_load(v, 96)
        a7 = vec_load(v, 112)
        w = vec_load(v, 0)
        for _ in range(reps):
            a0 = vec_interp(a0, f, w, a0)
            a1 = vec_interp(a1, f, w, a1)
            a2 = vec_interp(a2, f, w, a2)
            a3 = vec_interp(a3, f, w, a3)
            a4 = vec_interp(a4, f, w, a4)
            a5 = vec_interp(a5, f, w, a5)
            a6 = vec_interp(a6, f, w, a6)
            a7 = vec_interp(a7, f, w, a7)
        vec_store_transposed(res, 0, 8, a0, a1, a2, a3, a4, a5, a6, a7)
        return res

    @numba.njit(fastmath=True, nogil=True)
    def given(pf, q, fr, reps, res):  # pragma: no cover - compiled
        """Interpolation with the offsets ``q`` and fractions ``fr`` ``[blocks, angles, 8]`` given."""
        nb, na, _ = q.shape
        for _ in range(reps):
            for blk in range(nb):
                a0 = vec_zero()
                a1 = vec_zero()
                a2 = vec_zero()
                a3 = vec_zero()
                a4 = vec_zero()
                a5 = vec_zero()
                a6 = vec_zero()
                a7 = vec_zero()
                for a in range(na):
                    o = q[blk, a]
                    f = fr[blk, a]
                    a0 = vec_interp(a0, f[0], vec_load(pf, o[0]), vec_load(pf, o[0] + 16))
                    a1 = vec_interp(a1, f[1], vec_load(pf, o[1]), vec_load(pf, o[1] + 16))
                    a2 = vec_interp(a2, f[2], vec_load(pf, o[2]), vec_load(pf, o[2] + 16))
                    a3 = vec_interp(a3, f[3], vec_load(pf, o[3]), vec_load(pf, o[3] + 16))
                    a4 = vec_interp(a4, f[4], vec_load(pf, o[4]), vec_load(pf, o[4] + 16))
                    a5 = vec_interp(a5, f[5], vec_load(pf, o[5]), vec_load(pf, o[5] + 16))
                    a6 = vec_interp(a6, f[6], vec_load(pf, o[6]), vec_load(pf, o[6] + 16))
                    a7 = vec_interp(a7, f[7], vec_load(pf, o[7]), vec_load(pf, o[7] + 16))
                vec_store_transposed(res, 0, 8, a0, a1, a2, a3, a4, a5, a6, a7)
        return res

    @numba.njit(fastmath=True, nogil=True)
    def computed(pf, t0, st, n_vox, reps, res):  # pragma: no cover - compiled
        """The kernel's inner loop: 32.32 positions computed from voxel to voxel, 8 voxels x 16 rows."""
        na = t0.shape[0]
        for _ in range(reps):
            for i in range(0, n_vox, 8):
                a0 = vec_zero()
                a1 = vec_zero()
                a2 = vec_zero()
                a3 = vec_zero()
                a4 = vec_zero()
                a5 = vec_zero()
                a6 = vec_zero()
                a7 = vec_zero()
                for a in range(na):
                    s = st[a]
                    us = np.uint64(s)
                    t = np.uint64(t0[a] + i * s)
                    a0 = _interp_step(a0, pf, t)
                    t += us
                    a1 = _interp_step(a1, pf, t)
                    t += us
                    a2 = _interp_step(a2, pf, t)
                    t += us
                    a3 = _interp_step(a3, pf, t)
                    t += us
                    a4 = _interp_step(a4, pf, t)
                    t += us
                    a5 = _interp_step(a5, pf, t)
                    t += us
                    a6 = _interp_step(a6, pf, t)
                    t += us
                    a7 = _interp_step(a7, pf, t)
                vec_store_transposed(res, 0, 8, a0, a1, a2, a3, a4, a5, a6, a7)
        return res

    return fp_issue, given, computed


class ComputeFloor:
    """The three floor loops, compiled and given their L1-resident data once; ``measure()`` -> ns per update."""

    def __init__(self, n_angles: int = 64, positions: int = 64, n_vox: int = 32) -> None:
        from xnh_stream.physics.backprojection import aligned_empty

        self.fp_issue, self.given, self.computed = _floor_kernels()
        rng = np.random.default_rng(0)
        self.pf = aligned_empty((positions * 32,))  # 64 positions x (16 values + 16 differences): 8 KiB
        self.pf[:] = rng.random(self.pf.size, dtype=np.float32)
        scale = 2.0**32
        st = (rng.uniform(-1, 1, n_angles) * scale).astype(np.int64)  # |cos| <= 1 pixel per voxel
        t0 = ((positions / 2 - st / scale * n_vox / 2 + rng.uniform(0, 1, n_angles)) * scale).astype(np.int64)
        self.t0, self.st, self.n_vox, self.n_angles = t0, st, n_vox, n_angles
        t = (t0[:, None] + np.arange(n_vox)[None, :] * st[:, None]).astype(np.uint64)  # [angles, voxels]
        self.q = ((t >> np.uint64(32)).astype(np.int64) * 32).T.reshape(n_vox // 8, 8, n_angles).transpose(0, 2, 1).copy()
        self.fr = (t & np.uint64(0xFFFFFFFF)).astype(np.float32).T.reshape(n_vox // 8, 8, n_angles).transpose(0, 2, 1).copy()
        self.res = np.zeros(128, np.float32)
        self.v = aligned_empty((128,))
        self.v[:] = rng.random(128, dtype=np.float32)
        self.fp_issue(self.v, np.float32(-1.0), 1, self.res)
        self.given(self.pf, self.q, self.fr, 1, self.res)
        check = self.res.copy()
        self.computed(self.pf, t0, st, n_vox, 1, self.res)
        assert np.array_equal(check, self.res), "the two interpolation loops must compute the same sums"

    def measure(self, seconds: float = 0.15) -> dict[str, float]:
        """ns per voxel update (16 updates per vector step) of each loop, ~``seconds`` each."""
        per_pass = self.n_vox * self.n_angles * 16
        reps = max(1, int(seconds / (per_pass * 0.06e-9)))
        out = {}
        t = cpu_time(lambda: self.fp_issue(self.v, np.float32(-1.0), reps * per_pass // 128, self.res))
        out["fp issue"] = t / ((reps * per_pass // 128) * 128) * 1e9
        t = cpu_time(lambda: self.given(self.pf, self.q, self.fr, reps, self.res))
        out["positions given"] = t / (reps * per_pass) * 1e9
        t = cpu_time(lambda: self.computed(self.pf, self.t0, self.st, self.n_vox, reps, self.res))
        out["floor"] = t / (reps * per_pass) * 1e9
        return out


# --------------------------------------------------------------------------------------------------
# Memory bandwidth (streaming read + write)
# --------------------------------------------------------------------------------------------------
def _stream_kernel():
    import numba

    @numba.njit(parallel=True, fastmath=True)
    def stream_add(a, v):  # read + write every element once
        for i in numba.prange(a.size):
            a[i] += v

    return stream_add


def memory_floor(repeat: int, mib: int = 256) -> dict[str, float]:
    """ns per float32 read + write on an array of ``mib`` MiB (beyond the last-level cache)."""
    import numba

    a = np.ones(mib * 1024 * 1024 // 4, dtype=np.float32)  # touched: no page faults in the timings
    kernel = _stream_kernel()
    kernel(a, np.float32(1))
    out = {}
    previous = numba.get_num_threads()
    for w in (1, 2):
        numba.set_num_threads(min(w, numba.config.NUMBA_NUM_THREADS))
        wall, cpu = best_of_both(lambda: kernel(a, np.float32(1)), repeat)
        out[w] = (wall / a.size * 1e9, cpu / a.size * 1e9)
    numba.set_num_threads(previous)
    wall, cpu = best_of_both(lambda: np.add(a, np.float32(1), out=a), repeat)
    out["numpy"] = (wall / a.size * 1e9, cpu / a.size * 1e9)
    return out


# --------------------------------------------------------------------------------------------------
# astra
# --------------------------------------------------------------------------------------------------
def phantom_sinograms(nz: int, n_angles: int, n_det: int, thetas: np.ndarray) -> tuple[np.ndarray, object]:
    """Shepp-Logan slices (scaled per row) forward-projected by astra in our convention (angles -theta)."""
    import astra
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (n_det, n_det), order=1, anti_aliasing=True).astype(np.float32)
    vol_geom = astra.create_vol_geom(n_det, n_det)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, -thetas)
    pid = astra.create_projector("linear", proj_geom, vol_geom)
    sid, sino = astra.create_sino(img, pid)
    astra.data2d.delete(sid)
    scale = np.linspace(0.5, 1.5, nz, dtype=np.float32)
    stack = sino[:, None, :] * scale[None, :, None]  # [n_angles, nz, n_det]
    return np.ascontiguousarray(stack, dtype=np.float32), (pid, vol_geom, proj_geom)


def astra_fbp_slices(stack: np.ndarray, geom) -> np.ndarray:
    import astra

    pid, vol_geom, proj_geom = geom
    out = []
    for z in range(stack.shape[1]):
        sid = astra.data2d.create("-sino", proj_geom, stack[:, z, :])
        rid = astra.data2d.create("-vol", vol_geom)
        cfg = astra.astra_dict("FBP")
        cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid, FilterType="ram-lak")
        aid = astra.algorithm.create(cfg)
        astra.algorithm.run(aid)
        out.append(astra.data2d.get(rid))
        astra.algorithm.delete(aid)
        astra.data2d.delete([sid, rid])
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer angles and repeats (a smoke run)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repeats (medians and spread over them)")
    ap.add_argument("--n", type=int, default=512, help="slice size n x n (detector columns)")
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat
    n = args.n
    n_angles = 16 if args.quick else 64

    import numba

    from xnh_stream.physics.backprojection import slab_traffic
    from xnh_stream.physics.fbp import _backproject_numpy, backproject, backproject_many, fbp, filter_projection

    print(f"Back-projection bench ({load()}, {os.cpu_count()} CPUs, numba threads {numba.config.NUMBA_NUM_THREADS})")
    rng = np.random.default_rng(0)
    cor = (n - 1) / 2 + 3.3
    backproject_many(rng.normal(size=(2, 1, n)).astype(np.float32), [0.1, 0.2], cor,  # compile / load kernels
                     np.zeros((1, n, n), np.float32))
    floor = ComputeFloor()

    # 1. ours vs floor vs astra, interleaved
    nz = 64
    slab_filt = rng.normal(size=(n_angles, nz, n)).astype(np.float32)
    slab_thetas = np.sort(rng.uniform(0, np.pi, n_angles))
    slab = np.zeros((nz, n, n), np.float32)
    backproject_many(slab_filt, slab_thetas, cor, slab, workers=1)  # the slab's pages touched before the timings
    slab_updates = n_angles * nz * n * n
    nz_a, ang_a = (2, 64) if args.quick else (8, 256)
    thetas_a = np.linspace(0, np.pi, ang_a, endpoint=False)
    sino, geom = phantom_sinograms(nz_a, ang_a, n, thetas_a)
    upd_a = nz_a * ang_a * n * n
    fbp(sino[:2], thetas_a[:2], window="ram-lak", workers=1)
    rows: dict[str, list[float]] = {k: [] for k in ("fp issue", "positions given", "floor", "ours", "ours/floor",
                                                    "ours/given", "fbp ours", "fbp astra", "astra/ours")}
    load_before = os.getloadavg()[0]
    for _ in range(repeat):
        for k, v in floor.measure().items():
            rows[k].append(v)
        t = cpu_time(lambda: backproject_many(slab_filt, slab_thetas, cor, slab, workers=1))
        rows["ours"].append(t / slab_updates * 1e9)
        rows["ours/floor"].append(rows["ours"][-1] / rows["floor"][-1])
        rows["ours/given"].append(rows["ours"][-1] / rows["positions given"][-1])
        t_ours = cpu_time(lambda: fbp(sino, thetas_a, window="ram-lak", workers=1))
        t_astra = cpu_time(lambda: astra_fbp_slices(sino, geom))
        rows["fbp ours"].append(t_ours / upd_a * 1e9)
        rows["fbp astra"].append(t_astra / upd_a * 1e9)
        rows["astra/ours"].append(t_astra / t_ours)
    load_after = os.getloadavg()[0]
    fp = statistics.median(rows["fp issue"])
    print(f"\n1. Compute floor and ours, ns of CPU per voxel update on one thread, median [min-max] of {repeat} "
          f"interleaved repeats (load {load_before:.2f} -> {load_after:.2f})")
    print(f"  FP issue (FMA + add per 16 updates, registers)        {spread(rows['fp issue'], '.4f')}"
          f"   ({2 / (16 * fp):.1f} G 16-lane ops/s, {48 / (16 * fp):.0f} GFLOP/s counting an FMA as 2)")
    print(f"  interpolation, positions given (tables in L1)         {spread(rows['positions given'], '.4f')}")
    print(f"  interpolation floor: the kernel's inner loop, L1      {spread(rows['floor'], '.4f')}")
    print(f"  ours: backproject_many, {nz} x {n}^2 slab, {n_angles} angles      {spread(rows['ours'], '.4f')}")
    print(f"  ours / floor                                          {spread(rows['ours/floor'], '.2f')}")
    print(f"  ours / positions given                                {spread(rows['ours/given'], '.2f')}")
    print(f"  FBP of {nz_a} slices x {ang_a} angles x {n} columns, ram-lak (filter + back-project):")
    print(f"    xnh_stream fbp (1 thread)                           {spread(rows['fbp ours'], '.4f')}")
    print(f"    astra CPU FBP (per slice, 1 thread)                 {spread(rows['fbp astra'], '.4f')}")
    print(f"    astra / ours                                        {spread(rows['astra/ours'], '.1f')}")
    ours_a = fbp(sino, thetas_a, window="ram-lak", workers=1)
    theirs = astra_fbp_slices(sino, geom)
    c = np.arange(n) - (n - 1) / 2
    mask = (c[None, :] ** 2 + c[:, None] ** 2) < (n / 2 - 2) ** 2
    a, b = ours_a[:, mask], theirs[:, mask]
    print(f"    agreement in the inscribed circle: correlation {np.corrcoef(a.ravel(), b.ravel())[0, 1]:.6f}, "
          f"scale ours/astra {float((a * b).sum() / (b * b).sum()):.4f}")
    t2 = best_of_both(lambda: fbp(sino, thetas_a, window="ram-lak", workers=2), repeat)[0]
    t1a = best_of_both(lambda: astra_fbp_slices(sino, geom), 1)[0]
    print(f"    2 threads: fbp {t2 / upd_a * 1e9:.4f} ns wall per update, astra (1 thread) / ours {t1a / t2:.1f}x wall")

    # 2. memory traffic
    mem = memory_floor(max(2, repeat // 2))
    traffic = slab_traffic(nz, n, n, n_angles, cor)
    ours_ns = statistics.median(rows["ours"])
    stream = mem[1][1]  # ns of CPU per float32 read + write (8 bytes), 1 thread
    print(f"\n2. Memory traffic of the batched kernel ({nz} x {n}^2 slab, {n_angles} angles, model from its blocking), "
          "bytes per voxel update")
    print(f"  output slab read + written once per {traffic['angle_block']:.0f} angles  {traffic['output']:.4f}")
    print(f"  stacked (value, difference) rows written + read once   {traffic['pairs']:.4f}  "
          f"({traffic['pairs_block_bytes'] / 2**20:.1f} MiB per block of 16 rows x angles)")
    print(f"  filtered projections read                              {traffic['input']:.4f}")
    print(f"  total {traffic['total']:.3f} B / update: {traffic['total'] / ours_ns:.2f} GB/s at {ours_ns:.4f} ns / update; "
          f"a streaming read+write of 256 MiB here: {8 / stream:.1f} GB/s (1 thread, {stream:.3f} ns per 8 B; "
          f"wall {8 / mem[1][0]:.1f}, 2 threads {8 / mem[2][0]:.1f} GB/s): "
          f"{traffic['total'] / ours_ns / (8 / stream) * 100:.0f} % of it")
    print("  (the 8 B per update of an angle-at-a-time back-projection is what the one-angle column of 3 pays)")

    # 3. slab heights x threads
    print(f"\n3. ns per voxel update, {n}^2 slices, random filtered rows, {n_angles} angles, best of {repeat} "
          "(wall, cpu = process CPU time over all threads)")
    print(f"  {'slab':>4s} {'thr':>3s} | {'batch':>13s} | {'per angle':>13s} | {'numpy ref':>13s}")
    results = {}
    for nz in (1, 16, 64):
        filt = rng.normal(size=(n_angles, nz, n)).astype(np.float32)
        thetas = np.sort(rng.uniform(0, np.pi, n_angles))
        out = np.zeros((nz, n, n), np.float32)
        updates = n_angles * nz * n * n
        ref = None
        if nz <= 16:
            few = min(n_angles, 8)
            ref = np.array(best_of_both(
                lambda: [_backproject_numpy(filt[i], thetas[i], cor, out) for i in range(few)], repeat
            )) / (few * nz * n * n) * 1e9
        for w in (1, 2):
            batch = np.array(best_of_both(lambda: backproject_many(filt, thetas, cor, out, workers=w),
                                          repeat)) / updates * 1e9
            one = np.array(best_of_both(lambda: [backproject(filt[i], thetas[i], cor, out, workers=w)
                                                 for i in range(n_angles)], repeat)) / updates * 1e9
            results[(nz, w)] = batch
            r = f"{ref[0]:6.3f} {ref[1]:6.3f}" if (ref is not None and w == 1) else ""
            print(f"  {nz:4d} {w:3d} | {batch[0]:6.3f} {batch[1]:6.3f} | {one[0]:6.3f} {one[1]:6.3f} | {r}")

    # 4. N^4 growth
    print("\n4. N^4 growth: fbp of 16 slices with N angles (1 thread, CPU time), scaled to the N^3 volume")
    sizes = (64, 128, 256) if args.quick else (128, 256, 512)
    full = []
    for size in sizes:
        th = np.linspace(0, np.pi, size, endpoint=False)
        proj = rng.normal(size=(size, 16, size)).astype(np.float32)
        t = best_of_both(lambda: fbp(proj, th, workers=1), repeat)[1] * size / 16
        full.append(t)
        print(f"  N = {size:4d}: {t:9.2f} s of CPU for N^3 from N angles ({t / size**4 * 1e9:.3f} ns / update)")
    slope = np.polyfit(np.log(sizes), np.log(full), 1)[0]
    print(f"  fitted exponent: time ~ N^{slope:.2f}")

    # 5. live slices at 2048^2
    from xnh_stream.physics.slices import OrthoSlices

    big = 1024 if args.quick else 2048
    frame = rng.normal(size=(big, big)).astype(np.float32)
    live = OrthoSlices(big, big, workers=1)
    live.add(frame, 0.3)
    t_filter = best_of_both(lambda: filter_projection(frame), repeat)
    filtered = filter_projection(frame)
    print(f"\n5. Full-resolution live slices, {big}^2 frames ({3 * big * big / 1e6:.1f} M voxel updates / angle)")
    print(f"  ramp filter of the frame (scipy.fft, workers=-1): {t_filter[0] * 1e3:7.1f} ms wall, "
          f"{t_filter[1] * 1e3:7.1f} ms CPU")
    for w in (1, 2):
        live.workers = w
        t = best_of_both(lambda: live.add_filtered(filtered, 0.7), repeat)
        print(f"  three slices, {w} thread{'s' if w > 1 else ' '}: {t[0] * 1e3:7.1f} ms wall, {t[1] * 1e3:7.1f} ms CPU "
              f"/ angle ({t[1] / (3 * big * big) * 1e9:.3f} ns of CPU / update)")

    # 6. cost model
    t1 = ours_ns  # CPU time, 1 thread, median of section 1
    t2 = results[(64, 2)][0]  # wall time, 2 threads
    updates = 2048**3 * 2000
    print("\n6. Cost model: 2048^3 voxels from 2000 angles = "
          f"{updates:.3g} voxel updates (back-projection; filtering is ~1 % of it)")
    print(f"  measured here: {t1:.4f} ns of CPU / update on 1 thread, {t2:.4f} ns wall on 2 threads "
          "(batch, 64-slice slabs)")
    print(f"  this machine, 2 threads: {updates * t2 * 1e-9 / 3600:6.2f} h")
    node_traffic = slab_traffic(16, 2048, 2048, 2000)["total"] * 32 / t1
    print("  assumed CPU node: 32 cores at this machine's per-core speed, 70 % parallel efficiency "
          f"(the kernel's memory traffic at 2048^2, {slab_traffic(16, 2048, 2048, 2000)['total']:.3f} B / update, "
          f"is {node_traffic:.0f} GB/s for 32 such cores), slab of 2048^2 x "
          "(2048 / nodes) slices per node, all 2000 filtered angles read by every node")
    for nodes in (1, 4, 16, 64):
        hours = updates * t1 * 1e-9 / (nodes * 32 * 0.7) / 3600
        print(f"    {nodes:3d} node{'s' if nodes > 1 else ' '}: {hours * 60:8.2f} min")
    gups = 30e9
    print(f"  assumed one GPU (H100/H200 class): {gups / 1e9:.0f} G voxel updates / s for linear "
          "interpolation from L1/L2-resident rows (typical of published texture/gather back-projectors), "
          "the 32 GiB volume resident on the device, 2000 x 16 MiB projections over PCIe at 20 GB/s")
    t_gpu = updates / gups
    t_pcie = (2000 * 2048 * 2048 * 4 + 2048**3 * 4) / 20e9
    print(f"    back-projection {t_gpu / 60:6.1f} min + transfers {t_pcie:5.1f} s "
          "(not measured: no GPU in this run)")
    print(f"\n({load()})")


if __name__ == "__main__":
    main()
