"""NXtomo input and output: one HDF5 file per XNH distance, in the layout of ESRF's ``nxtomo`` package.

Fields read (relative to the NXentry, ``entry0000`` by default)::

    instrument/detector/data               [n, ny, nx] frames
    instrument/detector/image_key          0 projection, 1 flat, 2 dark, 3 invalid
    instrument/detector/image_key_control  as image_key, -1 for return (alignment) projections
    instrument/detector/x_pixel_size       detector pixel (units attribute honoured)
    instrument/detector/distance           z2, sample to detector
    instrument/detector/count_time         exposure per frame
    instrument/source/distance             z1, focus to sample (sign ignored: NeXus puts the source upstream)
    instrument/beam/incident_energy        keV
    sample/rotation_angle                  degree
    start_time, end_time                   ISO 8601 strings; end_time marks a finished file

Every problem is raised as :class:`InputError`, naming the file and the field. Files are always opened
read-only and without HDF5 file locking, so a file held open by a detector writer can be inspected.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..physics.geometry import DistanceGeometry, ScanGeometry

PROJECTION, FLAT, DARK, INVALID = 0, 1, 2, 3
RETURN = -1  # image_key_control of return / alignment projections
NOT_NXTOMO = "no NXtomo entry"  # start of the problem text of an HDF5 file that is not a distance file

log = logging.getLogger(__name__)

DETECTOR = "instrument/detector"
FIELDS = {
    "data": f"{DETECTOR}/data",
    "image_key": f"{DETECTOR}/image_key",
    "image_key_control": f"{DETECTOR}/image_key_control",
    "x_pixel_size": f"{DETECTOR}/x_pixel_size",
    "distance": f"{DETECTOR}/distance",
    "count_time": f"{DETECTOR}/count_time",
    "source_distance": "instrument/source/distance",
    "energy": "instrument/beam/incident_energy",
    "rotation_angle": "sample/rotation_angle",
}

_LENGTH = {"m": 1.0, "meter": 1.0, "metre": 1.0, "meters": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6,
           "µm": 1e-6, "micron": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6, "nm": 1e-9}
_ENERGY = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}
_ANGLE = {"degree": 1.0, "degrees": 1.0, "deg": 1.0, "°": 1.0, "rad": 180.0 / np.pi, "radian": 180.0 / np.pi,
          "radians": 180.0 / np.pi}
_TIME = {"s": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


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


def _units(ds: h5py.Dataset) -> str | None:
    u = ds.attrs.get("units", ds.attrs.get("unit"))
    if u is None:
        return None
    if isinstance(u, bytes):
        u = u.decode()
    return str(u).strip()


def _scaled(path: Path, entry: h5py.Group, key: str, table: dict[str, float], default: str) -> np.ndarray:
    """Read field ``key`` and convert it to the unit of scale 1 in ``table``."""
    ds = _dataset(path, entry, key)
    try:
        values = np.asarray(ds[()], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"is not numeric ({exc})", FIELDS[key]) from exc
    unit = _units(ds) or default
    scale = table.get(unit, table.get(unit.lower()))
    if scale is None:
        raise InputError(path, f"unknown unit {unit!r} (expected one of {sorted(table)})", FIELDS[key])
    if not np.all(np.isfinite(values)):
        raise InputError(path, "contains NaN or infinite values", FIELDS[key])
    return values * scale


def _dataset(path: Path, entry: h5py.Group, key: str) -> h5py.Dataset:
    name = FIELDS[key]
    obj = entry.get(name)
    if obj is None:
        raise InputError(path, "required field is missing", name)
    if not isinstance(obj, h5py.Dataset):
        raise InputError(path, "is a group, expected a dataset", name)
    return obj


def _scalar(path: Path, values: np.ndarray, key: str) -> float:
    flat = np.ravel(values)
    if flat.size == 0:
        raise InputError(path, "is empty", FIELDS[key])
    if np.ptp(flat) > 1e-9 * max(1.0, abs(float(flat[0]))):
        raise InputError(path, f"varies within one file ({flat.min()} .. {flat.max()}); one value expected",
                         FIELDS[key])
    return float(flat[0])


def _text(entry: h5py.Group, name: str) -> str | None:
    ds = entry.get(name)
    if ds is None:
        return None
    v = ds[()]
    return v.decode() if isinstance(v, bytes) else str(v)


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InputError(path, f"cannot be opened as HDF5 (truncated, still being written, or not HDF5): {exc}") from exc


def _find_entry(path: Path, f: h5py.File, entry: str | None) -> str:
    if entry is not None:
        if entry not in f:
            raise InputError(path, f"entry {entry!r} not found (entries: {sorted(f.keys())})")
        return entry
    candidates = [k for k, g in f.items() if isinstance(g, h5py.Group) and FIELDS["data"] in g]
    if not candidates:
        raise InputError(path, f"{NOT_NXTOMO} with {FIELDS['data']} (top-level groups: {sorted(f.keys())})")
    tomo = [k for k in candidates if _text(f[k], "definition") == "NXtomo"]
    return sorted(tomo or candidates)[0]


@dataclass
class NXtomoScan:
    """Metadata of one NXtomo file (one distance); frames are read lazily with :meth:`read_frames`."""

    path: Path
    entry: str
    geometry: DistanceGeometry
    image_key: np.ndarray
    image_key_control: np.ndarray
    rotation_angle_deg: np.ndarray
    count_time_s: np.ndarray
    frame_shape: tuple[int, int]
    start_time: str | None = None
    end_time: str | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))

    @property
    def n_frames(self) -> int:
        """Number of frames in the file (all kinds)."""
        return int(self.image_key.size)

    def indices(self, key: int, control: int | None = None) -> np.ndarray:
        """Frame indices whose image_key is ``key`` (and image_key_control ``control`` if given)."""
        mask = self.image_key == key
        if control is not None:
            mask &= self.image_key_control == control
        return np.flatnonzero(mask)

    @property
    def projection_indices(self) -> np.ndarray:
        """Regular projections (image_key 0, image_key_control 0)."""
        return self.indices(PROJECTION, PROJECTION)

    @property
    def return_indices(self) -> np.ndarray:
        """Return / alignment projections (image_key_control -1)."""
        return np.flatnonzero(self.image_key_control == RETURN)

    def locate(self, index: int) -> tuple[Path, int]:
        """File and index in that file of frame ``index`` (a series spreads frames over chunk files)."""
        return self.path, int(index)

    def read_frames(self, indices: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Read frames as float32 ``[k, ny, nx]``.

        Raises
        ------
        InputError
            If the file became unreadable or a frame cannot be read (truncated data).
        """
        if isinstance(indices, slice):
            sel: slice | np.ndarray = indices
        else:
            sel = np.asarray(indices, dtype=np.int64)
            if sel.size == 0:
                return np.empty((0, *self.frame_shape), np.float32)
        with _open(self.path) as f:
            ds = f[self.entry][FIELDS["data"]]
            try:
                if isinstance(sel, slice):
                    return np.asarray(ds[sel], dtype=np.float32)
                order = np.argsort(sel)
                out = np.empty((sel.size, *self.frame_shape), np.float32)
                # h5py fancy indexing needs increasing, unique indices; read contiguous runs instead.
                sorted_idx = sel[order]
                runs = np.split(sorted_idx, np.flatnonzero(np.diff(sorted_idx) != 1) + 1)
                pos = 0
                for run in runs:
                    block = np.asarray(ds[int(run[0]) : int(run[-1]) + 1], dtype=np.float32)
                    out[order[pos : pos + run.size]] = block
                    pos += run.size
                return out
            except (OSError, ValueError) as exc:
                raise InputError(self.path, f"frames {indices} cannot be read: {exc}", FIELDS["data"]) from exc


