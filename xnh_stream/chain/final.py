"""The final pass: a finished scan to ``volume.ome.zarr`` and ``report.json``, out of core, resumable.

One method per step (:class:`FinalChain`), each either done here on metadata or mapped by an
:class:`~xnh_stream.chain.executor.Executor` over independent units (distances, batches of angles, slabs
of rows) whose functions are the module-level ``*_task`` functions below:

==============  =======================================================  ===================================
step            what                                                      unit of work (task)
==============  =======================================================  ===================================
calibrate       mean dark, median flat series of every distance           a distance
pair            the projections of every distance paired by angle         (metadata, here)
align           distance shifts on a subset of angles, smooth model       an angle
material        delta/beta from the fit of the linear CTF to every        a batch of angles, then one task
                distance's holograms on a subset of angles
rotation axis   from a 0/180 pair of the reference distance, else from    (two frames, here)
                the sharpness of a sinogram
envelope        binned Paganin pass of the reference distance: support    a batch of angles, then one task
                and mean delta of the sample (two-material CTF)
phase           flat-field, align, multi-distance CTF of every angle,     a batch of angles
                written to the projection store on disk
backproject     FBP of a slab of rows from all projections: even/odd      a slab of rows
                halves; the slab written into the volume, the halves of
                the FSC boxes kept
pyramid         the lower-resolution levels of the OME-Zarr volume         a slab of a level
denoise         (``denoise.method``) a network trained on the whole       one task, then a slab of rows
                half-volumes; ``volume.ome.zarr/denoised`` and its
                levels (:mod:`~xnh_stream.chain.denoise`)
quality         FSC (half-bit) of the central boxes, edge fit, dose,      a box
                drift and warping from the return projections
report          ``report.json``                                           (here)
==============  =======================================================  ===================================

No process holds the volume or all projections: a phase task holds the frames of one angle, a slab task
the two half-volumes of its rows (``slab_rows`` rows, chosen so they stay within ``task_memory_bytes``). The
work folder (:class:`~xnh_stream.state.work.WorkFolder`, ``OUT/work``) records each finished unit with the
CRC-32 of what it wrote, so a run killed at any point resumes where it stopped, and a unit whose data no
longer match (a deleted or damaged chunk) is redone, never read. Before anything is published the volume is
checked (finite, not constant, within the range of its projections); then it is published by renames in an
order that a kill at any instant cannot turn into a wrong volume (:mod:`~xnh_stream.chain.publish`): the
report comes last and records the checksums, so a report that exists describes the volume beside it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ProcessConfig
from ..io.names import WORK_NAME
from ..io.nxtomo import FIELDS, InputError, read_sample_name, read_sample_translation
from ..io.omezarr import CHECKED_COMPRESSORS, create_volume, open_volume
from ..io.sources import FrameRecord
from ..physics.align import ShiftModel, measure_distance_shifts
from ..physics.denoise import Noise2InverseConfig
from ..physics.envelope import SampleEnvelope, envelope_from_volume
from ..physics.fbp import FBPAccumulator
from ..physics.fsc import edge_resolution, fourier_shell_correlation, half_bit_threshold, resolution_from_fsc
from ..physics.material import (
    DeltaBetaEstimate,
    MaterialBand,
    TruncatedCTFFit,
    estimate_delta_beta,
    material_band,
    noise_frames,
    window_samples,
)
from ..physics.phase import retrieve_phase_paganin
from ..physics.xp import bin_2d, binning_for, get_array_module, to_numpy
from ..quality.alerts import Alert
from ..state.journal import PROCESSED, QUARANTINED, RECEIVED, FrameJournal
from ..state.journal import FrameRecord as JournalEntry
from ..state.lock import OutputLock
from ..state.projections import ProjectionStore
from ..state.work import DamagedWork, WorkFolder, crash_point, crc32
from .angles import AngleTable
from .axis import MIN_SINOGRAM_ANGLES, axis_rows, axis_sinogram_rows, decide_rotation_axis
from .calibration import Calibration
from .denoise import (
    DENOISED_NAME,
    HALVES_FULL_NAME,
    DenoiseSlab,
    create_full_halves,
    denoise_slab_task,
    denoise_train_task,
)
from .executor import Executor, SerialExecutor
from .frames import CorrectedFrames, Outcome
from .layout import STEP_UNITS, ChainLayout  # noqa: F401 - ChainLayout exported here as before
from .phase_methods import phase_method
from .publish import (
    VolumeStats,
    check_volume,
    damaged_units,
    describe_damage,
    publish,
    region_crc_task,
    stage,
)
from .report import (
    JOURNAL_NAME,
    REPORT_NAME,
    VOLUME_NAME,
    Completion,
    Dose,
    FrameAccount,
    QuarantinedFrame,
    Resolution,
    RotationAxis,
    ScanReport,
    VolumeRecord,
)
from .scan import DistanceIndex, ScanIndex, left_out, left_out_alert
from .steps import AngleProcessor, PhaseSetup, processor_for, read_frame

log = logging.getLogger(__name__)

#: Columns of the binned reference reconstruction that finds the sample envelope.
ENVELOPE_COLUMNS = 256
#: Side of the central cube of the first FSC box the erf edge fit (the resolution cross-check) runs on.
EDGE_FIT_PX = 128
#: Simulated noise frames of the delta/beta fit (the noise part of its residual).
MATERIAL_NOISE_FRAMES = 64
#: The delta/beta fit is used when the standard error of its log is below this (about 95 % within a factor 2) ...
MATERIAL_MAX_LOG_SE = 0.35
#: ... and its residual at the minimum is at most this many times the simulated noise's (foreign scans 1.14-1.34,
#: where it found delta/beta within 20 %; the analytic simulator 2.0-2.5; the voxel simulator, whose beam drifts
#: between the flat series, 3.8-6.5, where the estimate was 2-3x the mean delta/beta and cost r 0.11)
MATERIAL_MAX_NOISE_SCALE = 3.0


def delta_beta_of(formula: str, density_g_cm3: float, energy_kev: float) -> float:
    """delta/beta of a material at an energy (xraydb)."""
    import xraydb  # noqa: PLC0415 - its tables take 0.6 s to load: only where a material is looked up

    delta, beta, _ = xraydb.xray_delta_beta(formula, density_g_cm3, energy_kev * 1e3)
    return float(delta / beta)


# ----------------------------------------------------------------------------------------------------------
# Options and results
# ----------------------------------------------------------------------------------------------------------
def as_alert(alert: Alert | dict[str, Any]) -> Alert:
    """An alert as the typed :class:`~xnh_stream.quality.alerts.Alert` (an entry in its JSON form too: a
    result saved in the work folder by an earlier version holds dicts).

    Parameters
    ----------
    alert : Alert or dict
        The alert.

    Returns
    -------
    Alert
        The same alert, typed.
    """
    if isinstance(alert, Alert):
        return alert
    return Alert(**{k: v for k, v in alert.items() if k in ("name", "severity", "message", "value", "threshold",
                                                              "labels")})


def alert_entries(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    """The ``alerts`` entries of ``report.json`` for the final pass's own alerts (:meth:`Alert.as_entry`:
    ``name``, ``severity``, ``message``; ``docs/contracts.md``, "Alerts").

    Parameters
    ----------
    alerts : sequence of Alert
        The alerts.

    Returns
    -------
    list of dict
        Their JSON entries, in order.
    """
    return [a.as_entry() for a in alerts]


@dataclass
class ChainResult:
    """What the final pass produced."""

    report: ScanReport
    out: Path | None
    volume_path: Path
    #: The outputs were already complete (checked against their report): nothing was recomputed.
    already_complete: bool = False

    def keep_temporary(self, folder: Path) -> None:
        """Remove ``folder`` (the temporary work folder of a run without an output folder, which holds
        :attr:`volume_path`) when this result is garbage-collected or the interpreter exits."""
        weakref.finalize(self, shutil.rmtree, folder, True)

    @property
    def volume(self) -> np.ndarray:
        """Level 0 of the volume, read from disk (small volumes; tests)."""
        arr, _ = open_volume(self.volume_path, 0)
        return np.asarray(arr[...])


# ----------------------------------------------------------------------------------------------------------
# Tasks (module-level functions of picklable arguments; run wherever the executor puts them)
# ----------------------------------------------------------------------------------------------------------
def calibrate_task(distance: DistanceIndex, pca_components: int) -> tuple[Calibration, Outcome]:
    """Darks and flats of one distance (unusable ones are noted, not used)."""
    cal = Calibration(distance.frame_shape, pca_components)
    outcome = Outcome()
    for rec in distance.darks:
        frame, problem = read_frame(rec)
        if frame is None:
            outcome.bad(rec, problem or "unreadable")
        else:
            cal.add_dark(frame)
    for rec in distance.flats:
        frame, problem = read_frame(rec)
        if frame is None:
            outcome.bad(rec, problem or "unreadable")
        else:
            cal.add_flat(frame, rec.sequence)
    cal.close_series()
    return cal, outcome


@dataclass
class AlignSample:
    """Distance shifts measured at one angle."""

    slot: int
    theta_deg: float
    shifts_yx: np.ndarray | None
    ok: np.ndarray | None
    peaks: np.ndarray | None
    reasons: tuple[str, ...]
    outcome: Outcome


def align_task(item: tuple[int, float, dict[int, FrameRecord]], corrected: CorrectedFrames,
               geometry: Any, delta_beta: float, config: ProcessConfig, measure: bool) -> AlignSample:
    """Shifts of every distance at one angle (:func:`~xnh_stream.physics.align.measure_distance_shifts`)."""
    slot, theta, frames = item
    xp = get_array_module(config.compute.backend)
    outcome = Outcome()
    K = len(geometry.distances)
    ref = geometry.reference
    imgs = [corrected.corrected(frames[k], k, outcome, xp) if k in frames else None for k in range(K)]
    shifts = ok = peaks = None
    reasons: tuple[str, ...] = ()
    if measure and all(im is not None for im in imgs):
        res = measure_distance_shifts(imgs, geometry, config.alignment.delta_beta,
                                      paganin_pad=config.alignment.paganin_pad, xp=xp)
        shifts, ok, peaks, reasons = res.shifts_yx, res.ok, res.peaks, res.reasons
    return AlignSample(slot, theta, shifts, ok, peaks, reasons, outcome)


@dataclass
class MaterialSamples:
    """What a material task read: per angle the low-passed windows of every distance
    (:func:`~xnh_stream.physics.material.window_samples`), the sum of the aligned frames (the intensity of
    the simulated noise) and the frames set aside."""

    slots: list[int]
    samples: list[np.ndarray]
    intensity: np.ndarray | None
    outcome: Outcome


def material_task(batch: list[tuple[int, float, dict[int, FrameRecord]]], corrected: CorrectedFrames,
                  geometry: Any, models: tuple[ShiftModel | None, ...], band: MaterialBand, config: ProcessConfig
                  ) -> MaterialSamples:
    """Flat-field and align every distance of a batch of angles (angles missing a distance are skipped) and
    keep the windows of the delta/beta fit."""
    K = len(geometry.distances)
    proc = AngleProcessor(geometry, tuple(corrected.calibrations[geometry.reference].shape), 1.0, config)
    proc.models = list(models) if models else [None] * K
    outcome = Outcome()
    slots, samples, total = [], [], None
    for slot, theta, frames in batch:
        if len(frames) < K:
            continue
        imgs = [corrected.corrected(frames[k], k, outcome) for k in range(K)]
        if any(im is None for im in imgs):
            continue
        stack = np.stack([np.asarray(proc.aligned(k, im, theta), dtype=np.float64) for k, im in enumerate(imgs)])
        samples.append(window_samples(stack, band))
        total = stack if total is None else total + stack
        slots.append(slot)
    return MaterialSamples(slots, samples, total, outcome)


def material_fit_task(part: tuple[list[np.ndarray], np.ndarray, np.ndarray], geometry: Any, band: MaterialBand,
                      seed: int = 0) -> DeltaBetaEstimate:
    """The delta/beta of the windows of ``part = (samples, mean intensity [K, ny, nx], relative noise variance
    per distance)`` (:func:`~xnh_stream.physics.material.estimate_delta_beta`)."""
    samples, intensity, variance = part
    rng = np.random.default_rng(seed)
    noise = np.stack([window_samples(noise_frames(intensity, variance, geometry, rng), band)
                      for _ in range(MATERIAL_NOISE_FRAMES)])
    return estimate_delta_beta(TruncatedCTFFit(geometry, band), samples, noise)


@dataclass(frozen=True)
class SurveyJob:
    """What the survey of the reference distance keeps: binned Paganin projections (the envelope) and
    full-resolution rows of the flat-fielded frames (the rotation axis); either may be off (None)."""

    binning: int
    binned: ProjectionStore | None
    rows: tuple[int, ...]
    row_store: ProjectionStore | None


def survey_task(batch: list[tuple[int, float, FrameRecord]], corrected: CorrectedFrames, geometry: Any,
                delta_beta: float, config: ProcessConfig, job: SurveyJob) -> tuple[list[int], Outcome, list[int]]:
    """One pass over reference-distance frames: binned Paganin projections in binned-voxel units (the
    envelope) and the chosen rows of the flat-fielded frame (the rotation axis); returns the slots written,
    the frames set aside and per slot the CRC-32 of what it wrote (rows, then binned projection)."""
    xp = get_array_module(config.compute.backend)
    d = geometry.distances[geometry.reference]
    scale = -1.0 / (2 * np.pi / d.wavelength_m * d.effective_pixel_m)  # phase -> line integral, voxel units
    b = job.binning
    outcome = Outcome()
    slots, crcs = [], []
    for slot, _, rec in batch:
        img = corrected.corrected(rec, geometry.reference, outcome, xp)
        if img is None:
            continue
        crc = 0
        if job.row_store is not None:
            crc = job.row_store.write(slot, to_numpy(axis_sinogram_rows(img)))
        if job.binned is not None:
            binned = bin_2d(img, b)
            phi = retrieve_phase_paganin(binned, (d.propagation_distance_m, d.wavelength_m, d.effective_pixel_m * b),
                                         delta_beta, xp=xp)
            crc = job.binned.write(slot, to_numpy(phi * (scale / b)), crc)
        slots.append(slot)
        crcs.append(crc)
    return slots, outcome, crcs


def survey_crcs_task(slots: list[int], job: SurveyJob) -> list[int | None]:
    """Per slot the CRC-32 of what the survey stores hold now (as :func:`survey_task` computed it)."""
    out: list[int | None] = []
    for slot in slots:
        crc: int | None = 0
        for store in (job.row_store, job.binned):
            if store is not None and crc is not None:
                crc = store.crc(slot, crc)
        out.append(crc)
    return out


def envelope_task(slots: list[int], store: ProjectionStore, thetas_deg: np.ndarray, frame_shape: tuple[int, int],
                  binning: int, cor: float, backend: str) -> SampleEnvelope | None:
    """The sample envelope from the binned reference reconstruction (slots added in order)."""
    xp = get_array_module(backend)
    ny, nx = frame_shape
    acc = FBPAccumulator(ny // binning, nx // binning, cor=(cor + 0.5) / binning - 0.5, padding="edge", xp=xp)
    slots = sorted(slots)
    for a in range(0, len(slots), 64):
        part = slots[a:a + 64]
        block = store.read_rows(np.asarray(part), 0, store.shape[1])
        acc.add_many(xp.asarray(block), np.deg2rad(np.asarray(thetas_deg)[part]), indices=part)
    if acc.n_added == 0:
        return None
    return envelope_from_volume(to_numpy(acc.volume()), binning, frame_shape, cor, xp=xp)


@dataclass
class PhaseBatch:
    """What a phase task wrote: the slots (an angle with no usable frame at any distance has none), the
    CRC-32 of each slot's projection, their largest |value|, and the frames set aside."""

    written: list[int]
    crc: list[int]
    absmax: float
    outcome: Outcome


