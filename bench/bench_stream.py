"""Streaming throughput, latency and memory on this machine (embedded local Ray).

Figures printed:
* sustained frames per second and p50 / p95 latency from a frame "landing" (handed to the stream by a
  synthetic detector) to its preview projection, for 512^2 and 2048^2 frames, and the share of the live
  shards' CPU that the live refresh (views for the page and the running FSC) takes;
* resident memory of the driver and all Ray workers sampled across a long synthetic scan (it must stay
  flat: frames wait on disk in the distance store, previews are not kept);
* the cost of moving a frame between actors (put + actor call by reference) against processing it
  (Paganin preview of one frame), measured in the same run.

* with ``--paced FPS``: 2048^2 frames landing at FPS frames/s (a frame lands when the detector wrote it, however
  late the stream polls), the latency from an angle's last frame to its CTF projection in the full-resolution
  live slices (what the scientist watches) and in every live shard too (``--paced-angles`` per distance; the
  issue's target is p95 <= 1 s at 2), the previews skipped and the load average over the run; ``--busy N``
  repeats it with N CPU-bound processes running beside the stream (another job on the same machine), the
  quiet and the busy runs taking turns ``--rounds`` times.

Usage: python bench/bench_stream.py [--small] [--long N_ANGLES] [--no-memory | --memory-only]
       [--paced FPS [--only-paced] [--paced-angles N] [--in-flight N] [--busy N] [--rounds R]]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses  # noqa: E402

from actors.stream import StreamDriver, StreamOptions  # noqa: E402
from xnh_stream.chain.report import Completion  # noqa: E402
from xnh_stream.chain.steps import AngleProcessor  # noqa: E402
from xnh_stream.config import ProcessConfig  # noqa: E402
from xnh_stream.io.sources import FrameRecord, distance_key  # noqa: E402
from xnh_stream.simulate.scan import SimulationConfig  # noqa: E402


#: Noise fields per frame size, drawn once: drawing 2048^2 normal deviates per frame took 68 ms of the two cores
#: the pipeline is measured on (a detector's frame costs a read from the page cache, a few ms).
_NOISE: dict[tuple[int, ...], np.ndarray] = {}


def _noise(shape: tuple[int, ...], k: int) -> np.ndarray:
    if shape not in _NOISE:
        _NOISE[shape] = np.random.default_rng(0).normal(0, 30, (4, *shape)).astype(np.float32)
    return _NOISE[shape][k % 4]


@dataclasses.dataclass(frozen=True)
class SyntheticRecord(FrameRecord):
    """A frame made when it is read (one of four noise fields on a smooth beam; the processing cost is real)."""

    beam: np.ndarray | None = None
    level: float = 1.0

    def read(self, retry_s: float = 2.0) -> np.ndarray:
        out = self.beam * np.float32(self.level)
        out += np.float32(100)
        out += _noise(self.beam.shape, abs(hash(self.frame_id)))
        return out


class SyntheticDetector:
    """Frames of a four-distance scan made on the fly (noise on a smooth beam; the processing cost is real)."""

    def __init__(self, n: int, n_angles: int, per_poll: int = 8, seed: int = 0, rate: float | None = None) -> None:
        self.geo = SimulationConfig().geometry().distances
        self.n, self.rng = n, np.random.default_rng(seed)
        self.plan = []
        for k, g in enumerate(self.geo):
            seq = [(2, 0.0, 0)] * 2 + [(1, 0.0, 0)] * 3 + [(0, a, 0) for a in np.arange(n_angles) * 180 / n_angles]
            seq += [(1, 180.0, 0)] * 3 + [(0, 180.0, -1), (0, 0.0, -1)]
            self.plan += [(k, i, key, ang, ctrl) for i, (key, ang, ctrl) in enumerate(seq)]
        self.pos, self.per_poll, self.landed = 0, per_poll, {}
        self.rate, self.t0 = rate, None  # frames/s of a paced detector (None: as fast as it is read)
        y, x = np.mgrid[0:n, 0:n] / n
        self.beam = (10000 * np.exp(-((y - 0.5) ** 2 + (x - 0.5) ** 2))).astype(np.float32)

    def poll(self):
        out = []
        stop = self.pos + self.per_poll
        if self.rate is not None:
            now = time.perf_counter()
            self.t0 = now if self.t0 is None else self.t0
            stop = min(stop, int((now - self.t0) * self.rate) + 1)
        for j, (k, i, key, ang, ctrl) in enumerate(self.plan[self.pos : stop], start=self.pos):
            level = 0 if key == 2 else (1.0 if key == 1 else 0.9)
            fid = f"d{k}#{i}"
            # a paced frame landed when the detector wrote it, however late the stream polls
            self.landed[fid] = time.perf_counter() if self.rate is None else self.t0 + j / self.rate
            g = self.geo[k]
            out.append(SyntheticRecord(f"d{k}", i, fid, distance_key(g.z1_m), f"d{k}", key, ctrl, float(ang), 0.1,
                                       float(i), g, (self.n, self.n), "synthetic", None, beam=self.beam, level=level))
        self.pos += len(out)
        return out

    def completion(self):
        return Completion("synthetic scan written") if self.pos >= len(self.plan) else None


def _spin(stop) -> None:  # pragma: no cover - a neighbour process
    x = 0.0
    while not stop.is_set():
        for i in range(100_000):
            x += i * 1e-9


class Neighbours:
    """``n`` CPU-bound processes (pure Python arithmetic, no sleep) beside the stream while in the block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stop = multiprocessing.Event()
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Neighbours:
        self.procs = [multiprocessing.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)


