"""Write a simulated scan progressively, as a running acquisition does, so a watcher can follow it.

:func:`stream_scan` writes the frames of :func:`~xnh_stream.simulate.scan.simulate_scan` (the same
:class:`~xnh_stream.simulate.scan.ScanModel`, so the same counts for the same config) at a chosen frame
rate, in one of three layouts:

``"nxtomo-chunks"``
    per distance a folder ``{name}_{k}_/`` with chunk files ``{name}_{k}_NNNN.nx`` of ``chunk_frames``
    frames. Each chunk file is pre-allocated (its size says nothing: the whole ``data`` block is allocated
    on disk at creation), then filled frame by frame (pixels first, then the per-frame keys), and gets its
    ``end_time`` when full. Entry attributes: ``expected_frames``, ``frame_offset``, ``distance_frames``,
    ``distance_name`` (see :mod:`xnh_stream.io.sources`).
``"nxtomo"``
    one growing NXtomo file per distance, ``{name}_{k}_.nx`` (the layout of ``simulate_scan``), frames
    appended one by one, ``end_time`` when the distance is done.
``"edf"``
    the legacy ID16A EDF layout: per distance a folder ``{name}_{k}_/`` with ``{name}_{k}_.info``,
    ``xnh.yaml`` (z1), ``darkend0000.edf`` (the darks accumulated into one frame, as spec writes them; readers
    divide by ``DARK_N``), raw flats ``refJJJJ_PPPP.edf``, projections
    ``{name}_{k}_NNNN.edf`` (return projections numbered from ``n_angles``), and ``{name}_{k}_.xml`` at the
    end of the distance (``.abo`` if stopped).

``order="sequential"`` writes the distances one after another (a real XNH scan: four full scans);
frames drawn ahead of their turn wait in a spill file on disk, so memory stays bounded.
``order="interleaved"`` writes every distance at each angle. ``truth.h5`` is written first (renamed into
place, never seen half-written). HDF5 files are opened with file locking by default, as a detector writer
does (a reader must open them with ``locking=False``); ``hdf5_locking=False`` writes without the lock,
as on the many beamline setups that disable HDF5 file locking on network filesystems.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from fabio.edfimage import EdfImage

from ..physics.geometry import DistanceGeometry
from ..io.sources import (
    DISTANCE_FRAMES_ATTR,
    DISTANCE_NAME_ATTR,
    EXPECTED_FRAMES_ATTR,
    FRAME_OFFSET_ATTR,
    SIDECAR_NAME,
)
from ..io.nxtomo import DARK, FLAT, RETURN, TRANSLATIONS, write_geometry_fields
from .phantom import Phantom
from .scan import ScanModel, SimFrame, SimulationConfig

LAYOUTS = ("nxtomo-chunks", "nxtomo", "edf")
#: Fill value of the key datasets: not a legal key, so an entry extended but not yet written is recognisable.
UNWRITTEN_KEY = -9
ORDERS = ("sequential", "interleaved")


def _digitize(counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Detector counts to the stored type (rounded and clipped, as NXtomoWriter stores them)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        counts = np.clip(np.rint(counts), info.min, info.max)
    return np.asarray(counts).astype(dtype, copy=False)


class LiveNXtomoFile:
    """An NXtomo file written frame by frame, as a detector writer does.

    Same fields as :class:`xnh_stream.io.nxtomo.NXtomoWriter` (the nxtomo package's conventions:
    :func:`~xnh_stream.io.nxtomo.write_geometry_fields`); in addition it can pre-allocate the frames,
    write without the HDF5 file lock, and be closed without ``end_time`` (an interrupted acquisition).

    Parameters
    ----------
    path : str or Path
        File to create (overwritten).
    frame_shape : tuple of int
        ``(ny, nx)``.
    geometry : DistanceGeometry
        z1, z2, pixel and energy.
    dtype : numpy dtype
        Stored frame type.
    n_frames : int, optional
        Pre-allocate this many frames (allocated on disk at creation, contiguous); the file states it in
        the entry attribute ``expected_frames``. ``None``: ``data`` grows with each frame.
    locking : bool
        Hold the HDF5 file lock while writing (as detector writers do).
    attrs : dict, optional
        More entry attributes (``frame_offset``, ``distance_frames``, ``distance_name``).
    """

    def __init__(self, path: str | Path, frame_shape: tuple[int, int], geometry: DistanceGeometry,
                 dtype: np.dtype | type = np.uint16, n_frames: int | None = None, locking: bool = True,
                 attrs: dict[str, Any] | None = None, entry: str = "entry0000") -> None:
        self.path = Path(path)
        self.n_frames = n_frames
        self.n_written = 0
        self.shape = tuple(int(s) for s in frame_shape)
        self._f = h5py.File(self.path, "w", locking=locking)
        e = self._entry = self._f.create_group(entry)
        e.attrs.update(NX_class="NXentry", definition="NXtomo", version=2.1)
        if n_frames is not None:
            e.attrs[EXPECTED_FRAMES_ATTR] = int(n_frames)
        for k, v in (attrs or {}).items():
            e.attrs[k] = v
        e["definition"] = "NXtomo"
        e["start_time"] = _dt.datetime.now().isoformat()
        inst = e.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        ny, nx = self.shape
        if n_frames is not None:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            self._data = det.create_dataset("data", shape=(n_frames, ny, nx), dtype=dtype, dcpl=dcpl)
        else:
            self._data = det.create_dataset("data", shape=(0, ny, nx), maxshape=(None, ny, nx), dtype=dtype,
                                            chunks=(1, ny, nx))
        self._data.attrs["interpretation"] = "image"

        def growing(group: h5py.Group, name: str, dt: type, fill: float, units: str | None = None) -> h5py.Dataset:
            # The fill value is not a legal value: an entry extended but not yet written is recognisable.
            ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, fillvalue=fill)
            if units:
                ds.attrs["units"] = units
            return ds

        # Written in this order for each frame, after its pixels: a frame is complete once image_key has it.
        sample = e.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        self._per_frame = [*(growing(sample, t, np.float64, np.nan, "m") for t in TRANSLATIONS),
                           growing(sample, "rotation_angle", np.float64, np.nan, "degree"),
                           growing(det, "count_time", np.float64, np.nan, "s"),
                           growing(det, "image_key_control", np.int32, UNWRITTEN_KEY),
                           growing(det, "image_key", np.int32, UNWRITTEN_KEY)]
        write_geometry_fields(e, geometry, self._data)
        self._f.flush()

    @property
    def full(self) -> bool:
        """All pre-allocated frames are written."""
        return self.n_frames is not None and self.n_written >= self.n_frames

    def write(self, frame: np.ndarray, image_key: int, image_key_control: int, angle_deg: float,
              count_time_s: float) -> None:
        """Write the next frame: its pixels (flushed), then its keys (``image_key`` last), then flush."""
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} differs from the file's {self.shape}")
        i = self.n_written
        if self.n_frames is None:
            self._data.resize(i + 1, axis=0)
        elif i >= self.n_frames:
            raise ValueError(f"{self.path} is full ({self.n_frames} frames)")
        self._data[i] = _digitize(frame, self._data.dtype)
        # Pixels reach the file before the keys that announce them: a reader (another process, or another
        # handle in this one, which does not see this handle's raw-data cache) never finds keys without data.
        self._f.flush()
        for ds, value in zip(self._per_frame, (0.0, 0.0, 0.0, angle_deg, count_time_s, image_key_control, image_key)):
            ds.resize(i + 1, axis=0)
            ds[i] = value
        self.n_written = i + 1
        self._f.flush()

    def close(self, complete: bool = True) -> None:
        """Close the file; ``complete`` writes ``end_time`` (without it the file stays unfinished)."""
        if self._f.id.valid:
            if complete:
                self._entry["end_time"] = _dt.datetime.now().isoformat()
            self._f.close()


# ------------------------------------------------------------------------------------- layout writers


class _DistanceWriter:
    """Writes the frames of one distance, in acquisition order."""

    files: list[Path]

    def write(self, fr: SimFrame, frame: np.ndarray) -> None:
        raise NotImplementedError

    def close(self, complete: bool) -> None:
        raise NotImplementedError


class _ChunkWriter(_DistanceWriter):
    def __init__(self, folder: Path, name: str, geometry: DistanceGeometry, shape: tuple[int, int],
                 dtype: type, n_total: int, chunk_frames: int, locking: bool) -> None:
        self.folder, self.name, self.geometry, self.shape, self.dtype = folder, name, geometry, shape, dtype
        self.n_total, self.chunk, self.locking = n_total, chunk_frames, locking
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._file: LiveNXtomoFile | None = None

    def write(self, fr: SimFrame, frame: np.ndarray) -> None:
        if self._file is None:
            c = fr.index // self.chunk
            start = c * self.chunk
            path = self.folder / f"{self.name}{c:04d}.nx"
            self._file = LiveNXtomoFile(path, self.shape, self.geometry, self.dtype,
                                        n_frames=min(self.chunk, self.n_total - start), locking=self.locking,
                                        attrs={FRAME_OFFSET_ATTR: start, DISTANCE_FRAMES_ATTR: self.n_total,
                                               DISTANCE_NAME_ATTR: self.name})
            self.files.append(path)
        self._file.write(frame, fr.image_key, fr.image_key_control, fr.angle_deg, fr.count_time_s)
        if self._file.full:
            self._file.close(complete=True)
            self._file = None

    def close(self, complete: bool) -> None:
        if self._file is not None:
            self._file.close(complete=complete and self._file.full)
            self._file = None


class _WholeWriter(_DistanceWriter):
    def __init__(self, path: Path, name: str, geometry: DistanceGeometry, shape: tuple[int, int], dtype: type,
                 n_total: int, locking: bool) -> None:
        self.files = [path]
        self._file = LiveNXtomoFile(path, shape, geometry, dtype, n_frames=None, locking=locking,
                                    attrs={EXPECTED_FRAMES_ATTR: n_total, DISTANCE_FRAMES_ATTR: n_total,
                                           DISTANCE_NAME_ATTR: name})
        self.n_total = n_total

    def write(self, fr: SimFrame, frame: np.ndarray) -> None:
        self._file.write(frame, fr.image_key, fr.image_key_control, fr.angle_deg, fr.count_time_s)

    def close(self, complete: bool) -> None:
        self._file.close(complete=complete and self._file.n_written == self.n_total)


class _EdfWriter(_DistanceWriter):
    """The legacy ID16A EDF layout of one distance (see the module docstring)."""

    def __init__(self, folder: Path, geometry: DistanceGeometry, cfg: SimulationConfig) -> None:
        self.folder, self.cfg = folder, cfg
        self.prefix = folder.name
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._darks: list[tuple[np.ndarray, dict[str, str]]] = []
        self._flats = self._projections = 0
        (folder / SIDECAR_NAME).write_text(yaml.safe_dump({"z1_m": float(geometry.z1_m)}))
        info = {"Prefix": self.prefix, "Directory": str(folder), "TOMO_N": cfg.n_angles,
                "ScanRange": repr(float(cfg.angular_range_deg)), "REF_N": cfg.n_flats, "REF_ON": cfg.n_angles,
                "DARK_N": cfg.n_darks, "Dim_1": cfg.nx, "Dim_2": cfg.ny, "Col_beg": 0, "Col_end": cfg.nx - 1,
                "Row_beg": 0, "Row_end": cfg.ny - 1, "PixelSize": repr(geometry.pixel_m * 1e6),
                "Distance": repr(geometry.z2_m * 1e3), "Energy": repr(float(geometry.energy_kev)),
                "Count_time": repr(float(cfg.count_time_s))}
        self._write_text(folder / f"{self.prefix}.info", "".join(f"{k}= {v}\n" for k, v in info.items()))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        part = path.with_name(path.name + ".part")
        part.write_text(text)
        part.replace(path)

    def _edf(self, name: str, frames: list[tuple[np.ndarray, dict[str, str]]]) -> None:
        img = EdfImage(data=frames[0][0], header=frames[0][1])
        for data, header in frames[1:]:
            img.append_frame(data=data, header=header)
        path = self.folder / name
        img.write(str(path))
        self.files.append(path)

    def write(self, fr: SimFrame, frame: np.ndarray) -> None:
        cfg = self.cfg
        header = {"motor_mne": "srot", "motor_pos": repr(float(fr.angle_deg)),
                  "count_time": repr(float(fr.count_time_s))}
        if fr.image_key == DARK:
            self._darks.append((frame, header))
            if len(self._darks) == cfg.n_darks:
                self._write_darks()
        elif fr.image_key == FLAT:
            j, at = self._flats % cfg.n_flats, (0 if self._flats < cfg.n_flats else cfg.n_angles)
            self._flats += 1
            self._edf(f"ref{j:04d}_{at:04d}.edf", [(frame, header)])
        else:
            number = self._projections
            self._projections += 1
            if fr.image_key_control != RETURN and number >= cfg.n_angles:
                raise ValueError("more regular projections than n_angles")
            self._edf(f"{self.prefix}{number:04d}.edf", [(frame, header)])

    def _write_darks(self) -> None:
        """The dark series as spec writes it: one frame, the sum of the ``DARK_N`` exposures (the camera's
        accumulation mode; readers divide by ``DARK_N``), in a type wide enough for the sum."""
        frames = np.stack([f for f, _ in self._darks])
        wide = np.uint32 if np.issubdtype(frames.dtype, np.integer) else np.float32
        total = frames.sum(axis=0, dtype=np.float64)
        if wide is np.uint32 and total.max() > np.iinfo(np.uint32).max:
            wide = np.float32
        header = dict(self._darks[0][1])
        self._edf("darkend0000.edf", [(total.astype(wide), header)])
        self._darks = []

    def close(self, complete: bool) -> None:
        self._darks = []  # an accumulation interrupted before DARK_N exposures is never written (as with spec)
        cfg = self.cfg
        if complete:
            xml = (f"<tomo><acquisition><scanName>{self.prefix}</scanName><tomo_N>{cfg.n_angles}</tomo_N>"
                   f"<scanRange>{cfg.angular_range_deg!r}</scanRange></acquisition></tomo>\n")
            self._write_text(self.folder / f"{self.prefix}.xml", xml)
        else:
            self._write_text(self.folder / f"{self.prefix}.abo", "aborted\n")


def distance_path(out: Path, name: str, layout: str) -> Path:
    """Where one distance of a scan goes: its file (``"nxtomo"``) or its folder (chunks, EDF)."""
    return out / (f"{name}.nx" if layout == "nxtomo" else name)


def distance_writer(layout: str, out: Path, name: str, geometry: DistanceGeometry, cfg: SimulationConfig,
                    n_frames: int, chunk_frames: int = 32, locking: bool = True) -> _DistanceWriter:
    """The writer of one distance in ``layout`` (module docstring), fed frames in acquisition order.

    Parameters
    ----------
    layout : {"nxtomo-chunks", "nxtomo", "edf"}
        File layout.
    out : Path
        Scan folder.
    name : str
        Distance name, ``{cfg.name}_{k}_``.
    geometry : DistanceGeometry
        The distance's geometry.
    cfg : SimulationConfig
        Frame shape, type and scan counts (the EDF ``.info`` file states them).
    n_frames : int
        Frames of the whole distance.
    chunk_frames : int
        Frames per chunk file (``"nxtomo-chunks"``).
    locking : bool
        Hold the HDF5 file lock while writing.

    Returns
    -------
    _DistanceWriter
        ``write(frame_spec, frame)`` per frame (a :class:`~xnh_stream.simulate.scan.SimFrame` with the keys,
        angle and index in the distance), then ``close(complete)``; ``files`` lists what it started.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = distance_path(out, name, layout)
    shape, dtype = (cfg.ny, cfg.nx), cfg.detector_dtype
    if layout == "nxtomo-chunks":
        return _ChunkWriter(path, name, geometry, shape, dtype, n_frames, chunk_frames, locking)
    if layout == "nxtomo":
        return _WholeWriter(path, name, geometry, shape, dtype, n_frames, locking)
    return _EdfWriter(path, geometry, cfg)


