"""Segmentation across the seams of stitched scans (issue 20, item 2), through the whole chain.

A column of raw four-distance NXtomo scans of one neural-tissue phantom along ``z`` (the pin axis), each
overlapping the next, with long neurites threaded through all of them and stage places off by a few voxels:
each scan reconstructed by ``process_scan``, the outputs stitched, the stitched volume segmented blockwise
(``segment STITCHED --block-shape ... --swc``, the shipped network), then against the phantom's labels:

* seam continuity: every true object with enough voxels on both sides of a seam (the links the stitch used),
  the same segment on both sides? For the threaded neurites and for every object; beside it the same measure
  across a plane in the middle of each scan (no seam there), the segmentation's own rate of splits;
* each threaded neurite's segment: its skeleton one tree (one component, no cycle), its nodes inside the
  neurite in the world frame (the SWC read back, nodes mapped to the phantom through the stitch's frame);
* adapted Rand error of the stitched segmentation; time per step.

    python bench/bench_seams.py [--scans 4] [--nx 128] [--overlap 0.35] [--neurites 3] [--neurite-radius-nm 400]
                                [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from xnh_stream.io.omezarr import read_volume
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.pipeline import find_segmentation
from xnh_stream.segment.seams import SeamContinuity, crossings, scan_boxes, seam_continuity, skeleton_trees
from xnh_stream.simulate.overlap import OverlapSet, simulate_overlap_nxtomo


def true_frame_shift(sim: OverlapSet, report: dict) -> np.ndarray:
    """What to add to a stitched world position to get the phantom's: the stitch fixes the scans' places only
    up to a common shift (the mean of their nominal errors less its corrections)."""
    placed = [s["placed"] for s in report["scans"]]
    corr = np.array([s["correction_m"] for s in report["scans"]])[placed]
    err = np.array([s.error_m for s in sim.scans])[placed]
    return (err - corr).mean(axis=0)


def mid_scan_continuity(labels: np.ndarray, truth: np.ndarray, report: dict, overlap: int, margin: int,
                        objects: tuple[int, ...] | None = None) -> SeamContinuity:
    """The seam measure across a plane in the middle of each scan along ``z`` (two halves overlapping by
    ``overlap`` voxels, as two scans would): the splits the segmentation makes where there is no seam."""
    found = []
    for name, box in scan_boxes(report).items():
        mid = (box[0].start + box[0].stop) // 2
        lower = (slice(box[0].start, mid + overlap // 2), box[1], box[2])
        upper = (slice(mid - overlap // 2, box[0].stop), box[1], box[2])
        found += crossings(labels, truth, lower, upper, margin, seam=f"{name} middle")
    return SeamContinuity([c for c in found if objects is None or c.truth in objects])


def read_swc_nodes(path: Path) -> np.ndarray:
    """SWC node positions ``x y z`` (nm) of a file."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return np.array([[float(v) for v in r[2:5]] for r in rows])


def run(work: Path, n_scans: int = 4, nx: int = 128, overlap: float = 0.35, neurites: int = 3, seed: int = 7,
        block: tuple[int, int, int] = (64, 64, 64), in_air: bool = True, neurite_radius_m: float = 400e-9) -> dict:
    """Simulate, reconstruct, stitch and segment; returns the measures (see the module docstring)."""
    from actors.cli import main
    from xnh_stream.chain.batch import process_scan
    from xnh_stream.stitch import stitch_outputs

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sim = simulate_overlap_nxtomo(work / "raw", n_scans=n_scans, nx=nx, overlap=overlap, max_error_voxels=5,
                                  seed=seed, n_angles=180, neurites=neurites, neurite_radius_m=neurite_radius_m,
                                  sample_radius_px=0.44 * nx if in_air else None)
    seconds["simulate"] = time.perf_counter() - t0
    outs = []
    t0 = time.perf_counter()
    for s in sim.scans:
        process_scan(s.out, out=work / "out" / s.name)
        outs.append(work / "out" / s.name)
    seconds["process"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = stitch_outputs(outs, work / "stitched", block_shape=(64, 64, 64))
    seconds["stitch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    swc = work / "stitched" / "swc"
    assert main(["--quiet", "segment", str(res.out), "--out", str(res.out), "--block-shape", *map(str, block),
                 "--swc", str(swc)]) == 0
    seconds["segment"] = time.perf_counter() - t0
    labels = read_volume(find_segmentation(res.out))[0]
    shift = true_frame_shift(sim, res.report)
    truth = sim.render_labels(res.origin_m + shift, res.voxel_m, res.shape)
    inside = np.zeros(res.shape, bool)
    for box in scan_boxes(res.report).values():
        inside[box] = True  # only where a scan reconstructed
    scores = evaluate(np.where(inside, labels, 0), truth, inside & (truth > 0))
    margin = 8
    step = round(nx // 2 * overlap)
    seams_all = seam_continuity(labels, truth, res.report, margin)
    seams_neurites = seam_continuity(labels, truth, res.report, margin, objects=sim.neurites)
    mid_all = mid_scan_continuity(labels, truth, res.report, step, margin)
    trees = {}
    for nid in sim.neurites:
        ids, counts = np.unique(labels[truth == nid], return_counts=True)
        seg = int(ids[np.argmax(counts)])
        path = swc / f"{seg}.swc"
        entry = {"segment": seg, "share": float(counts.max() / counts.sum()), "swc": path.exists()}
        if path.exists():
            from osteoid import Skeleton

            skel = Skeleton.from_swc(path.read_text())
            entry["components"], entry["cycles"] = skeleton_trees(skel)
            nodes = read_swc_nodes(path)[:, ::-1] * 1e-9 + shift  # z y x metres in the phantom's frame
            k = np.rint((nodes - np.asarray(sim.origin_m)) / sim.voxel_m).astype(int)
            ok = np.all((k >= 0) & (k < np.asarray(sim.labels.shape)), axis=1)
            entry["nodes_in_neurite"] = float(np.mean(sim.labels[tuple(k[ok].T)] == nid))
            zs = (nodes[:, 0] - res.origin_m[0] - shift[0]) / res.voxel_m
            entry["z_span_voxels"] = [float(zs.min()), float(zs.max())]
        trees[nid] = entry
    return {"scans": n_scans, "nx": nx, "overlap": overlap, "shape": list(res.shape), "seconds": seconds,
            "adapted_rand": scores.adapted_rand, "voi_split": scores.voi_split, "voi_merge": scores.voi_merge,
            "seam_neurites": seams_neurites.as_dict(), "seam_all": {"crossings": len(seams_all.crossings),
                                                                    "kept": seams_all.kept},
            "mid_scan_all": {"crossings": len(mid_all.crossings), "kept": mid_all.kept},
            "neurites": trees, "links": [(lk["a"], lk["b"], lk["used"]) for lk in res.report["links"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--nx", type=int, default=128)
    ap.add_argument("--overlap", type=float, default=0.35)
    ap.add_argument("--neurites", type=int, default=3)
    ap.add_argument("--neurite-radius-nm", type=float, default=400.0,
                    help="radius of the threaded neurites, their 2-voxel membrane included (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--wide", action="store_true", help="tissue wider than the field of view (default: in air)")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="bench_seams_"))
    try:
        out = run(work, a.scans, a.nx, a.overlap, a.neurites, a.seed, in_air=not a.wide,
                  neurite_radius_m=a.neurite_radius_nm * 1e-9)
        print(json.dumps(out, indent=1, default=float))
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
