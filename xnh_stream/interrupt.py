"""Stopping a command on SIGTERM or SIGINT: no traceback, the state on disk resumable, a clear exit code.

Within :func:`stop_on_signals` (entered by :func:`xnh_stream.cli.main`) SIGTERM and SIGINT raise
:class:`Interrupted` in the main thread. What the command holds is released on the way out by its own
``finally`` and ``with`` blocks (the stream closes its journal, the live page and the metrics server stop),
then ``main`` says in one line that the command stopped and that running it again resumes, shuts the
runtime down and returns :data:`EXIT_CODES` (0 after SIGTERM: a requested stop; 130 after SIGINT). What is
on disk is resumable at any instruction already (the final pass redoes every unit without its marker, the
stream's journal survives even ``kill -9``), so the stop does not wait for a step to end.

:class:`Interrupted` is a :class:`KeyboardInterrupt` because libraries that block in native code and poll
for signals themselves only let a KeyboardInterrupt through: Ray's ``ray.get`` and ``ray.wait`` raise a new,
bare one in its place (another exception type is lost there as a ``SystemError``). The signal is therefore
also recorded here (:func:`signal_of`). Until ``main`` has caught the interruption every further signal
raises again; after that (:func:`hold`) they are ignored, so that the shutdown runs to its end.

Libraries may install their own handlers (``ray.init`` does, for SIGTERM): :func:`reinstall` puts the
command's back after them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["EXIT_CODES", "SIGNALS", "Interrupted", "active", "hold", "received", "reinstall", "signal_name", "signal_of",
           "stop_on_signals"]

#: The signals that stop a command.
SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Exit code of a command stopped by each signal: a requested stop (SIGTERM, e.g. from a scheduler or
#: systemd) is not a failure; an interrupt from the keyboard keeps the shell's 128 + 2.
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGINT within :func:`stop_on_signals`.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)


#: ``active``: handlers installed (nesting depth); ``received``: the first signal since; ``holding``:
#: further signals are ignored.
_STATE: dict[str, Any] = {"active": 0, "received": None, "holding": False}


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ``signal 99`` for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: FrameType | None) -> None:
    if _STATE["holding"]:
        return  # the command is stopping already: let its shutdown finish
    if _STATE["received"] is None:
        _STATE["received"] = signum
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT raise :class:`Interrupted`; the previous handlers are restored on leaving.

    Outside the main thread (where Python delivers no signal) nothing is installed.
    """
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    saved = dict(_STATE)
    _STATE.update(active=saved["active"] + 1, received=None, holding=False)
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            # None: a handler installed from C, which Python cannot put back; the default is the closest
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _STATE.update(saved)


def active() -> bool:
    """Whether the command's handlers are installed (within :func:`stop_on_signals`, in the main thread)."""
    return bool(_STATE["active"]) and _main_thread()


def reinstall() -> None:
    """Put the command's handlers back where a library replaced them (no-op outside :func:`stop_on_signals`
    or the main thread)."""
    if active():
        for s in SIGNALS:
            signal.signal(s, _handler)


def hold() -> None:
    """From now on until :func:`stop_on_signals` is left, SIGTERM and SIGINT are ignored (the command is
    stopping, or has finished and shuts its runtime down)."""
    _STATE["holding"] = True


def received() -> int | None:
    """The first stopping signal received within :func:`stop_on_signals`, or None."""
    return _STATE["received"]


def signal_of(exc: BaseException) -> int:
    """The signal behind a :class:`KeyboardInterrupt`: its own, else the one recorded (a library raised a
    bare KeyboardInterrupt in place of :class:`Interrupted`), else SIGINT (Python's default handler)."""
    signum = getattr(exc, "signum", None)
    if signum is None:
        signum = _STATE["received"]
    return int(signum if signum is not None else signal.SIGINT)
