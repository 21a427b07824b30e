"""Segmentation throughput on this CPU: voxels per second for affinity inference (the shipped U-Net),
fragments (watershed) and agglomeration (waterz), set beside the paper's ~0.1 s per cubic micrometre
(Kuan et al. 2020, CNN segmentation of XNH volumes; its segmented volume has 50 nm voxels, 8000 voxels/um^3).

Peers measured in the same run: inference with 1 torch thread vs all cores; fragments by the affinity-graph
watershed (waterz) vs the distance-transform seeded watershed (scikit-image); agglomeration by waterz vs
scikit-image's RAG hierarchical merging on the same fragments.

    python bench/bench_segment.py [--small]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from xnh_stream.segment.data import simulate_labelled
from xnh_stream.segment.evaluate import evaluate
from xnh_stream.segment.pipeline import SegmentParams, merge_enclosed_segments
from xnh_stream.segment.postprocess import agglomerate, fragments_watershed
from xnh_stream.segment.predict import predict_affinities
from xnh_stream.segment.unet import AffinityModel

PAPER_S_PER_UM3 = 0.1
PAPER_VOXEL_M = 50e-9


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def skimage_agglomerate(affs: np.ndarray, frag: np.ndarray, threshold: float) -> np.ndarray:
    """Peer: mean-boundary RAG merging (scikit-image) on the boundary map 1 - mean affinity."""
    from skimage import graph

    boundary = 1.0 - affs.mean(axis=0)
    rag = graph.rag_boundary(frag.astype(np.int64), boundary.astype(np.float64))

    def weight(g, src, dst, n):
        default = {"weight": 0.0, "count": 0}
        c1, c2 = g[src].get(n, default), g[dst].get(n, default)
        count = c1["count"] + c2["count"]
        return {"count": count, "weight": (c1["count"] * c1["weight"] + c2["count"] * c2["weight"]) / count}

    def merge(g, src, dst):
        pass

    return graph.merge_hierarchical(frag.astype(np.int64), rag, thresh=threshold, rag_copy=False,
                                    in_place_merge=True, merge_func=merge, weight_func=weight)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a 32 x 64 x 64 crop (quick check)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    print("simulating and reconstructing a default scan (seed 2000) ...", flush=True)
    vol = simulate_labelled(2000)
    raw, labels, mask = vol.raw, vol.labels, vol.mask
    if a.small:
        box = (slice(0, 32), slice(32, 96), slice(32, 96))
        raw, labels, mask = raw[box], labels[box], mask[box]
    n = raw.size
    model = AffinityModel.load()
    params = SegmentParams.for_model(model)
    ncpu = os.cpu_count() or 1

    torch.set_num_threads(1)
    predict_affinities(model, raw[:24, :24, :24], device=a.device)  # warm-up
    affs, t_inf1 = timed(predict_affinities, model, raw, device=a.device)
    torch.set_num_threads(ncpu)
    _, t_inf = timed(predict_affinities, model, raw, device=a.device)
    frag, t_ws = timed(fragments_watershed, affs, params.fragment_threshold, params.seed_distance,
                       method=params.fragment_method)
    other = "distance" if params.fragment_method == "affinity" else "affinity"
    _, t_ws_peer = timed(fragments_watershed, affs, params.fragment_threshold, params.seed_distance, method=other)
    (seg_waterz,), t_ag = timed(agglomerate, affs, frag, [params.threshold])
    seg, t_enc = timed(merge_enclosed_segments, affs, frag, seg_waterz, params.enclosed)
    seg_peer, t_ag_peer = timed(skimage_agglomerate, affs, frag, params.threshold)

    vox_um3 = (1e-6 / PAPER_VOXEL_M) ** 3
    print(f"\nvolume {raw.shape} = {n} voxels, {len(np.unique(frag))} fragments, {len(np.unique(seg))} segments; "
          f"{ncpu} cores, device {a.device}")
    print(f"{'stage':<34}{'s':>8}{'voxels/s':>12}{'s/um^3 @50nm':>15}")
    rows = [(f"inference, 1 thread", t_inf1), (f"inference, {ncpu} threads", t_inf),
            (f"fragments ({params.fragment_method}, ours)", t_ws), (f"fragments ({other}, peer)", t_ws_peer),
            ("agglomeration (waterz, ours)", t_ag), (f"enclosed merge ({params.enclosed}, ours)", t_enc),
            ("agglomeration (skimage RAG, peer)", t_ag_peer)]
    for name, t in rows:
        print(f"{name:<34}{t:8.2f}{n / t:12.0f}{vox_um3 * t / n:15.3f}")
    total = t_inf + t_ws + t_ag + t_enc
    print(f"{'total (all threads, ours)':<34}{total:8.2f}{n / total:12.0f}{vox_um3 * total / n:15.3f}")
    print(f"\npaper: ~{PAPER_S_PER_UM3} s/um^3 at 50 nm (= {vox_um3 / PAPER_S_PER_UM3:.0f} voxels/s); "
          f"ours on this CPU: {vox_um3 * total / n:.3f} s/um^3 = {vox_um3 * total / n / PAPER_S_PER_UM3:.2f} x the paper's "
          f"time; at the simulation's 100 nm voxels {1000 * total / n:.4f} s/um^3")
    print(f"ratios: threads {t_inf1 / t_inf:.2f}x, fragments ours/peer {t_ws / t_ws_peer:.2f}, "
          f"agglomeration ours/peer {t_ag / t_ag_peer:.2f}")
    print(f"scores (ours: waterz + enclosed merge): {evaluate(seg, labels, mask).line()}")
    print(f"scores (waterz alone):                  {evaluate(seg_waterz, labels, mask).line()}")
    print(f"scores (skimage RAG peer):              {evaluate(seg_peer, labels, mask).line()}")
    peer_enc = merge_enclosed_segments(affs, frag, seg_peer, params.enclosed)
    print(f"scores (skimage RAG + enclosed merge):  {evaluate(peer_enc, labels, mask).line()}")


if __name__ == "__main__":
    main()
