"""The chain's tasks as Ray tasks: :class:`RayExecutor` (see :mod:`xnh_stream.chain.executor`).

A step function runs as a Ray task per item, at most ``max_in_flight`` at once (so the object store and the
driver hold a bounded number of results), each with the CPUs and memory the chain says it needs; Ray
retries a task whose worker died (``max_retries``), so a killed worker costs one unit of work, not the
scan. Large shared arguments are put in the object store once (:meth:`RayExecutor.share`) and read by every
task without a copy on the same node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

#: A task whose worker process dies is run again this many times before the pass fails.
MAX_RETRIES = 3


class RayExecutor:
    """Run the chain's tasks on the Ray cluster this process is connected to.

    Parameters
    ----------
    max_in_flight : int, optional
        Tasks submitted at once (default: twice the cluster's CPUs).
    num_gpus : float
        GPUs per task (0: CPU tasks; a ``cupy`` backend asks for a fraction of a GPU per task).
    """

    def __init__(self, max_in_flight: int | None = None, num_gpus: float = 0.0) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs ray.init() first (xnh_stream.cli starts or joins Ray)")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.parallelism = max(1, cpus)
        self.max_in_flight = int(max_in_flight or 2 * self.parallelism)
        self.num_gpus = float(num_gpus)
        self._remote: dict[Callable[..., Any], Any] = {}

    def share(self, obj: Any) -> Any:
        """Put ``obj`` in the object store once; tasks receive it resolved."""
        return ray.put(obj)

    def _task(self, fn: Callable[..., Any]) -> Any:
        task = self._remote.get(fn)
        if task is None:
            task = self._remote[fn] = ray.remote(max_retries=MAX_RETRIES)(fn)
        return task

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any, cpus: float = 1.0,
            memory_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
        """Submit ``fn(item, *shared)`` per item (bounded in flight); yield ``(position, result)`` as they finish."""
        opts: dict[str, Any] = {"num_cpus": cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if memory_bytes:
            opts["memory"] = int(memory_bytes)
        task = self._task(fn).options(**opts)
        pending: dict[Any, int] = {}
        nxt = 0
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < self.max_in_flight:
                pending[task.remote(items[nxt], *shared)] = nxt
                nxt += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), result_of(ref)


def result_of(ref: Any) -> Any:
    """``ray.get(ref)``, with an :class:`OSError` raised in the task raised here as itself.

    Ray raises a task's error as a class derived from both ``RayTaskError`` and the error's own class, but
    without its attributes: an ``OSError`` arrives without ``errno`` and ``filename``, so a full disk in a
    task would read as an unknown ``OSError`` here. The original is in ``.cause``; it is raised instead
    (``from`` Ray's error, whose text holds the task's traceback).

    Raises
    ------
    OSError
        The task's own, with its errno and file.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, OSError):
            raise exc.cause from exc
        raise
