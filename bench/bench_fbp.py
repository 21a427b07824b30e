"""Back-projection speed: ns per voxel update against a measured memory-bandwidth floor and astra-toolbox.

Run ``python bench/bench_fbp.py`` (about 2-3 minutes on 2 cores) or ``--quick``. Everything is measured
in the same run (best of ``--repeat``), so the ratios hold on a shared machine; the load average is
printed before and after. No asserts: figures only.

What is printed
---------------
1. ns per voxel update (one angle into one voxel) of the compiled back-projector on a 512^2 slice, slab
   heights 1, 16 and 64, at 1 and 2 threads: angles given in batches (``backproject_many``) and one
   angle per call (``backproject``, the streaming case), beside the NumPy reference (1 thread).
2. The memory-bandwidth floor: a streaming read + write of a float32 array larger than the last-level
   cache (8 bytes per voxel, what a back-projection that re-reads the slab for every angle must move),
   with numba at 1 and 2 threads and with NumPy; the ratio ours / floor.
3. astra-toolbox's CPU FBP (ram-lak, one slice at a time, its only mode) against ``fbp`` (filter and
   back-project) on the same sinograms: ratio and agreement.
4. N^4 growth: ``fbp`` of 16 slices (one block of the stacked kernel) with N angles at N = 128, 256, 512, scaled to the full N^3
   volume, and the fitted exponent.
5. Full-resolution live slices (:class:`xnh_stream.physics.slices.OrthoSlices`) per 2048^2 angle.
6. A cost model for 2048^3 from 2000 angles on CPU nodes and on one GPU, with its assumptions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np


def best_of_both(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time (all threads) of ``repeat`` calls (seconds).

    On a shared machine the CPU time of a one-thread run is the steadier figure (waiting for a core
    is not counted); the ratios below use wall time against wall time and CPU against CPU.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------------------------------
# Memory-bandwidth floor
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
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings")
    ap.add_argument("--n", type=int, default=512, help="slice size n x n (detector columns)")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    n = args.n
    n_angles = 16 if args.quick else 64

    from xnh_stream.physics.fbp import _backproject_numpy, backproject, backproject_many, fbp, filter_projection

    print(f"Back-projection bench ({load()}, {os.cpu_count()} CPUs)")
    rng = np.random.default_rng(0)
    cor = (n - 1) / 2 + 3.3
    # warm-up: compile / load the numba kernels
    backproject_many(rng.normal(size=(2, 1, n)).astype(np.float32), [0.1, 0.2], cor,
                     np.zeros((1, n, n), np.float32))

    floor = memory_floor(repeat)
    print("\n1-2. ns per voxel update, 512^2 slice, random filtered rows, "
          f"{n_angles} angles; floor = streaming read+write of 256 MiB (8 B / voxel update)")
    print("  wall = elapsed time; cpu = process CPU time over all threads (steadier on a shared machine)")
    for k, (wall, cpu) in floor.items():
        label = "numpy, 1 thread" if k == "numpy" else f"numba, {k} thread{'s' if k > 1 else ''}"
        print(f"  memory floor {label:17s} wall {wall:6.3f}  cpu {cpu:6.3f} ns / voxel")
    print(f"  {'slab':>4s} {'thr':>3s} | {'batch':>13s} | {'per angle':>13s} | {'numpy ref':>13s} | "
          f"{'batch/floor':>13s} | {'angle/floor':>13s} | {'numpy/batch':>11s}")
    print(f"  {'':4s} {'':3s} | {'wall':>6s} {'cpu':>6s} | {'wall':>6s} {'cpu':>6s} | {'wall':>6s} {'cpu':>6s} | "
          f"{'wall':>6s} {'cpu':>6s} | {'wall':>6s} {'cpu':>6s} | {'cpu':>11s}")
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
            fl = np.array(floor[w])
            results[(nz, w)] = batch
            r = f"{ref[0]:6.3f} {ref[1]:6.3f}" if (ref is not None and w == 1) else f"{'':13s}"
            rr = f"{ref[1] / batch[1]:10.1f}x" if (ref is not None and w == 1) else f"{'':11s}"
            print(f"  {nz:4d} {w:3d} | {batch[0]:6.3f} {batch[1]:6.3f} | {one[0]:6.3f} {one[1]:6.3f} | {r} | "
                  f"{batch[0] / fl[0]:5.2f}x {batch[1] / fl[1]:5.2f}x | {one[0] / fl[0]:5.2f}x {one[1] / fl[1]:5.2f}x | "
                  f"{rr}")

    # 3. astra
    nz_a, ang_a = (2, 64) if args.quick else (8, 256)
    thetas = np.linspace(0, np.pi, ang_a, endpoint=False)
    stack, geom = phantom_sinograms(nz_a, ang_a, n, thetas)
    upd = nz_a * ang_a * n * n
    t_astra = np.array(best_of_both(lambda: astra_fbp_slices(stack, geom), repeat))
    print(f"\n3. FBP (filter + back-project) of {nz_a} slices x {ang_a} angles x {n} columns, ram-lak "
          "(ns / update: wall, cpu)")
    print(f"  astra CPU FBP (per slice, 1 thread)   {t_astra[0] / upd * 1e9:7.3f} {t_astra[1] / upd * 1e9:7.3f}")
    ours = None
    for w in (1, 2):
        t = np.array(best_of_both(lambda: fbp(stack, thetas, window="ram-lak", workers=w), repeat))
        ours = fbp(stack, thetas, window="ram-lak", workers=w)
        print(f"  xnh_stream fbp ({w} thread{'s' if w > 1 else ' '})          {t[0] / upd * 1e9:7.3f} "
              f"{t[1] / upd * 1e9:7.3f}   astra / ours: wall {t_astra[0] / t[0]:5.2f}x"
              + (f", cpu {t_astra[1] / t[1]:5.2f}x" if w == 1 else ""))
    theirs = astra_fbp_slices(stack, geom)
    c = np.arange(n) - (n - 1) / 2
    mask = (c[None, :] ** 2 + c[:, None] ** 2) < (n / 2 - 2) ** 2
    a, b = ours[:, mask], theirs[:, mask]
    print(f"  agreement in the inscribed circle: correlation {np.corrcoef(a.ravel(), b.ravel())[0, 1]:.6f}, "
          f"scale ours/astra {float((a * b).sum() / (b * b).sum()):.4f}")

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
    t1 = results[(64, 1)][1]  # CPU time, 1 thread
    t2 = results[(64, 2)][0]  # wall time, 2 threads
    updates = 2048**3 * 2000
    print("\n6. Cost model: 2048^3 voxels from 2000 angles = "
          f"{updates:.3g} voxel updates (back-projection; filtering is ~1 % of it)")
    print(f"  measured here: {t1:.3f} ns of CPU / update on 1 thread, {t2:.3f} ns wall on 2 threads "
          "(batch, 64-slice slabs)")
    print(f"  this machine, 2 threads: {updates * t2 * 1e-9 / 3600:6.1f} h")
    per_core = t1
    print("  assumed CPU node: 32 cores at this machine's per-core speed, 70 % parallel efficiency "
          "(memory bandwidth shared; batches of angles keep the kernel compute-bound), slab of 2048^2 x "
          "(2048 / nodes) slices per node, all 2000 filtered angles read by every node")
    for nodes in (1, 4, 16, 64):
        hours = updates * per_core * 1e-9 / (nodes * 32 * 0.7) / 3600
        print(f"    {nodes:3d} node{'s' if nodes > 1 else ' '}: {hours * 60:8.1f} min")
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
