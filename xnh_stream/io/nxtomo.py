"""NXtomo input and output: one HDF5 file per XNH distance, in the layout of ESRF's ``nxtomo`` package.

Fields read (relative to the NXentry, ``entry0000`` by default)::

    instrument/detector/data               [n, ny, nx] frames
    instrument/detector/image_key          0 projection, 1 flat, 2 dark, 3 invalid
    instrument/detector/image_key_control  as image_key, -1 for return (alignment) projections
    instrument/detector/x_pixel_size       detector pixel p
    instrument/detector/distance           z2, sample to detector
    instrument/detector/count_time         exposure per frame
    instrument/source/distance             z1, focus to sample (sign ignored: NeXus puts the source upstream)
    instrument/beam/incident_energy        photon energy
    sample/rotation_angle                  rotation angle per frame
    sample/x_pixel_size                    p / M, the pixel in the sample plane (when z1 is absent)
    sample/propagation_distance            D = z1 z2 / (z1 + z2) (when z1 is absent)
    start_time, end_time                   ISO 8601 strings; end_time marks a finished file

Units come from each field's ``units`` attribute, in any spelling the ESRF tools write (``keV`` or
``kiloelectron_volt``, ``um`` or ``micrometer``, ``degree``, ``second``: :func:`unit_scale`). A field
without one is read by the rule of :func:`assumed_unit`, with a warning naming the field. Files converted by
nxtomomill are read as written (return projections labelled 0 degrees get their angles back:
:func:`recognise_returns`). Our files follow the nxtomo package's conventions (:func:`write_geometry_fields`),
so tomoscan finds the sample pixel and propagation distance in them; nabu reads the sample pixel and z2 only
(its phase retrieval needs the configuration :mod:`xnh_stream.io.nabu_config` writes). A file without z1 nor
the sample plane (nxtomomill's ``edf2nx``) takes z1 from the command line's ``--z1`` (:mod:`xnh_stream.io.z1`).

Every problem is raised as :class:`InputError`, naming the file and the field. Files are always opened
read-only and without HDF5 file locking, so a file held open by a detector writer can be inspected.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError  # defined without h5py (the command line refuses a folder at once)
from ..physics.geometry import DistanceGeometry
from .z1 import supplied_z1_for

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
    "sample_pixel_size": "sample/x_pixel_size",
    "propagation_distance": "sample/propagation_distance",
}

#: Quantity of each numeric field, and the unit values are returned in.
_KIND = {"x_pixel_size": "length", "sample_pixel_size": "length", "distance": "length",
         "source_distance": "length", "propagation_distance": "length", "energy": "energy",
         "rotation_angle": "angle", "count_time": "time"}
_BASE = {"length": "m", "energy": "keV", "angle": "degree", "time": "s"}
#: Case-insensitive spellings accepted besides every unit pint knows (``kiloelectron_volt``, ``micrometer``...).
_ALIASES = {
    "length": {"m": 1.0, "meter": 1.0, "metre": 1.0, "meters": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6,
               "µm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6, "nm": 1e-9},
    "energy": {"kev": 1.0, "ev": 1e-3, "mev": 1e3},
    "angle": {"degree": 1.0, "degrees": 1.0, "deg": 1.0, "°": 1.0, "rad": 180.0 / np.pi,
              "radian": 180.0 / np.pi, "radians": 180.0 / np.pi},
    "time": {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6},
}
_WARNED: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=256)
def unit_scale(unit: str, kind: str) -> float | None:
    """Factor that converts a value in ``unit`` to the base unit of ``kind`` (m, keV, degree or s).

    Accepts what HDF5 writers put in a ``units`` attribute: symbols (``keV``, ``um``, ``µm``), pint's long
    names as nxtomomill writes them (``kiloelectron_volt``, ``micrometer``, ``millimeter``, ``degree``,
    ``second``), and lower-case spellings (``kev``). Returns None for an unknown unit or one of another
    dimension (an energy in metres).
    """
    table = _ALIASES[kind]
    unit = unit.strip()
    if unit.lower() in table:
        return table[unit.lower()]
    try:
        import pint  # noqa: PLC0415 - a 0.5 s registry, only for the spellings the table lacks
    except ImportError:  # pragma: no cover - pint comes with nxtomo
        return None
    try:
        return float(_pint_registry().Quantity(1.0, unit).to(_BASE[kind]).magnitude)
    except (pint.PintError, AttributeError, TypeError, ValueError, AssertionError, KeyError):
        return None


@functools.lru_cache(maxsize=1)
def _pint_registry():  # noqa: ANN202
    import pint  # noqa: PLC0415

    return pint.UnitRegistry()


def assumed_unit(key: str, values: np.ndarray) -> tuple[str, str]:
    """The unit taken for field ``key`` stored without a ``units`` attribute, and the rule in words.

    Writers disagree (tomoscan assumes um for pixels and mm for distances, nxtomo writes SI), so the
    magnitude decides where it can: a pixel size of 1e-3 or more is in um (no pixel is a millimetre),
    smaller in m; a distance of 10 or more is in mm (no XNH distance is 10 m), smaller in m; an energy of
    1000 or more is in eV (no beamline runs at 1 MeV), smaller in keV; angles are in degree and times in s.
    """
    kind = _KIND[key]
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    big = float(finite.max()) if finite.size else 0.0
    if key in ("x_pixel_size", "sample_pixel_size"):
        return ("um" if big >= 1e-3 else "m"), "a pixel size >= 1e-3 is in um, a smaller one in m"
    if kind == "length":
        return ("mm" if big >= 10 else "m"), "a distance >= 10 is in mm, a smaller one in m"
    if kind == "energy":
        return ("eV" if big >= 1000 else "keV"), "an energy >= 1000 is in eV, a smaller one in keV"
    return _BASE[kind], f"{kind}s without units are in {_BASE[kind]}"


def _warn_once(key: tuple[str, str], message: str, *args: object) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def scale_field(path: Path, ds: h5py.Dataset, key: str, values: np.ndarray) -> np.ndarray:
    """Convert the values of field ``key`` (dataset ``ds``) to its base unit (m, keV, degree, s).

    A field without a ``units`` attribute is converted by :func:`assumed_unit`, with a warning (once per
    field and unit) naming the field and the unit assumed.

    Raises
    ------
    InputError
        For an unknown unit or one of the wrong dimension.
    """
    kind = _KIND[key]
    unit = _units(ds)
    if not unit:
        unit, rule = assumed_unit(key, values)
        _warn_once((FIELDS[key], unit), "%s [%s] has no units attribute: taken as %s (%s; write a units "
                   "attribute to be sure)", path, FIELDS[key], unit, rule)
    scale = unit_scale(unit, kind)
    if scale is None:
        raise InputError(path, f"unknown unit {unit!r} for a {kind} (expected e.g. "
                         f"{', '.join(sorted(_ALIASES[kind])[:6])}, or a pint unit name)", FIELDS[key])
    return values * scale


def _units(ds: h5py.Dataset) -> str | None:
    u = ds.attrs.get("units", ds.attrs.get("unit"))
    if u is None:
        return None
    if isinstance(u, bytes):
        u = u.decode()
    return str(u).strip()


def _scaled(path: Path, entry: h5py.Group, key: str) -> np.ndarray:
    """Read numeric field ``key`` converted to its base unit (:func:`scale_field`)."""
    ds = _dataset(path, entry, key)
    try:
        values = np.asarray(ds[()], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"is not numeric ({exc})", FIELDS[key]) from exc
    if not np.all(np.isfinite(values)):
        raise InputError(path, "contains NaN or infinite values", FIELDS[key])
    return scale_field(path, ds, key, values)


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


def entry_text(entry: h5py.Group, name: str) -> str | None:
    """A text field of an entry (``start_time``, ``definition`` ...) as ``str``.

    Parameters
    ----------
    entry : h5py.Group
        The NXtomo entry (or any group).
    name : str
        The field's path in the group.

    Returns
    -------
    str or None
        The value (bytes decoded, anything else through ``str``), None where the field is absent.
    """
    ds = entry.get(name)
    if ds is None:
        return None
    v = ds[()]
    return v.decode() if isinstance(v, bytes) else str(v)


def open_hdf5(path: Path) -> contextlib.AbstractContextManager[h5py.File]:
    """The file, read-only and unlocked, for a ``with`` block (within :func:`one_open_per_file`, the handle that
    block holds).

    Parameters
    ----------
    path : Path
        The HDF5 file.

    Returns
    -------
    context manager of h5py.File
        The open file.

    Raises
    ------
    InputError
        The file does not exist or cannot be opened as HDF5.
    """
    held: _HeldFiles | None = getattr(_HELD, "files", None)
    if held is not None:
        return held.borrow(path)
    return _open_file(path)


def _open_file(path: Path) -> h5py.File:
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InputError(path, f"cannot be opened as HDF5 (truncated, still being written, or not HDF5): {exc}") from exc


_HELD = threading.local()


@contextlib.contextmanager
def one_open_per_file(max_open: int = 64) -> Iterator[None]:
    """Within this block, every NXtomo reader of this thread opens a file once and reuses the handle.

    Inspecting a file (:func:`~xnh_stream.io.sources.inspect_nxtomo`, which validates it with
    :func:`read_nxtomo`) and reading its frames then cost one open instead of one per call: one poll of a
    folder watcher and the frames it handed out (a restart re-reads the darks, flats, returns and drift
    views of every file: a dozen opens per file without it). The handles are closed at the end of the block,
    so that a file still being written is seen afresh by the next one: hold it only while reading frames
    that were complete when the file was first opened in it. A read that fails in it closes the handle
    (a retry opens the file again). Blocks nest (the outermost one holds the handles); at most ``max_open``
    files stay open, the least recently used closed first.
    """
    if getattr(_HELD, "files", None) is not None:
        yield
        return
    held = _HELD.files = _HeldFiles(max_open)
    try:
        yield
    finally:
        _HELD.files = None
        held.close_all()


class _HeldFiles:
    """The open files of one :func:`one_open_per_file` block: handle, ``with`` depth and whether a read failed."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max(1, int(max_open))
        self.files: OrderedDict[str, h5py.File] = OrderedDict()
        self.depth: dict[str, int] = {}
        self.failed: set[str] = set()

    def borrow(self, path: Path) -> _Borrowed:
        key = os.path.abspath(path)
        f = self.files.get(key)
        if f is None:
            f = _open_file(path)
            idle = [k for k in self.files if not self.depth.get(k)]
            for k in idle[:max(0, len(self.files) + 1 - self.max_open)]:
                self._close(k)
            self.files[key] = f
        self.files.move_to_end(key)
        return _Borrowed(self, key, f)

    def _close(self, key: str) -> None:
        f = self.files.pop(key, None)
        self.depth.pop(key, None)
        self.failed.discard(key)
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

    def close_all(self) -> None:
        for key in list(self.files):
            self._close(key)


