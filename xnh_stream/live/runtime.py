"""The seam between the live driver and where its workers run: :class:`LiveRuntime`, with typed messages.

The driver (:class:`~xnh_stream.live.driver.LiveDriver`) decides what to do with each frame and when; a
runtime places the workers (:mod:`xnh_stream.live.workers`: phase workers, reconstruction shards, the slice
keeper), carries the calls to them and gives their answers back as :class:`Pending` results. The messages
are typed: a projection goes out as an :class:`~xnh_stream.chain.assembler.AngleWork` and comes back as a
:class:`~xnh_stream.chain.assembler.ProjectionResult`; a shard's live views come back as a
:class:`~xnh_stream.live.views.SlabView`, asked for with a :class:`ViewsRequest`.

Two runtimes: :class:`InProcessRuntime` (here, every call run at once: tests, a scan on one machine) and
``actors.stream.RayLiveRuntime`` (actors placed by Ray, which restarts them; calls are ``.remote``).
A runtime only carries: backpressure, ordering, replays after a restart and every policy stay in the driver.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from ..chain.assembler import AngleWork, ProjectionResult
from ..chain.executor import Executor, SerialExecutor
from .views import SlabView
from .workers import PhaseWorker, ReconShard, SliceKeeper

if TYPE_CHECKING:
    from ..config import ProcessConfig

__all__ = ["InProcessRuntime", "LiveRuntime", "Pending", "ShardSpec", "SlicesSpec", "ViewsRequest", "WorkerSpec"]

T = TypeVar("T")


class Pending(Generic[T]):
    """A result to come from a worker: a Ray object reference, or (in this process) the value or the error
    already there. Compared by identity: the driver keys its bookkeeping on it.

    Parameters
    ----------
    ref : object
        What the runtime reads the result from.
    """

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref


@dataclass(frozen=True)
class WorkerSpec:
    """A phase worker: frame shape, the sample's delta/beta, the options and the live volume's binning."""

    frame_shape: tuple[int, int]
    delta_beta: float
    config: ProcessConfig
    binning: int


@dataclass(frozen=True)
class ShardSpec:
    """A reconstruction shard (the arguments of :class:`~xnh_stream.live.workers.ReconShard`)."""

    frame_shape: tuple[int, int]
    rows: tuple[int, int]
    cor: float
    window: str
    padding: str
    batch: int
    max_wait_s: float
    backend: str


@dataclass(frozen=True)
class SlicesSpec:
    """The slice keeper (the arguments of :class:`~xnh_stream.live.workers.SliceKeeper`)."""

    frame_shape: tuple[int, int]
    cor: float
    window: str
    padding: str


@dataclass(frozen=True)
class ViewsRequest:
    """What the driver asks of every shard for the running FSC and the live page (see
    :meth:`~xnh_stream.live.workers.ReconShard.views`)."""

    n_rows: int
    fsc_bin: int
    region_px: int
    binned: bool = True
    planes: bool = True


class LiveRuntime(ABC):
    """Where the live stream's workers run. The primitives (placement, a call, waiting, reading a result)
    are the runtime's; the typed calls below are the messages the driver sends.

    A worker is a handle of the runtime's own (an actor on Ray, the object here): the driver only passes
    it back. Calls to one worker are run in the order they were made.
    """

    # ------------------------------------------------------------------ primitives
    @abstractmethod
    def phase_worker(self, spec: WorkerSpec) -> Any:
        """Start a phase worker."""

    @abstractmethod
    def recon_shard(self, spec: ShardSpec) -> Any:
        """Start a reconstruction shard."""

    @abstractmethod
    def slice_keeper(self, spec: SlicesSpec) -> Any:
        """Start the slice keeper."""

    @abstractmethod
    def kill(self, worker: Any) -> None:
        """Stop a worker for good (its resources go back)."""

    @abstractmethod
    def call(self, worker: Any, method: str, *args: Any) -> Pending[Any]:
        """Call ``worker.method(*args)``; a :class:`Pending` argument is passed as its result."""

    @abstractmethod
    def wait(self, pending: Sequence[Pending[Any]], num_returns: int,
             timeout: float | None) -> tuple[list[Pending[Any]], list[Pending[Any]]]:
        """Wait until ``num_returns`` of ``pending`` are ready or ``timeout`` passed (None: no limit);
        returns the ready ones and the others."""

    @abstractmethod
    def get(self, pending: Pending[T]) -> T:
        """The result (waiting for it); a worker's error is raised here."""

    @abstractmethod
    def cluster(self) -> dict[str, float]:
        """Resources for the progress: ``nodes``, ``cpus_total``, ``cpus_available``,
        ``object_store_total_bytes``, ``object_store_available_bytes``."""

    @abstractmethod
    def executor(self) -> Executor:
        """The executor the final pass runs its tasks on."""

    def get_all(self, pending: Sequence[Pending[T]]) -> list[T]:
        """Every result, in order."""
        return [self.get(p) for p in pending]

    # ------------------------------------------------------------------ the messages
    def project(self, worker: Any, work: AngleWork, models: list[Any]) -> Pending[ProjectionResult]:
        """Phase retrieval of one angle (its frames loaded) with the distance-shift models now."""
        return self.call(worker, "project", work, models)

    def prepare(self, worker: Any, geometry: Any) -> None:
        """Every distance is known: the worker builds its CTF before the first final work."""
        self.call(worker, "prepare", geometry)

    def add(self, target: Any, work: AngleWork, result: Pending[ProjectionResult]) -> Pending[int]:
        """Back-project ``work``'s projection into a shard (or the slice keeper); a final replaces its preview."""
        theta = float(np.deg2rad(work.theta_deg))
        previous = None if work.preview_theta_deg is None else float(np.deg2rad(work.preview_theta_deg))
        return self.call(target, "add", work.index, theta, result, work.kind == "final", previous)

    def views(self, shard: Any, request: ViewsRequest) -> Pending[SlabView]:
        """A shard's pieces for the running FSC and the live page."""
        r = request
        return self.call(shard, "views", r.n_rows, r.fsc_bin, r.region_px, r.binned, r.planes)

    def slices(self, keeper: Any) -> Pending[dict[str, np.ndarray]]:
        """The slice keeper's three slices (``xy``, ``xz``, ``yz``)."""
        return self.call(keeper, "views")

    def volume(self, shard: Any) -> Pending[tuple[int, np.ndarray]]:
        """A shard's first row and its slab of the live volume."""
        return self.call(shard, "volume")

    def cpu_seconds(self, shard: Any) -> Pending[dict[str, float]]:
        """A shard's CPU seconds back-projecting (``add``) and making views (``views``)."""
        return self.call(shard, "cpu_seconds")

    def incarnations(self, workers: Sequence[Any]) -> list[str]:
        """Each worker's incarnation: it changes when the runtime restarted the worker."""
        return self.get_all([self.call(w, "incarnation") for w in workers])


