"""The one resumable work folder: what each step has finished, so that a killed run resumes.

Used by the final pass (``OUT/work``), the blockwise segmentation (``OUT/segmentation.work``) and the
blockwise stitch (``OUT/stitch.work``). It holds

* ``spec.json``: what the work is for (the final pass: the frames of the scan, the options; a segmentation or
  a stitch: its spec) and the format number of its writer. **A folder whose spec differs** (another scan or
  input in the same output, other options, an older writer, or markers without a spec) **is started
  afresh**: renamed to the trash and deleted, with a warning naming the keys that differ; it is never
  refused, never reused. The
  work is not the output: the published outputs stay until new ones replace them. How the
  work is cut is not in it: a stage whose units depend on the cut names its markers after it
  (``phase_b16``, ``slab_r8``), so a run with another cut redoes only those stages;
* ``results/<step>.pkl``: the result of each driver-side step (calibration, alignment, rotation axis,
  envelope ...), written atomically (temporary file, then rename);
* ``done/<stage>/<key>.json``: a marker per finished unit of a distributed step (a batch of angles, a
  slab of rows, a block), written atomically after the unit's data, with what the driver needs to know of
  it (a worker marks its units in the folder its driver checked: :meth:`WorkFolder.attach`);
* the large intermediate arrays (phase-retrieved projections, the volume being written).

A unit whose marker exists is not redone; a unit without one is redone from the start (its data may
be half written, and writing it again gives the same bytes). Nothing is trusted unchecked: a marker
carries the CRC-32 of the data its unit wrote (:func:`crc32`) and a resumed run compares it with what it
reads back before it uses the unit (a deleted chunk, flipped bytes or a chunk of garbage make the unit be
redone, never read); a saved result carries the CRC-32 of its bytes (:class:`DamagedWork` when they differ).

The folder is never deleted in place: :meth:`WorkFolder.remove` (and a folder of another spec) is first
renamed to a hidden trash folder beside it, then deleted, so a kill during the deletion never leaves a
work folder with some of its markers and without its spec (:func:`purge_trash` finishes the deletion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import tempfile
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Format of the work folder: a folder written by another format is started afresh (2: checksums).
WORK_FORMAT = 2

#: Prefix of the hidden folders being deleted (:func:`trash`, :func:`purge_trash`).
TRASH_PREFIX = ".xnh-trash-"

#: Environment variable naming a :func:`crash_point` at which the process kills itself (fault tests).
CRASH_ENV = "XNH_CRASH_AT"


class DamagedWork(Exception):
    """A saved result or unit whose bytes are not those that were written (it is recomputed)."""


def crash_point(name: str) -> None:
    """A named instant at the end of a final pass where a kill must leave recoverable state.

    Does nothing unless the environment variable ``XNH_CRASH_AT`` names this point: then the process
    kills itself with SIGKILL, as an operator or the OOM killer would (the fault-injection tests).
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def crc32(array: Any, value: int = 0) -> int:
    """CRC-32 of an array's float32 bytes (C order), continued from ``value``.

    The checksum a work unit records of the data it wrote, and that a resumed run recomputes from what it
    reads back (equal exactly when every byte is).
    """
    a = np.ascontiguousarray(array, dtype=np.float32)
    return zlib.crc32(memoryview(a).cast("B"), value)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def trash(path: Path) -> Path | None:
    """Rename ``path`` to a hidden trash folder beside it (atomic) and delete it; returns the trash path
    (None when ``path`` did not exist). A kill during the deletion leaves only the trash folder, which
    :func:`purge_trash` removes later."""
    if not path.exists():
        return None
    dest = path.parent / f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    path.rename(dest)
    fsync_dir(path.parent)
    crash_point("trash:renamed")
    shutil.rmtree(dest, ignore_errors=True)
    return dest


def purge_trash(folder: Path) -> None:
    """Finish deleting the trash folders a killed run left in ``folder``."""
    if not folder.is_dir():
        return
    for p in folder.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


_RESULT_MAGIC = b"XNHR1"