def read_nxtomo(path: str | Path, entry: str | None = None) -> NXtomoScan:
    """Read and validate the metadata of one NXtomo file.

    Parameters
    ----------
    path : str or Path
        The HDF5 file.
    entry : str, optional
        Entry name; by default the first entry whose definition is NXtomo.

    Returns
    -------
    NXtomoScan

    Raises
    ------
    InputError
        When a required field is missing, has an unknown unit, an inconsistent length or a bad value.
    """
    path = Path(path)
    with _open(path) as f:
        name = _find_entry(path, f, entry)
        e = f[name]
        data = _dataset(path, e, "data")
        if data.ndim != 3:
            raise InputError(path, f"must be 3-D [n, ny, nx], has shape {data.shape}", FIELDS["data"])
        n = data.shape[0]
        if not np.issubdtype(data.dtype, np.number):
            raise InputError(path, f"has non-numeric dtype {data.dtype}", FIELDS["data"])

        def per_frame(key: str, values: np.ndarray) -> np.ndarray:
            values = np.ravel(values)
            if values.size == 1 and n != 1:
                return np.full(n, values[0])
            if values.size != n:
                raise InputError(path, f"has {values.size} values for {n} frames", FIELDS[key])
            return values

        ik = per_frame("image_key", np.asarray(_dataset(path, e, "image_key")[()]).astype(np.int64))
        if FIELDS["image_key_control"] in e:
            ikc = per_frame("image_key_control",
                            np.asarray(_dataset(path, e, "image_key_control")[()]).astype(np.int64))
        else:
            ikc = ik.copy()
        bad = ~np.isin(ik, [PROJECTION, FLAT, DARK, INVALID])
        if bad.any():
            raise InputError(path, f"unknown values {sorted(set(ik[bad].tolist()))} (expected 0, 1, 2, 3)",
                             FIELDS["image_key"])
        angles = per_frame("rotation_angle", _scaled(path, e, "rotation_angle", _ANGLE, "degree"))
        count = (per_frame("count_time", _scaled(path, e, "count_time", _TIME, "s"))
                 if FIELDS["count_time"] in e else np.full(n, np.nan))
        pixel = _scalar(path, _scaled(path, e, "x_pixel_size", _LENGTH, "m"), "x_pixel_size")
        z2 = _scalar(path, _scaled(path, e, "distance", _LENGTH, "m"), "distance")
        z1 = abs(_scalar(path, _scaled(path, e, "source_distance", _LENGTH, "m"), "source_distance"))
        energy = _scalar(path, _scaled(path, e, "energy", _ENERGY, "keV"), "energy")
        for key, v in (("x_pixel_size", pixel), ("distance", z2), ("source_distance", z1), ("energy", energy)):
            if not v > 0:
                raise InputError(path, f"must be positive, got {v}", FIELDS[key])
        if pixel > 1e-3:
            raise InputError(path, f"pixel size {pixel} m is implausible: check the units attribute",
                             FIELDS["x_pixel_size"])
        return NXtomoScan(
            path=path, entry=name, geometry=DistanceGeometry(z1, z2, pixel, energy),
            image_key=ik, image_key_control=ikc, rotation_angle_deg=angles, count_time_s=count,
            frame_shape=(int(data.shape[1]), int(data.shape[2])), start_time=_text(e, "start_time"),
            end_time=_text(e, "end_time"), dtype=data.dtype,
        )


