"""Stitching of overlapping scans into one volume (docs/stitching.md): :func:`stitch_outputs`."""

from __future__ import annotations

from typing import Any

__all__ = ["StitchResult", "stitch_outputs"]


def __getattr__(name: str) -> Any:
    """The package's exports, imported on first use: the pipeline imports dask, zarr and the segmentation's
    blockwise tools, which ``xnh-stream`` does not load to register the ``stitch`` command."""
    if name in __all__:
        from . import pipeline  # noqa: PLC0415

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
