"""The rotation-axis rule, once: which rows are read for it, and which axis is used given the estimators.

The final pass (:meth:`xnh_stream.chain.final.FinalChain.rotation_axis`) and the live stream (the live
volume rebuilt around the axis once the reference distance has come round, :mod:`xnh_stream.live.driver`)
both decide here: the consensus of :func:`~xnh_stream.physics.cor.estimate_rotation_axis` on 0/180 pairs and
on a few full-resolution rows, the detector centre when there is no estimate, and the alerts the final
pass reports. Only what each does with an unreliable estimate differs: the final pass uses it (with a
warning), the live volume keeps the detector centre (:attr:`AxisDecision.trusted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..physics.cor import estimate_rotation_axis
from ..physics.xp import array_module_of
from ..quality.alerts import Alert
from .report import RotationAxis

__all__ = ["MIN_SINOGRAM_ANGLES", "AxisDecision", "axis_rows", "axis_sinogram_rows", "decide_rotation_axis"]

#: The sinogram estimators (Vo, sliding window) are used from this many angles of the reference distance.
MIN_SINOGRAM_ANGLES = 8

#: The method named when no estimator gave an axis.
NO_ESTIMATE = "detector centre (no estimate)"


def axis_rows(ny: int) -> tuple[int, ...]:
    """The full-resolution rows the sinogram estimators read: up to 6, evenly from 15 % to 85 % of the frame.

    Parameters
    ----------
    ny : int
        Rows of the reference distance's frames.

    Returns
    -------
    tuple of int
        Sorted, distinct row indices.
    """
    return tuple(sorted({int(round(r)) for r in np.linspace(0.15 * (ny - 1), 0.85 * (ny - 1), min(6, ny))}))


def axis_band(ny: int) -> int:
    """Half-width of the band of rows averaged about each of :func:`axis_rows` (up to 8, less than half their
    spacing, so that bands never overlap)."""
    rows = axis_rows(ny)
    spacing = min(np.diff(rows)) if len(rows) > 1 else ny
    return int(max(0, min(8, (spacing - 1) // 2)))


def axis_sinogram_rows(frame: Any, ny: int | None = None) -> Any:
    """One flat-fielded reference frame's contribution to the axis sinograms: for each of :func:`axis_rows`,
    the mean of the band of ``2 axis_band + 1`` rows about it.

    A mean over rows is the projection of the mean over slices, so it is a sinogram of the same axis with the
    noise of a single row divided by the band's square root (a 2000-photon scan's single rows left both
    sinogram estimators unreliable and one 25 px off; its bands of 13 rows, 3.6x less noise, do not).

    Parameters
    ----------
    frame : array ``[rows, columns]``
        The flat-fielded frame (numpy or cupy).
    ny : int, optional
        Its rows (default: the frame's).

    Returns
    -------
    array ``[len(axis_rows), columns]``
    """
    ny = frame.shape[0] if ny is None else ny
    h = axis_band(ny)
    xp = array_module_of(frame)
    return xp.stack([frame[max(0, r - h):min(ny, r + h + 1)].mean(axis=0) for r in axis_rows(ny)])


@dataclass
class AxisDecision:
    """The axis to use and what to say about it.

    Attributes
    ----------
    axis : RotationAxis
        The estimators' consensus, or the detector centre when none gave an axis.
    alerts : list of Alert
        ``RotationAxisUnknown`` (no estimate), ``RotationAxisDisagreement`` (> 1 px apart),
        ``RotationAxisUnreliable`` (critical when the unreliable estimators are more than 1 px apart): the
        final pass reports them.
    trusted : bool
        An estimate that is reliable (not the detector centre, not marked unreliable): the live volume is
        rebuilt around the axis only then.
    problem : str, optional
        Why there is no estimate (the estimators' error).
    """

    axis: RotationAxis
    alerts: list[Alert] = field(default_factory=list)
    trusted: bool = False
    problem: str | None = None


def decide_rotation_axis(pairs: Sequence[tuple[Any, Any, float]], sinograms: np.ndarray | None,
                         thetas: np.ndarray | None, n_columns: int) -> AxisDecision:
    """The rotation axis from 0/180 (and 360) pairs and reference-distance rows, by the estimators' consensus.

    Parameters
    ----------
    pairs : sequence of ``(a, b, delta_deg)``
        Flat-fielded frames of the reference distance (see :func:`estimate_rotation_axis`).
    sinograms : ndarray ``[rows, angles, columns]``, optional
        The rows of :func:`axis_rows` of the reference distance's flat-fielded projections; left out below
        :data:`MIN_SINOGRAM_ANGLES` angles.
    thetas : ndarray ``[angles]``, optional
        Their angles (rad).
    n_columns : int
        Detector columns (the detector centre when nothing can be estimated).

    Returns
    -------
    AxisDecision
        The axis, its alerts and whether it is a reliable estimate.
    """
    if sinograms is None or thetas is None or np.size(thetas) < MIN_SINOGRAM_ANGLES:
        sinograms = thetas = None
    try:
        est = estimate_rotation_axis(pairs, sinograms, thetas)
    except ValueError as exc:
        alert = Alert("RotationAxisUnknown", "critical",
                      f"no estimate of the rotation axis ({exc}); the detector centre is used")
        return AxisDecision(RotationAxis((n_columns - 1) / 2, NO_ESTIMATE), [alert], problem=str(exc))
    alerts: list[Alert] = []
    if not est.agree:
        alerts.append(Alert("RotationAxisDisagreement", "warning",
                            f"rotation-axis estimators disagree by {est.disagreement_px:.2f} px "
                            f"(> 1 px); {est.px:.2f} px ({est.method}) used"))
    unreliable = est.method.endswith("(unreliable)")
    candidates = [{**c, "reliable": c["reliable"]} for c in est.as_dict()["candidates"]]
    if unreliable:
        found = [float(c["px"]) for c in candidates if c.get("px") is not None]
        spread = max(found) - min(found) if found else 0.0
        if spread > 1.0:  # none reliable and they point at different axes: the volume may well be wrong
            answers = ", ".join("{} {:.2f}".format(c["method"], c["px"]) for c in candidates)
            alerts.append(Alert("RotationAxisUnreliable", "critical",
                                f"no reliable rotation-axis estimate and the estimators are {spread:.1f} px apart "
                                f"({answers}); "
                                f"{est.px:.2f} px ({est.method}) used: the volume may be wrong; set fbp.cor "
                                "(--cor) if the axis is known"))
        else:
            alerts.append(Alert("RotationAxisUnreliable", "warning",
                                f"no reliable rotation-axis estimate; {est.px:.2f} px ({est.method}) used"))
    axis = RotationAxis(est.px, est.method, est.confidence_px, candidates, disagreement_px=est.disagreement_px,
                        axis_drift_px=est.axis_drift_px)
    return AxisDecision(axis, alerts, trusted=not unreliable)