def write_geometry_fields(entry: h5py.Group, geometry: DistanceGeometry, data: h5py.Dataset) -> None:
    """Write the per-file NXtomo fields of a distance (pixel, z2, z1, energy) and the NXdata link to ``data``.

    ``entry`` must already hold ``instrument/detector`` (with ``data``); the writers of whole files and of
    growing chunk files share this.
    """
    inst, det = entry["instrument"], entry["instrument/detector"]
    for name, value in (("x_pixel_size", geometry.pixel_m), ("y_pixel_size", geometry.pixel_m),
                        ("distance", geometry.z2_m)):
        det[name] = value
        det[name].attrs["units"] = "m"
    src = inst.create_group("source")
    src.attrs["NX_class"] = "NXsource"
    src["distance"] = geometry.z1_m
    src["distance"].attrs["units"] = "m"
    src["name"], src["type"], src["probe"] = "ESRF", "Synchrotron X-ray Source", "x-ray"
    beam = inst.create_group("beam")
    beam.attrs["NX_class"] = "NXbeam"
    beam["incident_energy"] = geometry.energy_kev
    beam["incident_energy"].attrs["units"] = "keV"
    nxdata = entry.create_group("data")
    nxdata.attrs.update(NX_class="NXdata", signal="data")
    nxdata["data"] = h5py.SoftLink(data.name)


