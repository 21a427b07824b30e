"""Where the chain's tasks run: the chain says *what* (a step function over items), an executor says *where*.

The steps of :class:`~xnh_stream.chain.final.FinalChain` are plain functions of picklable arguments. An
:class:`Executor` maps one over a list of items; :class:`SerialExecutor` runs them here, one after the other
(tests, small scans, a debugger); ``actors.executor.RayExecutor`` runs them as Ray tasks on the local
embedded Ray or on a cluster. Large read-only arguments (calibrations, the phase set-up) are handed over
once with :meth:`Executor.share` and passed to every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


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