# ------------------------------------------------------------------------------------------ ordering


class _Spill:
    """Frames drawn before their turn, kept in one on-disk array per distance (memory stays bounded)."""

    def __init__(self, folder: Path, n_distances: int, n_per: int, shape: tuple[int, int], dtype: type) -> None:
        self.folder, self.n_per, self.shape, self.dtype = folder, n_per, shape, dtype
        self._arrays: dict[int, np.memmap] = {}
        self._meta: dict[tuple[int, int], SimFrame] = {}

    def put(self, fr: SimFrame, frame: np.ndarray) -> None:
        arr = self._arrays.get(fr.distance)
        if arr is None:
            arr = self._arrays[fr.distance] = np.lib.format.open_memmap(
                self.folder / f"distance{fr.distance}.npy", mode="w+", dtype=self.dtype,
                shape=(self.n_per, *self.shape))
        arr[fr.index] = frame
        self._meta[(fr.distance, fr.index)] = SimFrame(fr.distance, fr.index, fr.image_key, fr.image_key_control,
                                                       fr.angle_deg, fr.count_time_s, np.empty(0))

    def take(self, k: int, i: int) -> tuple[SimFrame, np.ndarray] | None:
        meta = self._meta.pop((k, i), None)
        if meta is None:
            return None
        return meta, np.array(self._arrays[k][i])


