"""Stitching time against the number of scans (2, 4, 8 ...), on simulated overlapping scans of one phantom at
50 and 100 nm with stage errors up to 20 finest voxels; with the position error reached.

Peer measured in the same run (when importable): multiview-stitcher's registration (phase correlation,
global optimisation; `pip install multiview-stitcher`) on the same scans, with NaN outside each scan's
reconstructed cylinder so it sees the same fields of view; its position error and time beside ours.

    python bench/bench_stitch.py [--scans 2 4 8] [--figure docs/img/stitching.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from xnh_stream.io.omezarr import read_volume
from xnh_stream.simulate.overlap import inscribed_cylinder, simulate_overlap
from xnh_stream.stitch import stitch_outputs

FINE = 50e-9


def position_error(corr: np.ndarray, err: np.ndarray) -> float:
    """Largest error of the stitched places relative to each other, in finest voxels."""
    miss = (corr - corr.mean(axis=0)) - (err - err.mean(axis=0))
    return float(np.abs(miss).max() / FINE)


def multiview_stitcher_peer(sim) -> tuple[float, float] | None:
    """Register the same scans with multiview-stitcher; (position error in finest voxels, seconds)."""
    try:
        from multiview_stitcher import msi_utils, registration
        from multiview_stitcher import spatial_image_utils as si_utils
    except ImportError:
        return None
    msims = []
    for s in sim.scans:
        vol, voxel = read_volume(Path(s.out) / "volume.ome.zarr")
        vol[:, ~inscribed_cylinder(vol.shape)] = np.nan
        sim_ = si_utils.get_sim_from_array(vol, dims=["z", "y", "x"], scale={a: voxel for a in "zyx"},
                                           translation=dict(zip("zyx", s.nominal_origin_m)), transform_key="stage")
        msims.append(msi_utils.get_msim_from_sim(sim_, scale_factors=[]))
    t = time.perf_counter()
    registration.register(msims, transform_key="stage", new_transform_key="registered",
                          reg_channel_index=0, registration_binning={"z": 1, "y": 1, "x": 1},
                          pairwise_reg_func_kwargs={"upsample_factor": 20},
                          groupwise_resolution_kwargs={"transform": "translation"},
                          overlap_tolerance=4e-6)  # search as far as our max_shift_m (default 0 misses large errors)
    dt = time.perf_counter() - t
    corr = []
    for m in msims:
        aff = np.asarray(msi_utils.get_transform_from_msim(m, "registered")).squeeze()
        corr.append(aff[:3, 3])  # translation of the view in world units (z y x)
    return position_error(np.asarray(corr), np.array([s.error_m for s in sim.scans])), dt


def figure(sim, res, path: Path) -> None:
    """A z-x slice through the stitched volume, the difference stitched - phantom, and the same difference
    for scans left at their nominal places without intensity matching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol, voxel = read_volume(res.volume)
    placed = [s["placed"] for s in res.report["scans"]]
    corr = np.array([s["correction_m"] for s in res.report["scans"]])[placed]
    err = np.array([s.error_m for s in sim.scans])[placed]
    truth = sim.render(res.origin_m + (err - corr).mean(axis=0), voxel, vol.shape)
    bad = stitch_outputs([s.out for s in sim.scans], res.out.parent / "nominal", block_shape=(64, 64, 64),
                         max_shift_m=1e-9, intensity="none", include_isolated=True, blend_m=1e-9)
    vb, _ = read_volume(bad.volume)
    ref = sim.scans[0]
    tb = sim.render(bad.origin_m + (np.asarray(ref.true_origin_m) - np.asarray(ref.nominal_origin_m)), voxel, vb.shape)
    y = vol.shape[1] // 2
    yb = vb.shape[1] // 2
    ext = [0, vol.shape[2] * voxel * 1e6, vol.shape[0] * voxel * 1e6, 0]
    lim = 3 * float(np.std(truth[:, y][vol[:, y] != 0]))
    fig, ax = plt.subplots(1, 3, figsize=(13, 5.2), constrained_layout=True)
    ax[0].imshow(vol[:, y], cmap="gray", extent=ext)
    ax[0].set_title("stitched (z-x slice)")
    for a, img, title in ((ax[1], np.where(vol[:, y] != 0, vol[:, y] - truth[:, y], 0), "stitched - phantom"),
                          (ax[2], np.where(vb[:, yb] != 0, vb[:, yb] - tb[:, yb], 0),
                           "nominal places, no intensity matching - phantom")):
        im = a.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim,
                      extent=[0, img.shape[1] * voxel * 1e6, img.shape[0] * voxel * 1e6, 0])
        a.set_title(title)
    for a in ax:
        a.set_xlabel("x (um)")
    ax[0].set_ylabel("z (um)")
    fig.colorbar(im, ax=ax[1:], shrink=0.8, label="delta difference")
    fig.suptitle(f"{len(res.placed)} scans at 50 and 100 nm, stage errors up to 20 voxels of 50 nm")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"figure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scans", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--figure", type=Path, help="also draw the seam figure (4 scans) here")
    p.add_argument("--no-peer", action="store_true", help="skip multiview-stitcher")
    a = p.parse_args()
    print(f"{'scans':>5} {'output Mvox':>11} {'register s':>10} {'fuse s':>7} {'levels s':>8} {'total s':>7} "
          f"{'Mvox/s':>7} {'error vox':>9} | {'peer reg s':>10} {'peer error vox':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.scans:
            sim = simulate_overlap(Path(tmp) / f"s{n}", n_scans=n, seed=n)
            res = stitch_outputs([s.out for s in sim.scans], Path(tmp) / f"o{n}", block_shape=(128, 128, 128))
            t = res.report["timing_s"]
            corr = np.array([s["correction_m"] for s in res.report["scans"]])
            err = np.array([s.error_m for s in sim.scans])
            mvox = np.prod(res.shape) / 1e6
            levels = sum(v for k, v in t.items() if k.startswith("s") and k[1:].isdigit())
            peer = None if a.no_peer else multiview_stitcher_peer(sim)
            peer_txt = f"{peer[1]:10.1f} {peer[0]:14.3f}" if peer else f"{'-':>10} {'-':>14}"
            print(f"{n:5d} {mvox:11.1f} {t['register']:10.1f} {t['fuse']:7.1f} {levels:8.1f} {t['total']:7.1f} "
                  f"{mvox / t['total']:7.2f} {position_error(corr, err):9.3f} | {peer_txt}", flush=True)
            if a.figure and n == 4:
                figure(sim, res, a.figure)


if __name__ == "__main__":
    main()
