"""The ``xnh-stream`` console script: the commands of :mod:`xnh_stream.cli` with Ray as their runtime.

:class:`RayRuntime` is the one place the commands reach Ray (:class:`xnh_stream.runtime.Runtime`); Ray
and the actors are imported when a command first needs them, so ``--version`` or ``simulate`` start no Ray.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from xnh_stream import cli
from xnh_stream.config import ConfigError, ProcessConfig

log = logging.getLogger(__name__)


class RayRuntime:
    """The commands' runtime on Ray: an embedded local instance, or a cluster joined by address
    (:func:`actors.runtime.start_ray`).

    :meth:`close` (called by :func:`xnh_stream.cli.main` when the command ends, however it ends) shuts down
    a Ray this runtime started: the embedded instance's processes stop then, and a joined cluster is left.
    A Ray the process had before (a test session's) is kept.
    """

    def __init__(self) -> None:
        self.started_ray = False

    def _start(self, address: str | None) -> None:
        """Start or join Ray (once; see :func:`actors.runtime.start_ray`) and log what was done."""
        import ray  # noqa: PLC0415

        from actors.runtime import start_ray  # noqa: PLC0415

        had_ray = ray.is_initialized()
        try:
            log.info(start_ray(address))
        finally:
            self.started_ray = self.started_ray or (not had_ray and ray.is_initialized())

    def close(self) -> None:
        """Shut down the Ray this runtime started (nothing otherwise)."""
        if not self.started_ray:
            return
        import ray  # noqa: PLC0415

        self.started_ray = False
        ray.shutdown()

    def executor(self, address: str | None, config: ProcessConfig) -> Any:
        """See :meth:`xnh_stream.runtime.Runtime.executor`."""
        from actors.executor import RayExecutor  # noqa: PLC0415
        from actors.runtime import gpus_available  # noqa: PLC0415

        self._start(address)
        gpus = 0.0
        if config.compute.backend == "cupy":
            if gpus_available() < 1:
                raise ConfigError("backend 'cupy' was asked for but the Ray cluster has no GPU")
            gpus = 1.0
        return RayExecutor(num_gpus=gpus)

    def shares(self, executor: Any, parts: int) -> Callable[[], Any]:
        """See :meth:`xnh_stream.runtime.Runtime.shares`."""
        from actors.executor import RayExecutor  # noqa: PLC0415

        share = max(1, executor.parallelism // max(1, parts))
        return lambda: RayExecutor(max_in_flight=share, num_gpus=executor.num_gpus)

    def live(self) -> Any:
        """See :meth:`xnh_stream.runtime.Runtime.live`: the live workers as Ray actors."""
        from actors.stream import RayLiveRuntime  # noqa: PLC0415

        return RayLiveRuntime()

    def stitch_runner(self, address: str | None) -> Callable[..., Any]:
        """See :meth:`xnh_stream.runtime.Runtime.stitch_runner`."""
        from actors.stitch import run_stitch_ray  # noqa: PLC0415

        self._start(address)
        return run_stitch_ray

    def segment_blockwise(self, spec: Any, address: str | None) -> Any:
        """See :meth:`xnh_stream.runtime.Runtime.segment_blockwise`."""
        from actors.segment import run_blockwise_ray  # noqa: PLC0415

        self._start(address)
        return run_blockwise_ray(spec)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xnh-stream`` console script.

    Returns
    -------
    int
        The exit code (:func:`xnh_stream.cli.main`): 0 done (or stopped by SIGTERM), 1 a scan that did not
        complete, 2 bad input, configuration or storage, 130 stopped by SIGINT.
    """
    return cli.main(argv, runtime=RayRuntime())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
