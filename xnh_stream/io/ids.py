"""The one identity of a file and of a frame: ``relative/path`` and ``relative/path#index``.

The reader (:mod:`xnh_stream.io.sources`) names each frame it finds with :func:`frame_id_of`; the journal
(:mod:`xnh_stream.state.journal`), the watcher and the report key frames and files by the same strings.
They live here, in the file layer, so that the reader needs nothing of the state layer above it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["file_id_of", "frame_id_of", "split_frame_id"]


def file_id_of(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """Stable id of a file: its path relative to ``root`` (POSIX), or its absolute path outside ``root``.

    Relative ids let a restart find the same keys after the scan folder was moved or mounted elsewhere;
    the path is made absolute without resolving links or touching the disk.

    Parameters
    ----------
    path : str or PathLike
        The file.
    root : str or PathLike, optional
        The scan folder the id is relative to.

    Returns
    -------
    str
        The id (POSIX separators).
    """
    p = Path(os.path.abspath(os.fspath(path)))
    if root is not None:
        try:
            return p.relative_to(Path(os.path.abspath(os.fspath(root)))).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def frame_id_of(path: str | os.PathLike[str], index: int, root: str | os.PathLike[str] | None = None) -> str:
    """The journal key of frame ``index`` of file ``path``: :func:`file_id_of`, ``#``, the index.

    Parameters
    ----------
    path : str or PathLike
        The file.
    index : int
        The frame's position in the file (non-negative).
    root : str or PathLike, optional
        The scan folder the id is relative to.

    Returns
    -------
    str
        ``file_id#index``.

    Raises
    ------
    ValueError
        ``index`` is not a non-negative integer.
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"frame index must be a non-negative int, got {index!r}")
    return f"{file_id_of(path, root)}#{int(index)}"


def split_frame_id(fid: str) -> tuple[str, int | None]:
    """``(path, index)`` of a key made by :func:`frame_id_of` (index None for a key of another form).

    Parameters
    ----------
    fid : str
        A frame id (or a file's entry ``path#file``).

    Returns
    -------
    tuple of (str, int or None)
        The file id and the index.
    """
    path, sep, idx = fid.rpartition("#")
    if sep and idx.isdigit():
        return path, int(idx)
    return fid, None
