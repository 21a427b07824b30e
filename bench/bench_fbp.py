"""FBP speed: xnh_stream.physics.fbp (numpy) beside astra-toolbox's CPU FBP on the same sinograms.

Run ``python bench/bench_fbp.py`` (16 slices x 512 angles x 512 detector columns) or with ``--small``.
Prints ms per slice for each, the ratio, and the agreement (correlation, max |diff|) of the results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", action="store_true", help="4 slices x 128 angles x 256 columns")
    ap.add_argument("--slices", type=int, default=None)
    ap.add_argument("--angles", type=int, default=None)
    ap.add_argument("--det", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="threads for a second, multi-threaded run of ours")
    ap.add_argument("--repeat", type=int, default=2, help="best of N timings")
    args = ap.parse_args()
    nz, n_angles, n_det = (4, 128, 256) if args.small else (16, 512, 512)
    nz = args.slices or nz
    n_angles = args.angles or n_angles
    n_det = args.det or n_det

    from xnh_stream.physics.fbp import FBPAccumulator, fbp

    thetas = np.linspace(0, np.pi, n_angles, endpoint=False)
    stack, geom = phantom_sinograms(nz, n_angles, n_det, thetas)
    print(f"FBP of {nz} slices x {n_angles} angles x {n_det} columns (ram-lak, linear interpolation)")

    def best(fn):
        times, res = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t0)
        return min(times), res

    t_ours, ours = best(lambda: fbp(stack, thetas, window="ram-lak"))
    t_astra, theirs = best(lambda: astra_fbp_slices(stack, geom))

    def accumulate():
        acc = FBPAccumulator(nz, n_det, window="ram-lak")
        for i in range(n_angles):
            acc.add(stack[i], thetas[i], i)
        return acc.volume()

    t_acc, acc_vol = best(accumulate)
    t_thr = None
    if args.workers > 1:
        t_thr, _ = best(lambda: fbp(stack, thetas, window="ram-lak", workers=args.workers))

    per = lambda t: 1e3 * t / nz  # noqa: E731
    print(f"  xnh_stream fbp (numpy, 1 thread)      {per(t_ours):8.1f} ms/slice")
    print(f"  xnh_stream FBPAccumulator (1 thread)  {per(t_acc):8.1f} ms/slice  (angle by angle, even/odd)")
    if t_thr is not None:
        print(f"  xnh_stream fbp ({args.workers} threads)            {per(t_thr):8.1f} ms/slice")
    print(f"  astra CPU FBP (per slice)             {per(t_astra):8.1f} ms/slice")
    print(f"  ratio astra / ours (1 thread)         {t_astra / t_ours:8.2f}x  (>1: ours faster)")
    c = np.arange(n_det) - (n_det - 1) / 2
    mask = (c[None, :] ** 2 + c[:, None] ** 2) < (n_det / 2 - 2) ** 2
    a, b = ours[:, mask], theirs[:, mask]
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    scale = float((a * b).sum() / (b * b).sum())
    print(f"  agreement in the inscribed circle: correlation {corr:.6f}, scale ours/astra {scale:.4f}, "
          f"max|diff| {np.abs(a - b).max():.4g} (= {np.abs(a - b).max() / np.abs(b).max():.2%} of max), "
          f"rms diff {np.sqrt(np.mean((a - b) ** 2)) / np.abs(b).max():.2%} of max")
    print(f"  accumulator vs batch: max|diff| {np.abs(acc_vol - ours).max() / np.abs(ours).max():.2e} of max")


if __name__ == "__main__":
    main()
