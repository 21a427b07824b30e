"""Pairing the projections of the distances by angle: one rule for the batch chain and the live stream.

Every distinct projection angle gets a *slot* (0, 1, 2 ... in order of creation); the frame of each
distance at that angle is filed in the slot. A frame joins the nearest slot within the tolerance; the
tolerance is ``tol_deg`` (0.01 degree) until eight slots exist, then half the median angular step (the
distances of a scan share the angular step but may be offset by a fraction of it). The slot's angle is its
reference-distance frame's angle once that frame is in (the reconstruction grid is the reference's), else
the first frame's. A slot's parity picks the FSC half-volume.

The batch chain creates the slots from the reference distance's projections first, so that its slots are
the reference angles in acquisition order; the live stream creates them in arrival order. When two frames
of one distance fall in one slot the nearer one is kept and the other is refused with the reason.

:func:`match_angles` and :func:`complete_angles` apply the rule to angles already stored per distance (a
:class:`~xnh_stream.state.store.DistanceStore`'s ``angles``): the store keeps frames, the chain pairs them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import numpy as np


class AngleTable:
    """Slots of distinct projection angles and the frame of each distance in them.

    Parameters
    ----------
    tol_deg : float
        Angles closer than this are one angle (until ``step_after`` slots exist).
    step_after : int
        Slots needed before the tolerance becomes half the median angular step.
    """

    def __init__(self, tol_deg: float = 0.01, step_after: int = 8) -> None:
        self.tol_deg = float(tol_deg)
        self.step_after = int(step_after)
        self._angles: list[float] = []
        self._sorted: list[tuple[float, int]] = []
        self._step: float | None = None
        self._frames: list[dict[int, tuple[str, float]]] = []  # slot -> {distance: (frame id, angle)}

    @classmethod
    def from_reference(cls, angles_deg: Iterable[float], tol_deg: float = 0.01) -> AngleTable:
        """A table whose slots are these reference-distance angles, with the step of all of them.

        Parameters
        ----------
        angles_deg : iterable of float
            The reference distance's projection angles, in acquisition order.
        tol_deg : float
            Smallest tolerance (the tolerance is half the median step of the angles, 1 degree for one angle).
        """
        angles = [float(a) for a in angles_deg]
        table = cls(tol_deg, step_after=len(angles) + 1)
        step = float(np.median(np.diff(np.sort(angles)))) if len(angles) > 1 else 1.0  # one angle: +-0.5 deg
        table._step = step if step > 0 else None
        for a in angles:
            table._new(a)
        return table

    # ------------------------------------------------------------------ slots
    @property
    def tolerance_deg(self) -> float:
        """The tolerance now."""
        return self.tol_deg if self._step is None else max(self.tol_deg, 0.5 * self._step)

    def _new(self, theta: float) -> int:
        self._angles.append(theta)
        self._frames.append({})
        slot = len(self._angles) - 1
        bisect.insort(self._sorted, (theta, slot))
        if self._step is None and len(self._angles) >= self.step_after:
            steps = np.diff([a for a, _ in self._sorted])
            med = float(np.median(steps))
            self._step = med if med > 0 else None
        return slot

    def find(self, theta_deg: float) -> int | None:
        """The slot of an angle (nearest within the tolerance), or None."""
        theta = float(theta_deg)
        j = bisect.bisect_left(self._sorted, (theta, -1))
        near = [(abs(a - theta), s) for a, s in (self._sorted[c] for c in (j - 1, j) if 0 <= c < len(self._sorted))
                if abs(a - theta) <= self.tolerance_deg]
        return min(near)[1] if near else None

    def slot(self, theta_deg: float, create: bool = True) -> int | None:
        """The slot of an angle, created if there is none (``create``)."""
        s = self.find(theta_deg)
        if s is None and create:
            s = self._new(float(theta_deg))
        return s

    def angle(self, slot: int) -> float:
        """The angle of a slot, degree."""
        return self._angles[slot]

    @property
    def angles(self) -> np.ndarray:
        """Angles of all slots, degree."""
        return np.asarray(self._angles, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._angles)

    # ------------------------------------------------------------------ frames
    def file(self, distance: int, frame_id: str, theta_deg: float, reference: bool = False,
             create: bool = True) -> tuple[int | None, str | None]:
        """File a projection of ``distance`` in its slot.

        Parameters
        ----------
        distance : int
            Distance number (or any key that tells the distances apart).
        frame_id : str
            The frame.
        theta_deg : float
            Its angle.
        reference : bool
            The frame belongs to the reference distance (as known now): the slot takes its angle.
        create : bool
            Make a new slot when no slot is near (else the frame is refused).

        Returns
        -------
        slot : int or None
            The slot, or None if the frame was refused.
        displaced : str or None
            A frame id that no longer has a slot (the frame of the same distance it replaced, or this
            frame itself when the one already there is nearer); its caller quarantines it with
            :meth:`refusal`.
        """
        s = self.slot(theta_deg, create=create)
        if s is None:
            return None, frame_id
        held = self._frames[s].get(distance)
        displaced = None
        if held is not None:
            if abs(held[1] - self._angles[s]) <= abs(theta_deg - self._angles[s]):
                return None, frame_id
            displaced = held[0]
        self._frames[s][distance] = (frame_id, float(theta_deg))
        if reference and self._angles[s] != float(theta_deg):
            self._move(s, float(theta_deg))
        return s, displaced

    def _move(self, slot: int, theta: float) -> None:
        self._sorted.remove((self._angles[slot], slot))
        self._angles[slot] = theta
        bisect.insort(self._sorted, (theta, slot))

    def frames(self, slot: int) -> dict[int, str]:
        """``{distance: frame id}`` of a slot."""
        return {k: v[0] for k, v in self._frames[slot].items()}

    def complete(self, slot: int, distances: Iterable[int]) -> bool:
        """Every one of ``distances`` has a frame in the slot."""
        have = self._frames[slot]
        return all(k in have for k in distances)

    @staticmethod
    def refusal(theta_deg: float, distance_name: str) -> str:
        """The quarantine reason of a refused projection."""
        return (f"projection at {theta_deg:g} deg has no slot of its own: another projection of distance "
                f"{distance_name} is nearer to that angle, or no reference angle is within half a step")


def match_angles(angles_of: Callable[[int], np.ndarray], n_distances: int, tol_deg: float | None = None,
                 reference: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pair every distance's angles with the reference distance's, with the chain's rule
    (:class:`AngleTable`: nearest within half the reference's angular step).

    Parameters
    ----------
    angles_of : callable
        ``angles_of(k)``: the sorted angles (degree) held for distance ``k`` (e.g.
        :meth:`xnh_stream.state.store.DistanceStore.angles`).
    n_distances : int
        Number of distances of the scan (keys ``0 .. n_distances - 1``).
    tol_deg : float, optional
        Largest angle difference accepted; default half the reference's median angular step.
    reference : int
        Distance whose angles define the rows (the most magnified, 0, in a sorted scan).

    Returns
    -------
    thetas_deg : ndarray [n]
        Sorted angles of the reference distance.
    angles_deg : ndarray [n, n_distances]
        The held angle of each distance paired with each reference angle (the key of its frame in the
        store), NaN where a distance has no frame within ``tol_deg``.

    Raises
    ------
    ValueError
        ``n_distances`` is not a positive int, ``reference`` is not one of the distances, or ``tol_deg`` is
        negative or not finite.
    """
    if isinstance(n_distances, bool) or not isinstance(n_distances, (int, np.integer)) or n_distances < 1:
        raise ValueError(f"n_distances must be a positive int, got {n_distances!r}")
    if not 0 <= reference < n_distances:
        raise ValueError(f"reference must be in 0..{n_distances - 1}, got {reference!r}")
    if tol_deg is not None and not (math.isfinite(tol_deg) and tol_deg >= 0):
        raise ValueError(f"tol_deg must be a finite non-negative number, got {tol_deg!r}")
    thetas = np.asarray(angles_of(reference), dtype=np.float64)
    table = AngleTable.from_reference(thetas)
    if tol_deg is not None:
        table.tol_deg, table._step = float(tol_deg), None
    out = np.full((thetas.size, n_distances), np.nan)
    out[:, reference] = thetas
    for k in range(n_distances):
        if k == reference:
            continue
        for a in angles_of(k):
            slot, _ = table.file(k, str(a), float(a), create=False)
            if slot is not None:
                out[slot, k] = a
    return thetas, out


def complete_angles(angles_of: Callable[[int], np.ndarray], n_distances: int, tol_deg: float | None = None,
                    reference: int = 0) -> np.ndarray:
    """Reference angles (degree, sorted) at which every one of ``n_distances`` distances has a frame.

    See :func:`match_angles` for the parameters, the pairing and its tolerance.

    Returns
    -------
    ndarray
        The complete reference angles.
    """
    thetas, angles = match_angles(angles_of, n_distances, tol_deg, reference)
    return thetas[np.isfinite(angles).all(axis=1)]
