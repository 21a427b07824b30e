"""Progressive reconstruction: previews replaced by final projections give exactly the final volume."""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.config import ProcessConfig
from xnh_stream.physics.fbp import FBPAccumulator
from xnh_stream.chain.accumulate import ProgressiveVolume
from xnh_stream.chain.final import FinalChain, calibrate_task
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.chain.steps import AngleProcessor
from xnh_stream.simulate.scan import SimulationConfig, read_truth, simulate_scan

N_ANG, NZ, NDET = 40, 6, 48
RNG = np.random.default_rng(7)
THETAS = np.linspace(0, np.pi, N_ANG, endpoint=False)
FINAL = RNG.normal(size=(N_ANG, NZ, NDET)).astype(np.float32)
PREVIEW = (FINAL + RNG.normal(scale=0.5, size=FINAL.shape)).astype(np.float32)


def reference(projections, rows=slice(None)):
    acc = FBPAccumulator(NZ, NDET, cor=23.7, padding="edge")
    for i, p in enumerate(projections):
        acc.add(p, THETAS[i], i)
    return acc.volume()[rows], acc.half_volumes()


def _backend(name):
    if name == "numpy":
        return np
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable GPU here
        pytest.skip(f"CuPy with a CUDA device is needed for the GPU live shard ({exc.__class__.__name__})")
    return cupy


@pytest.mark.parametrize(("keep", "batch", "backend"), [(True, 1, "numpy"), (False, 1, "numpy"),
                                                        (False, 8, "numpy"), (False, 8, "cupy")])
def test_replacing_every_preview_gives_the_final_volume(keep, batch, backend):
    """Whatever the order, batching (the live shards' default) and array backend (CPU parity)."""
    xp = _backend(backend)
    vol = ProgressiveVolume(NZ, NDET, cor=23.7, batch=batch, xp=xp)
    order = RNG.permutation(N_ANG)
    for i in order:
        vol.add(int(i), THETAS[i], PREVIEW[i], final=False)
        if not keep:
            vol.forget_preview(int(i))
    assert vol.n_preview == N_ANG
    for i in RNG.permutation(N_ANG):
        vol.add(int(i), THETAS[i], FINAL[i], final=True, previous=None if keep else PREVIEW[i])
    assert vol.n_final == N_ANG and vol.n_preview == 0
    expected, (h0, h1) = reference(FINAL)
    scale = np.abs(expected).max()
    host = np.asarray if xp is np else xp.asnumpy
    np.testing.assert_allclose(host(vol.volume()), expected, atol=2e-5 * scale)
    np.testing.assert_allclose(host(vol.half_volumes()[0]), h0, atol=2e-5 * scale)


def test_mixed_state_and_slab_shard():
    mixed = np.where((np.arange(N_ANG) % 3 == 0)[:, None, None], FINAL, PREVIEW)
    shard = ProgressiveVolume(NZ, NDET, cor=23.7, rows=slice(2, 5))
    for i in range(N_ANG):
        shard.add(i, THETAS[i], PREVIEW[i], final=False)
    for i in range(0, N_ANG, 3):
        shard.add(i, THETAS[i], FINAL[i], final=True)
    expected, _ = reference(mixed, rows=slice(2, 5))
    np.testing.assert_allclose(shard.volume(), expected, atol=2e-5 * np.abs(expected).max())
    with pytest.raises(ValueError, match="already has a final"):
        shard.add(0, THETAS[0], FINAL[0], final=True)
    with pytest.raises(ValueError, match="already has a preview"):
        shard.add(1, THETAS[1], PREVIEW[1], final=False)


def test_preview_then_ctf_ends_at_the_batch_volume(tmp_path):
    """Previews of distance 1 show the sample; once every angle is replaced by its CTF projection the
    volume equals what the batch chain (process_scan) gives on the same files."""
    from xnh_stream.chain.batch import process_scan

    cfg = SimulationConfig(nx=64, ny=24, n_angles=60, seed=5, oversample=1)
    simulate_scan(tmp_path, cfg)
    truth, record = read_truth(tmp_path)
    index = ScanIndex.read(tmp_path)
    geo = index.geometry
    cals = [calibrate_task(d, 0)[0] for d in index.distances]
    # the batch chain with the same single-material CTF as the live path (no envelope pass)
    config = ProcessConfig.from_mapping({"sample.delta_beta": record["delta_beta"], "fbp.cor": record["cor_px"], "alignment.enabled": False, "ctf.envelope": False})
    slots = FinalChain(index, None, config).pair()
    thetas = [t for _, t, _ in slots]

    def corrected(i: int, k: int) -> np.ndarray:
        rec = slots[i][2][k]
        return cals[k].correct(rec.read(), rec.sequence)

    proc = AngleProcessor(geo, index.frame_shape, record["delta_beta"], config)
    vol = ProgressiveVolume(*index.frame_shape, cor=record["cor_px"])
    m = truth["sample"].astype(bool) & truth["field_of_view"].astype(bool)

    def r() -> float:
        return float(np.corrcoef(np.asarray(vol.volume())[m], truth["delta"][m])[0, 1])

    for i, t in enumerate(thetas):
        vol.add(i, np.deg2rad(t), proc.preview(0, corrected(i, 0), t), final=False)
    r_preview = r()
    for i, t in enumerate(thetas):
        images = {k: corrected(i, k) for k in range(4)}
        vol.add(i, np.deg2rad(t), proc.ctf(images, t), final=True)
    r_final = r()
    print(f"\npreview r = {r_preview:.3f}, after CTF replacement r = {r_final:.3f}")
    assert r_preview > 0.3 and r_final > 0.3
    batch = process_scan(tmp_path, None, config).volume
    np.testing.assert_allclose(vol.volume(), batch, atol=1e-5 * np.abs(batch).max())