def phase_task(batch: list[tuple[int, float, dict[int, FrameRecord]]], setup: PhaseSetup,
               corrected: CorrectedFrames, store: ProjectionStore) -> PhaseBatch:
    """Phase-retrieved projections of a batch of angles, written to the projection store."""
    proc = processor_for(setup)
    outcome = Outcome()
    written, crcs, absmax = [], [], 0.0
    for slot, theta, frames in batch:
        images = {}
        for k, rec in frames.items():
            img = corrected.corrected(rec, k, outcome, proc.xp)
            if img is not None:
                images[k] = img
        if not images:
            continue
        projection = to_numpy(proc.retrieve(images, theta))
        crcs.append(store.write(slot, projection))
        absmax = max(absmax, float(np.max(np.abs(projection))))
        written.append(slot)
    return PhaseBatch(written, crcs, absmax, outcome)


def projection_crcs_task(slots: list[int], store: ProjectionStore) -> list[int | None]:
    """Per slot the CRC-32 of the projection the store holds now (None: unreadable)."""
    return [store.crc(slot) for slot in slots]


@dataclass(frozen=True)
class SlabJob:
    """One slab of rows to reconstruct, and where its pieces go."""

    r0: int
    r1: int
    slots: np.ndarray  # written slots, increasing
    thetas_rad: np.ndarray  # their angles
    cor: float
    window: str
    padding: str
    n_out: int
    volume_path: str
    boxes: tuple[tuple[int, int, int, int, int, int], ...]
    halves_path: str
    angles_per_read: int = 64
    halves_full: str = ""  # a zarr group of both whole half-volumes ("0", "1"): the denoiser's input


@dataclass
class SlabOutput:
    """What a slab task wrote: the CRC-32 of its rows of level 0 and of its parts of the FSC boxes' halves,
    and the statistics of its voxels (the volume's plausibility check)."""

    r0: int
    crc: int
    halves_crc: int
    stats: VolumeStats


def _halves_parts(job: SlabJob) -> list[tuple[int, int, int]]:
    """The boxes a slab cuts: ``(box, first plane in the box, last plane + 1)``."""
    parts = []
    for i, (z0, z1, _, _, _, _) in enumerate(job.boxes):
        a, b = max(z0, job.r0), min(z1, job.r1)
        if a < b:
            parts.append((i, a, b))
    return parts


def slab_task(job: SlabJob, store: ProjectionStore) -> SlabOutput:
    """Back-project every projection's rows ``r0:r1``; write the slab into level 0 and the FSC boxes' halves."""
    import zarr  # noqa: PLC0415

    rows = job.r1 - job.r0
    acc = FBPAccumulator(rows, store.shape[2], n_out=job.n_out, cor=job.cor, window=job.window, padding=job.padding)
    for a in range(0, job.slots.size, job.angles_per_read):
        part = job.slots[a:a + job.angles_per_read]
        block = store.read_rows(part, job.r0, job.r1)
        # all the angles read at once: the slab is read and written once per block of angles, not per angle
        acc.add_many(block, job.thetas_rad[a:a + part.size], indices=part)
        del block
    level0, _ = open_volume(job.volume_path, 0, mode="r+")
    slab = np.asarray(to_numpy(acc.volume()), dtype=np.float32)
    level0[job.r0:job.r1] = slab
    halves_crc = 0
    if job.boxes:
        group = zarr.open_group(job.halves_path, mode="r+")
        for i, a, b in _halves_parts(job):
            z0, _, y0, y1, x0, x1 = job.boxes[i]
            halves = np.stack([to_numpy(h) for h in acc.half_volumes((slice(a - job.r0, b - job.r0), slice(y0, y1),
                                                                      slice(x0, x1)))])
            group[f"box{i}"][:, a - z0:b - z0] = halves
            halves_crc = crc32(halves, halves_crc)
    if job.halves_full:
        group = zarr.open_group(job.halves_full, mode="r+")
        for name, half in zip("01", acc.half_volumes()):
            half = np.asarray(to_numpy(half), dtype=np.float32)
            group[name][job.r0:job.r1] = half
            halves_crc = crc32(half, halves_crc)
    return SlabOutput(job.r0, crc32(slab), halves_crc, VolumeStats.of(slab))


