"""Segmentation throughput on this CPU: voxels per second for affinity inference (the shipped U-Net),
fragments (watershed) and agglomeration (waterz), set beside the paper's ~0.1 s per cubic micrometre
(Kuan et al. 2020, CNN segmentation of XNH volumes; its segmented volume has 50 nm voxels, 8000 voxels/um^3).

Peers measured in the same run: inference with 1 torch thread vs all cores, at the model's scales and at scale 1
alone (``SegmentParams.scales``); fragments by the affinity-graph
watershed (waterz) vs the distance-transform seeded watershed (scikit-image); agglomeration by waterz vs
scikit-image's RAG hierarchical merging on the same fragments.

Then, per tissue family (``segment/data.py`` ``DATA_FAMILIES``: three generators that share no geometry code,
``neural``, ``voronoi`` and ``shells``, and their variants; the table says which the shipped model was trained
on), on held-out seeds: adapted Rand error, VOI split / merge, merges of two truth cells of more than 1000
voxels and time per cubic micrometre of ours (shipped model, default parameters) against two baselines that
see no truth (Otsu threshold + connected components, a gradient watershed) and the oracle (the threshold +
connected components with the lowest error on the truth). Scores inside the field of view, truth 0 ignored.

    python bench/bench_segment.py [--small] [--seeds 2000,3000] [--cache DIR] [--families neural,voronoi]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from xnh_stream.segment.data import FAMILIES, load_labelled, save_labelled, simulate_labelled
from xnh_stream.segment.evaluate import (count_merges, evaluate, gradient_watershed, kept_whole, oracle_threshold,
                                         otsu_segmentation, seconds_per_um3)
from xnh_stream.segment.mask import sample_mask
from xnh_stream.segment.pipeline import SegmentParams, merge_enclosed_segments, segment_volume
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


def labelled(seed: int, family: str, cache: str | None):
    """The held-out volume of ``seed`` and ``family``, simulated and reconstructed (or read from ``cache``)."""
    from pathlib import Path

    path = Path(cache) / f"{family}_{seed}.h5" if cache else None
    if path is not None and path.exists():
        return load_labelled(path)
    print(f"simulating and reconstructing a default scan ({family}, seed {seed}) ...", flush=True)
    t = time.perf_counter()
    vol = simulate_labelled(seed, family=family)
    print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    if path is not None:
        save_labelled(path, vol)
    return vol


METHODS = ("ours", "otsu + cc", "gradient watershed", "oracle threshold + cc")


def score_methods(vol, model: AffinityModel, device: str) -> dict[str, dict]:
    """Every method on one labelled volume: scores, merges of cells > 1000 voxels, seconds."""
    out: dict[str, dict] = {}
    raw, truth, fov = vol.raw, vol.labels, vol.mask
    (res, t_ours) = timed(segment_volume, raw, model, SegmentParams.for_model(model), device)
    t0 = time.perf_counter()
    sample = sample_mask(raw).full()
    t_mask = time.perf_counter() - t0
    sample = fov if sample is None else sample  # baselines segment the same sample as ours
    (otsu, _), t_otsu = timed(otsu_segmentation, raw, sample)
    ws, t_ws = timed(gradient_watershed, raw, sample)
    (t_best, oracle, _), t_oracle = timed(oracle_threshold, raw, truth, fov, None, sample)
    for name, seg, t in (("ours", res.labels, t_ours), ("otsu + cc", otsu, t_otsu + t_mask),
                         ("gradient watershed", ws, t_ws + t_mask), ("oracle threshold + cc", oracle, t_oracle)):
        s = evaluate(seg, truth, fov)
        out[name] = {"adapted_rand": s.adapted_rand, "voi_split": s.voi_split, "voi_merge": s.voi_merge,
                     "merges": count_merges(seg, truth, 1000, fov), "seconds": t,
                     "s_um3": seconds_per_um3(t, raw.size, vol.voxel_m),
                     "segments": int(len(np.unique(seg[fov])) - (0 in seg[fov]))}
    out["oracle threshold + cc"]["threshold"] = t_best
    out["kept whole"] = kept_whole(res.labels, truth, fov)
    out["cells"] = int(len(np.unique(truth[fov])) - (0 in truth[fov]))
    return out


def families_table(seeds: list[int], families: list[str], cache: str | None, device: str, small: bool) -> None:
    """Print the per-family table of ours against the baselines and the oracle."""
    model = AffinityModel.load()
    torch.set_num_threads(1)
    trained = {(d.get("family") or "neural") for d in model.record.get("data", [])}
    rows: dict[str, list[dict]] = {}
    for family in families:
        for seed in seeds:
            vol = labelled(seed, family, cache)
            if small:
                box = (slice(0, 32), slice(32, 96), slice(32, 96))
                vol.raw, vol.labels, vol.mask = vol.raw[box], vol.labels[box], vol.mask[box]
            r = score_methods(vol, model, device)
            rows.setdefault(family, []).append(r)
            um3 = vol.raw.size * (vol.voxel_m * 1e6) ** 3
            kind = "trained on: a held-out seed" if family in trained else "never trained on"
            print(f"\n{family} seed {seed} ({kind}): {r['cells']} truth cells in the field of view, {vol.raw.shape} voxels of "
                  f"{vol.voxel_m * 1e9:.0f} nm ({um3:.0f} um^3); oracle threshold "
                  f"{r['oracle threshold + cc']['threshold']:.3g}")
            print(f"{'method':<24}{'ARE':>7}{'VOI split':>11}{'VOI merge':>11}{'merges>1k':>11}{'segments':>10}"
                  f"{'s':>8}{'s/um^3':>9}")
            for m in METHODS:
                x = r[m]
                print(f"{m:<24}{x['adapted_rand']:7.3f}{x['voi_split']:11.3f}{x['voi_merge']:11.3f}{x['merges']:11d}"
                      f"{x['segments']:10d}{x['seconds']:8.2f}{x['s_um3']:9.4f}")
            print(f"ours, {r['kept whole'].line()}")
    print(f"\nper family, mean over seeds {','.join(map(str, seeds))} (held-out seeds; the model was trained on "
          f"{', '.join(sorted(trained))} and nothing else; "
          f"s/um^3 at the simulation's 100 nm voxels, x8 at 50 nm, /8 at 200 nm: time goes with voxels)")
    print(f"{'family':<16}{'method':<24}{'ARE':>7}{'VOI split':>11}{'VOI merge':>11}{'merges>1k':>11}{'s/um^3':>9}"
          "   (merges summed over seeds)")
    for family, rs in rows.items():
        for m in METHODS:
            mean = {k: float(np.mean([r[m][k] for r in rs])) for k in ("adapted_rand", "voi_split", "voi_merge",
                                                                     "s_um3")}
            merges = sum(r[m]["merges"] for r in rs)
            print(f"{family:<16}{m:<24}{mean['adapted_rand']:7.3f}{mean['voi_split']:11.3f}{mean['voi_merge']:11.3f}"
                  f"{merges:11d}{mean['s_um3']:9.4f}")
        kept = [r["kept whole"] for r in rs]
        print(f"{family:<16}ours, kept whole: thin objects {np.nanmean([k.thin_share for k in kept]):.2f}, thick "
              f"{np.nanmean([k.thick_share for k in kept]):.2f} (mean over seeds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a 32 x 64 x 64 crop (quick check)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", default="2000,3000", help="held-out seeds per family (default %(default)s)")
    ap.add_argument("--families", default=",".join(f for f in FAMILIES if not f.endswith("-varied")),
                    help="tissue families (default %(default)s; the -varied ones are training data)")
    ap.add_argument("--cache", help="folder keeping the simulated volumes (FAMILY_SEED.h5) between runs")
    a = ap.parse_args()
    vol = labelled(2000, "neural", a.cache)
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
    affs, t_inf1 = timed(predict_affinities, model, raw, device=a.device, scales=params.scales)
    torch.set_num_threads(ncpu)
    _, t_inf = timed(predict_affinities, model, raw, device=a.device, scales=params.scales)
    _, t_inf_one = timed(predict_affinities, model, raw, device=a.device, scales=(1,))
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
    sc = "+".join(map(str, params.scales))
    rows = [(f"inference (scales {sc}), 1 thread", t_inf1), (f"inference (scales {sc}), {ncpu} threads", t_inf),
            (f"inference (scale 1 alone), {ncpu} thr.", t_inf_one),
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
    families_table([int(s) for s in a.seeds.split(",")], a.families.split(","), a.cache, a.device, a.small)


if __name__ == "__main__":
    main()
