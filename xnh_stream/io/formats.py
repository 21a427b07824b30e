"""The input formats, one protocol: a :class:`ScanFormat` discovers a distance's frame files, reads a frame,
and gives the evidence that a distance's acquisition is over.

=================  ===================================================================================
format             what
=================  ===================================================================================
``nxtomo``         NXtomo files, one per distance, in the scan folder (``*.nx``, ``*.nxs``, ``*.h5``,
                   ``*.hdf5``): a file is finished at ``end_time`` or its stated frame count, else when
                   every allocated frame is written and the file has settled
``nxtomo-chunks``  a sub-folder per distance holding a growing series of NXtomo chunk files (one z1): the
                   files' rules, each file (``distance_frames`` states the distance's total)
``edf``            the legacy ID16A EDF layout, a sub-folder per distance: finished at ``.xml`` / ``.abo``
                   or when its EDF files have settled
=================  ===================================================================================

The file rules themselves (what a written frame is, when a file is complete) are in
:mod:`xnh_stream.io.sources`; a :class:`~xnh_stream.io.sources.FrameRecord` reads its pixels through the
format of its ``layout`` (:func:`format_of`), the watcher inspects a file through
:func:`~xnh_stream.io.sources.inspect_file` (by suffix, :func:`format_for`) and ``overnight`` asks each format
for a folder's evidence (:data:`FORMATS`). A new format is one class here with its file rules in
``sources.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .nxtomo import FIELDS, InputError
from .sources import (
    EDF_SUFFIX,
    HDF5_SUFFIXES,
    EdfFolder,
    NotAFrameFile,
    inspect_nxtomo,
    read_edf_frame,
    read_nxtomo_frame,
)

#: Evidence of a folder: the z1 of the distances found there (m, rounded to 1 pm) and why the acquisition is not
#: over ('' when it is); None when the folder holds nothing of the format.
Evidence = tuple[set[float], str] | None


class ScanFormat(Protocol):
    """One input format (see the module docstring)."""

    #: The format's name.
    name: str
    #: :attr:`~xnh_stream.io.sources.FrameRecord.layout` of its frames (the reader of their pixels).
    layout: str
    #: The file suffixes of its frame files.
    suffixes: frozenset[str]
    #: The field a geometry error names in its files (NXtomo path, EDF ``.info`` key).
    energy_field: str
    #: A finished file's view depends on the file alone (the watcher may keep it while the file is unchanged).
    views_cacheable: bool
    #: The distance folder, not each file, says when the acquisition is over (EDF ``.xml`` / ``.abo``).
    folder_evidence: bool

    def files(self, folder: Path) -> list[Path]:
        """Discover: the frame files of this format in ``folder``, in name order."""
        ...

    def read(self, path: Path, entry: str | None, index: int) -> tuple[np.ndarray, str]:
        """Frame ``index`` of ``path`` (``entry``: the HDF5 entry, NXtomo) as stored, with the field it is in."""
        ...

    def evidence(self, folder: Path, settle_s: float, now: float) -> Evidence:
        """Completion evidence of ``folder`` (the scan folder, or a distance sub-folder)."""
        ...


def _files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    except OSError:
        return []


class NXtomoFiles:
    """NXtomo files in the scan folder, one (or more) per distance."""

    name, layout, suffixes, energy_field = "nxtomo", "nxtomo", HDF5_SUFFIXES, FIELDS["energy"]
    views_cacheable, folder_evidence = True, False

    def files(self, folder: Path) -> list[Path]:
        """The HDF5 files of ``folder``."""
        return _files(folder, self.suffixes)

    def read(self, path: Path, entry: str | None, index: int) -> tuple[np.ndarray, str]:
        """The frame from the entry's ``data``."""
        return read_nxtomo_frame(path, entry, index), FIELDS["data"]

    def evidence(self, folder: Path, settle_s: float, now: float) -> Evidence:
        """The z1 of the NXtomo files of ``folder`` (truth and master files aside) and the first file not
        finished; None when it holds no HDF5 file."""
        files = self.files(folder)
        return nxtomo_evidence(files, settle_s, now) if files else None


