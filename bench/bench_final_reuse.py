"""The final pass of a streamed scan with and without the stream's flat-fielded frames (chain/frames.py).

Streams a simulated four-distance scan through the live driver in this process (no final pass), which leaves
its flat-fielded frames in OUT/store, then runs the final pass on the scan folder, taking turns: with the
store (``stream_store``; what ``watch`` does) and without it (every frame read from its file and
flat-fielded again; what ``process`` does), ``--rounds`` times each, serially on one core. Each variant is
timed with the page cache warm and cold: before a cold run the scan's files and the store are evicted from
the page cache (``posix_fadvise(DONTNEED)``), so that they come from the disk, as a scan on the facility's
storage would.

Printed: per variant the median wall time and its spread over the rounds, the steps that read frames
(align, material, survey, rotation axis, phase), ``frames.from_stream``, the bytes each source holds and the
load average. The simulated frames are float32 (4 bytes per pixel, as the store's before compression); a
detector's 16-bit frames are half that on disk.

Usage: python bench/bench_final_reuse.py [--nx 256] [--ny 128] [--angles 120] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xnh_stream.chain.final import FinalChain  # noqa: E402
from xnh_stream.chain.report import Completion  # noqa: E402
from xnh_stream.chain.scan import ScanIndex  # noqa: E402
from xnh_stream.config import ProcessConfig  # noqa: E402
from xnh_stream.live.driver import LiveDriver, StreamOptions  # noqa: E402
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan  # noqa: E402

READING_STEPS = ("align", "material", "survey", "rotation_axis", "phase")


class FolderList:
    """A finished scan's records in acquisition order (distance after distance), 50 per poll."""

    def __init__(self, folder: Path) -> None:
        index = ScanIndex.read(folder)
        self.records = [r for d in index.distances for r in sorted(d.frames, key=lambda r: (r.sequence, r.frame_id))]
        self.pos = 0

    def poll(self) -> list:
        batch = self.records[self.pos : self.pos + 50]
        self.pos += len(batch)
        return batch

    def completion(self) -> Completion | None:
        return Completion("every frame delivered") if self.pos >= len(self.records) else None


def evict(*folders: Path) -> None:
    """Drop the folders' files from the page cache (written pages first reach the disk)."""
    os.sync()
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def final_pass(folder: Path, config: ProcessConfig, store: Path | None) -> tuple[float, dict[str, float], int]:
    t0 = time.perf_counter()
    result = FinalChain(ScanIndex.read(folder), None, config, stream_store=store).run()
    wall = time.perf_counter() - t0
    timing = result.report.timing_s if isinstance(result.report.timing_s, dict) else {}
    return wall, {k: float(v) for k, v in timing.items() if k in READING_STEPS}, result.report.frames.from_stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nx", type=int, default=256)
    ap.add_argument("--ny", type=int, default=128)
    ap.add_argument("--angles", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="bench-reuse-"))
    folder, out = base / "scan", base / "out"
    t0 = time.perf_counter()
    simulate_scan(folder, SimulationConfig(nx=args.nx, ny=args.ny, n_angles=args.angles, seed=3, oversample=1))
    _, truth = read_truth(folder)
    config = ProcessConfig.from_mapping({"sample.delta_beta": truth["delta_beta"]})
    print(f"scan {args.ny} x {args.nx} x {args.angles} angles x 4 distances simulated in "
          f"{time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    LiveDriver(FolderList(folder), folder, out, config,
               StreamOptions(n_workers=1, n_shards=1, poll_interval_s=0.0, final_pass=False)).run()
    store = out / "store"
    print(f"streamed in {time.perf_counter() - t0:.0f} s: scan files {size(folder) / 2**20:.0f} MiB, "
          f"store {size(store) / 2**20:.0f} MiB")
    rows: dict[str, list[tuple[float, dict[str, float], int]]] = {}
    for _ in range(args.rounds):
        for cache in ("warm", "cold"):
            for name, path in (("stream's frames", store), ("files", None)):
                if cache == "cold":
                    evict(folder, store)
                else:
                    final_pass(folder, config, path)  # the page cache holds what this variant reads
                rows.setdefault(f"{name}, {cache} cache", []).append(final_pass(folder, config, path))
    print(f"\nfinal pass, serial, {args.rounds} rounds taking turns; load {os.getloadavg()[0]:.2f} at the end")
    print(f"{'frames from':<28}{'wall s (median, min-max)':<28}{'reading steps s':<18}{'from_stream':>12}")
    for name, runs in rows.items():
        walls = np.array([w for w, _, _ in runs])
        steps = np.median([sum(t.values()) for _, t, _ in runs])
        print(f"{name:<28}{np.median(walls):6.2f} ({walls.min():.2f}-{walls.max():.2f}){'':<12}{steps:8.2f}"
              f"{'':<10}{runs[0][2]:>12}")
    for cache in ("warm", "cold"):
        a, b = rows[f"stream's frames, {cache} cache"], rows[f"files, {cache} cache"]
        ratio = np.median([w for w, _, _ in a]) / np.median([w for w, _, _ in b])
        print(f"{cache} cache: with the stream's frames / reading the files = {ratio:.2f}")
    last = rows["stream's frames, warm cache"][-1][1]
    print("steps that read frames (stream's frames, warm):", {k: round(v, 2) for k, v in last.items()})


if __name__ == "__main__":
    main()
