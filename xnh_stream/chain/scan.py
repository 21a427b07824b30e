"""What a scan holds: every frame found by the one reader, grouped by distance (no pixels read).

The batch command, the live stream's final pass and the overnight queue all see a scan through
:class:`ScanIndex`. It is built from the :class:`~xnh_stream.io.sources.FrameRecord` s that the folder reader
hands out (:class:`~xnh_stream.ingest.watch.FolderWatcher`: NXtomo files, NXtomo chunk-file series and ID16A
EDF folders alike, each frame once, only when written, duplicates and copies set aside), so a frame has
one identity (``frame_id``), one distance key (:func:`~xnh_stream.io.sources.distance_key`) and one set of
metadata everywhere.

Distances are numbered by increasing ``z1`` (:attr:`ScanIndex.distances`); the reference, whose effective
pixel is the voxel, is the most magnified one (:attr:`ScanGeometry.reference
<xnh_stream.physics.geometry.ScanGeometry.reference>`).

Which distances make the scan is decided by majority (:func:`trusted_distances`), never by which distance
came first or is the most magnified: the distances that agree on frame shape, photon energy and detector
pixel are trusted when they outnumber every other such group; a distance that disagrees with them, or whose
effective pixel is implausible next to theirs (more than :data:`MAX_PIXEL_RATIO` times apart: a z1 or z2
in the wrong unit), is set aside as a whole with the reason (:attr:`ScanIndex.rejected`; its frames are
counted as quarantined). When no group outnumbers the others (two distances against two) the scan is refused
with an :class:`~xnh_stream.io.nxtomo.InputError` naming the files of each group: guessing could make a
volume of the wrong distances. The live stream applies the same rule as the distances arrive
(:class:`DistanceVote`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ingest.watch import FolderWatcher, QuarantineRecord, WatchCounters
from ..io.nxtomo import DARK, FLAT, PROJECTION, RETURN, InputError
from ..io.sources import FrameRecord
from ..physics.geometry import DistanceGeometry, ScanGeometry
from ..quality.alerts import Alert


@dataclass
class DistanceIndex:
    """The frames of one distance, by kind, in acquisition order (``sequence``).

    Attributes
    ----------
    key : float
        Distance key (``z1`` rounded, :func:`~xnh_stream.io.sources.distance_key`).
    name : str
        The distance as its files name it.
    geometry : DistanceGeometry
        Its geometry.
    frame_shape : tuple of int
        ``(ny, nx)``.
    darks, flats, projections, returns, invalid : list of FrameRecord
        Frames by kind (``returns``: image_key_control -1; ``invalid``: image_key 3).
    """

    key: float
    name: str
    geometry: DistanceGeometry
    frame_shape: tuple[int, int]
    darks: list[FrameRecord] = field(default_factory=list)
    flats: list[FrameRecord] = field(default_factory=list)
    projections: list[FrameRecord] = field(default_factory=list)
    returns: list[FrameRecord] = field(default_factory=list)
    invalid: list[FrameRecord] = field(default_factory=list)

    def add(self, rec: FrameRecord) -> None:
        """File one frame under its kind."""
        if rec.image_key == DARK:
            self.darks.append(rec)
        elif rec.image_key == FLAT:
            self.flats.append(rec)
        elif rec.image_key == PROJECTION and rec.image_key_control == RETURN:
            self.returns.append(rec)
        elif rec.image_key == PROJECTION:
            self.projections.append(rec)
        else:  # INVALID, or any key the reader let through
            self.invalid.append(rec)

    def sort(self) -> None:
        """Order every kind by acquisition position."""
        for frames in (self.darks, self.flats, self.projections, self.returns, self.invalid):
            frames.sort(key=lambda r: (r.sequence, r.frame_id))

    @property
    def frames(self) -> list[FrameRecord]:
        """Every frame of the distance."""
        return [*self.darks, *self.flats, *self.projections, *self.returns, *self.invalid]


@dataclass
class RejectedDistance:
    """A distance set aside as a whole: its frames and why."""

    key: float
    name: str
    reason: str
    frames: list[FrameRecord]


@dataclass
class ScanIndex:
    """Every frame of a scan, grouped by distance (see the module docstring).

    Attributes
    ----------
    folder : Path
        The scan folder.
    distances : list of DistanceIndex
        Usable distances, by increasing ``z1``.
    rejected : list of RejectedDistance
        Distances set aside: they disagree with the majority of the distances (frame shape, energy, detector
        pixel) or their geometry is implausible (:func:`trusted_distances`).
    rejected_files : list of QuarantineRecord
        Files the reader could not use (truncated, bad metadata), with the reason.
    counters : WatchCounters
        The reader's counts (duplicates, vanished and ignored files).
    duplicates : list of (FrameRecord, str)
        Frames of files that copy another file of the scan (same content), with that file: not used.
    """

    folder: Path
    distances: list[DistanceIndex]
    rejected: list[RejectedDistance] = field(default_factory=list)
    rejected_files: list[QuarantineRecord] = field(default_factory=list)
    counters: WatchCounters = field(default_factory=WatchCounters)
    duplicates: list[tuple[FrameRecord, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(cls, folder: str | Path, records: Iterable[FrameRecord],
                     rejected_files: Iterable[QuarantineRecord] = (),
                     counters: WatchCounters | None = None,
                     duplicates: Iterable[tuple[FrameRecord, str]] = ()) -> ScanIndex:
        """Group frame records by distance and set aside the distances that cannot join the scan.

        Raises
        ------
        InputError
            When no frame at all was found (naming the folder and the files set aside).
        """
        folder = Path(folder)
        rejected_files = list(rejected_files)
        by_key: dict[float, DistanceIndex] = {}
        for rec in records:
            d = by_key.get(rec.distance_key)
            if d is None:
                d = by_key[rec.distance_key] = DistanceIndex(rec.distance_key, rec.distance_name, rec.geometry,
                                                             tuple(rec.frame_shape))
            d.add(rec)
        if not by_key:
            detail = "; ".join(f"{q.path}: {q.reason}" for q in rejected_files)
            raise InputError(folder, "contains no usable frame (NXtomo files, NXtomo chunk folders or ID16A EDF "
                             "folders)" + (f"; files set aside: {detail}" if detail else ""))
        distances = sorted(by_key.values(), key=lambda d: d.geometry.z1_m)
        for d in distances:
            d.sort()
        kept, reasons = trusted_distances(folder, distances)
        rejected = [RejectedDistance(d.key, d.name, reasons[d.key], d.frames) for d in distances if d.key in reasons]
        return cls(folder, kept, rejected, rejected_files, counters or WatchCounters(), list(duplicates))

    @classmethod
    def read(cls, folder: str | Path, settle_s: float = 0.0) -> ScanIndex:
        """Index a finished scan folder with the one reader (every layout the live path reads).

        Parameters
        ----------
        folder : str or Path
            The scan folder.
        settle_s : float
            A file that states no frame count and no ``end_time`` counts as finished once unchanged this long
            (0: a finished folder; every file is judged now).

        Raises
        ------
        InputError
            If the folder does not exist or holds no usable frame.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "is not a folder (a scan is a folder with one NXtomo file, one NXtomo chunk "
                             "folder or one EDF folder per distance)")
        # stall_s: in a finished folder, a file still incomplete now will stay so (truncated, writer died)
        # one_energy=False: the distances' energies are compared here, by majority, not against the first file
        with FolderWatcher(folder, use_inotify=False, settle_s=settle_s, stall_s=settle_s,
                           one_energy=False) as watcher:
            records = watcher.poll()
            return cls.from_records(folder, records, watcher.quarantined, watcher.counters,
                                    watcher.drain_duplicates())

    # ------------------------------------------------------------------ views
    @property
    def geometry(self) -> ScanGeometry:
        """Geometry of the usable distances."""
        return ScanGeometry(tuple(d.geometry for d in self.distances))

    @property
    def reference(self) -> int:
        """Number of the reference (most magnified) distance."""
        return self.geometry.reference

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the frames."""
        return self.distances[self.reference].frame_shape

    @property
    def frames(self) -> list[FrameRecord]:
        """Every frame of the usable distances."""
        return [r for d in self.distances for r in d.frames]

    @property
    def n_frames(self) -> int:
        """Frames of the usable and the rejected distances, and of the duplicate files."""
        return len(self.frames) + sum(len(r.frames) for r in self.rejected) + len(self.duplicates)


#: Largest ratio between a distance's effective pixel (``p / M``) and the median of the scan's other trusted
#: distances: the distances of an XNH scan differ by tens of percent (ID16A: 1.3 times from the first to the
#: fourth); a factor of 4 or more is a z1 or z2 read in the wrong unit, not a distance.
MAX_PIXEL_RATIO = 4.0
#: Relative tolerance on the energy and the detector pixel of two distances that agree.
_REL_TOL = 1e-6


def _agree(a: DistanceIndex, b: DistanceIndex) -> bool:
    ga, gb = a.geometry, b.geometry
    return (a.frame_shape == b.frame_shape
            and abs(ga.energy_kev - gb.energy_kev) <= _REL_TOL * gb.energy_kev
            and abs(ga.pixel_m - gb.pixel_m) <= _REL_TOL * gb.pixel_m)


def _describe(d: DistanceIndex) -> str:
    g = d.geometry
    return f"frames {d.frame_shape[0]} x {d.frame_shape[1]}, {g.energy_kev:g} keV, detector pixel {g.pixel_m:.4g} m"


def _files(d: DistanceIndex, at_most: int = 2) -> str:
    paths = sorted({r.path for r in d.frames})
    shown = ", ".join(paths[:at_most])
    return shown + (f" and {len(paths) - at_most} more files" if len(paths) > at_most else "")


def _difference(d: DistanceIndex, ref: DistanceIndex) -> str:
    """What of ``d`` differs from ``ref`` (a distance of the trusted group), in words."""
    g, r = d.geometry, ref.geometry
    parts = []
    if d.frame_shape != ref.frame_shape:
        parts.append(f"frame shape {d.frame_shape} instead of the {ref.frame_shape}")
    if abs(g.energy_kev - r.energy_kev) > _REL_TOL * r.energy_kev:
        parts.append(f"energy {g.energy_kev:g} keV instead of the {r.energy_kev:g} keV")
    if abs(g.pixel_m - r.pixel_m) > _REL_TOL * r.pixel_m:
        parts.append(f"detector pixel {g.pixel_m:.4g} m instead of the {r.pixel_m:.4g} m")
    return ", ".join(parts)


def trusted_distances(folder: Path, distances: list[DistanceIndex]
                      ) -> tuple[list[DistanceIndex], dict[float, str]]:
    """The distances that make the scan, by majority, and why each other one is set aside.

    The distances are grouped by what must be the same for all of them (frame shape, photon energy,
    detector pixel). The largest group is trusted when it outnumbers every other group (a lone distance is
    trusted); a distance outside it is set aside with what differs. Among the trusted distances (three or
    more), one whose effective pixel is more than :data:`MAX_PIXEL_RATIO` times from the median of the
    others is set aside as implausible (a z1 or z2 in the wrong unit).

    Parameters
    ----------
    folder : Path
        The scan folder (named by the error).
    distances : list of DistanceIndex
        Every distance found, by increasing z1.

    Returns
    -------
    kept : list of DistanceIndex
        The trusted distances, in the order given.
    reasons : dict
        Distance key -> why that distance is set aside.

    Raises
    ------
    InputError
        When no group outnumbers the others (e.g. two distances against two): naming each group's
        distances and files.
    """
    groups: list[list[DistanceIndex]] = []
    for d in distances:
        for g in groups:
            if _agree(d, g[0]):
                g.append(d)
                break
        else:
            groups.append([d])
    groups.sort(key=len, reverse=True)
    if len(groups) > 1 and len(groups[0]) == len(groups[1]):
        tied = [g for g in groups if len(g) == len(groups[0])]
        detail = "; ".join(f"{', '.join(d.name for d in g)} ({_describe(g[0])}: "
                           f"{'; '.join(_files(d) for d in g)})" for g in tied)
        raise InputError(folder, f"its distances disagree and no group of them is a majority, so which ones "
                         f"belong to the scan cannot be told: {detail}. Remove or fix the files of the wrong "
                         "distances")
    trusted = groups[0]
    reasons: dict[float, str] = {}
    names = ", ".join(d.name for d in trusted)
    for g in groups[1:]:
        for d in g:
            reasons[d.key] = (f"{_difference(d, trusted[0])} of the {len(trusted)} other "
                              f"distance{'s' if len(trusted) > 1 else ''} ({names})")
    if len(trusted) >= 3:
        reasons.update(_implausible_pixels(trusted))
    return [d for d in distances if d.key not in reasons], reasons


def _implausible_pixels(trusted: list[DistanceIndex]) -> dict[float, str]:
    """Distances whose effective pixel is more than :data:`MAX_PIXEL_RATIO` times from the median of the
    others' (a z1 or z2 in the wrong unit), and why."""
    reasons: dict[float, str] = {}
    pixels = np.array([d.geometry.effective_pixel_m for d in trusted])
    for i, d in enumerate(trusted):
        others = float(np.median(np.delete(pixels, i)))
        ratio = pixels[i] / others
        if ratio > MAX_PIXEL_RATIO or ratio < 1 / MAX_PIXEL_RATIO:
            g = d.geometry
            reasons[d.key] = (f"implausible geometry: z1 {g.z1_m:.4g} m and z2 {g.z2_m:.4g} m give an effective "
                              f"pixel of {pixels[i]:.3g} m against {others:.3g} m for the other distances "
                              f"(a factor {max(ratio, 1 / ratio):.1f}); check the units of z1 and z2")
    return reasons


