"""Where the live stream's frames come from, and when the scan counts as complete.

:class:`FrameSource` is what the live driver (:mod:`xnh_stream.live.driver`) polls; :class:`WatcherSource`
is the one on a scan folder being written (a :class:`~xnh_stream.ingest.watch.FolderWatcher`), with the
end-of-scan rule. Tests give a list of records instead.
"""

from __future__ import annotations

import time
from typing import Protocol

from ..chain.report import Completion
from ..ingest.watch import FolderWatcher, QuarantineRecord
from ..io.sources import FrameRecord

__all__ = ["FrameSource", "WatcherSource"]


class FrameSource(Protocol):
    """Where frame records come from (a folder watcher; a list in tests)."""

    def poll(self) -> list[FrameRecord]:
        """New complete frames (records; pixels are read by the driver); each frame once."""

    def completion(self) -> Completion | None:
        """Why the scan counts as complete now, or None while it is not."""


class WatcherSource:
    """Frames of a scan folder as a :class:`FolderWatcher` finds them, and the end-of-scan rule.

    The scan is complete, whichever comes first, when

    * every one of ``n_distances`` distances is complete (its stated frame count reached, its files
      finished with ``end_time``), and no file is still being written; or
    * nothing new arrived for ``quiet_s`` and no file is still being written (a file that stays incomplete
      is set aside by the watcher after its ``stall_s``): the scan completes with what it has, and the
      distances it lacks are named.

    Return projections are not needed. Parameters: the watcher, the distances the scan has, the idle time.
    """

    def __init__(self, watcher: FolderWatcher, n_distances: int = 4, quiet_s: float = 60.0) -> None:
        self.watcher, self.n_distances, self.quiet_s = watcher, n_distances, quiet_s
        self._last = time.monotonic()
        self._seen = False

    def poll(self) -> list[FrameRecord]:
        """New frames."""
        records = self.watcher.poll()
        if records:
            self._last = time.monotonic()
            self._seen = True
        return records

    def drain_quarantine(self) -> list[QuarantineRecord]:
        """Files the watcher set aside since the last call."""
        return self.watcher.drain_quarantine()

    def drain_duplicates(self) -> list[tuple[FrameRecord, str]]:
        """Frames of copied files since the last call."""
        return self.watcher.drain_duplicates()

    def completion(self) -> Completion | None:
        """See the class docstring."""
        if self.watcher.pending_files():
            return None
        progress = self.watcher.distance_progress()
        done = [p for p in progress.values() if p.complete]
        if len(done) >= self.n_distances:
            return Completion(f"all {self.n_distances} distances complete (stated frame counts or end_time)")
        if self._seen and time.monotonic() - self._last >= self.quiet_s:
            missing = [f"distance {p.name}: {p.received} frames, incomplete" for p in progress.values()
                       if not p.complete]
            if len(progress) < self.n_distances:
                missing.append(f"{self.n_distances - len(progress)} of {self.n_distances} distances never "
                               "arrived")
            return Completion(f"no new frame for {self.quiet_s:g} s", missing)
        return None
