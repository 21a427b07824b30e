"""Frame sources: turn detector files into :class:`FrameRecord` s, never reading a file half-written.

Two input layouts (``docs/contracts.md``, "Input"):

**NXtomo** (``*.nx``, ``*.nxs``, ``*.h5``, ``*.hdf5``): whole files, one per distance, or a growing series
of chunk files per distance while a scan runs. Files are opened read-only without HDF5 file locking
(``h5py.File(p, "r", locking=False)``: detector writers hold the lock while they write). The file size is
never used: detector writers pre-allocate chunk files. Rules, for the first NXtomo entry of the file:

- *written frames*: frame ``i`` is fully written when it has an entry in every per-frame dataset
  (``image_key``, ``image_key_control`` when present, ``rotation_angle``, ``count_time`` when per frame)
  and that entry is not the dataset's fill value when the fill value is not a legal value (NaN for
  angles and times, a key outside -1..3: a dataset is extended before its new entry is written).
  Writers store the pixels of a frame before its keys, so a frame with all its keys has its data; a
  pre-allocated ``data`` longer than the keys holds frames not written yet. Only written frames are
  exposed (``FileView.n_available``), so a growing file can be followed frame by frame.
- *complete*: ``end_time`` is present, or the entry attribute ``expected_frames`` is stated and that
  many frames are written (and ``data`` holds exactly that many). A file that states neither is complete
  once every allocated frame is written (keys as long as ``data``) *and* the file has stopped changing;
  that last condition is for the caller to judge (:class:`~xnh_stream.ingest.watch.FolderWatcher`
  waits ``settle_s``): ``FileView.consistent`` says the first half.
- whenever keys and data agree in length the whole file is validated by
  :func:`xnh_stream.io.nxtomo.read_nxtomo` (units, geometry, key values); a file still being written is
  read with the same field paths and unit rules, limited to its written frames.

Chunk files may carry entry attributes written by :mod:`xnh_stream.simulate.stream`:
``expected_frames`` (frames of this file), ``frame_offset`` (position of its first frame in the distance's
acquisition), ``distance_frames`` (frames of the whole distance, all chunks) and ``distance_name``.

**Legacy ID16A EDF** (spec / PyHST layout, as read by ESRF's ``tomoscan.EDFTomoScan``): one folder per
distance, named after the scan (``NAME_1_``, ``NAME_2_`` ...), holding

- projections ``{prefix}NNNN.edf`` (``prefix`` = ``Prefix`` of the ``.info`` file, else the ``.info``
  file's stem, else the folder name), or ``{prefix}_NNNN.edf`` as tomoscan's ``MockEDF`` names them;
  numbers ``>= TOMO_N`` are the return (alignment) projections taken at the end;
- flats ``refJJJJ_PPPP.edf`` (raw: frame J of the series taken at projection P) or ``refHSTPPPP.edf``
  (the series already averaged); darks ``darkendPPPP.edf`` (raw) or ``dark.edf`` / ``darkHST*.edf``
  (averaged). spec writes a raw dark series as one frame holding the sum of ``DARK_N`` exposures (the
  camera's accumulation mode): such a frame is divided by ``DARK_N`` (:meth:`EdfFolder.dark_scale`);
  a multi-frame file, or one file per exposure, holds single exposures. When raw files of a kind are
  present the averaged ones are ignored (they are derived from them). Any other ``.edf`` file is skipped
  with a warning naming it (once), except reconstructed slices (``*_slice_*``);
- ``{prefix}.info``: ``Key= value`` lines with ``TOMO_N``, ``ScanRange`` (degree), ``REF_N``,
  ``REF_ON``, ``DARK_N``, ``Dim_1``, ``Dim_2``, ``Energy`` (keV), ``PixelSize`` (detector pixel, um),
  ``Distance`` (sample to detector, mm), ``Count_time`` (s); ``{prefix}.xml`` (``acquisition/<Key>``)
  is written at the end of the acquisition and ``{prefix}.abo`` when it was aborted.

The rotation angle of a frame is the ``srot`` motor of its EDF header (``motor_mne`` / ``motor_pos``);
without it, projection ``i`` is at ``i * ScanRange / TOMO_N`` and return projection ``TOMO_N + j`` at
``ScanRange - 90 j`` (the return images every 90 degrees back to 0). The layout does not record the
focus-to-sample distance z1: it comes from a sidecar ``xnh.yaml`` (see :func:`edf_geometry`). A frame of an
EDF file is written when all its bytes are in the file (``EDF_HeaderSize + EDF_BinarySize`` per frame from
its header: fabio would pad a truncated frame with zeros). An EDF file is consistent when every frame its
headers announce is written and nothing follows the last one; it is complete when consistent and the
acquisition has finished (``.xml`` or ``.abo``), or when consistent and unchanged for a while (the caller
judges, as for NXtomo files: spec may append frames to a multi-frame dark file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fabio
import h5py
import numpy as np
import yaml

from ..physics.geometry import DistanceGeometry
from .ids import file_id_of
from .nxtomo import (
    DARK,
    FIELDS,
    FLAT,
    INVALID,
    NOT_NXTOMO,
    PROJECTION,
    RETURN,
    InputError,
    entry_text,
    find_entry,
    frame_problem,
    open_hdf5,
    raw_problem,
    read_geometry,
    read_nxtomo,
    scale_field,
    shape_problem,
)
from .z1 import supplied_z1_for

#: Entry attributes of NXtomo chunk files (all optional).
EXPECTED_FRAMES_ATTR = "expected_frames"
FRAME_OFFSET_ATTR = "frame_offset"
DISTANCE_FRAMES_ATTR = "distance_frames"
DISTANCE_NAME_ATTR = "distance_name"

HDF5_SUFFIXES = frozenset({".nx", ".nxs", ".h5", ".hdf5"})
EDF_SUFFIX = ".edf"
#: Sidecar with what the EDF layout does not record (z1), in a distance folder or its parent.
SIDECAR_NAME = "xnh.yaml"
#: Keys a sidecar may hold (SI units, angles in degree).
SIDECAR_KEYS = frozenset({"z1_m", "z2_m", "focus_detector_m", "pixel_m", "energy_kev", "tomo_n",
                          "scan_range_deg", "count_time_s", "rotation_motor", "distances"})
_SIGNATURE_BYTES = 1 << 16
log = logging.getLogger(__name__)


class NotAFrameFile(Exception):
    """A file in the watched tree that holds no frames (truth file, master file, reduced EDF beside raw).

    ``final`` is True when the name alone decides it (no need to wait for the file to settle).
    """

    def __init__(self, path: str | Path, reason: str, final: bool = False) -> None:
        self.path, self.reason, self.final = str(path), reason, final
        super().__init__(f"{path}: {reason}")


def distance_key(z1_m: float) -> float:
    """Key that groups the files of one distance: focus-to-sample distance in metres, rounded to 0.1 um."""
    return round(float(z1_m), 7)


@dataclass(frozen=True)
class FrameRecord:
    """One detector frame found on disk (small and picklable; the pixels are read on demand).

    Attributes
    ----------
    path : str
        The file holding the frame.
    index : int
        Frame index in the file.
    frame_id : str
        Stable id ``relative/path#index`` (the journal's key).
    distance_key : float
        Focus-to-sample distance z1 in metres, rounded (:func:`distance_key`): groups one distance's files.
    distance_name : str
        The distance as the layout names it (distance folder, file stem, or ``distance_name`` attribute).
    image_key, image_key_control : int
        NXtomo keys: 0 projection, 1 flat, 2 dark, 3 invalid; control -1 for return projections.
    rotation_angle_deg, count_time_s : float
        Rotation angle (degree) and exposure (s, NaN when not recorded).
    sequence : float
        Acquisition position within the distance, in frames (NXtomo: ``frame_offset`` + index; EDF: the
        projection number the frame was taken at). Orders frames and interpolates flats.
    geometry : DistanceGeometry
        Geometry of the frame's distance.
    frame_shape : tuple of int
        ``(ny, nx)``.
    layout : str
        ``"nxtomo"`` or ``"edf"``: the reader of its pixels (:func:`xnh_stream.io.formats.format_of`).
    entry : str or None
        HDF5 entry (NXtomo only).
    scale : float
        Factor applied to the stored pixels: ``1 / DARK_N`` for a dark that spec stored as the sum of
        ``DARK_N`` exposures (see :class:`EdfFolder`), else 1.
    """

    path: str
    index: int
    frame_id: str
    distance_key: float
    distance_name: str
    image_key: int
    image_key_control: int
    rotation_angle_deg: float
    count_time_s: float
    sequence: float
    geometry: DistanceGeometry
    frame_shape: tuple[int, int]
    layout: str
    entry: str | None = None
    scale: float = 1.0

    @property
    def is_projection(self) -> bool:
        """A regular projection (not a return projection)."""
        return self.image_key == PROJECTION and self.image_key_control == PROJECTION

    @property
    def is_return(self) -> bool:
        """A return / alignment projection (image_key_control -1)."""
        return self.image_key_control == RETURN

    def read(self, retry_s: float = 2.0) -> np.ndarray:
        """The frame's pixels as float32 ``[ny, nx]``.

        Parameters
        ----------
        retry_s : float
            A file another process is still writing can fail to open for a moment (its HDF5 end-of-file
            moves while the writer flushes). Opening and reading are retried for this long before the
            error is final; a problem with the pixels themselves is not retried.

        Raises
        ------
        InputError
            Naming the file and the frame when it cannot be read or is unusable (wrong shape, NaN or
            inf values, all zero: :func:`xnh_stream.io.nxtomo.frame_problem`).
        """
        from .formats import format_of  # noqa: PLC0415 - the formats are built on this module

        reader = format_of(self.layout)
        deadline = time.monotonic() + retry_s
        delay = 0.005
        while True:
            try:
                frame, fld = reader.read(Path(self.path), self.entry, self.index)
                break
            except InputError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.2)
        problem = frame_problem(frame, self.frame_shape)
        if problem:
            raise InputError(self.path, f"frame {self.index}: {problem}", fld)
        if self.scale != 1.0:
            frame *= np.float32(self.scale)
        return frame


def read_nxtomo_frame(path: Path, entry: str | None, index: int) -> np.ndarray:
    """Frame ``index`` of an NXtomo file's entry (the first NXtomo entry when None), float32; an
    :class:`InputError` naming the file when it cannot be read or holds no usable pixels."""
    with open_hdf5(path) as f:
        try:
            ds = f[entry][FIELDS["data"]] if entry else f[find_entry(path, f, None)][FIELDS["data"]]
            if not 0 <= index < ds.shape[0]:
                raise InputError(path, f"frame {index} does not exist (the file holds {ds.shape[0]})",
                                 FIELDS["data"])
            raw = np.asarray(ds[index])
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(path, f"frame {index} cannot be read: {exc}", FIELDS["data"]) from exc
    problem = raw_problem(raw)
    if problem:
        raise InputError(path, f"frame {index}: {problem}", FIELDS["data"])
    return raw.astype(np.float32)


@dataclass
class FileView:
    """What a file holds at the moment it was inspected.

    Attributes
    ----------
    path : Path
        The file.
    layout : str
        ``"nxtomo"`` or ``"edf"``.
    n_frames : int
        Frames the file holds or has allocated.
    n_available : int
        Frames fully written: :meth:`record` works for ``0 <= i < n_available``.
    complete : bool
        The file is finished (see the module rules); it will hold no more frames.
    consistent : bool
        Every allocated frame is written (``n_available == n_frames``). A file that is consistent and has
        stopped changing is complete even without ``end_time`` or a stated count.
    expected : int or None
        Frames the file states it will hold.
    distance_frames : int or None
        Frames the whole distance will hold (all files), when stated.
    signature : str or None
        Content fingerprint (same content under another name gives the same signature); None until a
        frame is written.
    frame_scale : float
        :attr:`FrameRecord.scale` of the file's frames.
    """

    path: Path
    layout: str
    n_frames: int
    n_available: int
    complete: bool
    consistent: bool
    expected: int | None
    distance_frames: int | None
    signature: str | None
    geometry: DistanceGeometry
    frame_shape: tuple[int, int]
    distance_name: str
    entry: str | None
    image_key: np.ndarray
    image_key_control: np.ndarray
    rotation_angle_deg: np.ndarray
    count_time_s: np.ndarray
    sequence: np.ndarray
    file_id: str = ""
    shape_field: str = field(default=FIELDS["data"])
    frame_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.file_id:
            self.file_id = file_id_of(self.path)

    @property
    def distance_key(self) -> float:
        """:func:`distance_key` of this file's geometry."""
        return distance_key(self.geometry.z1_m)

    def record(self, i: int) -> FrameRecord:
        """The record of written frame ``i``."""
        if not 0 <= i < self.n_available:
            raise IndexError(f"frame {i} of {self.path} is not available ({self.n_available} written)")
        return FrameRecord(
            path=str(self.path), index=int(i), frame_id=f"{self.file_id}#{int(i)}",
            distance_key=self.distance_key, distance_name=self.distance_name,
            image_key=int(self.image_key[i]), image_key_control=int(self.image_key_control[i]),
            rotation_angle_deg=float(self.rotation_angle_deg[i]), count_time_s=float(self.count_time_s[i]),
            sequence=float(self.sequence[i]), geometry=self.geometry, frame_shape=self.frame_shape,
            layout=self.layout, entry=self.entry, scale=self.frame_scale)

    def records(self, start: int = 0) -> list[FrameRecord]:
        """Records of the written frames from ``start`` on."""
        return [self.record(i) for i in range(start, self.n_available)]


