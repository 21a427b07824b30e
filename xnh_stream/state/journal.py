"""Crash-safe journal of every frame of a running scan, and of scan-level events.

A :class:`FrameJournal` is one SQLite database (standard library ``sqlite3``) in WAL mode. Every frame
is keyed by a string ``frame_id`` (:func:`frame_id_of`: file path and index in the file) and moves through

``received`` -> ``processed``  or  ``received`` -> ``quarantined`` (with a reason)

A frame that arrives again is a *counted duplicate*, never an error and never a state change. A finished
frame (processed or quarantined) is final: asking to move it anywhere else raises
:class:`TransitionError`. After a crash, :meth:`FrameJournal.pending` is exactly the work to redo and
:meth:`FrameJournal.known_ids` what a watcher must not count again.

Durability
----------
Each call is one transaction: it is on disk entirely or not at all. The database runs in WAL mode with
``synchronous=FULL`` by default: a commit returns after the write-ahead log is fsync-ed, so a committed
frame survives ``kill -9`` of the process *and* a power cut or kernel crash of the host. ``kill -9``
alone would be safe with ``NORMAL`` too (committed pages are in the OS page cache, which outlives the
process), but under ``NORMAL`` a power cut may roll back the last commits: frames already added to a
volume would be redone and counted twice. One fsync per commit is cheap when frames are recorded in
batches (:meth:`FrameJournal.record_many`); pass ``synchronous="NORMAL"`` for a scratch journal.

Checkpoints
-----------
A commit lands in the write-ahead log (``journal.sqlite-wal``), not in the main file. SQLite's own
checkpoint only runs once the log holds 1000 pages (4 MiB), which a scan's journal may never reach: the
main file would then stay at its first 4 KiB and a lost or cut ``-wal`` file (a crash of the disk, a copy
of the main file alone, a careless cleanup) would lose the whole journal. The writer therefore copies the
log into the main file itself (``PRAGMA wal_checkpoint(PASSIVE)``, which never waits for readers) right
after creating the schema, whenever ``checkpoint_every`` frames or ``checkpoint_s`` seconds have gone to
the log since the last checkpoint (checked after each write, and by a timer when writes stop), and at
:meth:`FrameJournal.close`. The main file holds everything but the last second or so at any moment; a
journal whose ``-wal`` file was lost or cut opens with what was checkpointed (SQLite ignores a log whose
frames do not check out from the first bad one on).

Damage
------
A main file that is not a SQLite database, or that SQLite finds malformed, raises
:class:`JournalDamaged` (naming the file) when it is opened or checked (:meth:`FrameJournal.check`);
a file without the journal's tables (created by a writer that died at once, or whose log was lost
before the first checkpoint) raises :class:`JournalEmpty` when opened ``readonly``.

Concurrency
-----------
One :class:`FrameJournal` is safe to share between threads of one process (one connection behind a
lock). Across processes there must be **one writer** (in the streaming pipeline, the process that owns
the journal); other processes may open it with ``readonly=True`` and read while it is written (WAL lets
readers see the last committed state without blocking the writer). SQLite's WAL mode needs shared
memory between the processes, so the database must live on a local disk, not on NFS/GPFS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The journal's keys are the reader's frame ids (io layer); re-exported here under their former home.
from ..io.ids import file_id_of, frame_id_of, split_frame_id  # noqa: F401

RECEIVED = "received"
PROCESSED = "processed"
QUARANTINED = "quarantined"
STATES = (RECEIVED, PROCESSED, QUARANTINED)
FINISHED = (PROCESSED, QUARANTINED)
IMAGE_KEYS = (-1, 0, 1, 2)  # NXtomo: 0 projection, 1 flat, 2 dark; -1 return projection (image_key_control)

#: Allowed state changes. Same-state moves are idempotent: a ``received`` frame may record the stage it
#: reached; a finished frame stays as it is (a quarantined frame keeps its first reason).
ALLOWED: dict[str, frozenset[str]] = {
    RECEIVED: frozenset(STATES),
    PROCESSED: frozenset({PROCESSED}),
    QUARANTINED: frozenset({QUARANTINED}),
}

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    frame_id    TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('received', 'processed', 'quarantined')),
    distance    INTEGER,
    image_key   INTEGER,
    angle_deg   REAL,
    stage       TEXT,
    reason      TEXT,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    duplicates  INTEGER NOT NULL DEFAULT 0,
    CHECK (state != 'quarantined' OR reason IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS frames_state ON frames (state);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    t         REAL NOT NULL,
    event     TEXT NOT NULL,
    dedup_key TEXT UNIQUE,
    payload   TEXT NOT NULL
);
"""
_COLUMNS = "frame_id, state, distance, image_key, angle_deg, stage, reason, received_at, updated_at, duplicates"
_BATCH_VARS = 900  # ids per "IN (...)" query, below every SQLite build's variable limit
CHECKPOINT_EVERY = 100  # frames written to the WAL between two checkpoints (at most)
CHECKPOINT_S = 1.0  # seconds between a write and the checkpoint that copies it into the main file (at most)
log = logging.getLogger(__name__)