class _Borrowed(contextlib.AbstractContextManager):
    """A held file for one ``with`` block: not closed at its end, unless a read in it failed."""

    def __init__(self, held: _HeldFiles, key: str, f: h5py.File) -> None:
        self.held, self.key, self.f = held, key, f

    def __enter__(self) -> h5py.File:
        self.held.depth[self.key] = self.held.depth.get(self.key, 0) + 1
        return self.f

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        held, key = self.held, self.key
        if key not in held.files:
            return
        held.depth[key] -= 1
        if exc_type is not None:
            held.failed.add(key)
        if not held.depth[key] and key in held.failed:
            held._close(key)  # the next read opens the file afresh


def find_entry(path: Path, f: h5py.File, entry: str | None) -> str:
    """The name of the NXtomo entry to read: ``entry`` if given, else the first entry with frames (one whose
    ``definition`` is ``NXtomo`` preferred).

    Parameters
    ----------
    path : Path
        The file (for the error's text).
    f : h5py.File
        The open file.
    entry : str or None
        The entry asked for, or None for the first one.

    Returns
    -------
    str
        The entry's name.

    Raises
    ------
    InputError
        ``entry`` is absent, the NXtomo entry has no frames, or the file holds no entry with frames.
    """
    if entry is not None:
        if entry not in f:
            raise InputError(path, f"entry {entry!r} not found (entries: {sorted(f.keys())})")
        return entry
    candidates = [k for k, g in f.items() if isinstance(g, h5py.Group) and FIELDS["data"] in g]
    if not candidates:
        # An NXtomo entry without frames is a broken distance file (set aside, counted and reported), not a
        # file that holds no scan (a truth or master file, ignored).
        broken = [k for k, g in f.items() if isinstance(g, h5py.Group) and _is_nxtomo_entry(g)]
        if broken:
            raise InputError(path, f"required field is missing: NXtomo entry {broken[0]!r} has no frames",
                             FIELDS["data"])
        raise InputError(path, f"{NOT_NXTOMO} with {FIELDS['data']} (top-level groups: {sorted(f.keys())})")
    tomo = [k for k in candidates if entry_text(f[k], "definition") == "NXtomo"]
    return sorted(tomo or candidates)[0]


