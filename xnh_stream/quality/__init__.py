"""Quality figures of a running scan: running FSC, dose, drift and warping, and the alerts they raise.

Pure Python on arrays (no Ray): :class:`QualityMonitor` is fed by the stream and by the batch chain.
See docs/quality.md.
"""

from .alerts import Alert, AlertRouter, CallbackSink, LogSink, WebhookSink, alertmanager_payload, evaluate_alerts
from .dose import DoseAccount, DoseLedger, exposure_fluence
from .drift import DisplacementField, WarpDecomposition, compare_views, decompose_displacements, patch_displacements
from .fsc import RunningFSC, bin_volume, central_region
from .monitor import QualityMonitor

__all__ = ["Alert", "AlertRouter", "CallbackSink", "LogSink", "WebhookSink", "alertmanager_payload",
           "evaluate_alerts", "DoseAccount", "DoseLedger", "exposure_fluence", "DisplacementField",
           "WarpDecomposition", "compare_views", "decompose_displacements", "patch_displacements", "RunningFSC",
           "bin_volume", "central_region", "QualityMonitor"]
