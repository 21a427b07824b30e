"""Noise2Inverse denoising (``denoise.method: noise2inverse``) on foreign scans: correlation with the phantom.

Scans written by ``tests/foreign.py`` (astra projections, HoToPy-style Fresnel propagation of four distances,
NXtomo files; a different simulator from ours): one material of delta/beta 30, 100 and 300, and a body of 100
with inclusions of 30 (two materials), a body wider than the field of view, 96^2 frames, 180 angles, 20 000
photons in a flat unless ``--photons`` says otherwise. Each scan runs through ``process`` with the defaults, then with the denoiser (and any other variant
given), and the volume's Pearson correlation with the phantom's delta is measured after the best sub-voxel
shift (3-D, Nelder-Mead) in the disk of radius 0.4 nx, rows 4 to ny - 4 (``docs/delta_beta.md``'s measure).
The report's truth-free figures (noise of the plain volume and the bound on the denoised one's error, on rows
not trained on) are printed beside it.

    python bench/bench_denoise.py [--size 96] [--angles 180] [--steps 400] [--photons 20000]
                                  [--variants default,denoise,refine,refine+denoise] [--scans one-material-30,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.foreign import ForeignSpec, write_foreign_scan  # noqa: E402
from xnh_stream.chain.batch import process_scan  # noqa: E402
from xnh_stream.config import ProcessConfig  # noqa: E402
from xnh_stream.io.omezarr import read_volume  # noqa: E402

SCANS = {"one-material-30": {"delta_beta": 30.0}, "one-material-100": {"delta_beta": 100.0},
         "one-material-300": {"delta_beta": 300.0},
         "body-100-inclusions-30": {"delta_beta": 100.0, "delta_beta_inclusions": 30.0}}


def variants(steps: int) -> dict[str, dict[str, object]]:
    """The option sets compared."""
    return {"default": {}, "denoise": {"denoise.method": "noise2inverse", "denoise.steps": steps},
            "refine": {"ctf.refine": 10},
            "refine+denoise": {"ctf.refine": 10, "denoise.method": "noise2inverse", "denoise.steps": steps}}


def correlation(volume: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation within the mask after the best sub-voxel shift of ``volume``."""
    def r(shift: np.ndarray) -> float:
        a = ndimage.shift(volume, shift, order=1, mode="nearest")[mask]
        b = truth[mask]
        a, b = a - a.mean(), b - b.mean()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    res = minimize(lambda s: -r(s), np.zeros(3), method="Nelder-Mead", options={"xatol": 0.02, "fatol": 1e-6})
    return -float(res.fun)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--photons", type=float, default=20000.0, help="photons per pixel of a flat (dose)")
    ap.add_argument("--variants", default="default,denoise")
    ap.add_argument("--scans", default=",".join(SCANS))
    args = ap.parse_args()
    chosen = {k: v for k, v in variants(args.steps).items() if k in args.variants.split(",")}
    n = args.size
    print(f"load at start {os.getloadavg()[0]:.2f}; {n}^2 frames, {args.angles} angles, {args.photons:g} photons, "
          f"{len(chosen)} variants")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scans.split(","):
            spec = ForeignSpec(nx=n, ny=n, n_angles=args.angles, seed=11, photons=args.photons, **SCANS[name])
            truth = write_foreign_scan(Path(tmp) / name, spec)
            phantom = np.stack([truth.slice_delta(j, n) for j in range(n)]).astype(np.float64)
            yy, xx = np.mgrid[:n, :n]
            disk = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 <= (0.4 * n) ** 2
            mask = np.zeros(phantom.shape, bool)
            mask[4:n - 4] = disk
            for label, options in chosen.items():
                out = Path(tmp) / f"out_{len(rows)}"
                t0 = time.perf_counter()
                process_scan(truth.files[0].parent, out, ProcessConfig.from_mapping(dict(options)))
                took = time.perf_counter() - t0
                report = json.loads((out / "report.json").read_text())
                image = out / "volume.ome.zarr" / ("denoised" if "denoise" in label else "")
                volume = np.asarray(read_volume(image)[0], dtype=np.float64)
                r = correlation(volume, phantom, mask)
                d = report.get("denoise") or {}
                rows.append((name, label, r, took, d.get("noise_rms"), d.get("error_rms_bound"), d.get("gain"),
                             report["phase"]["delta_beta"]))
                print(f"{name:26s} {label:15s} r {r:.4f}  {took:6.1f} s  delta/beta used "
                      f"{report['phase']['delta_beta']:.4g}  denoise: noise {d.get('noise_rms')} bound "
                      f"{d.get('error_rms_bound')} gain {d.get('gain')}  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