class TransitionError(ValueError):
    """A state change that the journal refuses (a finished frame cannot move; an unknown frame cannot finish
    without its metadata)."""


class JournalDamaged(ValueError):
    """The journal's main file is not a SQLite database, or SQLite finds it malformed or cannot read it.

    Attributes
    ----------
    path : Path
        The journal file.
    detail : str
        SQLite's own words.
    """

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path, self.detail = Path(path), detail
        super().__init__(f"journal {self.path} is damaged or unreadable: {detail}")


class JournalEmpty(ValueError):
    """A database file without the journal's tables: its writer is creating it, died before it had, or
    its write-ahead log was lost before the first checkpoint. It holds no frame."""


@dataclass(frozen=True)
class FrameRecord:
    """One frame as the journal knows it (or as a caller reports it to :meth:`FrameJournal.record_many`).

    Attributes
    ----------
    frame_id : str
        Key, normally from :func:`frame_id_of`.
    state : str
        ``"received"``, ``"processed"`` or ``"quarantined"``.
    distance : float or None
        The frame's distance key: focus-to-sample distance z1 in metres, rounded to 0.1 um
        (:func:`xnh_stream.io.sources.distance_key`, ``FrameRecord.distance_key`` of the reader); None
        for an entry that stands for a whole file.
    image_key : int or None
        NXtomo image key: 0 projection, 1 flat, 2 dark, -1 return projection.
    angle_deg : float or None
        Rotation angle in degrees.
    stage : str or None
        Pipeline stage that last touched the frame (e.g. where it was quarantined).
    reason : str or None
        Why the frame was quarantined (required for that state).
    received_at, updated_at : float or None
        Unix times (seconds) of the first arrival and of the last change; set by the journal.
    duplicates : int
        How many times the frame arrived again after its first arrival.
    """

    frame_id: str
    state: str = RECEIVED
    distance: float | None = None
    image_key: int | None = None
    angle_deg: float | None = None
    stage: str | None = None
    reason: str | None = None
    received_at: float | None = None
    updated_at: float | None = None
    duplicates: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.frame_id, str) or not self.frame_id:
            raise ValueError(f"frame_id must be a non-empty string, got {self.frame_id!r}")
        if self.state not in STATES:
            raise ValueError(f"frame {self.frame_id}: state must be one of {STATES}, got {self.state!r}")
        if self.distance is not None and (isinstance(self.distance, bool)
                                          or not isinstance(self.distance, (int, float, np.integer, np.floating))
                                          or not math.isfinite(self.distance) or self.distance < 0):
            raise ValueError(f"frame {self.frame_id}: distance must be a finite non-negative number (the distance "
                             f"key, z1 in metres), got {self.distance!r}")
        if self.image_key is not None and self.image_key not in IMAGE_KEYS:
            raise ValueError(f"frame {self.frame_id}: image_key must be one of {IMAGE_KEYS}, got {self.image_key!r}")
        if self.angle_deg is not None and not math.isfinite(self.angle_deg):
            raise ValueError(f"frame {self.frame_id}: angle_deg must be finite, got {self.angle_deg!r}")
        if self.state == QUARANTINED and not self.reason:
            raise ValueError(f"frame {self.frame_id}: a quarantined frame needs a reason")


