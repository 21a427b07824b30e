"""The per-frame and per-angle steps, shared by the final pass and the live stream.

* :func:`read_frame`: a frame's pixels, or the reason it is unusable (the reader's checks);
* :meth:`Calibration.correct <xnh_stream.chain.calibration.Calibration.correct>`: flat-field;
* :class:`AngleProcessor`: the flat-fielded frames of one angle to a projection of delta on the reference
  grid: every distance aligned (rescaled to the reference pixel and shifted by its model), then the
  method ``phase.method`` names (:mod:`xnh_stream.chain.phase_methods`: the multi-distance CTF, two-material
  with a sample envelope, or Paganin), or a single-distance Paganin *preview*;
* :class:`PhaseSetup`: everything an :class:`AngleProcessor` is built from, small and picklable, so that a
  worker process builds its processor (and its cached CTF filters) once per scan (:func:`processor_for`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..config import ProcessConfig
from ..io.nxtomo import InputError
from ..io.sources import FrameRecord
from ..physics.align import ShiftModel, align_to_reference
from ..physics.envelope import SampleEnvelope
from ..physics.geometry import ScanGeometry
from ..physics.phase import CTFRetriever, retrieve_phase_paganin
from ..physics.refine import FresnelRefiner
from ..physics.xp import get_array_module
from .phase_methods import PhaseMethod, phase_method


def read_frame(rec: FrameRecord) -> tuple[np.ndarray | None, str | None]:
    """The frame's pixels (float32), or ``(None, reason)`` when it cannot be read or is unusable."""
    try:
        return rec.read(), None
    except InputError as exc:
        return None, exc.problem


class AngleProcessor:
    """Frames of one angle to a projection of delta on the reference grid.

    Parameters
    ----------
    geometry : ScanGeometry
        All distances of the scan; the reference (most magnified) sets the grid.
    frame_shape : tuple of int
        ``(ny, nx)`` of the frames and of the projections.
    delta_beta : float
        delta/beta of the homogeneous-object CTF and of Paganin.
    config : ProcessConfig
        CTF regularisation.
    xp : module
        Array module.
    pad : float
        FFT padding factor of the CTF and of Paganin (mirror values; see
        :func:`~xnh_stream.physics.phase.padded_shape`); default ``ctf.phase_pad`` (the final pass's, 2),
        ``stream.phase_pad`` live.
    refine : int
        Fresnel refinement iterations after the single-material CTF (``ctf.refine`` in the final pass, where
        :class:`PhaseSetup` builds the processor; 0, off, live).

    Attributes
    ----------
    method : PhaseMethod
        ``phase.method``: what :meth:`retrieve` does.
    envelope : SampleEnvelope or None
        Set it (with ``contrast_delta_beta``) for the two-material CTF: the envelope carries the
        sample's outline with ``delta_beta``, the interior is retrieved with ``contrast_delta_beta``.
    """

    def __init__(self, geometry: ScanGeometry, frame_shape: tuple[int, int], delta_beta: float,
                 config: ProcessConfig, xp: ModuleType = np, pad: float | None = None, refine: int = 0) -> None:
        self.geometry, self.shape, self.delta_beta, self.config, self.xp = geometry, frame_shape, delta_beta, config, xp
        self.pad = float(config.ctf.phase_pad if pad is None else pad)
        self.refine = int(refine)
        self._refiners: dict[tuple[int, ...], FresnelRefiner] = {}
        self.models: list[ShiftModel | None] = [None] * len(geometry.distances)
        # phase [rad] -> line integral of delta in voxel units: p = -phi / (k * voxel)
        self.scale = -1.0 / (2 * math.pi / geometry.distances[0].wavelength_m * geometry.voxel_m)
        self._retrievers: dict[tuple[int, ...], CTFRetriever] = {}
        self.envelope: SampleEnvelope | None = None
        self.contrast_delta_beta: float | None = None
        self.method: PhaseMethod = phase_method(config.phase.method)

    def shift(self, k: int, theta_deg: float) -> tuple[float, float]:
        """The shift distance ``k`` gets at this angle (its model's; zero for the reference or no model)."""
        model = self.models[k] if k != self.geometry.reference else None
        return tuple(float(v) for v in model(theta_deg)) if model is not None else (0.0, 0.0)

    def aligned(self, k: int, image: Any, theta_deg: float, shift: tuple[float, float] | None = None) -> Any:
        """Distance ``k``'s frame rescaled to the reference pixel and shifted (by ``shift``, default its model
        at this angle)."""
        if k == self.geometry.reference:
            return image
        shift = self.shift(k, theta_deg) if shift is None else shift
        return align_to_reference(image, k, self.geometry, shift, self.shape, xp=self.xp)

    def _retriever(self, which: tuple[int, ...], two_material: bool) -> CTFRetriever:
        key = which + ((-1,) if two_material else ())
        if key not in self._retrievers:
            geo, cfg = self.geometry, self.config
            sub = ScanGeometry(tuple(geo.distances[k] for k in which))
            db = self.contrast_delta_beta if two_material else self.delta_beta
            alpha_low = cfg.ctf.alpha_low_for(two_material) * 2 * len(which) / db**2
            self._retrievers[key] = CTFRetriever(sub, self.shape, db, alpha_low=alpha_low,
                                                 alpha_high=cfg.ctf.alpha_high, pad=self.pad, pixel_m=geo.voxel_m,
                                                 xp=self.xp,
                                                 envelope_delta_beta=self.delta_beta if two_material else None)
        return self._retrievers[key]

    def prepare_ctf(self) -> None:
        """Build the single-material CTF filter of all the distances now and run it once on blank frames (the
        FFT plans, padding buffer and resampling taps of this shape), so that the first final projections do
        not wait for them."""
        blank = self.xp.ones(self.shape, dtype=self.xp.float32)
        self.ctf(dict.fromkeys(range(len(self.geometry.distances)), blank), 0.0)

    def retrieve(self, images: Mapping[int, Any], theta_deg: float) -> Any:
        """Projection of the distances present (``{distance index: flat-fielded frame}``) by ``phase.method``
        (:attr:`method`)."""
        if not images:
            raise ValueError("no frame given")
        return self.method.retrieve(self, images, theta_deg)

    def ctf(self, images: Mapping[int, Any], theta_deg: float, two_material: bool = True) -> Any:
        """Projection from the CTF of the distances present (``{distance index: flat-fielded frame}``): two
        materials when the processor holds an envelope (and ``two_material``), else one."""
        which = tuple(sorted(images))
        if not which:
            raise ValueError("no frame given")
        # the retrievers take the frames one by one: a list, not a stacked copy (40 ms a 2048^2 angle)
        frames = [self.aligned(k, images[k], theta_deg) for k in which]
        if two_material and self.envelope is not None and self.contrast_delta_beta:
            envelope = self.envelope.projection(math.radians(theta_deg)) / self.scale
            return self._retriever(which, True)(frames, envelope=envelope) * self.scale
        retriever = self._retriever(which, False)
        phase = retriever(frames)
        if self.refine > 0:
            if which not in self._refiners:
                self._refiners[which] = FresnelRefiner(retriever, self.delta_beta, iterations=self.refine)
            phase = self.xp.asarray(self._refiners[which](self.xp.stack(frames), phase).phase)
        return phase * self.scale

    def preview(self, k: int, image: Any, theta_deg: float, shift: tuple[float, float] | None = None) -> Any:
        """Projection from a single-distance Paganin retrieval of distance ``k`` (fast, lower quality);
        ``shift`` as in :meth:`aligned`."""
        d = self.geometry.distances[k]
        on_grid = self.aligned(k, image, theta_deg, shift)
        phi = retrieve_phase_paganin(on_grid, (d.propagation_distance_m, d.wavelength_m, self.geometry.voxel_m),
                                     self.delta_beta, pad=self.pad, xp=self.xp)
        return phi * self.scale

