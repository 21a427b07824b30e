"""The typed account of a processed scan (``report.json``) and of a stream in progress.

:class:`ScanReport` is what the final pass writes and what the metrics, the overnight queue, the
stitcher and the command line read back (:meth:`ScanReport.load`). Its JSON form is the output contract
of ``docs/contracts.md`` ("report.json": ``fsc.resolution_m``, ``dose.gray``, ``alerts``, ``frames.received /
processed / quarantined``, ``cor.px`` with its method, and the details each section carries).
:class:`FrameAccount` is the one frame count, the same in the journal, the report and the metrics.
:class:`StreamProgress` is what the live stream hands its consumers (progress bars, metrics, live page)
after every poll.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..io.names import JOURNAL_NAME, REPORT_NAME, VOLUME_NAME  # noqa: F401 - the chain's names, from io/names.py


def json_default(o: Any) -> Any:
    """JSON encoding of numpy scalars and arrays."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


@dataclass
class QuarantinedFrame:
    """A frame set aside: its file, its index in the file (None for a whole file) and why."""

    file: str
    index: int | None
    reason: str
    stage: str | None = None


@dataclass
class FrameAccount:
    """Every frame received and what became of it (``frames`` in the report).

    ``received == processed + quarantined + pending``; a file that could not be used at all counts as
    one quarantined entry (index None) with the reason, its frames are not invented. ``duplicates`` counts
    repeated arrivals of a frame already received; ``missing_from_volume`` the frames processed during the
    scan whose file was gone at the final pass (an alert says so); ``from_stream`` the projections the final
    pass took flat-fielded from the live stream's store instead of reading their files again
    (:mod:`~xnh_stream.chain.frames`).
    """

    received: int = 0
    processed: int = 0
    quarantined: int = 0
    pending: int = 0
    duplicates: int = 0
    quarantine: list[QuarantinedFrame] = field(default_factory=list)
    rejected_files: list[dict[str, str]] = field(default_factory=list)
    missing_from_volume: int = 0
    from_stream: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameAccount:
        """From the report's ``frames`` section."""
        q = [QuarantinedFrame(**{k: v for k, v in e.items() if k in ("file", "index", "reason", "stage")})
             for e in d.get("quarantine", [])]
        return cls(int(d.get("received", 0)), int(d.get("processed", 0)), int(d.get("quarantined", 0)),
                   int(d.get("pending", 0)), int(d.get("duplicates", 0)), q, list(d.get("rejected_files", [])),
                   int(d.get("missing_from_volume", 0)), int(d.get("from_stream", 0)))


@dataclass
class RotationAxis:
    """The rotation axis used (reference-distance detector pixels) and how it was found."""

    px: float
    method: str
    confidence_px: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    disagreement_px: float | None = None
    axis_drift_px: float | None = None


@dataclass
class Resolution:
    """FSC resolution (half-bit) of the final half-volumes, and the curve."""

    resolution_m: float | None
    crossing_freq_nyquist: float | None = None
    limited_by_sampling: bool | None = None
    threshold: str = "half-bit"
    boxes: list[list[int]] = field(default_factory=list)
    curve: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class Dose:
    """Dose of the scan (Howells), total and per distance, and of the sample over its scans."""

    gray: float
    per_distance_gray: list[float] = field(default_factory=list)
    mu_rho_m2_per_kg: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    """Why the scan counted as complete (live stream) and what it lacked."""

    reason: str
    missing: list[str] = field(default_factory=list)