def slab_crcs_task(job: SlabJob) -> tuple[int | None, int | None]:
    """The CRC-32s of a slab's rows of level 0 and of its parts of the halves as read now (None: unreadable)."""
    import zarr  # noqa: PLC0415

    crc = region_crc_task((str(Path(job.volume_path) / "s0"), job.r0, job.r1))
    halves_crc: int | None = 0
    try:
        group = zarr.open_group(job.halves_path, mode="r") if job.boxes else None
        for i, a, b in _halves_parts(job):
            z0 = job.boxes[i][0]
            halves_crc = crc32(np.asarray(group[f"box{i}"][:, a - z0:b - z0]), halves_crc)  # type: ignore[index]
        if job.halves_full:
            full = zarr.open_group(job.halves_full, mode="r")
            for name in "01":
                halves_crc = crc32(np.asarray(full[name][job.r0:job.r1]), halves_crc)
    except Exception as exc:  # noqa: BLE001 - damaged halves: the slab is redone
        log.warning("FSC halves of rows %d:%d unreadable: %s", job.r0, job.r1, exc)
        halves_crc = None
    return crc, halves_crc


def pyramid_task(job: tuple[str, int, int, int]) -> tuple[int, int]:
    """Level ``level`` rows ``r0:r1`` as the 2x2x2 block mean of level ``level - 1``; returns ``r0`` and the
    CRC-32 of what it wrote."""
    path, level, r0, r1 = job
    src, _ = open_volume(path, level - 1)
    dst, _ = open_volume(path, level, mode="r+")
    nz, ny, nx = dst.shape
    out = np.empty((r1 - r0, ny, nx), np.float32)
    step = max(1, min(r1 - r0, 8))  # a few planes at a time: the task holds its output and 2 * step inputs
    for a in range(r0, r1, step):
        b = min(a + step, r1)
        block = np.asarray(src[2 * a:2 * b, :2 * ny, :2 * nx], dtype=np.float32)
        out[a - r0:b - r0] = block.reshape(b - a, 2, ny, 2, nx, 2).mean(axis=(1, 3, 5))
    dst[r0:r1] = out  # whole chunks: no other task writes them
    return r0, crc32(out)


@dataclass
class BoxResolution:
    """The FSC of one box and, for the central box, the edge fit and the central region of its halves."""

    freq: np.ndarray
    fsc: np.ndarray
    n: np.ndarray
    edge: Any = None
    region: tuple[np.ndarray, np.ndarray] | None = None


