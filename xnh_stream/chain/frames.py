"""Flat-fielded frames for the final pass's tasks: read from their files here, or taken from the live stream.

A streamed scan's projections were flat-fielded once already, as they landed, into the stream's
:class:`~xnh_stream.state.store.DistanceStore`, each with a stamp
(:meth:`~xnh_stream.chain.calibration.Calibration.stamp`: the frame's id, the dark, the flat series its flat
was made of and their weights). The final pass takes a frame from there instead of reading its file again
when the stamp is one its own calibration gives that frame:

* the final flat (:meth:`~xnh_stream.chain.calibration.Calibration.states`, first): the stored frame is the
  one the final pass would compute, bit for bit;
* the flat of the series just before (or after) it alone: the stream flat-fielded the frame before the
  other series came (flats at both ends of a scan: every frame). The final pass flat-fields it again
  with its own flat, ``stored * (F_live - dark) / (F_final - dark)``
  (:func:`~xnh_stream.physics.flatfield.reflat`), which differs from flat-fielding the raw frame by a few
  float32 roundings (~1e-7 relative).

Anything else is read from its file and flat-fielded here: no store, another frame at its angle, other darks
or flats, a pixel dead under the stream's flat and alive under the final one, a chunk the store cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.sources import FrameRecord
from ..state.store import DistanceStore
from .calibration import Calibration, FlatState
from .steps import read_frame

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a task learnt about frames: those it could not use, with the reason."""

    quarantined: list[tuple[str, str]] = field(default_factory=list)

    def bad(self, rec: FrameRecord, reason: str) -> None:
        """Note an unusable frame."""
        self.quarantined.append((rec.frame_id, reason))


@dataclass
class CorrectedFrames:
    """The flat-fielded frames of a scan's distances (see the module docstring). Small and picklable: the
    tasks get it as a shared argument and open the store where they run.

    Parameters
    ----------
    calibrations : list of Calibration
        Darks and flats of each distance number.
    store_path : str, optional
        The live stream's store of flat-fielded projections.
    reuse : dict
        Frame id -> ``(distance key, angle, state)`` of the frames taken from the store; ``state`` is the
        :class:`~xnh_stream.chain.calibration.FlatState` the stream flat-fielded it with, None when that is
        the final one.
    """

    calibrations: list[Calibration]
    store_path: str | None = None
    reuse: dict[str, tuple[float, float, FlatState | None]] = field(default_factory=dict)
    _store: DistanceStore | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, calibrations: list[Calibration], store_path: str | Path | None,
           slots: Sequence[tuple[int, float, dict[int, FrameRecord]]]) -> CorrectedFrames:
        """The frames of ``slots``, those the store at ``store_path`` holds as the final pass would flat-field
        them taken from it (None, a missing or unreadable store: every frame read from its file)."""
        plain = cls(calibrations)
        if store_path is None or not (Path(store_path) / "zarr.json").is_file():
            return plain
        try:
            store = DistanceStore(store_path, readonly=True)
        except ValueError as exc:
            log.info("the stream's frames are not reused (%s): the final pass reads every frame", exc)
            return plain
        if not calibrations or store.frame_shape != tuple(calibrations[0].shape):
            return plain
        stamps: dict[float, dict[float, int]] = {}
        reuse: dict[str, tuple[float, float, FlatState | None]] = {}
        for _, _, frames in slots:
            for k, rec in frames.items():
                if rec.distance_key not in stamps:
                    stamps[rec.distance_key] = store.stamps(rec.distance_key)
                stored = stamps[rec.distance_key].get(rec.rotation_angle_deg)
                if not stored:
                    continue
                cal = calibrations[k]
                for n, state in enumerate(cal.states(rec.sequence)):
                    if stored == cal.stamp(rec.frame_id, rec.sequence, state):
                        reuse[rec.frame_id] = (rec.distance_key, rec.rotation_angle_deg, state if n else None)
                        break
        again = sum(1 for *_, state in reuse.values() if state is not None)
        log.info("%d of %d projections taken flat-fielded from the stream's store %s (%d flat-fielded again with "
                 "the final flats)", len(reuse), sum(len(f) for _, _, f in slots), store_path, again)
        return cls(calibrations, str(store_path), reuse)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}  # each process opens the store itself

    def __len__(self) -> int:
        """Frames taken from the store."""
        return len(self.reuse)

    def corrected(self, rec: FrameRecord, k: int, outcome: Outcome, xp: Any = np) -> Any | None:
        """Frame ``rec`` of distance number ``k`` flat-fielded (float32, on ``xp``), or None when it cannot be
        read (noted in ``outcome``)."""
        where = self.reuse.get(rec.frame_id)
        if where is not None:
            key, angle, state = where
            try:
                if self._store is None:
                    self._store = DistanceStore(self.store_path, readonly=True)
                stored = xp.asarray(self._store.get(key, angle))
            except Exception as exc:  # noqa: BLE001 - any failure of the store: the file is the truth
                log.warning("%s: the stream's flat-fielded frame is unreadable in %s (%s): reading the file",
                            rec.frame_id, self.store_path, exc)
            else:
                out = stored if state is None else self.calibrations[k].reflat(stored, rec.sequence, state, xp)
                if out is not None:
                    return out
        frame, problem = read_frame(rec)
        if frame is None:
            outcome.bad(rec, problem or "unreadable")
            return None
        return self.calibrations[k].correct(frame, rec.sequence, xp=xp)