def _is_nxtomo_entry(group: h5py.Group) -> bool:
    """Whether a group says it is an NXtomo entry: ``definition`` NXtomo (dataset or attribute), or it holds
    ``instrument/detector``."""
    try:
        definition = entry_text(group, "definition") if isinstance(group.get("definition"), h5py.Dataset) else None
    except (TypeError, ValueError, OSError):
        definition = None
    attr = group.attrs.get("definition")
    attr = attr.decode() if isinstance(attr, bytes) else attr
    return "NXtomo" in (definition, attr) or isinstance(group.get(DETECTOR), h5py.Group)


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
        with open_hdf5(self.path) as f:
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
    with open_hdf5(path) as f:
        name = find_entry(path, f, entry)
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
        angles = per_frame("rotation_angle", _scaled(path, e, "rotation_angle"))
        count = (per_frame("count_time", _scaled(path, e, "count_time"))
                 if FIELDS["count_time"] in e else np.full(n, np.nan))
        geometry = read_geometry(path, e)
        ikc, angles = recognise_returns(path, e, ik, ikc, angles)
        return NXtomoScan(
            path=path, entry=name, geometry=geometry,
            image_key=ik, image_key_control=ikc, rotation_angle_deg=angles, count_time_s=count,
            frame_shape=(int(data.shape[1]), int(data.shape[2])), start_time=entry_text(e, "start_time"),
            end_time=entry_text(e, "end_time"), dtype=data.dtype,
        )


