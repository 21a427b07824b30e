"""``xnh-stream process``: a finished scan folder through the final pass (:mod:`xnh_stream.chain.final`).

Every input layout the live stream reads is read here too (:class:`~xnh_stream.chain.scan.ScanIndex`).
Every frame found is counted as received; it is either processed or quarantined with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ProcessConfig
from .executor import Executor
from .final import ChainLayout, ChainResult, FinalChain
from .scan import ScanIndex


def process_scan(folder: str | Path, out: str | Path | None = None, config: ProcessConfig | None = None,
                 progress: Callable[[int, int, str], None] | None = None, monitor: Any = None,
                 executor: Executor | None = None, layout: ChainLayout | None = None,
                 index: ScanIndex | None = None, replace: bool = False) -> ChainResult:
    """Process a finished multi-distance scan folder.

    Parameters
    ----------
    folder : str or Path
        Scan folder: one NXtomo file, one NXtomo chunk folder or one ID16A EDF folder per distance.
    out : str or Path, optional
        Output folder for ``volume.ome.zarr`` and ``report.json``; a temporary folder if omitted.
    config : ProcessConfig, optional
        Options (defaults if omitted).
    progress : callable, optional
        ``progress(done, total, step)`` after each unit of work.
    monitor : QualityMonitor, optional
        The live stream's quality monitor (already fed with every frame); without one, a monitor is fed
        from the files.
    executor : Executor, optional
        Where the tasks run (default: in this process).
    layout : ChainLayout, optional
        How the work is cut into tasks.
    index : ScanIndex, optional
        The scan's frames when the caller has them (the live stream); else the folder is read.
    replace : bool
        Replace the outputs of another run found in ``out`` (``--overwrite``); without it they are refused.
        Outputs of this very run (same frames and options) are checked and kept: nothing is recomputed.

    Returns
    -------
    ChainResult

    Raises
    ------
    InputError
        When the folder holds no usable scan, or ``out`` holds outputs it may not replace (see
        :meth:`FinalChain.run`).
    """
    config = config or ProcessConfig()
    index = index or ScanIndex.read(folder)
    return FinalChain(index, out, config, executor=executor, layout=layout, progress=progress, monitor=monitor,
                      replace=replace).run()
