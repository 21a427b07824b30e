"""Where the chain's tasks run: the chain says *what* (a step function over items), an executor says *where*.

The steps of :class:`~xnh_stream.chain.final.FinalChain` are plain functions of picklable arguments. An
:class:`Executor` maps one over a list of items; :class:`SerialExecutor` runs them here, one after the other
(tests, small scans, a debugger); ``actors.executor.RayExecutor`` runs them as Ray tasks on the local
embedded Ray or on a cluster. Large read-only arguments (calibrations, the phase set-up) are handed over
once with :meth:`Executor.share` and passed to every call.

The blockwise segmentation and the stitch run their stages on the same executors: :func:`run_units` is the
one runner of a stage's units (progress as they finish), :func:`worker_of` the object a worker process
builds once per run from the run's plain spec. Ray's side is ``actors.executor.RayExecutor`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: Progress of a stage: ``progress(stage, units done, units in the stage)``.
Progress = Callable[[str, int, int], None]


class Executor(Protocol):
    """Runs step functions over items (see the module docstring)."""

    #: How many tasks run at once (sizes the batches of the steps).
    parallelism: int

    def share(self, obj: T) -> Any:
        """Hand ``obj`` over once; the returned handle is passed to :meth:`map` and arrives as ``obj``."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any, cpus: float = 1.0,
            memory_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
        """Call ``fn(item, *shared)`` for every item; yield ``(position in items, result)`` as calls finish.

        ``cpus`` and ``memory_bytes`` are what one call needs (a cluster schedules by them).
        """


class SerialExecutor:
    """Run every call here, in order (no Ray)."""

    parallelism = 1

    def share(self, obj: T) -> T:
        """The object itself."""
        return obj

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *shared: Any, cpus: float = 1.0,
            memory_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
        """Call ``fn(item, *shared)`` for each item in turn."""
        for i, item in enumerate(items):
            yield i, fn(item, *shared)


def run_units(executor: Executor, stage: str, fn: Callable[..., T], units: Sequence[Any], *shared: Any,
              progress: Progress | None = None, cpus: float = 1.0) -> list[T]:
    """Run ``fn(unit, *shared)`` for every unit of one stage on ``executor`` and wait for all of them.

    Parameters
    ----------
    executor : Executor
        Where the calls run.
    stage : str
        The stage's name (for ``progress``).
    fn : callable
        A module-level function (a Ray task ships it by reference).
    units : sequence
        The units still to do.
    *shared
        Passed to every call after the unit.
    progress : callable, optional
        Called as ``progress(stage, done, len(units))`` after each unit finishes.
    cpus : float
        CPUs one call needs.

    Returns
    -------
    list
        The results, in the order of ``units``.
    """
    results: list[Any] = [None] * len(units)
    for done, (i, result) in enumerate(executor.map(fn, units, *shared, cpus=cpus), start=1):
        results[i] = result
        if progress:
            progress(stage, done, len(units))
    return results


_WORKERS: dict[tuple[Callable[..., Any], str], Any] = {}


def worker_of(build: Callable[[dict[str, Any]], T], payload: dict[str, Any], made: T | None = None) -> T:
    """The object ``build(payload)`` of this process: built once per run (the last one kept), or ``made``
    (a driver that runs calls in its own process hands over the object it prepared)."""
    key = (build, repr(sorted((k, repr(v)) for k, v in payload.items())))
    if made is not None or key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = made if made is not None else build(payload)
    return _WORKERS[key]