class NXtomoWriter:
    """Write an NXtomo file frame by frame (the simulator, and tests of growing files).

    The file is readable by :func:`read_nxtomo` and by the ``nxtomo`` package. ``end_time`` is
    written on :meth:`close`, which marks the file as complete.

    Parameters
    ----------
    path : str or Path
        File to create (overwritten).
    frame_shape : tuple of int
        ``(ny, nx)``.
    geometry : DistanceGeometry
        z1, z2, pixel and energy of this distance.
    dtype : numpy dtype
        Stored frame type (detectors write uint16 or uint32; float32 for processed data).
    entry : str
        Entry name.
    compression : str, optional
        h5py compression filter for the frames.
    """

    def __init__(self, path: str | Path, frame_shape: tuple[int, int], geometry: DistanceGeometry,
                 dtype: np.dtype | type = np.uint16, entry: str = "entry0000",
                 compression: str | None = None) -> None:
        self.path = Path(path)
        self._f = h5py.File(self.path, "w")
        e = self._f.create_group(entry)
        # "version" is the nxtomo-package layout version this writer follows (beam under instrument/).
        e.attrs.update(NX_class="NXentry", definition="NXtomo", version=2.1)
        e["definition"] = "NXtomo"
        e["start_time"] = _dt.datetime.now().isoformat()
        inst = e.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        ny, nx = frame_shape
        self._data = det.create_dataset("data", shape=(0, ny, nx), maxshape=(None, ny, nx), dtype=dtype,
                                        chunks=(1, ny, nx), compression=compression)
        self._data.attrs["interpretation"] = "image"
        self._key = det.create_dataset("image_key", shape=(0,), maxshape=(None,), dtype=np.int32)
        self._ctrl = det.create_dataset("image_key_control", shape=(0,), maxshape=(None,), dtype=np.int32)
        self._count = det.create_dataset("count_time", shape=(0,), maxshape=(None,), dtype=np.float64)
        self._count.attrs["units"] = "s"
        write_geometry_fields(e, geometry, self._data)
        sample = e.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        self._angle = sample.create_dataset("rotation_angle", shape=(0,), maxshape=(None,), dtype=np.float64)
        self._angle.attrs["units"] = "degree"
        self._entry = e

    def append(self, frames: np.ndarray, image_key: int, angles_deg: float | np.ndarray,
               count_time_s: float, image_key_control: int | None = None) -> None:
        """Append frames ``[k, ny, nx]`` (or one ``[ny, nx]``) of one kind."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        k = frames.shape[0]
        n = self._data.shape[0]
        self._data.resize(n + k, axis=0)
        if np.issubdtype(self._data.dtype, np.integer):
            info = np.iinfo(self._data.dtype)
            frames = np.clip(np.rint(frames), info.min, info.max)
        self._data[n:] = frames.astype(self._data.dtype, copy=False)
        for ds, value in ((self._key, image_key),
                          (self._ctrl, image_key if image_key_control is None else image_key_control),
                          (self._angle, angles_deg), (self._count, count_time_s)):
            ds.resize(n + k, axis=0)
            ds[n:] = np.broadcast_to(np.asarray(value, dtype=ds.dtype), (k,))
        self._f.flush()

    def close(self) -> None:
        """Write ``end_time`` and close the file."""
        if self._f.id.valid:
            self._entry["end_time"] = _dt.datetime.now().isoformat()
            self._f.close()

    def __enter__(self) -> NXtomoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class NXtomoSeries(NXtomoScan):
    """One distance written as a series of NXtomo chunk files (a folder, files in name order).

    Frame indices run over the whole series; :meth:`locate` gives the chunk file and local index.
    """

    parts: list[tuple[NXtomoScan, int]] = field(default_factory=list)  # (chunk, first global index)

    def locate(self, index: int) -> tuple[Path, int]:
        """Chunk file and local index of global frame ``index``."""
        starts = [o for _, o in self.parts]
        j = int(np.searchsorted(starts, index, side="right")) - 1
        part, offset = self.parts[j]
        return part.path, int(index) - offset

    def read_frames(self, indices: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Read frames (global indices) as float32 ``[k, ny, nx]``."""
        idx = np.arange(self.n_frames)[indices] if isinstance(indices, slice) else np.asarray(indices, np.int64)
        out = np.empty((idx.size, *self.frame_shape), np.float32)
        starts = np.array([o for _, o in self.parts])
        which = np.searchsorted(starts, idx, side="right") - 1
        for j in np.unique(which):
            sel = np.flatnonzero(which == j)
            part, offset = self.parts[int(j)]
            out[sel] = part.read_frames(idx[sel] - offset)
        return out


