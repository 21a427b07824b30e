"""Noise2Inverse denoising: against the truth on a known phantom, its truth-free figures against the true noise,
and as a step of the final pass (published, checksummed and reported with the volume)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.config import ConfigError, ProcessConfig
from xnh_stream.physics.denoise import Noise2InverseConfig, denoise_rows, held_out_rows, train_noise2inverse
from xnh_stream.physics.fbp import FBPAccumulator
from xnh_stream.physics.projector import forward_project

N, NZ = 64, 24


def _fbp_halves(projections: np.ndarray, thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc = FBPAccumulator(projections.shape[1], projections.shape[2], n_out=N, cor=(N - 1) / 2)
    acc.add_many(projections, thetas, indices=np.arange(thetas.size))
    h0, h1 = (np.asarray(h, np.float32) for h in acc.half_volumes())
    return h0, h1, np.asarray(acc.volume(), np.float32)


@pytest.fixture(scope="module")
def noisy():
    """Balls in a cylinder, 120 projections with noise correlated over a pixel (as a phase retrieval leaves
    it); the reconstruction of the noise-free projections is the denoiser's target ``E[H]``."""
    rng = np.random.default_rng(4)
    z, y, x = np.mgrid[:NZ, :N, :N]
    vol = np.zeros((NZ, N, N), np.float32)
    for _ in range(40):
        c, r = rng.uniform([0, 14, 14], [NZ, N - 14, N - 14]), rng.uniform(2.5, 7)
        vol += (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r) * np.float32(rng.uniform(0.3, 1))
    vol = ndimage.gaussian_filter(vol, 0.7)
    thetas = np.linspace(0, np.pi, 120, endpoint=False)
    clean = forward_project(vol, thetas)
    noise = ndimage.gaussian_filter(rng.standard_normal(clean.shape), (0, 0.8, 0.8)) * 0.2 * clean.max()
    h0, h1, full = _fbp_halves(clean + noise.astype(np.float32), thetas)
    expected = _fbp_halves(clean, thetas)[2]
    disk = (y[0] - (N - 1) / 2) ** 2 + (x[0] - (N - 1) / 2) ** 2 <= (0.45 * N) ** 2
    return h0, h1, full, expected, disk


@pytest.fixture(scope="module")
def trained(noisy):
    h0, h1, _, _, _ = noisy
    return train_noise2inverse((h0, h1), 0.45 * N, Noise2InverseConfig(steps=150, held_out=0.25))


def test_the_denoised_volume_is_closer_to_the_noise_free_reconstruction(noisy, trained):
    h0, h1, full, expected, disk = noisy
    den = denoise_rows(trained, (h0, h1), 0, NZ)

    def rms(v):
        return float(np.sqrt(np.mean((v[:, disk] - expected[:, disk]) ** 2)))

    print(f"\nrms error: plain {rms(full):.4g}, denoised {rms(den):.4g}")
    assert rms(den) < 0.75 * rms(full)
    # a slab made alone (its context read across the slab's edges) equals the same rows of the whole
    np.testing.assert_allclose(denoise_rows(trained, (h0, h1), 7, 13), den[7:13], rtol=1e-5, atol=1e-6)


def test_the_truth_free_figures_match_the_true_noise_and_error(noisy, trained):
    """On the held-out rows: the noise of the plain volume from the halves' difference, and the bound on the
    denoised error from predicting one half with the other, against the values the truth gives."""
    h0, h1, full, expected, disk = noisy
    a, b = trained.rows_held_out
    assert (a, b) == held_out_rows(NZ, 0.25, 5) and b - a == 6
    true_noise = float(np.sqrt(np.mean((full[a:b][:, disk] - expected[a:b][:, disk]) ** 2)))
    each = denoise_rows(trained, (h0, h1), a, b, each=True)
    true_err = max(float(np.sqrt(np.mean((p[:, disk] - expected[a:b][:, disk]) ** 2))) for p in each)
    print(f"\nnoise {trained.noise_rms:.4g} (true {true_noise:.4g}); error bound {trained.error_rms:.4g} "
          f"(true, worse half {true_err:.4g})")
    assert trained.noise_rms == pytest.approx(true_noise, rel=0.15)
    assert trained.error_rms == pytest.approx(true_err, rel=0.25)
    rec = trained.record()
    assert rec["gain"] > 1.15 and rec["loss_last"] < rec["loss_first"]


