"""Distance store: bit-exact round trip, angle pairing as in the batch chain, reopen, crash safety, bounded
memory, codec speed and size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import zarr

from xnh_stream.chain.angles import complete_angles, match_angles
from xnh_stream.chain.final import FinalChain
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, NXtomoWriter
from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.state.store import CODECS, DistanceStore


def flat_fielded(rng: np.random.Generator, shape: tuple[int, int], counts: float = 3000.0) -> np.ndarray:
    """A realistic flat-fielded hologram: Fresnel-like fringes, Poisson counts, a detector dark level, the
    flat averaged over 20 frames, ``(I - dark) / (flat - dark)`` in float32."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    r2 = (y - ny / 2) ** 2 + (x - nx / 2) ** 2
    sample = 1 + 0.15 * np.cos(r2 / (0.02 * nx * ny)) * np.exp(-r2 / (0.1 * nx * ny))
    beam = counts * (1 + 0.2 * np.sin(x / 37.0 + rng.uniform(0, 6)) * np.cos(y / 53.0))
    dark = 100.0
    flat = rng.poisson(beam, size=(20, ny, nx)).mean(axis=0) + dark
    raw = rng.poisson(beam * sample) + dark
    return ((raw - dark) / (flat - dark)).astype(np.float32)


def angle_sets(rng: np.random.Generator, n: int = 30, step: float = 6.0, jitter: float = 0.3):
    """Four distances at the same nominal angles, each off by its own jitter (< half a step); distance 2
    misses angles 4 and 11, distance 3 has one extra angle beyond the last nominal one (more than half a
    step away from any)."""
    nominal = np.arange(n) * step
    sets = [nominal.copy()] + [nominal + rng.uniform(-jitter, jitter, n) for _ in range(3)]
    sets[2] = np.delete(sets[2], [4, 11])
    sets[3] = np.append(sets[3], step * (n + 1))
    complete = np.delete(nominal, [4, 11])
    return sets, complete


def fill(store: DistanceStore, order: list[tuple[int, float]], shape: tuple[int, int]) -> None:
    for k, a in order:
        store.put(k, a, np.full(shape, 1.0 + k + a / 1000, np.float32))


@pytest.mark.parametrize("codec", CODECS)
def test_put_get_round_trip_is_bit_exact(tmp_path, codec):
    rng = np.random.default_rng(0)
    shape = (48, 40)
    frames = [flat_fielded(rng, shape), rng.standard_normal(shape).astype(np.float32) * 1e30,
              (rng.standard_normal(shape) * 1e-42).astype(np.float32)]  # subnormal values too
    frames[2][0, 0] = 1.0
    with DistanceStore(tmp_path / "s.zarr", shape, codec=codec) as s:
        for i, f in enumerate(frames):
            assert s.put(i % 2, 10.0 * i, f) is True
        for i, f in enumerate(frames):
            g = s.get(i % 2, 10.0 * i)
            assert g.dtype == np.float32 and g.shape == shape
            np.testing.assert_array_equal(g.view(np.uint32), f.view(np.uint32))
        # float64 input is cast to the store's float32 (same-kind cast)
        s.put(3, 1.0, frames[0].astype(np.float64))
        np.testing.assert_array_equal(s.get(3, 1.0), frames[0])


def test_complete_angles_sequential_interleaved_and_jittered(tmp_path):
    rng = np.random.default_rng(1)
    shape = (6, 8)
    sets, complete = angle_sets(rng)
    sequential = [(k, a) for k in range(4) for a in sets[k]]
    interleaved = sorted(sequential, key=lambda ka: (round(ka[1] / 6.0), rng.random()))
    results = []
    for name, order in (("sequential", sequential), ("interleaved", interleaved)):
        s = DistanceStore(tmp_path / f"{name}.zarr", shape)
        seen = set()
        for k, a in order:
            fill(s, [(k, a)], shape)
            if a < 180.0:  # the stray angle of distance 3 pairs with nothing
                seen.add((k, round(a / 6.0)))
            # After every frame: an angle is complete exactly when all four distances hold it.
            want = [j * 6.0 for j in range(30) if all((kk, j) in seen for kk in range(4))]
            np.testing.assert_array_equal(complete_angles(s.angles, 4), want)
        # Three distances are complete wherever distance 2 has its frames (28 of 30 angles).
        assert complete_angles(s.angles, 3).size == 28
        results.append(complete_angles(s.angles, 4))
        thetas, table = match_angles(s.angles, 4)
        for i, t in enumerate(thetas):
            for k in range(4):
                if np.isfinite(table[i, k]):
                    assert abs(table[i, k] - t) <= 0.3
                    assert s.get(k, table[i, k])[0, 0] == np.float32(1.0 + k + table[i, k] / 1000)
    np.testing.assert_array_equal(results[0], complete)
    np.testing.assert_array_equal(results[1], complete)
    # A tolerance below the jitter pairs fewer angles; a reference other than 0 gives its own angles.
    s = DistanceStore(tmp_path / "sequential.zarr")
    assert results[0].size > complete_angles(s.angles, 4, tol_deg=0.05).size
    np.testing.assert_array_equal(complete_angles(s.angles, 4, reference=1),
                                  np.delete(sets[1], [4, 11]))
    with pytest.raises(ValueError, match="reference"):
        complete_angles(s.angles, 4, reference=4)
    with pytest.raises(ValueError, match="n_distances"):
        complete_angles(s.angles, 0)
    with pytest.raises(ValueError, match="tol_deg"):
        complete_angles(s.angles, 4, tol_deg=-1.0)


