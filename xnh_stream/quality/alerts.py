"""Alerts from the quality figures: evaluation against thresholds, and routing to sinks.

:func:`evaluate_alerts` turns a quality snapshot (:meth:`QualityMonitor.snapshot`) and the thresholds of
:class:`~xnh_stream.config.ProcessConfig` into :class:`Alert` records:

==================  ===========================================================  =====================
name                figure                                                       thresholds (config)
==================  ===========================================================  =====================
SampleDoseHigh      dose the sample received, all its scans (Gy)                 dose_warning_gray,
                                                                                 dose_critical_gray
SampleDrift         largest return-projection drift of a distance (px, m)        drift_{warning,critical}_{px,nm}
SampleWarping       largest non-rigid warp of a patch field (px, m)              warp_{warning,critical}_{px,nm}
SampleScaleChange   largest ``|scale - 1|`` of a patch field                     scale_warning, scale_critical
ResolutionPoor      running FSC resolution, once ``fsc_min_fraction`` of the     fsc_warning_voxels
                    angles covering the whole range are in                       (in voxels)
==================  ===========================================================  =====================

An :class:`AlertRouter` keeps the set of firing alerts and hands changes to its sinks: :class:`LogSink`
(the log), :class:`CallbackSink` (e.g. the journal) and :class:`WebhookSink`, which POSTs the firing and
just-resolved alerts in the Alertmanager API v2 format (``POST /api/v2/alerts``, a JSON list of
``{labels, annotations, startsAt, endsAt, generatorURL}``) from a background thread, with a timeout, so a
slow or absent receiver never blocks the stream.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import redact_text

log = logging.getLogger(__name__)

__all__ = ["Alert", "evaluate_alerts", "AlertRouter", "LogSink", "CallbackSink", "WebhookSink",
           "alertmanager_payload", "SEVERITIES", "redact_url", "redact_text"]

SEVERITIES = ("warning", "critical")


def _now_iso(t: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(time.time() if t is None else t, _dt.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Alert:
    """One firing alert.

    Attributes
    ----------
    name : str
        Alert name (CamelCase, as in Prometheus rules).
    severity : str
        ``"warning"`` or ``"critical"``.
    message : str
        One line for a person.
    value, threshold : float or None
        The figure and the threshold it crossed (SI units, or pixels / ratio as the name says).
    labels : dict
        Extra low-cardinality labels (e.g. ``{"distance": "3"}``).
    """

    name: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert {self.name}: severity must be one of {SEVERITIES}, got {self.severity!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``alerts`` entries of the snapshot and of ``report.json``)."""
        return asdict(self)

    def as_entry(self) -> dict[str, Any]:
        """JSON-ready, with only what is set: ``name``, ``severity``, ``message``, then ``value``,
        ``threshold`` and ``labels`` where they are given (the entry of an alert that carries no figure, as
        the final pass and the stream raise them in ``report.json`` and the journal's ``alert`` events;
        ``docs/contracts.md``, "Alerts").

        Returns
        -------
        dict
            The entry.
        """
        entry: dict[str, Any] = {"name": self.name, "severity": self.severity, "message": self.message}
        if self.value is not None:
            entry["value"] = self.value
        if self.threshold is not None:
            entry["threshold"] = self.threshold
        if self.labels:
            entry["labels"] = dict(self.labels)
        return entry


def _grade(value: float | None, warning: float | None, critical: float | None) -> tuple[str, float] | None:
    """Severity and threshold crossed by ``value`` (strictly above), or None."""
    if value is None or not math.isfinite(value):
        return None
    if critical is not None and value > critical:
        return "critical", critical
    if warning is not None and value > warning:
        return "warning", warning
    return None


def _worst(*grades: tuple[str, float, str] | None) -> tuple[str, float, str] | None:
    found = [g for g in grades if g is not None]
    if not found:
        return None
    return max(found, key=lambda g: SEVERITIES.index(g[0]))


def _grade_px_nm(px: float | None, nm: float | None, thresholds_px: tuple[float | None, float | None],
                 thresholds_nm: tuple[float | None, float | None]) -> tuple[str, float, str] | None:
    """The worse of a figure graded in pixels and in nanometres: ``(severity, threshold, unit)`` or None."""
    return _worst(*(g + (unit,) for g, unit in ((_grade(px, *thresholds_px), "px"), (_grade(nm, *thresholds_nm), "nm"))
                    if g is not None))