def test_planes_larger_than_the_crop_train_on_windows_of_many_rows(noisy):
    """With the memory for two whole planes, 32-voxel windows give eight rows to train on (spread along the
    axis instead of two planes), and the result denoises as well."""
    h0, h1, full, expected, disk = noisy
    budget = 2 * 2 * 5 * N * N  # voxels: two stacks of whole planes, both halves
    whole = train_noise2inverse((h0, h1), 0.45 * N, Noise2InverseConfig(steps=150, train_voxels=budget, crop=N))
    windows = train_noise2inverse((h0, h1), 0.45 * N, Noise2InverseConfig(steps=150, train_voxels=budget, crop=32,
                                                                         patch=32))
    assert (whole.rows_trained, windows.rows_trained) == (2, 8) and windows.record()["rows_trained"] == 8
    den = denoise_rows(windows, (h0, h1), 0, NZ)

    def rms(v):
        return float(np.sqrt(np.mean((v[:, disk] - expected[:, disk]) ** 2)))

    print(f"\nwindows of 32: rms error plain {rms(full):.4g}, denoised {rms(den):.4g}")
    assert rms(den) < 0.75 * rms(full)


def test_bad_options_are_refused():
    for bad in ({"denoise.method": "bm3d"}, {"denoise.context": 4}, {"denoise.patch": 30}, {"denoise.steps": 0}):
        with pytest.raises(ConfigError, match="denoise"):
            ProcessConfig.from_mapping(bad)
    with pytest.raises(ValueError, match="more rows than its context"):
        z = np.zeros((4, 16, 16), np.float32)
        train_noise2inverse((z, z), 6.0, Noise2InverseConfig(steps=1))


def test_the_final_pass_publishes_the_denoised_image_with_the_volume(tmp_path, monkeypatch, capsys):
    """``process --denoise``: the denoised image inside volume.ome.zarr on the volume's grid, its units in the
    report's checksums (a damaged chunk is refused by the next run, as the volume's), the FSC the plain
    volume's."""
    from xnh_stream.cli import main
    from xnh_stream.io.omezarr import image_transforms, read_volume

    from .foreign import ForeignSpec, write_foreign_scan

    truth = write_foreign_scan(tmp_path / "scan", ForeignSpec(nx=64, ny=32, n_angles=60, delta_beta=30.0, seed=3))
    folder, out = truth.files[0].parent, tmp_path / "out"
    for var, value in {"XNH_DENOISE_STEPS": "20", "XNH_SAMPLE_DELTA_BETA": "30", "XNH_ALIGNMENT_ANGLES": "8"}.items():
        monkeypatch.setenv(var, value)
    args = ["-q", "process", str(folder), "--out", str(out), "--denoise", "--local"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    den = report["denoise"]
    assert den["volume"] == "volume.ome.zarr/denoised" and den["steps"] == 20 and den["noise_rms"] > 0
    assert report["config"]["denoise"]["method"] == "noise2inverse"
    units = report["volume"]["units"]
    assert units["denoised/s0"][-1][1] == 32 and "s0" in units
    plain, voxel = read_volume(out / "volume.ome.zarr")
    denoised, voxel_d = read_volume(out / "volume.ome.zarr" / "denoised")
    assert denoised.shape == plain.shape and voxel_d == voxel
    assert image_transforms(out / "volume.ome.zarr" / "denoised", 1) == image_transforms(out / "volume.ome.zarr", 1)
    assert np.corrcoef(plain.ravel(), denoised.ravel())[0, 1] > 0.9 and not np.array_equal(plain, denoised)
    monkeypatch.delenv("XNH_DENOISE_STEPS")
    plain_report = tmp_path / "plain"
    assert main(["-q", "process", str(folder), "--out", str(plain_report), "--local"]) == 0
    assert json.loads((plain_report / "report.json").read_text())["fsc"] == report["fsc"]  # the plain volume's
    monkeypatch.setenv("XNH_DENOISE_STEPS", "20")
    capsys.readouterr()
    chunk = next(p for p in (out / "volume.ome.zarr" / "denoised" / "s0").rglob("*") if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")
    assert main(args) == 2
    assert "denoised/s0" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "scan")
