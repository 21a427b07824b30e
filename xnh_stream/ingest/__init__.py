"""Ingest: find frames on disk exactly once, only when written (NXtomo whole and chunk files, ID16A EDF).

:mod:`.sources` reads files into :class:`FrameRecord` s; :mod:`.watch` follows a folder tree
(watchdog events plus polling) and hands out each frame once. No Ray here: actors wrap these classes.
"""

from ..io.ids import frame_id_of
from ..io.sources import (
    EdfFolder,
    FileView,
    FrameRecord,
    NotAFrameFile,
    distance_key,
    edf_geometry,
    inspect_edf,
    inspect_file,
    inspect_nxtomo,
    iter_records,
)
from .watch import DistanceProgress, FolderWatcher, QuarantineRecord, WatchCounters

__all__ = [
    "DistanceProgress", "EdfFolder", "FileView", "FolderWatcher", "FrameRecord", "NotAFrameFile",
    "QuarantineRecord", "WatchCounters", "distance_key", "edf_geometry", "frame_id_of", "inspect_edf",
    "inspect_file", "inspect_nxtomo", "iter_records",
]