class FrameJournal:
    """SQLite journal of frame states and scan events (see the module docstring for durability).

    Parameters
    ----------
    path : str or Path
        Database file (created with its folder if missing; on a local disk).
    synchronous : {"FULL", "NORMAL"}
        SQLite ``synchronous`` setting in WAL mode; FULL (default) survives power loss, NORMAL only
        process death.
    readonly : bool
        Open an existing journal for reading only (a second process beside the one writer).
    timeout_s : float
        How long a call waits for a lock held by another connection before failing.
    checkpoint_every : int
        Copy the write-ahead log into the main file once this many frames were written to it (see the
        module docstring, "Checkpoints").
    checkpoint_s : float
        ... or once this many seconds passed since a write that no checkpoint has copied yet.

    Raises
    ------
    JournalDamaged
        When the file is not a SQLite database or SQLite cannot read it.
    JournalEmpty
        ``readonly``: the file has no journal tables (it holds no frame).
    ValueError
        ``readonly`` and the file does not exist; another schema version; no WAL support.
    """

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL", readonly: bool = False,
                 timeout_s: float = 30.0, checkpoint_every: int = CHECKPOINT_EVERY,
                 checkpoint_s: float = CHECKPOINT_S) -> None:
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if checkpoint_every < 1 or not checkpoint_s > 0:
            raise ValueError(f"checkpoint_every must be >= 1 and checkpoint_s > 0, got {checkpoint_every}, "
                             f"{checkpoint_s}")
        self.path = Path(path)
        self.readonly = readonly
        self.checkpoint_every, self.checkpoint_s = int(checkpoint_every), float(checkpoint_s)
        self._lock = threading.RLock()
        self._closed = False
        self._unsaved = 0  # frames written to the WAL since the last checkpoint
        self._unsaved_since: float | None = None  # monotonic time of the first of them
        self._timer: threading.Timer | None = None
        self.checkpoints = 0  #: checkpoints run by this writer
        if readonly:
            if not self.path.is_file():
                raise ValueError(f"journal {self.path} does not exist (readonly=True opens an existing one)")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
            try:
                self._check_schema()
            except BaseException:
                self._db.close()
                raise
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own BEGIN IMMEDIATE.
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False,
                                   isolation_level=None)
        try:
            with _damage(self.path):
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise ValueError(f"journal {self.path}: the filesystem does not support SQLite WAL mode "
                                     f"({mode})")
                self._db.execute(f"PRAGMA synchronous={sync}")
                with self._transaction():
                    for statement in _split(_SCHEMA):  # executescript() would commit on its own
                        self._db.execute(statement)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(time.time()),))
            self._check_schema()
        except BaseException:
            self._db.close()
            raise
        self.checkpoint()  # the schema in the main file from the start

    # ------------------------------------------------------------------ plumbing
    def _check_schema(self) -> None:
        with _damage(self.path):
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                # a reader that opened the file between create and schema, or a log lost before any checkpoint
                raise JournalEmpty(f"journal {self.path} has no schema yet (is its writer still creating it, "
                                   f"or was its -wal file lost before the first checkpoint?): {exc}") from exc
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise ValueError(f"journal {self.path}: schema version {row and row[0]} is not {SCHEMA_VERSION}")

    def _transaction(self) -> _Transaction:
        if self.readonly:
            raise ValueError(f"journal {self.path} was opened readonly")
        return _Transaction(self._db)

    def check(self) -> None:
        """Raise :class:`JournalDamaged` unless SQLite finds the database sound (``PRAGMA quick_check``:
        every page readable and well formed; linear in the journal's size)."""
        with self._lock, _damage(self.path):
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != ["ok"]:
            raise JournalDamaged(self.path, "; ".join(str(r[0]) for r in rows[:5]))

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the write-ahead log into the main file now, as far as readers allow (never waits).

        Returns
        -------
        tuple of int
            SQLite's answer: ``(busy, frames in the log, frames copied)``; ``(0, 0, 0)`` for a reader.
        """
        with self._lock:
            if self.readonly or self._closed:
                return (0, 0, 0)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            try:
                row = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.OperationalError as exc:  # durability against a lost log only: the commit stands
                log.warning("journal %s: checkpoint failed (%s); the frames stay in the -wal file", self.path, exc)
                return (1, -1, -1)
            self.checkpoints += 1
            self._unsaved, self._unsaved_since = 0, None
            return int(row[0]), int(row[1]), int(row[2])

    def _written(self, n: int) -> None:
        """Book ``n`` frames committed to the log: checkpoint when due, else make sure a timer will."""
        if n <= 0:
            return
        now = time.monotonic()
        self._unsaved += n
        if self._unsaved_since is None:
            self._unsaved_since = now
        if self._unsaved >= self.checkpoint_every or now - self._unsaved_since >= self.checkpoint_s:
            self.checkpoint()
        elif self._timer is None:
            self._timer = threading.Timer(self.checkpoint_s - (now - self._unsaved_since), self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._unsaved:
                self.checkpoint()

    def close(self) -> None:
        """Close the database; a writer first checkpoints the log into the main file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            if not self.readonly:
                self.checkpoint()
            self._closed = True
            self._db.close()

    def __enter__(self) -> FrameJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def receive(self, fid: str, distance: int | None = None, image_key: int | None = None,
                angle_deg: float | None = None, stage: str | None = None) -> bool:
        """Record the arrival of one frame; True if new, False for a (counted) duplicate arrival."""
        return self.record_many([FrameRecord(fid, RECEIVED, distance, image_key, angle_deg, stage)]) == 1

    def mark(self, fid: str, state: str, stage: str | None = None, reason: str | None = None) -> None:
        """Move a received frame to ``state`` (validated; see :data:`ALLOWED`).

        Raises
        ------
        TransitionError
            If the frame was never received, or the move is not allowed (e.g. processed -> received).
        """
        self.mark_many([fid], state, stage=stage, reasons=None if reason is None else [reason])

    def processed(self, fid: str, stage: str | None = None) -> None:
        """Shorthand for ``mark(fid, "processed", stage)``."""
        self.mark(fid, PROCESSED, stage=stage)

    def quarantine(self, fid: str, reason: str, stage: str | None = None) -> None:
        """Shorthand for ``mark(fid, "quarantined", stage, reason)``."""
        self.mark(fid, QUARANTINED, stage=stage, reason=reason)

    def mark_many(self, fids: Iterable[str], state: str, stage: str | None = None,
                  reasons: Iterable[str] | None = None) -> None:
        """Move many received frames to ``state`` in one transaction (all or none).

        Raises
        ------
        TransitionError
            If any frame is unknown or may not move to ``state``; nothing is changed then.
        """
        fids = list(fids)
        reason_list = [None] * len(fids) if reasons is None else list(reasons)
        if len(reason_list) != len(fids):
            raise ValueError(f"mark_many: {len(reason_list)} reasons for {len(fids)} frames")
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        for f, r in zip(fids, reason_list):
            FrameRecord(f, state, stage=stage, reason=r).validate()
        now = time.time()
        with self._lock, self._transaction():
            current = self._states(fids)
            rows = []
            for f, r in zip(fids, reason_list):
                old = current.get(f)
                if old is None:
                    raise TransitionError(f"frame {f} was never received: cannot mark it {state}")
                if state not in ALLOWED[old]:
                    raise TransitionError(f"frame {f}: {old} -> {state} is not allowed (a finished frame is final)")
                if old == state and old in FINISHED:
                    continue  # idempotent; a quarantined frame keeps its first reason
                rows.append((state, stage, r, now, f))
                current[f] = state
            self._db.executemany(
                "UPDATE frames SET state = ?, stage = coalesce(?, stage), reason = coalesce(?, reason), "
                "updated_at = ? WHERE frame_id = ?", rows)
        with self._lock:
            self._written(len(rows))

    def record_many(self, records: Iterable[FrameRecord]) -> int:
        """Record a batch of frames in one transaction (all or none); the fast path for ingest.

        A record in state ``received`` is an *arrival*: new frames are inserted, known frames (in any
        state) get their duplicate count incremented. A record in a finished state is a *transition* of a
        known frame, validated as in :meth:`mark`, or, for an unknown frame, an arrival that finished at
        once (its metadata are taken from the record). Records apply in order, so one batch may hold a
        frame's arrival and its completion.

        Returns
        -------
        int
            Number of frames that were new to the journal.

        Raises
        ------
        ValueError, TransitionError
            On a malformed record or a refused transition; nothing of the batch is written then.
        """
        records = list(records)
        for r in records:
            r.validate()
        now = time.time()
        with self._lock, self._transaction():
            current = self._states([r.frame_id for r in records])
            inserts: dict[str, list[Any]] = {}
            dups: dict[str, int] = {}
            updates: list[tuple[Any, ...]] = []
            for r in records:
                old = current.get(r.frame_id)
                if old is None:
                    inserts[r.frame_id] = [r.frame_id, r.state, r.distance, r.image_key, r.angle_deg, r.stage,
                                           r.reason, now, now, 0]
                    current[r.frame_id] = r.state
                elif r.state == RECEIVED:
                    dups[r.frame_id] = dups.get(r.frame_id, 0) + 1
                elif r.state not in ALLOWED[old]:
                    raise TransitionError(f"frame {r.frame_id}: {old} -> {r.state} is not allowed "
                                          "(a finished frame is final)")
                elif old == r.state:
                    continue
                elif r.frame_id in inserts:  # arrived earlier in this batch: finish it before inserting
                    row = inserts[r.frame_id]
                    row[1], row[6], row[8] = r.state, r.reason, now
                    row[5] = r.stage if r.stage is not None else row[5]
                    current[r.frame_id] = r.state
                else:
                    updates.append((r.state, r.stage, r.reason, now, r.frame_id))
                    current[r.frame_id] = r.state
            self._db.executemany(f"INSERT INTO frames ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 inserts.values())
            self._db.executemany("UPDATE frames SET duplicates = duplicates + ? WHERE frame_id = ?",
                                 [(n, f) for f, n in dups.items()])
            self._db.executemany(
                "UPDATE frames SET state = ?, stage = coalesce(?, stage), reason = coalesce(?, reason), "
                "updated_at = ? WHERE frame_id = ?", updates)
        with self._lock:
            self._written(len(inserts) + len(dups) + len(updates))
        return len(inserts)

    def _states(self, fids: list[str]) -> dict[str, str]:
        """Current state of those of ``fids`` that the journal knows."""
        unique = list(dict.fromkeys(fids))
        out: dict[str, str] = {}
        for i in range(0, len(unique), _BATCH_VARS):
            part = unique[i:i + _BATCH_VARS]
            q = f"SELECT frame_id, state FROM frames WHERE frame_id IN ({','.join('?' * len(part))})"
            out.update(self._db.execute(q, part).fetchall())
        return out

    # ------------------------------------------------------------------ events
    def emit(self, event: str, payload: dict[str, Any] | None = None, key: str | None = None) -> int:
        """Append a scan-level event (e.g. ``"scan_complete"``, an alert); returns its id.

        With ``key``, the event is emitted once: a second ``emit`` with the same key (after a restart, say)
        returns the first event's id and writes nothing.
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"event must be a non-empty string, got {event!r}")
        text = json.dumps(payload or {}, allow_nan=False, sort_keys=True)
        with self._lock, self._transaction():
            if key is not None:
                row = self._db.execute("SELECT id FROM events WHERE dedup_key = ?", (key,)).fetchone()
                if row is not None:
                    return int(row[0])
            cur = self._db.execute("INSERT INTO events (t, event, dedup_key, payload) VALUES (?, ?, ?, ?)",
                                   (time.time(), event, key, text))
            event_id = int(cur.lastrowid)
        with self._lock:
            self._written(1)
        return event_id

    def events(self, event: str | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        """Events in emission order, optionally of one name and after an id (for a polling subscriber)."""
        q = "SELECT id, t, event, dedup_key, payload FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if event is not None:
            q += " AND event = ?"
            args.append(event)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [{"id": i, "t": t, "event": e, "key": k, "payload": json.loads(p)} for i, t, e, k, p in rows]

    # ------------------------------------------------------------------ queries
    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def get(self, fid: str) -> FrameRecord | None:
        """The record of one frame, or None if it was never received."""
        rows = self._query(f"SELECT {_COLUMNS} FROM frames WHERE frame_id = ?", (fid,))
        return FrameRecord(*rows[0]) if rows else None

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM frames")[0][0])

    def __contains__(self, fid: object) -> bool:
        return bool(self._query("SELECT 1 FROM frames WHERE frame_id = ?", (fid,)))

    def known_ids(self) -> set[str]:
        """Every frame ever received, in any state."""
        return {r[0] for r in self._query("SELECT frame_id FROM frames")}

    def pending(self) -> list[FrameRecord]:
        """Frames received but not finished, in arrival order: the work to redo after a restart."""
        return [FrameRecord(*r) for r in
                self._query(f"SELECT {_COLUMNS} FROM frames WHERE state = ? ORDER BY rowid", (RECEIVED,))]

    def quarantined(self) -> list[FrameRecord]:
        """Quarantined frames with their reasons, in arrival order."""
        return [FrameRecord(*r) for r in
                self._query(f"SELECT {_COLUMNS} FROM frames WHERE state = ? ORDER BY rowid", (QUARANTINED,))]

    def iter_records(self) -> Iterator[FrameRecord]:
        """Every record in arrival order (read in one snapshot)."""
        yield from (FrameRecord(*r) for r in self._query(f"SELECT {_COLUMNS} FROM frames ORDER BY rowid"))

    def counts(self) -> dict[str, int]:
        """``received`` (distinct frames ever received), ``processed``, ``quarantined``, ``pending``
        (received, not finished) and ``duplicates`` (repeated arrivals)."""
        rows = self._query("SELECT state, count(*), coalesce(sum(duplicates), 0) FROM frames GROUP BY state")
        by = {s: n for s, n, _ in rows}
        return {"received": sum(by.values()), "processed": by.get(PROCESSED, 0),
                "quarantined": by.get(QUARANTINED, 0), "pending": by.get(RECEIVED, 0),
                "duplicates": int(sum(d for _, _, d in rows))}

    def progress(self, image_key: int | None = 0) -> dict[int | None, dict[str, int]]:
        """Per distance: ``received``, ``processed``, ``quarantined``, ``pending`` frame counts.

        Only frames of ``image_key`` (default projections) count; None counts every kind.
        """
        q = "SELECT distance, state, count(*) FROM frames"
        args: tuple[Any, ...] = ()
        if image_key is not None:
            q, args = q + " WHERE image_key = ?", (image_key,)
        out: dict[int | None, dict[str, int]] = {}
        for d, s, n in self._query(q + " GROUP BY distance, state", args):
            c = out.setdefault(d, {"received": 0, PROCESSED: 0, QUARANTINED: 0, "pending": 0})
            c["received"] += n
            c["pending" if s == RECEIVED else s] += n
        return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))

    def angles(self, distance: int, state: str = PROCESSED, image_key: int = 0) -> list[float]:
        """Sorted angles (degree) of one distance's frames in ``state``: per-angle progress of a distance."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        rows = self._query("SELECT angle_deg FROM frames WHERE distance = ? AND state = ? AND image_key = ? "
                           "AND angle_deg IS NOT NULL ORDER BY angle_deg", (distance, state, image_key))
        return [r[0] for r in rows]

    def summary(self) -> dict[str, Any]:
        """The ``frames`` section of ``report.json``: counts and every quarantined frame with its reason."""
        c = self.counts()
        quarantine = []
        for r in self.quarantined():
            path, index = split_frame_id(r.frame_id)
            quarantine.append({"file": path, "index": index, "reason": r.reason, "stage": r.stage})
        return {"received": c["received"], "processed": c["processed"], "quarantined": c["quarantined"],
                "pending": c["pending"], "duplicates": c["duplicates"], "quarantine": quarantine}

    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` answer (``"ok"`` for a sound database)."""
        return str(self._query("PRAGMA integrity_check")[0][0])


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextlib.contextmanager
def _damage(path: Path) -> Iterator[None]:
    """Turn SQLite's "not a database" / "malformed" / I/O errors into :class:`JournalDamaged`; a lock held by
    another connection and "no such table" pass as they are."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and any(s in text for s in ("locked", "busy", "no such table")):
            raise
        raise JournalDamaged(path, text) from exc


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
