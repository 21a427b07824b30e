"""Fresnel refinement of the CTF (``ctf.refine``) against the linear CTF and HoToPy's methods, same holograms.

A homogeneous object (delta/beta 100, 17 keV, 100 nm pixels, four ID16A-like distances) whose phase is a smooth
random field of 0.4 and 0.8 rad standard deviation (peaks of 2-4 rad: a cell body), propagated exactly on a
field larger than the frame (the object leaves the field of view), cropped, Poisson noise of 5000 photons.
Every method sees the same holograms; scores are the correlation and the RMS error against the true phase in
the frame's interior (mean removed). HoToPy (Lucht et al. 2025) runs its CTF and its nonlinear Tikhonov
(``hotopy.holo.Tikhonov``) with the same one-material constraint over a small grid of its regularisation
(its best row is printed as such); ours with its defaults. Then the cost per angle of the CTF and of the
refinement at a larger frame size, same run.

    python bench/bench_refine.py [--size 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry, wavelength_m
from xnh_stream.physics.phase import CTFRetriever
from xnh_stream.physics.refine import FresnelRefiner

ENERGY_KEV, Z_TOTAL, VOXEL, DB = 17.0, 1.2, 100e-9, 100.0
Z1 = (0.0120, 0.0131, 0.0149, 0.0178)
ALPHA_LOW = 2 * 2 * len(Z1) / DB**2  # ctf.alpha_low auto (2) for one material, as chain/steps.py


def geometry() -> ScanGeometry:
    pixel = VOXEL * Z_TOTAL / min(Z1)
    return ScanGeometry(tuple(DistanceGeometry(z1, Z_TOTAL - z1, pixel, ENERGY_KEV) for z1 in Z1))


def phantom(n: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random phase (white noise through a Gaussian of 2.5 px), negative on average."""
    f = np.fft.fftfreq(n)
    g = np.exp(-2 * np.pi**2 * 2.5**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * g))
    return -3 * std + std * field / field.std()


def holograms(phi: np.ndarray, geo: ScanGeometry, crop: int) -> np.ndarray:
    lam = wavelength_m(ENERGY_KEV)
    fy = np.fft.fftfreq(phi.shape[0], geo.voxel_m)
    f2 = fy[:, None] ** 2 + fy[None, :] ** 2
    t = np.fft.fft2(np.exp(phi / DB + 1j * phi))
    out = np.stack([np.abs(np.fft.ifft2(t * np.exp(-1j * np.pi * lam * d * f2))) ** 2
                    for d in geo.propagation_distances_m])
    return out[:, crop:-crop, crop:-crop]


def score(r: np.ndarray, truth: np.ndarray, margin: int = 16) -> tuple[float, float]:
    a = np.asarray(r, np.float64)[margin:-margin, margin:-margin]
    b = truth[margin:-margin, margin:-margin]
    a, b = a - a.mean(), b - b.mean()
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float(np.sqrt(np.mean((a - b) ** 2)))


def hotopy_rows(data: np.ndarray, geo: ScanGeometry) -> list[tuple[str, np.ndarray, float]]:
    try:
        import torch
        from hotopy.holo import CTF, Tikhonov
    except ImportError as exc:  # pragma: no cover - optional peer
        print(f"HoToPy not available ({exc}): its rows are left out")
        return []
    torch.set_num_threads(os.cpu_count() or 1)
    lam = wavelength_m(ENERGY_KEV)
    fresnel = [geo.voxel_m**2 / (lam * d) for d in geo.propagation_distances_m]
    y = torch.as_tensor(data, dtype=torch.float64)
    rows = []
    for alpha in ((1e-3, 1e-1), (1e-2, 1e-1), (ALPHA_LOW, 0.05)):
        t0 = time.perf_counter()
        phi = CTF(data.shape[1:], fresnel, alpha=alpha, betadelta=1 / DB, npad=2, dtype=torch.float64)(y)
        rows.append((f"HoToPy CTF, alpha {alpha[0]:.3g}/{alpha[1]:.3g}", np.asarray(phi), time.perf_counter() - t0))
        t0 = time.perf_counter()
        phi = Tikhonov(data.shape[1:], fresnel, betadelta=1 / DB, alpha=alpha, dtype=torch.float64)(y)
        rows.append((f"HoToPy Tikhonov (nonlinear), alpha {alpha[0]:.3g}/{alpha[1]:.3g}", np.asarray(phi),
                     time.perf_counter() - t0))
    return rows


def cost(n: int, repeats: int) -> None:
    geo = geometry()
    rng = np.random.default_rng(0)
    data = 1 + 0.05 * rng.standard_normal((len(Z1), n, n))
    ctf = CTFRetriever(geo, (n, n), DB, alpha_low=ALPHA_LOW)
    ref = FresnelRefiner(ctf, DB, iterations=10)
    ctf(data)
    t_ctf, t_ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        phase = ctf(data)
        t_ctf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = ref(data, phase)
        t_ref.append(time.perf_counter() - t0)
    print(f"\ncost per angle at {n} x {n} (4 distances, padded {ctf.shape_padded}), {repeats} runs, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}:")
    print(f"  CTF                  median {np.median(t_ctf):8.3f} s (min {min(t_ctf):.3f}, max {max(t_ctf):.3f})")
    print(f"  CTF + refinement     median {np.median(t_ref):8.3f} s (min {min(t_ref):.3f}, max {max(t_ref):.3f}; "
          f"{out.iterations} iterations): {np.median(t_ref) / np.median(t_ctf):.0f}x the CTF")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="frame side for the cost per angle (default 1024)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    geo = geometry()
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for std in (0.4, 0.8):
        rng = np.random.default_rng(3)
        phi = phantom(256, std, rng)
        data = rng.poisson(holograms(phi, geo, 64) * 5000.0) / 5000.0
        truth = phi[64:-64, 64:-64]
        ctf = CTFRetriever(geo, data.shape[1:], DB, alpha_low=ALPHA_LOW)
        t0 = time.perf_counter()
        phase = ctf(data)
        rows = [("ours: CTF (defaults)", phase, time.perf_counter() - t0)]
        t0 = time.perf_counter()
        refined = FresnelRefiner(ctf, DB)(data, phase)
        rows.append(("ours: CTF + Fresnel refinement (ctf.refine 10)", refined.phase, time.perf_counter() - t0))
        # the same with 5x the low-frequency regularisation (ctf.alpha_low 10): HoToPy's rows are the best of
        # three regularisations too
        ctf5 = CTFRetriever(geo, data.shape[1:], DB, alpha_low=5 * ALPHA_LOW)
        t0 = time.perf_counter()
        phase5 = ctf5(data)
        rows.append(("ours: CTF, ctf.alpha_low 10", phase5, time.perf_counter() - t0))
        t0 = time.perf_counter()
        rows.append(("ours: CTF + refinement, ctf.alpha_low 10", FresnelRefiner(ctf5, DB)(data, phase5).phase,
                     time.perf_counter() - t0))
        rows += hotopy_rows(data, geo)
        print(f"\nphase std {std} rad (range {truth.min():.2f} .. {truth.max():.2f}), 128 x 128 frames, 5000 photons")
        print(f"  {'method':<58}{'r':>8}{'rms rad':>10}{'s':>8}")
        for name, out, t in rows:
            r, rms = score(out, truth)
            print(f"  {name:<58}{r:8.4f}{rms:10.4f}{t:8.2f}")
    cost(a.size, a.repeats)


if __name__ == "__main__":
    main()