def _max_of(values: Sequence[float | None] | None) -> tuple[float | None, int | None]:
    best, where = None, None
    for i, v in enumerate(values or []):
        if v is not None and math.isfinite(v) and (best is None or v > best):
            best, where = float(v), i
    return best, where


def evaluate_alerts(quality: Mapping[str, Any], config: Any) -> list[Alert]:
    """Alerts that the quality figures raise under the thresholds of ``config`` (a ProcessConfig).

    A figure strictly above its critical threshold gives a ``critical`` alert, else above its warning
    threshold a ``warning``; a threshold of None is off. Figures not measured yet (None) raise nothing.
    """
    alerts: list[Alert] = []
    dose = quality.get("dose") or {}
    g = _grade(dose.get("sample_gray"), config.dose.warning_gray, config.dose.critical_gray)
    if g:
        prev = dose.get("previous_scans_gray") or 0.0
        alerts.append(Alert("SampleDoseHigh", g[0], f"sample {dose.get('sample', '?')} has received "
                            f"{dose['sample_gray']:.3g} Gy (this scan {dose.get('gray_total', 0.0):.3g} Gy, earlier "
                            f"scans {prev:.3g} Gy) > {g[1]:.3g} Gy", dose["sample_gray"], g[1]))

    drift = quality.get("drift") or {}
    px, k = _max_of(drift.get("return_px"))
    if px is not None:
        m = (drift.get("return_m") or [None] * (k + 1))[k]
        nm = None if m is None else m * 1e9
        worst = _grade_px_nm(px, nm, (config.alerts.drift_warning_px, config.alerts.drift_critical_px),
                             (config.alerts.drift_warning_nm, config.alerts.drift_critical_nm))
        if worst:
            alerts.append(Alert("SampleDrift", worst[0], f"distance {k + 1}: return projections moved {px:.2f} px"
                                + (f" ({nm:.0f} nm)" if nm is not None else "") + f" since the start of the "
                                f"distance > {worst[1]:g} {worst[2]}", px if worst[2] == "px" else nm, worst[1],
                                {"distance": str(k + 1), "unit": worst[2]}))

    warp = quality.get("warp") or {}
    npx, nm_m = warp.get("nonrigid_px"), warp.get("nonrigid_m")
    if npx is not None:
        nnm = None if nm_m is None else nm_m * 1e9
        worst = _grade_px_nm(npx, nnm, (config.alerts.warp_warning_px, config.alerts.warp_critical_px),
                             (config.alerts.warp_warning_nm, config.alerts.warp_critical_nm))
        if worst:
            alerts.append(Alert("SampleWarping", worst[0], f"non-rigid warp {npx:.2f} px"
                                + (f" ({nnm:.0f} nm)" if nnm is not None else "") + f" rms ({warp.get('worst_pair', '')})"
                                f" > {worst[1]:g} {worst[2]}", npx if worst[2] == "px" else nnm, worst[1],
                                {"unit": worst[2]}))
    scale = warp.get("scale")
    if scale is not None:
        g = _grade(abs(scale - 1.0), config.alerts.scale_warning, config.alerts.scale_critical)
        if g:
            alerts.append(Alert("SampleScaleChange", g[0], f"the sample scaled by {scale:.5f} "
                                f"({(scale - 1) * 100:+.3f} %; {warp.get('scale_pair', '')}) > {g[1] * 100:g} %",
                                abs(scale - 1.0), g[1]))

    fsc = quality.get("fsc") or {}
    res, voxel = fsc.get("resolution_m"), fsc.get("voxel_m")
    if (res is not None and voxel and config.alerts.fsc_warning_voxels is not None
            and (fsc.get("fraction_angles") or 0.0) >= config.alerts.fsc_min_fraction and fsc.get("full_coverage", True)):
        limit = config.alerts.fsc_warning_voxels * voxel
        if res > limit:
            alerts.append(Alert("ResolutionPoor", "warning", f"FSC resolution {res * 1e9:.0f} nm at "
                                f"{fsc['fraction_angles'] * 100:.0f} % of the angles > {config.alerts.fsc_warning_voxels:g} "
                                f"voxels ({limit * 1e9:.0f} nm)", res, limit))
    return alerts


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------
class Sink:
    """Receives the firing alerts after each evaluation (``changed`` says whether the set changed)."""

    def publish(self, firing: list[Alert], resolved: list[Alert], changed: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release resources."""


class LogSink(Sink):
    """New and escalated alerts to the log (critical as errors), resolved ones as info."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("xnh_stream.alerts")
        self._seen: dict[str, str] = {}

    def publish(self, firing: list[Alert], resolved: list[Alert], changed: bool) -> None:
        for a in firing:
            if self._seen.get(a.name) != a.severity:
                self._seen[a.name] = a.severity
                level = logging.ERROR if a.severity == "critical" else logging.WARNING
                self.log.log(level, "ALERT %s [%s]: %s", a.name, a.severity, a.message)
        for a in resolved:
            self._seen.pop(a.name, None)
            self.log.info("resolved %s: %s", a.name, a.message)


class CallbackSink(Sink):
    """Calls ``fn(alert)`` once per alert name and severity (e.g. to write it to the journal)."""

    def __init__(self, fn: Callable[[Alert], None]) -> None:
        self.fn = fn
        self._seen: set[tuple[str, str]] = set()

    def publish(self, firing: list[Alert], resolved: list[Alert], changed: bool) -> None:
        for a in firing:
            if (a.name, a.severity) not in self._seen:
                self._seen.add((a.name, a.severity))
                self.fn(a)


def alertmanager_payload(firing: Iterable[Alert], resolved: Iterable[Alert], starts: Mapping[str, float],
                         now: float, resend_s: float, common_labels: Mapping[str, str] | None = None,
                         generator_url: str = "") -> list[dict[str, Any]]:
    """Alerts as the Alertmanager API v2 ``POST /api/v2/alerts`` body (``postableAlerts``).

    Firing alerts get ``endsAt`` four resend intervals ahead (as Prometheus does): if the pipeline stops
    re-sending, Alertmanager resolves them. Resolved alerts get ``endsAt`` = now.
    """
    out = []
    for alerts, ends in ((firing, now + 4 * resend_s), (resolved, now)):
        for a in alerts:
            labels = {"alertname": a.name, "severity": a.severity, **(common_labels or {}), **a.labels}
            ann = {"summary": f"{a.name} ({a.severity})", "description": a.message}
            if a.value is not None:
                ann["value"] = f"{a.value:.6g}"
            if a.threshold is not None:
                ann["threshold"] = f"{a.threshold:.6g}"
            item = {"labels": labels, "annotations": ann, "startsAt": _now_iso(starts.get(a.name, now)),
                    "endsAt": _now_iso(ends)}
            if generator_url:
                item["generatorURL"] = generator_url
            out.append(item)
    return out


def split_credentials(url: str) -> tuple[str, str | None]:
    """A URL without its ``user:password@`` part, and that part as an HTTP Basic ``Authorization`` value.

    Credentials never reach a log line or a report: the URL kept for display is the bare one.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return bare, f"Basic {token}"


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for logs and reports)."""
    try:
        bare, auth = split_credentials(url)
    except ValueError:  # not a URL urlsplit accepts (a bad port): redacted as text
        return redact_text(url)
    if auth is None:
        return url
    scheme, rest = bare.split("://", 1)
    return f"{scheme}://***@{rest}"


class WebhookSink(Sink):
    """POST alerts to an Alertmanager-compatible receiver, from a background thread.

    Parameters
    ----------
    url : str
        E.g. ``http://alertmanager:9093/api/v2/alerts``; ``user:password@`` in it is sent as HTTP Basic
        authentication and never logged.
    timeout_s : float
        Connection and read timeout of one POST.
    resend_s : float
        Firing alerts are re-sent this often (Alertmanager forgets alerts that are not refreshed).
    labels : dict, optional
        Labels added to every alert (e.g. ``{"job": "xnh-stream", "instance": host}``).
    generator_url : str
        Link back to the pipeline (e.g. the live page).
    max_queue : int
        Payloads waiting to be sent; when full, the oldest is replaced (it is superseded by the newer
        one, which carries every firing alert) and the replacement is counted in ``superseded``.

    Attributes
    ----------
    sent, failures, superseded : int
        POSTs accepted (2xx), failed (error or timeout; logged), payloads replaced before sending.
    """

    def __init__(self, url: str, timeout_s: float = 2.0, resend_s: float = 60.0,
                 labels: Mapping[str, str] | None = None, generator_url: str = "", max_queue: int = 16) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook URL must start with http:// or https://, got {redact_url(url)!r}")
        self._post_url, self._auth = split_credentials(url)
        self.url = redact_url(url)  # what logs show
        self.timeout_s, self.resend_s = float(timeout_s), float(resend_s)
        self.labels = dict(labels or {"job": "xnh-stream", "instance": socket.gethostname()})
        self.generator_url = generator_url
        self.sent = self.failures = self.superseded = 0
        self._starts: dict[str, float] = {}
        self._last_sent = -math.inf
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def publish(self, firing: list[Alert], resolved: list[Alert], changed: bool) -> None:
        now = time.time()
        for a in firing:
            self._starts.setdefault(a.name, now)
        if not (changed or (firing and now - self._last_sent >= self.resend_s)):
            return
        payload = alertmanager_payload(firing, resolved, self._starts, now, self.resend_s, self.labels,
                                       self.generator_url)
        for a in resolved:
            self._starts.pop(a.name, None)
        if not payload:
            return
        self._last_sent = now
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.superseded += 1
                    log.warning("alert webhook %s is slow: an older alert payload was superseded", self.url)
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            data = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"}
            if self._auth:
                headers["Authorization"] = self._auth
            req = urllib.request.Request(self._post_url, data=data, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failures += 1
                log.warning("alert webhook %s: POST of %d alert(s) failed: %s", self.url, len(payload),
                            str(exc).replace(self._post_url, self.url))
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued payload was tried; False if that took longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        """Send what is queued (bounded by the timeout), then stop the thread."""
        self.flush(self.timeout_s + 1.0)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass


class AlertRouter:
    """Keeps the firing set and hands it to every sink after each :meth:`update`.

    Attributes
    ----------
    history : list of dict
        Every alert that fired (name, severity, message, value, threshold, first and last time), the
        ``alerts`` list of ``report.json``.
    """

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self.firing: dict[str, Alert] = {}
        self.history: list[dict[str, Any]] = []
        self._index: dict[tuple[str, str], dict[str, Any]] = {}

    def update(self, alerts: Sequence[Alert]) -> None:
        """Take the alerts firing now (a full evaluation): new, escalated and resolved ones go to the sinks."""
        now = time.time()
        current = {}
        for a in alerts:  # one per name: the most severe
            if a.name not in current or SEVERITIES.index(a.severity) > SEVERITIES.index(current[a.name].severity):
                current[a.name] = a
        resolved = [a for n, a in self.firing.items() if n not in current]
        changed = bool(resolved) or any(n not in self.firing or self.firing[n].severity != a.severity
                                        for n, a in current.items())
        self.firing = current
        for a in current.values():
            entry = self._index.get((a.name, a.severity))
            if entry is None:
                entry = self._index[(a.name, a.severity)] = {**a.as_dict(), "first_s": now}
                self.history.append(entry)
            entry.update(message=a.message, value=a.value, last_s=now)
        for sink in self.sinks:
            try:
                sink.publish(list(current.values()), resolved, changed)
            except Exception as exc:  # noqa: BLE001 - a broken sink must not stop the stream; said loudly
                log.error("alert sink %s failed: %s", type(sink).__name__, exc)

    def close(self) -> None:
        """Close every sink (flushes the webhook)."""
        for sink in self.sinks:
            sink.close()


def default_router(config: Any, extra: Sequence[Sink] = (), generator_url: str = "") -> AlertRouter:
    """The log sink, the Alertmanager webhook when ``config.alerts.webhook`` is set, and ``extra`` sinks."""
    sinks: list[Sink] = [LogSink()]
    if config.alerts.webhook:
        sinks.append(WebhookSink(config.alerts.webhook, timeout_s=config.alerts.webhook_timeout_s,
                                 generator_url=generator_url))
    return AlertRouter([*sinks, *extra])
