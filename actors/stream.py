"""The live stream on Ray: the core's driver (:class:`xnh_stream.live.driver.LiveDriver`) with its workers as
Ray actors.

Everything the stream decides is in :mod:`xnh_stream.live` (the driver, the end-of-scan rule, the refresh
cadence, the instruments, the workers themselves). Here only what is Ray's: the actors (placement, GPUs,
restarts, a control thread), the ``.remote`` calls, ``ray.wait`` / ``ray.get``, and the cluster's resources
(:class:`RayLiveRuntime`, a :class:`~xnh_stream.live.runtime.LiveRuntime`). :class:`StreamDriver` is the
driver on that runtime, the final pass on Ray tasks (:class:`~actors.executor.RayExecutor`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import ray

from xnh_stream.chain.executor import Executor
from xnh_stream.config import ProcessConfig
from xnh_stream.live import workers
from xnh_stream.live.driver import LIVE_COLUMNS, LiveDriver, StreamOptions, StreamResult
from xnh_stream.live.runtime import LiveRuntime, Pending, ShardSpec, SlicesSpec, WorkerSpec
from xnh_stream.live.sources import FrameSource, WatcherSource

from .executor import RayExecutor

__all__ = ["LIVE_COLUMNS", "FrameSource", "PhaseWorker", "RayLiveRuntime", "ReconShard", "SliceKeeper",
           "StreamDriver", "StreamOptions", "StreamResult", "WatcherSource"]

T = TypeVar("T")

#: An actor that dies is restarted this many times, then the stream fails loudly.
MAX_RESTARTS = 3
#: The live volume's shards run at this niceness: where the cores are contended, phase retrieval, the live slices
#: and the driver (the path a frame takes to the slices) go first; the shards' batches catch up in the gaps.
SHARD_NICENESS = 5
#: A second thread per actor for ``incarnation()``: the driver asks every loop, and in the default group the
#: question would wait behind the actor's queued work (stalling the driver's loop on a busy worker).
CONTROL = {"concurrency_groups": {"control": 1}}
ACTOR = {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS, **CONTROL}


@ray.remote(**ACTOR)
class PhaseWorker(workers.PhaseWorker):
    """:class:`xnh_stream.live.workers.PhaseWorker` as an actor (its options travel as a mapping)."""

    def __init__(self, frame_shape: tuple[int, int], delta_beta: float, config: dict[str, Any],
                 binning: int = 1) -> None:
        super().__init__(frame_shape, delta_beta, ProcessConfig.from_mapping(config), binning)

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor (its tasks are retried by Ray; the stream only counts it)."""
        return super().incarnation()


@ray.remote(**ACTOR)
class ReconShard(workers.ReconShard):
    """:class:`xnh_stream.live.workers.ReconShard` as an actor, at :data:`SHARD_NICENESS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        os.nice(SHARD_NICENESS)

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor: its volume is then empty and must be replayed."""
        return super().incarnation()

    @ray.method(concurrency_group="control")
    def cpu_seconds(self) -> dict[str, float]:
        """See :meth:`xnh_stream.live.workers.ReconShard.cpu_seconds`."""
        return super().cpu_seconds()


@ray.remote(**ACTOR)
class SliceKeeper(workers.SliceKeeper):
    """:class:`xnh_stream.live.workers.SliceKeeper` as an actor."""

    @ray.method(concurrency_group="control")
    def incarnation(self) -> str:
        """Changes when Ray restarts the actor: its slices are then empty and must be replayed."""
        return super().incarnation()

    @ray.method(concurrency_group="control")
    def views(self) -> dict[str, Any]:
        """See :meth:`xnh_stream.live.workers.SliceKeeper.views`."""
        return super().views()


class RayLiveRuntime(LiveRuntime):
    """The live workers as Ray actors on the cluster this process is connected to; a GPU share per worker
    with the ``cupy`` backend (half a GPU per phase worker, a quarter per shard: the slab sums on the GPU)."""

    def phase_worker(self, spec: WorkerSpec) -> Any:
        """See :meth:`LiveRuntime.phase_worker`."""
        gpu = {"num_gpus": 0.5} if spec.config.compute.backend == "cupy" else {}
        return PhaseWorker.options(**gpu).remote(spec.frame_shape, spec.delta_beta, spec.config.to_dict(),
                                                 spec.binning)

    def recon_shard(self, spec: ShardSpec) -> Any:
        """See :meth:`LiveRuntime.recon_shard`."""
        gpu = {"num_gpus": 0.25} if spec.backend == "cupy" else {}
        return ReconShard.options(**gpu).remote(spec.frame_shape, spec.rows, spec.cor, spec.window, spec.padding,
                                                spec.batch, spec.max_wait_s, spec.backend)

    def slice_keeper(self, spec: SlicesSpec) -> Any:
        """See :meth:`LiveRuntime.slice_keeper`."""
        return SliceKeeper.remote(spec.frame_shape, spec.cor, spec.window, spec.padding)

    def kill(self, worker: Any) -> None:
        """``ray.kill``: no restart."""
        ray.kill(worker)

    def call(self, worker: Any, method: str, *args: Any) -> Pending[Any]:
        """``worker.method.remote(*args)``; a pending result goes by reference (Ray keeps per-caller order)."""
        refs = [a.ref if isinstance(a, Pending) else a for a in args]
        return Pending(getattr(worker, method).remote(*refs))

    def wait(self, pending: Sequence[Pending[Any]], num_returns: int,
             timeout: float | None) -> tuple[list[Pending[Any]], list[Pending[Any]]]:
        """``ray.wait``."""
        by_ref = {p.ref: p for p in pending}
        ready, rest = ray.wait(list(by_ref), num_returns=num_returns, timeout=timeout)
        return [by_ref[r] for r in ready], [by_ref[r] for r in rest]

    def get(self, pending: Pending[T]) -> T:
        """``ray.get``."""
        return ray.get(pending.ref)

    def get_all(self, pending: Sequence[Pending[T]]) -> list[T]:
        """``ray.get`` of them all at once."""
        return ray.get([p.ref for p in pending])

    def cluster(self) -> dict[str, float]:
        """The cluster's nodes, CPUs and object store, total and available."""
        total, avail = ray.cluster_resources(), ray.available_resources()
        return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "cpus_total": total.get("CPU", 0.0), "cpus_available": avail.get("CPU", 0.0),
                "object_store_total_bytes": total.get("object_store_memory", 0.0),
                "object_store_available_bytes": avail.get("object_store_memory", 0.0)}

    def executor(self) -> Executor:
        """The final pass on Ray tasks."""
        return RayExecutor()


class StreamDriver(LiveDriver):
    """:class:`~xnh_stream.live.driver.LiveDriver` with its workers on Ray (:class:`RayLiveRuntime`); the
    same parameters."""

    def __init__(self, source: FrameSource, scan_folder: str | Path, out: str | Path, config: ProcessConfig,
                 options: StreamOptions | None = None, **hooks: Any) -> None:
        super().__init__(source, scan_folder, out, config, options, runtime=RayLiveRuntime(), **hooks)
