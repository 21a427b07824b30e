"""Darks and flats of one distance: what flat-fields its frames and what the dose is computed from.

One :class:`Calibration` per distance, fed frame by frame in any order (the live stream) or all at once
(the batch chain); both give the same result. Rules:

* the dark is the mean of the dark frames (none: a dark level of 0, with a warning);
* flats form *series*: a flat whose acquisition position is within one frame of a series' last flat joins
  that series (a flat replayed at its own position joins it too), any other starts a new one; a series'
  image is the pixel-wise **median** of its flats (robust to zingers), its position the mean of theirs;
* a frame at position ``s`` is flat-fielded with the flat linearly interpolated between the series before
  and after ``s`` (:class:`~xnh_stream.physics.flatfield.FlatInterpolator`), or with the dynamic (PCA)
  flat-field of :class:`~xnh_stream.physics.flatfield.PCAFlats` when ``pca_components > 0``;
* the dose uses the mean counts of the central region of the flats and of the dark
  (:attr:`Calibration.flat_counts`, :attr:`Calibration.dark_counts`).

Memory: the dark is a running sum; a series keeps its frames until its median is taken, and only the
series images are kept after that (``keep_flats`` keeps every flat for the PCA).
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from ..physics.dose import central_mean
from ..physics.flatfield import FlatInterpolator, PCAFlats, reflat

log = logging.getLogger(__name__)


class FlatState(NamedTuple):
    """Which flat series make a frame's flat: ``(1 - t) F_a + t F_b``, series numbered by position."""

    a: int
    b: int
    t: float


@dataclass
class _Series:
    positions: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # until reduced
    image: np.ndarray | None = None  # the median, once taken
    count_mean: float = 0.0  # mean of the frames' central means (dose)
    n: int = 0
    digest: int | None = None  # CRC-32 of the median image, once taken (Calibration.fingerprint)

    @property
    def position(self) -> float:
        return float(np.mean(self.positions))