def test_pairs_the_same_frames_as_the_batch_chain(tmp_path):
    """The store's angles (``match_angles``) and ``process_scan`` (the final chain's pairing step on NXtomo
    files) pair the same angles."""
    rng = np.random.default_rng(2)
    shape = (8, 8)  # the reader refuses frames under 8 px a side (nxtomo.MIN_FRAME_PX)
    sets, _ = angle_sets(rng, n=20, step=9.0, jitter=1.5)
    z1 = [0.0388, 0.0398, 0.0428, 0.0488]  # ID16A-like, most magnified first
    for k in range(4):
        geo = DistanceGeometry(z1_m=z1[k], z2_m=1.208 - z1[k], pixel_m=3e-6, energy_kev=17.0)
        with NXtomoWriter(tmp_path / f"scan_{k + 1}_.nx", shape, geo) as w:
            w.append(np.full((2, *shape), 100), DARK, 0.0, 0.1)
            w.append(np.full((2, *shape), 1000), FLAT, 0.0, 0.1)
            w.append(np.full((sets[k].size, *shape), 500), PROJECTION, sets[k], 0.1)
    slots = FinalChain(ScanIndex.read(tmp_path), None, ProcessConfig()).pair()
    thetas_b = np.array([t for _, t, _ in slots])
    paired = np.array([[f[k].rotation_angle_deg if k in f else np.nan for k in range(4)] for _, _, f in slots])
    s = DistanceStore(tmp_path / "store.zarr", shape)
    order = [(k, a) for k in range(4) for a in sets[k]]
    rng.shuffle(order)
    fill(s, order, shape)
    thetas_s, table = match_angles(s.angles, 4)
    np.testing.assert_array_equal(thetas_s, thetas_b)
    np.testing.assert_array_equal(table, paired)
    np.testing.assert_array_equal(complete_angles(s.angles, 4), thetas_b[np.isfinite(paired).all(axis=1)])


