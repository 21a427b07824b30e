"""Convert an ID16A EDF scan (one folder per distance) into NXtomo files, one per distance.

``xnh-stream convert EDF_SCAN --out NX_FOLDER`` writes ``NX_FOLDER/<distance folder>.nx`` for every
distance folder of ``EDF_SCAN`` (or for ``EDF_SCAN`` itself when it is one distance folder). The output is
a scan folder that ``process`` reads, and that tomoscan and nxtomomill's users read with the right geometry
(nabu with the configuration ``convert`` writes beside each file: :mod:`xnh_stream.io.nabu_config`).

Two engines write the same content:

``nxtomomill``
    ESRF's converter (``nxtomomill.converter.from_edf_to_nx``), with the angles of the EDF headers (the
    rotation motor ``srot``, so the return projections keep their angles). The EDF layout does not record
    the focus-to-sample distance, so the file is completed afterwards with what the ESRF tools need and
    nxtomomill cannot know: ``instrument/source/distance`` (``-z1``, from ``xnh.yaml``),
    ``sample/x_pixel_size`` (``p / M``) and ``sample/propagation_distance`` (``D``), and the layout
    version that makes tomoscan look for them (1.5 or later).
``builtin``
    The frames as :func:`~xnh_stream.io.sources.inspect_edf` reads them (the reader of the live path),
    written with :class:`~xnh_stream.io.nxtomo.NXtomoWriter`. Used when nxtomomill is not installed or
    fails on a folder (a warning says why).

Either way the file is written under a temporary name and renamed when complete, and read back with
:func:`~xnh_stream.io.nxtomo.read_nxtomo`: its geometry must equal the EDF folder's
(:func:`~xnh_stream.io.sources.edf_geometry`, z1 from ``xnh.yaml``) and its frame counts the EDF
frames' (accumulated darks count once: nxtomomill divides them by ``DARK_N`` as the reader does).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .nxtomo import DARK, FLAT, PROJECTION, InputError, NXtomoScan, NXtomoWriter, read_nxtomo
from .sources import EDF_SUFFIX, EdfFolder, FrameRecord, NotAFrameFile, edf_geometry, inspect_edf

log = logging.getLogger(__name__)

ENGINES = ("auto", "nxtomomill", "builtin")
#: NXtomo layout version written into nxtomomill's files once completed (sample pixel and propagation
#: distance are read by tomoscan from version 1.5 on).
COMPLETED_VERSION = 2.1
_RANK = {DARK: 0, FLAT: 1, PROJECTION: 2}


@dataclass
class Converted:
    """One distance converted: the EDF folder, the NXtomo file, the engine used and what was read back."""

    folder: Path
    file: Path
    engine: str
    scan: NXtomoScan


def distance_folders(scan: str | Path) -> list[Path]:
    """The EDF distance folders of a scan: its sub-folders holding ``.edf`` files, or the folder itself.

    Raises
    ------
    InputError
        When the folder holds no EDF distance folder.
    """
    scan = Path(scan)
    if not scan.is_dir():
        raise InputError(scan, "is not a folder (an EDF scan is a folder of distance folders of .edf files)")

    def has_edf(p: Path) -> bool:
        return any(e.name.lower().endswith(EDF_SUFFIX) for e in os.scandir(p) if e.is_file())

    subs = sorted(p for p in scan.iterdir() if p.is_dir() and has_edf(p))
    if subs:
        return subs
    if has_edf(scan):
        return [scan]
    raise InputError(scan, "holds no .edf file, nor sub-folders of .edf files (one per distance)")


def edf_records(folder: str | Path) -> list[FrameRecord]:
    """Every frame of a finished EDF distance folder in acquisition order (darks, flats and projections by
    the projection number they were taken at; darks, then flats, then projections at the same number).

    Raises
    ------
    InputError
        For a bad file or incomplete geometry (naming the file and the field).
    """
    ctx = EdfFolder(folder)
    _ = ctx.info  # raises the folder's geometry problem, naming the file and field
    records: list[FrameRecord] = []
    for name in sorted(ctx.names):
        if not name.lower().endswith(EDF_SUFFIX):
            continue
        try:
            view = inspect_edf(ctx.folder / name, root=ctx.folder.parent, folder=ctx)
        except NotAFrameFile:
            continue
        if not view.consistent:
            raise InputError(view.path, f"is incomplete ({view.n_available} of {view.n_frames} frames written)")
        records.extend(view.records())
    if not any(r.is_projection for r in records):
        raise InputError(ctx.folder, "holds no projection")
    records.sort(key=lambda r: (r.sequence, _RANK.get(r.image_key, 3), Path(r.path).name, r.index))
    return records


def write_builtin(folder: str | Path, dst: str | Path) -> Path:
    """Write one EDF distance folder as an NXtomo file with :class:`NXtomoWriter` (frames as the reader
    reads them: accumulated darks divided by ``DARK_N``, stored as float32 then)."""
    info = edf_geometry(folder)
    records = edf_records(folder)
    first = next(r for r in records if r.is_projection)
    import fabio  # noqa: PLC0415

    with fabio.open(first.path) as im:
        dtype = np.dtype(im.data.dtype)
    if any(r.scale != 1.0 for r in records) or not np.issubdtype(dtype, np.number):
        dtype = np.dtype(np.float32)
    with NXtomoWriter(dst, records[0].frame_shape, info.geometry, dtype=dtype) as w:
        for r in records:
            w.append(r.read(), r.image_key, r.rotation_angle_deg, r.count_time_s,
                     image_key_control=r.image_key_control)
    return Path(dst)


def write_nxtomomill(folder: str | Path, dst: str | Path) -> Path:
    """Convert one EDF distance folder with nxtomomill, then complete the file (module docstring).

    Raises
    ------
    ImportError
        When nxtomomill is not installed.
    Exception
        Whatever nxtomomill raises on this folder.
    """
    from nxtomomill.converter import from_edf_to_nx  # noqa: PLC0415
    from nxtomomill.models.edf2nx import EDF2nxModel  # noqa: PLC0415

    info = edf_geometry(folder)
    config = EDF2nxModel()
    config.input_folder = str(folder)
    config.output_file = str(dst)
    config.dataset_basename = info.prefix
    if info.info_file is not None:
        config.dataset_info_file = str(info.info_file)
    config.force_angle_calculation = False  # the srot motor of each header: return projections keep their angle
    config.delete_edf_source_files = False
    from_edf_to_nx(config, progress=None)
    g = info.geometry
    with h5py.File(dst, "a") as f:
        entry = next(k for k, v in f.items() if isinstance(v, h5py.Group) and "instrument/detector/data" in v)
        e = f[entry]
        src = e.require_group("instrument/source")
        src.attrs.setdefault("NX_class", "NXsource")
        sample = e.require_group("sample")
        for group, name, value in ((src, "distance", -g.z1_m), (sample, "x_pixel_size", g.effective_pixel_m),
                                   (sample, "y_pixel_size", g.effective_pixel_m),
                                   (sample, "propagation_distance", g.propagation_distance_m)):
            if name in group:
                del group[name]
            group[name] = value
            group[name].attrs["units"] = "m"
        e.attrs["version"] = max(float(e.attrs.get("version", 0.0)), COMPLETED_VERSION)
    return Path(dst)


def _expected_counts(folder: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in edf_records(folder):
        counts[r.image_key] = counts.get(r.image_key, 0) + 1
    return counts


def convert_distance(folder: str | Path, out: str | Path, engine: str = "auto") -> Converted:
    """Convert one EDF distance folder into ``out/<folder name>.nx`` (see the module docstring).

    Raises
    ------
    InputError
        For a bad EDF folder, or a converted file that does not read back as the EDF folder states.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    folder, out = Path(folder), Path(out)
    info = edf_geometry(folder)  # fails early, naming the missing field (z1: xnh.yaml)
    expected = _expected_counts(folder)
    dst = out / f"{folder.name}.nx"
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=out))
    tmp = tmp_dir / dst.name
    try:
        used = "builtin"
        if engine in ("auto", "nxtomomill"):
            try:
                write_nxtomomill(folder, tmp)
                used = "nxtomomill"
            except Exception as exc:  # noqa: BLE001 - nxtomomill raises anything; the builtin engine follows
                if engine == "nxtomomill":
                    raise InputError(folder, f"nxtomomill edf2nx failed: {type(exc).__name__}: {exc}") from exc
                log.warning("%s: nxtomomill could not convert it (%s: %s); writing it with the builtin engine",
                            folder, type(exc).__name__, exc)
                tmp.unlink(missing_ok=True)
        if used == "builtin":
            write_builtin(folder, tmp)
        scan = read_nxtomo(tmp)
        _check(folder, scan, info.geometry, expected, used)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    scan.path = dst
    return Converted(folder, dst, used, scan)


