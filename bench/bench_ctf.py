"""Four-distance CTF phase retrieval per angle vs nabu's single-distance CTF per frame.

Also times the live path's padding (``stream.phase_pad``, 1.25x) against the same 2x-padded retrieval.

Run: ``python bench/bench_ctf.py`` (4 x 2048 x 2048 float32) or ``--small`` (4 x 512 x 512).
Both sides pad to 2x (ours: next fast size >= 2n, mirror; nabu: "auto" = 2n, mirror), use
real FFTs (nabu with ``use_rfft=True``) on all CPU threads; filters are built once and a
warm-up call precedes the timing. Prints the median time of several repeats.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from xnh_stream.config import ProcessConfig
from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry
from xnh_stream.physics.phase import DEFAULT_ALPHA_HIGH, DEFAULT_ALPHA_LOW, CTFRetriever


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="512 x 512 frames instead of 2048 x 2048")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n = 512 if args.small else 2048
    repeats = args.repeats or (10 if args.small else 3)
    z_total, voxel, energy = 1.2, 50e-9, 17.0
    z1s = (0.0120, 0.0131, 0.0149, 0.0178)
    pixel = voxel * z_total / min(z1s)
    geom = ScanGeometry(tuple(DistanceGeometry(z1, z_total - z1, pixel, energy) for z1 in z1s))
    delta_beta = 100.0
    rng = np.random.default_rng(0)
    frames = (1.0 + 0.05 * rng.standard_normal((4, n, n))).astype(np.float32)

    retr = CTFRetriever(geom, (n, n), delta_beta)
    retr(frames)  # warm-up (filter already cached by the constructor)
    ours_ms = _median_ms(lambda: retr(frames), repeats)
    live = CTFRetriever(geom, (n, n), delta_beta, pad=ProcessConfig().stream.phase_pad)
    live(frames)
    live_ms = _median_ms(lambda: live(frames), repeats)
    print(f"live padding (stream.phase_pad): {live_ms:.1f} ms per angle, padded FFT {live.shape_padded} "
          f"({live_ms / ours_ms:.2f}x the 2x-padded {ours_ms:.1f} ms)")

    try:
        from nabu.preproc.ctf import CTFPhaseRetrieval, GeoPars
    except ImportError:  # pragma: no cover
        print("nabu not installed: only our figure")
        print(f"xnh_stream 4-distance CTF: {ours_ms:.1f} ms per angle ({n}x{n}, padded {retr.shape_padded})")
        return
    d0 = geom.distances[0]
    geo = GeoPars(z1_vh=d0.z1_m, z2=d0.z2_m, pix_size_det=d0.pixel_m, wavelength=d0.wavelength_m)
    nab = CTFPhaseRetrieval(
        (n, n),
        geo,
        delta_beta,
        padded_shape="auto",
        padding_mode="symmetric",
        lim1=DEFAULT_ALPHA_LOW,
        lim2=DEFAULT_ALPHA_HIGH,
        use_rfft=True,
        fft_num_threads=os.cpu_count(),
    )
    nab.retrieve_phase(frames[0])  # warm-up
    nabu_ms = _median_ms(lambda: nab.retrieve_phase(frames[0]), repeats)

    print(f"frames: 4 x {n} x {n} float32, padded FFT {retr.shape_padded}, {os.cpu_count()} CPU threads")
    print(f"xnh_stream CTFRetriever, 4 distances : {ours_ms:8.1f} ms per angle")
    print(f"nabu CTFPhaseRetrieval, 1 distance   : {nabu_ms:8.1f} ms per frame")
    print(f"ratio ours(4 dist) / nabu(1 frame)   : {ours_ms / nabu_ms:8.2f}")
    print(f"ratio ours(4 dist) / (4 x nabu)      : {ours_ms / (4 * nabu_ms):8.2f}")


if __name__ == "__main__":
    main()