def read_nxtomo_series(folder: str | Path) -> NXtomoSeries:
    """Read a folder of NXtomo chunk files of one distance as one scan.

    Raises
    ------
    InputError
        When a chunk is bad, or chunks disagree on geometry or frame shape.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".nx", ".h5", ".hdf5"})
    if not files:
        raise InputError(folder, f"{NOT_NXTOMO}: no chunk file (*.nx, *.h5) in this distance folder")
    parts, offset = [], 0
    for p in files:
        part = read_nxtomo(p)
        if parts and (part.geometry != parts[0][0].geometry or part.frame_shape != parts[0][0].frame_shape):
            raise InputError(p, f"geometry or frame shape differs from {files[0].name} of the same distance")
        parts.append((part, offset))
        offset += part.n_frames
    first = parts[0][0]
    cat = lambda name: np.concatenate([getattr(pt, name) for pt, _ in parts])  # noqa: E731
    return NXtomoSeries(path=folder, entry=first.entry, geometry=first.geometry, image_key=cat("image_key"),
                        image_key_control=cat("image_key_control"), rotation_angle_deg=cat("rotation_angle_deg"),
                        count_time_s=cat("count_time_s"), frame_shape=first.frame_shape,
                        start_time=first.start_time, end_time=parts[-1][0].end_time, dtype=first.dtype,
                        parts=parts)


@dataclass
class Scan:
    """A multi-distance XNH scan: one :class:`NXtomoScan` per distance, sorted by z1 (most magnified first).

    ``rejected`` holds the files of the folder that could not be used, each with its reason.
    """

    folder: Path
    distances: list[NXtomoScan]
    rejected: list[InputError] = field(default_factory=list)

    @property
    def geometry(self) -> ScanGeometry:
        """The scan geometry of all distances."""
        return ScanGeometry(tuple(d.geometry for d in self.distances))

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Common frame shape ``(ny, nx)``."""
        return self.distances[0].frame_shape