def left_out(reason: str) -> str:
    """The quarantine reason of each frame of a distance set aside (``reason``, from
    :func:`trusted_distances`)."""
    return f"distance left out: {reason}"


def left_out_alert(name: str, reason: str) -> Alert:
    """The critical alert that a distance (by its name) is set aside, and why.

    Parameters
    ----------
    name : str
        The distance's name.
    reason : str
        Why it is set aside.

    Returns
    -------
    Alert
        ``DistanceFileRejected``, critical.
    """
    return Alert("DistanceFileRejected", "critical", f"distance {name} left out: {reason}")


class DistanceVote:
    """The rule of :func:`trusted_distances` applied while a scan arrives (the live stream).

    The live side must not take the first frame's shape and energy as the scan's: the first distance to
    arrive may be the odd one. Every frame is filed under its distance (:meth:`add`); :meth:`trusted_now`
    names the distances the live chain should work on given what has arrived, and :meth:`verdict` which
    distances are set aside, and why, once every declared distance has arrived: the rule then has the
    distances the final pass will have and decides as it will, with the same reasons.

    Parameters
    ----------
    folder : Path
        The scan folder (named by the refusal of a tie).
    n_distances : int
        Distances the scan has (the stream's ``n_distances``).
    """

    def __init__(self, folder: str | Path, n_distances: int) -> None:
        self.folder = Path(folder)
        self.n_distances = int(n_distances)
        self._by_key: dict[float, DistanceIndex] = {}
        self._arrived: dict[float, list[FrameRecord]] = {}

    def add(self, rec: FrameRecord) -> bool:
        """File one frame under its distance; True when it is the distance's first (the vote may change)."""
        d = self._by_key.get(rec.distance_key)
        first = d is None
        if d is None:
            d = DistanceIndex(rec.distance_key, rec.distance_name, rec.geometry, tuple(rec.frame_shape))
            self._by_key[rec.distance_key] = d
            self._arrived[rec.distance_key] = []
        d.add(rec)
        self._arrived[rec.distance_key].append(rec)
        return first

    @property
    def distances(self) -> list[DistanceIndex]:
        """The distances arrived so far, by increasing z1."""
        return sorted(self._by_key.values(), key=lambda d: d.geometry.z1_m)

    def name(self, key: float) -> str:
        """The name of a distance."""
        return self._by_key[key].name

    def arrived(self, key: float) -> list[FrameRecord]:
        """The frames of a distance in the order they arrived."""
        return list(self._arrived.get(key, ()))

    def trusted_now(self) -> set[float] | None:
        """Keys of the distances :func:`trusted_distances` trusts among those arrived; None while no group of
        them outnumbers the others (one distance against one)."""
        try:
            kept, _ = trusted_distances(self.folder, self.distances)
        except InputError:
            return None
        return {d.key for d in kept}

    def verdict(self, complete: bool = False) -> dict[float, str] | None:
        """Once the scan's ``n_distances`` distances have arrived, or with ``complete`` (the scan is over:
        what arrived is all there is): distance key -> why it is set aside (empty when every distance is
        trusted). None before, and when no group is a majority (two distances against two: the final pass
        refuses the scan)."""
        if not self._by_key or (len(self._by_key) < self.n_distances and not complete):
            return None
        try:
            _, reasons = trusted_distances(self.folder, self.distances)
        except InputError:
            return None
        return reasons