def _ordered(model: ScanModel, order: str, spill_dir: Path,
             progress: Callable[[int, int], None] | None) -> Iterator[tuple[SimFrame, np.ndarray]]:
    """The model's frames, digitized, in the requested write order."""
    dtype = model.cfg.detector_dtype
    frames = ((fr, _digitize(fr.counts, dtype)) for fr in model.frames(progress))
    if order == "interleaved":
        yield from frames
        return
    spill = _Spill(spill_dir, len(model.geometry.distances), model.frames_per_distance,
                   (model.cfg.ny, model.cfg.nx), dtype)
    for k in range(len(model.geometry.distances)):
        for i in range(model.frames_per_distance):
            got = spill.take(k, i)
            if got is not None:
                yield got
                continue
            for fr, frame in frames:
                if (fr.distance, fr.index) == (k, i):
                    yield fr, frame
                    break
                spill.put(fr, frame)
            else:
                raise RuntimeError(f"the model never drew frame {i} of distance {k}")


# ------------------------------------------------------------------------------------------ public API


@dataclass
class StreamedScan:
    """What :func:`stream_scan` wrote."""

    folder: Path
    layout: str
    order: str
    distance_paths: list[Path]  #: per distance: its folder (chunks, EDF) or its file (whole NXtomo)
    files: list[Path]  #: every frame file written, in the order it was started
    frames_written: int
    frames_total: int
    truth_file: Path
    config: SimulationConfig
    completed: bool  #: every frame written (False if stopped)
    elapsed_s: float
    extra: dict = field(default_factory=dict)


