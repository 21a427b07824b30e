"""The rotation-axis rule's sinograms (chain/axis.py): bands of rows, not single rows, so that a low-dose scan
still gives a reliable axis."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xnh_stream.chain.axis import axis_band, axis_rows, axis_sinogram_rows, decide_rotation_axis
from xnh_stream.physics.projector import forward_project


def test_bands_are_means_about_the_axis_rows_and_never_overlap():
    frame = np.arange(96 * 5, dtype=np.float32).reshape(96, 5)
    rows, h = axis_rows(96), axis_band(96)
    assert h == 6 and min(np.diff(rows)) > 2 * h
    np.testing.assert_allclose(axis_sinogram_rows(frame), [frame[r - h:r + h + 1].mean(axis=0) for r in rows])
    assert axis_band(16) == 0 and axis_sinogram_rows(frame[:16]).shape == (6, 5)  # small frames: the rows


def test_a_low_dose_scan_gets_its_axis_from_bands_where_single_rows_fail():
    """Transmission of a phantom whose axis is 9.3 px off the detector centre, with the noise of ~300 photons
    per pixel: the sinograms of single rows give no reliable estimate, the bands give the axis within 0.3 px."""
    rng = np.random.default_rng(2)
    n, ny = 96, 96
    z, y, x = np.mgrid[:ny, :n, :n]
    vol = np.zeros((ny, n, n), np.float32)
    for _ in range(30):
        c, r = rng.uniform([0, 25, 25], [ny, n - 25, n - 25]), rng.uniform(4, 10)
        vol += (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r) * np.float32(0.01)
    vol = ndimage.gaussian_filter(vol, 1.0)
    thetas = np.linspace(0, np.pi, 90, endpoint=False)
    axis = (n - 1) / 2 + 9.3
    frames = np.exp(-forward_project(vol, thetas, n_det=n, cor=axis))
    frames = rng.poisson(frames * 300.0) / 300.0
    single = np.stack([f[list(axis_rows(ny))] for f in frames], axis=1)
    bands = np.stack([axis_sinogram_rows(f) for f in frames], axis=1)
    from_rows = decide_rotation_axis([], single, thetas, n)
    from_bands = decide_rotation_axis([], bands, thetas, n)
    print(f"\nsingle rows: {from_rows.axis.px:.2f} ({from_rows.axis.method}); bands: {from_bands.axis.px:.2f} "
          f"({from_bands.axis.method}); truth {axis:.2f}")
    assert not from_rows.trusted
    assert from_bands.trusted and abs(from_bands.axis.px - axis) < 0.3


def test_unreliable_estimators_pointing_at_different_axes_raise_a_critical_alert():
    """Noise alone (no sample): the estimators are unreliable; when their answers lie apart the alert is
    critical and names them, since the volume may be wrong."""
    rng = np.random.default_rng(0)
    sinos = 1 + 0.01 * rng.standard_normal((6, 64, 96))
    d = decide_rotation_axis([], sinos, np.linspace(0, np.pi, 64, endpoint=False), 96)
    px = [c["px"] for c in d.axis.candidates if c.get("px") is not None]
    alert = next(a for a in d.alerts if a.name == "RotationAxisUnreliable")
    print(f"\n{alert.severity}: {alert.message}")
    assert not d.trusted
    assert max(px) - min(px) > 1 and alert.severity == "critical" and "may be wrong" in alert.message