def _differing(old_text: str, spec: dict[str, Any]) -> list[str]:
    """The keys of ``spec`` whose values differ from those of the spec ``old_text`` (all: unreadable)."""
    try:
        old = json.loads(old_text)
    except ValueError:
        return ["spec.json unreadable"]
    new = json.loads(json.dumps(spec, default=str))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if isinstance(old, dict) else ["spec.json"]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WorkFolder:
    """Resumable state of one final pass (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The folder (created).
    spec : dict
        JSON-able description of the work; a folder with another spec is emptied first.
    fmt : int
        Format number of the writer (its layout of the folder), part of the spec.
    """

    def __init__(self, path: str | Path, spec: dict[str, Any], fmt: int = WORK_FORMAT) -> None:
        self.path = Path(path)
        spec = {"format": fmt, **spec}
        spec_file = self.path / "spec.json"
        text = json.dumps(spec, sort_keys=True, default=str)
        purge_trash(self.path.parent)
        if spec_file.exists():
            try:
                old = spec_file.read_text()
            except (OSError, UnicodeDecodeError):
                old = ""
            if old != text:
                log.warning("%s holds the work of another scan, input or options (differs in %s): starting "
                            "afresh", self.path, _differing(old, spec))
                trash(self.path)
            else:
                log.info("resuming the work in %s", self.path)
        elif self.path.is_dir() and any(self.path.iterdir()):
            # markers without the spec they were made for (not a folder this code wrote): not trusted
            log.warning("%s holds work without its spec.json: starting afresh", self.path)
            trash(self.path)
        self.resumed = spec_file.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if not spec_file.exists():
            _atomic_write(spec_file, text.encode())
            fsync_dir(self.path.parent)
        #: Hash of the spec: what the outputs were made from (report.json records it).
        self.spec_id = hashlib.sha1(text.encode()).hexdigest()

    @classmethod
    def attach(cls, path: str | Path) -> WorkFolder:
        """The work folder ``path`` as a driver prepared it (checked, spec written), for a worker that marks
        its units there: nothing is checked or removed."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.resumed = True
        self.spec_id = ""
        return self

    # ------------------------------------------------------------------ driver-side results
    def has(self, name: str) -> bool:
        """A result called ``name`` was saved."""
        return (self.path / "results" / f"{name}.pkl").exists()

    def save(self, name: str, value: Any) -> None:
        """Save a step's result (with the CRC-32 of its bytes)."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        _atomic_write(self.path / "results" / f"{name}.pkl", _RESULT_MAGIC + zlib.crc32(data).to_bytes(4, "little") + data)

    def load(self, name: str) -> Any:
        """A saved result.

        Raises
        ------
        DamagedWork
            When its bytes are not those saved (cut, flipped, replaced).
        """
        path = self.path / "results" / f"{name}.pkl"
        blob = path.read_bytes()
        head, crc, data = blob[:len(_RESULT_MAGIC)], blob[len(_RESULT_MAGIC):len(_RESULT_MAGIC) + 4], \
            blob[len(_RESULT_MAGIC) + 4:]
        if head != _RESULT_MAGIC or int.from_bytes(crc, "little") != zlib.crc32(data):
            raise DamagedWork(f"{path}: damaged (checksum differs)")
        try:
            return pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - a checksum collision on garbage: still damaged
            raise DamagedWork(f"{path}: damaged ({exc})") from exc

    def forget(self, name: str) -> None:
        """Drop a saved result (it is computed again)."""
        (self.path / "results" / f"{name}.pkl").unlink(missing_ok=True)

    # ------------------------------------------------------------------ unit markers
    def _marker(self, stage: str, key: str) -> Path:
        return self.path / "done" / stage / f"{key}.json"

    def mark(self, stage: str, key: str, payload: Any = None) -> None:
        """Record that unit ``key`` of ``stage`` is finished (after its data are written)."""
        _atomic_write(self._marker(stage, key), json.dumps(payload).encode())

    def unmark(self, stage: str, key: str | None = None) -> None:
        """Drop the marker of unit ``key`` of ``stage`` (every marker of the stage with ``key`` None): the
        unit is redone."""
        if key is None:
            shutil.rmtree(self.path / "done" / stage, ignore_errors=True)
        else:
            self._marker(stage, key).unlink(missing_ok=True)

    def is_done(self, stage: str, key: str | int) -> bool:
        """Unit ``key`` of ``stage`` is marked finished."""
        return self._marker(stage, str(key)).exists()

    def pending(self, stage: str, keys: Iterable[int]) -> list[int]:
        """The units of ``keys`` not marked finished in ``stage``, in order."""
        return [k for k in keys if not self.is_done(stage, k)]

    def stages(self, prefix: str) -> list[str]:
        """The stages with markers whose names start with ``prefix``."""
        folder = self.path / "done"
        return sorted(p.name for p in folder.glob(f"{prefix}*") if p.is_dir()) if folder.is_dir() else []

    def done(self, stage: str) -> dict[str, Any]:
        """Finished units of ``stage`` with their payloads."""
        folder = self.path / "done" / stage
        if not folder.is_dir():
            return {}
        out = {}
        for p in folder.glob("*.json"):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # a marker cut by a crash: the unit is redone
        return out

    def remove(self) -> None:
        """Delete the work folder (after the outputs are complete): renamed away first (:func:`trash`)."""
        trash(self.path)