def stream_scan(out: str | Path, cfg: SimulationConfig | None = None, frames_per_second: float | None = 50.0,
                chunk_frames: int = 32, layout: str = "nxtomo-chunks", order: str = "sequential",
                phantom: Phantom | None = None, stop: threading.Event | None = None,
                progress: Callable[[int, int], None] | None = None, hdf5_locking: bool = True,
                spill_dir: str | Path | None = None) -> StreamedScan:
    """Write a simulated scan into ``out`` progressively, at ``frames_per_second``.

    Parameters
    ----------
    out : str or Path
        Output folder (created); watch it while this runs.
    cfg : SimulationConfig, optional
        Scan parameters (as for :func:`~xnh_stream.simulate.scan.simulate_scan`).
    frames_per_second : float or None
        Target write rate over all distances; ``None`` or ``inf``: as fast as the simulation goes (the
        simulation itself may be slower than the target).
    chunk_frames : int
        Frames per chunk file (``"nxtomo-chunks"``).
    layout : {"nxtomo-chunks", "nxtomo", "edf"}
        File layout (module docstring).
    order : {"sequential", "interleaved"}
        Distances one after another, or every distance at each angle.
    phantom : Phantom, optional
        Phantom to image (generated from ``cfg.seed`` if omitted).
    stop : threading.Event, optional
        Set it to stop early: open files are closed unfinished (no ``end_time``; EDF ``.abo``).
    progress : callable, optional
        ``progress(frames_written, frames_total)`` after each frame.
    hdf5_locking : bool
        Hold the HDF5 file lock while writing (as detector writers do).
    spill_dir : str or Path, optional
        Where frames drawn ahead of their turn wait (``"sequential"``); a temporary folder by default.

    Returns
    -------
    StreamedScan

    Notes
    -----
    Runs in the calling thread; run it in a :class:`threading.Thread` (see :class:`StreamThread`) or a
    process to watch it. All arguments but ``stop`` and ``progress`` are picklable.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if frames_per_second is not None and not frames_per_second > 0:
        raise ValueError(f"frames_per_second must be positive (or None), got {frames_per_second}")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    t_start = time.monotonic()
    model = ScanModel(cfg, phantom)
    cfg = model.cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth_file = model.write_truth(out)
    geo = model.geometry
    K, n_per = len(geo.distances), model.frames_per_distance
    names = [f"{cfg.name}_{k + 1}_" for k in range(K)]
    paths = [distance_path(out, n, layout) for n in names]

    def make_writer(k: int) -> _DistanceWriter:
        return distance_writer(layout, out, names[k], geo.distances[k], cfg, n_per, chunk_frames, hdf5_locking)

    writers: dict[int, _DistanceWriter] = {}
    recorded: dict[int, int] = {}
    written = [0] * K
    total = K * n_per
    n = 0
    period = 0.0 if frames_per_second is None or math.isinf(frames_per_second) else 1.0 / frames_per_second
    own_spill = spill_dir is None
    spill = Path(tempfile.mkdtemp(prefix="xnh-stream-spill-")) if own_spill else Path(spill_dir)
    spill.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    stopped = False
    t0 = time.monotonic()
    try:
        for fr, frame in _ordered(model, order, spill, None):
            if period:
                delay = t0 + n * period - time.monotonic()
                if delay > 0 and stop is not None:
                    if stop.wait(delay):
                        stopped = True
                        break
                elif delay > 0:
                    time.sleep(delay)
            if stop is not None and stop.is_set():
                stopped = True
                break
            k = fr.distance
            if k not in writers:
                writers[k] = make_writer(k)
                recorded[k] = 0
            w = writers[k]
            w.write(fr, frame)
            files.extend(w.files[recorded[k]:])
            recorded[k] = len(w.files)
            written[k] += 1
            n += 1
            if written[k] == n_per:
                w.close(complete=True)
            if progress:
                progress(n, total)
    finally:
        for k, w in writers.items():
            if written[k] < n_per:
                w.close(complete=False)
        if own_spill:
            shutil.rmtree(spill, ignore_errors=True)
    return StreamedScan(folder=out, layout=layout, order=order, distance_paths=paths, files=files,
                        frames_written=n, frames_total=total, truth_file=truth_file, config=cfg,
                        completed=(n == total and not stopped), elapsed_s=time.monotonic() - t_start,
                        extra={"offsets_px": model.offsets_px, "cor_px": model.cor_px})


class StreamThread(threading.Thread):
    """Run :func:`stream_scan` in a background thread; :meth:`result` re-raises its error.

    Examples
    --------
    >>> t = StreamThread(folder, cfg, frames_per_second=20)  # doctest: +SKIP
    >>> t.start(); ...; t.stop(); scan = t.result()
    """

    def __init__(self, out: str | Path, cfg: SimulationConfig | None = None, **kwargs: Any) -> None:
        super().__init__(name="xnh-stream-scan", daemon=True)
        self._stop_event = threading.Event()
        self._args = (out, cfg)
        self._kwargs = kwargs
        self._result: StreamedScan | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = stream_scan(*self._args, stop=self._stop_event, **self._kwargs)
        except BaseException as exc:  # noqa: BLE001 (handed to result(), re-raised there)
            self._error = exc

    def stop(self) -> None:
        """Ask the writer to stop after the current frame."""
        self._stop_event.set()

    def result(self, timeout: float | None = None) -> StreamedScan:
        """Wait for the end and return what was written (raises what the writer raised)."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"stream_scan still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
