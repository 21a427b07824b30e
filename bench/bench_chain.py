"""The final pass out of core: time and peak memory against scan size and Ray workers, and a cost model.

For each scan size an analytic four-distance scan is written (``xnh_stream.simulate.analytic``, cached under
``--cache``), then ``xnh-stream process`` runs on a Ray instance started here (``ray start --head`` with
``--num-cpus W``), in its own process, while every process of the run is sampled: the command (the driver)
and every Ray worker, and Ray's own services apart. Figures printed per run:

* wall time and the chain's own step timings (``report.json`` ``timing_s``);
* the largest peak resident memory (RSS) of any single process, and of any Ray worker, with the
  unique-set size (USS: memory not shared with other processes, e.g. the object store's pages);
* the growth exponent of time against the number of voxel updates (angles x rows x columns^2) and of the
  phase step against the pixels retrieved (angles x distances x rows x columns), fitted over the sizes;
* a cost model for a 2048^2 x 4 x 2000 scan on N CPU nodes and on one GPU, from the measured step costs.

Usage::

    python bench/bench_chain.py                      # 3 sizes up to 4 x 400 x (1024 x 512), 1 and 2 workers
    python bench/bench_chain.py --sizes 256x128x100 512x256x200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RAY_SERVICES = ("gcs_server", "raylet", "plasma", "dashboard", "log_monitor", "monitor.py", "runtime_env",
                "ray_client_server", "agent")


def parse_size(text: str) -> tuple[int, int, int]:
    """``NXxNYxANGLES`` -> (nx, ny, angles)."""
    nx, ny, angles = (int(v) for v in text.lower().split("x"))
    return nx, ny, angles


def write_scan(cache: Path, nx: int, ny: int, angles: int) -> tuple[Path, float]:
    """The analytic scan of this size (written once, kept in the cache); returns its folder and delta/beta."""
    from xnh_stream.simulate.analytic import read_analytic_model, write_analytic_scan
    from xnh_stream.simulate.scan import SimulationConfig

    folder = cache / f"analytic_{nx}x{ny}x{angles}"
    if not (folder / "analytic.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        write_analytic_scan(folder, SimulationConfig.id16a(nx=nx, ny=ny, n_angles=angles), workers=2)
        print(f"  wrote {folder.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder, float(read_analytic_model(folder).mean_delta_beta())


class Sampler(threading.Thread):
    """Peak RSS / USS of every process of a run, by kind, sampled every ``period_s``."""

    def __init__(self, driver: psutil.Process, ray_pids: set[int], period_s: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.driver, self.ray_pids, self.period_s = driver, ray_pids, period_s
        self.peak: dict[str, tuple[float, float, str]] = {}  # kind -> (rss, uss, name)
        self.stop = threading.Event()

    def kind(self, p: psutil.Process) -> str:
        if p.pid == self.driver.pid:
            return "driver"
        name = " ".join(p.cmdline()[:3]) if p.is_running() else ""
        if any(s in name for s in RAY_SERVICES):
            return "ray services"
        return "ray worker"

    def run(self) -> None:
        while not self.stop.is_set():
            procs = [self.driver]
            for pid in list(self.ray_pids):
                try:
                    procs.append(psutil.Process(pid))
                    procs += psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    pass
            for p in {q.pid: q for q in procs}.values():
                try:
                    mem = p.memory_full_info()
                    kind = self.kind(p)
                except psutil.Error:
                    continue
                rss, uss = mem.rss / 2**20, mem.uss / 2**20
                old = self.peak.get(kind, (0.0, 0.0, ""))
                if rss > old[0]:
                    self.peak[kind] = (rss, max(uss, old[1]), p.name())
                elif uss > old[1]:
                    self.peak[kind] = (old[0], uss, old[2])
            self.stop.wait(self.period_s)


def run_once(scan: Path, delta_beta: float, workers: int, out: Path) -> dict:
    """``xnh-stream process`` on a fresh Ray of ``workers`` CPUs, sampled; returns the figures."""
    port = 20000 + os.getpid() % 10000
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    before = set(psutil.pids())
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", f"--num-cpus={workers}", f"--port={port}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        ray_pids = set(psutil.pids()) - before
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "actors.cli", "-q", "process", str(scan), "--out", str(out), "--address",
               "auto", "--delta-beta", str(delta_beta)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = Sampler(psutil.Process(proc.pid), ray_pids)
        sampler.start()
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"process failed ({proc.returncode}): {stderr[-2000:]}")
        report = json.loads((out / "report.json").read_text())
        return {"wall_s": wall, "timing": report["timing_s"], "peak": sampler.peak,
                "fsc_m": report["fsc"]["resolution_m"], "frames": report["frames"]["received"]}
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def fit_exponent(x: list[float], y: list[float]) -> float:
    """Slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) >= 2 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["256x128x100", "512x256x200", "1024x512x400"],
                    help="scan sizes NXxNYxANGLES per distance (default %(default)s)")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="Ray CPUs (default %(default)s)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "xnh-bench-chain",
                    help="where the simulated scans are kept between runs (default %(default)s)")
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; sizes {a.sizes}, workers {a.workers}")
    rows = []
    for size in a.sizes:
        nx, ny, angles = parse_size(size)
        scan, db = write_scan(a.cache, nx, ny, angles)
        for w in a.workers:
            r = run_once(scan, db, w, a.cache / f"out_{size}_{w}")
            volume_gib = ny * nx * nx * 4 / 2**30
            peak = r["peak"]
            single = max(v[0] for v in peak.values())
            worker = peak.get("ray worker", (0.0, 0.0, ""))
            print(f"{size:>14} x4  workers {w}: {r['wall_s']:7.1f} s wall  volume {volume_gib:5.2f} GiB  "
                  f"largest process RSS {single:6.0f} MiB  (driver {peak.get('driver', (0, 0))[0]:.0f}, "
                  f"largest Ray worker {worker[0]:.0f} MiB RSS / {worker[1]:.0f} MiB USS, Ray services "
                  f"{peak.get('ray services', (0, 0))[0]:.0f} MiB)  load {os.getloadavg()[0]:.1f}", flush=True)
            steps = {k: v for k, v in r["timing"].items() if k != "total"}
            print("                steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
            rows.append({"size": size, "nx": nx, "ny": ny, "angles": angles, "workers": w, **r})
    for w in a.workers:
        mine = [r for r in rows if r["workers"] == w]
        if len(mine) >= 2:
            updates = [r["angles"] * r["ny"] * r["nx"] ** 2 for r in mine]
            pixels = [4 * r["angles"] * r["ny"] * r["nx"] for r in mine]
            print(f"workers {w}: wall ~ (voxel updates)^{fit_exponent(updates, [r['wall_s'] for r in mine]):.2f}; "
                  f"backproject ~ ^{fit_exponent(updates, [r['timing'].get('backproject', math.nan) for r in mine]):.2f}; "
                  f"phase ~ (pixels)^{fit_exponent(pixels, [r['timing'].get('phase', math.nan) for r in mine]):.2f}")
    biggest = max(rows, key=lambda r: (r["angles"] * r["ny"] * r["nx"] ** 2, r["workers"]))
    cost_model(biggest)


def cost_model(r: dict) -> None:
    """Extrapolate the measured step costs to 2048^2 x 4 x 2000 (N CPU nodes; one GPU)."""
    w = r["workers"]
    t = r["timing"]
    updates = r["angles"] * r["ny"] * r["nx"] ** 2
    pixels = 4 * r["angles"] * r["ny"] * r["nx"]
    big_updates = 2000 * 2048 * 2048**2
    big_pixels = 4 * 2000 * 2048 * 2048
    bp_cpu = t.get("backproject", 0) * w / updates  # CPU-seconds per voxel update
    ph_cpu = t.get("phase", 0) * w / pixels  # CPU-seconds per retrieved pixel
    rest = sum(v for k, v in t.items() if k not in ("backproject", "phase", "total")) * w / pixels
    print(f"\ncost model from the {r['size']} run with {w} workers: back-projection {bp_cpu * 1e9:.2f} ns of CPU per "
          f"voxel update, phase retrieval {ph_cpu * 1e6:.2f} us per pixel (4 distances each), other steps "
          f"{rest * 1e6:.2f} us per pixel")
    for nodes, cores in ((1, 32), (4, 32), (16, 32)):
        cpu = big_updates * bp_cpu + big_pixels * (ph_cpu + rest)
        hours = cpu / (nodes * cores * 0.7) / 3600  # 70 % parallel efficiency
        print(f"  2048^2 x 4 x 2000 on {nodes:2d} node(s) of {cores} cores: ~{hours:.1f} h "
              f"({cpu / 3600:.0f} CPU-hours; assumes this machine's per-core speed)")
    gpu_updates_per_s, gpu_pixels_per_s = 30e9, 2e9  # published back-projectors and cuFFT-bound CTF, assumed
    gpu = big_updates / gpu_updates_per_s + big_pixels / gpu_pixels_per_s
    print(f"  on one GPU (assumed {gpu_updates_per_s / 1e9:.0f} G updates/s, {gpu_pixels_per_s / 1e9:.0f} G CTF "
          f"pixels/s, I/O overlapped): ~{gpu / 60:.0f} min; not measured here (no GPU lent)")


if __name__ == "__main__":
    main()
