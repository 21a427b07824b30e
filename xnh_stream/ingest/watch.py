"""Follow the folder tree of a running scan and hand out every frame exactly once, only when it is written.

:class:`FolderWatcher` combines watchdog events (inotify on Linux: low latency on a local disk) with a
periodic full scan of the tree (polling). Either one alone finds every frame: events make a write visible
at the next :meth:`FolderWatcher.poll`, polling finds what events miss. Polling alone
(``use_inotify=False``) is the safe setting on network filesystems, where inotify does not see writes
made by other NFS / GPFS clients.

Each file goes ``pending`` -> ``complete`` (or ``quarantined``, ``ignored``, ``duplicate``); a pending file
that disappears is ``vanished``. While pending, its frames are handed out as soon as they are written
(rules in :mod:`xnh_stream.io.sources`). How a file is judged:

- a file that cannot be opened or parsed, or whose metadata is incomplete, is probably being written:
  it stays pending while it changes (size or modification time changed within ``settle_s``); once it has
  been unchanged for ``settle_s`` the problem is final and the file is quarantined
  (:class:`QuarantineRecord`, from the :class:`~xnh_stream.io.nxtomo.InputError` naming the file and field);
- an HDF5 file without NXtomo entry (truth file, master file) is ignored once it has settled; EDF files
  that are not frames are ignored at once;
- a file is complete when its view says so (``end_time``, stated frame count, finished EDF acquisition), or
  when every allocated frame is written and the file has settled; a file complete by that last rule that
  changes again is followed again (its new frames are handed out; a writer may pause for a while);
- a file whose first frame has the same content fingerprint as a file already seen (a copy) is a
  duplicate: its frames are counted in ``duplicates`` and not handed out by :meth:`FolderWatcher.poll`
  (:meth:`FolderWatcher.drain_duplicates` lists them). A frame whose id (relative path
  and index) was already handed out (a file deleted and written again) is also counted, not handed out;
- frame ids given as ``known_frame_ids`` (from a journal, after a restart) are skipped and counted in
  ``known_skipped``;
- within one distance (same z1) every file must have the same frame shape and geometry; a file that
  disagrees is quarantined. Distances are not compared with the first one seen (it may be the odd one): which
  distances make the scan is decided by majority (:func:`~xnh_stream.chain.scan.trusted_distances`, and
  :class:`~xnh_stream.chain.scan.DistanceVote` as they arrive); ``one_energy`` quarantines a file whose
  energy differs from the first file's.

Call :meth:`FolderWatcher.poll` from one thread (``counters``, :meth:`~FolderWatcher.distance_progress`
and :meth:`~FolderWatcher.pending_files` may be read from others). The watchdog observer thread only
records which paths changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io.formats import format_of
from ..io.ids import file_id_of
from ..io.nxtomo import InputError, one_open_per_file
from ..io.sources import (
    SIDECAR_NAME,
    EdfFolder,
    FileView,
    FrameRecord,
    NotAFrameFile,
    inspect_file,
    is_candidate,
)
from ..io.z1 import token as z1_token

log = logging.getLogger(__name__)

PENDING, COMPLETE, QUARANTINED, IGNORED, DUPLICATE, VANISHED, GONE = (
    "pending", "complete", "quarantined", "ignored", "duplicate", "vanished", "gone")
_FINAL = (COMPLETE, QUARANTINED, IGNORED, DUPLICATE)
# Events that mean a file's content or name changed. Opening or closing without writing is left out:
# the watcher's own reads would otherwise trigger themselves.
_EVENT_TYPES = frozenset({"created", "modified", "moved", "deleted", "closed"})
_METADATA_SUFFIXES = frozenset({".info", ".xml", ".abo", ".yaml"})


class _ViewCache:
    """Inspections of finished NXtomo files, shared by the watchers of this process.

    Keyed by the file (and the watched root, which the frame ids depend on) and valid while the file's
    identity on disk is unchanged (device, inode, size, modification and change times): the identity a
    watcher already relies on to know that a finished file did not change. A second watcher of the same
    folder (the final pass's :class:`~xnh_stream.chain.scan.ScanIndex` after the stream's watcher, a restart
    in the same process) then opens none of the files the first one found finished. Only finished views are
    kept (``complete``, or consistent and settled), at most ``max_frames`` frames' worth of them.
    """

    def __init__(self, max_frames: int = 1_000_000) -> None:
        self.max_frames = int(max_frames)
        self._views: OrderedDict[tuple[str, str], tuple[tuple[int, ...], FileView]] = OrderedDict()
        self._frames = 0
        self._lock = threading.Lock()

    @staticmethod
    def identity(st: os.stat_result) -> tuple:
        """What must stay the same for a kept view to hold: the file, and the ``--z1`` values it was read with."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, z1_token())

    def get(self, path: Path, root: Path, st: os.stat_result, signature: bool) -> FileView | None:
        """The kept view of ``path`` if the file is as it was, with a signature when ``signature``."""
        with self._lock:
            hit = self._views.get((str(path), str(root)))
            if hit is None or hit[0] != self.identity(st) or (signature and hit[1].signature is None):
                return None
            self._views.move_to_end((str(path), str(root)))
            return hit[1]

    def put(self, path: Path, root: Path, st: os.stat_result, view: FileView) -> None:
        """Keep the view of a finished file, inspected when the file had identity ``st``."""
        key = (str(path), str(root))
        with self._lock:
            old = self._views.pop(key, None)
            if old is not None:
                self._frames -= old[1].n_frames
            self._views[key] = (self.identity(st), view)
            self._frames += view.n_frames
            while self._frames > self.max_frames and len(self._views) > 1:
                _, (_, dropped) = self._views.popitem(last=False)
                self._frames -= dropped.n_frames

    def clear(self) -> None:
        """Forget every view."""
        with self._lock:
            self._views.clear()
            self._frames = 0


