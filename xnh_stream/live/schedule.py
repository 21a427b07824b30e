"""Which phase-retrieval work goes to a worker next: the live stream's deadline-aware queue (Ray-free).

The live driver queues every work item the assembler makes and dispatches from here while a phase worker has
a slot (``stream.max_in_flight``), so that a frame's way to the live slices never waits behind work that no
longer matters:

* final (CTF) work first, oldest first: it is what the live slices and the live volume keep, and its frames
  are marked processed in the journal only once it is back; it is never dropped, but one that waited longer
  than ``stream.coarse_after_s`` goes coarse: its CTF runs on the frames binned twice (a quarter of the cost;
  the live volume, binned at real sizes, hardly changes; the full-resolution slices show that angle blurred;
  counted), so that a stream behind its detector catches up instead of falling further behind;
* previews (single-distance Paganin) only when no final waits, newest first: the freshest view of the scan;
* a preview is dropped, and counted, when its angle's final is already queued or sent (it would be replaced
  at once), or when it waited longer than ``stream.preview_deadline_s`` (the stream is behind: the page
  says how many were skipped); a replay for a rebuilt worker is never dropped.

Work items hold no pixels while they wait (they are loaded from the store just before they are dispatched),
so a long queue costs no memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..chain.assembler import AngleWork

__all__ = ["LiveQueue", "Queued"]


@dataclass
class Queued:
    """A work item waiting for a phase worker.

    Attributes
    ----------
    work : AngleWork
        The work (no pixels yet).
    targets : list or None
        The live workers its projection goes to (None: every shard and the slice keeper).
    queued_s : float
        When it was queued (monotonic seconds).
    replay : bool
        Part of a replay into a rebuilt worker: never dropped.
    coarse : bool
        Final work sent at half resolution (it waited longer than the queue's ``coarse_after_s``).
    models : list
        The distances' alignment shifts at the work's angle when it was queued (:class:`~xnh_stream.physics.
        align.HeldShift`, None where unmeasured): the work is computed with what was known when its frames
        arrived, whenever a worker takes it (the same projection in this process and on Ray).
    """

    work: AngleWork
    targets: list[Any] | None
    queued_s: float
    replay: bool = False
    coarse: bool = False
    models: list[Any] = field(default_factory=list)


class LiveQueue:
    """The phase work waiting for a worker, finals before previews (see the module docstring).

    Parameters
    ----------
    preview_deadline_s : float
        A preview that waited longer than this is dropped (0: previews are never dropped for their age).
    coarse_after_s : float
        A final that waited longer than this goes coarse (0: never).
    """

    def __init__(self, preview_deadline_s: float, coarse_after_s: float = 0.0) -> None:
        if preview_deadline_s < 0 or coarse_after_s < 0:
            raise ValueError(f"preview_deadline_s and coarse_after_s must be >= 0, got {preview_deadline_s}, "
                             f"{coarse_after_s}")
        self.deadline_s, self.coarse_after_s = float(preview_deadline_s), float(coarse_after_s)
        self.coarse_finals = 0  # finals sent coarse
        self._finals: deque[Queued] = deque()
        self._previews: deque[Queued] = deque()
        self._final_angles: set[int] = set()  # angles whose final was queued (or sent): their previews are moot
        self.skipped: dict[str, int] = {"superseded": 0, "late": 0}  # previews dropped, by reason
        self.skipped_angles: set[int] = set()  # angles whose preview no worker got (their final replaces none)

    def __len__(self) -> int:
        return len(self._finals) + len(self._previews)

    def push(self, work: AngleWork, targets: list[Any] | None, now_s: float, replay: bool = False,
             models: list[Any] | None = None) -> None:
        """Queue ``work`` (its projection for ``targets``, computed with the shifts ``models``) at ``now_s``."""
        item = Queued(work, targets, now_s, replay=replay, models=list(models or []))
        if work.kind == "final":
            self._finals.append(item)
            if not replay:
                self._final_angles.add(work.index)
        else:
            self._previews.append(item)

    def pop(self, now_s: float) -> Queued | None:
        """The next work to dispatch at ``now_s`` (None when nothing waits); previews found moot on the way
        are dropped and counted."""
        if self._finals:
            item = self._finals.popleft()
            if self.coarse_after_s and not item.replay and now_s - item.queued_s > self.coarse_after_s:
                item.coarse = True
                self.coarse_finals += 1
            return item
        while self._previews:
            item = self._previews.pop()  # newest first
            if not item.replay and item.work.index in self._final_angles:
                self._skip(item, "superseded")
            elif not item.replay and self.deadline_s and now_s - item.queued_s > self.deadline_s:
                self._skip(item, "late")
            else:
                self.skipped_angles.discard(item.work.index)  # a worker has this angle's preview after all
                return item
        return None

    def _skip(self, item: Queued, reason: str) -> None:
        self.skipped[reason] += 1
        self.skipped_angles.add(item.work.index)

    def behind_s(self, now_s: float) -> float:
        """How long the oldest final has waited (0 when none waits): how far the live slices are behind."""
        return now_s - self._finals[0].queued_s if self._finals else 0.0

    def restart(self) -> None:
        """The live chain started again (other distances, a rebuild): nothing it queued is wanted."""
        self._finals.clear()
        self._previews.clear()
        self._final_angles.clear()
        self.skipped_angles.clear()
