"""One writer per output folder: ``OUT/.xnh.lock``.

Every command that writes into an output folder (``process``, ``watch``, ``demo``, ``overnight``,
``segment``, ``stitch``) and every final pass holds the folder's lock while it writes. A second command on
the same folder is refused with who holds it (PID, host, command, since when) instead of sharing the
journal and the work folder with the first.

The lock is an exclusive ``flock`` on the file, which the kernel releases when the holder dies, however it
dies (``kill -9`` included): a lock is never stale on a local disk. Where the file system has no ``flock``
(some FUSE and old NFS mounts) the file's content decides instead: a holder on this host whose PID is
gone is stale and the lock is taken over (with a warning); a holder on another host is trusted.

The lock is re-entrant within a process (the stream's final pass runs inside the ``watch`` command that
holds the folder), keyed by the folder's real path.

A folder the lock created (it did not exist) and that holds nothing but the lock file when the lock is
released (a command that failed before writing anything) is removed, with the parents the lock created: a
failed command leaves no empty output folder behind. A folder that existed is never removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import InputError
from ..io.names import LOCK_NAME

log = logging.getLogger(__name__)

_held: dict[str, tuple[IO[str], int]] = {}  # real path of the folder -> (open lock file, depth)
_created: dict[str, list[Path]] = {}  # real path of the folder -> the folders its lock created, deepest first
_guard = threading.Lock()


def _holder(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict[str, object]) -> str:
    if not info:
        return "another process (its PID is not recorded)"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if isinstance(since, (int, float)) else "?"
    return f"`{info.get('command', '?')}` (PID {info.get('pid', '?')} on {info.get('host', '?')}, since {when})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """The lock of one output folder (see the module docstring); a context manager.

    Parameters
    ----------
    folder : str or Path
        The output folder (created if missing).
    command : str
        What holds it, as shown to a second command.

    Raises
    ------
    InputError
        On entry, when another process holds the folder.
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self._key: str | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (re-entrant in this process)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(self.folder, "is a file; an output folder was expected (give a folder path)")
        # the folders this lock creates, deepest first (removed again if nothing is written into them)
        made = [Path(os.path.abspath(p)) for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(self.folder, f"cannot be created ({exc.strerror or exc})") from exc
        key = os.path.realpath(self.folder)
        with _guard:
            if key in _held:
                fh, depth = _held[key]
                _held[key] = (fh, depth + 1)
                self._key = key
                return
            path = Path(key) / LOCK_NAME
            try:
                fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
            except FileNotFoundError:  # a failed holder removed the folder it had created just now
                self.folder.mkdir(parents=True, exist_ok=True)
                fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115
            try:
                self._lock(fh, path)
            except BaseException:
                fh.close()
                raise
            fh.seek(0)
            fh.truncate()
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                       "since": time.time()}, fh)
            fh.flush()
            _held[key] = (fh, 1)
            if made:
                _created[key] = made
            self._key = key

    def _lock(self, fh: IO[str], path: Path) -> None:
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - Windows: the content decides
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                raise InputError(self.folder, f"is in use by {_describe(_holder(path))}: one command writes an "
                                 "output folder at a time; wait for it to end or stop it (its work resumes), or "
                                 "give another output folder") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                log.warning("%s: the file system has no flock (%s); the lock file's content decides", path,
                            exc.strerror)
        info = _holder(path)
        pid, host = info.get("pid"), info.get("host")
        if not info or not isinstance(pid, int):
            return
        if host == socket.gethostname():
            if pid != os.getpid() and _alive(pid):
                raise InputError(self.folder, f"is in use by {_describe(info)}; wait for it to end or stop it")
            log.warning("%s: taking over the stale lock of %s (that process is gone)", self.folder, _describe(info))
            return
        raise InputError(self.folder, f"is in use by {_describe(info)} on another host; if that process is gone, "
                         f"remove {path} and run again")

    def release(self) -> None:
        """Release the lock (the file stays; its content no longer matters)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _guard:
            fh, depth = _held[key]
            if depth > 1:
                _held[key] = (fh, depth - 1)
                return
            del _held[key]
            try:
                fh.seek(0)
                fh.truncate()
                fh.flush()
            except OSError:
                pass
            _remove_if_unused(Path(key), _created.pop(key, []))  # still under the flock
            fh.close()  # closing the file releases the flock


def _remove_if_unused(folder: Path, made: list[Path]) -> None:
    """Remove ``folder`` and its parents in ``made`` (the folders the lock created, deepest first) when
    ``folder`` holds nothing but the lock file; anything else in it keeps everything."""
    if not made:
        return
    try:
        if [p.name for p in folder.iterdir()] != [LOCK_NAME]:
            return
        (folder / LOCK_NAME).unlink()
        for path in made:
            path.rmdir()  # a parent holding something else stays (OSError: not empty)
    except OSError:
        return


def held(folder: str | Path) -> bool:
    """Whether this process holds the lock of ``folder``."""
    return os.path.realpath(folder) in _held

