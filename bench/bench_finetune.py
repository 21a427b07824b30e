"""Fine-tuning the shipped model on a few labelled blocks of a tissue family it was never trained on (issue 19,
item 3): three disjoint 48^3 blocks cut from one volume of such a family (``voronoi-fine`` by default; the
shipped model's record says which families it was trained on; inside its field of view and sample mask as far
as three fit), fine-tuned on two, the third scored before and after; then the fine-tuned model (with the
post-processing re-tuned on the two training blocks) on a whole other volume of that family and on a
``neural`` volume, beside the shipped model with its own post-processing and with the post-processing
re-tuned on the two training blocks.

    python bench/bench_finetune.py [--cache /tmp/seg19] [--source voronoi-fine_2500] [--iterations 600] [--out DIR]

Volumes are read from ``--cache`` (``bench/bench_segment.py --cache`` writes them: ``FAMILY_SEED.h5``) or
simulated and reconstructed there.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations, product
from pathlib import Path

import numpy as np
import torch
from skimage.measure import label as connected

from xnh_stream.segment.data import load_labelled, save_labelled, simulate_labelled
from xnh_stream.segment.evaluate import count_merges, evaluate
from xnh_stream.segment.finetune import FinetuneConfig, finetune, save_block, summary_lines
from xnh_stream.segment.mask import sample_mask
from xnh_stream.segment.pipeline import SegmentParams, segment_volume
from xnh_stream.segment.unet import AffinityModel

EDGE = 48


def volume(cache: Path, name: str):
    """``FAMILY_SEED`` from the cache, simulated and reconstructed (and cached) when missing."""
    path = cache / f"{name}.h5"
    if not path.exists():
        family, seed = name.rsplit("_", 1)
        save_labelled(path, simulate_labelled(int(seed), family=family))
    return load_labelled(path)


def cut_blocks(vol, out: Path) -> list[Path]:
    """Three disjoint ``EDGE``^3 blocks at z 8, the most covered by field of view and sample mask (voxels outside
    are masked out), labels made connected components of each block."""
    sm = sample_mask(vol.raw).full()
    m = vol.mask & (sm if sm is not None else True)
    z = (vol.raw.shape[0] - EDGE) // 2
    cov = {(z, y, x): m[z:z + EDGE, y:y + EDGE, x:x + EDGE].mean()
           for y, x in product(range(0, vol.raw.shape[1] - EDGE + 1, 4), range(0, vol.raw.shape[2] - EDGE + 1, 4))}
    best = max((c for c in combinations([k for k, f in cov.items() if f > 0.8], 3)
                if all(any(abs(a - b) >= EDGE for a, b in zip(p, q)) for p, q in combinations(c, 2))),
               key=lambda c: min(cov[k] for k in c))
    paths = []
    for k, corner in enumerate(best, 1):
        box = tuple(slice(c, c + EDGE) for c in corner)
        lab = connected(vol.labels[box], background=0, connectivity=1).astype(np.uint32)
        paths.append(save_block(out / f"block{k}.h5", vol.raw, lab, corner, m[box], vol.voxel_m))
        print(f"block{k}: corner {corner}, {lab.max()} objects, in field of view and sample {cov[corner]:.3f}")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/seg19"))
    ap.add_argument("--source", default="voronoi-fine_2500", help="volume the blocks are cut from")
    ap.add_argument("--others", default="voronoi-fine_3500,neural_2000", help="whole volumes scored after")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_finetune"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    blocks = [load_labelled(p) for p in cut_blocks(volume(a.cache, a.source), a.out)]
    model = finetune(blocks[:2], blocks[2:], cfg=FinetuneConfig(iterations=a.iterations, device="cpu"),
                     out=a.out / f"finetuned_{a.iterations}.pt", progress=False)
    print("\n".join(summary_lines(model.record)))
    shipped = AffinityModel.load()
    retuned = SegmentParams(**model.record["finetune"]["postprocess_before_retuned"])
    runs = (("shipped", shipped, SegmentParams.for_model(shipped)), ("shipped, re-tuned", shipped, retuned),
            (f"fine-tuned {a.iterations}", model, SegmentParams.for_model(model)))
    for name in a.others.split(","):
        vol = volume(a.cache, name)
        for label, m, params in runs:
            t = time.perf_counter()
            seg = segment_volume(vol.raw, m, params, "cpu").labels
            s = evaluate(seg, vol.labels, vol.mask)
            print(f"{name:<14}{label:<18} adapted Rand {s.adapted_rand:.3f}  VOI split {s.voi_split:.3f}  merge "
                  f"{s.voi_merge:.3f}  merges>1k {count_merges(seg, vol.labels, 1000, vol.mask)}  "
                  f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