def _check(folder: Path, scan: NXtomoScan, geometry, expected: dict[int, int], engine: str) -> None:  # noqa: ANN001
    g = scan.geometry
    for name in ("z1_m", "z2_m", "pixel_m", "energy_kev"):
        a, b = getattr(g, name), getattr(geometry, name)
        if not np.isclose(a, b, rtol=1e-6):
            raise InputError(folder, f"the {engine} conversion states {name} = {a}, the EDF folder {b}")
    got = {k: int(np.sum(scan.image_key == k)) for k in expected}
    if got != expected:
        raise InputError(folder, f"the {engine} conversion holds {got} frames by image key, the EDF folder "
                         f"{expected} (0 projection, 1 flat, 2 dark)")


def convert_scan(scan: str | Path, out: str | Path, engine: str = "auto",
                 progress: Callable[[int, int, str], None] | None = None) -> list[Converted]:
    """Convert every distance folder of an EDF scan into ``out`` (one NXtomo file per distance).

    Parameters
    ----------
    scan : str or Path
        The EDF scan: a folder of distance folders, or one distance folder.
    out : str or Path
        Output folder (created).
    engine : {"auto", "nxtomomill", "builtin"}
        ``auto``: nxtomomill where it works, else the builtin writer.
    progress : callable, optional
        ``progress(done, total, stage)`` after each distance.

    Returns
    -------
    list of Converted

    Raises
    ------
    InputError
        Naming the folder or file and the problem.
    """
    folders = distance_folders(scan)
    done = []
    for i, folder in enumerate(folders):
        done.append(convert_distance(folder, out, engine))
        if progress:
            progress(i + 1, len(folders), "convert")
    return done