@dataclass
class _Done:
    """A call already run here: its value, or its error."""

    value: Any = None
    error: BaseException | None = None


class InProcessRuntime(LiveRuntime):
    """Every worker an object of this process, every call run when it is made (no Ray).

    Results are therefore ready at once, and the driver's backpressure and ordering have nothing to wait
    for; a worker's error is kept and raised when its result is read, as on Ray. Nothing restarts a worker.
    """

    def phase_worker(self, spec: WorkerSpec) -> PhaseWorker:
        """See :meth:`LiveRuntime.phase_worker`."""
        return PhaseWorker(spec.frame_shape, spec.delta_beta, spec.config, spec.binning)

    def recon_shard(self, spec: ShardSpec) -> ReconShard:
        """See :meth:`LiveRuntime.recon_shard`."""
        return ReconShard(spec.frame_shape, spec.rows, spec.cor, spec.window, spec.padding, spec.batch,
                          spec.max_wait_s, spec.backend)

    def slice_keeper(self, spec: SlicesSpec) -> SliceKeeper:
        """See :meth:`LiveRuntime.slice_keeper`."""
        return SliceKeeper(spec.frame_shape, spec.cor, spec.window, spec.padding)

    def kill(self, worker: Any) -> None:
        """Nothing to stop: the driver drops the object."""

    def call(self, worker: Any, method: str, *args: Any) -> Pending[Any]:
        """Run the call now."""
        try:
            values = [self.get(a) if isinstance(a, Pending) else a for a in args]
            return Pending(_Done(getattr(worker, method)(*values)))
        except Exception as exc:  # noqa: BLE001 - raised where the result is read, as a Ray task's error
            return Pending(_Done(error=exc))

    def wait(self, pending: Sequence[Pending[Any]], num_returns: int,
             timeout: float | None) -> tuple[list[Pending[Any]], list[Pending[Any]]]:
        """Everything is ready: the first ``num_returns``."""
        pending = list(pending)
        return pending[:num_returns], pending[num_returns:]

    def get(self, pending: Pending[T]) -> T:
        """The value, or the call's error raised."""
        done: _Done = pending.ref
        if done.error is not None:
            raise done.error
        return done.value

    def cluster(self) -> dict[str, float]:
        """This machine's CPUs (no object store)."""
        cpus = float(os.cpu_count() or 1)
        return {"nodes": 1, "cpus_total": cpus, "cpus_available": cpus, "object_store_total_bytes": 0.0,
                "object_store_available_bytes": 0.0}

    def executor(self) -> Executor:
        """The final pass's tasks here, one after the other."""
        return SerialExecutor()

