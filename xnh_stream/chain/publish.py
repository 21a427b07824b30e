"""The end of a final pass: the volume checked, then published so that a kill at any instant is harmless.

Three states of an output folder, told apart by where ``report.json`` is (the report is always the last
file to land, and it records the checksum of every unit of the volume, :class:`~.report.VolumeRecord`):

==========  ================================================  ============================================
state       on disk                                           what the next run does
==========  ================================================  ============================================
working     ``OUT/work`` without ``report.json``;             resumes the units (each checked on resume)
            ``OUT/report.json`` absent or of another run
staged      ``OUT/work/report.json``; the new volume in        checks the new volume against the staged
            ``OUT/work`` or already moved to ``OUT``           report and finishes the publication
published   ``OUT/report.json`` of this run's spec             checks ``OUT/volume.ome.zarr`` against it:
                                                              done (nothing recomputed), or a clear refusal
==========  ================================================  ============================================

:func:`publish` moves, in this order: the previous ``OUT/report.json`` away (from then on the folder says
"not complete"), the previous volume into the trash, the new volume into ``OUT``, the new report into
``OUT``; then the work folder goes (renamed to the trash first, :func:`~xnh_stream.state.work.trash`).
Every move is a rename within ``OUT``, so each instant leaves either the old good state, an incomplete
state the next run completes from the staged work, or the new good state: never a report beside a volume
it does not describe. A restart never recomputes a volume from units it has not checked.

:func:`check_volume` is the plausibility check of a volume before it is staged: finite, not constant, and
within the range its projections allow (FBP of projections bounded by ``P`` is bounded by ``pi P / 2`` per
voxel for the ramp filter's kernel, whose absolute sum is 1/2; :data:`RANGE_FACTOR` leaves room for the
window and the padding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..state.work import crash_point, crc32, fsync_dir, purge_trash, trash
from .report import REPORT_NAME, VOLUME_NAME, ScanReport, VolumeRecord

log = logging.getLogger(__name__)

#: Largest |voxel| allowed, in units of the largest |projection value| (see the module docstring).
RANGE_FACTOR = 4.0


@dataclass
class VolumeStats:
    """Sums over voxels, combined over the slabs of a volume (each slab task sends its own)."""

    n: int = 0
    nonfinite: int = 0
    vmin: float = math.inf
    vmax: float = -math.inf
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> VolumeStats:
        """The statistics of an array."""
        finite = np.isfinite(values)
        n_finite = int(finite.sum())
        good = values[finite] if n_finite < values.size else values
        v = good.astype(np.float64, copy=False)
        return cls(int(values.size), int(values.size - n_finite), float(v.min()) if v.size else math.inf,
                   float(v.max()) if v.size else -math.inf, float(v.sum()), float(np.dot(v.ravel(), v.ravel())))

    @classmethod
    def from_list(cls, values: Iterable[float]) -> VolumeStats:
        """From :meth:`as_list` (a marker's payload)."""
        n, nonfinite, vmin, vmax, total, total_sq = values
        return cls(int(n), int(nonfinite), float(vmin), float(vmax), float(total), float(total_sq))

    def as_list(self) -> list[float]:
        """JSON form."""
        return [self.n, self.nonfinite, self.vmin, self.vmax, self.total, self.total_sq]

    def __add__(self, other: VolumeStats) -> VolumeStats:
        return VolumeStats(self.n + other.n, self.nonfinite + other.nonfinite, min(self.vmin, other.vmin),
                           max(self.vmax, other.vmax), self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        """Mean of the finite voxels."""
        m = self.n - self.nonfinite
        return self.total / m if m else math.nan

    @property
    def std(self) -> float:
        """Standard deviation of the finite voxels."""
        m = self.n - self.nonfinite
        return math.sqrt(max(0.0, self.total_sq / m - self.mean ** 2)) if m else math.nan


def check_volume(stats: VolumeStats, projection_absmax: float) -> list[str]:
    """What makes a reconstructed volume implausible (empty when nothing does).

    Parameters
    ----------
    stats : VolumeStats
        Of every voxel of level 0.
    projection_absmax : float
        Largest |value| of the projections it was reconstructed from.

    Returns
    -------
    list of str
        One sentence per problem: voxels not finite, a constant volume, values beyond the projections' range.
    """
    problems = []
    if stats.n == 0:
        return ["it has no voxel"]
    if stats.nonfinite:
        problems.append(f"{stats.nonfinite} of {stats.n} voxels are NaN or infinite")
    if stats.nonfinite == stats.n:
        return problems
    peak = max(abs(stats.vmin), abs(stats.vmax))
    if stats.vmax == stats.vmin or not stats.std > 1e-6 * peak:
        problems.append(f"it is constant ({stats.vmin:.4g} everywhere)")
    limit = RANGE_FACTOR * projection_absmax
    if math.isfinite(projection_absmax) and peak > limit:
        problems.append(f"its values reach {peak:.4g}, beyond the {limit:.4g} that projections up to "
                        f"{projection_absmax:.4g} allow")
    return problems


def region_crc_task(job: tuple[str, int, int]) -> int | None:
    """CRC-32 of rows ``r0:r1`` of the zarr array at ``path`` as read now (None where it cannot be read)."""
    import zarr  # noqa: PLC0415

    path, r0, r1 = job
    try:
        return crc32(np.asarray(zarr.open_array(path, mode="r")[r0:r1]))
    except Exception as exc:  # noqa: BLE001 - a chunk of garbage, a bad checksum, a cut file: damaged
        log.warning("%s rows %d:%d unreadable: %s", path, r0, r1, exc)
        return None


def damaged_units(volume: Path, record: VolumeRecord, executor: object) -> list[tuple[str, int, int]]:
    """The units ``(level, r0, r1)`` of ``volume`` whose data differ from ``record`` (read back, as tasks)."""
    jobs, want = [], []
    for level, units in record.units.items():
        for r0, r1, crc in units:
            jobs.append((str(volume / level), int(r0), int(r1)))
            want.append((level, int(r0), int(r1), int(crc)))
    if not (volume / "zarr.json").exists():
        return [(lv, r0, r1) for lv, r0, r1, _ in want]
    bad = []
    for i, got in executor.map(region_crc_task, jobs):  # type: ignore[attr-defined]
        level, r0, r1, crc = want[i]
        if got != crc:
            bad.append((level, r0, r1))
    return sorted(bad)


def describe_damage(bad: list[tuple[str, int, int]]) -> str:
    """Which units of a volume are damaged, in one phrase."""
    shown = ", ".join(f"{lv} rows {r0}-{r1 - 1}" for lv, r0, r1 in bad[:4])
    many = len(bad) > 1
    return f"{len(bad)} unit{'s' * many} {'differ' if many else 'differs'} from the checksums of its report " \
           f"({shown}{', ...' if len(bad) > 4 else ''})"


def stage(work: Path, report: ScanReport) -> None:
    """Write the report into the work folder: the pass is complete there (the ``staged`` state)."""
    report.write(work)
    fsync_dir(work)
    crash_point("publish:staged")


def publish(out: Path, work: Path, keep_work: bool = False) -> None:
    """Move a staged volume and report from ``work`` into ``out`` (see the module docstring); idempotent: a
    killed publication is finished by calling it again."""
    new_report, new_volume = work / REPORT_NAME, work / VOLUME_NAME
    report, volume = out / REPORT_NAME, out / VOLUME_NAME
    if new_report.exists():
        if report.exists():  # the previous run's: from now on the folder is "not complete"
            report.unlink()
            fsync_dir(out)
        crash_point("publish:old-report-removed")
        if new_volume.exists():
            if volume.exists():
                trash(volume)
            crash_point("publish:old-volume-removed")
            new_volume.rename(volume)
            fsync_dir(out)
        crash_point("publish:volume-moved")
        new_report.rename(report)
        fsync_dir(out)
        crash_point("publish:report-moved")
    if not keep_work:
        trash(work)
    purge_trash(out)
    crash_point("publish:done")
