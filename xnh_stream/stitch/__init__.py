"""Stitching of overlapping scans into one volume (docs/stitching.md): :func:`stitch_outputs`."""

from .pipeline import StitchResult, stitch_outputs

__all__ = ["StitchResult", "stitch_outputs"]
