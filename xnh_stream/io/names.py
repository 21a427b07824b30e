"""The names of what xnh-stream writes into an output folder, in one place (``docs/contracts.md`` says what
each holds). Every module takes them from here; standard library only.

``OUT/`` of a scan: :data:`VOLUME_NAME`, :data:`REPORT_NAME`, :data:`JOURNAL_NAME` (and SQLite's
``-wal``/``-shm`` beside it), :data:`LOCK_NAME`, the final pass's work folder :data:`WORK_NAME`; a
segmentation adds :data:`SEGMENTATION_SUMMARY_NAME`, its work folder :data:`SEGMENTATION_WORK_NAME` and the
label image :data:`SEGMENTATION_NAME` (or :data:`STANDALONE_NAME`); a stitched folder holds :data:`VOLUME_NAME`,
:data:`STITCH_REPORT_NAME` and the work folder :data:`STITCH_WORK_NAME`; the overnight queue's root
:data:`OVERNIGHT_SUMMARY_NAME`, and :data:`OVERNIGHT_ERROR_NAME` where a scan failed.
"""

from __future__ import annotations

#: The reconstructed (or stitched) volume, OME-Zarr.
VOLUME_NAME = "volume.ome.zarr"
#: The scan's report (``chain.report.ScanReport``), written last.
REPORT_NAME = "report.json"
#: The frame journal (SQLite).
JOURNAL_NAME = "journal.sqlite"
#: The one-writer lock of an output folder (``state.lock.OutputLock``).
LOCK_NAME = ".xnh.lock"
#: The final pass's resumable work folder (``state.work.WorkFolder``).
WORK_NAME = "work"
#: The segmentation's summary.
SEGMENTATION_SUMMARY_NAME = "segmentation.json"
#: The blockwise segmentation's work folder.
SEGMENTATION_WORK_NAME = "segmentation.work"
#: The label image's name under ``volume.ome.zarr/labels/``.
LABEL_NAME = "segmentation"
#: The segmentation of ``OUT/volume.ome.zarr``, relative to ``OUT``.
SEGMENTATION_NAME = f"{VOLUME_NAME}/labels/{LABEL_NAME}"
#: A standalone label image in ``OUT`` (when the volume segmented is not ``OUT/volume.ome.zarr``).
STANDALONE_NAME = "segmentation.ome.zarr"
#: The stitch's report.
STITCH_REPORT_NAME = "stitch.json"
#: The blockwise stitch's work folder.
STITCH_WORK_NAME = "stitch.work"
#: The overnight queue's summary in its output root.
OVERNIGHT_SUMMARY_NAME = "overnight.json"
#: What the overnight queue records in a scan's (or a stitched sample's) output folder when it failed.
OVERNIGHT_ERROR_NAME = "error.json"