#: The finished NXtomo files inspected in this process (see :class:`_ViewCache`).
VIEWS = _ViewCache()


def _arrival(path: Path) -> tuple[float, str]:
    """Sort key: last modification, then path (files examined in the order they were written)."""
    try:
        return float(path.stat().st_mtime_ns), str(path)
    except OSError:
        return float("inf"), str(path)


@dataclass
class WatchCounters:
    """What a :class:`FolderWatcher` has seen (cumulative counts, except the ``incomplete_pending`` gauge)."""

    seen_files: int = 0  #: candidate files found (a file deleted and written again counts twice)
    complete_files: int = 0  #: files judged complete (duplicates included)
    frames_emitted: int = 0  #: frames handed out by poll()
    duplicates: int = 0  #: frames not handed out: same content already seen, or same frame id handed out
    duplicate_files: int = 0  #: files found to be copies of a file already seen
    duplicate_events: int = 0  #: changes seen on files already complete, quarantined or ignored
    vanished: int = 0  #: files that disappeared before they were complete
    incomplete_pending: int = 0  #: files pending now (gauge)
    quarantined_files: int = 0  #: files set aside with an InputError
    ignored_files: int = 0  #: files that hold no frames
    known_skipped: int = 0  #: frames skipped because they were in known_frame_ids

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class QuarantineRecord:
    """A file set aside, with the reason.

    Attributes
    ----------
    path : str
        The frame file.
    file_id : str
        Its path relative to the watched root.
    reason : str
        What is wrong (the :class:`InputError` message, naming the file that is wrong and the field).
    field : str or None
        The offending field.
    source : str
        The file the error is about (the frame file, or e.g. the ``.info`` file of its EDF folder).
    frames_emitted : int
        Frames of the file handed out before the problem was found.
    """

    path: str
    file_id: str
    reason: str
    field: str | None
    source: str
    frames_emitted: int = 0

    def error(self) -> InputError:
        """The problem as an :class:`InputError`."""
        return InputError(self.source, self.reason, self.field)


@dataclass(frozen=True)
class DistanceProgress:
    """Frames received for one distance.

    ``expected`` is known from the chunk files' ``distance_frames`` attribute, or once the distance is
    complete. ``complete``: all stated frames received; or, without a stated total, every file of the
    distance complete and the acquisition over (EDF ``.xml`` / ``.abo``; a whole NXtomo file).
    """

    name: str
    received: int
    expected: int | None
    complete: bool


