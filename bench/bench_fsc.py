"""FSC speed and memory: xnh_stream.physics.fsc beside a plain numpy implementation, same run.

Run ``python bench/bench_fsc.py`` (a 256^3 pair) or with ``--small`` (96^3). The peer is the
straightforward version: full complex ``numpy.fft.fftn`` of both volumes, shell index by rounding the
radius, ``numpy.bincount``. Prints seconds, peak traced memory (tracemalloc; numpy reports its
allocations there) and the ratios, and checks that both curves agree (without apodisation).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def plain_fsc(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference implementation: complex FFTs and bincount over rounded radii (no apodisation)."""
    shells = min(v1.shape) // 2
    f1 = np.fft.fftn(v1)
    f2 = np.fft.fftn(v2)
    grids = np.meshgrid(*[np.fft.fftfreq(n) / 0.5 for n in v1.shape], indexing="ij", sparse=True)
    r = np.sqrt(sum(g**2 for g in grids))
    idx = np.rint(r * shells).astype(np.intp).ravel()
    keep = idx <= shells
    idx = idx[keep]
    f1 = f1.ravel()[keep]
    f2 = f2.ravel()[keep]
    cross = np.bincount(idx, (f1 * np.conj(f2)).real, minlength=shells + 1)
    p1 = np.bincount(idx, np.abs(f1) ** 2, minlength=shells + 1)
    p2 = np.bincount(idx, np.abs(f2) ** 2, minlength=shells + 1)
    n = np.bincount(idx, minlength=shells + 1)
    return np.arange(shells + 1) / shells, cross / np.sqrt(p1 * p2), n


def measure(fn, repeat: int = 2):
    """Best wall time of ``repeat`` untraced calls, then the peak traced memory of one more call."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", action="store_true", help="96^3 instead of 256^3")
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    size = args.size or (96 if args.small else 256)

    from xnh_stream.physics.fsc import fourier_shell_correlation, half_volume_resolution

    rng = np.random.default_rng(0)
    shape = (size, size, size)
    signal = rng.standard_normal(shape, dtype=np.float32)
    v1 = signal + rng.standard_normal(shape, dtype=np.float32)
    v2 = signal + rng.standard_normal(shape, dtype=np.float32)
    vol_mb = v1.nbytes / 2**20
    print(f"FSC of a {size}^3 float32 pair ({vol_mb:.0f} MiB per volume)")

    from xnh_stream import fsc as fsc_module

    t0 = time.perf_counter()
    fourier_shell_correlation(v1, v2)
    t_cold = time.perf_counter() - t0  # includes building the cached shell map
    fsc_module._shell_map.cache_clear()
    tracemalloc.start()
    fourier_shell_correlation(v1, v2)
    m_cold = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t_warm, m_warm, (_, fsc_ours, n_ours) = measure(lambda: fourier_shell_correlation(v1, v2))
    t_res, _, res = measure(lambda: half_volume_resolution(v1, v2, 1.0))
    t_plain, m_plain, (_, fsc_plain, n_plain) = measure(lambda: plain_fsc(v1, v2))
    _, _, (_, fsc_noapo, _) = measure(lambda: fourier_shell_correlation(v1, v2, apodize=False))

    print(f"  xnh_stream, first call (builds shell map) {t_cold:7.2f} s   peak {m_cold / 2**20:7.0f} MiB")
    print(f"  xnh_stream, cached shells                 {t_warm:7.2f} s   peak {m_warm / 2**20:7.0f} MiB")
    print(f"  xnh_stream, + half-bit resolution         {t_res:7.2f} s   "
          f"(resolution {res.resolution_m:.3f} voxel, limited_by_sampling={res.limited_by_sampling})")
    print(f"  plain numpy (fftn complex128 + bincount)  {t_plain:7.2f} s   peak {m_plain / 2**20:7.0f} MiB")
    print(f"  ratio plain / ours: time {t_plain / t_warm:5.2f}x (cold {t_plain / t_cold:5.2f}x), "
          f"memory {m_plain / m_warm:5.2f}x")
    assert np.array_equal(n_ours, n_plain), "shell counts differ"
    print(f"  curves agree (no apodisation): max |FSC_ours - FSC_plain| = "
          f"{np.nanmax(np.abs(fsc_noapo - fsc_plain)):.2e}")


if __name__ == "__main__":
    main()
