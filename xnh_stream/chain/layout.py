"""How the final pass cuts its work, and what one unit of each step is: the standard library only.

The command line reads :class:`ChainLayout`'s defaults into its options and :data:`STEP_UNITS` into its
progress bars before it knows whether there is work to do, so this module imports nothing heavy
(:mod:`xnh_stream.chain.final` exports both as before).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STEP_UNITS", "ChainLayout", "plural", "step_unit"]


@dataclass(frozen=True)
class ChainLayout:
    """How the final pass cuts its work (not the result, but for float32 rounding: a slab of fewer than 16 rows
    is back-projected by the scalar kernel instead of the 16-row vector one, which sums in another order;
    measured at most 3.8e-7 of the volume's peak, 64 x 40 x 32 scan, slabs of 1-40 rows, batches of 5-16).

    Attributes
    ----------
    angle_batch : int
        Angles per phase-retrieval task.
    slab_rows : int
        Rows per back-projection task (and the volume's chunk height); 0 picks the largest that keeps the
        two half-volumes of a slab within ``task_memory_bytes``, at most 64.
    task_memory_bytes : int
        Memory a task may use for its arrays.
    fsc_box_px : int
        Side of the central boxes the FSC is computed on (each axis clipped to the volume).
    fsc_max_boxes : int
        How many such boxes at most, nearest the centre first.
    keep_work : bool
        Keep ``OUT/work`` (projections, markers) after success.
    """

    angle_batch: int = 16
    slab_rows: int = 0
    task_memory_bytes: int = 256 << 20
    fsc_box_px: int = 192
    fsc_max_boxes: int = 8
    keep_work: bool = False

    def rows_per_slab(self, ny: int, n_out: int) -> int:
        """The slab height for a volume ``[ny, n_out, n_out]``."""
        if self.slab_rows > 0:
            return min(self.slab_rows, ny)
        per_row = 3 * 4 * n_out * n_out  # two float32 half-volumes and the volume written from them
        return int(max(1, min(64, ny, self.task_memory_bytes // per_row)))


#: What ``done`` and ``total`` count in the final pass's ``progress(done, total, step)``, for each step
#: (:meth:`xnh_stream.chain.final.FinalChain.progress`): the unit of work the step is mapped over. The
#: ``check ...`` steps read back a resumed run's units of the step they check.
STEP_UNITS: dict[str, str] = {
    "calibrate": "distance",
    "align": "angle",
    "material": "batch",
    "material fit": "fit",
    "survey": "batch",
    "check survey": "batch",
    "check projections": "batch",
    "phase": "batch",
    "check volume": "slab",
    "backproject": "slab",
    "check pyramid": "slab",
    "pyramid": "level",
    "fsc": "box",
    "denoise train": "model",
    "denoise": "slab",
}


def step_unit(step: str, default: str = "unit") -> str:
    """The unit a step's progress counts (:data:`STEP_UNITS`), ``default`` for a step not listed."""
    return STEP_UNITS.get(step, default)


def plural(unit: str, n: int = 2) -> str:
    """``unit`` in the plural unless ``n`` is 1: ``batch`` -> ``batches``, ``box`` -> ``boxes``, ``slab`` ->
    ``slabs``."""
    if n == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "z", "ch", "sh")) else "s")
