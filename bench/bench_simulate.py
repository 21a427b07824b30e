"""Write speed of the analytic simulator (xnh_stream.simulate.analytic) at ID16A frame sizes, 1 and 2 workers.

Run ``python bench/bench_simulate.py`` (512 x 512, 1024 x 512 and 2048 x 2048 frames, 1 and 2 workers) or with
``--quick`` (fewer frames). Each configuration runs in its own process, so the peak resident memory it reports
(parent, and the largest worker) is that configuration's. Prints, per configuration, frames/s written (everything
included: projections, flats, darks, HDF5 writes) and the CPU time per frame of parent and workers together, the
CPU time of one projection frame by stage, and two peers measured in the same run: the voxel simulator
(simulate_scan) on a small frame, and the bare NXtomoWriter rate for frames of the same size (the I/O ceiling).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"512x512": (512, 512), "1024x512": (1024, 512), "2048x2048": (2048, 2048)}  # name: (nx, ny)


def _config(nx: int, ny: int, n_angles: int):  # noqa: ANN202
    from xnh_stream.simulate.scan import SimulationConfig

    return SimulationConfig.id16a(nx=nx, ny=ny, n_angles=n_angles, n_flats=4, n_darks=2, return_angles_deg=())


def one(nx: int, ny: int, n_angles: int, workers: int) -> dict:
    """Write one scan in a temporary folder; frames/s and peak memory."""
    from xnh_stream.simulate.analytic import write_analytic_scan

    cfg = _config(nx, ny, n_angles)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        scan = write_analytic_scan(tmp, cfg, workers=workers)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return {"frames": scan.frames_written, "seconds": scan.elapsed_s, "fps": scan.frames_per_second,
            "cpu_ms_per_frame": cpu / scan.frames_written * 1e3, "rss_parent_mib": own.ru_maxrss / 1024,
            "rss_worker_mib": kids.ru_maxrss / 1024 if workers > 1 else None}


def stages(nx: int, ny: int) -> dict:
    """CPU milliseconds of one projection frame, by stage (one process, one FFT thread)."""
    from xnh_stream.simulate.analytic import AnalyticScanModel
    from xnh_stream.simulate.scan import propagate

    cfg = _config(nx, ny, 8)
    model = AnalyticScanModel(cfg)
    specs = model.frame_specs(1)
    proj = [s for s in specs if s.image_key == 0][3]
    flat = [s for s in specs if s.image_key == 1][0]
    g = model._grid(1)
    rows = np.arange(-g.pad_y[0], ny + g.pad_y[1])
    cols = np.arange(-g.pad_x[0], nx + g.pad_x[1])
    t = (cols - (nx - 1) / 2) * g.ratio
    z = (rows - (ny - 1) / 2) * g.ratio
    d = model.geometry.distances[1]
    wave = np.exp(1j * np.zeros(g.transfer.shape, np.float32)).astype(np.complex64)

    def cpu(f, n: int = 3) -> float:
        f()
        c0 = time.process_time()
        for _ in range(n):
            f()
        return (time.process_time() - c0) / n * 1e3

    return {"shapes": len(model.phantom.shapes),
            "projection frame": cpu(lambda: model.render(proj)),
            "  line integrals": cpu(lambda: model.phantom.project(0.7, t, z)),
            "  Fresnel propagation": cpu(lambda: propagate(wave, d.propagation_distance_m, model._lam,
                                                            d.effective_pixel_m, 0, g.transfer, 1)),
            "flat frame (beam, noise, digitise)": cpu(lambda: model.render(flat))}


def writer_rate(nx: int, ny: int) -> float:
    """Bare NXtomoWriter frames/s at this frame size (about 400 MB written)."""
    from xnh_stream.io.nxtomo import NXtomoWriter

    frame = np.random.default_rng(0).integers(9000, 21000, (ny, nx), dtype=np.uint16)
    geo = _config(nx, ny, 2).geometry().distances[0]
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        n = max(8, int(4e8 / frame.nbytes))
        t0 = time.perf_counter()
        with NXtomoWriter(Path(tmp) / "w.nx", (ny, nx), geo) as w:
            for _ in range(n):
                w.append(frame, 0, 0.0, 0.1)
        return n / (time.perf_counter() - t0)


def simulator_peers() -> dict:
    """Voxel vs analytic simulator, frames/s on the same small scan (128 x 64 frames, 60 angles)."""
    from xnh_stream.simulate.analytic import write_analytic_scan
    from xnh_stream.simulate.scan import SimulationConfig, simulate_scan

    small = SimulationConfig(nx=128, ny=64, n_angles=60)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        t0 = time.perf_counter()
        simulate_scan(Path(tmp) / "voxel", small)
        n_frames = 4 * (small.n_darks + 2 * small.n_flats + small.n_angles + len(small.return_angles_deg))
        voxel = n_frames / (time.perf_counter() - t0)
        analytic = write_analytic_scan(Path(tmp) / "analytic", small).frames_per_second
    return {"voxel simulator": voxel, "analytic simulator": analytic}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer frames per configuration")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--one", nargs=4, type=int, metavar=("NX", "NY", "ANGLES", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    print("frames/s: wall clock, everything included; CPU ms/frame: parent and workers together (the cost of a "
          "frame on a core of its own, less sensitive to other jobs on the machine)")
    print(f"{'frame (nx x ny)':>16} {'workers':>7} {'frames':>6} {'frames/s':>9} {'vs 1 worker':>11} "
          f"{'CPU ms/frame':>12} {'parent MiB':>10} {'worker MiB':>10}")
    for name in args.sizes:
        nx, ny = SIZES[name]
        n_angles = (6 if args.quick else 16) if nx * ny > 2e6 else (16 if args.quick else 48)
        base = None
        for w in args.workers:
            cmd = [sys.executable, __file__, "--one", str(nx), str(ny), str(n_angles), str(w)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            base = base or r["fps"]
            worker = f"{r['rss_worker_mib']:.0f}" if r["rss_worker_mib"] else "-"
            print(f"{name:>16} {w:>7} {r['frames']:>6} {r['fps']:>9.1f} {r['fps'] / base:>10.2f}x "
                  f"{r['cpu_ms_per_frame']:>12.1f} {r['rss_parent_mib']:>10.0f} {worker:>10}")
    print("\nCPU ms per frame, one process (ID16A distances, distance 2):")
    for name in args.sizes:
        nx, ny = SIZES[name]
        st = stages(nx, ny)
        print(f"  {name}: " + ", ".join(f"{k.strip()} {v:.1f}" if k != "shapes" else f"{v} shapes"
                                         for k, v in st.items()))
    print("\npeers (same run):")
    for name in args.sizes:
        print(f"  NXtomoWriter alone, {name}: {writer_rate(*SIZES[name]):.1f} frames/s")
    sim = simulator_peers()
    print(f"  128 x 64 frames: voxel simulator {sim['voxel simulator']:.1f} frames/s, analytic "
          f"{sim['analytic simulator']:.1f} frames/s ({sim['analytic simulator'] / sim['voxel simulator']:.1f}x)")


if __name__ == "__main__":
    main()
