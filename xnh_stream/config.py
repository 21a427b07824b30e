"""Processing options: one typed, validated dataclass, loadable from a YAML file.

Precedence (lowest to highest): defaults, the YAML file, environment variables ``XNH_<KEY>`` (upper
case, e.g. ``XNH_DELTA_BETA=250``), command-line flags. Unknown keys and bad values raise
:class:`ConfigError` naming the key (and the variable, for the environment).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key that is unknown or has a bad value."""


@dataclass
class ProcessConfig:
    """Options of the processing chain (defaults suit ID16A-like scans of stained resin-embedded tissue).

    Attributes
    ----------
    delta_beta : float or None
        delta/beta of the homogeneous-object approximation; ``None`` derives it from ``sample_formula``
        and ``sample_density`` at the scan energy (xraydb).
    sample_formula, sample_density : str, float
        Mean sample composition (chemical formula, g/cm^3), for delta/beta and for the dose.
    ctf_alpha_low : float
        CTF regularisation at low frequencies, relative to ``2 K (beta/delta)^2`` (the CTF denominator at
        zero frequency for K distances): 0.1 keeps 90 % of the mean phase.
    ctf_alpha_high : float
        CTF regularisation at high frequencies (absolute; compare with ``2 sum_k A_k^2 ~ K``).
    ctf_envelope : bool
        Two-material CTF in the batch chain (and the stream's final pass): the sample's outline against
        air is retrieved with ``delta_beta``, its interior with ``delta_beta_contrast`` (docs/configuration.md).
    delta_beta_contrast : float or None
        delta/beta of the contrast inside the sample; ``None`` takes the stain's (``stain_formula``,
        ``stain_density``) at the scan energy.
    stain_formula, stain_density : str, float
        The contrast agent (default reduced osmium, OsO2, 11.4 g/cm^3).
    live_binning : int
        Binning of the live (streamed) volume against the final one; 0 picks one that keeps about 512
        columns (full resolution for frames up to ~768 px). The final pass is always at full resolution.
    fbp_window : str
        Ramp filter window: ram-lak, shepp-logan, cosine, hamming, hann.
    fbp_padding : str
        How detector rows are extended before ramp filtering: ``edge`` (default; XNH projections are
        truncated because the sample fills the field of view) or ``zeros`` (a sample entirely inside it).
    cor : float or None
        Rotation-axis column in reference-detector pixels; ``None`` estimates it.
    align : bool
        Register distances against the reference (rescale + shift); False only rescales.
    align_angles : int
        Number of evenly spread angles on which distance shifts are measured before fitting the model.
    align_model_degree : int
        Polynomial degree of the smooth shift-versus-angle model.
    align_delta_beta : float
        delta/beta of the Paganin filter that makes the distances comparable for registration. Small
        values keep the filter kernel short, so that the different fields of view of the distances do
        not bias the shifts.
    flat_pca_components : int
        0 for interpolated flats; >0 for dynamic (PCA) flat-field with that many components.
    detector_gain : float
        Detector counts per detected photon (dose).
    detector_efficiency : float
        Detected fraction of incident photons (dose).
    backend : str
        Array backend: ``numpy`` or ``cupy``.

    Quality and alerts (:mod:`xnh_stream.quality`, docs/quality.md)

    dose_dead_time_s : float
        Beam-on time after each exposed frame while the detector does not count (read-out); adds to the dose.
    sample_name : str
        Sample the dose ledger accumulates under; empty: the scan folder's name.
    dose_ledger : str
        JSON file keeping the dose of every scan of each sample (shared by successive scans); empty: none,
        the sample dose is this scan's.
    dose_warning_gray, dose_critical_gray : float
        Alert thresholds on the dose the sample received (all its scans), Gy.
    drift_warning_px, drift_critical_px, drift_warning_nm, drift_critical_nm : float or None
        Alert thresholds on the return-projection drift (reference pixels / nm); None is off.
    warp_warning_px, warp_critical_px, warp_warning_nm, warp_critical_nm : float or None
        Alert thresholds on the non-rigid warp (rms of the patch-field residual); None is off.
    scale_warning, scale_critical : float or None
        Alert thresholds on the scale change ``|scale - 1|`` between views of the same angle.
    fsc_warning_voxels : float or None
        Alert when the running FSC resolution is worse than this many voxels, once ``fsc_min_fraction`` of
        the angles (covering the whole range) are in.
    fsc_min_fraction : float
        See ``fsc_warning_voxels``.
    fsc_bin : int
        Block size of the binned whole-volume running FSC.
    fsc_region_px : int
        Side of the full-resolution central region of the running FSC.
    alert_webhook : str
        Alertmanager-compatible URL (``http://host:9093/api/v2/alerts``) alerts are POSTed to; empty: none.
    alert_webhook_timeout_s : float
        Timeout of one POST (sent from a background thread; never blocks the stream).
    """

    delta_beta: float | None = None
    sample_formula: str = "C5H8O2Os0.065"
    sample_density: float = 1.35
    ctf_alpha_low: float = 0.1
    ctf_alpha_high: float = 0.05
    ctf_envelope: bool = True
    delta_beta_contrast: float | None = None
    stain_formula: str = "OsO2"
    stain_density: float = 11.4
    live_binning: int = 0
    fbp_window: str = "shepp-logan"
    fbp_padding: str = "edge"
    cor: float | None = None
    align: bool = True
    align_angles: int = 48
    align_model_degree: int = 2
    align_delta_beta: float = 0.3
    flat_pca_components: int = 0
    detector_gain: float = 1.0
    detector_efficiency: float = 1.0
    backend: str = "numpy"
    # --- quality and alerts (xnh_stream.quality) ---
    dose_dead_time_s: float = 0.0
    sample_name: str = ""
    dose_ledger: str = ""
    dose_warning_gray: float = 1e8
    dose_critical_gray: float = 1e9
    drift_warning_px: float | None = 1.0
    drift_critical_px: float | None = 3.0
    drift_warning_nm: float | None = None
    drift_critical_nm: float | None = None
    warp_warning_px: float | None = 0.5
    warp_critical_px: float | None = 1.5
    warp_warning_nm: float | None = None
    warp_critical_nm: float | None = None
    scale_warning: float | None = 0.002
    scale_critical: float | None = 0.01
    fsc_warning_voxels: float | None = 5.0
    fsc_min_fraction: float = 0.5
    fsc_bin: int = 2
    fsc_region_px: int = 64
    alert_webhook: str = ""
    alert_webhook_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        checks = {
            "ctf_alpha_low": self.ctf_alpha_low >= 0, "ctf_alpha_high": self.ctf_alpha_high >= 0,
            "fbp_window": self.fbp_window in {"ram-lak", "shepp-logan", "cosine", "hamming", "hann"},
            "align_angles": self.align_angles >= 3, "align_model_degree": 0 <= self.align_model_degree <= 6,
            "align_delta_beta": self.align_delta_beta > 0,
            "flat_pca_components": self.flat_pca_components >= 0, "detector_gain": self.detector_gain > 0,
            "detector_efficiency": 0 < self.detector_efficiency <= 1, "sample_density": self.sample_density > 0,
            "backend": self.backend in {"numpy", "cupy"},
            "fbp_padding": self.fbp_padding in {"edge", "zeros"},
            "delta_beta": self.delta_beta is None or self.delta_beta > 0,
            "delta_beta_contrast": self.delta_beta_contrast is None or self.delta_beta_contrast > 0,
            "stain_density": self.stain_density > 0,
            "live_binning": self.live_binning >= 0,
            # --- quality and alerts ---
            "dose_dead_time_s": self.dose_dead_time_s >= 0, "dose_warning_gray": self.dose_warning_gray > 0,
            "dose_critical_gray": self.dose_critical_gray >= self.dose_warning_gray,
            "drift_critical_px": _ordered(self.drift_warning_px, self.drift_critical_px),
            "drift_critical_nm": _ordered(self.drift_warning_nm, self.drift_critical_nm),
            "warp_critical_px": _ordered(self.warp_warning_px, self.warp_critical_px),
            "warp_critical_nm": _ordered(self.warp_warning_nm, self.warp_critical_nm),
            "scale_critical": _ordered(self.scale_warning, self.scale_critical),
            "fsc_warning_voxels": self.fsc_warning_voxels is None or self.fsc_warning_voxels > 0,
            "fsc_min_fraction": 0 <= self.fsc_min_fraction <= 1, "fsc_bin": self.fsc_bin >= 1,
            "fsc_region_px": self.fsc_region_px >= 8,
            "alert_webhook": self.alert_webhook == "" or self.alert_webhook.startswith(("http://", "https://")),
            "alert_webhook_timeout_s": self.alert_webhook_timeout_s > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"config key {key!r} has an invalid value {getattr(self, key)!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ProcessConfig:
        """Build from a mapping, rejecting unknown keys and values of the wrong type."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        clean: dict[str, Any] = {}
        for key, value in values.items():
            default = getattr(cls, key, None)
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise TypeError("expected true or false")
                elif isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
                    value = type(default)(value) if isinstance(default, float) or isinstance(value, int) else int(value)
                elif default is None and value is not None:
                    value = float(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"config key {key!r}: bad value {value!r} ({exc})") from exc
            clean[key] = value
        return cls(**clean)

    @classmethod
    def from_file(cls, path: str | Path) -> ProcessConfig:
        """Load a YAML file whose top level maps keys of this class to values."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of key: value")
        return cls.from_mapping(data)

    @classmethod
    def layered(cls, path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> ProcessConfig:
        """Defaults, then the YAML file ``path``, then ``XNH_*`` environment variables, then ``overrides``."""
        values = dataclasses.asdict(cls.from_file(path)) if path else {}
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        for name, raw in env.items():
            if not name.startswith("XNH_"):
                continue
            key = name[4:].lower()
            if key not in known:
                continue  # XNH_* variables of other components (e.g. the stream) are not ours
            values[key] = _parse_env(name, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of all options (for the report), secrets removed (a webhook's password)."""
        from .quality.alerts import redact_url  # noqa: PLC0415

        d = dataclasses.asdict(self)
        if d.get("alert_webhook"):
            d["alert_webhook"] = redact_url(d["alert_webhook"])
        return d


def _ordered(warning: float | None, critical: float | None) -> bool:
    """Alert thresholds: each None (off) or positive, and critical not below warning."""
    if any(v is not None and not v > 0 for v in (warning, critical)):
        return False
    return warning is None or critical is None or critical >= warning


def _parse_env(name: str, raw: str) -> Any:
    """Parse an environment value with YAML rules (numbers, true/false, null), naming the variable on error."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"environment variable {name}: cannot parse {raw!r} ({exc})") from exc