def tree_rss_mib() -> float:
    me = psutil.Process()
    procs = [me] + me.children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run(n: int, n_angles: int, samples: list | None = None, live_binning: int = 0, bp_batch: int | None = None,
        rate: float | None = None, in_flight: int = 4) -> dict:
    det = SyntheticDetector(n, n_angles, rate=rate)
    latencies = []
    stages: dict[str, list[float]] = {}

    def progress(p):
        for stage, values in p.latency_s.items():
            stages.setdefault(stage, []).extend(values)

    def done(work):
        if work.kind == "preview":
            latencies.append(time.perf_counter() - det.landed[work.frame_ids[0]])
        if samples is not None and len(latencies) % 50 == 0:
            samples.append((len(latencies), tree_rss_mib()))

    out = Path(tempfile.mkdtemp(prefix="xnh-bench-"))
    settings = {"sample.delta_beta": 100.0, "fbp.cor": (n - 1) / 2, "stream.live_binning": live_binning}
    if bp_batch is not None:
        settings["stream.bp_batch"] = bp_batch
    config = ProcessConfig.from_mapping(settings)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    try:
        result = StreamDriver(det, out, out, config, StreamOptions(n_workers=2, n_shards=2, max_in_flight=in_flight,
                                                                   poll_interval_s=0.02, final_pass=False),
                              on_result=done, on_progress=progress).run()
        dt = time.perf_counter() - t0
    finally:  # a 2048^2 run leaves ~2.7 GB of store: runs must not fill the disk (and its writeback slow the next)
        shutil.rmtree(out, ignore_errors=True)
    n_frames = len(det.plan)
    lat = np.array(latencies) * 1e3
    cpu = result.shard_cpu_s
    return {"frames": n_frames, "fps": n_frames / dt, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "counts": result.counts, "binning": result.live_binning,
            "refresh_share": cpu["views"] / max(1e-9, cpu["add"] + cpu["views"]), "shard_cpu": cpu,
            "to_final_ms": np.percentile(np.array(stages.get("landing_to_final", [np.nan])) * 1e3, [50, 95]),
            "to_slices_ms": np.percentile(np.array(stages.get("landing_to_slices", [np.nan])) * 1e3, [50, 95]),
            "skipped": result.previews_skipped, "coarse": result.finals_coarse, "load": (load0, os.getloadavg()[0]),
            "stages_ms": {k: float(np.median(v) * 1e3) for k, v in sorted(stages.items()) if v}}