def test_reopen_overwrite_and_bad_input(tmp_path):
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(3)
    shape = (16, 12)
    frames = {(k, a): flat_fielded(rng, shape) for k in range(2) for a in np.linspace(0, 179, 70)}
    with DistanceStore(path, shape, codec="zstd") as s:  # 70 angles: the arrays grow past 64 slots
        for (k, a), f in frames.items():
            s.put(k, a, f)
        assert s.put(0, 0.0, frames[(0, 0.0)] * 2) is False and s.overwrites == 1
        frames[(0, 0.0)] = frames[(0, 0.0)] * 2
        on_disk = s.nbytes_on_disk()
    s = DistanceStore(path)  # after a restart: shape, dtype and codec come from the store
    assert s.frame_shape == shape and s.dtype == np.float32 and s.codec == "zstd" and s.overwrites == 0
    assert s.distances() == [0, 1] and len(s) == 140 and s.nbytes_on_disk() == on_disk
    np.testing.assert_array_equal(s.angles(1), np.linspace(0, 179, 70))
    for (k, a), f in frames.items():
        np.testing.assert_array_equal(s.get(k, a), f)
    assert (0, 0.0) in s and (0, 0.5) not in s and (5, 0.0) not in s and "x" not in s
    assert s.put(0, 200.0, frames[(1, 0.0)]) is True and s.angles(0)[-1] == 200.0
    with pytest.raises(KeyError, match="no frame at"):
        s.get(0, 0.5)
    with pytest.raises(KeyError, match="distance 7"):
        s.get(7, 0.0)
    with pytest.raises(ValueError, match=r"shape \(16, 13\) differs"):
        s.put(0, 1.0, np.ones((16, 13), np.float32))
    bad = np.ones(shape, np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        s.put(0, 1.0, bad)
    with pytest.raises(ValueError, match="all pixels are zero"):
        s.put(0, 1.0, np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="cannot be stored"):
        s.put(0, 1.0, np.ones(shape, np.complex64))
    with pytest.raises(ValueError, match="angle_deg must be finite"):
        s.put(0, float("inf"), bad)
    with pytest.raises(ValueError, match="distance_key"):
        s.put(-1, 1.0, frames[(1, 0.0)])
    with pytest.raises(ValueError, match="frame_shape .* differs"):
        DistanceStore(path, (16, 16))
    with pytest.raises(ValueError, match="dtype"):
        DistanceStore(path, dtype=np.float64)
    with pytest.raises(ValueError, match="frame_shape is required"):
        DistanceStore(tmp_path / "new.zarr")
    with pytest.raises(ValueError, match="codec"):
        DistanceStore(tmp_path / "new.zarr", shape, codec="lzma")
    r = DistanceStore(path, readonly=True)
    with pytest.raises(ValueError, match="readonly"):
        r.put(0, 3.0, frames[(1, 0.0)])
    s.put(1, 300.0, frames[(1, 0.0)])
    assert (1, 300.0) not in r
    r.refresh()
    assert (1, 300.0) in r and r.angles(0)[-1] == 200.0


def test_orphan_frame_without_angle_is_an_empty_slot(tmp_path):
    """A crash between the frame chunk and its angle leaves a slot that is absent and reused."""
    shape = (8, 8)
    s = DistanceStore(tmp_path / "s.zarr", shape)
    s.put(0, 1.0, np.full(shape, 1.0, np.float32))
    zarr.open_array(str(tmp_path / "s.zarr" / "distance_0" / "frames"), mode="r+")[1] = 7.0  # no angle
    s = DistanceStore(tmp_path / "s.zarr")
    assert len(s) == 1 and s.angles(0).tolist() == [1.0]
    s.put(0, 2.0, np.full(shape, 2.0, np.float32))
    assert s.get(0, 2.0)[0, 0] == 2.0 and s.get(0, 1.0)[0, 0] == 1.0


CHILD = r"""
import sys, numpy as np
from xnh_stream.state.store import DistanceStore
s = DistanceStore(sys.argv[1], (64, 64))
y, x = np.mgrid[:64, :64]
i = 0
while True:
    k, a = i % 4, (i // 4) * 0.5
    s.put(k, a, (1 + k + a + 1e-3 * (x + 64 * y)).astype(np.float32))
    print(i, flush=True)
    i += 1
"""


def test_kill9_while_writing_leaves_only_whole_frames(tmp_path):
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(150):
            assert proc.stdout.readline(), proc.stderr.read()
        time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    last = int(out.split()[-1]) if out.split() else 149
    s = DistanceStore(path)
    y, x = np.mgrid[:64, :64]
    n = len(s)
    assert n in (last + 1, last + 2)  # every reported put is there; at most the one in flight besides
    for i in range(n):
        k, a = i % 4, (i // 4) * 0.5
        np.testing.assert_array_equal(s.get(k, a), (1 + k + a + 1e-3 * (x + 64 * y)).astype(np.float32))
    s.put(n % 4, (n // 4) * 0.5, np.ones((64, 64), np.float32))  # and it carries on
    print(f"\nstore kill -9: {n} frames intact (last reported put {last})")


def test_threads_share_one_store(tmp_path):
    s = DistanceStore(tmp_path / "s.zarr", (32, 32))

    def work(k: int) -> None:
        for a in range(40):
            s.put(k, float(a), np.full((32, 32), k * 100 + a + 1, np.float32))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert complete_angles(s.angles, 4).tolist() == [float(a) for a in range(40)]
    assert all(s.get(k, 17.0)[5, 5] == k * 100 + 18 for k in range(4))


def test_memory_stays_bounded_writing_800_frames(tmp_path):
    shape = (256, 256)
    s = DistanceStore(tmp_path / "s.zarr", shape)
    base = flat_fielded(np.random.default_rng(4), shape)
    data_bytes = 800 * base.nbytes
    tracemalloc.start()
    t0 = time.perf_counter()
    for i in range(800):
        k, a = i // 200, (i % 200) * 0.9  # four distances one after another
        s.put(k, a, base + np.float32(i * 1e-4))
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    disk = s.nbytes_on_disk()
    print(f"\nstore 800 x 256^2 float32 ({data_bytes / 2**20:.0f} MiB): traced peak {peak / 2**20:.2f} MiB, "
          f"{800 / dt:.0f} frames/s, {disk / 2**20:.0f} MiB on disk")
    assert peak < 0.02 * data_bytes  # well below the data: one frame and its compressed copy at a time
    assert len(s) == 800 and complete_angles(s.angles, 4).size == 200
    np.testing.assert_array_equal(s.get(3, 199 * 0.9), base + np.float32(799 * 1e-4))


def test_codec_write_speed_and_size_512(tmp_path):
    rng = np.random.default_rng(5)
    shape = (512, 512)
    frames = [flat_fielded(rng, shape) for _ in range(4)]
    n = 48
    raw = n * frames[0].nbytes
    lines = []
    for codec in CODECS:
        s = DistanceStore(tmp_path / f"{codec}.zarr", shape, codec=codec)
        t0 = time.perf_counter()
        for i in range(n):
            s.put(i % 4, float(i // 4), frames[i % 4])
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            got = s.get(i % 4, float(i // 4))
        rt = time.perf_counter() - t0
        np.testing.assert_array_equal(got, frames[(n - 1) % 4])
        ratio = raw / s.nbytes_on_disk()
        lines.append(f"  {codec:10s} write {n / dt:6.0f} frames/s ({raw / dt / 2**20:5.0f} MiB/s), "
                     f"read {n / rt:6.0f} frames/s, ratio {ratio:.2f}")
        if codec != "none":
            assert ratio > 1.05
    print("\nstore, 512x512 float32 flat-fielded frames (Poisson noise, 3000 counts):\n" + "\n".join(lines))
