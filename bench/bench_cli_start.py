"""How long ``xnh-stream`` takes to refuse a missing scan folder, as a user runs it, and what the time is made of.

Run from the repository root: ``python bench/bench_cli_start.py [--runs 5]`` (a few seconds; uses the console
script of the virtual environment beside this interpreter). Prints the median wall time of

* ``xnh-stream process /nonexistent --out OUT`` (embedded Ray by default: refused before Ray starts), and with
  ``--local``; ``xnh-stream watch /nonexistent --out OUT`` (refused before its servers and Ray);
* its peers measured in the same run: the bare interpreter (``python -c pass``), ``xnh-stream --version``
  (entry point and parser), and ``import actors.cli``;

then the slowest imports of the failing command (``python -X importtime``), and which of the heavy libraries
(Ray, torch, dask, scikit-image, numba, h5py, zarr, SciPy) it loaded (none is expected).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("xnh-stream")
HEAVY = ("ray", "torch", "dask", "skimage", "numba", "h5py", "zarr", "scipy", "xraydb")


def wall(cmd: list[str], runs: int) -> tuple[float, int]:
    """Median wall time of ``cmd`` over ``runs`` runs (s), and its exit code."""
    times, code = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        code = subprocess.run(cmd, cwd=REPO, capture_output=True, check=False).returncode
        times.append(time.perf_counter() - t)
    return statistics.median(times), code


def imports(cmd: list[str]) -> tuple[list[tuple[float, str]], list[str]]:
    """The cumulative import times (s) of ``cmd``'s top-level imports, slowest first, and the heavy ones."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd], cwd=REPO, capture_output=True, text=True,
                         check=False)
    top: list[tuple[float, str]] = []
    loaded = set()
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line[12:]:
            continue
        _, cumulative, name = line[12:].split("|")
        if not cumulative.strip().isdigit():
            continue
        loaded.add(name.strip())
        if not name[1:].startswith(" "):  # a top-level import (nested ones are indented further)
            top.append((int(cumulative) * 1e-6, name.strip()))
    return sorted(top, reverse=True), sorted(h for h in HEAVY if h in loaded)


def main() -> None:
    """Measure and print (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not SCRIPT.exists():
        sys.exit(f"no console script at {SCRIPT}: run with the virtual environment's python")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out")
        rows = [
            ("python -c pass (interpreter start)", [sys.executable, "-c", "pass"]),
            ("python -c 'import actors.cli'", [sys.executable, "-c", "import actors.cli"]),
            ("xnh-stream --version", [str(SCRIPT), "--version"]),
            ("xnh-stream process /nonexistent --out OUT", [str(SCRIPT), "process", "/nonexistent", "--out", out]),
            ("  ... --local", [str(SCRIPT), "process", "/nonexistent", "--out", out, "--local"]),
            ("xnh-stream watch /nonexistent --out OUT", [str(SCRIPT), "watch", "/nonexistent", "--out", out]),
        ]
        print(f"median of {args.runs} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        for label, cmd in rows:
            t, code = wall(cmd, args.runs)
            print(f"  {label:<45} {t:6.3f} s  (exit {code})")
        top, heavy = imports(["-m", "actors.cli", "process", "/nonexistent", "--out", out])
        print("slowest top-level imports of the failing process command (cumulative):")
        for seconds, name in top[:8]:
            print(f"  {name:<45} {seconds:6.3f} s")
        print(f"heavy libraries loaded: {', '.join(heavy) or 'none'}; output folder created: {Path(out).exists()}")


if __name__ == "__main__":
    main()