@dataclass
class _Tracked:
    path: Path
    stat: tuple[int, int]
    changed_at: float
    state: str = PENDING
    n_done: int = 0
    signature: str | None = None
    duplicate_of: str | None = None
    error: InputError | None = None
    distance: float | None = None
    chunked: bool = False
    soft: bool = False  # complete only because it stopped changing (no end_time, no stated count)
    judged_settled: bool = False  # last examined after it had settled


@dataclass
class _Distance:
    name: str
    shape: tuple[int, int]
    geometry: object
    first_path: Path
    received: int = 0
    stated_total: int | None = None
    edf_folder: Path | None = None
    files: set = field(default_factory=set)


class FolderWatcher:
    """Find the frames of a running scan under ``root``, each exactly once, only when written.

    Parameters
    ----------
    root : str or Path
        Folder to watch (recursively). Must exist.
    poll_interval_s : float
        Seconds between full scans of the tree (the polling fallback; always on).
    use_inotify : bool
        Also use watchdog events for low latency. If the observer cannot start (inotify limits), a warning
        is logged and the watcher polls only (``inotify_active`` says which).
    known_frame_ids : iterable of str, optional
        Frame ids already handled (from a journal): not handed out again.
    settle_s : float
        How long a file must stay unchanged before a problem with it is final, or before a file that states
        no frame count and no ``end_time`` is complete.
    stall_s : float, optional
        Quarantine a file that is still incomplete after being unchanged this long (a writer that died, a
        file truncated inside a frame). ``None`` (default): such a file waits, listed by
        :meth:`pending_files` and counted in ``incomplete_pending`` (an acquisition can pause for minutes).
    one_energy : bool
        Quarantine a file whose energy differs from the first file's. ``False`` (default) leaves the
        comparison across distances to the caller: :class:`~xnh_stream.chain.scan.ScanIndex` and the live
        stream (:class:`~xnh_stream.chain.scan.DistanceVote`) decide by majority which distances make the
        scan.

    Examples
    --------
    >>> with FolderWatcher("/data/scan", poll_interval_s=1.0) as w:  # doctest: +SKIP
    ...     while not done:
    ...         for rec in w.poll(timeout_s=1.0):
    ...             process(rec.read())
    """

    def __init__(self, root: str | Path, poll_interval_s: float = 1.0, use_inotify: bool = True,
                 known_frame_ids: Iterable[str] | None = None, settle_s: float = 2.0,
                 stall_s: float | None = None, one_energy: bool = False) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise InputError(self.root, "is not a folder to watch")
        if poll_interval_s <= 0 or settle_s < 0:
            raise ValueError(f"poll_interval_s must be > 0 and settle_s >= 0, got {poll_interval_s}, {settle_s}")
        self.poll_interval_s = float(poll_interval_s)
        self.settle_s = float(settle_s)
        self.stall_s = None if stall_s is None else float(stall_s)
        self._known = frozenset(known_frame_ids or ())
        self._emitted: set[str] = set()
        self._tracked: dict[Path, _Tracked] = {}
        self._signatures: dict[str, Path] = {}
        self._distances: dict[float, _Distance] = {}
        self._energy: tuple[float, Path] | None = None
        self._one_energy = bool(one_energy)
        self._edf: dict[Path, EdfFolder] = {}
        self._edf_poll: dict[Path, int] = {}
        self._poll_id = 0
        self._quarantine: list[QuarantineRecord] = []
        self.quarantined: list[QuarantineRecord] = []  #: every quarantine record so far
        self._duplicates: list[tuple[FrameRecord, str]] = []
        self._counters = WatchCounters()
        self._lock = threading.Lock()  # the dirty set, shared with the observer thread
        self._state = threading.RLock()  # the tracked files: poll() against readers of counters and progress
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._next_scan = 0.0
        self._closed = False
        self._observer = None
        self.inotify_active = False
        if use_inotify:
            self._start_observer()

    # ------------------------------------------------------------------ events
    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in _EVENT_TYPES:
                    return
                paths = [event.src_path, getattr(event, "dest_path", "") or ""]
                watcher._mark_dirty([os.fsdecode(p) for p in paths if p])

        try:
            obs = Observer()
            obs.schedule(_Handler(), str(self.root), recursive=True)
            obs.daemon = True
            obs.start()
        except (OSError, RuntimeError) as exc:
            log.warning("watchdog observer on %s could not start (%s): polling every %.1f s only",
                        self.root, exc, self.poll_interval_s)
            return
        self._observer = obs
        self.inotify_active = True

    def _mark_dirty(self, paths: list[str]) -> None:
        with self._lock:
            self._dirty.update(paths)
        self._wake.set()

    # ------------------------------------------------------------------ public API
    @property
    def counters(self) -> WatchCounters:
        """A copy of the counters."""
        with self._state:
            c = WatchCounters(**asdict(self._counters))
            c.incomplete_pending = sum(1 for t in self._tracked.values() if t.state == PENDING)
        return c

    def poll(self, timeout_s: float = 0.0) -> list[FrameRecord]:
        """Frames written since the last call, each handed out once.

        Parameters
        ----------
        timeout_s : float
            When nothing has changed yet, wait up to this long for an event or the next full scan.

        Returns
        -------
        list of FrameRecord
            File by file in the order they were last written (then by path), each file's frames in order.
        """
        if self._closed:
            raise RuntimeError("FolderWatcher is closed")
        if timeout_s > 0:
            deadline = time.monotonic() + timeout_s
            while True:
                now = time.monotonic()
                with self._lock:
                    dirty = bool(self._dirty)
                if dirty or now >= self._next_scan or now >= deadline:
                    break
                self._wake.wait(min(deadline, self._next_scan) - now)
                self._wake.clear()
        self._wake.clear()
        with self._lock:
            dirty_paths, self._dirty = self._dirty, set()
        with self._state, one_open_per_file():  # a file inspected once per poll (and its frames, by a caller's block)
            return self._poll_paths(dirty_paths)

    def _poll_paths(self, dirty_paths: set[str]) -> list[FrameRecord]:
        self._poll_id += 1
        candidates: set[Path] = set()
        for s in dirty_paths:
            p = Path(s)
            if is_candidate(p):
                candidates.add(p)
            elif p.suffix.lower() in _METADATA_SUFFIXES or p.name == SIDECAR_NAME:
                # acquisition metadata changed: look again at the pending files of that folder (and of its
                # distance folders, for the scan folder's sidecar)
                candidates.update(t.path for t in self._tracked.values() if t.state == PENDING
                                  and p.parent in (t.path.parent, t.path.parent.parent))
        now = time.monotonic()
        if now >= self._next_scan:
            candidates |= self._scan()
            self._next_scan = time.monotonic() + self.poll_interval_s
        else:  # pending files that have just settled are judged now, not at the next full scan
            candidates.update(t.path for t in self._tracked.values() if t.state == PENDING
                              and not t.judged_settled and now - t.changed_at >= self.settle_s)
        out: list[FrameRecord] = []
        for p in sorted(candidates, key=_arrival):
            out.extend(self._evaluate(p))
        return out

    def drain_quarantine(self) -> list[QuarantineRecord]:
        """Quarantine records found since the last call (each returned once; all are in ``quarantined``)."""
        with self._state:
            out, self._quarantine = self._quarantine, []
        return out

    def drain_duplicates(self) -> list[tuple[FrameRecord, str]]:
        """Frames of files that copy a file already seen, with that file's path, found since the last call.

        They are not handed out by :meth:`poll` (their content is already there); a caller that accounts
        for every frame records them as set aside.
        """
        with self._state:
            out, self._duplicates = self._duplicates, []
        return out

    def pending_files(self) -> dict[str, str | None]:
        """Files not complete yet, with the problem that keeps them waiting (None: still being written)."""
        with self._state:
            return {str(t.path): (str(t.error) if t.error else None)
                    for t in self._tracked.values() if t.state == PENDING}

    def distance_progress(self) -> dict[float, DistanceProgress]:
        """Frames received per distance (keyed by :func:`~xnh_stream.io.sources.distance_key`)."""
        with self._state:
            return self._progress()

    def _progress(self) -> dict[float, DistanceProgress]:
        out = {}
        for key, d in self._distances.items():
            tracked = [self._tracked[p] for p in d.files if p in self._tracked]
            all_done = bool(tracked) and all(t.state in _FINAL for t in tracked)
            if d.stated_total is not None:
                complete = d.received >= d.stated_total
            elif d.edf_folder is not None:
                ctx = self._edf.get(d.edf_folder)
                complete = all_done and ctx is not None and ctx.finished
            else:
                complete = all_done and not any(t.chunked for t in tracked)
            expected = d.stated_total if d.stated_total is not None else (d.received if complete else None)
            out[key] = DistanceProgress(d.name, d.received, expected, complete)
        return out

    def close(self) -> None:
        """Stop the watchdog observer (idempotent)."""
        self._closed = True
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5.0)
            self._observer = None

    def __enter__(self) -> FolderWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _scan(self) -> set[Path]:
        """Full scan: new files, files whose size or mtime changed, every pending file, files now gone."""
        candidates: set[Path] = set()
        found: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                p = Path(dirpath) / name
                if not is_candidate(p):
                    continue
                try:
                    st = p.stat()
                except OSError:
                    continue
                found.add(p)
                t = self._tracked.get(p)
                if t is None or t.state in (VANISHED, GONE) or (st.st_size, st.st_mtime_ns) != t.stat:
                    candidates.add(p)
        for p, t in self._tracked.items():
            if t.state == PENDING:
                candidates.add(p)
            elif t.state in _FINAL and p not in found:
                t.state = GONE  # a handled file removed: if it comes back it is examined again
        return candidates

    def _edf_folder(self, folder: Path) -> EdfFolder:
        ctx = self._edf.get(folder)
        if ctx is None:
            ctx = self._edf[folder] = EdfFolder(folder)
        elif self._edf_poll.get(folder) != self._poll_id:
            ctx.refresh()
        self._edf_poll[folder] = self._poll_id
        return ctx

    def _evaluate(self, path: Path) -> list[FrameRecord]:
        t = self._tracked.get(path)
        try:
            st = path.stat()
        except OSError:
            if t is not None and t.state == PENDING:
                t.state = VANISHED
                self._counters.vanished += 1
                log.warning("%s vanished before it was complete (%d frames handed out)", path, t.n_done)
            elif t is not None and t.state in _FINAL:
                t.state = GONE
            return []
        stat = (st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        if t is None or t.state in (VANISHED, GONE):
            t = self._tracked[path] = _Tracked(path, stat, now)
            self._counters.seen_files += 1
        elif t.state in (COMPLETE, DUPLICATE) and t.soft and stat != t.stat:
            # judged complete only because it had stopped changing: it grows again, follow it again
            log.info("%s changed after it had settled: following it again", path)
            t.state, t.soft, t.stat, t.changed_at = PENDING, False, stat, now
            self._counters.complete_files -= 1
        elif t.state != PENDING:
            if stat != t.stat:
                t.stat = stat
                self._counters.duplicate_events += 1
                log.debug("%s changed after it was %s: ignored", path, t.state)
            return []
        elif stat != t.stat:
            t.stat, t.changed_at = stat, now
        settled = now - t.changed_at >= self.settle_s
        t.judged_settled = settled
        try:
            view = VIEWS.get(path, self.root, st, signature=t.signature is None)
            if view is None:
                view = inspect_file(path, self.root, self._edf_folder, signature=t.signature is None)
                if format_of(view.layout).views_cacheable and (view.complete or (view.consistent and settled)):
                    VIEWS.put(path, self.root, st, view)
        except NotAFrameFile as exc:
            if exc.final or settled:
                t.state = IGNORED
                self._counters.ignored_files += 1
                log.info("ignoring %s: %s", path, exc.reason)
            return []
        except InputError as exc:
            return self._problem(t, exc, settled)
        except Exception as exc:  # noqa: BLE001 (a file being written can fail in any way inside h5py or fabio)
            return self._problem(t, InputError(path, f"cannot be read: {type(exc).__name__}: {exc}"), settled)
        t.error = None
        if view.n_available and t.distance is None:
            problem = self._check_distance(view)
            if problem is not None:
                return self._problem(t, problem, True)
            t.distance = view.distance_key
            t.chunked = view.expected is not None
            self._distances[t.distance].files.add(path)
        if view.signature is not None and t.signature is None:
            t.signature = view.signature
            first = self._signatures.setdefault(view.signature, path)
            if first != path:
                t.duplicate_of = str(first)
                self._counters.duplicate_files += 1
                log.warning("%s has the content of %s: its frames are counted as duplicates", path, first)
        out = []
        dist = self._distances.get(t.distance) if t.distance is not None else None
        if dist is not None and view.distance_frames is not None:
            dist.stated_total = view.distance_frames
        for i in range(t.n_done, view.n_available):
            rec = view.record(i)
            if t.duplicate_of is not None and rec.frame_id not in self._emitted:
                self._counters.duplicates += 1
                self._emitted.add(rec.frame_id)
                self._duplicates.append((rec, t.duplicate_of))
            elif t.duplicate_of is not None or rec.frame_id in self._emitted:
                self._counters.duplicates += 1
            elif rec.frame_id in self._known:
                self._counters.known_skipped += 1
                self._emitted.add(rec.frame_id)
                dist.received += 1
            else:
                self._emitted.add(rec.frame_id)
                self._counters.frames_emitted += 1
                dist.received += 1
                out.append(rec)
        t.n_done = max(t.n_done, view.n_available)
        if view.complete or (view.consistent and settled):
            t.state = DUPLICATE if t.duplicate_of is not None else COMPLETE
            t.soft = not view.complete
            self._counters.complete_files += 1
        elif self.stall_s is not None and now - t.changed_at >= self.stall_s:
            when = (f"unchanged for {self.stall_s:g} s" if self.stall_s > 0
                    else "read as part of a finished scan")
            self._problem(t, InputError(path, f"incomplete: {view.n_available} of its {view.n_frames} frames written, "
                                        f"no end_time, {when}; the written frames are used"), True)
        return out

    def _problem(self, t: _Tracked, exc: InputError, final: bool) -> list[FrameRecord]:
        """Wait on a file while it changes; quarantine it when the problem is final."""
        t.error = exc
        if not final:
            return []
        t.state = QUARANTINED
        rec = QuarantineRecord(path=str(t.path), file_id=file_id_of(t.path, self.root), reason=exc.problem,
                               field=exc.field, source=exc.path, frames_emitted=t.n_done)
        self._quarantine.append(rec)
        self.quarantined.append(rec)
        self._counters.quarantined_files += 1
        log.warning("quarantined %s: %s", t.path, exc)
        return []

    def _check_distance(self, view: FileView) -> InputError | None:
        """Register the file's distance, or say why it disagrees with the files seen before."""
        g = view.geometry
        if self._energy is None:
            self._energy = (g.energy_kev, view.path)
        elif self._one_energy and abs(g.energy_kev - self._energy[0]) > 1e-6 * self._energy[0]:
            return InputError(view.path, f"energy {g.energy_kev} keV differs from {self._energy[1].name}'s "
                              f"{self._energy[0]} keV", format_of(view.layout).energy_field)
        d = self._distances.get(view.distance_key)
        if d is None:
            self._distances[view.distance_key] = _Distance(
                view.distance_name, view.frame_shape, g, view.path,
                edf_folder=view.path.parent if format_of(view.layout).folder_evidence else None)
            return None
        if view.frame_shape != d.shape:
            return InputError(view.path, f"frame shape {view.frame_shape} differs from {d.first_path.name}'s "
                              f"{d.shape} at the same distance (z1 = {g.z1_m} m)", view.shape_field)
        ref = d.geometry
        for name in ("z2_m", "pixel_m"):
            a, b = getattr(g, name), getattr(ref, name)
            if abs(a - b) > 1e-6 * abs(b):
                return InputError(view.path, f"{name} = {a} differs from {d.first_path.name}'s {b} at the same "
                                  f"distance (z1 = {g.z1_m} m)", name)
        return None