def _optional_scalar(path: Path, e: h5py.Group, key: str) -> float | None:
    return _scalar(path, _scaled(path, e, key), key) if FIELDS[key] in e else None


def read_geometry(path: Path, e: h5py.Group) -> DistanceGeometry:
    """The geometry of one NXtomo entry, from the source distance or from sample-plane fields.

    ``instrument/source/distance`` is z1 (its sign is ignored: NeXus puts the source upstream, at a
    negative position). When it is absent, ``sample/x_pixel_size`` (``p / M``) and
    ``sample/propagation_distance`` (``D``) with the detector pixel give the geometry
    (:meth:`DistanceGeometry.from_sample_plane`); a sample pixel equal to the detector pixel gives the
    effective (plane-wave) geometry. When both forms are present and disagree by more than 1 %, the
    source distance wins and a warning names the file.

    Raises
    ------
    InputError
        Naming the missing or bad field.
    """
    pixel = _scalar(path, _scaled(path, e, "x_pixel_size"), "x_pixel_size")
    energy = _scalar(path, _scaled(path, e, "energy"), "energy")
    z1 = _optional_scalar(path, e, "source_distance")
    z2 = _optional_scalar(path, e, "distance")
    ps = _optional_scalar(path, e, "sample_pixel_size")
    dist = _optional_scalar(path, e, "propagation_distance")
    z1 = abs(z1) if z1 is not None else None
    for key, v in (("x_pixel_size", pixel), ("energy", energy), ("source_distance", z1), ("distance", z2),
                   ("sample_pixel_size", ps), ("propagation_distance", dist)):
        if v is not None and not v > 0:
            raise InputError(path, f"must be positive, got {v}", FIELDS[key])
    if pixel > 1e-3:
        raise InputError(path, f"pixel size {pixel} m is implausible: check the units attribute",
                         FIELDS["x_pixel_size"])
    sample_plane = None
    if ps is not None and dist is not None:
        try:
            sample_plane = DistanceGeometry.from_sample_plane(ps, dist, energy, pixel)
        except ValueError as exc:
            raise InputError(path, str(exc), FIELDS["sample_pixel_size"]) from exc
    if z1 is not None and z2 is not None:
        geometry = DistanceGeometry(z1, z2, pixel, energy)
        _check_supplied(path, e, geometry)
        if sample_plane is not None and not (
                np.isclose(sample_plane.effective_pixel_m, geometry.effective_pixel_m, rtol=0.01)
                and np.isclose(sample_plane.propagation_distance_m, geometry.propagation_distance_m, rtol=0.01)):
            _warn_once((str(path), "sample plane"), "%s: sample/x_pixel_size %.4g m and sample/propagation_distance "
                       "%.4g m disagree with z1 %.4g m, z2 %.4g m and the detector pixel %.4g m (which give %.4g m "
                       "and %.4g m); z1 and z2 are used", path, ps, dist, z1, z2, pixel,
                       geometry.effective_pixel_m, geometry.propagation_distance_m)
        return geometry
    if sample_plane is not None:
        if z2 is not None and not np.isclose(z2, sample_plane.z2_m, rtol=0.01) and sample_plane.magnification > 1.001:
            _warn_once((str(path), "z2"), "%s: instrument/detector/distance %.4g m disagrees with the z2 %.4g m that "
                       "sample/x_pixel_size and sample/propagation_distance give; the sample-plane values are used",
                       path, z2, sample_plane.z2_m)
        _check_supplied(path, e, sample_plane)
        return sample_plane
    if z2 is None:
        raise InputError(path, "required field is missing", FIELDS["distance"])
    name = e.attrs.get("distance_name")  # a chunk file's distance (sources.DISTANCE_NAME_ATTR)
    supplied = supplied_z1_for(path, name.decode() if isinstance(name, bytes) else name)
    if supplied is not None:
        log.info("%s: z1 %.6g m from %s (the file does not record it)", path, supplied[0], supplied[1])
        try:
            return DistanceGeometry(supplied[0], z2, pixel, energy)
        except ValueError as exc:
            raise InputError(path, f"{supplied[1]}: {exc}", FIELDS["source_distance"]) from exc
    raise InputError(path, "required field is missing: the focus-to-sample distance z1 (or, instead, "
                     f"{FIELDS['sample_pixel_size']} and {FIELDS['propagation_distance']}). A file converted from "
                     f"EDF by nxtomomill edf2nx has neither: give it with --z1 {path.stem}=METRES (process, watch, "
                     "nabu-config), or convert the EDF scan with 'xnh-stream convert', which takes z1 from "
                     "xnh.yaml or --z1", FIELDS["source_distance"])


