"""What the live stream measures of itself for the progress and the metrics: stage latencies, restarts,
the store's size and the runtime's resources."""

from __future__ import annotations

import time

from ..chain.assembler import AngleWork
from ..state.store import DistanceStore
from .runtime import LiveRuntime

__all__ = ["Instruments"]


class Instruments:
    """Stage latencies, restarts, store size and cluster resources of one stream, for the progress.

    Latency samples accumulate between two progress reports and are handed out once; the slow figures
    (store size on disk, cluster resources) are refreshed every ``slow_s``.
    """

    def __init__(self, slow_s: float = 5.0) -> None:
        self.samples: dict[str, list[float]] = {}
        self.landed_preview: dict[str, float] = {}
        self.landed_final: dict[str, float] = {}
        self.landed_slices: dict[str, float] = {}
        self.restarts = {"phase_worker": 0, "recon_shard": 0, "slice_keeper": 0}
        self.slow_s, self._slow_at = slow_s, -float("inf")
        self.cluster: dict[str, float] = {}
        self.store_bytes: int | None = None

    def sample(self, stage: str, seconds: float) -> None:
        """One latency sample of ``stage``."""
        self.samples.setdefault(stage, []).append(seconds)

    def landed(self, frame_id: str, t: float) -> None:
        """A projection's frame landed at ``t`` (monotonic)."""
        self.landed_preview.setdefault(frame_id, t)
        self.landed_final.setdefault(frame_id, t)
        self.landed_slices.setdefault(frame_id, t)

    def in_slices(self, work: AngleWork, t: float) -> None:
        """Final ``work`` is in the live slices at ``t``: landing-to-slices latency of its last frame (once)."""
        t0 = [self.landed_slices.pop(f) for f in work.frame_ids if f in self.landed_slices]
        if t0:
            self.sample("landing_to_slices", t - max(t0))

    def booked(self, work: AngleWork, t: float) -> None:
        """``work`` is in every shard: landing-to-preview / landing-to-final latency of its frames."""
        if work.kind == "preview":
            t0 = [self.landed_preview.pop(f) for f in work.frame_ids if f in self.landed_preview]
            if t0:
                self.sample("landing_to_preview", t - min(t0))
        else:
            t0 = [self.landed_final.pop(f) for f in work.frame_ids if f in self.landed_final]
            for f in work.frame_ids:
                self.landed_preview.pop(f, None)
                self.landed_slices.pop(f, None)
            if t0:
                self.sample("landing_to_final", t - max(t0))

    def refresh(self, runtime: LiveRuntime, store: DistanceStore | None) -> None:
        """The slow figures, if ``slow_s`` passed: the runtime's resources and the store's size on disk."""
        now = time.monotonic()
        if now - self._slow_at >= self.slow_s:
            self._slow_at = now
            self.cluster = runtime.cluster()
            if store is not None:
                self.store_bytes = store.nbytes_on_disk()

    def take_samples(self) -> dict[str, list[float]]:
        """The latency samples since the last call."""
        samples, self.samples = self.samples, {}
        return samples
