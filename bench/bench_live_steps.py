"""Where a live frame's CPU goes: each step of the live stream timed in this one process, no Ray, no queue.

A synthetic four-distance scan (bench_stream's detector: noise on a smooth beam) goes through the steps the
live stream runs for it, each timed on its own: the driver's (read, flat-field + store + alignment in the
assembler, the quality monitor, loading a work item's frames from the store), the phase worker's (Paganin
preview, the CTF of a final, and the CTF of a final sent coarse: frames binned twice), the two reconstruction
shards of the binned live volume (their batches flushed by ``stream.bp_wait_s``: ``--bp-wait``) and the
full-resolution slice keeper. The sum per final is the CPU the stream needs per angle of the last distance;
at F frames/s it needs F times that of the machine's cores.

Usage: python bench/bench_live_steps.py [--n 2048] [--angles 32] [--bp-wait 5.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_stream import SyntheticDetector  # noqa: E402

from xnh_stream.chain.assembler import ScanAssembler  # noqa: E402
from xnh_stream.chain.warmup import compile_kernels  # noqa: E402
from xnh_stream.config import ProcessConfig  # noqa: E402
from xnh_stream.live.workers import COARSE_BINNING, PhaseWorker, ReconShard, SliceKeeper  # noqa: E402
from xnh_stream.physics.xp import binning_for  # noqa: E402
from xnh_stream.quality.monitor import QualityMonitor  # noqa: E402
from xnh_stream.state.store import DistanceStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2048, help="frame side")
    ap.add_argument("--angles", type=int, default=32, help="angles per distance")
    ap.add_argument("--bp-wait", type=float, default=ProcessConfig().stream.bp_wait_s,
                    help="longest wait of a projection in a shard's batch (stream.bp_wait_s)")
    a = ap.parse_args()
    compile_kernels()
    n = a.n
    det = SyntheticDetector(n, a.angles, per_poll=10**9)
    config = ProcessConfig.from_mapping({"sample.delta_beta": 100.0, "fbp.cor": (n - 1) / 2})
    out = Path(tempfile.mkdtemp(prefix="xnh-steps-"))
    asm = ScanAssembler(4, (n, n), DistanceStore(out / "store", (n, n)), delta_beta_align=config.alignment.delta_beta,
                        align_bin_px=max(1, n // 256), pca_components=config.flatfield.pca_components,
                        align_pad=config.alignment.paganin_pad)
    monitor = QualityMonitor(config, str(out))
    b = binning_for((n, n), 512)
    worker = PhaseWorker((n, n), 100.0, config, b)
    m = n // b
    shards = [ReconShard((m, m), rows, (n - 1) / 2 / b, config.fbp.window, config.fbp.padding,
                         config.stream.bp_batch, a.bp_wait) for rows in ((0, m // 2), (m // 2, m))]
    slicer = SliceKeeper((n, n), (n - 1) / 2, config.fbp.window, config.fbp.padding)
    times: dict[str, list[float]] = {}

    def timed(step: str, fn, *args):
        t0 = time.process_time()
        out_ = fn(*args)
        times.setdefault(step, []).append(time.process_time() - t0)
        return out_

    prepared = False
    for rec in det.poll():
        pixels = timed("driver: read", rec.read)
        works = timed(f"driver: assemble ({'projection' if rec.image_key == 0 else 'dark/flat'})", asm.add, rec,
                      pixels)
        try:  # as the driver: quality figures never stop the stream
            timed("driver: quality monitor", monitor.add_frame, rec, pixels if monitor.wants_pixels(rec) else None)
        except (ValueError, OSError) as exc:
            print(f"quality monitor: {exc}")
        if asm.complete and not prepared:
            prepared = True
            worker.prepare(asm.geometry)
        for work in works:
            timed(f"driver: load ({work.kind})", work.load, asm.store, asm.previews_store)
            result = timed(f"phase: {work.kind}", worker.project, work, asm.shift_models())
            if work.kind == "final":
                coarse = dataclasses.replace(work, coarse=COARSE_BINNING)
                timed("phase: final sent coarse", worker.project, coarse, asm.shift_models())
            else:
                timed("driver: keep preview", asm.previews_store.put, *work.preview_key(), result.full)
            work.unload()
            theta = np.deg2rad(work.theta_deg)
            prev = None if work.preview_theta_deg is None else np.deg2rad(work.preview_theta_deg)
            final = work.kind == "final"
            for s in shards:
                timed(f"shards: {work.kind}", s.add, work.index, theta, result, final, prev)
            timed(f"slices: {work.kind}", slicer.add, work.index, theta, result, final, prev)
    print(f"{n}x{n} frames, 4 distances x {a.angles} angles, live volume binned {b}x, shards' batch wait "
          f"{a.bp_wait:g} s: CPU seconds per call in this process (median, mean over calls, after the first two)")
    for step, v in times.items():
        v = np.array(v[2:] if len(v) > 4 else v) * 1e3
        print(f"  {step:38s} {len(v):4d} calls  median {np.median(v):7.1f} ms  mean {v.mean():7.1f} ms")
    per_final = {k: np.mean(v[2:] if len(v) > 4 else v) for k, v in times.items()}
    full = sum(per_final.get(k, 0.0) for k in ("driver: read", "driver: assemble (projection)",
                                                "driver: quality monitor", "driver: load (final)", "phase: final"))
    full += len(shards) * per_final.get("shards: final", 0.0) + per_final.get("slices: final", 0.0)
    coarse = full - per_final.get("phase: final", 0.0) + per_final.get("phase: final sent coarse", 0.0)
    print(f"per angle of the last distance (a final): {full * 1e3:.0f} ms of CPU, {coarse * 1e3:.0f} ms sent coarse")


if __name__ == "__main__":
    main()