class Calibration:
    """Darks and flat series of one distance (see the module docstring).

    Parameters
    ----------
    frame_shape : tuple of int
        ``(ny, nx)``.
    pca_components : int
        0 for interpolated flats; > 0 for the dynamic (PCA) flat-field with this many components.
    """

    def __init__(self, frame_shape: tuple[int, int], pca_components: int = 0) -> None:
        self.shape = tuple(frame_shape)
        self.pca_components = int(pca_components)
        self._dark_sum: np.ndarray | None = None
        self._dark_counts: list[float] = []
        self.n_darks = 0
        self._series: list[_Series] = []
        self._all_flats: list[np.ndarray] = []  # PCA only
        self._interp: FlatInterpolator | None = None
        self._pca: PCAFlats | None = None
        self._dark: np.ndarray | None = None
        self._dark_digest: int | None = None
        self._flats_digest: tuple[int, int] | None = None  # (flats taken, CRC-32 of them all): the PCA's

    # ------------------------------------------------------------------ feeding
    def add_dark(self, frame: np.ndarray) -> None:
        """Take one dark frame."""
        f = np.asarray(frame, dtype=np.float32)
        self._dark_sum = f.astype(np.float64) if self._dark_sum is None else self._dark_sum + f
        self.n_darks += 1
        self._dark = self._dark_digest = None
        self._interp = self._pca = None

    def add_flat(self, frame: np.ndarray, position: float) -> None:
        """Take one flat frame taken at acquisition position ``position``."""
        f = np.asarray(frame, dtype=np.float32)
        series = next((s for s in self._series if any(abs(position - p) <= 1.0 for p in s.positions[-1:])
                       or position in s.positions), None)
        if series is None:
            series = _Series()
            self._series.append(series)
        if series.image is not None:  # a series reduced earlier grows again: take its median anew
            series.frames.insert(0, series.image)  # approximation: its median stands for the earlier flats
            series.image = series.digest = None
        series.positions.append(float(position))
        series.frames.append(f)
        series.count_mean = (series.count_mean * series.n + central_mean(f)) / (series.n + 1)
        series.n += 1
        if self.pca_components > 0:
            self._all_flats.append(f)
        self._interp = self._pca = None

    def close_series(self) -> None:
        """Reduce every open flat series to its median (frees its frames); more flats may still come."""
        for s in self._series:
            if s.image is None and s.frames:
                s.digest = None
                s.image = np.median(np.stack(s.frames), axis=0).astype(np.float32) if len(s.frames) > 1 \
                    else s.frames[0]
                s.frames = []

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """At least one flat is known: frames can be flat-fielded."""
        return bool(self._series)

    @property
    def n_flats(self) -> int:
        """Flat frames taken."""
        return sum(s.n for s in self._series)

    @property
    def dark(self) -> np.ndarray:
        """The mean dark (zeros when there is none)."""
        if self._dark is None:
            self._dark = (self._dark_sum / self.n_darks).astype(np.float32) if self.n_darks else \
                np.zeros(self.shape, np.float32)
        return self._dark

    @property
    def flat_counts(self) -> float:
        """Mean counts of the central region of a flat (mean over the series), for the dose."""
        return float(np.mean([s.count_mean for s in self._series])) if self._series else float("nan")

    @property
    def dark_counts(self) -> float:
        """Mean counts of the central region of the dark, for the dose."""
        return central_mean(self.dark) if self.n_darks else 0.0

    def series(self) -> list[tuple[float, np.ndarray]]:
        """``(position, median image)`` of every flat series, by position."""
        self.close_series()
        return sorted(((s.position, s.image) for s in self._series), key=lambda t: t[0])

    def problem(self) -> str | None:
        """Why these darks and flats cannot flat-field anything, or None.

        A flat no brighter than the dark over most of the field (dark >= flat) means the two were swapped
        or the beam was off.
        """
        if not self._series:
            return "no usable flat-field frame (image_key 1)"
        for pos, img in self.series():
            margin = img - self.dark
            if float(np.mean(margin > 0)) < 0.5:
                return (f"the flat series at frame {pos:g} is not brighter than the dark on "
                        f"{100 * float(np.mean(margin <= 0)):.0f} % of the pixels (dark >= flat: swapped keys, "
                        "or no beam)")
        return None

    # ------------------------------------------------------------------ use
    def _model(self, xp: ModuleType) -> FlatInterpolator | PCAFlats:
        """The flat-field model on array module ``xp`` (built again when asked on another one)."""
        if self.pca_components > 0:
            if self._pca is None or self._pca.xp is not xp:
                self._pca = PCAFlats(np.stack(self._all_flats), self.dark, n_components=self.pca_components, xp=xp)
            return self._pca
        if self._interp is None or self._interp.xp is not xp:
            positions, images = zip(*self.series())
            self._interp = FlatInterpolator(positions, images, xp=xp)
        return self._interp

    def _require_flats(self) -> None:
        if not self.ready:
            raise ValueError("no flat-field frame yet")

    def correct(self, frame: Any, position: float, xp: ModuleType = np) -> Any:
        """Flat-field one frame taken at acquisition position ``position`` (float32, on ``xp``).

        Raises
        ------
        ValueError
            If no flat is known yet.
        """
        self._require_flats()
        model = self._model(xp)
        frame = xp.asarray(frame)
        if isinstance(model, PCAFlats):
            return model.correct(frame)
        return model.correct(frame, float(position), xp.asarray(self.dark))

    def fingerprint(self, position: float, state: FlatState | None = None) -> int:
        """CRC-32 of what flat-fields a frame taken at acquisition position ``position``: the dark, the flat
        series its flat is interpolated from and their weights (every flat, in order, for the PCA flat-field).

        Two calibrations with one fingerprint at a position flat-field a frame there alike, whatever else
        they hold: the final pass takes a frame the live stream stored, flat-fielded with the flats known
        then, where its fingerprint is the final calibration's, or one of its :meth:`states` (:meth:`stamp`).
        ``state`` is the fingerprint of the flat of another :class:`FlatState` of these series. ValueError
        before any flat, as :meth:`correct`.
        """
        self._require_flats()
        if self._dark_digest is None:
            self._dark_digest = _digest(self.dark)
        h = zlib.crc32(struct.pack("<qI", self.pca_components, self._dark_digest))
        if self.pca_components > 0:
            if self._flats_digest is None or self._flats_digest[0] != len(self._all_flats):
                d = 0
                for f in self._all_flats:
                    d = zlib.crc32(struct.pack("<I", _digest(f)), d)
                self._flats_digest = (len(self._all_flats), d)
            return zlib.crc32(struct.pack("<qI", *self._flats_digest), h)
        a, b, t = state if state is not None else self.states(position)[0]
        self.close_series()
        ordered = sorted(self._series, key=lambda s: s.position)  # the interpolator's order
        for s in {ordered[a].position: ordered[a], ordered[b].position: ordered[b]}.values():
            if s.digest is None:
                s.digest = _digest(s.image)
            h = zlib.crc32(struct.pack("<dI", s.position, s.digest), h)
        return zlib.crc32(struct.pack("<d", t), h)

    def stamp(self, frame_id: str, position: float, state: FlatState | None = None) -> int:
        """64 bits naming a flat-fielded frame: the CRC-32 of its id, then :meth:`fingerprint` at its position.
        The live stream's store keeps it with each frame; the final pass compares it with its own."""
        return (zlib.crc32(frame_id.encode()) << 32) | self.fingerprint(position, state)

    def states(self, position: float) -> list[FlatState]:
        """The flat of a frame at ``position`` as these series make it, then as the series just before and
        just after it alone made it (the flats known while the scan ran, when the later or the earlier
        series had not come yet); only the first for the PCA flat-field. ValueError before any flat, as
        :meth:`correct`.
        """
        self._require_flats()
        if self.pca_components > 0:
            return [FlatState(0, 0, 0.0)]
        model = self._model(np)
        assert isinstance(model, FlatInterpolator)
        a, b, t = model.bracket(float(position))
        return [FlatState(a, b, t)] + ([FlatState(a, a, 0.0), FlatState(b, b, 0.0)] if a != b else [])

    def reflat(self, corrected: Any, position: float, state: FlatState, xp: ModuleType = np) -> Any | None:
        """A frame at ``position`` flat-fielded with the flat of ``state`` (one of :meth:`states`) as
        :meth:`correct` would flat-field it (:func:`~xnh_stream.physics.flatfield.reflat`); None when a pixel
        dead under that flat is alive under this one (read the frame again)."""
        model = self._model(xp)
        assert isinstance(model, FlatInterpolator)
        return reflat(corrected, self.dark, model.combine(*state), model.flat_at(float(position)), xp=xp)

    def compact(self) -> Calibration:
        """A copy holding only what flat-fielding needs (dark, series images): small to ship to a worker."""
        out = Calibration(self.shape, self.pca_components)
        out._dark_sum, out.n_darks = (None, 0) if not self.n_darks else (self.dark.astype(np.float64), 1)
        for pos, img in self.series():
            s = _Series([pos], [], img, self.flat_counts, 1)
            out._series.append(s)
        out._all_flats = list(self._all_flats)
        return out

    def __getstate__(self) -> dict[str, Any]:
        self.close_series()
        state = dict(self.__dict__)
        state["_interp"] = state["_pca"] = None  # rebuilt where it is used (maybe on another array module)
        return state


def _digest(image: np.ndarray) -> int:
    """CRC-32 of an image's float32 values."""
    return zlib.crc32(np.ascontiguousarray(image, dtype=np.float32).view(np.uint8).reshape(-1))