@dataclass(frozen=True)
class PhaseSetup:
    """What builds an :class:`AngleProcessor` (picklable; ``token`` names one set-up for caching).

    Attributes
    ----------
    geometry : ScanGeometry
        The distances.
    frame_shape : tuple of int
        ``(ny, nx)``.
    delta_beta : float
        delta/beta of the sample (CTF, Paganin, the envelope's contrast against air).
    config : ProcessConfig
        CTF regularisation and backend.
    models : tuple
        Shift model of every distance (None: reference, or not aligned).
    envelope : SampleEnvelope or None
        The sample envelope (two-material CTF).
    contrast_delta_beta : float or None
        delta/beta of the contrast inside the envelope.
    """

    geometry: ScanGeometry
    frame_shape: tuple[int, int]
    delta_beta: float
    config: ProcessConfig
    models: tuple[ShiftModel | None, ...] = ()
    envelope: SampleEnvelope | None = None
    contrast_delta_beta: float | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def build(self, xp: ModuleType | None = None) -> AngleProcessor:
        """A processor for this set-up."""
        xp = xp or get_array_module(self.config.compute.backend)
        proc = AngleProcessor(self.geometry, self.frame_shape, self.delta_beta, self.config, xp=xp,
                              refine=self.config.ctf.refine)
        if self.models:
            proc.models = list(self.models)
        if self.envelope is not None and self.contrast_delta_beta:
            proc.envelope = self.envelope
            proc.contrast_delta_beta = self.contrast_delta_beta
        return proc


_PROCESSORS: dict[str, AngleProcessor] = {}


def processor_for(setup: PhaseSetup) -> AngleProcessor:
    """The processor of ``setup`` in this process (built once; the last two set-ups are kept)."""
    proc = _PROCESSORS.get(setup.token)
    if proc is None:
        while len(_PROCESSORS) >= 2:
            _PROCESSORS.pop(next(iter(_PROCESSORS)))
        proc = _PROCESSORS[setup.token] = setup.build()
    return proc
