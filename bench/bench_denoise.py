"""Noise2Inverse denoising (``denoise.method: noise2inverse``) on foreign scans: correlation with the phantom.

Scans written by ``tests/foreign.py`` (astra projections, HoToPy-style Fresnel propagation of four distances,
NXtomo files; a different simulator from ours): one material of delta/beta 30, 100 and 300, and a body of 100
with inclusions of 30 (two materials), a body wider than the field of view, 96^2 frames, 180 angles, 20 000
photons in a flat unless ``--photons`` says otherwise. Each scan runs through ``process`` with the defaults, then with the denoiser (and any other variant
given), and the volume's Pearson correlation with the phantom's delta is measured after the best sub-voxel
shift (3-D, Nelder-Mead) in the disk of radius 0.4 nx, rows 4 to ny - 4 (``docs/delta_beta.md``'s measure).
The report's truth-free figures (noise of the plain volume and the bound on the denoised one's error, on rows
not trained on) are printed beside it. ``--scans`` also takes scans of our own two simulators, held out of what
the defaults were tuned on (``voxel-air``, ``voxel-wide``, ``analytic-air``, ``analytic-wide``: 128 x 64 frames; r in
the sample and the field of view, no shift), and ``--option NAME=JSON`` adds a variant of any options (the
reconstruction sweep of ``docs/delta_beta.md``, "Where the last hundredths of r go").

    python bench/bench_denoise.py [--size 96] [--angles 180] [--steps 400] [--photons 20000]
                                  [--variants default,denoise,refine,refine+denoise] [--scans one-material-30,...]
                                  [--option 'ram-lak={"fbp.window": "ram-lak"}' ...]
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
         "body-100-inclusions-30": {"delta_beta": 100.0, "delta_beta_inclusions": 30.0},
         "body-300-inclusions-30": {"delta_beta": 300.0, "delta_beta_inclusions": 30.0}}
#: Scans of our own two simulators (held out of what the defaults were tuned on, docs/delta_beta.md):
#: ``(simulator, pin radius in px or None for the default pin in air)``, 128 x 64 frames.
HELD_OUT = {"voxel-air": ("voxel", None), "voxel-wide": ("voxel", 94.0), "analytic-air": ("analytic", None),
            "analytic-wide": ("analytic", 1000.0)}


def variants(steps: int) -> dict[str, dict[str, object]]:
    """The option sets compared."""
    return {"default": {}, "denoise": {"denoise.method": "noise2inverse", "denoise.steps": steps},
            "refine": {"ctf.refine": 10},
            "refine+denoise": {"ctf.refine": 10, "denoise.method": "noise2inverse", "denoise.steps": steps}}


def held_out_scan(name: str, folder: Path, angles: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """One of :data:`HELD_OUT` written into ``folder``: its scan folder, true delta and the voxels compared
    (inside the sample, where there is one, and seen at every angle)."""
    from xnh_stream.simulate.analytic import write_analytic_scan  # noqa: PLC0415
    from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan  # noqa: PLC0415

    kind, radius = HELD_OUT[name]
    cfg = SimulationConfig(nx=128, ny=64, n_angles=angles, seed=5, sample_radius_px=radius)
    if kind == "voxel":
        simulate_scan(folder, cfg)
    else:
        write_analytic_scan(folder, cfg, truth=True)
    truth, _ = read_truth(folder)
    mask = truth["field_of_view"].astype(bool) & (truth["sample"].astype(bool) if "sample" in truth else True)
    return folder, np.asarray(truth["delta"], np.float64), np.broadcast_to(mask, truth["delta"].shape)


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
    ap.add_argument("--scans", default=",".join(SCANS),
                    help=f"foreign scans ({', '.join(SCANS)}) and held-out simulator scans ({', '.join(HELD_OUT)})")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                    help='another variant: a name and its options, e.g. ram-lak=\'{"fbp.window": "ram-lak"}\'')
    args = ap.parse_args()
    chosen = {k: v for k, v in variants(args.steps).items() if k in args.variants.split(",")}
    for item in args.option:
        name, _, options = item.partition("=")
        chosen[name] = json.loads(options)
    n = args.size
    print(f"load at start {os.getloadavg()[0]:.2f}; {n}^2 frames, {args.angles} angles, {args.photons:g} photons, "
          f"{len(chosen)} variants")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scans.split(","):
            if name in HELD_OUT:  # r in the sample, no shift (the simulator's grid is the chain's)
                folder, phantom, mask = held_out_scan(name, Path(tmp) / name, args.angles)
            else:
                spec = ForeignSpec(nx=n, ny=n, n_angles=args.angles, seed=11, photons=args.photons, **SCANS[name])
                truth = write_foreign_scan(Path(tmp) / name, spec)
                folder = truth.files[0].parent
                phantom = np.stack([truth.slice_delta(j, n) for j in range(n)]).astype(np.float64)
                yy, xx = np.mgrid[:n, :n]
                disk = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 <= (0.4 * n) ** 2
                mask = np.zeros(phantom.shape, bool)
                mask[4:n - 4] = disk
            for label, options in chosen.items():
                out = Path(tmp) / f"out_{len(rows)}"
                t0 = time.perf_counter()
                process_scan(folder, out, ProcessConfig.from_mapping(dict(options)))
                took = time.perf_counter() - t0
                report = json.loads((out / "report.json").read_text())
                image = out / "volume.ome.zarr" / ("denoised" if "denoise" in label else "")
                volume = np.asarray(read_volume(image)[0], dtype=np.float64)
                if name in HELD_OUT:
                    r = float(np.corrcoef(volume[mask], phantom[mask])[0, 1])
                else:
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
