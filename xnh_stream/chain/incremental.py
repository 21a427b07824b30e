"""Per-angle processing shared by the batch chain and the stream, and progressive reconstruction.

:class:`AngleProcessor` turns the flat-fielded frames of one angle into a projection of delta (line
integral in voxel units, on the reference grid): the multi-distance CTF when distances are available,
or a single-distance Paganin *preview*. :class:`ProgressiveVolume` back-projects projections as they
come and later swaps an angle's preview for its CTF projection; FBP being linear, the swap is one
back-projection of the difference, so the live volume sharpens without being rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ..physics.align import ShiftModel, align_to_reference
from ..config import ProcessConfig
from ..physics.envelope import SampleEnvelope
from ..physics.fbp import FBPAccumulator
from ..physics.geometry import ScanGeometry
from ..physics.phase import CTFRetriever, retrieve_phase_paganin


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

    Attributes
    ----------
    envelope : SampleEnvelope or None
        Set it (with ``contrast_delta_beta``) for the two-material CTF: the envelope carries the
        sample's outline with ``delta_beta``, the interior is retrieved with ``contrast_delta_beta``.
    """

    def __init__(self, geometry: ScanGeometry, frame_shape: tuple[int, int], delta_beta: float,
                 config: ProcessConfig, xp: ModuleType = np) -> None:
        self.geometry, self.shape, self.delta_beta, self.config, self.xp = geometry, frame_shape, delta_beta, config, xp
        self.models: list[ShiftModel | None] = [None] * len(geometry.distances)
        # phase [rad] -> line integral of delta in voxel units: p = -phi / (k * voxel)
        self.scale = -1.0 / (2 * math.pi / geometry.distances[0].wavelength_m * geometry.voxel_m)
        self._retrievers: dict[tuple[int, ...], CTFRetriever] = {}
        self.envelope: SampleEnvelope | None = None
        self.contrast_delta_beta: float | None = None

    def aligned(self, k: int, image: Any, theta_deg: float) -> Any:
        """Distance ``k``'s frame rescaled to the reference pixel and shifted by its model at this angle."""
        if k == self.geometry.reference:
            return image
        model = self.models[k]
        shift = tuple(float(v) for v in model(theta_deg)) if model is not None else (0.0, 0.0)
        return align_to_reference(image, k, self.geometry, shift, self.shape, xp=self.xp)

    def _retriever(self, which: tuple[int, ...], two_material: bool) -> CTFRetriever:
        key = which + ((-1,) if two_material else ())
        if key not in self._retrievers:
            geo, cfg = self.geometry, self.config
            sub = ScanGeometry(tuple(geo.distances[k] for k in which))
            db = self.contrast_delta_beta if two_material else self.delta_beta
            alpha_low = cfg.ctf_alpha_low * 2 * len(which) / db**2
            self._retrievers[key] = CTFRetriever(sub, self.shape, db, alpha_low=alpha_low,
                                                 alpha_high=cfg.ctf_alpha_high, pixel_m=geo.voxel_m, xp=self.xp,
                                                 envelope_delta_beta=self.delta_beta if two_material else None)
        return self._retrievers[key]

    def ctf(self, images: Mapping[int, Any], theta_deg: float) -> Any:
        """Projection from the CTF of the distances present (``{distance index: flat-fielded frame}``)."""
        which = tuple(sorted(images))
        if not which:
            raise ValueError("no frame given")
        stack = self.xp.stack([self.aligned(k, images[k], theta_deg) for k in which])
        if self.envelope is not None and self.contrast_delta_beta:
            envelope = self.envelope.projection(math.radians(theta_deg)) / self.scale
            return self._retriever(which, True)(stack, envelope=envelope) * self.scale
        return self._retriever(which, False)(stack) * self.scale

    def preview(self, k: int, image: Any, theta_deg: float) -> Any:
        """Projection from a single-distance Paganin retrieval of distance ``k`` (fast, lower quality)."""
        d = self.geometry.distances[k]
        on_grid = self.aligned(k, image, theta_deg)
        phi = retrieve_phase_paganin(on_grid, (d.propagation_distance_m, d.wavelength_m, self.geometry.voxel_m),
                                     self.delta_beta, xp=self.xp)
        return phi * self.scale


class ProgressiveVolume:
    """Angle-by-angle FBP in which an angle's preview can be replaced by its final projection.

    Parameters
    ----------
    n_slices, n_det : int
        Rows and columns of the projections given to :meth:`add`.
    cor : float
        Rotation axis column.
    window, padding : str
        Ramp filter window and padding (see :mod:`xnh_stream.physics.fbp`).
    rows : slice, optional
        Only these rows are reconstructed (a slab: one reconstruction shard).
    xp : module
        Array module.
    """

    def __init__(self, n_slices: int, n_det: int, cor: float, window: str = "shepp-logan", padding: str = "edge",
                 rows: slice | None = None, xp: ModuleType = np) -> None:
        self.rows = rows if rows is not None else slice(0, n_slices)
        n_rows = len(range(*self.rows.indices(n_slices)))
        self.acc = FBPAccumulator(n_rows, n_det, cor=cor, window=window, padding=padding, xp=xp)
        self._state: dict[int, str] = {}
        self._previews: dict[int, Any] = {}

    @property
    def n_final(self) -> int:
        """Angles whose final projection is in the volume."""
        return sum(1 for s in self._state.values() if s == "final")

    @property
    def n_preview(self) -> int:
        """Angles represented by a preview only."""
        return sum(1 for s in self._state.values() if s == "preview")

    def add(self, index: int, theta_rad: float, projection: Any, final: bool, previous: Any = None) -> None:
        """Add angle ``index``'s projection; a final one replaces that angle's preview if there is one.

        Parameters
        ----------
        index : int
            Angle index (its parity picks the FSC half).
        theta_rad : float
            Angle.
        projection : array [n_slices, n_det]
            Full-height projection (the slab's rows are taken here).
        final : bool
            True for the CTF projection, False for a preview.
        previous : array, optional
            The preview projection being replaced, when this volume was told not to keep previews
            (:meth:`forget_preview`); by default the kept one is used.
        """
        p = projection[self.rows]
        state = self._state.get(index)
        if state == "final" or (state == "preview" and not final):
            raise ValueError(f"angle {index} already has a {state} projection")
        if state == "preview":
            old = self._previews.pop(index, None)
            if old is None:
                if previous is None:
                    raise ValueError(f"angle {index}: the preview to replace was not kept; pass previous=")
                old = previous[self.rows]
            self.acc.replace(old, p, theta_rad, index)
        else:
            self.acc.add(p, theta_rad, index)
            if not final:
                self._previews[index] = p
        self._state[index] = "final" if final else "preview"

    def state(self, index: int) -> str | None:
        """``"preview"``, ``"final"`` or None (angle not added yet)."""
        return self._state.get(index)

    def forget_preview(self, index: int) -> None:
        """Drop the kept copy of a preview (bounded memory); :meth:`add` then needs ``previous=``."""
        self._previews.pop(index, None)

    def volume(self) -> Any:
        """Current best volume (finals, and previews for the angles not yet final)."""
        return self.acc.volume()

    def half_volumes(self) -> tuple[Any, Any]:
        """Even- and odd-angle volumes."""
        return self.acc.half_volumes()
