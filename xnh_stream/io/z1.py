"""Focus-to-sample distances z1 given on the command line (``--z1``) for scan files that do not record them.

Files converted by nxtomomill from an EDF scan, and the EDF layout itself, carry the detector pixel, z2 and the
energy, but not z1: without it the magnification ``M = (z1 + z2) / z1`` and the propagation distance
``D = z1 z2 / (z1 + z2)`` are unknown, and the readers refuse the file. ``--z1`` supplies it::

    --z1 NAME=METRES   the z1 of the distance NAME (repeat it, one per distance)
    --z1 METRES        the z1 of the one distance whose files lack it (a scan of one distance, one file)

``NAME`` is what names a distance: the file's name without its suffix (``scan_1_`` for ``scan_1_.nx``), or its
folder's name (an EDF distance folder, a folder of chunk files), or the ``distance_name`` attribute of a chunk
file's entry. The bare value serves one distance only (one file, one EDF folder, or the chunk files of one
``distance_name``). The readers (:func:`~xnh_stream.io.nxtomo.read_geometry`,
:func:`~xnh_stream.io.sources.edf_geometry`) call :func:`supplied_z1_for` only where a file states neither z1
nor its sample-plane equivalent: a file's own geometry always wins (a supplied value that disagrees with it by
more than 1 % is warned about).

The table is process-wide (the command line's readers run in the driver process, some in a watcher thread):
:func:`supplying_z1` installs it for the duration of a command. :func:`token` names the installed table, so
that caches of inspected files (:data:`xnh_stream.ingest.watch.VIEWS`) do not serve a view read with another.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SUPPLIED_FIELD", "SuppliedZ1", "parse_z1", "supplied_z1_for", "supplying_z1", "token"]

#: The field named when a supplied z1 cannot be used (the field it stands in for).
SUPPLIED_FIELD = "instrument/source/distance"
#: Sanity bounds of a focus-to-sample distance in metres (XNH: 1 mm to 1 m; the bounds leave room).
Z1_RANGE_M = (1e-6, 100.0)


@dataclass(frozen=True)
class SuppliedZ1:
    """The z1 values of a command line.

    Attributes
    ----------
    by_name : dict of str to float
        z1 in metres per distance name (``--z1 NAME=METRES``).
    default_m : float or None
        z1 in metres for the one distance not named (``--z1 METRES``).
    """

    by_name: dict[str, float] = field(default_factory=dict)
    default_m: float | None = None
    _default_users: set[str] = field(default_factory=set, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.by_name) or self.default_m is not None

    def describe(self) -> str:
        """The values as the command line gives them, e.g. ``--z1 scan_1_=0.0125 --z1 scan_2_=0.013``."""
        parts = [f"--z1 {k}={v:g}" for k, v in sorted(self.by_name.items())]
        if self.default_m is not None:
            parts.append(f"--z1 {self.default_m:g}")
        return " ".join(parts)

    def lookup(self, path: str | Path, name: str | None = None, default: bool = True) -> tuple[float, str] | None:
        """The z1 for a file (or an EDF distance folder) and the flag that gave it, or None.

        Parameters
        ----------
        path : str or Path
            The file, or an EDF distance folder.
        name : str, optional
            The distance name the file states (a chunk file's ``distance_name``).
        default : bool
            Whether the bare ``--z1 METRES`` may serve the file (False: only a value given for its name).

        Raises
        ------
        InputError
            When the bare ``--z1 METRES`` would serve two distances (their frames would be taken as one).
        """
        path = Path(path)
        names = [n for n in (name, path.stem, path.name, path.parent.name) if n]
        for n in names:
            if n in self.by_name:
                return self.by_name[n], f"--z1 {n}={self.by_name[n]:g}"
        if self.default_m is None or not default:
            return None
        who = name or path.stem  # the distance: the file (or EDF folder), or the name a chunk file states
        with self._lock:
            others = sorted(self._default_users - {who})
            if others:
                from .nxtomo import InputError  # noqa: PLC0415 - nxtomo imports this module

                raise InputError(path, f"--z1 {self.default_m:g} names no distance, and the distances {others[0]!r} "
                                 f"and {who!r} both lack z1 (their frames would be taken as one distance): give one "
                                 f"per distance, --z1 {others[0]}=METRES --z1 {who}=METRES", SUPPLIED_FIELD)
            self._default_users.add(who)
        return self.default_m, f"--z1 {self.default_m:g}"


def parse_z1(values: Sequence[str] | None) -> SuppliedZ1:
    """The table of ``--z1`` values (``NAME=METRES`` or one bare ``METRES``).

    Raises
    ------
    ValueError
        For a value that is not a number of metres in range, a name given twice, or two bare values.
    """
    by_name: dict[str, float] = {}
    default: float | None = None
    for raw in values or ():
        text = str(raw).strip()
        name, sep, number = text.rpartition("=")
        name = name.strip()
        if sep and not name:
            raise ValueError(f"--z1 {text}: the distance name before '=' is empty (expected NAME=METRES)")
        try:
            z1 = float(number)
        except ValueError:
            raise ValueError(f"--z1 {text}: {number.strip()!r} is not a number of metres (expected NAME=METRES, "
                             "e.g. scan_1_=0.0125, or METRES alone for a one-distance scan)") from None
        if not (math.isfinite(z1) and Z1_RANGE_M[0] <= abs(z1) <= Z1_RANGE_M[1]):
            raise ValueError(f"--z1 {text}: {z1:g} m is not a focus-to-sample distance (expected metres, between "
                             f"{Z1_RANGE_M[0]:g} and {Z1_RANGE_M[1]:g}; e.g. 0.0125 for 12.5 mm)")
        z1 = abs(z1)  # NXtomo writes the source upstream, at a negative position
        if not sep:
            if default is not None:
                raise ValueError(f"--z1 {default:g} and --z1 {z1:g}: only one value may go without a distance name; "
                                 "name the distances: --z1 NAME=METRES")
            default = z1
        elif name in by_name:
            raise ValueError(f"--z1 {name}= is given twice ({by_name[name]:g} and {z1:g} m)")
        else:
            by_name[name] = z1
    return SuppliedZ1(by_name, default)


_INSTALLED: SuppliedZ1 | None = None


def supplied_z1_for(path: str | Path, name: str | None = None, default: bool = True) -> tuple[float, str] | None:
    """The supplied z1 for a file or EDF distance folder and the flag that gave it (:meth:`SuppliedZ1.lookup`),
    or None when no ``--z1`` applies."""
    table = _INSTALLED
    return table.lookup(path, name, default) if table else None


def token() -> tuple:
    """What names the installed table (the same ``--z1`` values give the same token; none gives ``()``)."""
    table = _INSTALLED
    if not table:
        return ()
    return (tuple(sorted(table.by_name.items())), table.default_m)


@contextlib.contextmanager
def supplying_z1(table: SuppliedZ1 | None) -> Iterator[None]:
    """Install ``table`` for every reader of this process within the block (the previous one after it)."""
    global _INSTALLED
    previous, _INSTALLED = _INSTALLED, (table if table else None)
    try:
        yield
    finally:
        _INSTALLED = previous
