"""A simulated leg (issue 20, item 4): a chain of overlapping raw scans along a tissue pin with long neurites
through all of them, processed and stitched unattended by ``xnh-stream overnight`` and the stitched volume
segmented by ``xnh-stream segment --block-shape --swc``, each command in its own process: wall time and
peak resident memory per process, the stitched places against the truth, seam continuity of the segmentation
(``bench_seams.py``'s measures) and a cost model for the real leg (12 scans of 2048^3).

    python bench/bench_leg.py [--scans 12] [--nx 128] [--angles 180] [--overlap 0.4] [--voxel-nm 100]
                              [--bend-px 48] [--neurite-radius-nm 400] [--keep DIR]

The pin bends as the paper's leg does: a parabolic arc whose middle lies ``--bend-px`` voxels off the line
through its ends (``simulate_overlap_nxtomo``'s ``bend_px``), so neighbouring scans are offset across the
rotation axis as well as along it; ``--bend-px 0`` gives a straight chain along ``z``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_seams import mid_scan_continuity, true_frame_shift

from xnh_stream.io.omezarr import read_volume
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.pipeline import find_segmentation
from xnh_stream.segment.seams import scan_boxes, seam_continuity
from xnh_stream.simulate.overlap import OverlapSet, simulate_overlap_nxtomo
from xnh_stream.stitch.register import weighted_ncc
from xnh_stream.stitch.scans import fov_distance, load_scan, sample_scan

CLI = [sys.executable, "-m", "actors.cli"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its wall time (s) and peak resident memory (MiB: the process's ``VmHWM``, polled every
    0.1 s; ``ru_maxrss`` would count this process's memory, which the child inherits at fork)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    while proc.poll() is None:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kib = max(peak_kib, int(text.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - t0, peak_kib / 1024


def region_correlations(sim: OverlapSet, report: dict, stitched: Path) -> list[tuple[str, float, float]]:
    """Per placed scan: the stitched volume's and the scan's own correlation with the phantom's delta in the
    scan's region (its field of view less 4 voxels), the scan resampled onto the stitched grid at its solved
    place (as tests/test_stitch.py measures it on directly simulated outputs)."""
    vol, voxel = read_volume(stitched / "volume.ome.zarr")
    vol = np.asarray(vol)
    origin = np.asarray(report["output"]["origin_m"])
    truth = sim.render(origin + true_frame_shift(sim, report), voxel, vol.shape, blur_voxels=0.0)
    found = []
    for s in report["scans"]:
        if not s["placed"]:
            continue
        scan = load_scan(s["out"])
        shift = np.asarray(s["correction_m"])
        region = fov_distance(scan, shift, origin, voxel, vol.shape, "cylinder") > 4 * scan.voxel_m
        alone = sample_scan(scan, scan.level_for(voxel), shift, origin, voxel, vol.shape)
        ones = np.ones(int(region.sum()), np.float32)
        found.append((s["name"], round(weighted_ncc(vol[region], truth[region], ones), 4),
                      round(weighted_ncc(alone[region], truth[region], ones), 4)))
    return found


def run(work: Path, n_scans: int = 12, nx: int = 128, angles: int = 180, overlap: float = 0.4, seed: int = 11,
        block: tuple[int, int, int] = (64, 64, 64), voxel_m: float = 100e-9, bend_px: float = 48.0,
        neurite_radius_m: float | None = None) -> dict:
    """Simulate, run overnight (process + stitch) and segment; the measures (module docstring)."""
    t0 = time.perf_counter()
    sim = simulate_overlap_nxtomo(work / "raw", n_scans=n_scans, voxel_m=voxel_m, nx=nx, overlap=overlap,
                                  max_error_voxels=5,
                                  seed=seed, n_angles=angles, neurites=3, sample_radius_px=0.44 * nx,
                                  sample_name="leg", bend_px=bend_px,
                                  neurite_radius_m=4 * voxel_m if neurite_radius_m is None else neurite_radius_m)
    simulate_s = time.perf_counter() - t0
    out = work / "out"
    overnight_s, overnight_mib = timed(CLI + ["--quiet", "overnight", str(work / "raw"), "--out", str(out),
                                              "--local", "--settle-s", "0"])
    stitched = out / "leg.stitched"
    report = json.loads((stitched / "stitch.json").read_text())
    segment_s, segment_mib = timed(CLI + ["--quiet", "segment", str(stitched), "--out", str(stitched),
                                          "--block-shape", *map(str, block), "--swc", str(stitched / "swc")])
    account = json.loads((out / "overnight.json").read_text())
    per_scan = sorted(account.get("durations_s", {}).values())
    placed = [s["placed"] for s in report["scans"]]
    corr = np.array([s["correction_m"] for s in report["scans"]])[placed]
    err = np.array([s.error_m for s in sim.scans])[placed]
    miss = ((corr - corr.mean(0)) - (err - err.mean(0))) / sim.voxel_m
    labels = read_volume(find_segmentation(stitched))[0]
    origin, voxel, shape = (np.asarray(report["output"]["origin_m"]), report["output"]["voxel_m"],
                            tuple(report["output"]["shape"]))
    shift = true_frame_shift(sim, report)
    truth = sim.render_labels(origin + shift, voxel, shape)
    inside = np.zeros(shape, bool)
    for box in scan_boxes(report).values():
        inside[box] = True
    scores = evaluate(np.where(inside, labels, 0), truth, inside & (truth > 0))
    seams_all = seam_continuity(labels, truth, report)
    seams_neurites = seam_continuity(labels, truth, report, objects=sim.neurites)
    mid = mid_scan_continuity(labels, truth, report, round(nx // 2 * overlap), 8)
    voxels = int(np.prod(shape))
    regions = region_correlations(sim, report, stitched)
    gain = [st - one for _, st, one in regions]
    # cost model of the stitch and the segmentation ~ output voxels; the real leg: 12 scans of 2048^3 overlapping
    # by ``overlap`` along the chain: (12 (1 - overlap) + overlap) 2048^3 output voxels. (Processing a scan is
    # the chain's own cost model, README: bench_chain.py; at these sizes fixed costs dominate it.)
    leg_voxels = 2048**3 * (12 * (1 - overlap) + overlap)
    stitch_s = float(report.get("timing_s", {}).get("total", 0.0))
    places = np.array([s.true_origin_m for s in sim.scans]) / voxel_m
    return {"scans": n_scans, "nx": nx, "angles": angles, "voxel_nm": voxel_m * 1e9, "bend_px": bend_px,
            "neurite_radius_nm": (4 * voxel_m if neurite_radius_m is None else neurite_radius_m) * 1e9,
            "neighbour_offsets_across_voxels": np.abs(np.diff(places[:, 1:], axis=0)).max(axis=1).tolist(),
            "stitched_shape": list(shape),
            "placed": int(sum(placed)), "isolated": [s["name"] for s in report["scans"] if not s["placed"]],
            "position_error_voxels_max_per_axis": np.abs(miss).max(axis=0).round(3).tolist(),
            "seconds": {"simulate": round(simulate_s, 1), "overnight (process + stitch)": round(overnight_s, 1),
                        "segment": round(segment_s, 1), "stitch (stitch.json)": report.get("timing_s"),
                        "per scan (overnight.json), min / median / max": [per_scan[0], float(np.median(per_scan)),
                                                                          per_scan[-1]] if per_scan else []},
            "peak_rss_mib": {"overnight": round(overnight_mib), "segment": round(segment_mib)},
            "correlation_with_phantom_per_scan_region (stitched, alone)": {n: [a, b] for n, a, b in regions},
            "stitched_minus_alone_min_max": [round(min(gain), 4), round(max(gain), 4)],
            "adapted_rand": round(scores.adapted_rand, 3),
            "seam_all": [sum(c.kept for c in seams_all.crossings), len(seams_all.crossings)],
            "seam_neurites": [sum(c.kept for c in seams_neurites.crossings), len(seams_neurites.crossings)],
            "mid_scan_all": [sum(c.kept for c in mid.crossings), len(mid.crossings)],
            "rates_voxels_per_s": {"stitch": round(voxels / stitch_s) if stitch_s else None,
                                   "segment (blockwise, SWC)": round(voxels / segment_s)},
            "leg_hours_2_cores": {"stitch": round(stitch_s / voxels * leg_voxels / 3600, 1),
                                  "segment": round(segment_s / voxels * leg_voxels / 3600, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=12)
    ap.add_argument("--nx", type=int, default=128)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--overlap", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--voxel-nm", type=float, default=100.0, help="voxel size of every scan (default %(default)s)")
    ap.add_argument("--bend-px", type=float, default=48.0,
                    help="sideways sagitta of the pin's arc in voxels; 0: straight (default %(default)s)")
    ap.add_argument("--neurite-radius-nm", type=float,
                    help="radius of the three neurites, their 2-voxel membrane included (default 4 voxels)")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="bench_leg_"))
    try:
        print(json.dumps(run(work, a.scans, a.nx, a.angles, a.overlap, a.seed,
                                voxel_m=a.voxel_nm * 1e-9, bend_px=a.bend_px,
                                neurite_radius_m=None if a.neurite_radius_nm is None else a.neurite_radius_nm * 1e-9),
                            indent=1, default=float))
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
