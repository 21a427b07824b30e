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
        values = cls.from_file(path).to_dict() if path else {}
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
        """Plain dictionary of all options (for the report)."""
        return dataclasses.asdict(self)


def _parse_env(name: str, raw: str) -> Any:
    """Parse an environment value with YAML rules (numbers, true/false, null), naming the variable on error."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"environment variable {name}: cannot parse {raw!r} ({exc})") from exc
