"""The phase-retrieval methods, one registry: ``phase.method`` names an entry of :data:`PHASE_METHODS`.

An entry says how one angle's flat-fielded frames (``{distance index: frame}``) become a projection of
delta on the reference grid, given the scan's :class:`~xnh_stream.chain.steps.AngleProcessor` (the
distances' alignment, the phase-to-delta scale, the padding, a cache for filters), whether the final pass
builds the sample envelope for it, and the name ``report.json`` gives it (``phase.method``).

Adding a method touches two files: its physics (a module of :mod:`xnh_stream.physics`) and one entry here
(docs/architecture.md, "Adding a phase method"). The final pass (``phase_task``), the live phase workers'
final projections and the report all go through :func:`phase_method`; the configuration accepts every name
registered here. This module imports nothing heavy at module level (the configuration imports it to check
``phase.method``): a method imports its physics inside its function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .steps import AngleProcessor

#: The projection of one angle: ``(processor, {distance index: flat-fielded frame}, angle in degrees)``.
Retrieve = Callable[["AngleProcessor", Mapping[int, Any], float], Any]


@dataclass(frozen=True)
class PhaseMethod:
    """One phase-retrieval method.

    Attributes
    ----------
    name : str
        The value of ``phase.method``.
    retrieve : callable
        ``retrieve(processor, images, theta_deg)``: the projection (delta line integral, voxel units) of the
        distances present in ``images``.
    envelope : bool
        The final pass builds the sample envelope for it (the two-material CTF); ``ctf.envelope`` still
        decides where it is used.
    label : callable
        ``label(two_material, refined)``: the name ``report.json`` gives the pass (``phase.method``), given
        whether the envelope was used and whether ``ctf.refine`` was on.
    summary : str
        One line for the documentation and the configuration's error message.
    """

    name: str
    retrieve: Retrieve
    envelope: bool
    label: Callable[[bool, bool], str]
    summary: str


def _ctf_label(two_material: bool, refined: bool) -> str:
    """``ctf-multi-distance``, ``-two-material`` with the envelope, ``-fresnel-refined`` with one material and
    ``ctf.refine``."""
    return ("ctf-multi-distance" + ("-two-material" if two_material else "")
            + ("-fresnel-refined" if refined and not two_material else ""))


def _paganin_label(two_material: bool, refined: bool) -> str:
    """``paganin-single-distance`` (neither an envelope nor a refinement)."""
    return "paganin-single-distance"


def _paganin(proc: AngleProcessor, images: Mapping[int, Any], theta_deg: float) -> Any:
    """Single-distance Paganin of the reference distance (else the most magnified one present)."""
    k = proc.geometry.reference if proc.geometry.reference in images else min(images)
    return proc.preview(k, images[k], theta_deg)


def _ctf(proc: AngleProcessor, images: Mapping[int, Any], theta_deg: float) -> Any:
    """Multi-distance CTF of one material (Fresnel-refined with ``ctf.refine``)."""
    return proc.ctf(images, theta_deg, two_material=False)


def _ctf_two_material(proc: AngleProcessor, images: Mapping[int, Any], theta_deg: float) -> Any:
    """Multi-distance CTF, two materials where the processor holds an envelope, else one."""
    return proc.ctf(images, theta_deg)


def _paganin_multi(proc: AngleProcessor, images: Mapping[int, Any], theta_deg: float) -> Any:
    """Paganin of every distance present at once, by least squares on the reference grid."""
    from ..physics.phase import retrieve_phase_paganin_multi  # noqa: PLC0415

    which = sorted(images)
    stack = proc.xp.stack([proc.aligned(k, images[k], theta_deg) for k in which])
    dist = [(proc.geometry.distances[k].propagation_distance_m, proc.geometry.distances[k].wavelength_m)
            for k in which]
    return retrieve_phase_paganin_multi(stack, dist, proc.geometry.voxel_m, proc.delta_beta, pad=proc.pad,
                                        xp=proc.xp) * proc.scale


PHASE_METHODS: dict[str, PhaseMethod] = {m.name: m for m in (
    PhaseMethod("paganin", _paganin, False, _paganin_label, "single-distance Paganin of the reference distance (fast, blurred)"),
    PhaseMethod("ctf", _ctf, False, _ctf_label, "multi-distance CTF, one material (ctf.refine: Fresnel-refined)"),
    PhaseMethod("ctf-two-material", _ctf_two_material, True, _ctf_label,
                "multi-distance CTF, the sample's outline against air and its interior (ctf.envelope decides "
                "where; one material otherwise)"),
    PhaseMethod("paganin-multi-distance", _paganin_multi, False, lambda two, refined: "paganin-multi-distance",
                "Paganin of every distance at once, least squares (robust for strong absorption; blurrier than "
                "the CTF)"),
)}

def phase_method(name: str) -> PhaseMethod:
    """The registered method ``name``.

    Raises
    ------
    KeyError
        For a name that is not registered (the message lists those that are).
    """
    try:
        return PHASE_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown phase method {name!r}; known: {', '.join(PHASE_METHODS)}") from None
