"""FSC speed and memory: xnh_stream.physics.fsc beside a like-for-like SciPy implementation, same run.

Run ``python bench/bench_fsc.py`` (a 256^3 pair) or with ``--small`` (96^3).

The peer does the same job the same way a careful SciPy user would: the same apodisation (window-weighted
mean removal, separable Tukey window, float32), ``scipy.fft.rfftn`` in float32 on all cores
(``workers=-1``), and shell sums by ``numpy.bincount`` over a shell index, two-sided weights and a 3-D
window that are all computed once, outside the timings. Prints wall and CPU seconds (best of
``--repeat``; the machine may be shared, the load average is printed), peak traced memory and the
ratios, and checks that both curves agree.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np
import scipy.fft


class ScipyFSC:
    """Like-for-like FSC: float32 real FFTs, multi-threaded, geometry (window, shells) computed once."""

    def __init__(self, shape: tuple[int, int, int], shells: int, alpha: float = 0.25) -> None:
        from xnh_stream.physics.fsc import tukey_window

        w = [tukey_window(n, alpha) for n in shape]
        self.win = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
        self.win_sum = float(self.win.sum(dtype=np.float64))
        axes = [np.fft.fftfreq(n) / 0.5 for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) / 0.5]
        r = np.sqrt(sum(np.meshgrid(*[a**2 for a in axes], indexing="ij")))
        self.idx = np.minimum(np.rint(r * shells), shells + 1).astype(np.intp).ravel()
        weight = np.full(r.shape, 2.0, np.float32)  # two-sided sums from the half spectrum
        weight[..., 0] = 1.0
        if shape[-1] % 2 == 0:
            weight[..., -1] = 1.0
        self.weight = weight
        self.shells = shells

    def __call__(self, v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
        def spectrum(v: np.ndarray) -> np.ndarray:
            mean = float((v * self.win).sum(dtype=np.float64)) / self.win_sum
            return scipy.fft.rfftn((v - np.float32(mean)) * self.win, workers=-1)

        f1, f2 = spectrum(v1), spectrum(v2)
        m = self.shells + 2
        cross = np.bincount(self.idx, (self.weight * (f1.real * f2.real + f1.imag * f2.imag)).ravel(), m)
        p1 = np.bincount(self.idx, (self.weight * (f1.real**2 + f1.imag**2)).ravel(), m)
        p2 = np.bincount(self.idx, (self.weight * (f2.real**2 + f2.imag**2)).ravel(), m)
        keep = slice(0, self.shells + 1)
        return cross[keep] / np.sqrt(p1[keep] * p2[keep])


def measure(fn, repeat: int):
    """Best wall and best CPU time of ``repeat`` untraced calls, then the peak traced memory of one more."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(walls), min(cpus), peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="96^3 instead of 256^3")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size or (96 if args.small else 256)

    from xnh_stream.physics.fsc import _shell_map, fourier_shell_correlation

    rng = np.random.default_rng(0)
    shape = (size, size, size)
    signal = rng.standard_normal(shape, dtype=np.float32)
    v1 = signal + rng.standard_normal(shape, dtype=np.float32)
    v2 = signal + rng.standard_normal(shape, dtype=np.float32)
    print(f"FSC of a {size}^3 float32 pair ({v1.nbytes / 2**20:.0f} MiB per volume), "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    _shell_map.cache_clear()
    t0 = time.perf_counter()
    fourier_shell_correlation(v1, v2)
    t_cold = time.perf_counter() - t0  # includes building the cached shell map (and loading the kernels)
    peer = ScipyFSC(shape, size // 2)
    w_ours, c_ours, m_ours, (_, fsc_ours, _) = measure(lambda: fourier_shell_correlation(v1, v2), args.repeat)
    w_peer, c_peer, m_peer, fsc_peer = measure(lambda: peer(v1, v2), args.repeat)

    print(f"  xnh_stream, first call (builds shell map)  {t_cold:7.2f} s wall")
    print(f"  xnh_stream, cached shells                  {w_ours:7.2f} s wall {c_ours:7.2f} s CPU   "
          f"peak {m_ours / 2**20:6.0f} MiB")
    print(f"  scipy rfftn float32 workers=-1, bincount   {w_peer:7.2f} s wall {c_peer:7.2f} s CPU   "
          f"peak {m_peer / 2**20:6.0f} MiB (shells, window precomputed)")
    print(f"  ratio peer / ours: wall {w_peer / w_ours:5.2f}x, CPU {c_peer / c_ours:5.2f}x, "
          f"memory {m_peer / m_ours:5.2f}x  (>1: ours better)")
    print(f"  curves agree: max |FSC_ours - FSC_peer| = {np.nanmax(np.abs(fsc_ours - fsc_peer)):.2e}")
    print(f"  (load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