def _check_supplied(path: Path, e: h5py.Group, geometry: DistanceGeometry) -> None:
    """Warn (once per file) when a ``--z1 NAME=`` value names a file whose own z1 differs from it by more than
    1 %: the file's value is used."""
    name = e.attrs.get("distance_name")
    supplied = supplied_z1_for(path, name.decode() if isinstance(name, bytes) else name, default=False)
    if supplied is not None and not np.isclose(supplied[0], geometry.z1_m, rtol=0.01):
        _warn_once((str(path), "supplied z1"), "%s: %s disagrees with the file's z1 %.6g m; the file's value is "
                   "used", path, supplied[1], geometry.z1_m)


def _header_angles(e: h5py.Group, frames: np.ndarray, motors: Sequence[str] = ("srot", "somega")) -> np.ndarray | None:
    """Rotation-motor positions of ``frames`` from the EDF headers nxtomomill keeps in
    ``instrument/positioners/<frame>/motor_mne, motor_pos`` (None when absent)."""
    pos = e.get("instrument/positioners")
    if not isinstance(pos, h5py.Group):
        return None
    out = []
    for i in frames:
        g = pos.get(str(int(i)))
        if not isinstance(g, h5py.Group) or "motor_mne" not in g or "motor_pos" not in g:
            return None
        names = entry_text(g, "motor_mne").replace(";", " ").split()
        values = entry_text(g, "motor_pos").replace(";", " ").split()
        found = [values[names.index(m)] for m in motors if m in names and names.index(m) < len(values)]
        try:
            out.append(float(found[0]))
        except (IndexError, ValueError):
            return None
    return np.asarray(out, dtype=np.float64)


