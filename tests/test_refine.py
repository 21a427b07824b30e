"""Nonlinear refinement of the CTF phase (xnh_stream.physics.refine) against exact Fresnel holograms.

The holograms come from the independent forward model of tests/test_phase.py (a larger periodic field,
cropped: the object extends beyond the field of view, as in a scan), not from the refiner's own model.
"""

from __future__ import annotations

import numpy as np
import pytest

from xnh_stream.physics.phase import CTFRetriever
from xnh_stream.physics.refine import FresnelRefiner, fresnel_holograms

from .test_phase import _fit, holograms, make_geometry, propagate, random_phase

DB = 100.0
ALPHA_LOW = 2 * 4 * 2 / DB**2  # ctf.alpha_low 2, relative to 2 K (beta/delta)^2 (chain/steps.py)


def _case(std: float, seed: int = 3, photons: float | None = None):
    rng = np.random.default_rng(seed)
    geom = make_geometry()
    phi = random_phase(256, rng, sigma_px=2.5, std=std, mean=-3 * std)
    data = holograms(phi, DB, geom, crop=64)
    if photons:
        data = rng.poisson(data * photons) / photons
    ctf = CTFRetriever(geom, data.shape[1:], DB, alpha_low=ALPHA_LOW)
    return geom, phi[64:-64, 64:-64], data, ctf


def test_the_gradient_is_the_functionals():
    """The analytic gradient against central differences of the functional, at a random strong phase."""
    _, _, data, ctf = _case(0.5)
    ref = FresnelRefiner(ctf, DB)
    rng = np.random.default_rng(1)
    shape = ctf.shape_padded
    phi = rng.normal(-0.5, 0.3, shape)
    padded = np.stack([ctf.padded(d).astype(np.float64) for d in data])
    _, grad = ref.loss_and_gradient(phi, padded)
    for _ in range(5):
        iy, ix = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        e = np.zeros(shape)
        e[iy, ix] = 1e-5
        num = (ref.loss_and_gradient(phi + e, padded)[0] - ref.loss_and_gradient(phi - e, padded)[0]) / 2e-5
        assert num == pytest.approx(grad[iy, ix], rel=1e-4, abs=1e-6)


def test_the_model_is_the_exact_hologram_of_the_independent_propagator():
    """fresnel_holograms on a periodic field equals tests/test_phase.py's propagation of the same field."""
    geom = make_geometry()
    rng = np.random.default_rng(2)
    phi = random_phase(64, rng, sigma_px=2.0, std=0.8, mean=-1.0)
    ctf = CTFRetriever(geom, (64, 64), DB, pad=1)
    ours = fresnel_holograms(phi, DB, FresnelRefiner(ctf, DB).propagators)
    t = np.exp(phi / DB + 1j * phi)
    theirs = np.stack([propagate(t, d, geom.voxel_m) for d in geom.propagation_distances_m])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_weak_objects_keep_the_ctf_phase():
    """Where the first order is the hologram (0.01 rad), the refinement leaves the CTF's answer."""
    _, _, data, ctf = _case(0.01)
    phase = ctf(data)
    out = FresnelRefiner(ctf, DB)(data, phase)
    assert np.abs(out.phase - phase).max() < 0.02 * np.abs(phase - phase.mean()).max()


@pytest.mark.parametrize("std", [0.4, 0.8])
def test_strong_phases_come_closer_to_the_truth_than_the_ctf(std):
    """Phases of 1-3 rad (a cell body at 17 keV): the CTF's first order errs; the refinement has a lower
    RMS error against the truth and fits the holograms better, with and without photon noise."""
    for photons in (None, 5000.0):
        _, truth, data, ctf = _case(std, photons=photons)
        phase = ctf(data)
        out = FresnelRefiner(ctf, DB)(data, phase)
        r_ctf, _, rms_ctf = _fit(phase, truth, 16)
        r_ref, _, rms_ref = _fit(out.phase, truth, 16)
        print(f"\nstd {std} photons {photons}: CTF r {r_ctf:.4f} rms {rms_ctf:.4f}; refined r {r_ref:.4f} "
              f"rms {rms_ref:.4f} ({out.iterations} iterations, loss {out.loss_start:.4g} -> {out.loss_end:.4g})")
        assert out.loss_end < 0.5 * out.loss_start
        assert rms_ref < 0.85 * rms_ctf and r_ref > r_ctf + 0.01


def test_an_envelope_retriever_is_refused():
    geom = make_geometry()
    ctf = CTFRetriever(geom, (32, 32), 10.0, envelope_delta_beta=100.0)
    with pytest.raises(ValueError, match="one material"):
        FresnelRefiner(ctf, 10.0)


def test_the_final_pass_refines_its_projections_when_asked():
    """ctf.refine reaches the final pass's processor (PhaseSetup), whose projection of a strong phase object is
    then closer to the truth than the CTF's, in the chain's units (delta line integral per voxel); the live
    processor (built directly) does not refine."""
    from xnh_stream.chain.steps import AngleProcessor, PhaseSetup
    from xnh_stream.config import ProcessConfig

    from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry

    from .test_phase import ENERGY_KEV, VOXEL, Z1

    # every distance at one magnification (z2 = 99 z1), so the frames are already on the reference grid
    geom = ScanGeometry(tuple(DistanceGeometry(z1, 99 * z1, 100 * VOXEL, ENERGY_KEV) for z1 in Z1))
    rng = np.random.default_rng(3)
    phi = random_phase(256, rng, sigma_px=2.5, std=0.8, mean=-2.4)
    data, truth = holograms(phi, DB, geom, crop=64), phi[64:-64, 64:-64]
    cfg = ProcessConfig.from_mapping({"ctf.refine": 10, "ctf.alpha_low": 2})
    refined = PhaseSetup(geom, data.shape[1:], DB, cfg).build()
    plain = AngleProcessor(geom, data.shape[1:], DB, cfg)
    assert refined.refine == 10 and plain.refine == 0
    frames = dict(enumerate(data.astype(np.float32)))
    scale = plain.scale  # phase (rad) -> projection
    _, _, rms_plain = _fit(plain.ctf(frames, 0.0) / scale, truth, 16)
    _, _, rms_refined = _fit(refined.ctf(frames, 0.0) / scale, truth, 16)
    assert rms_refined < 0.6 * rms_plain
    with pytest.raises(Exception, match="refine"):
        ProcessConfig.from_mapping({"ctf.refine": -1})
