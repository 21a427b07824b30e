"""The errors a command ends with, and the redaction of their text: the standard library only.

:class:`InputError` (a file or folder that cannot be used) and :func:`redact_text` are what the command
line needs before it knows whether there is any work to do; keeping them free of NumPy, h5py and the
quality package lets a command refuse a missing folder or a bad option at once (``xnh-stream process
/nonexistent`` imports none of them). :mod:`xnh_stream.io.nxtomo` and :mod:`xnh_stream.quality.alerts`
export the same objects under their former names.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["InputError", "redact_text"]


class InputError(ValueError):
    """A scan file that cannot be used, with the file and the field that is wrong.

    Parameters
    ----------
    path : str or Path
        The offending file.
    problem : str
        What is wrong, in words a beamline user understands.
    field : str, optional
        The HDF5 path (relative to the entry) of the offending field.
    """

    def __init__(self, path: str | Path, problem: str, field: str | None = None) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path} [{field}]" if field else self.path
        super().__init__(f"{where}: {problem}")


#: The ``user[:password]@`` of a URL anywhere in a text: after ``scheme://``, up to the last ``@`` before the
#: path (a password may hold an unencoded ``@``).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"<>]+)@")


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with the ``user:password@`` of every URL in it replaced by
    ``***@``, as :func:`xnh_stream.quality.alerts.redact_url` does for one URL."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