def move_vs_process(n: int) -> tuple[float, float]:
    @ray.remote
    class Sink:
        def take(self, frame):
            return frame.shape[0]

    sink = Sink.remote()
    frame = np.random.default_rng(0).normal(1, 0.01, (n, n)).astype(np.float32)
    ray.get(sink.take.remote(ray.put(frame)))
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        ray.get(sink.take.remote(ray.put(frame)))
    move = (time.perf_counter() - t) / reps
    geo = SimulationConfig().geometry()
    proc = AngleProcessor(geo, (n, n), 100.0, ProcessConfig())
    proc.preview(0, frame, 0.0)
    t = time.perf_counter()
    for _ in range(5):
        proc.preview(0, frame, 0.0)
    return move * 1e3, (time.perf_counter() - t) / 5 * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", action="store_true", help="quick run (fewer angles, no 2048^2)")
    ap.add_argument("--long", type=int, default=None, help="angles per distance of the memory run")
    ap.add_argument("--long-binning", type=int, default=0, help="live binning of the memory run (0 = auto)")
    ap.add_argument("--memory-only", action="store_true", help="only the long memory run")
    ap.add_argument("--no-memory", action="store_true", help="skip the long memory run")
    ap.add_argument("--paced", type=float, default=None, metavar="FPS",
                    help="also a 2048^2 run with the detector paced at FPS frames/s (latency without backlog)")
    ap.add_argument("--only-paced", action="store_true", help="with --paced: only that run")
    ap.add_argument("--in-flight", type=int, default=4, help="phase tasks in flight in the paced run")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="with --paced: also run it with N CPU-bound processes beside the stream")
    ap.add_argument("--only-busy", action="store_true", help="with --busy: skip the quiet run")
    ap.add_argument("--rounds", type=int, default=1, help="with --paced: quiet (and busy) runs, taking turns")
    ap.add_argument("--paced-angles", type=int, default=64,
                    help="angles per distance of the paced run (its first frames include the actors' warm-up)")
    a = ap.parse_args()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    print(f"embedded local Ray, {os.cpu_count()} CPUs")
    # (frame size, angles per distance, live binning): 512^2 at full resolution and binned 2x (the peer:
    # the same frames, a live volume 8x smaller); 2048^2 with the automatic binning (4x: a 512^3 live
    # volume; full resolution would need 2 x 32 GiB of half-volumes).
    # The live shards back-project stream.bp_batch angles together (default 8); the first line is the
    # one-angle-at-a-time peer on the same frames.
    sizes = [(512, 24 if a.small else 90, 1, 1), (512, 24 if a.small else 90, 1, None),
             (512, 24 if a.small else 90, 2, None)]
    sizes += [] if a.small else [(2048, 16, 0, None)]
    if a.memory_only or a.only_paced:
        sizes = []
    for n, n_angles, b, batch in sizes:
        r = run(n, n_angles, live_binning=b, bp_batch=batch)
        print(f"{n}x{n}, live volume binned {r['binning']}x, back-projection batch "
              f"{batch or ProcessConfig().stream.bp_batch}: {r['frames']} frames, {r['fps']:.1f} frames/s "
              f"sustained, landing-to-preview latency p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms; "
              f"live refresh {100 * r['refresh_share']:.1f} % of the shards' CPU (back-projection "
              f"{r['shard_cpu']['add']:.1f} s, views {r['shard_cpu']['views']:.2f} s); journal {r['counts']}")
    if a.paced:  # 2048^2 frames landing at a.paced frames/s: latency without a backlog
        for round_ in range(a.rounds):
            for busy in ([] if a.only_busy else [0]) + ([a.busy] if a.busy else []):
                with Neighbours(busy):
                    r = run(2048, a.paced_angles, live_binning=0, rate=a.paced, in_flight=a.in_flight)
                (s50, s95), (f50, f95) = r["to_slices_ms"], r["to_final_ms"]
                print(f"2048x2048 paced at {a.paced:g} frames/s, {a.in_flight} phase tasks in flight, "
                      f"{busy} CPU-bound neighbour(s), round {round_ + 1}, load {r['load'][0]:.1f} -> "
                      f"{r['load'][1]:.1f}: {r['fps']:.1f} frames/s sustained; an angle's last frame to its CTF "
                      f"projection in the full-resolution live slices p50 {s50:.0f} ms, p95 {s95:.0f} ms, and in "
                      f"the live volume's shards too p50 {f50:.0f} ms, p95 {f95:.0f} ms; landing-to-preview "
                      f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms; previews skipped {r['skipped']}, "
                      f"finals coarse {r['coarse']}; shards' CPU {r['shard_cpu']['add']:.1f} s")
                print("  median per stage (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in r["stages_ms"].items()))
    long_angles = a.long or (60 if a.small else 900)
    if not a.no_memory:
        samples: list = []
        r = run(512, long_angles, samples, live_binning=a.long_binning)
        rss = np.array([s[1] for s in samples])
        print(f"memory over a 4 x {long_angles}-angle scan of 512^2, live volume binned {r['binning']}x "
              f"({r['frames']} frames, {r['fps']:.1f} frames/s): "
              f"resident MiB (driver + Ray workers) first {rss[0]:.0f}, median {np.median(rss):.0f}, "
              f"last {rss[-1]:.0f}, max {rss.max():.0f}; live refresh {100 * r['refresh_share']:.1f} % of the "
              f"shards' CPU (back-projection {r['shard_cpu']['add']:.1f} s, views {r['shard_cpu']['views']:.2f} s)")
    for n in () if a.memory_only else (512, 2048):
        move, proc = move_vs_process(n)
        print(f"{n}x{n} frame: moving it to an actor {move:.2f} ms vs Paganin preview {proc:.1f} ms "
              f"(ratio {proc / move:.0f}x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
