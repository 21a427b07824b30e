"""The seam between the commands and the distributed runtime: what a command asks of it, never how.

The commands (:mod:`xnh_stream.cli`, ``segment``, ``stitch``) are Ray-free: where they need work spread over
a cluster they ask the :class:`Runtime` they were given. The Ray wiring implements it in the top-level
``actors`` package (``actors.cli.RayRuntime``), whose ``actors.cli.main`` is the ``xnh-stream`` console
script. Called without a runtime (``xnh_stream.cli.main(argv)``), a command that needs one stops with a
clear error; ``process --local`` and the commands that run here need none.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .chain.executor import Executor
from .config import ConfigError, ProcessConfig

if TYPE_CHECKING:
    from .live.runtime import LiveRuntime

__all__ = ["Runtime", "runtime_of"]


class Runtime(Protocol):
    """What the commands ask of the distributed runtime."""

    def executor(self, address: str | None, config: ProcessConfig) -> Executor:
        """Start (or join, with ``address``) the runtime and return the chain's executor on it; a GPU per
        task when ``config.compute.backend`` is ``cupy`` (a clear error when the cluster has none)."""
        ...

    def shares(self, executor: Executor, parts: int) -> Callable[[], Executor]:
        """A factory of executors that each take ``1 / parts`` of ``executor``'s cluster (overnight scans)."""
        ...

    def live(self) -> LiveRuntime:
        """Where the live stream's workers run, on the runtime :meth:`executor` started or joined; the
        stream itself is driven by the command (:class:`~xnh_stream.live.driver.LiveDriver`)."""
        ...

    def stitch_runner(self, address: str | None) -> Callable[..., Any]:
        """Start (or join) the runtime and return the runner of a stitch's pairs and blocks."""
        ...

    def segment_blockwise(self, spec: Any, address: str | None) -> Any:
        """Start (or join) the runtime and run a blockwise segmentation on it."""
        ...


def runtime_of(a: argparse.Namespace, what: str) -> Runtime:
    """The runtime the command was given, or a clear error naming what needed it."""
    runtime = getattr(a, "runtime", None)
    if runtime is None:
        raise ConfigError(f"{what} needs the distributed runtime: run the xnh-stream command (actors.cli), "
                          "or --local where the command has it")
    return runtime