def fsc_box_task(job: tuple[str, int, float, int]) -> BoxResolution:
    """FSC curve of one box; for box 0 also the erf edge fit and its central ``region_px`` cube of halves."""
    import zarr  # noqa: PLC0415

    path, i, voxel, region_px = job
    halves = np.asarray(zarr.open_group(path, mode="r")[f"box{i}"][...])
    freq, fsc, n = fourier_shell_correlation(halves[0], halves[1])
    out = BoxResolution(freq, fsc, n)
    if i == 0:
        def centre(side: int) -> tuple[slice, ...]:
            c = [s // 2 for s in halves.shape[1:]]
            h = [min(side, s) // 2 for s in halves.shape[1:]]
            return tuple(slice(ci - hi, ci - hi + 2 * hi) for ci, hi in zip(c, h))

        # the erf edge fit needs one strong edge, not the whole box (it takes ~60 bytes per voxel)
        volume = (halves[0][centre(EDGE_FIT_PX)] + halves[1][centre(EDGE_FIT_PX)]) / 2
        out.edge = edge_resolution(volume, voxel_m=voxel,
                                   half_length=float(max(2, min(12, (min(volume.shape) - 4) // 2))))
        sl = centre(region_px)
        out.region = (np.ascontiguousarray(halves[0][sl]), np.ascontiguousarray(halves[1][sl]))
    return out


# ----------------------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------------------
class FinalChain:
    """The final pass over a finished scan (see the module docstring).

    Parameters
    ----------
    index : ScanIndex
        The scan's frames.
    out : Path or None
        Output folder; None writes into a temporary folder (:attr:`ChainResult.volume_path`).
    config : ProcessConfig
        Processing options.
    executor : Executor, optional
        Where the tasks run (default: here, one after the other).
    layout : ChainLayout, optional
        How the work is cut.
    progress : callable, optional
        ``progress(done, total, step)`` after each unit of work.
    monitor : QualityMonitor, optional
        A monitor already fed with every frame (the live stream's); without one, the final pass feeds its
        own from the files.
    replace : bool
        Replace the outputs of another run found in ``out`` (``--overwrite``; the live stream, whose
        command checked its output folder); without it they are refused.
    stream_store : Path, optional
        The live stream's store of flat-fielded projections: frames it holds flat-fielded as this pass
        would are taken from it, not read from their files again (:mod:`~xnh_stream.chain.frames`).
    """

    def __init__(self, index: ScanIndex, out: str | Path | None, config: ProcessConfig,
                 executor: Executor | None = None, layout: ChainLayout | None = None,
                 progress: Callable[[int, int, str], None] | None = None, monitor: Any = None,
                 replace: bool = False, stream_store: str | Path | None = None) -> None:
        self.index, self.config = index, config
        self.replace = replace
        self.stream_store = stream_store
        self.frames_from_stream = 0  # projections taken flat-fielded from it (report frames.from_stream)
        self.out = Path(out) if out is not None else None
        self.executor = executor or SerialExecutor()
        self.layout = layout or ChainLayout()
        self._progress = progress
        self.monitor = monitor
        self.alerts: list[Alert] = []  # the final pass's own alerts; report.json's entries at _report
        self.completion: Completion | None = None  # why a live scan counted as complete (the report says)
        self.surveyed: list[int] = []  # slots the survey of the reference distance covered
        self.quarantine: dict[str, QuarantinedFrame] = {}
        self.timing: dict[str, float] = {}
        self._work: WorkFolder | None = None  # opened by run(), under the output folder's lock
        #: without an output folder: the removal of the temporary folder that holds the work, with this chain
        #: (steps called one by one) or, once :meth:`run` hands the folder over, with the result
        self._temporary_owner: weakref.finalize | None = None
        geo = index.geometry
        self.geometry = geo
        self.K = len(geo.distances)
        self.ref = geo.reference
        self.shape = index.frame_shape
        self.delta_beta = config.sample.delta_beta or delta_beta_of(config.sample.formula, config.sample.density,
                                                             geo.energy_kev)
        #: the survey's Paganin (the envelope and its sample-in-air test) keeps the given or composition's
        #: value: a fitted one changes the support's surroundings (a pin in air read 0.26 with 327, 0.08 with 111)
        self.survey_delta_beta = self.delta_beta
        #: where delta/beta comes from and what the fit found (report ``phase.delta_beta_estimate``)
        self.material_record: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def work(self) -> WorkFolder:
        """The work folder (``OUT/work``, or a temporary folder without ``out``), opened on first use."""
        if self._work is None:
            if self.out is not None:
                base = self.out
            else:
                base = Path(tempfile.mkdtemp(prefix="xnh-final-"))
                self._temporary_owner = weakref.finalize(self, shutil.rmtree, base, True)
            self._work = WorkFolder(base / WORK_NAME, self._spec())
        return self._work

    def _spec(self) -> dict[str, Any]:
        h = hashlib.sha1()
        for rec in sorted(self.index.frames, key=lambda r: r.frame_id):
            h.update(f"{rec.frame_id}|{rec.image_key}|{rec.image_key_control}|{rec.rotation_angle_deg}\n".encode())
        # the layout is not part of it: stages whose units depend on it name their markers after it
        return {"frames": h.hexdigest(), "config": self.config.to_dict()}

    def progress(self, done: int, total: int, step: str) -> None:
        """Report progress of a step: ``done`` of ``total`` units of :data:`STEP_UNITS` ``[step]`` (distances,
        angles, batches of angles, slabs, levels, boxes)."""
        if self._progress:
            self._progress(done, total, step)

    def _note(self, outcome: Outcome, stage: str) -> None:
        for fid, reason in outcome.quarantined:
            self._quarantine(fid, reason, stage)

    def _quarantine(self, fid: str, reason: str, stage: str) -> None:
        if fid not in self.quarantine:
            path, _, idx = fid.rpartition("#")
            self.quarantine[fid] = QuarantinedFrame(path, int(idx) if idx.isdigit() else None, reason, stage)
            log.warning("quarantined %s: %s", fid, reason)

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """A driver-side step's result, from the work folder when a previous run finished it (and its
        checksum holds; a damaged one is computed again)."""
        if self.work.has(name):
            try:
                return self.work.load(name)
            except DamagedWork as exc:
                log.warning("%s: computing it again", exc)
        t0 = time.perf_counter()
        steps = set(self.timing)
        value = compute()
        if set(self.timing) == steps:  # a step that mapped no task of its own
            self.timing[name] = round(time.perf_counter() - t0, 3)
        self.work.save(name, value)
        return value

    def _map(self, name: str, fn: Callable[..., Any], items: Sequence[Any], *shared: Any,
             cpus: float = 1.0) -> list[Any]:
        """Map a task over items with progress; results in item order."""
        t0 = time.perf_counter()
        results: list[Any] = [None] * len(items)
        for n, (i, res) in enumerate(self.executor.map(fn, items, *shared, cpus=cpus,
                                                       memory_bytes=self.layout.task_memory_bytes), start=1):
            results[i] = res
            self.progress(n, len(items), name)
        self.timing[name] = self.timing.get(name, 0.0) + round(time.perf_counter() - t0, 3)
        return results

    # ------------------------------------------------------------------ steps
    def calibrate(self) -> list[Calibration]:
        """Darks and flats of every distance."""
        def compute() -> tuple[list[Calibration], list[Outcome]]:
            res = self._map("calibrate", calibrate_task, self.index.distances, self.config.flatfield.pca_components)
            return [c for c, _ in res], [o for _, o in res]

        cals, outcomes = self._cached("calibration", compute)
        for o in outcomes:
            self._note(o, "calibrate")
        for d, cal in zip(self.index.distances, cals):
            if cal.n_darks == 0:
                log.warning("distance %s has no usable dark frame: assuming a dark level of 0", d.name)
        problems = [(d, cal.problem()) for d, cal in zip(self.index.distances, cals)]
        bad = [(d, p) for d, p in problems if p]
        if len(bad) == len(problems):
            d, p = bad[0]
            raise InputError(d.frames[0].path if d.frames else d.name, f"distance {d.name}: {p}", FIELDS["image_key"])
        # A distance that cannot be flat-fielded is left out, loudly (the reference too: the next most
        # magnified distance becomes the reference). The same distances are left out on every run, so the
        # work folder's results stay consistent.
        for d, p in bad:
            self._drop_distance(d, p)
        return [cal for (d, _), cal in zip(problems, cals) if d in self.index.distances]

    def _drop_distance(self, d: DistanceIndex, reason: str) -> None:
        from .scan import RejectedDistance  # noqa: PLC0415

        self.index.distances.remove(d)
        self.index.rejected.append(RejectedDistance(d.key, d.name, reason, d.frames))
        self.geometry = self.index.geometry
        self.K, self.ref = len(self.geometry.distances), self.geometry.reference
        self.shape = self.index.frame_shape
        self._reject_distance_alert(d.name, reason)

    def pair(self) -> list[tuple[int, float, dict[int, FrameRecord]]]:
        """Angle slots with the projection of every distance (the reference's angles, in acquisition order)."""
        ref = self.index.distances[self.ref]
        first: dict[float, FrameRecord] = {}
        unique = []
        for r in ref.projections:  # a repeated angle of the reference: the first frame is used
            key = round(r.rotation_angle_deg, 4)
            if key in first:
                self._quarantine(r.frame_id, f"repeated angle: {r.rotation_angle_deg:g} deg was taken already by "
                                 f"{first[key].frame_id}", "pair")
            else:
                first[key] = r
                unique.append(r)
        table = AngleTable.from_reference([r.rotation_angle_deg for r in unique])
        slots: list[dict[int, FrameRecord]] = [{self.ref: r} for r in unique]
        for k, d in enumerate(self.index.distances):
            if k == self.ref:
                continue
            for rec in d.projections:
                slot, displaced = table.file(k, rec.frame_id, rec.rotation_angle_deg, create=False)
                if slot is not None:
                    if displaced is not None:
                        old = slots[slot][k]
                        self._quarantine(displaced, AngleTable.refusal(old.rotation_angle_deg, d.name), "pair")
                    slots[slot][k] = rec
                elif table.find(rec.rotation_angle_deg) is not None:
                    self._quarantine(rec.frame_id, AngleTable.refusal(rec.rotation_angle_deg, d.name), "pair")
                else:
                    self._quarantine(rec.frame_id, "projection angle has no match in the reference distance "
                                     f"(within {table.tolerance_deg:.3g} deg)", "pair")
        if len(slots) < 2:
            raise InputError(ref.name, f"needs at least 2 projections, has {len(slots)}", FIELDS["image_key"])
        return [(i, float(table.angle(i)), frames) for i, frames in enumerate(slots)]

    def corrected_frames(self, cals: list[Calibration], slots: list[tuple[int, float, dict[int, FrameRecord]]]
                         ) -> CorrectedFrames:
        """Where the tasks take the flat-fielded frames of ``slots``: the live stream's store for those it holds
        as this pass flat-fields them (``stream_store``), their files for the others."""
        frames = CorrectedFrames.of(cals, self.stream_store, slots)
        self.frames_from_stream = len(frames)
        return frames

    def align(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], frames: CorrectedFrames
              ) -> tuple[list[ShiftModel | None], dict[str, Any]]:
        """Distance shifts on ``align_angles`` angles and their smooth models."""
        cfg = self.config
        n = len(slots)
        subset = np.unique(np.linspace(0, n - 1, min(cfg.alignment.angles, n)).round().astype(int))
        measure = cfg.alignment.enabled and self.K > 1

        def compute() -> list[AlignSample]:
            return self._map("align", align_task, [slots[i] for i in subset], self.executor.share(frames),
                             self.geometry, self.delta_beta, cfg, measure)

        samples: list[AlignSample] = self._cached("alignment", compute)
        models: list[ShiftModel | None] = [None] * self.K
        if measure:
            models = [None if k == self.ref else ShiftModel(order=cfg.alignment.model_degree) for k in range(self.K)]
        for s in samples:
            self._note(s.outcome, "align")
            if s.shifts_yx is None:
                continue
            for k in range(self.K):
                if k == self.ref:
                    continue
                models[k].add(s.theta_deg, s.shifts_yx[k], ok=bool(s.ok[k]))
                if not s.ok[k]:
                    self.alerts.append(Alert("AlignmentPeakRejected", "warning",
                                             f"distance {k + 1} at {s.theta_deg:.2f} deg: {s.reasons[k]} "
                                             f"(NCC peak {s.peaks[k]:.2f})"))
        record = self._plausibility([s for s in samples if s.shifts_yx is not None])
        thetas = np.array([t for _, t, _ in slots])
        for k, model in enumerate(models):
            if model is None:
                continue
            if model.n_valid < 3:
                self.alerts.append(Alert("AlignmentFailed", "critical",
                                         f"distance {k + 1}: only {model.n_valid} reliable registrations; "
                                         "not aligned"))
                models[k] = None
                continue
            model.fit()
            inl = model.inliers
            at = float(np.median(thetas))
            record[f"distance_{k + 1}"] = {
                "measured_angles": model.n_points, "inliers": int(inl.sum()), "at_angle_deg": at,
                "shift_px": model(at).round(3).tolist(),
                "rms_residual_px": float(np.sqrt(np.mean(model.residuals()[inl] ** 2)))}
        return models, record

    def _plausibility(self, measured: list[AlignSample]) -> dict[str, Any]:
        """Do the distances show one sample (random or mixed-up frames do not)? The alignment record's
        ``plausibility`` entry, and a critical alert when they do not."""
        if not measured:
            return {}
        from ..quality.plausibility import assess_distance_registrations  # noqa: PLC0415

        verdict = assess_distance_registrations(
            [s.theta_deg for s in measured], [s.peaks for s in measured], [s.ok for s in measured],
            [s.shifts_yx for s in measured], self.ref, self.shape)
        if verdict.implausible:
            self.alerts.append(Alert("ImplausibleProjections", "critical", verdict.reason))
            log.error("implausible projections: %s", verdict.reason)
        return {"plausibility": {
            "implausible": verdict.implausible, "angles": verdict.n_angles,
            "consistent": {f"distance_{k}": round(v, 3) for k, v in verdict.consistent.items()},
            "median_peak": {f"distance_{k}": round(v, 3) for k, v in verdict.median_peak.items()}}}

    def material(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], frames: CorrectedFrames,
                 models: list[ShiftModel | None]) -> float:
        """The sample's delta/beta: ``sample.delta_beta`` when given; else, with ``sample.delta_beta_from: data``,
        the fit of the linear CTF to every distance's holograms on ``sample.delta_beta_angles`` angles
        (:mod:`~xnh_stream.physics.material`), used when its interval is narrow enough; else the composition's.
        Sets :attr:`delta_beta` and :attr:`material_record`."""
        cfg = self.config.sample
        composition = self.delta_beta if cfg.delta_beta is None else None
        record: dict[str, Any] = {"method": None, "value": None, "interval": None, "composition": composition}
        self.material_record = record
        if cfg.delta_beta is not None:
            record["decision"] = f"given (sample.delta_beta = {cfg.delta_beta:g}); not estimated"
            return self.delta_beta
        if cfg.delta_beta_from == "composition":
            record["decision"] = "from the composition (sample.delta_beta_from: composition); not estimated"
            return self.delta_beta
        band = material_band(self.geometry, self.shape) if self.K > 1 else None
        if band is None:
            record["decision"] = ("from the composition: " + ("one distance" if self.K < 2 else
                                  f"frames of {self.shape[0]} x {self.shape[1]} px are too small for the fit"))
            return self.delta_beta
        n = len(slots)
        subset = np.unique(np.linspace(0, n - 1, min(cfg.delta_beta_angles, n)).round().astype(int))
        items = [slots[i] for i in subset if len(slots[i][2]) == self.K]

        def compute() -> DeltaBetaEstimate | None:
            size = max(1, math.ceil(len(items) / max(1, 2 * self.executor.parallelism)))
            parts = self._map("material", material_task, _batches(items, size), self.executor.share(frames),
                              self.geometry, tuple(models), band, self.config)
            samples = [w for part in parts for w in part.samples]
            for part in parts:
                self._note(part.outcome, "material")
            if len(samples) < 4:
                return None
            intensity = sum(part.intensity for part in parts if part.intensity is not None) / len(samples)
            counts = np.array([c.flat_counts - c.dark_counts for c in frames.calibrations], dtype=np.float64)
            variance = 1.0 / counts if np.all(np.isfinite(counts) & (counts > 0)) else np.ones(self.K)
            (est,) = self._map("material fit", material_fit_task, [(samples, intensity, variance)], self.geometry,
                               band)
            return est

        est = self._cached("material", compute)
        record["method"] = ("linear CTF fit to every distance, phase free beyond the field of view, "
                            "noise-debiased residual (xnh_stream/physics/material.py)")
        if est is None:
            record["decision"] = "from the composition: fewer than 4 angles with every distance"
            return self.delta_beta
        record.update({k: v for k, v in est.as_dict().items() if k != "value"}, value=est.as_dict()["value"],
                      angles=len(items), sigma_px=round(band.sigma_px, 3), step_px=band.step,
                      window=list(band.window))
        self._decide_material(est, record)
        return self.delta_beta

    def _decide_material(self, est: DeltaBetaEstimate, record: dict[str, Any]) -> None:
        """Use the fit's delta/beta when it is narrow enough and the linear model describes the holograms;
        ``record["decision"]`` says which and why."""
        if est.value is None:
            record["decision"] = (f"from the composition: the residual has no minimum within "
                                  f"{est.grid[0]:g}-{est.grid[-1]:g}")
        elif est.log_se is None or est.log_se > MATERIAL_MAX_LOG_SE:
            record["decision"] = (f"from the composition: the estimate {est.value:.3g} is too uncertain "
                                  f"(interval {record['interval']})")
        elif est.noise_scale > MATERIAL_MAX_NOISE_SCALE:
            record["decision"] = (f"from the composition: the linear model leaves {est.noise_scale:.2g} times the "
                                  f"noise (a drifting beam, a strong edge?), so its estimate {est.value:.3g} is not "
                                  "trusted")
        else:
            self.delta_beta = float(est.value)
            record["decision"] = "estimated"
        log.info("delta/beta: %s (%s)", f"{self.delta_beta:.4g}", record["decision"])

    def survey(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], frames: CorrectedFrames) -> SurveyJob:
        """One pass over the reference distance for what the envelope and the rotation axis need."""
        ny, nx = self.shape
        b = binning_for((ny, nx), ENVELOPE_COLUMNS)
        envelope = self._wants_envelope()
        axis = self.config.fbp.cor is None
        rows = axis_rows(ny)
        n = len(slots)
        job = SurveyJob(b, ProjectionStore(self.work.path / "survey.zarr", n, (ny // b, nx // b), ny // b, create=True)
                        if envelope else None, rows,
                        ProjectionStore(self.work.path / "axis_rows.zarr", n, (len(rows), nx), len(rows), create=True)
                        if axis else None)
        if not (envelope or axis):
            return job

        def compute() -> list[int]:
            items = [(s, t, f[self.ref]) for s, t, f in slots if self.ref in f]
            size = max(self.layout.angle_batch, math.ceil(len(items) / max(1, 4 * self.executor.parallelism)))
            parts = self._map("survey", survey_task, _batches(items, size), self.executor.share(frames),
                              self.geometry, self.survey_delta_beta, self.config, job)
            for _, o, _ in parts:
                self._note(o, "survey")
            return sorted((s, c) for w, _, crcs in parts for s, c in zip(w, crcs))

        if self.work.resumed and self.work.has("survey") and not (self.work.has("rotation_axis")
                                                                   and self.work.has("envelope")):
            self._check_survey(job)  # its stores are still to be read: a damaged one is surveyed again
        surveyed = self._cached("survey", compute)
        self.surveyed = [s for s, _ in surveyed]
        return job

    def _check_survey(self, job: SurveyJob) -> None:
        try:
            want = dict(self.work.load("survey"))
        except DamagedWork:
            return  # computed again by _cached
        slots = sorted(want)
        parts = _batches(slots, max(1, math.ceil(len(slots) / max(1, 4 * self.executor.parallelism))))
        got = [c for part in self._map("check survey", survey_crcs_task, parts, job) for c in part]
        if any(want[s] != c for s, c in zip(slots, got)):
            log.warning("%s: the survey stores differ from what the survey wrote: surveying again", self.work.path)
            self.work.forget("survey")

    def rotation_axis(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], frames: CorrectedFrames,
                      job: SurveyJob) -> RotationAxis:
        """The rotation axis: configured, else the consensus of independent estimators
        (:func:`~xnh_stream.physics.cor.estimate_rotation_axis`: 0/180 pairs with the return projections,
        Vo's sinogram method and a sliding window on several full-resolution rows); alerts when they
        disagree by more than 1 px."""
        if self.config.fbp.cor is not None:
            return RotationAxis(float(self.config.fbp.cor), "config")

        def compute() -> tuple[RotationAxis, list[dict[str, str]]]:
            ref = self.index.distances[self.ref]
            projections = [(recs[self.ref], theta) for _, theta, recs in slots if self.ref in recs]
            candidates = [(r, r.rotation_angle_deg) for r in ref.returns] + projections
            pairs = []
            for want in (180.0, 0.0):  # 0/180 pairs give the axis; a return at a projection's angle, its drift
                found = 0
                for rec, theta in projections:
                    partner = next((c for c, a in candidates if c is not rec and abs(abs(a - theta) - want) < 0.05
                                    and (want or c.image_key_control == -1)), None)
                    if partner is None:
                        continue
                    outcome = Outcome()
                    a, b = frames.corrected(rec, self.ref, outcome), frames.corrected(partner, self.ref, outcome)
                    self._note(outcome, "rotation axis")
                    if a is not None and b is not None:
                        pairs.append((to_numpy(a), to_numpy(b), want or 360.0))
                        found += 1
                    if found >= 3:
                        break
            written = [s for s in self.surveyed if s < len(slots)]
            sinos = thetas = None
            if len(written) >= MIN_SINOGRAM_ANGLES and job.row_store is not None:
                block = job.row_store.read_rows(np.asarray(written), 0, len(job.rows))  # [angles, rows, nx]
                sinos = np.ascontiguousarray(block.transpose(1, 0, 2))
                thetas = np.deg2rad([slots[s][1] for s in written])
            decision = decide_rotation_axis(pairs, sinos, thetas, self.shape[1])  # the rule the stream uses too
            return decision.axis, decision.alerts

        axis, alerts = self._cached("rotation_axis", compute)
        self.alerts += [as_alert(a) for a in alerts]  # a work folder of an earlier version holds dicts
        return axis

    def envelope(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], job: SurveyJob,
                 cor: float) -> SampleEnvelope | None:
        """The sample envelope (two-material CTF), or None (disabled, one distance, or no plausible support)."""
        if job.binned is None:
            return None

        def compute() -> SampleEnvelope | None:
            thetas = np.array([t for _, t, _ in slots])
            (_, env), = self.executor.map(envelope_task, [self.surveyed], job.binned, thetas, self.shape, job.binning,
                                          cor, self.config.compute.backend)
            if env is not None:
                log.info("sample envelope: support %.0f %% of the volume, mean delta %.3g (binning %d)",
                         100 * env.support_fraction, env.delta_mean, job.binning)
            return env

        return self._cached("envelope", compute)

    def _wants_envelope(self) -> bool:
        """Does the pass build the sample envelope? Its phase method uses one, ``ctf.envelope`` allows it,
        and there are several distances."""
        return phase_method(self.config.phase.method).envelope and self.config.ctf.envelope is not False and self.K > 1

    def _one_material_why(self) -> str:
        """Why the pass has no envelope when it was not looked for (empty when it was and none was found)."""
        if not phase_method(self.config.phase.method).envelope:
            return f" (phase.method: {self.config.phase.method})"
        return "" if self._wants_envelope() else " (ctf.envelope: false)"

    def two_material(self, envelope: SampleEnvelope | None) -> SampleEnvelope | None:
        """The envelope the CTF uses: with ``ctf.envelope: auto`` only a sample in air
        (:meth:`~xnh_stream.physics.envelope.SampleEnvelope.in_air`). The outline's delta/beta is then the
        given or the composition's: the fit's value is that of the whole hologram, outline and stain together
        (docs/delta_beta.md), not the outline's."""
        record = self.material_record
        if envelope is None:
            if record:
                record["material_model"] = "one material" + self._one_material_why()
            return None
        if self.config.ctf.envelope == "auto" and not envelope.in_air():
            record["material_model"] = ("one material: the envelope's support is not a sample in air "
                                        f"({envelope.as_dict()})")
            log.info("one material: the support found is not a sample in air")
            return None
        record["material_model"] = ("two materials (sample in air: outline and interior)" if envelope.in_air() else
                                    "two materials (ctf.envelope: true)")
        if record.get("decision") == "estimated":
            self.delta_beta = float(record["composition"])
            record["decision"] = ("estimated, not used: two materials, the outline takes the composition's "
                                  "delta/beta")
        return envelope

    def phase(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], setup: PhaseSetup,
              frames: CorrectedFrames, store: ProjectionStore, check: bool = False) -> tuple[list[int], float]:
        """Every angle's projection into the projection store; returns the slots written and the largest
        |value| of their projections.

        With ``check`` (a resumed run that will read the projections again) the units a previous run
        finished are checked against the CRC-32s their markers hold, and a damaged unit is redone.
        """
        stage = f"phase_b{self.layout.angle_batch}"
        done = self.work.done(stage)
        batches = _batches(slots, self.layout.angle_batch)
        if check and done:
            keys = sorted(done, key=int)
            got = self._map("check projections", projection_crcs_task, [done[k]["written"] for k in keys], store)
            for key, crcs in zip(keys, got):
                if crcs != done[key]["crc"]:
                    log.warning("phase unit %s of %s is damaged (its projections differ from their checksums): "
                                "redoing it", key, self.work.path)
                    self.work.unmark(stage, key)
                    del done[key]
        todo = [(i, b) for i, b in enumerate(batches) if str(i) not in done]
        written: list[int] = []
        absmax = 0.0
        for payload in done.values():
            written += payload["written"]
            absmax = max(absmax, payload["absmax"])
            for fid, reason in payload["quarantined"]:
                self._quarantine(fid, reason, "phase")
        if todo:
            shared = (self.executor.share(setup), self.executor.share(frames), store)
            t0 = time.perf_counter()
            for n, (j, out) in enumerate(self.executor.map(phase_task, [b for _, b in todo], *shared,
                                                           memory_bytes=self.layout.task_memory_bytes), 1):
                i = todo[j][0]
                self.work.mark(stage, str(i), {"written": out.written, "crc": out.crc, "absmax": out.absmax,
                                               "quarantined": out.outcome.quarantined})
                written += out.written
                absmax = max(absmax, out.absmax)
                self._note(out.outcome, "phase")
                self.progress(n + len(done), len(batches), "phase")
            self.timing["phase"] = round(time.perf_counter() - t0, 3)
        return sorted(written), absmax

    def sample_position(self) -> dict[str, Any] | None:
        """Name and stage position of the sample (NXtomo ``sample/name``, ``sample/{x,y,z}_translation`` of the
        reference distance), as the report's ``sample`` section: ``name``, ``translation_m`` as stored and
        ``position_m``, the volume centre ``[z, y, x]`` in metres (vertical, along the beam, transverse).
        None when the files record neither."""
        ref = self.index.distances[self.ref]
        first = next(iter(ref.projections or ref.frames), None)
        if first is None or first.layout != "nxtomo":
            return None
        try:
            tr = read_sample_translation(first.path, first.entry)
            name = read_sample_name(first.path, first.entry)
        except InputError as exc:
            log.warning("sample position not read: %s", exc)
            return None
        out: dict[str, Any] = {"name": name} if name else {}
        lab = tr.lab_m() if tr is not None else {}
        if tr is not None and all(v is not None for v in lab.values()):
            out.update(translation_m={"x": tr.x_m, "y": tr.y_m, "z": tr.z_m, "frame": tr.frame},
                       position_m=[lab["vertical"], lab["beam"], lab["transverse"]])
        return out or None

    def boxes(self, shape: tuple[int, int, int]) -> list[tuple[int, int, int, int, int, int]]:
        """Central boxes for the FSC: side ``fsc_box_px`` clipped per axis, tiled about the centre."""
        side = [min(self.layout.fsc_box_px, s) for s in shape]
        counts = [max(1, s // b) for s, b in zip(shape, side)]
        cands = []
        for iz in range(counts[0]):
            for iy in range(counts[1]):
                for ix in range(counts[2]):
                    origin = []
                    for i, s, b, c in zip((iz, iy, ix), shape, side, counts):
                        start = (s - c * b) // 2 + i * b
                        origin.append(start)
                    centre = np.array(origin) + np.array(side) / 2 - np.array(shape) / 2
                    cands.append((float(np.sum(centre ** 2)), tuple(origin)))
        cands.sort()
        out = []
        for _, (z, y, x) in cands[: self.layout.fsc_max_boxes]:
            out.append((z, z + side[0], y, y + side[1], x, x + side[2]))
        return out

    def slabs_done(self, rows: int, volume_path: Path, boxes: list[tuple[int, ...]],
                   halves_path: Path) -> dict[str, Any]:
        """The slabs of ``rows`` rows a previous run finished, each checked (on a resumed run) against the
        CRC-32s its marker holds: a slab whose rows of the volume or parts of the halves differ (a deleted,
        cut or damaged chunk) is dropped, to be redone."""
        stage = f"slab_r{rows}"
        done = self.work.done(stage)
        if not (self.work.resumed and done):
            return done
        ny, nx = self.shape
        keys = sorted(done, key=int)
        jobs = [SlabJob(int(k), min(int(k) + rows, ny), np.zeros(0, np.int64), np.zeros(0), 0.0, "", "", nx,
                        str(volume_path), tuple(boxes), str(halves_path), halves_full=self._halves_full())
                for k in keys]
        for key, got in zip(keys, self._map("check volume", slab_crcs_task, jobs)):
            if got != (done[key]["crc"], done[key]["halves_crc"]):
                log.warning("rows %s-%d of %s are damaged (they differ from their checksums): redoing them", key,
                            done[key]["r1"] - 1, volume_path)
                self.work.unmark(stage, key)
                del done[key]
        return done

    def backproject(self, written: list[int], thetas_deg: np.ndarray, cor: float, store: ProjectionStore,
                    volume_path: Path, boxes: list[tuple[int, ...]], halves_path: Path,
                    done: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Every slab of rows not in ``done`` (:meth:`slabs_done`) reconstructed into level 0 of the volume
        (and the FSC boxes' halves); returns every slab's marker payload and how many were computed now."""
        ny, nx = self.shape
        rows = store.rows
        slots = np.asarray(written, dtype=np.int64)
        jobs = [SlabJob(r0, min(r0 + rows, ny), slots, np.deg2rad(thetas_deg[slots]), cor, self.config.fbp.window,
                        self.config.fbp.padding, nx, str(volume_path), tuple(boxes), str(halves_path),
                        halves_full=self._halves_full())
                for r0 in range(0, ny, rows)]
        stage = f"slab_r{rows}"
        todo = [j for j in jobs if str(j.r0) not in done]
        done = dict(done)
        t0 = time.perf_counter()
        for n, (j, out) in enumerate(self.executor.map(slab_task, todo, store,
                                                       memory_bytes=self.layout.task_memory_bytes), 1):
            payload = {"r1": todo[j].r1, "crc": out.crc, "halves_crc": out.halves_crc, "stats": out.stats.as_list()}
            self.work.mark(stage, str(out.r0), payload)
            done[str(out.r0)] = payload
            self.progress(n + len(jobs) - len(todo), len(jobs), "backproject")
        self.timing["backproject"] = round(time.perf_counter() - t0, 3)
        return done, len(todo)

    def pyramid(self, volume_path: Path, n_levels: int, rows: int, redo: bool = False,
                stage_prefix: str = "") -> dict[str, list[list[int]]]:
        """The lower-resolution levels, level by level, slab by slab; returns each level's units ``[r0, r1,
        crc32]`` (the report's checksums). ``stage_prefix`` names the markers of another image than the volume.

        Units a previous run finished are checked against their markers' CRC-32s; a damaged one is redone
        with every level above it. ``redo``: level 0 changed in this run, every level is made again.
        """
        units: dict[str, list[list[int]]] = {}
        stale = redo
        for level in range(1, n_levels):
            stage = f"{stage_prefix}level{level}_r{rows}"
            if stale:
                self.work.unmark(stage)
            arr, _ = open_volume(volume_path, level)
            nz = arr.shape[0]
            jobs = [(str(volume_path), level, r0, min(r0 + rows, nz)) for r0 in range(0, nz, rows)]
            done, damaged = self._checked_units(stage, volume_path / f"s{level}", "check pyramid")
            stale = stale or damaged  # a level made again makes the levels above it again
            for _, (r0, crc) in self.executor.map(pyramid_task, [j for j in jobs if str(j[2]) not in done]):
                done[str(r0)] = {"r1": min(r0 + rows, nz), "crc": crc}
                self.work.mark(stage, str(r0), done[str(r0)])
            units[f"s{level}"] = [[int(k), v["r1"], v["crc"]] for k, v in sorted(done.items(), key=lambda kv: int(kv[0]))]
            self.progress(level, n_levels - 1, "pyramid")
        return units

    def _checked_units(self, stage: str, array: Path, step: str) -> tuple[dict[str, Any], bool]:
        """The units of ``stage`` a previous run finished (``{r0: {"r1", "crc", ...}}``), each checked on a
        resumed run against the CRC-32 its marker holds for rows ``r0:r1`` of ``array``; a damaged one is
        unmarked and left out, to be made again. Returns them and whether any was damaged."""
        done = self.work.done(stage)
        damaged = False
        if self.work.resumed and done:
            keys = sorted(done, key=int)
            checks = [(str(array), int(k), done[k]["r1"]) for k in keys]
            for key, got in zip(keys, self._map(step, region_crc_task, checks)):
                if got != done[key]["crc"]:
                    log.warning("rows %s-%d of %s are damaged: making them again", key, done[key]["r1"] - 1, array)
                    self.work.unmark(stage, key)
                    del done[key]
                    damaged = True
        return done, damaged

    def _halves_full(self) -> str:
        """Where the slab tasks write both whole half-volumes: only when the final pass denoises."""
        return str(self.work.path / HALVES_FULL_NAME) if self.config.denoise.enabled else ""

    def denoise(self, volume_path: Path, shape: tuple[int, int, int], n_levels: int, rows: int,
                origin: tuple[float, float, float] | None) -> tuple[dict[str, list[list[int]]], VolumeStats,
                                                                      dict[str, Any]]:
        """The denoised image (:mod:`~xnh_stream.chain.denoise`): the model trained once (cached), level 0 slab
        by slab, its pyramid; returns its units (keys ``denoised/s<level>``), its statistics and the report's
        ``denoise`` section."""
        opt = self.config.denoise
        image = volume_path / DENOISED_NAME
        create_volume(image, shape, self.geometry.voxel_m, chunks=(rows, 256, 256), origin_m=origin, reopen=True,
                      name=DENOISED_NAME)
        n2i = Noise2InverseConfig(steps=opt.steps, context=opt.context, width=opt.width, patch=opt.patch,
                                  seed=opt.seed)
        model = self._cached("denoise_model", lambda: self._map(
            "denoise train", denoise_train_task, [self._halves_full()], 0.5 * shape[2] - 1, n2i)[0])
        stage = f"denoised_r{rows}"
        done, _ = self._checked_units(stage, image / "s0", "check volume")
        jobs = [DenoiseSlab(r0, min(r0 + rows, shape[0]), self._halves_full(), str(image))
                for r0 in range(0, shape[0], rows) if str(r0) not in done]
        t0 = time.perf_counter()
        for _, (r0, crc, stats) in self.executor.map(denoise_slab_task, jobs, model,
                                                     memory_bytes=self.layout.task_memory_bytes):
            done[str(r0)] = {"r1": min(r0 + rows, shape[0]), "crc": crc, "stats": stats.as_list()}
            self.work.mark(stage, str(r0), done[str(r0)])
            self.progress(len(done), math.ceil(shape[0] / rows), "denoise")
        self.timing["denoise"] = round(time.perf_counter() - t0, 3)
        in_order = sorted(done.items(), key=lambda kv: int(kv[0]))
        units = {"s0": [[int(k), v["r1"], v["crc"]] for k, v in in_order],
                 **self.pyramid(image, n_levels, rows, redo=bool(jobs) and self.work.resumed,
                                stage_prefix=f"{DENOISED_NAME}_")}
        stats = sum((VolumeStats.from_list(v["stats"]) for _, v in in_order), VolumeStats())
        record = {**model.record(), "volume": f"{VOLUME_NAME}/{DENOISED_NAME}",
                  "note": "FSC, resolution, alerts and every other figure are of the plain volume (its even/odd "
                          "halves, before denoising); noise_rms and error_rms_bound are measured on rows the "
                          "network was not trained on"}
        return {f"{DENOISED_NAME}/{k}": v for k, v in units.items()}, stats, record

    def resolution(self, halves_path: Path, boxes: list[tuple[int, ...]]) -> tuple[Resolution, dict[str, Any]]:
        """FSC (half-bit) averaged over the boxes, and the edge-fit cross-check on the central one."""
        voxel = self.geometry.voxel_m
        res = self._map("fsc", fsc_box_task, [(str(halves_path), i, voxel, self.config.stream.fsc_region_px)
                                              for i in range(len(boxes))])
        freq = res[0].freq
        fsc = np.nanmean(np.stack([b.fsc for b in res]), axis=0)
        n = np.sum(np.stack([b.n for b in res]), axis=0)
        r = resolution_from_fsc(freq, fsc, n, voxel)
        thr = half_bit_threshold(n)
        edge = res[0].edge
        self._region = res[0].region
        fsc_section = Resolution(
            r.resolution_m, r.crossing_freq, r.limited_by_sampling, "half-bit", [list(b) for b in boxes],
            {"freq_nyquist": np.round(freq, 4).tolist(),
             "fsc": [None if not np.isfinite(v) else round(float(v), 4) for v in fsc],
             "half_bit": [None if not np.isfinite(v) else round(float(v), 4) for v in thr]})
        edge_section = {"resolution_m": edge.resolution_m, "sigma_m": edge.sigma_m, "rise_10_90_m": edge.rise_10_90_m,
                        "definition": "FWHM of the Gaussian line-spread function from an erf fit across the "
                                      "strongest edge"}
        return fsc_section, edge_section

    # ------------------------------------------------------------------ the whole pass
    def run(self, journal: FrameJournal | None = None) -> ChainResult:
        """Run every step (skipping what a previous run finished and still checks out) and publish the outputs.

        Parameters
        ----------
        journal : FrameJournal, optional
            The scan's frame journal (the live stream's); by default ``OUT/journal.sqlite``. Every frame
            is booked in it, and the report's frame account is the journal's.

        Raises
        ------
        InputError
            When the folder holds no usable scan; when ``OUT`` holds the outputs of another run and
            ``replace`` is off, or a published volume that differs from its report; when the volume is
            not plausible (nothing is published then).
        """
        if self.out is None:
            try:
                result = self._run(journal)
            except BaseException:
                if self._temporary_owner is not None:
                    self._temporary_owner()  # removes it now
                raise
            if self._temporary_owner is not None:
                self._temporary_owner.detach()  # the result reads its volume from there: it owns the folder now
                result.keep_temporary(self.work.path.parent)
            return result
        with OutputLock(self.out, "xnh-stream final pass"):  # re-entrant: the command may hold it already
            finished = self._resume_end()
            return finished if finished is not None else self._run(journal)

    def _run(self, journal: FrameJournal | None) -> ChainResult:
        t_start = time.perf_counter()
        cfg = self.config
        self._alert_rejected()
        cals = self.calibrate()
        slots = self.pair()
        frames = self.corrected_frames(cals, slots)
        thetas = np.array([t for _, t, _ in slots])
        models, shift_record = self.align(slots, frames)
        self.material(slots, frames, models)
        survey = self.survey(slots, frames)
        axis = self.rotation_axis(slots, frames, survey)
        log.info("centre of rotation %.2f px (%s)", axis.px, axis.method)
        envelope, contrast, setup = self._phase_setup(slots, survey, axis, models)
        ny, nx = self.shape
        rows = self.layout.rows_per_slab(ny, nx)
        store = ProjectionStore(self.work.path / "projections.zarr", len(slots), self.shape, rows, create=True)
        vol_shape = (ny, nx, nx)
        work_volume = self.work.path / VOLUME_NAME
        position = self.sample_position()
        origin = _first_voxel(position, vol_shape, self.geometry.voxel_m)
        levels = create_volume(work_volume, vol_shape, self.geometry.voxel_m, chunks=(rows, 256, 256), origin_m=origin,
                               reopen=True)
        boxes = self.boxes(vol_shape)
        halves_path = self.work.path / "fsc_halves.zarr"
        _create_halves(halves_path, boxes)
        if cfg.denoise.enabled:
            create_full_halves(self.work.path / HALVES_FULL_NAME, vol_shape, rows)
        slabs = self.slabs_done(rows, work_volume, boxes, halves_path)
        n_slabs = math.ceil(ny / rows)
        written, absmax = self.phase(slots, setup, frames, store, check=self.work.resumed and len(slabs) < n_slabs)
        if not written:
            raise InputError(self.index.folder, "no angle has a usable frame at any distance")
        slabs, computed = self.backproject(written, thetas, axis.px, store, work_volume, boxes, halves_path, slabs)
        in_order = [(int(k), v) for k, v in sorted(slabs.items(), key=lambda kv: int(kv[0]))]
        units = {"s0": [[r0, v["r1"], v["crc"]] for r0, v in in_order],
                 **self.pyramid(work_volume, len(levels), rows, redo=bool(computed) and self.work.resumed)}
        stats = sum((VolumeStats.from_list(v["stats"]) for _, v in in_order), VolumeStats())  # one order: one sum
        self._refuse_implausible(stats, absmax, "reconstructed volume", "the work folder keeps what was computed")
        denoise_record = None
        if cfg.denoise.enabled:
            more, dstats, denoise_record = self.denoise(work_volume, vol_shape, len(levels), rows, origin)
            self._refuse_implausible(dstats, absmax, "denoised volume",
                                     "set denoise.method: none to publish the plain volume")
            units.update(more)
        crash_point("volume:checked")
        fsc_section, edge_section = self.resolution(halves_path, boxes)
        report = self._report(slots, written, axis, envelope, contrast, shift_record, fsc_section, edge_section,
                              halves_path, t_start)
        report.sample = position or {}
        report.denoise = denoise_record
        report.volume = VolumeRecord(self.work.spec_id, list(vol_shape), units, {
            "min": stats.vmin, "max": stats.vmax, "mean": stats.mean, "std": stats.std, "projection_absmax": absmax})
        self._book_frames(report, journal)
        report.frames.from_stream = self.frames_from_stream
        if self.out is None:
            return ChainResult(report, None, work_volume)
        stage(self.work.path, report)
        publish(self.out, self.work.path, keep_work=self.layout.keep_work)
        return ChainResult(report, self.out, self.out / VOLUME_NAME)

    def _alert_rejected(self) -> None:
        """Critical alerts for the distances and files the scan index set aside."""
        for d in self.index.rejected:
            self._reject_distance_alert(d.name, d.reason)
        for q in self.index.rejected_files:
            self.alerts.append(Alert("DistanceFileRejected", "critical", f"{q.source}: {q.reason}"))
            log.error("file set aside: %s: %s", q.path, q.reason)

    def _phase_setup(self, slots: list[tuple[int, float, dict[int, FrameRecord]]], survey: SurveyJob,
                     axis: RotationAxis, models: list[ShiftModel | None]
                     ) -> tuple[SampleEnvelope | None, float | None, PhaseSetup]:
        """The envelope (two materials, when used), the stain's delta/beta with it, and what every phase task
        needs."""
        cfg = self.config
        envelope = self.two_material(self.envelope(slots, survey, axis.px))
        contrast = None
        if envelope is not None:
            contrast = cfg.sample.delta_beta_contrast or delta_beta_of(cfg.sample.stain_formula,
                                                                       cfg.sample.stain_density, self.geometry.energy_kev)
        setup = PhaseSetup(self.geometry, self.shape, self.delta_beta, cfg, tuple(models), envelope, contrast,
                           token=self.work.path.as_posix() + ":" + str(id(self)))
        return envelope, contrast, setup

    def _refuse_implausible(self, stats: VolumeStats, absmax: float, what: str, hint: str) -> None:
        """Raise :class:`InputError` when a volume's statistics are not plausible (:func:`check_volume`)."""
        problems = check_volume(stats, absmax)
        if problems:
            raise InputError(self.out or self.work.path / VOLUME_NAME, f"the {what} is not plausible: "
                             + "; ".join(problems) + f"; nothing was published ({hint})")

    def _book_frames(self, report: ScanReport, journal: FrameJournal | None) -> None:
        """The frame account into the report, from the given journal or the output folder's own; an alert
        for frames received live whose files are gone."""
        own_journal = journal is None and self.out is not None
        if own_journal:
            journal = FrameJournal(self.out / JOURNAL_NAME)  # type: ignore[operator]
        if journal is None:
            return
        report.frames = self.book(journal)
        if report.frames.missing_from_volume:
            vanished = Alert("FramesVanished", "critical", (
                f"{report.frames.missing_from_volume} frames received during the scan are no longer in the "
                "scan folder: the final volume was made without them"))
            self.alerts.append(vanished)
            report.alerts += alert_entries([vanished])  # after the quality monitor's, as the report had it
        if own_journal:
            journal.close()

    def _resume_end(self) -> ChainResult | None:
        """Where a previous run of this work got to at its end (:mod:`~xnh_stream.chain.publish`): finish a
        staged publication, or find the outputs complete; None when the pass has work to do.

        A staged or published volume is read back and checked against the CRC-32s of its report first:
        a damaged staged volume has its damaged units redone (None is returned); a damaged published volume
        (the work is gone) is refused.
        """
        out, work = self.out, self.work.path
        assert out is not None
        staged = work / REPORT_NAME
        if staged.exists():
            try:
                report = ScanReport.load(staged)
            except (OSError, ValueError) as exc:
                log.warning("%s unreadable (%s): making it again", staged, exc)
                staged.unlink(missing_ok=True)
                report = None
            if report is not None and report.volume is not None and report.volume.spec == self.work.spec_id:
                volume = work / VOLUME_NAME if (work / VOLUME_NAME).exists() else out / VOLUME_NAME
                bad = damaged_units(volume, report.volume, self.executor)
                if not bad:
                    log.info("%s: publishing the outputs a killed run had finished", out)
                    publish(out, work, keep_work=self.layout.keep_work)
                    return ChainResult(report, out, out / VOLUME_NAME)
                log.warning("%s: %s; redoing them", volume, describe_damage(bad))
                if volume != work / VOLUME_NAME and volume.exists():
                    volume.rename(work / VOLUME_NAME)  # back into the work, to be repaired
                self._unmark_units(bad)
            staged.unlink(missing_ok=True)
        published = out / REPORT_NAME
        if not published.exists():
            return None
        try:
            report = ScanReport.load(published)
        except (OSError, ValueError) as exc:
            raise InputError(published, f"unreadable ({exc}); give --overwrite to process the scan again") from exc
        if report.volume is None or report.volume.spec != self.work.spec_id:
            if self.replace:
                return None
            raise InputError(out, "holds the outputs of another run (other frames or options); give another output "
                             "folder, or --overwrite to replace them")
        bad = damaged_units(out / VOLUME_NAME, report.volume, self.executor)
        if bad and self.replace:
            log.warning("%s: %s; processing the scan again", out / VOLUME_NAME, describe_damage(bad))
            return None
        if bad:
            raise InputError(out / VOLUME_NAME, f"is damaged: {describe_damage(bad)}; give --overwrite to process "
                             "the scan again")
        log.info("%s: the outputs of this scan are complete (checked against their report); nothing to do", out)
        if not self.layout.keep_work:
            self.work.remove()
        return ChainResult(report, out, out / VOLUME_NAME, already_complete=True)

    def _unmark_units(self, bad: list[tuple[str, int, int]]) -> None:
        """Drop the markers of damaged volume units (level 0: the slab; any level: that level's unit and the
        levels above)."""
        rows = self.layout.rows_per_slab(*self.shape)
        for level, r0, _ in bad:
            n = int(level.lstrip("s"))
            if n == 0:
                self.work.unmark(f"slab_r{rows}", str(r0))
            else:
                self.work.unmark(f"level{n}_r{rows}", str(r0))
            for above in self.work.stages("level"):
                if int(above.split("_")[0][len("level"):]) > n:
                    self.work.unmark(above)

    def _reject_distance_alert(self, name: str, reason: str) -> None:
        alert = left_out_alert(name, reason)
        self.alerts.append(alert)
        log.error("%s", alert.message)

    def _report(self, slots: list, written: list[int], axis: RotationAxis, envelope: SampleEnvelope | None,
                contrast: float | None, shift_record: dict[str, Any], fsc_section: Resolution,
                edge_section: dict[str, Any], halves_path: Path, t_start: float) -> ScanReport:
        from ..quality.alerts import default_router  # noqa: PLC0415
        from ..quality.monitor import QualityMonitor  # noqa: PLC0415

        cfg, geo = self.config, self.geometry
        voxel = geo.voxel_m
        own = self.monitor is None
        monitor = self.monitor
        if own:
            t0 = time.perf_counter()
            monitor = QualityMonitor(cfg, str(Path(self.index.folder).resolve()), router=default_router(cfg))
            feed_monitor(monitor, self.index)
            self.timing["quality monitor"] = round(time.perf_counter() - t0, 3)  # dose, drift, warp from the files
        region = getattr(self, "_region", None)
        if region is not None:  # the final point of the running FSC, on the central region
            monitor.add_fsc(n_angles=len(written), region=region, fraction=1.0, voxel_m=voxel)
        quality = monitor.snapshot()
        if own:
            monitor.close()
        q = quality["dose"]
        alerts = alert_entries(self.alerts) + list(monitor.alert_history())
        account = self.account()
        ny, nx = self.shape
        details = {k: q[k] for k in ("sample", "sample_gray", "previous_scans_gray", "ledger", "dead_time_s",
                                     "exposed_frames", "exposure_s", "fluence_per_m2") if k in q}
        details["material"] = {"formula": cfg.sample.formula, "density_g_cm3": cfg.sample.density}
        return ScanReport(
            software={"name": "xnh-stream", "version": __version__},
            scan={"folder": str(self.index.folder), "distances": [d.name for d in self.index.distances],
                  "n_angles": len(slots), "angles_used": len(written), "frame_shape": [ny, nx]},
            geometry={"energy_kev": geo.energy_kev, "voxel_m": voxel, "reference_distance": self.ref + 1,
                      "distances": [{"name": d.name, "z1_m": g.z1_m, "z2_m": g.z2_m, "magnification": g.magnification,
                                     "effective_pixel_m": g.effective_pixel_m,
                                     "propagation_distance_m": g.propagation_distance_m,
                                     "fresnel_number": g.fresnel_number}
                                    for d, g in zip(self.index.distances, geo.distances)]},
            phase={"method": phase_method(cfg.phase.method).label(envelope is not None, cfg.ctf.refine > 0),
                   "delta_beta": self.delta_beta, "delta_beta_contrast": contrast,
                   "delta_beta_estimate": self.material_record or None,
                   "envelope": None if envelope is None else envelope.as_dict(),
                   "alpha_low": cfg.ctf.alpha_low_for(envelope is not None), "alpha_high": cfg.ctf.alpha_high,
                   "sign": "phase = -k * integral(delta dz) (negative for matter); volume holds delta"},
            alignment=shift_record,
            cor=axis,
            fsc=fsc_section,
            edge=edge_section,
            dose=Dose(q["gray_total"], q["per_distance_gray"], q["mu_rho_m2_per_kg"], details),
            drift=quality["drift"], warp=quality["warp"], running_fsc=quality["fsc"]["history"],
            alerts=alerts, frames=account, config=cfg.to_dict(),
            timing_s={**self.timing, "total": round(time.perf_counter() - t_start, 3)},
            completion=self.completion,
        )

    def universe(self) -> dict[str, tuple[int | None, float | None, float | None]]:
        """Every frame id of the scan (incl. unused and rejected ones) with its journal key, angle and distance key."""
        out: dict[str, tuple[int | None, float | None, float | None]] = {}
        recs = [*self.index.frames, *(r for d in self.index.rejected for r in d.frames),
                *(r for r, _ in self.index.duplicates)]
        for r in recs:
            out[r.frame_id] = (journal_key(r), r.rotation_angle_deg, r.distance_key)
        for q in self.index.rejected_files:
            out[f"{q.file_id}#file"] = (None, None, None)
        return out

    def book(self, journal: FrameJournal) -> FrameAccount:
        """Book every frame's fate in the journal; the journal's account (what the report says).

        Frames new to the journal are received; frames set aside are quarantined with their reason; the
        others are processed. A frame the journal received during the scan that the scan folder no longer
        holds is quarantined if it was pending, and counted in ``missing_from_volume`` if the live stream
        had already processed it.
        """
        account = self.account()
        universe = self.universe()
        known = journal.known_ids()
        journal.record_many(JournalEntry(fid, RECEIVED, d, k, a, stage="final")
                            for fid, (k, a, d) in universe.items() if fid not in known)
        pending = {r.frame_id for r in journal.pending()}
        reasons = dict(zip(self._quarantine_ids, account.quarantine))
        bad = [(fid, q) for fid, q in reasons.items() if fid in pending]
        if bad:
            journal.mark_many([f for f, _ in bad], QUARANTINED, stage="final", reasons=[q.reason for _, q in bad])
        missing: list[str] = []
        vanished_pending: list[str] = []
        for r in journal.iter_records():
            if r.frame_id in universe:
                continue
            if r.state == RECEIVED:
                vanished_pending.append(r.frame_id)
            elif r.state == PROCESSED:
                missing.append(r.frame_id)  # used live, gone now: not in the final volume
        if vanished_pending:
            journal.mark_many(vanished_pending, QUARANTINED, stage="final", reasons=[
                "not in the scan folder at the final pass (its file vanished or was replaced)"] * len(vanished_pending))
        if missing:
            journal.emit("frames_vanished", {"frames": len(missing), "first": missing[:20]}, key="frames_vanished")
        rest = [r.frame_id for r in journal.pending()]
        if rest:
            journal.mark_many(rest, PROCESSED, stage="final")
        summary = journal.summary()
        n_missing = len(missing)
        return FrameAccount(summary["received"], summary["processed"], summary["quarantined"], summary["pending"],
                            summary["duplicates"],
                            [QuarantinedFrame(q["file"], q["index"], q["reason"], q.get("stage"))
                             for q in summary["quarantine"]], account.rejected_files, n_missing)

    def account(self) -> FrameAccount:
        """Every frame of the scan and what became of it (without a journal)."""
        quarantine = dict(self.quarantine)
        for d in self.index.distances:
            for rec in d.invalid:
                quarantine.setdefault(rec.frame_id, QuarantinedFrame(rec.path, rec.index,
                                                                     "image_key 3 (invalid) set by the acquisition",
                                                                     "ingest"))
        for d in self.index.rejected:
            for rec in d.frames:
                quarantine.setdefault(rec.frame_id, QuarantinedFrame(rec.path, rec.index, left_out(d.reason),
                                                                     "ingest"))
        for rec, original in self.index.duplicates:
            quarantine.setdefault(rec.frame_id, QuarantinedFrame(rec.path, rec.index,
                                                                 f"copy of {original} (same content): not used",
                                                                 "ingest"))
        rejected_files = []
        for q in self.index.rejected_files:
            quarantine.setdefault(f"{q.file_id}#file", QuarantinedFrame(q.path, None, f"file rejected: {q.reason}",
                                                                        "ingest"))
            rejected_files.append({"file": q.path, "reason": f"{q.source}: {q.reason}"})
        received = self.index.n_frames + len(self.index.rejected_files)
        entries = list(quarantine.values())
        self._quarantine_ids = list(quarantine)
        return FrameAccount(received, received - len(entries), len(entries), 0, 0, entries, rejected_files)


def journal_key(rec: FrameRecord) -> int | None:
    """The journal's image key of a frame: 0, 1, 2, or -1 for a return projection (None: invalid)."""
    if rec.image_key_control == -1:
        return -1
    return rec.image_key if rec.image_key in (0, 1, 2) else None


def _batches(items: Sequence[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _first_voxel(position: dict[str, Any] | None, shape: tuple[int, int, int],
                 voxel_m: float) -> tuple[float, ...] | None:
    """The centre of the volume's first voxel in the stage frame, from the sample's stage position (None
    when the files do not record it)."""
    if position is None or "position_m" not in position:
        return None
    return tuple(float(c) - (n - 1) / 2 * voxel_m for c, n in zip(position["position_m"], shape))


def _create_halves(path: Path, boxes: list[tuple[int, ...]]) -> None:
    import zarr  # noqa: PLC0415

    group = zarr.open_group(str(path), mode="a")
    for i, (z0, z1, y0, y1, x0, x1) in enumerate(boxes):
        shape = (2, z1 - z0, y1 - y0, x1 - x0)
        if f"box{i}" in group and tuple(group[f"box{i}"].shape) == shape:
            continue
        # one z-plane per chunk: slabs cut boxes anywhere, and no two slabs may write one chunk
        group.create_array(f"box{i}", shape=shape, chunks=(2, 1, shape[2], shape[3]), dtype="float32",
                           fill_value=0.0, overwrite=True, compressors=CHECKED_COMPRESSORS)


def feed_monitor(monitor: Any, index: ScanIndex) -> None:
    """Every frame of a finished scan to a quality monitor, in acquisition order; pixels only where it needs them.

    Frames that cannot be read are skipped here: the chain's own reading quarantines them.
    """
    for d in index.distances:
        for rec in sorted(d.frames, key=lambda r: (r.sequence, r.frame_id)):
            pixels = None
            if monitor.wants_pixels(rec):
                pixels, problem = read_frame(rec)
                if pixels is None:
                    continue
            monitor.add_frame(rec, pixels)