@dataclass
class VolumeRecord:
    """What the published volume is (``volume`` in the report): the work it was made from and a checksum
    of each of its units, so that any later run can tell the volume on disk from a damaged one.

    Attributes
    ----------
    spec : str
        Hash of the frames and options it was made from (the work folder's spec).
    shape : list of int
        ``[z, y, x]`` of level 0.
    units : dict
        Per level array (``s0``, ``s1``, ...) the units ``[r0, r1, crc32]``: rows ``r0:r1`` and the CRC-32 of
        their float32 bytes.
    stats : dict
        ``min``, ``max``, ``mean``, ``std`` of level 0 and ``projection_absmax``, the largest |value| of the
        projections (the plausibility check's bound).
    """

    spec: str
    shape: list[int]
    units: dict[str, list[list[int]]] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class ScanReport:
    """``report.json`` (see the module docstring)."""

    software: dict[str, Any]
    scan: dict[str, Any]
    geometry: dict[str, Any]
    phase: dict[str, Any]
    alignment: dict[str, Any]
    cor: RotationAxis
    fsc: Resolution
    edge: dict[str, Any]
    dose: Dose
    drift: dict[str, Any]
    warp: dict[str, Any]
    running_fsc: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    frames: FrameAccount
    config: dict[str, Any]
    timing_s: dict[str, float] | float
    completion: Completion | None = None
    sample: dict[str, Any] = field(default_factory=dict)
    volume: VolumeRecord | None = None
    denoise: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (the report's contract layout)."""
        d = asdict(self)
        dose = d.pop("dose")
        d["dose"] = {"gray": dose["gray"], "per_distance_gray": dose["per_distance_gray"],
                     "mu_rho_m2_per_kg": dose["mu_rho_m2_per_kg"], **dose["details"]}
        for optional in ("completion", "volume", "denoise"):
            if d[optional] is None:
                del d[optional]
        return d

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/report.json`` (atomically and durably: a report that exists is whole)."""
        path = Path(folder) / REPORT_NAME
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2, default=json_default, allow_nan=True))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanReport:
        """From the JSON form."""
        known = {f.name for f in fields(cls)}
        dose = dict(d.get("dose") or {})
        fsc = dict(d.get("fsc") or {})
        comp = d.get("completion")
        vol = d.get("volume")
        values = {k: v for k, v in d.items() if k in known}
        values.update(
            cor=RotationAxis(**{k: v for k, v in (d.get("cor") or {"px": math.nan, "method": "unknown"}).items()
                                if k in {f.name for f in fields(RotationAxis)}}),
            fsc=Resolution(**{k: v for k, v in fsc.items() if k in {f.name for f in fields(Resolution)}}),
            dose=Dose(dose.pop("gray", math.nan), dose.pop("per_distance_gray", []), dose.pop("mu_rho_m2_per_kg", None),
                      dose),
            frames=FrameAccount.from_dict(d.get("frames") or {}),
            completion=Completion(**comp) if comp else None,
            volume=VolumeRecord(**{k: v for k, v in vol.items() if k in {f.name for f in fields(VolumeRecord)}})
            if isinstance(vol, dict) and "spec" in vol and "shape" in vol else None)
        for name in known - set(values):
            values[name] = {} if name not in ("running_fsc", "alerts") else []
        return cls(**values)

    @classmethod
    def load(cls, folder_or_file: str | Path) -> ScanReport:
        """Read ``report.json`` (give the file or its output folder)."""
        p = Path(folder_or_file)
        if p.is_dir():
            p = p / REPORT_NAME
        return cls.from_dict(json.loads(p.read_text()))


@dataclass
class DistanceState:
    """Live progress of one distance."""

    z1_m: float
    frames: int
    projections_waiting_for_flats: int = 0


@dataclass
class StreamProgress:
    """What the live stream reports after each poll (progress bars, metrics, live page).

    Attributes
    ----------
    distances : list of DistanceState
        Per distance (increasing z1).
    angles_seen, angles_final : int
        Angle slots with a preview, with the final CTF projection.
    quarantined : int
        Frames the assembler set aside.
    journal : dict
        The journal's counts (``received``, ``processed``, ``quarantined``, ``pending``, ``duplicates``).
    queues : dict
        Queue depths (``phase_waiting``, ``phase_in_flight``, ``backprojection``, ``waiting_for_flats``).
    behind_s : float
        How long the oldest final (CTF) work has waited for a phase worker (0: the live slices are current).
    previews_skipped : dict
        Previews skipped so far (:mod:`xnh_stream.live.schedule`): ``superseded`` (their angle's final was
        already queued) and ``late`` (waited longer than ``stream.preview_deadline_s``).
    finals_coarse : int
        Final (CTF) work sent at half resolution so far (waited longer than ``stream.coarse_after_s``).
    latency_s : dict
        New latency samples per stage since the previous progress.
    restarts : dict
        Actor restarts so far per kind.
    actors : dict
        Actors per kind.
    store_bytes : int or None
        Size of the distance store on disk.
    cluster : dict
        Nodes, CPUs, object store of the Ray cluster.
    quality : dict or None
        The quality monitor's figures.
    status : str
        ``streaming``, ``final pass``, ``complete`` or ``stopped``.
    """

    distances: list[DistanceState] = field(default_factory=list)
    angles_seen: int = 0
    angles_final: int = 0
    quarantined: int = 0
    journal: dict[str, int] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    behind_s: float = 0.0
    previews_skipped: dict[str, int] = field(default_factory=dict)
    finals_coarse: int = 0
    latency_s: dict[str, list[float]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    actors: dict[str, int] = field(default_factory=dict)
    store_bytes: int | None = None
    cluster: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    status: str = "streaming"
    final_step: str | None = None