def read_scan(folder: str | Path) -> Scan:
    """Read and cross-check the metadata of every distance of a scan folder.

    A distance is one NXtomo file, or a sub-folder of NXtomo chunk files (a running scan's layout).

    A file that is unreadable, or disagrees with the most magnified distance on frame shape or energy, is
    set aside in ``Scan.rejected`` (with the reason) and the scan goes on with the others.

    Raises
    ------
    InputError
        If the folder holds no usable NXtomo file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder (a scan is a folder with one NXtomo file per distance)")
    candidates = sorted(p for p in folder.iterdir()
                        if (p.is_file() and p.suffix.lower() in {".nx", ".h5", ".hdf5"}) or p.is_dir())
    scans: list[NXtomoScan] = []
    rejected: list[InputError] = []
    for p in candidates:
        try:
            scans.append(read_nxtomo_series(p) if p.is_dir() else read_nxtomo(p))
        except InputError as exc:
            if exc.problem.startswith(NOT_NXTOMO):
                log.info("ignoring %s: %s", p, exc.problem)  # another HDF5 file (a master file, a truth file)
            else:
                rejected.append(exc)
    if not scans:
        detail = "; ".join(str(e) for e in rejected)
        raise InputError(folder, "contains no NXtomo file (*.nx, *.h5, *.hdf5 with instrument/detector/data)"
                         + (f"; rejected: {detail}" if detail else ""))
    scans.sort(key=lambda s: s.geometry.z1_m)
    first = scans[0]
    kept = [first]
    for s in scans[1:]:
        if s.frame_shape != first.frame_shape:
            rejected.append(InputError(s.path, f"frame shape {s.frame_shape} differs from {first.path.name}'s "
                                       f"{first.frame_shape}", FIELDS["data"]))
        elif abs(s.geometry.energy_kev - first.geometry.energy_kev) > 1e-6 * first.geometry.energy_kev:
            rejected.append(InputError(s.path, f"energy {s.geometry.energy_kev} keV differs from "
                                       f"{first.path.name}'s {first.geometry.energy_kev} keV", FIELDS["energy"]))
        else:
            kept.append(s)
    return Scan(folder, kept, rejected)


def frame_problem(frame: np.ndarray, shape: tuple[int, int]) -> str | None:
    """Why a frame cannot be used (wrong shape, NaN/inf, all zero), or ``None`` if it is usable."""
    if frame.shape != tuple(shape):
        return f"shape {frame.shape} differs from the scan's {tuple(shape)}"
    finite = np.isfinite(frame)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite pixel values (NaN or inf)"
    if not np.any(frame):
        return "all pixels are zero (detector read-out failure)"
    return None


#: NXtomo layout version from which the ``nxtomo`` package stores sample translations in the McStas frame
#: (``y`` vertical up, ``z`` along the beam, ``x`` horizontal); earlier files use the ESRF frame
#: (``z`` vertical up, ``x`` along the beam, ``y`` horizontal).
MCSTAS_VERSION = 2.0
TRANSLATION_FIELDS = {"x": "sample/x_translation", "y": "sample/y_translation", "z": "sample/z_translation"}


@dataclass(frozen=True)
class SampleTranslation:
    """Sample-stage translations of one NXtomo entry, in metres, as stored (``None`` where absent).

    Attributes
    ----------
    x_m, y_m, z_m : float or None
        ``sample/x_translation``, ``y_translation``, ``z_translation`` (median over the projections when
        recorded per frame).
    frame : str
        ``"McStas"`` (entry ``version`` >= 2.0, the ``nxtomo`` package's convention since 2.0: ``y``
        vertical) or ``"ESRF"`` (older files: ``z`` vertical).
    """

    x_m: float | None
    y_m: float | None
    z_m: float | None
    frame: str = "McStas"

    def lab_m(self) -> dict[str, float | None]:
        """The translations by direction: ``vertical``, ``beam`` (along the beam) and ``transverse``."""
        if self.frame == "McStas":
            return {"vertical": self.y_m, "beam": self.z_m, "transverse": self.x_m}
        return {"vertical": self.z_m, "beam": self.x_m, "transverse": self.y_m}


def read_sample_translation(path: str | Path, entry: str | None = None) -> SampleTranslation | None:
    """Read the sample-stage position of an NXtomo file (``sample/{x,y,z}_translation``), in metres.

    Parameters
    ----------
    path : str or Path
        The HDF5 file.
    entry : str, optional
        Entry name; by default the first entry whose definition is NXtomo.

    Returns
    -------
    SampleTranslation or None
        None when the entry has none of the three fields. A field recorded per frame gives the median over
        the regular projections (image_key 0), or over all frames when image_key is missing. The ``units``
        attribute is honoured (metres when absent, as the ``nxtomo`` package assumes).

    Raises
    ------
    InputError
        When the file cannot be opened, a field is not numeric, has an unknown unit, is non-finite, or its
        length matches neither 1 nor the number of frames.
    """
    path = Path(path)
    with _open(path) as f:
        e = f[_find_entry(path, f, entry)]
        if not any(name in e for name in TRANSLATION_FIELDS.values()):
            return None
        keys = e.get(FIELDS["image_key"])
        key = np.ravel(keys[()]) if isinstance(keys, h5py.Dataset) else None
        values: dict[str, float | None] = {}
        for axis, name in TRANSLATION_FIELDS.items():
            ds = e.get(name)
            if ds is None:
                values[axis] = None
                continue
            if not isinstance(ds, h5py.Dataset):
                raise InputError(path, "is a group, expected a dataset", name)
            try:
                v = np.ravel(np.asarray(ds[()], dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise InputError(path, f"is not numeric ({exc})", name) from exc
            unit = _units(ds) or "m"
            scale = _LENGTH.get(unit, _LENGTH.get(unit.lower()))
            if scale is None:
                raise InputError(path, f"unknown unit {unit!r} (expected one of {sorted(_LENGTH)})", name)
            if v.size == 0 or not np.all(np.isfinite(v)):
                raise InputError(path, "is empty or contains NaN or infinite values", name)
            if v.size > 1 and key is not None:
                if v.size != key.size:
                    raise InputError(path, f"has {v.size} values for {key.size} frames", name)
                if np.any(key == PROJECTION):
                    v = v[key == PROJECTION]
            values[axis] = float(np.median(v)) * scale
        version = e.attrs.get("version")
        try:
            frame = "McStas" if version is None or float(version) >= MCSTAS_VERSION else "ESRF"
        except (TypeError, ValueError):
            frame = "McStas"
        return SampleTranslation(values["x"], values["y"], values["z"], frame)
