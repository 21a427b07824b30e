"""The live front of the chain: frames arriving in any order become preview and final work (Ray-free).

:class:`ScanAssembler` takes every frame once, with its record (:class:`~xnh_stream.io.sources.FrameRecord`)
and pixels, and uses the chain's own pieces:

* a :class:`~xnh_stream.chain.calibration.Calibration` per distance (darks, flat series) flat-fields the
  projections with the flats known so far; projections that come before any flat wait as records (their
  pixels are read again when the flats are there, so waiting costs no memory);
* the flat-fielded frame goes to the on-disk :class:`~xnh_stream.state.store.DistanceStore`, stamped with
  its id and flat-field (the final pass reuses it where its own flat-field is the same), and is paired
  by angle in an :class:`~xnh_stream.chain.angles.AngleTable` (the batch chain's rule);
* the first frame of an angle makes a ``preview`` (single-distance Paganin, fast feedback); the angle's
  ``final`` work (multi-distance CTF) comes when every distance has it;
* every ``align_every``-th complete angle, the shifts of the distances are measured and added to their
  :class:`~xnh_stream.physics.align.ShiftModel`.

Work items name their frames by store key and angle and carry no pixels until :meth:`AngleWork.load`
(the driver loads one just before it is dispatched), so memory stays bounded however many are queued. After
a restart, projections already in the store are taken back without reading their files (:meth:`ScanAssembler.add`
with ``pixels=None``); only darks, flats and return projections are read again.

Distances are told apart by their key (:func:`~xnh_stream.io.sources.distance_key`) and numbered by
increasing ``z1`` (the reference, most magnified, is the smallest ``z1`` in XNH).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN, frame_problem
from ..io.sources import FrameRecord
from ..physics.align import ShiftModel, measure_distance_shifts
from ..physics.geometry import DistanceGeometry, ScanGeometry
from ..physics.xp import bin_2d
from ..state.store import DistanceStore
from .angles import AngleTable
from .axis import axis_sinogram_rows
from .calibration import Calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionResult:
    """What a phase worker hands back for one :class:`AngleWork`: the projection, binned for the live volume
    and at full resolution for the live slices, and for final work the preview it replaces (the same two).

    Attributes
    ----------
    binned : ndarray [ny // b, nx // b]
        The projection binned by the live volume's binning (float32).
    binned_previous : ndarray or None
        Final work: the preview it replaces, binned the same way; None for a preview, or for a final whose
        preview was never made.
    full : ndarray [ny, nx]
        The projection at full resolution (float32): the live slices, and the preview kept on disk.
    full_previous : ndarray or None
        The replaced preview at full resolution (as :attr:`binned_previous`).
    """

    binned: np.ndarray
    binned_previous: np.ndarray | None
    full: np.ndarray
    full_previous: np.ndarray | None

    @classmethod
    def of(cls, projection: np.ndarray, previous: np.ndarray | None, binning: int) -> ProjectionResult:
        """The result of a projection (and the preview it replaces), binned by ``binning`` for the volume.

        Parameters
        ----------
        projection : ndarray [ny, nx]
            The projection at full resolution, on the host.
        previous : ndarray or None
            The preview it replaces (final work), on the host.
        binning : int
            The live volume's binning.

        Returns
        -------
        ProjectionResult
            The four arrays.
        """
        return cls(bin_2d(projection, binning), None if previous is None else bin_2d(previous, binning),
                   projection, previous)


@dataclass
class AngleWork:
    """One unit of phase-retrieval work.

    Attributes
    ----------
    kind : str
        ``"preview"`` or ``"final"``.
    index : int
        Angle slot (its parity picks the FSC half).
    theta_deg : float
        Angle the projection is back-projected at.
    geometry : ScanGeometry
        The distances known when the work was made (``sources`` and ``frames`` are numbered in it).
    sources : dict
        ``{distance number: (distance key, frame angle)}``: where the flat-fielded frames are in the store.
    frame_ids : list of str
        The frames this work consumes.
    frames : dict
        ``{distance number: flat-fielded frame}``, filled by :meth:`load`.
    preview_distance : int or None
        Final work: the distance number whose preview it replaces.
    preview_theta_deg : float or None
        Final work: the angle that preview was back-projected at.
    preview_shift_yx : tuple or None
        The shift the preview was made with (final work: so the preview is recomputed exactly).
    preview : ndarray or None
        Final work: the preview projection it replaces, filled by :meth:`load` where the preview was kept
        (:attr:`ScanAssembler.previews_store`); None means it is recomputed from its frame.
    coarse : int
        Final work: the phase retrieval runs on the frames binned this many times (1: full resolution; 2 when
        the live stream is behind, :mod:`xnh_stream.live.schedule`) and the projection is brought back to
        the frames' grid; the preview it replaces is at full resolution as before.
    """

    kind: str
    index: int
    theta_deg: float
    geometry: ScanGeometry
    sources: dict[int, tuple[float, float]]
    frame_ids: list[str] = field(default_factory=list)
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    preview_distance: int | None = None
    preview_theta_deg: float | None = None
    preview_shift_yx: tuple[float, float] | None = None
    preview: np.ndarray | None = None
    coarse: int = 1

    def preview_key(self) -> tuple[float, float] | None:
        """Where this angle's preview is kept: ``(distance key, angle it was back-projected at)``; None for
        final work without a preview."""
        if self.kind == "preview":
            ((key, _),) = self.sources.values()
            return key, self.theta_deg
        if self.preview_distance is None or self.preview_theta_deg is None:
            return None
        return self.sources[self.preview_distance][0], self.preview_theta_deg

    def load(self, store: DistanceStore, previews: DistanceStore | None = None) -> AngleWork:
        """Fill :attr:`frames` from the store, and for final work :attr:`preview` from ``previews`` when the
        preview is there (returns self)."""
        if not self.frames:
            self.frames = {k: store.get(key, angle) for k, (key, angle) in self.sources.items()}
        key = self.preview_key() if self.kind == "final" and previews is not None else None
        if self.preview is None and key is not None and previews.has(*key):
            self.preview = previews.get(*key)
        return self

    def unload(self) -> None:
        """Drop the pixels (once they were sent: queued work holds none)."""
        self.frames, self.preview = {}, None


@dataclass
class _Slot:
    previewed_by: float | None = None  # distance key of the preview
    preview_theta: float | None = None
    preview_shift: tuple[float, float] | None = None
    final: bool = False


@dataclass
class _Distance:
    key: float
    geometry: DistanceGeometry
    calibration: Calibration
    waiting: list[FrameRecord] = field(default_factory=list)  # projections before any flat
    have: dict[int, tuple[str, float]] = field(default_factory=dict)  # slot -> (frame id, frame angle)
    returns: list[tuple[float, str]] = field(default_factory=list)  # (angle, frame id) in the store
    n_seen: int = 0


class ScanAssembler:
    """Turn frames into preview and final work; see the module docstring.

    Parameters
    ----------
    n_distances : int
        Distances the scan has (4 for XNH).
    frame_shape : tuple of int
        ``(ny, nx)``.
    store : DistanceStore
        Where flat-fielded frames wait for the other distances (on disk).
    delta_beta_align : float
        delta/beta of the Paganin filter used to register distances.
    align_every : int
        Measure distance shifts on every n-th complete angle.
    align_degree : int
        Degree of the shift models.
    align_bin_px : int
        Bin frames by this factor for registration (speed on large frames; shifts stay in full pixels).
    angle_tol_deg : float
        Tolerance of the angle table (:class:`AngleTable`).
    pca_components : int
        Dynamic flat-field components (0: interpolated flats).
    align_pad : float
        FFT padding factor of the registration's Paganin filter (``alignment.paganin_pad``).
    """

    def __init__(self, n_distances: int, frame_shape: tuple[int, int], store: DistanceStore,
                 delta_beta_align: float = 0.3, align_every: int = 4, align_degree: int = 2,
                 align_bin_px: int = 1, angle_tol_deg: float = 0.01, pca_components: int = 0,
                 align_pad: float = 1.5) -> None:
        self.n_distances = int(n_distances)
        self.shape = tuple(frame_shape)
        self.store = store
        self.delta_beta_align = delta_beta_align
        self.align_every = max(1, int(align_every))
        self.align_degree = align_degree
        self.align_bin_px = max(1, int(align_bin_px))
        self.align_pad = float(align_pad)
        self.pca_components = pca_components
        self.table = AngleTable(angle_tol_deg)
        self._dist: dict[float, _Distance] = {}
        self._slots: list[_Slot] = []
        self._n_complete = 0
        self.models: dict[float, ShiftModel] = {}
        self.quarantined: list[tuple[str, str]] = []
        self._returns: DistanceStore | None = None  # return projections, apart: they share angles with projections
        self._previews: DistanceStore | None = None

    @property
    def returns_store(self) -> DistanceStore:
        """Flat-fielded return projections (a store beside the main one)."""
        if self._returns is None:
            self._returns = DistanceStore(self.store.path.with_name(self.store.path.name + "_returns"), self.shape)
        return self._returns

    @property
    def previews_store(self) -> DistanceStore:
        """Preview projections as they were back-projected (a store beside the main one, keyed by
        :meth:`AngleWork.preview_key`): a final takes its preview back from here instead of recomputing it.
        Disposable: a preview not found is recomputed from its frame."""
        if self._previews is None:
            self._previews = DistanceStore(self.store.path.with_name(self.store.path.name + "_previews"), self.shape)
        return self._previews

    # ------------------------------------------------------------------ distances
    @property
    def distance_keys(self) -> list[float]:
        """Keys of the distances seen, by increasing z1 (index = distance number)."""
        return sorted(self._dist, key=lambda k: self._dist[k].geometry.z1_m)

    @property
    def geometry(self) -> ScanGeometry | None:
        """Geometry of the distances seen so far (None before the first frame)."""
        keys = self.distance_keys
        return ScanGeometry(tuple(self._dist[k].geometry for k in keys)) if keys else None

    @property
    def complete(self) -> bool:
        """All distances known."""
        return len(self._dist) >= self.n_distances

    def calibration(self, key: float) -> Calibration | None:
        """The calibration of a distance (by key)."""
        d = self._dist.get(key)
        return None if d is None else d.calibration

    def _reference_key(self) -> float | None:
        geo = self.geometry
        return None if geo is None else self.distance_keys[geo.reference]

    # ------------------------------------------------------------------ frames
    def can_restore(self, rec: FrameRecord) -> bool:
        """Whether a projection's flat-fielded frame is in the store (:meth:`add` may then take ``None``)."""
        return (rec.image_key == PROJECTION and rec.image_key_control != RETURN
                and self.store.has(rec.distance_key, rec.rotation_angle_deg))

    def add(self, rec: FrameRecord, frame: np.ndarray | None) -> list[AngleWork]:
        """Take one frame; returns the work it makes possible (possibly none).

        ``frame`` may be None for a projection whose flat-fielded frame is already in the store (a restart,
        :meth:`can_restore`).
        Unusable frames are recorded in :attr:`quarantined` as ``(frame_id, reason)``.
        """
        if frame is not None:
            problem = frame_problem(np.asarray(frame), self.shape)
            if problem:
                self.quarantined.append((rec.frame_id, problem))
                return []
        d = self._dist.get(rec.distance_key)
        if d is None:
            if len(self._dist) >= self.n_distances:
                self.quarantined.append((rec.frame_id, f"a distance beyond the scan's {self.n_distances} "
                                         f"(z1 = {rec.geometry.z1_m} m): not used"))
                return []
            d = self._dist[rec.distance_key] = _Distance(rec.distance_key, rec.geometry,
                                                         Calibration(self.shape, self.pca_components))
        d.n_seen += 1
        kind = rec.image_key
        work: list[AngleWork] = []
        if kind == DARK:
            d.calibration.add_dark(frame)
        elif kind == FLAT:
            d.calibration.add_flat(frame, rec.sequence)
            waiting, d.waiting = d.waiting, []
            for r in waiting:  # projections that arrived before any flat: read again now
                try:
                    work += self._projection(d, r, r.read())
                except (OSError, ValueError) as exc:
                    self.quarantined.append((r.frame_id, f"could not be read again once the flats came: {exc}"))
        elif kind == PROJECTION and rec.image_key_control == RETURN:
            if d.calibration.ready and frame is not None:
                self.returns_store.put(d.key, rec.rotation_angle_deg, d.calibration.correct(frame, rec.sequence))
                d.returns.append((rec.rotation_angle_deg, rec.frame_id))
        elif kind == PROJECTION:
            if frame is None:
                if not self.can_restore(rec):
                    raise ValueError(f"frame {rec.frame_id}: no pixels and not in the store")
                work += self._projection(d, rec, None)
            elif not d.calibration.ready:
                d.waiting.append(rec)
            else:
                work += self._projection(d, rec, frame)
        else:
            self.quarantined.append((rec.frame_id, f"image_key {kind} (invalid) set by the acquisition"))
        return work

    def _projection(self, d: _Distance, rec: FrameRecord, frame: np.ndarray | None) -> list[AngleWork]:
        if frame is not None:  # stamped: the final pass takes it from the store where its flat-field is the same
            self.store.put(d.key, rec.rotation_angle_deg, d.calibration.correct(frame, rec.sequence),
                           stamp=d.calibration.stamp(rec.frame_id, rec.sequence))
        ref_key = self._reference_key()
        slot, displaced = self.table.file(d.key, rec.frame_id, rec.rotation_angle_deg, reference=d.key == ref_key)
        if displaced is not None:
            self.quarantined.append((displaced, AngleTable.refusal(rec.rotation_angle_deg, str(rec.distance_name))))
        if slot is None:
            return []
        if displaced is not None:
            d.have.pop(slot, None)
        d.have[slot] = (rec.frame_id, rec.rotation_angle_deg)
        while len(self._slots) <= slot:
            self._slots.append(_Slot())
        s = self._slots[slot]
        geo = self.geometry
        keys = self.distance_keys
        work = []
        if s.previewed_by is None:  # one preview per slot, from the first distance that has it
            s.previewed_by = d.key
            s.preview_theta = self.table.angle(slot)
            k = keys.index(d.key)
            model = self.models.get(d.key)
            s.preview_shift = (tuple(float(v) for v in model(s.preview_theta)) if model is not None
                               and model.n_valid >= 1 and d.key != ref_key else (0.0, 0.0))
            work.append(AngleWork("preview", slot, s.preview_theta, geo, {k: (d.key, rec.rotation_angle_deg)},
                                  [rec.frame_id], preview_shift_yx=s.preview_shift))
        if self.complete and not s.final and all(slot in x.have for x in self._dist.values()):
            s.final = True
            self._n_complete += 1
            sources = {n: (z, self._dist[z].have[slot][1]) for n, z in enumerate(keys)}
            w = AngleWork("final", slot, self.table.angle(slot), geo, sources,
                          [self._dist[z].have[slot][0] for z in keys],
                          preview_distance=keys.index(s.previewed_by), preview_theta_deg=s.preview_theta,
                          preview_shift_yx=s.preview_shift)
            if self._n_complete % self.align_every == 1 or self.align_every == 1:
                self._measure_shifts(w, geo)
            work.append(w)
        return work

    def _measure_shifts(self, work: AngleWork, geo: ScanGeometry) -> None:
        frames = work.load(self.store).frames
        try:
            res = measure_distance_shifts([frames[n] for n in range(len(frames))], geo, self.delta_beta_align,
                                          bin_px=self.align_bin_px, paganin_pad=self.align_pad)
        except ValueError as exc:  # a registration that cannot run must not stop the stream
            log.warning("distance shifts at %.2f deg not measured: %s", work.theta_deg, exc)
            return
        finally:
            work.unload()  # loaded again at dispatch: no pixels held in the queue
        for n, z in enumerate(self.distance_keys):
            if n == geo.reference:
                continue
            model = self.models.setdefault(z, ShiftModel(order=self.align_degree))
            model.add(work.theta_deg, res.shifts_yx[n], ok=bool(res.ok[n]))

    # ------------------------------------------------------------------ queries
    def cor_pair(self, tol_deg: float = 0.05) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat-fielded projection and return projection of the reference distance 180 degrees apart."""
        key = self._reference_key()
        if key is None:
            return None
        d = self._dist[key]
        for angle, _ in d.returns:
            for slot, (_, theta) in d.have.items():
                if abs(abs(angle - theta) - 180.0) <= tol_deg:
                    return self.store.get(key, theta), self.returns_store.get(key, angle)
        return None

    def reference_rows(self, max_angles: int = 360) -> tuple[np.ndarray, np.ndarray]:
        """The axis sinograms of the reference distance's flat-fielded projections in the store
        (:func:`~xnh_stream.chain.axis.axis_sinogram_rows`: bands of rows about each of
        :func:`~xnh_stream.chain.axis.axis_rows`), as the final pass reads them.

        Returns ``(sinograms [len(axis_rows), n, nx], thetas_rad [n])`` over at most ``max_angles`` angles,
        evenly picked.
        """
        key = self._reference_key()
        d = self._dist[key]
        frames = sorted((theta, slot) for slot, (_, theta) in d.have.items())
        if len(frames) > max_angles:
            pick = np.linspace(0, len(frames) - 1, max_angles).round().astype(int)
            frames = [frames[i] for i in np.unique(pick)]
        sinos = np.stack([axis_sinogram_rows(np.asarray(self.store.get(key, theta))) for theta, _ in frames], axis=1)
        return sinos, np.deg2rad([theta for theta, _ in frames])

    def replay(self) -> Iterator[AngleWork]:
        """Work that rebuilds the live volume from scratch: finals for final slots, previews for the rest."""
        geo = self.geometry
        keys = self.distance_keys
        for slot, s in enumerate(self._slots):
            if s.final:
                sources = {n: (z, self._dist[z].have[slot][1]) for n, z in enumerate(keys)}
                yield AngleWork("final", slot, self.table.angle(slot), geo, sources,
                                preview_distance=keys.index(s.previewed_by), preview_theta_deg=s.preview_theta,
                                preview_shift_yx=s.preview_shift)
            elif s.previewed_by is not None and slot in self._dist[s.previewed_by].have:
                z = s.previewed_by
                yield AngleWork("preview", slot, s.preview_theta, geo,
                                {keys.index(z): (z, self._dist[z].have[slot][1])},
                                preview_shift_yx=s.preview_shift)

    def discard(self) -> None:
        """Delete the frames kept on disk (the store and the two beside it): the live chain starts again on
        other distances (:class:`~xnh_stream.chain.scan.DistanceVote`), whose frames are read again."""
        discard_stores(self.store.path)
        self._returns = self._previews = None

    def drop_previews(self) -> None:
        """Delete the kept previews (the stream is over: finals no longer replace them)."""
        if self._previews is not None:
            shutil.rmtree(self._previews.path, ignore_errors=True)
            self._previews = None

    def shift_models(self) -> list[ShiftModel | None]:
        """Current shift model of each distance number (None for the reference and unmeasured ones)."""
        out: list[ShiftModel | None] = []
        for z in self.distance_keys:
            m = self.models.get(z)
            out.append(m if m is not None and m.n_valid >= 1 else None)
        return out

    def state(self) -> dict[str, Any]:
        """Progress per distance: ``distances`` (z1, frames, waiting), ``angles_seen``, ``angles_final``."""
        return {"distances": [(self._dist[z].geometry.z1_m, self._dist[z].n_seen, len(self._dist[z].waiting))
                              for z in self.distance_keys],
                "angles_seen": sum(1 for s in self._slots if s.previewed_by is not None),
                "angles_final": self._n_complete, "quarantined": len(self.quarantined)}


def discard_stores(path: Path) -> None:
    """Delete a live store and the return and preview stores beside it (:attr:`ScanAssembler.returns_store`,
    :attr:`ScanAssembler.previews_store`)."""
    for p in (path, path.with_name(path.name + "_returns"), path.with_name(path.name + "_previews")):
        shutil.rmtree(p, ignore_errors=True)
