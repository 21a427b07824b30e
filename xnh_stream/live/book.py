"""The live stream's frame account in the journal, held back until the distance vote is decided.

Which distances make the scan is the final pass's majority rule (:class:`~xnh_stream.chain.scan.DistanceVote`),
applied as the distances arrive. A frame must not end processed, or quarantined for another reason, if
the rule then sets its distance aside: :class:`FrameBook` writes the marks of a distance only once the vote
is decided (every distance arrived, or the scan completed); until then they wait. The frames of a distance
set aside are then quarantined with the final pass's reason and a critical alert.
"""

from __future__ import annotations

import logging

from ..chain.final import journal_key
from ..chain.scan import DistanceVote, left_out, left_out_alert
from ..ingest.watch import QuarantineRecord
from ..io.sources import FrameRecord
from ..state.journal import PROCESSED, QUARANTINED, RECEIVED, FrameJournal
from ..state.journal import FrameRecord as JournalEntry

log = logging.getLogger(__name__)

__all__ = ["FrameBook"]

#: A mark waiting for the vote: frame id, state, stage, reason.
Mark = tuple[str, str, str, str | None]


class FrameBook:
    """The journal's marks of the live stream's frames, each frame once, held back until the vote decided.

    Parameters
    ----------
    journal : FrameJournal
        The stream's journal.
    vote : DistanceVote
        The distances' vote.
    known : set of str
        Frame ids the journal held before this run (they are not received again).
    """

    def __init__(self, journal: FrameJournal, vote: DistanceVote, known: set[str]) -> None:
        self.journal, self.vote, self.known = journal, vote, known
        self.finished: set[str] = set()  # frames processed or quarantined
        self.verdict: dict[float, str] | None = None  # distance key -> why set aside, once decided
        self._early: dict[float, list[Mark]] = {}  # marks waiting for the vote, by distance

    def load(self) -> None:
        """The frames the journal already ended (a resumed stream)."""
        self.finished = {r.frame_id for r in self.journal.iter_records() if r.state != RECEIVED}

    def receive(self, records: list[FrameRecord], duplicates: list[tuple[FrameRecord, str]],
                files: list[QuarantineRecord]) -> None:
        """Journal what a poll brought: new frames received, copies of frames and unusable files quarantined."""
        for q in files:
            fid = f"{q.file_id}#file"
            if fid not in self.known:
                self.journal.record_many([JournalEntry(fid, RECEIVED, stage="ingest"),
                                          JournalEntry(fid, QUARANTINED, stage="ingest", reason=q.reason)])
        new = [rec for rec in records if rec.frame_id not in self.known]
        self.journal.record_many([JournalEntry(rec.frame_id, RECEIVED, rec.distance_key, journal_key(rec),
                                               angle_deg=rec.rotation_angle_deg) for rec in new]
                                 + [e for rec, orig in duplicates if rec.frame_id not in self.known for e in (
                                     JournalEntry(rec.frame_id, RECEIVED, rec.distance_key, journal_key(rec),
                                                  angle_deg=rec.rotation_angle_deg),
                                     JournalEntry(rec.frame_id, QUARANTINED, stage="ingest",
                                                  reason=f"copy of {orig} (same content): not used"))])

    def mark(self, fids: list[str], state: str, stage: str, reasons: list[str] | None = None) -> None:
        """Mark frames now (each frame once)."""
        pending = {r for r in fids if r not in self.finished}
        if not pending:
            return
        if reasons is not None:
            reasons = [r for f, r in zip(fids, reasons) if f in pending]
        fids = [f for f in fids if f in pending]
        self.journal.mark_many(fids, state, stage=stage, reasons=reasons)
        self.finished.update(fids)

    def book(self, key: float, fids: list[str], state: str, stage: str, reasons: list[str] | None = None) -> None:
        """Mark frames of distance ``key`` once the vote decided on it; until then the marks wait."""
        if self.verdict is None:
            self._early.setdefault(key, []).extend(
                (f, state, stage, None if reasons is None else reasons[i]) for i, f in enumerate(fids))
        elif key not in self.verdict:
            self.mark(fids, state, stage, reasons)

    def set_aside_reason(self, rec: FrameRecord) -> str | None:
        """Why ``rec``'s distance was set aside, once decided (the journal's reason); None otherwise."""
        if self.verdict is not None and rec.distance_key in self.verdict:
            return left_out(self.verdict[rec.distance_key])
        return None

    def decide(self, verdict: dict[float, str] | None) -> None:
        """Book what waited for the vote: the frames of a distance set aside are quarantined with the final
        pass's reason (and a critical alert), the marks of the others' frames are written."""
        if verdict is None:
            return
        self.verdict = verdict
        for key, reason in verdict.items():
            fids = [r.frame_id for r in self.vote.arrived(key)]
            if not any(f not in self.finished for f in fids):
                continue  # booked already (before a restart of the stream, or at an earlier verdict)
            alert = left_out_alert(self.vote.name(key), reason)
            log.error("%s", alert.message)
            self.journal.emit("alert", alert.as_entry(),
                              key=f"alert:{alert.name}:{alert.severity}:{self.vote.name(key)}")
            self.mark(fids, QUARANTINED, "ingest", [left_out(reason)] * len(fids))
        early, self._early = self._early, {}
        for key, marks in early.items():
            if key not in verdict:
                self._write(marks)

    def _write(self, marks: list[Mark]) -> None:
        """Waiting marks of one distance, grouped by state and stage in their order."""
        for state, stage in dict.fromkeys((m[1], m[2]) for m in marks):
            mine = [m for m in marks if (m[1], m[2]) == (state, stage)]
            self.mark([m[0] for m in mine], state, stage, None if state == PROCESSED else [m[3] or "" for m in mine])