def recognise_returns(path: Path, e: h5py.Group, ik: np.ndarray, ikc: np.ndarray,
                      angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return projections of a whole file as nxtomomill writes them, labelled and at their true angles.

    nxtomomill's EDF converter computes the projection angles (``force_angle_calculation``) and writes the
    return projections taken after the scan (numbers ``>= TOMO_N``) at 0 degrees; without
    ``image_key_control`` they look like regular projections. Here:

    - projections (image_key 0) at exactly 0 degrees that come after the last projection at another
      angle, jumping back against the direction of rotation, are return projections (image_key_control
      -1);
    - when two or more return projections are all at 0 degrees (a default, not a measurement: returns are
      taken at different angles), their angles are the rotation motor's (``srot``) from the EDF headers
      nxtomomill keeps under ``instrument/positioners``, else the ID16A convention: ``R - 90 j`` for the
      j-th (R the scan range, the multiple of 90 degrees that the regular projections span), never below 0.

    A file with return projections at measured angles is left as it is.
    """
    ikc = ikc.copy()
    angles = angles.copy()
    proj = np.flatnonzero((ik == PROJECTION) & (ikc == PROJECTION))
    if proj.size >= 3:
        a = angles[proj]
        moved = np.flatnonzero(a != 0.0)
        # the jump back to 0 must go against the rotation (a scan from 180 down to 0 ends at 0 by itself)
        if (moved.size >= 2 and moved[-1] < proj.size - 1
                and np.sign(a[moved[-1]] - a[moved[0]]) == np.sign(a[moved[-1]])):
            tail = proj[moved[-1] + 1:]
            ikc[tail] = RETURN
            log.info("%s: %d projections at 0 degrees after the last projection at %.4g degrees taken as return "
                     "projections", path, tail.size, angles[proj[moved[-1]]])
    ret = np.flatnonzero(ikc == RETURN)
    regular = np.flatnonzero((ik == PROJECTION) & (ikc == PROJECTION))
    if ret.size >= 2 and np.all(angles[ret] == 0.0):
        measured = _header_angles(e, ret)
        if measured is not None and np.any(measured != 0.0):
            angles[ret] = measured
            how = "the srot motor of the EDF headers"
        elif regular.size >= 2:
            a = angles[regular]
            step = float(np.median(np.diff(a)))
            span = float(a[-1] - a[0]) + step / 2
            scan_range = 90.0 * round(span / 90.0)
            sign = 1.0 if scan_range >= 0 else -1.0
            angles[ret] = sign * np.maximum(abs(scan_range) - 90.0 * np.arange(ret.size), 0.0)
            how = f"the ID16A convention (scan range {scan_range:g} degrees, back in steps of 90)"
        else:
            return ikc, angles
        _warn_once((str(path), "returns"), "%s: the %d return projections are all labelled 0 degrees (nxtomomill's "
                   "default); their angles are taken from %s: %s", path, ret.size, how,
                   ", ".join(f"{v:g}" for v in angles[ret]))
    return ikc, angles


def write_geometry_fields(entry: h5py.Group, geometry: DistanceGeometry, data: h5py.Dataset,
                          field_of_view: str = "Full") -> None:
    """Write the per-file NXtomo fields of a distance and the NXdata link to ``data``, as ESRF's tools expect.

    The conventions of the ``nxtomo`` package (layout version 2.1), which tomoscan and nabu read:

    - ``instrument/detector/x_pixel_size``, ``y_pixel_size`` (detector pixel ``p``), ``distance`` (z2),
      ``field_of_view`` (``Full``) and ``half_acquisition`` (False);
    - ``instrument/source/distance`` = ``-z1``: NXtomo's McStas coordinates put the source upstream of the
      sample, at a negative position (nxtomomill writes it negative too; readers take its magnitude);
    - ``instrument/beam/incident_energy`` in keV;
    - ``sample/x_pixel_size``, ``y_pixel_size`` = ``p / M`` (the voxel: tomoscan's ``sample_x_pixel_size``,
      the pixel nabu reconstructs with) and ``sample/propagation_distance`` = ``D = z1 z2 / (z1 + z2)``
      (tomoscan's ``propagation_distance``; nabu's phase retrieval reads neither it nor z1 but z2: it takes
      the geometry from the configuration of :mod:`xnh_stream.io.nabu_config`);

    every length in m with its ``units`` attribute. ``entry`` must already hold ``instrument/detector``
    (with ``data``); the writers of whole files and of growing chunk files share this.
    """
    inst, det = entry["instrument"], entry["instrument/detector"]

    def put(group: h5py.Group, name: str, value: float | str | bool, units: str | None = None) -> None:
        group[name] = value
        if units:
            group[name].attrs["units"] = units

    for name, value in (("x_pixel_size", geometry.pixel_m), ("y_pixel_size", geometry.pixel_m),
                        ("distance", geometry.z2_m)):
        put(det, name, value, "m")
    put(det, "field_of_view", field_of_view)
    put(det, "half_acquisition", field_of_view.lower() == "half")
    src = inst.create_group("source")
    src.attrs["NX_class"] = "NXsource"
    put(src, "distance", -geometry.z1_m, "m")
    src["name"], src["type"], src["probe"] = "ESRF", "Synchrotron X-ray Source", "x-ray"
    beam = inst.create_group("beam")
    beam.attrs["NX_class"] = "NXbeam"
    put(beam, "incident_energy", geometry.energy_kev, "keV")
    sample = entry.require_group("sample")
    sample.attrs["NX_class"] = "NXsample"
    for name, value in (("x_pixel_size", geometry.effective_pixel_m), ("y_pixel_size", geometry.effective_pixel_m),
                        ("propagation_distance", geometry.propagation_distance_m)):
        put(sample, name, value, "m")
    nxdata = entry.create_group("data")
    nxdata.attrs.update(NX_class="NXdata", signal="data")
    nxdata["data"] = h5py.SoftLink(data.name)
    entry.attrs["default"] = "data"


#: Per-frame sample translations (NXtomo's x, y, z; nominal motor positions), written as zeros in m.
TRANSLATIONS = ("x_translation", "y_translation", "z_translation")


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
        sample = e["sample"]
        self._angle = sample.create_dataset("rotation_angle", shape=(0,), maxshape=(None,), dtype=np.float64)
        self._angle.attrs["units"] = "degree"
        self._translations = []
        for name in TRANSLATIONS:
            ds = sample.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float64)
            ds.attrs["units"] = "m"
            self._translations.append(ds)
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
                          (self._angle, angles_deg), (self._count, count_time_s),
                          *((t, 0.0) for t in self._translations)):
            ds.resize(n + k, axis=0)
            ds[n:] = np.broadcast_to(np.asarray(value, dtype=ds.dtype), (k,))
        self._f.flush()

    def close(self, complete: bool = True) -> None:
        """Close the file; ``complete`` writes ``end_time`` (without it the file stays unfinished, as an
        interrupted acquisition leaves it)."""
        if self._f.id.valid:
            if complete:
                self._entry["end_time"] = _dt.datetime.now().isoformat()
            self._f.close()

    def __enter__(self) -> NXtomoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A frame with more than this fraction of its pixels at the largest count its integer type holds is saturated.
SATURATED_FRACTION = 0.01


def raw_problem(raw: np.ndarray) -> str | None:
    """Why a frame as stored (its own dtype) cannot be trusted, or ``None``.

    * negative counts in a signed integer frame: the counter wrapped around (e.g. int8 or int16 data of a
      detector that counts higher);
    * more than :data:`SATURATED_FRACTION` of the pixels at the largest value of an integer type: saturated.
    """
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        return None
    info = np.iinfo(raw.dtype)
    if info.min < 0:
        n_neg = int(np.count_nonzero(raw < 0))
        if n_neg:
            return (f"{n_neg} negative counts in {raw.dtype} data: the detector's counts wrapped around "
                    f"(they exceed {info.max})")
    n_max = int(np.count_nonzero(raw == info.max))
    if n_max > SATURATED_FRACTION * raw.size:
        return f"saturated: {100 * n_max / raw.size:.1f} % of the pixels at {info.max}, the largest {raw.dtype} count"
    return None


#: Frames with fewer pixels than this on a side cannot be used: the distances' registration, the phase retrieval
#: and the reconstruction's quality figures (FSC, edge fit) need a few pixels of margin on every side.
MIN_FRAME_PX = 8


def shape_problem(shape: Sequence[int]) -> str | None:
    """Why frames of ``shape`` (``(ny, nx)``) cannot make a scan, or ``None``: fewer than :data:`MIN_FRAME_PX`
    pixels on a side."""
    ny, nx = (int(v) for v in shape)
    if min(ny, nx) < MIN_FRAME_PX:
        return (f"frames of {ny} x {nx} px: fewer than {MIN_FRAME_PX} px on a side cannot be registered, "
                "phase-retrieved or reconstructed")
    return None


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


def read_sample_name(path: str | Path, entry: str | None = None) -> str | None:
    """The sample's name in an NXtomo file (``sample/name``, or ``sample/sample_name`` of layout 1.0), or None."""
    path = Path(path)
    with open_hdf5(path) as f:
        e = f[find_entry(path, f, entry)]
        for key in ("sample/name", "sample/sample_name"):
            if key in e:
                name = entry_text(e, key)
                return name.strip() if name and name.strip() else None
    return None


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
    with open_hdf5(path) as f:
        e = f[find_entry(path, f, entry)]
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
            scale = unit_scale(unit, "length")
            if scale is None:
                raise InputError(path, f"unknown unit {unit!r} (not a length)", name)
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
