"""Rotation-axis error of our estimators and of nabu's on the same foreign scans (tests/foreign.py).

Run from the repository root: ``python bench/bench_cor.py`` (about 2-4 minutes on 2 cores; needs astra-toolbox,
hotopy, nxtomo, nabu; nabu's Vo needs algotom). Prints, per scan, the error (estimate - truth, pixels) and
the time of every method, ours on -log(I), on I and on Paganin-filtered rows; nabu's pair methods get the
0-degree frame and the frame nearest to 180 degrees (179 in a [0, 180) scan: there is no 180-degree one),
its sinogram-half methods run only on 360-degree scans (as nabu's pipeline does).
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.foreign import ForeignSpec, flat_fielded, write_foreign_scan  # noqa: E402
from xnh_stream.physics.cor import estimate_rotation_axis  # noqa: E402
from xnh_stream.physics.geometry import DistanceGeometry  # noqa: E402
from xnh_stream.physics.phase import retrieve_phase_paganin  # noqa: E402

ROWS = [2, 6, 10, 14]
SCANS = {
    "180, axis +5.3": ForeignSpec(ny=16, axis_px=47.5 + 5.3, seed=21),
    "180, axis -6.3, sample off-centre": ForeignSpec(ny=16, axis_px=47.5 - 6.3, sample_offset_px=(10.0, -6.0), seed=22),
    "360, axis -4.4, sample off-centre": ForeignSpec(ny=16, n_angles=360, range_deg=360.0, axis_px=47.5 - 4.4,
                                                     sample_offset_px=(-8.0, 4.0), seed=14),
    "360 half acquisition, axis 80": ForeignSpec(ny=16, n_angles=360, range_deg=360.0, axis_px=80.0,
                                                 body_radius_px=70.0, seed=24),
}


def timed(fn):
    t = time.perf_counter()
    try:
        v = float(fn())
    except Exception as err:  # noqa: BLE001 (a peer failing is a result)
        v = float("nan")
        print(f"      ({type(err).__name__}: {str(err)[:80]})")
    return v, time.perf_counter() - t


def nabu_methods(frames, angles, centre):
    from nabu.estimation.cor import (CenterOfRotation, CenterOfRotationGrowingWindow,
                                     CenterOfRotationOctaveAccurate, CenterOfRotationSlidingWindow)
    from nabu.estimation.cor_sino import CenterOfRotationFourierAngles, SinoCorInterface

    n = frames.shape[-1]
    i0 = int(np.argmin(np.abs(angles - angles.min())))
    j = int(np.argmin(np.abs(angles - angles[i0] - 180.0)))
    a, b = frames[i0].astype(np.float64), frames[j].astype(np.float64)
    la, lb = -np.log(a), -np.log(b)
    sino = -np.log(frames[:, ROWS[1], :].astype(np.float64))
    full = angles.max() - angles.min() > 270
    side = "right" if centre > 0.65 * (n - 1) else "center"
    out = {}
    mid = (n - 1) / 2.0
    out[f"nabu CenterOfRotation (pair {angles[i0]:.0f}/{angles[j]:.0f})"] = lambda: mid + CenterOfRotation().find_shift(
        la, np.fliplr(lb), return_relative_to_middle=True)
    out["nabu SlidingWindow (pair)"] = lambda: mid + CenterOfRotationSlidingWindow().find_shift(
        la, np.fliplr(lb), side=side, return_relative_to_middle=True)
    out["nabu GrowingWindow (pair)"] = lambda: mid + CenterOfRotationGrowingWindow().find_shift(
        la, np.fliplr(lb), return_relative_to_middle=True)
    out["nabu OctaveAccurate (pair)"] = lambda: mid + CenterOfRotationOctaveAccurate().find_shift(
        la, np.fliplr(lb), side=side, return_relative_to_middle=True)
    out["nabu FourierAngles (sino)"] = lambda: mid + CenterOfRotationFourierAngles().find_shift(
        sino, angles=np.deg2rad(angles), side=side, return_relative_to_middle=True)
    if full:
        h = sino.shape[0] // 2
        out["nabu SinoCorInterface (sino halves)"] = lambda: mid + SinoCorInterface().find_shift(
            sino[:h], np.fliplr(sino[h : 2 * h]), side=side, return_relative_to_middle=True)
        out["nabu SlidingWindow (sino halves)"] = lambda: mid + CenterOfRotationSlidingWindow().find_shift(
            sino[:h], np.fliplr(sino[h : 2 * h]), side=side, return_relative_to_middle=True)
    try:
        from nabu.estimation.cor_sino import CenterOfRotationVo

        vo = CenterOfRotationVo()
        out["nabu Vo (algotom)"] = lambda: mid + vo.find_shift(
            sino, halftomo=side == "right", is_360=full, side="right" if side == "right" else "center",
            return_relative_to_middle=True)
    except ImportError:
        print("      (algotom missing: nabu's Vo skipped)")
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in SCANS.items():
            truth = write_foreign_scan(Path(tmp) / name.replace(" ", "_").replace(",", ""), spec)
            frames, angles, is_return = flat_fielded(truth.files[0])
            frames, angles = frames[~is_return], angles[~is_return]
            true = float(truth.axis_px[0])
            th = np.deg2rad(angles)
            sino = np.moveaxis(frames[:, ROWS, :], 1, 0)
            geo = DistanceGeometry(spec.z1_m[0], spec.focus_detector_m - spec.z1_m[0], spec.pixel_m, spec.energy_kev)
            print(f"\n{name}: true axis {true:.2f} px of {spec.nx}, {angles.size} angles "
                  f"{angles.min():.0f}..{angles.max():.0f} deg")
            rows = []
            est_holder = {}

            def ours(data, take_log, key):
                est = estimate_rotation_axis(sinograms=data, thetas=th, take_log=take_log)
                est_holder[key] = est
                return est.px

            v, t_ours = timed(lambda: ours(sino, True, "log"))
            rows.append(("ours consensus, -log(I)", v, t_ours))
            for c in est_holder["log"].candidates:
                rows.append((f"   ours {c.method}{'' if c.reliable else ' (unreliable)'}", c.px, float("nan")))
            rows.append(("ours consensus, I", *timed(lambda: ours(sino, False, "I"))))
            pag = np.stack([retrieve_phase_paganin(f, geo, 1000.0) for f in frames])
            pag_rows = np.moveaxis(pag[:, ROWS, :], 1, 0)
            rows.append(("ours consensus, Paganin rows", *timed(lambda: ours(pag_rows, False, "pag"))))
            e = est_holder["log"]
            print(f"   ours: {e.method}, confidence {e.confidence_px:.2f} px, disagreement {e.disagreement_px:.2f} px")
            for label, fn in nabu_methods(frames, angles, true).items():
                rows.append((label, *timed(fn)))
            for label, v, t in rows:
                err = v - true
                ts = "" if not np.isfinite(t) else f"{t:7.2f} s  ({t / t_ours:5.1f} x ours)"
                print(f"   {label:48s} error {err:+8.2f} px  {ts}")


if __name__ == "__main__":
    main()
