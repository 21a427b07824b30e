"""The work folder of a final pass: what each step has finished, so that a killed run resumes.

``OUT/work/`` holds

* ``spec.json``: what the work is for (the frames of the scan, the options, the format number). A run
  whose spec differs (another scan in the same output, other options) starts the work afresh. How the
  work is cut is not in it: a stage whose units depend on the cut names its markers after it
  (``phase_b16``, ``slab_r8``), so a run with another cut redoes only those stages;
* ``results/<step>.pkl``: the result of each driver-side step (calibration, alignment, rotation axis,
  envelope ...), written atomically (temporary file, then rename);
* ``done/<stage>/<key>.json``: a marker per finished unit of a distributed step (a batch of angles, a
  slab of rows), written after the unit's data, with what the driver needs to know of it;
* the large intermediate arrays (phase-retrieved projections, the volume being written).

A unit whose marker exists is never redone; a unit without one is redone from the start (its data may
be half written, and writing it again gives the same bytes).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Format of the work folder: a folder written by another format is started afresh.
WORK_FORMAT = 1


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
    """

    def __init__(self, path: str | Path, spec: dict[str, Any]) -> None:
        self.path = Path(path)
        spec = {"format": WORK_FORMAT, **spec}
        spec_file = self.path / "spec.json"
        text = json.dumps(spec, sort_keys=True, default=str)
        if spec_file.exists():
            try:
                old = spec_file.read_text()
            except OSError:
                old = ""
            if old != text:
                log.warning("%s holds the work of another scan or other options: starting afresh", self.path)
                shutil.rmtree(self.path)
            else:
                log.info("resuming the work in %s", self.path)
        self.resumed = spec_file.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if not spec_file.exists():
            _atomic_write(spec_file, text.encode())

    # ------------------------------------------------------------------ driver-side results
    def has(self, name: str) -> bool:
        """A result called ``name`` was saved."""
        return (self.path / "results" / f"{name}.pkl").exists()

    def save(self, name: str, value: Any) -> None:
        """Save a step's result."""
        _atomic_write(self.path / "results" / f"{name}.pkl", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, name: str) -> Any:
        """A saved result."""
        return pickle.loads((self.path / "results" / f"{name}.pkl").read_bytes())

    # ------------------------------------------------------------------ unit markers
    def _marker(self, stage: str, key: str) -> Path:
        return self.path / "done" / stage / f"{key}.json"

    def mark(self, stage: str, key: str, payload: Any = None) -> None:
        """Record that unit ``key`` of ``stage`` is finished (after its data are written)."""
        _atomic_write(self._marker(stage, key), json.dumps(payload).encode())

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
        """Delete the work folder (after the outputs are complete)."""
        shutil.rmtree(self.path, ignore_errors=True)