class NXtomoChunkSeries(NXtomoFiles):
    """A distance sub-folder of NXtomo chunk files (one z1)."""

    name = "nxtomo-chunks"

    def evidence(self, folder: Path, settle_s: float, now: float) -> Evidence:
        """Its files' evidence when they make one distance (None otherwise), with the folder's name."""
        files = self.files(folder)
        if not files:
            return None
        z1s, why = nxtomo_evidence(files, settle_s, now)
        return (z1s, f"{folder.name}/{why}" if why else "") if len(z1s) == 1 else None


class EdfDistanceFolder:
    """A distance sub-folder of the legacy ID16A EDF layout."""

    name, layout, suffixes, energy_field = "edf", "edf", frozenset({EDF_SUFFIX}), "Energy"
    views_cacheable, folder_evidence = False, True

    def files(self, folder: Path) -> list[Path]:
        """The EDF files of ``folder``."""
        return _files(folder, self.suffixes)

    def read(self, path: Path, entry: str | None, index: int) -> tuple[np.ndarray, str]:
        """Frame ``index`` of the EDF file (its bytes checked against its header)."""
        return read_edf_frame(path, index), "data"

    def evidence(self, folder: Path, settle_s: float, now: float) -> Evidence:
        """The folder's z1 (from its ``.info`` and sidecar) and whether the acquisition is over (``.xml`` /
        ``.abo``, or its EDF files settled)."""
        try:
            edfs = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == EDF_SUFFIX]
        except OSError:
            return None
        if not edfs:
            return None
        ctx = EdfFolder(folder)
        try:
            z1 = {round(ctx.info.geometry.z1_m, 12)}
        except InputError as exc:
            return set(), f"{folder.name}: {exc.problem}"
        if ctx.finished:
            return z1, ""
        newest = max(p.stat().st_mtime for p in edfs)
        return z1, "" if now - newest >= settle_s else f"{folder.name}: EDF acquisition still running (no .xml yet)"


def nxtomo_evidence(files: list[Path], settle_s: float, now: float) -> tuple[set[float], str]:
    """Distances (z1) of the NXtomo files among ``files`` and why they are not finished ('' if finished)."""
    z1s: set[float] = set()
    why = ""
    for p in files:
        try:
            settled = now - os.stat(p).st_mtime >= settle_s
            view = inspect_nxtomo(p, signature=False)
        except NotAFrameFile:
            continue  # truth file, master file: not a distance
        except (InputError, OSError) as exc:
            if not settled:
                why = why or f"{p.name} is being written ({exc})"
            continue  # settled and still unreadable: the batch chain sets it aside and reports it
        z1s.add(round(view.geometry.z1_m, 12))
        if not (view.complete or (view.consistent and settled)):
            why = why or f"{p.name}: {view.n_available} of {view.n_frames} frames written, no end_time"
    return z1s, why


#: The formats, by name: the scan folder's own files first, then the two kinds of distance sub-folder.
FORMATS: dict[str, ScanFormat] = {f.name: f for f in (NXtomoFiles(), NXtomoChunkSeries(), EdfDistanceFolder())}
#: The formats a distance sub-folder may be in, in the order they are asked.
SUBFOLDER_FORMATS: tuple[ScanFormat, ...] = (FORMATS["edf"], FORMATS["nxtomo-chunks"])


def format_of(layout: str) -> ScanFormat:
    """The format that reads the frames of ``layout`` (:attr:`~xnh_stream.io.sources.FrameRecord.layout`)."""
    for f in FORMATS.values():
        if f.layout == layout:
            return f
    raise KeyError(f"no input format reads layout {layout!r}")


def format_for(path: Path) -> ScanFormat | None:
    """The format of a frame file, by its suffix (None: no format's)."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)
