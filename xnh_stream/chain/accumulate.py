"""Accumulating projections into a volume: the live volume whose previews are replaced by final projections.

:class:`ProgressiveVolume` back-projects projections as they come and later swaps an angle's preview for its
CTF projection; FBP being linear, the swap is one back-projection of the difference (or of the preview
removed and the final added, when the reference distance moved the angle), so the live volume sharpens
without being rebuilt.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..physics.fbp import FBPAccumulator


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
    batch, max_wait_s : int, float
        Angles back-projected together, and the longest wait (:class:`~xnh_stream.physics.fbp.FBPAccumulator`).
    """

    def __init__(self, n_slices: int, n_det: int, cor: float, window: str = "shepp-logan", padding: str = "edge",
                 rows: slice | None = None, xp: ModuleType = np, batch: int = 1, max_wait_s: float = 1.0) -> None:
        self.rows = rows if rows is not None else slice(0, n_slices)
        n_rows = len(range(*self.rows.indices(n_slices)))
        self.acc = FBPAccumulator(n_rows, n_det, cor=cor, window=window, padding=padding, xp=xp, batch=batch,
                                  max_wait_s=max_wait_s)
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

    def add(self, index: int, theta_rad: float, projection: Any, final: bool, previous: Any = None,
            previous_theta_rad: float | None = None) -> None:
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
        previous_theta_rad : float, optional
            The angle the preview was added at, when it differs from ``theta_rad`` (the reference distance
            moved the angle): the preview is then taken out at its angle and the final put in at its own.
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
            if previous_theta_rad is None or previous_theta_rad == theta_rad:
                self.acc.replace(old, p, theta_rad, index)
            else:
                zero = self.acc.xp.zeros_like(self.acc.xp.asarray(p, dtype=self.acc.xp.float32))
                self.acc.replace(old, zero, previous_theta_rad, index)
                self.acc.replace(zero, p, theta_rad, index)
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