def _sha(*parts: object) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- NXtomo


def inspect_nxtomo(path: str | Path, root: str | Path | None = None, signature: bool = True) -> FileView:
    """Inspect an NXtomo file, whole or still being written (rules in the module docstring).

    ``signature=False`` skips reading frame 0 for the content fingerprint (when the caller has it already).

    Raises
    ------
    NotAFrameFile
        For an HDF5 file with no NXtomo entry (truth file, master file). A file still being written may
        look like this until its entry exists: the caller waits for it to settle before ignoring it.
    InputError
        For a file that cannot be opened (truncated, or being created) or holds bad metadata.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        try:
            name = find_entry(path, f, None)
        except InputError as exc:
            if exc.problem.startswith(NOT_NXTOMO):
                raise NotAFrameFile(path, exc.problem) from exc
            raise
        e = f[name]
        data = e.get(FIELDS["data"])
        if not isinstance(data, h5py.Dataset):
            raise InputError(path, "is not a dataset", FIELDS["data"])
        if data.ndim != 3:
            raise InputError(path, f"must be 3-D [n, ny, nx], has shape {data.shape}", FIELDS["data"])
        n_data = int(data.shape[0])
        end_time = entry_text(e, "end_time")
        problem = shape_problem(data.shape[1:])
        if problem:
            raise InputError(path, problem, FIELDS["data"])
        if n_data == 0 and end_time is not None:
            raise InputError(path, "holds no frame, yet the file is finished (end_time)", FIELDS["data"])
        attrs = dict(e.attrs)
        expected = _int_attr(attrs.get(EXPECTED_FRAMES_ATTR))
        offset = float(attrs.get(FRAME_OFFSET_ATTR, 0) or 0)
        distance_frames = _int_attr(attrs.get(DISTANCE_FRAMES_ATTR))
        dname = attrs.get(DISTANCE_NAME_ATTR)
        dname = dname.decode() if isinstance(dname, bytes) else (str(dname) if dname is not None else path.stem)

        if FIELDS["image_key"] not in e:
            raise InputError(path, "required field is missing", FIELDS["image_key"])
        if FIELDS["rotation_angle"] not in e:
            raise InputError(path, "required field is missing", FIELDS["rotation_angle"])
        ik, m_ik = _per_frame(path, e, "image_key", n_data)
        ikc, m_ikc = (_per_frame(path, e, "image_key_control", n_data) if FIELDS["image_key_control"] in e
                      else (ik, m_ik))
        angles, m_ang = _per_frame(path, e, "rotation_angle", n_data, scaled=True)
        count, m_ct = (_per_frame(path, e, "count_time", n_data, scaled=True) if FIELDS["count_time"] in e
                       else (np.full(n_data, np.nan), n_data))
        m = int(min(n_data, m_ik, m_ikc, m_ang, m_ct))
        start_time = entry_text(e, "start_time")
        complete = end_time is not None or (expected is not None and m >= expected and n_data == expected)
        consistent = m == n_data
        if end_time is not None and not consistent:
            raise InputError(path, f"has end_time but only the first {m} of its {n_data} frames have every "
                             "per-frame entry (image_key, image_key_control, rotation_angle, count_time: "
                             "missing, NaN, or the fill value)", FIELDS["image_key"])
        frame0 = np.asarray(data[0]).tobytes() if (m >= 1 and signature) else None
        shape = (int(data.shape[1]), int(data.shape[2]))
        dtype = str(data.dtype)
        if consistent:
            scan = read_nxtomo(path, entry=name)  # authoritative validation of the whole file
            geometry = scan.geometry
            ik, ikc, angles, count = (scan.image_key, scan.image_key_control, scan.rotation_angle_deg,
                                      scan.count_time_s)
        else:
            geometry = _partial_geometry(path, e)
            ik, ikc = ik[:m].astype(np.int64), ikc[:m].astype(np.int64)
            bad = ~np.isin(ik, [PROJECTION, FLAT, DARK, INVALID])
            if bad.any():
                raise InputError(path, f"unknown values {sorted(set(ik[bad].tolist()))} (expected 0, 1, 2, 3)",
                                 FIELDS["image_key"])
    sig = None
    if frame0 is not None:
        sig = _sha("nxtomo", name, start_time, shape, dtype, geometry, offset, int(ik[0]),
                         float(angles[0]), hashlib.sha1(frame0).digest())
    return FileView(
        path=path, layout="nxtomo", n_frames=n_data, n_available=m, complete=complete, consistent=consistent,
        expected=expected, distance_frames=distance_frames, signature=sig, geometry=geometry,
        frame_shape=shape, distance_name=dname, entry=name, image_key=np.asarray(ik[:m]),
        image_key_control=np.asarray(ikc[:m]), rotation_angle_deg=np.asarray(angles[:m], dtype=float),
        count_time_s=np.asarray(count[:m], dtype=float), sequence=offset + np.arange(m, dtype=float),
        file_id=file_id_of(path, root))


def _per_frame(path: Path, e: h5py.Group, key: str, n_data: int, scaled: bool = False) -> tuple[np.ndarray, int]:
    """Values of a per-frame field (unit-scaled) and how many leading entries are written.

    One value stands for every frame only when stored as a fixed scalar: a dataset that can grow is per
    frame however short it is now. An entry still equal to the dataset's fill value, when that value is
    not a legal one (NaN for angles and times, a key outside 0..3 and -1), is not written yet: h5py
    extends a dataset and then writes the new entry, and a reader in between sees the fill value.
    """
    ds = e[FIELDS[key]]
    try:
        values = np.ravel(np.asarray(ds[()], dtype=np.float64 if scaled else np.int64))
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"is not numeric ({exc})", FIELDS[key]) from exc
    fixed = ds.ndim == 0 or (ds.maxshape is not None and ds.maxshape[0] is not None)
    if values.size == 1 and n_data != 1 and fixed:
        values = np.full(n_data, values[0])
    if scaled:
        values = scale_field(path, ds, key, values)
        unwritten = ~np.isfinite(values)
    else:
        try:
            fill = int(ds.fillvalue)
        except (TypeError, ValueError):
            fill = 0
        legal = (PROJECTION, FLAT, DARK, INVALID, RETURN)
        unwritten = values == fill if fill not in legal else np.zeros(values.shape, bool)
    bad = np.flatnonzero(unwritten)
    return values, int(bad[0]) if bad.size else int(values.size)


def _int_attr(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(np.ravel(v)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _partial_geometry(path: Path, e: h5py.Group) -> DistanceGeometry:
    """Geometry of a file still being written (:func:`~xnh_stream.io.nxtomo.read_geometry`, as for whole files)."""
    try:
        return read_geometry(path, e)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(path, str(exc), FIELDS["source_distance"]) from exc


# ------------------------------------------------------------------------------------------------- EDF

_RAW_FLAT = re.compile(r"^ref(\d+)_(\d+)\.edf$")
_REDUCED_FLAT = re.compile(r"^refHST(\d+)\.edf$")
_RAW_DARK = re.compile(r"^darkend(\d+)\.edf$")
_REDUCED_DARK = re.compile(r"^dark(?:HST)?(\d*)\.edf$")


#: Names of derived EDF outputs (PyHST / nabu slices) found beside frames: skipped without a warning.
_DERIVED = re.compile(r"_slice_|_pag_|^(?:recons|vol)", re.IGNORECASE)
_UNPLACED: set[str] = set()


def _warn_unplaced(path: Path, reason: str) -> None:
    """Warn once per file about an EDF file the layout cannot place (it is skipped)."""
    key = str(path)
    if key not in _UNPLACED:
        _UNPLACED.add(key)
        log.warning("%s: skipped: %s", path, reason)


def _parse_info(path: Path) -> dict[str, str]:
    """``Key= value`` lines of a spec ``.info`` file, keys lower-cased (``#`` starts a comment)."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0]
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def _parse_xml(path: Path) -> dict[str, str]:
    """``acquisition/<Key>`` elements of the end-of-acquisition ``.xml`` file, keys lower-cased."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return {}
    acq = root.find("acquisition") if root.tag != "acquisition" else root
    if acq is None:
        return {}
    return {child.tag.lower(): (child.text or "").strip() for child in acq}


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot be read as YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, "must be a mapping of keys to values")
    unknown = set(data) - SIDECAR_KEYS
    if unknown:
        raise InputError(path, f"unknown key(s) {sorted(unknown)} (known: {sorted(SIDECAR_KEYS)})",
                         min(unknown))
    return data


def _number(source: Path, key: str, value: Any, kind: type = float) -> float:
    try:
        v = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(source, f"is not a number: {value!r}", key) from exc
    if not np.isfinite(v):
        raise InputError(source, f"is not finite: {value!r}", key)
    return v


@dataclass
class EdfScanInfo:
    """What an EDF distance folder states about its acquisition (from ``.info``, ``.xml`` and sidecars)."""

    folder: Path
    prefix: str
    geometry: DistanceGeometry
    tomo_n: int
    scan_range_deg: float | None
    dark_n: int | None
    ref_n: int | None
    frame_shape: tuple[int, int] | None
    count_time_s: float
    rotation_motor: str
    info_file: Path | None


def edf_geometry(folder: str | Path) -> EdfScanInfo:
    """Geometry and acquisition parameters of one EDF distance folder.

    Sources, later ones overriding earlier ones: ``{prefix}.xml`` (``acquisition/<Key>``), ``{prefix}.info``
    (``Energy`` keV, ``PixelSize`` um, ``Distance`` mm = z2, ``TOMO_N``, ``ScanRange`` degree, ``DARK_N``,
    ``REF_N``, ``Dim_1``, ``Dim_2``, ``Count_time`` s), the scan folder's ``xnh.yaml`` (top-level keys,
    then ``distances: {FOLDER_NAME: {...}}``), the distance folder's ``xnh.yaml``. Sidecar keys are SI:
    ``z1_m`` (required: the layout does not record it), ``z2_m`` or ``focus_detector_m`` (z2 = focus_detector
    - z1), ``pixel_m``, ``energy_kev``, ``tomo_n``, ``scan_range_deg``, ``count_time_s``, ``rotation_motor``.
    Where no sidecar gives ``z1_m``, the command line's ``--z1 FOLDER_NAME=METRES`` does
    (:mod:`xnh_stream.io.z1`).

    Raises
    ------
    InputError
        Naming the ``.info`` file (or the folder) and the missing or bad field, with where to give it.
    """
    folder = Path(folder)
    info_candidates = sorted(folder.glob("*.info"))
    preferred = folder / f"{folder.name}.info"
    info_file = preferred if preferred.exists() else (info_candidates[0] if info_candidates else None)
    info = _parse_info(info_file) if info_file else {}
    prefix = info.get("prefix") or (info_file.stem if info_file else folder.name)
    xml_file = folder / f"{prefix}.xml"
    xml = _parse_xml(xml_file) if xml_file.exists() else {}
    where = info_file or folder
    side: dict[str, Any] = {}
    side_src: dict[str, Path] = {}
    root_sidecar = folder.parent / SIDECAR_NAME
    if root_sidecar.exists():
        top = _read_sidecar(root_sidecar)
        per = top.pop("distances", None) or {}
        if not isinstance(per, dict):
            raise InputError(root_sidecar, "must map distance folder names to mappings", "distances")
        for k, v in top.items():
            side[k], side_src[k] = v, root_sidecar
        mine = per.get(folder.name) or {}
        if not isinstance(mine, dict):
            raise InputError(root_sidecar, f"entry for {folder.name!r} must be a mapping", "distances")
        bad = set(mine) - (SIDECAR_KEYS - {"distances"})
        if bad:
            raise InputError(root_sidecar, f"unknown key(s) {sorted(bad)} under distances/{folder.name}",
                             min(bad))
        for k, v in mine.items():
            side[k], side_src[k] = v, root_sidecar
    local_sidecar = folder / SIDECAR_NAME
    if local_sidecar.exists():
        for k, v in _read_sidecar(local_sidecar).items():
            if k == "distances":
                raise InputError(local_sidecar, "'distances' belongs in the scan folder's xnh.yaml", k)
            side[k], side_src[k] = v, local_sidecar
    hint = f"{local_sidecar} (or under 'distances: {folder.name}:' in {root_sidecar})"

    def stated(info_key: str) -> tuple[Path, str] | None:
        if info_key in info:
            return where, info[info_key]
        if info_key in xml:
            return xml_file, xml[info_key]
        return None

    def value(side_key: str, info_key: str | None, scale: float, what: str, kind: type = float,
              required: bool = True) -> float | None:
        if side_key in side:
            return _number(side_src[side_key], side_key, side[side_key], kind)
        if info_key is not None and (s := stated(info_key)) is not None:
            v = _number(s[0], info_key, s[1], kind)
            return v * scale if kind is float else v
        if not required:
            return None
        src = f"'{info_key}' in the .info file or " if info_key else ""
        raise InputError(where, f"missing {what}: give {src}'{side_key}' in {hint}",
                         side_key if info_key is None else info_key)

    def stated_int(info_key: str) -> int | None:
        s = stated(info_key)
        return int(_number(s[0], info_key, s[1], int)) if s is not None else None

    energy = value("energy_kev", "energy", 1.0, "photon energy (keV)")
    pixel = value("pixel_m", "pixelsize", 1e-6, "detector pixel size")
    supplied = supplied_z1_for(folder) if "z1_m" not in side else None
    z1 = supplied[0] if supplied is not None else value(
        "z1_m", None, 1.0, "focus-to-sample distance z1 (the EDF layout does not record it; or give "
        f"--z1 {folder.name}=METRES)")
    if "z2_m" in side:
        z2 = _number(side_src["z2_m"], "z2_m", side["z2_m"])
    elif "focus_detector_m" in side:
        z2 = _number(side_src["focus_detector_m"], "focus_detector_m", side["focus_detector_m"]) - z1
    else:
        z2 = value("z2_m", "distance", 1e-3, "sample-to-detector distance z2")
    tomo_n = value("tomo_n", "tomo_n", 1, "number of projections TOMO_N", kind=int)
    scan_range = value("scan_range_deg", "scanrange", 1.0, "angular range", required=False)
    count = value("count_time_s", "count_time", 1.0, "exposure", required=False)
    d1, d2 = stated_int("dim_1"), stated_int("dim_2")
    dark_n, ref_n = stated_int("dark_n"), stated_int("ref_n")
    try:
        geometry = DistanceGeometry(float(z1), float(z2), float(pixel), float(energy))
    except ValueError as exc:
        raise InputError(where, f"bad geometry ({exc}); check {hint}", "z1_m") from exc
    if pixel > 1e-3:
        raise InputError(where, f"pixel size {pixel} m is implausible (PixelSize is in um)", "PixelSize")
    return EdfScanInfo(
        folder=folder, prefix=prefix, geometry=geometry, tomo_n=int(tomo_n),
        scan_range_deg=scan_range, dark_n=dark_n, ref_n=ref_n,
        frame_shape=(int(d2), int(d1)) if d1 and d2 else None,
        count_time_s=float(count) if count is not None else float("nan"),
        rotation_motor=str(side.get("rotation_motor", "srot")), info_file=info_file)


@dataclass
class _EdfName:
    kind: int  # image key
    raw: bool
    number: int  # projection number, or the projection the flat / dark series was taken at
    sub: int = 0  # frame of the series (raw flats)


class EdfFolder:
    """One EDF distance folder: its acquisition parameters and which files are frames.

    Call :meth:`refresh` to re-read the folder (the watcher does it once per poll).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._info: EdfScanInfo | None = None
        self._error: InputError | None = None
        self._stamp: tuple | None = None
        self.names: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Re-list the folder; re-read the metadata files when they changed."""
        try:
            self.names = {e.name for e in os.scandir(self.folder) if e.is_file()}
        except OSError:
            self.names = set()
        stamp = []
        for p in [*sorted(self.folder.glob("*.info")), *sorted(self.folder.glob("*.xml")),
                  self.folder / SIDECAR_NAME, self.folder.parent / SIDECAR_NAME]:
            try:
                st = p.stat()
                stamp.append((str(p), st.st_size, st.st_mtime_ns))
            except OSError:
                pass
        if tuple(stamp) != self._stamp:
            self._stamp = tuple(stamp)
            try:
                self._info, self._error = edf_geometry(self.folder), None
            except InputError as exc:
                self._info, self._error = None, exc
            except OSError as exc:
                self._info, self._error = None, InputError(self.folder, f"metadata cannot be read: {exc}")

    @property
    def info(self) -> EdfScanInfo:
        """The folder's acquisition parameters.

        Raises
        ------
        InputError
            When the geometry is incomplete (naming the file and the field).
        """
        if self._info is None:
            raise self._error or InputError(self.folder, "no acquisition metadata")
        return self._info

    @property
    def prefix(self) -> str:
        """Projection file prefix (``Prefix`` of the .info file, else the folder name)."""
        return self._info.prefix if self._info else self.folder.name

    @property
    def finished(self) -> bool:
        """The acquisition wrote its ``.xml`` (finished) or ``.abo`` (aborted) file."""
        return f"{self.prefix}.xml" in self.names or f"{self.prefix}.abo" in self.names

    @property
    def aborted(self) -> bool:
        """The acquisition was aborted (``.abo`` file)."""
        return f"{self.prefix}.abo" in self.names

    def classify(self, name: str) -> _EdfName | None:
        """What frame file ``name`` is, or None for an EDF file that is not a frame of this layout."""
        if m := _RAW_FLAT.match(name):
            return _EdfName(FLAT, True, int(m.group(2)), int(m.group(1)))
        if m := _REDUCED_FLAT.match(name):
            return _EdfName(FLAT, False, int(m.group(1)))
        if m := _RAW_DARK.match(name):
            return _EdfName(DARK, True, int(m.group(1)))
        if m := _REDUCED_DARK.match(name):
            return _EdfName(DARK, False, int(m.group(1) or 0))
        prefix = self.prefix
        if name.startswith(prefix) and name.endswith(EDF_SUFFIX):
            num = name[len(prefix):-len(EDF_SUFFIX)]
            # ID16A / spec: {prefix}NNNN.edf; tomoscan's MockEDF: {prefix}_NNNN.edf
            num = num[1:] if num.startswith("_") else num
            if num.isdigit():
                return _EdfName(PROJECTION, True, int(num))
        return None

    def dark_scale(self, n_frames: int) -> float:
        """Factor for the frames of a raw dark file (``darkendPPPP.edf``) holding ``n_frames`` frames.

        spec takes the dark series in the camera's accumulation mode: one frame, the sum of ``DARK_N``
        exposures (nxtomomill divides it by ``DARK_N`` too). A file of one frame while ``DARK_N > 1`` and
        fewer than ``DARK_N`` raw dark files are present is such a sum: ``1 / DARK_N``. Several frames in a
        file, or one file per exposure (tomoscan's MockEDF), are single exposures: 1.
        """
        dark_n = self._info.dark_n if self._info else None
        if not dark_n or dark_n <= 1 or n_frames != 1:
            return 1.0
        n_files = sum(1 for n in self.names if _RAW_DARK.match(n))
        return 1.0 / dark_n if n_files < dark_n else 1.0

    def has_raw(self, kind: int) -> bool:
        """Raw files of this kind (flats ``ref*_*``, darks ``darkend*``) are present."""
        pattern = _RAW_FLAT if kind == FLAT else _RAW_DARK
        return any(pattern.match(n) for n in self.names)


def _edf_extents(path: Path) -> tuple[list[dict[str, str]], list[int], int]:
    """Headers of the frames of an EDF file, the byte offset where each frame ends, and the file size."""
    size = path.stat().st_size
    try:
        with fabio.open(str(path)) as im:
            headers = [dict(fr.header) for fr in im.frames()]
    except Exception as exc:  # fabio raises many types on a partial header
        raise InputError(path, f"cannot be read as EDF (truncated, still being written, or not EDF): {exc}") from exc
    ends, pos = [], 0
    for h in headers:
        try:
            pos += int(h["EDF_HeaderSize"]) + int(h["EDF_BinarySize"])
        except (KeyError, ValueError) as exc:
            raise InputError(path, f"EDF header lacks its block sizes: {exc}") from exc
        ends.append(pos)
    return headers, ends, size


def read_edf_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` of an EDF file, float32, once all its bytes are in the file; an :class:`InputError`
    naming the file when it is truncated, cannot be read or holds no usable pixels."""
    headers, ends, size = _edf_extents(path)
    if not 0 <= index < len(headers):
        raise InputError(path, f"frame {index} does not exist (the file holds {len(headers)})", "data")
    if ends[index] > size:
        raise InputError(path, f"frame {index} is truncated ({size} bytes, {ends[index]} needed)", "data")
    try:
        with fabio.open(str(path)) as im:
            fr = im if index == 0 else im.getframe(index)
            raw = np.asarray(fr.data)
    except Exception as exc:  # fabio raises many types on a damaged file
        raise InputError(path, f"frame {index} cannot be read: {exc}", "data") from exc
    problem = raw_problem(raw)
    if problem:
        raise InputError(path, f"frame {index}: {problem}", "data")
    return raw.astype(np.float32)


def _motor(header: dict[str, str], motor: str) -> float | None:
    names = header.get("motor_mne", "").replace(";", " ").split()
    values = header.get("motor_pos", "").replace(";", " ").split()
    if motor in names:
        i = names.index(motor)
        if i < len(values):
            try:
                return float(values[i])
            except ValueError:
                return None
    return None


def inspect_edf(path: str | Path, root: str | Path | None = None, folder: EdfFolder | None = None) -> FileView:
    """Inspect one EDF file of the legacy ID16A layout (rules in the module docstring).

    Parameters
    ----------
    path : str or Path
        The EDF file.
    root : str or Path, optional
        Root for relative frame ids.
    folder : EdfFolder, optional
        The cached context of its distance folder (made and refreshed here if omitted).

    Raises
    ------
    NotAFrameFile
        For an EDF file that is not a frame (reconstructed slices, averaged flats or darks beside raw ones).
    InputError
        For a bad file (unreadable header, wrong frame shape) or a folder whose geometry is incomplete.
    """
    path = Path(path)
    ctx = folder or EdfFolder(path.parent)
    what = ctx.classify(path.name)
    if what is None:
        reason = (f"EDF file that is not a projection ({ctx.prefix}NNNN.edf or {ctx.prefix}_NNNN.edf), flat "
                  "(refJJJJ_PPPP.edf, refHSTPPPP.edf) or dark (darkendPPPP.edf, dark.edf, darkHSTPPPP.edf) of the "
                  "layout")
        if not _DERIVED.search(path.name):
            _warn_unplaced(path, reason)
        raise NotAFrameFile(path, reason, final=True)
    if not what.raw and ctx.has_raw(what.kind):
        kind = "flats" if what.kind == FLAT else "darks"
        raise NotAFrameFile(path, f"averaged {kind} ignored: raw {kind} of the same folder are used", final=True)
    info = ctx.info
    headers, ends, size = _edf_extents(path)
    n = len(headers)
    n_avail = sum(1 for end in ends if end <= size)
    shapes = []
    for h in headers[:n_avail]:
        try:
            shapes.append((int(h["Dim_2"]), int(h["Dim_1"])))
        except (KeyError, ValueError) as exc:
            raise InputError(path, f"EDF header lacks Dim_1 / Dim_2: {exc}", "Dim_1") from exc
    shape = info.frame_shape or (shapes[0] if shapes else None)
    if shape is not None and (problem := shape_problem(shape)):
        raise InputError(path, problem, "Dim_1")
    for i, s in enumerate(shapes):
        if s != shape:
            raise InputError(path, f"frame {i} has shape {s}, the acquisition's is {shape} "
                             f"(Dim_2, Dim_1 of {info.info_file or 'the first frame'})", "Dim_1")
    consistent = n >= 1 and n_avail == n and size == ends[-1]
    complete = consistent and ctx.finished  # else complete once consistent and settled (the caller judges)
    tomo_n, rng = info.tomo_n, info.scan_range_deg
    keys, ctrls, angles, counts, seq = [], [], [], [], []
    for i, h in enumerate(headers[:n_avail]):
        ang = _motor(h, info.rotation_motor)
        ctrl = what.kind
        if what.kind == PROJECTION and what.number >= tomo_n:
            ctrl = RETURN
        if ang is None:
            if rng is None:
                raise InputError(info.info_file or ctx.folder, f"{path.name} has no '{info.rotation_motor}' "
                                 "motor in its header and the angular range is unknown: give 'ScanRange' in the "
                                 f".info file or 'scan_range_deg' in {SIDECAR_NAME}", "ScanRange")
            if ctrl == RETURN:
                ang = max(rng - 90.0 * (what.number - tomo_n), 0.0)
            elif what.kind == DARK:
                ang = 0.0
            else:
                ang = what.number * rng / tomo_n
        ct = h.get("count_time", h.get("Count_time"))
        try:
            ct_v = float(ct) if ct is not None else info.count_time_s
        except ValueError:
            ct_v = info.count_time_s
        keys.append(what.kind)
        ctrls.append(ctrl)
        angles.append(ang)
        counts.append(ct_v)
        seq.append(float(what.number))
    signature = None
    if n_avail >= 1:
        with open(path, "rb") as fh:
            signature = _sha("edf", fh.read(min(ends[0], int(headers[0]["EDF_HeaderSize"]) + _SIGNATURE_BYTES)))
    return FileView(
        path=path, layout="edf", n_frames=n, n_available=n_avail, complete=complete, consistent=consistent,
        expected=None, distance_frames=None, signature=signature, geometry=info.geometry,
        frame_shape=shape or (0, 0), distance_name=ctx.folder.name, entry=None,
        image_key=np.asarray(keys, dtype=np.int64), image_key_control=np.asarray(ctrls, dtype=np.int64),
        rotation_angle_deg=np.asarray(angles, dtype=float), count_time_s=np.asarray(counts, dtype=float),
        sequence=np.asarray(seq, dtype=float), file_id=file_id_of(path, root), shape_field="Dim_1",
        frame_scale=ctx.dark_scale(n) if what.kind == DARK and what.raw else 1.0)


# ------------------------------------------------------------------------------------------- dispatch


def is_candidate(path: str | Path) -> bool:
    """A file name the sources read (HDF5 or EDF), not a hidden or temporary file."""
    name = Path(path).name
    if name.startswith(".") or name.endswith(("~", ".part", ".tmp")):
        return False
    suffix = Path(name).suffix.lower()
    return suffix in HDF5_SUFFIXES or suffix == EDF_SUFFIX


def inspect_file(path: str | Path, root: str | Path | None = None,
                 edf_folder: Callable[[Path], EdfFolder] | None = None, signature: bool = True) -> FileView:
    """Inspect any candidate file (:func:`inspect_nxtomo` or :func:`inspect_edf` by suffix).

    ``edf_folder`` returns the cached :class:`EdfFolder` of a folder (a fresh one is made if omitted).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return inspect_nxtomo(path, root, signature=signature)
    if suffix == EDF_SUFFIX:
        return inspect_edf(path, root, edf_folder(path.parent) if edf_folder else None)
    raise NotAFrameFile(path, f"suffix {suffix!r} is not a frame file", final=True)


def iter_records(path: str | Path, root: str | Path | None = None) -> list[FrameRecord]:
    """Records of every written frame of one complete file (batch use; a file still growing is refused).

    Raises
    ------
    InputError
        If the file is not complete yet, or is bad.
    """
    view = inspect_file(path, root)
    if not (view.complete or view.consistent):
        raise InputError(path, f"is still being written ({view.n_available} of {view.n_frames} frames)")
    return view.records()
