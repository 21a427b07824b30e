"""Assemble a running scan from frames arriving in any order (Ray-free).

:class:`ScanAssembler` receives every frame once (with its metadata), keeps the darks and flats of each
distance, flat-fields projections with the flats known so far, and says what to compute next:

* a ``preview`` of an angle as soon as one distance has it (single-distance Paganin, fast feedback);
* the ``final`` CTF projection of an angle once every distance has it.

It also fits the distance alignment progressively: on every ``align_every``-th complete angle the shifts
of each distance are measured and added to a :class:`~xnh_stream.physics.align.ShiftModel`.

Distances are told apart by ``z1`` and numbered by increasing ``z1`` (the reference, most magnified,
is 0) once ``n_distances`` are known; before that, previews use the distances seen so far.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..physics.align import ShiftModel, measure_distance_shifts
from ..physics.flatfield import FlatInterpolator
from ..physics.geometry import DistanceGeometry, ScanGeometry
from ..io.nxtomo import DARK, FLAT, INVALID, PROJECTION, RETURN, frame_problem
from ..state.store import DistanceStore

log = logging.getLogger(__name__)


class Frame(Protocol):
    """What the assembler needs to know about a frame (ingest's records satisfy it)."""

    frame_id: str
    image_key: int
    image_key_control: int
    rotation_angle_deg: float
    sequence: float  # acquisition position within the distance (orders frames, interpolates flats)
    geometry: DistanceGeometry


@dataclass(frozen=True)
class FrameInfo:
    """A plain :class:`Frame` (for callers without ingest records: tests, benchmarks, replays)."""

    frame_id: str
    image_key: int
    image_key_control: int
    rotation_angle_deg: float
    sequence: float
    geometry: DistanceGeometry


@dataclass
class AngleWork:
    """One unit of phase-retrieval work."""

    kind: str  # "preview" or "final"
    index: int  # angle index: order of first arrival of the angle (picks the FSC half)
    theta_deg: float
    frames: dict[int, np.ndarray]  # distance number -> flat-fielded frame
    geometry: ScanGeometry
    frame_ids: list[str] = field(default_factory=list)  # the frames this work consumes
    preview_distance: int | None = None  # final work: the distance whose preview it replaces


@dataclass
class _Distance:
    geometry: DistanceGeometry
    darks: list[np.ndarray] = field(default_factory=list)
    flat_runs: list[tuple[float, list[np.ndarray]]] = field(default_factory=list)
    last_kind: int | None = None
    n_seen: int = 0
    waiting: list[tuple[Frame, np.ndarray, float]] = field(default_factory=list)  # projections before flats
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # angle index -> frame (no store)
    have: dict[int, str] = field(default_factory=dict)  # angle index -> frame id of its flat-fielded frame
    returns: list[tuple[float, np.ndarray]] = field(default_factory=list)
    interpolator: FlatInterpolator | None = None  # rebuilt when a flat arrives
    dark: np.ndarray | None = None


class ScanAssembler:
    """Turn frames into preview and final work; see the module docstring.

    Parameters
    ----------
    n_distances : int
        Distances the scan has (4 for XNH).
    frame_shape : tuple of int
        ``(ny, nx)``.
    delta_beta_align : float
        delta/beta of the Paganin filter used to register distances.
    align_every : int
        Measure distance shifts on every n-th complete angle.
    align_bin_px : int
        Bin frames by this factor for registration (speed on large frames; shifts stay in full pixels).
    angle_tol_deg : float
        Angles closer than this are the same angle; once eight angles are known, up to half the angular
        step (the batch chain's rule, :func:`xnh_stream.chain.batch.match_angles`), the nearest one.
    store : DistanceStore, optional
        Where flat-fielded frames wait for the other distances (on disk, so memory stays bounded over a
        four-hour scan); without one they wait in memory.
    """

    def __init__(self, n_distances: int, frame_shape: tuple[int, int], delta_beta_align: float = 0.3,
                 align_every: int = 4, align_degree: int = 2, angle_tol_deg: float = 0.01,
                 store: DistanceStore | None = None, align_bin_px: int = 1) -> None:
        self.store = store
        self.align_bin_px = align_bin_px
        self.n_distances = n_distances
        self.shape = tuple(frame_shape)
        self.delta_beta_align = delta_beta_align
        self.align_every = max(1, align_every)
        self.align_degree = align_degree
        self.tol = angle_tol_deg
        self._dist: dict[float, _Distance] = {}
        self._angles: list[float] = []  # angle of each index
        self._by_angle: list[tuple[float, int]] = []  # (angle, index), sorted
        self._step: float | None = None
        self._final: set[int] = set()
        self._previewed: dict[int, float] = {}  # angle index -> z1 key of the distance previewed
        self._n_complete = 0
        self.models: dict[float, ShiftModel] = {}
        self.quarantined: list[tuple[str, str]] = []

    # ---------------------------------------------------------------------------------------------------
    @property
    def distance_keys(self) -> list[float]:
        """z1 of the distances seen, increasing (index = distance number)."""
        return sorted(self._dist)

    @property
    def geometry(self) -> ScanGeometry | None:
        """Geometry of the distances seen so far (None before the first frame)."""
        keys = self.distance_keys
        return ScanGeometry(tuple(self._dist[k].geometry for k in keys)) if keys else None

    @property
    def complete(self) -> bool:
        """All distances known."""
        return len(self._dist) >= self.n_distances

    def angle_index(self, theta_deg: float) -> int:
        """Index of an angle: the nearest known one within the tolerance, else a new one."""
        theta = float(theta_deg)
        tol = self.tol if self._step is None else max(self.tol, 0.5 * self._step)
        j = bisect.bisect_left(self._by_angle, (theta, -1))
        near = [self._by_angle[c] for c in (j - 1, j) if 0 <= c < len(self._by_angle)]
        near = [(abs(a - theta), i) for a, i in near if abs(a - theta) <= tol]
        if near:
            return min(near)[1]
        self._angles.append(theta)
        bisect.insort(self._by_angle, (theta, len(self._angles) - 1))
        if self._step is None and len(self._angles) >= 8:
            steps = np.diff([a for a, _ in self._by_angle])
            self._step = float(np.median(steps)) if np.median(steps) > 0 else None
        return len(self._angles) - 1

    # ---------------------------------------------------------------------------------------------------
    def add(self, rec: Frame, frame: np.ndarray) -> list[AngleWork]:
        """Take one frame; returns the work it makes possible (possibly none).

        Unusable frames are recorded in :attr:`quarantined` as ``(frame_id, reason)``.
        """
        problem = frame_problem(np.asarray(frame), self.shape)
        if problem:
            self.quarantined.append((rec.frame_id, problem))
            return []
        key = round(rec.geometry.z1_m, 9)
        d = self._dist.get(key)
        if d is None:
            d = self._dist[key] = _Distance(rec.geometry)
            if len(self._dist) > self.n_distances:
                raise ValueError(f"frame {rec.frame_id}: a {len(self._dist)}th distance (z1 = {key} m) in a "
                                 f"scan of {self.n_distances}")
        frame = np.asarray(frame, dtype=np.float32)
        kind = rec.image_key
        d.n_seen += 1
        work: list[AngleWork] = []
        position = float(rec.sequence)
        if kind == DARK:
            d.darks.append(frame)
            d.dark = None
        elif kind == FLAT:
            same = [run for p, run in d.flat_runs if p == position]
            if same:  # a flat series resumed at its own position (e.g. frames replayed): one series
                same[0].append(frame)
            elif d.last_kind != FLAT or not d.flat_runs:
                d.flat_runs.append((position, [frame]))
            else:
                d.flat_runs[-1][1].append(frame)
            d.interpolator = None
            waiting, d.waiting = d.waiting, []
            for r, f, p in waiting:  # projections that arrived before any flat
                work += self._projection(d, r, f, p)
        elif kind == PROJECTION and rec.image_key_control == RETURN:
            if d.flat_runs:
                d.returns.append((rec.rotation_angle_deg, self._flat_fielded(d, frame, position)))
        elif kind == PROJECTION:
            if not d.flat_runs:
                d.waiting.append((rec, frame, position))
            else:
                work += self._projection(d, rec, frame, position)
        elif kind == INVALID:
            self.quarantined.append((rec.frame_id, "image_key 3 (invalid) set by the acquisition"))
        d.last_kind = kind
        return work

    def _flat_fielded(self, d: _Distance, frame: np.ndarray, position: float) -> np.ndarray:
        if d.dark is None:
            d.dark = np.mean(d.darks, axis=0) if d.darks else np.zeros(self.shape, np.float32)
        if d.interpolator is None:
            d.interpolator = FlatInterpolator.from_series([(p, np.stack(run)) for p, run in d.flat_runs])
        return d.interpolator.correct(frame, position, d.dark)

    def _projection(self, d: _Distance, rec: Frame, frame: np.ndarray, position: float) -> list[AngleWork]:
        ff = self._flat_fielded(d, frame, position)
        i = self.angle_index(rec.rotation_angle_deg)
        if self.store is not None:
            self.store.put(_store_key(d), self._angles[i], ff)
        else:
            d.frames[i] = ff
        d.have[i] = rec.frame_id
        geo = self.geometry
        zkey = round(d.geometry.z1_m, 9)
        work = []
        if i not in self._previewed:  # one preview per angle, from the first distance that has it
            self._previewed[i] = zkey
            work.append(AngleWork("preview", i, self._angles[i], {self.distance_keys.index(zkey): ff}, geo,
                                  [rec.frame_id]))
        if self.complete and i not in self._final and all(i in x.have for x in self._dist.values()):
            frames = {n: self._take(self._dist[z], i) for n, z in enumerate(self.distance_keys)}
            ids = [self._dist[z].have[i] for z in self.distance_keys]
            self._final.add(i)
            self._n_complete += 1
            if self._n_complete % self.align_every == 1 or self.align_every == 1:
                self._measure_shifts(frames, geo, self._angles[i])
            work.append(AngleWork("final", i, self._angles[i], frames, geo, ids,
                                  preview_distance=self.distance_keys.index(self._previewed[i])))
        return work

    def _take(self, d: _Distance, i: int) -> np.ndarray:
        """The flat-fielded frame of angle ``i`` of a distance (from the store, or from memory)."""
        if self.store is not None:
            return self.store.get(_store_key(d), self._angles[i])
        return d.frames.pop(i)

    def _measure_shifts(self, frames: dict[int, np.ndarray], geo: ScanGeometry, theta: float) -> None:
        res = measure_distance_shifts([frames[n] for n in range(len(frames))], geo, self.delta_beta_align,
                                      bin_px=self.align_bin_px)
        for n, z in enumerate(self.distance_keys):
            if n == geo.reference:
                continue
            model = self.models.setdefault(z, ShiftModel(order=self.align_degree))
            model.add(theta, res.shifts_yx[n], ok=bool(res.ok[n]))

    def cor_pair(self, tol_deg: float = 0.05) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat-fielded projection and return projection of the reference distance 180 degrees apart."""
        keys = self.distance_keys
        if not keys:
            return None
        d = self._dist[keys[0]]
        for angle, ret in d.returns:
            for i, theta in enumerate(self._angles):
                if i in d.have and abs(abs(angle - theta) - 180.0) <= tol_deg:
                    frame = self.store.get(_store_key(d), theta) if self.store is not None else d.frames.get(i)
                    if frame is not None:
                        return frame, ret
        return None

    def replay(self) -> list[AngleWork]:
        """Work that rebuilds the live volume from scratch: finals for final angles, previews for the rest.

        Needs the on-disk store (frames of final angles are not kept in memory).
        """
        if self.store is None:
            raise ValueError("replay needs a DistanceStore")
        geo = self.geometry
        works = []
        for i, theta in enumerate(self._angles):
            if i in self._final:
                frames = {n: self.store.get(_store_key(self._dist[z]), theta) for n, z in enumerate(self.distance_keys)}
                works.append(AngleWork("final", i, theta, frames, geo,
                                       preview_distance=self.distance_keys.index(self._previewed[i])))
            elif i in self._previewed:
                z = self._previewed[i]
                frame = self.store.get(_store_key(self._dist[z]), theta)
                works.append(AngleWork("preview", i, theta, {self.distance_keys.index(z): frame}, geo))
        return works

    def shift_models(self) -> list[ShiftModel | None]:
        """Current shift model of each distance number (None for the reference and unmeasured ones)."""
        out: list[ShiftModel | None] = []
        for z in self.distance_keys:
            m = self.models.get(z)
            out.append(m if m is not None and m.n_valid >= 1 else None)
        return out

    def state(self) -> dict[str, Any]:
        """Progress per distance for logs and the live page."""
        return {"distances": [{"z1_m": z, "frames": self._dist[z].n_seen,
                               "projections_waiting_for_flats": len(self._dist[z].waiting)}
                              for z in self.distance_keys],
                "angles_seen": len(self._angles), "angles_final": len(self._final),
                "quarantined": len(self.quarantined)}


def _store_key(d: _Distance) -> int:
    """Store key of a distance: its z1 in nanometres."""
    return int(round(d.geometry.z1_m * 1e9))
