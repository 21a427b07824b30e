"""What a scan holds: every frame found by the one reader, grouped by distance (no pixels read).

The batch command, the live stream's final pass and the overnight queue all see a scan through
:class:`ScanIndex`. It is built from the :class:`~xnh_stream.io.sources.FrameRecord` s that the folder reader
hands out (:class:`~xnh_stream.ingest.watch.FolderWatcher`: NXtomo files, NXtomo chunk-file series and ID16A
EDF folders alike, each frame once, only when written, duplicates and copies set aside), so a frame has
one identity (``frame_id``), one distance key (:func:`~xnh_stream.io.sources.distance_key`) and one set of
metadata everywhere.

Distances are numbered by increasing ``z1`` (:attr:`ScanIndex.distances`); the reference, whose effective
pixel is the voxel, is the most magnified one (:attr:`ScanGeometry.reference
<xnh_stream.physics.geometry.ScanGeometry.reference>`). A distance whose frame shape or energy disagrees
with the reference distance is set aside as a whole, with the reason (:attr:`ScanIndex.rejected`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..ingest.watch import FolderWatcher, QuarantineRecord, WatchCounters
from ..io.nxtomo import DARK, FLAT, INVALID, PROJECTION, RETURN, InputError
from ..io.sources import FrameRecord
from ..physics.geometry import DistanceGeometry, ScanGeometry


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
        Distances set aside (frame shape or energy differs from the reference distance's).
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
        # The reference (most magnified) sets the frame shape; a distance that disagrees cannot be combined.
        ref = ScanGeometry(tuple(d.geometry for d in distances)).reference if _one_energy(distances) else 0
        first = distances[ref]
        kept: list[DistanceIndex] = []
        rejected: list[RejectedDistance] = []
        for d in distances:
            reason = None
            if d.frame_shape != first.frame_shape:
                reason = f"frame shape {d.frame_shape} differs from distance {first.name}'s {first.frame_shape}"
            elif abs(d.geometry.energy_kev - first.geometry.energy_kev) > 1e-6 * first.geometry.energy_kev:
                reason = f"energy {d.geometry.energy_kev} keV differs from distance {first.name}'s " \
                         f"{first.geometry.energy_kev} keV"
            if reason is None:
                kept.append(d)
            else:
                rejected.append(RejectedDistance(d.key, d.name, reason, d.frames))
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
        with FolderWatcher(folder, use_inotify=False, settle_s=settle_s, stall_s=settle_s) as watcher:
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


def _one_energy(distances: list[DistanceIndex]) -> bool:
    return len(Counter(round(d.geometry.energy_kev, 6) for d in distances)) == 1
