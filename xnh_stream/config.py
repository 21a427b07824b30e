"""Processing options in sections: typed, validated, loadable from a YAML file.

=========== ===============================================================================================
section     what it configures
=========== ===============================================================================================
sample      the sample's composition (delta/beta, dose), the stain (two-material CTF), the sample's name
flatfield   dynamic (PCA) flat-field
alignment   registration of the distances
phase       the phase-retrieval method (a name of :mod:`xnh_stream.chain.phase_methods`)
ctf         the multi-distance CTF's regularisation, envelope, padding and refinement
fbp         reconstruction and the rotation axis
dose        detector response and the dose alert thresholds
alerts      drift, warping, scale and resolution alert thresholds, the Alertmanager webhook
stream      the live volume and the running FSC
denoise     the optional self-supervised denoising of the final volume (Noise2Inverse)
compute     the array backend
=========== ===============================================================================================

A YAML file holds the sections as mappings (``ctf: {alpha_low: 0.1}``). Precedence, lowest to highest:
defaults, the file, environment variables ``XNH_<SECTION>_<KEY>`` (upper case, e.g. ``XNH_CTF_ALPHA_LOW=0.2``,
``XNH_SAMPLE_DELTA_BETA=250``), command-line flags. Unknown sections or keys and bad values raise
:class:`ConfigError` naming them (and the variable, for the environment).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration key that is unknown or has a bad value.

    The message never shows a password: the ``user:password@`` of any URL in it (an alert webhook with
    credentials, echoed as a bad value or in a YAML error) reads ``***@``
    (:func:`xnh_stream.errors.redact_text`).
    """

    def __init__(self, *args: object) -> None:
        from .errors import redact_text  # noqa: PLC0415

        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


def _check(section: str, checks: dict[str, bool], values: Any) -> None:
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"config key {section}.{key} has an invalid value {getattr(values, key)!r}")


def _ordered(warning: float | None, critical: float | None) -> bool:
    """Alert thresholds: each None (off) or positive, and critical not below warning."""
    if any(v is not None and not v > 0 for v in (warning, critical)):
        return False
    return warning is None or critical is None or critical >= warning


@dataclass
class SampleOptions:
    """The sample (defaults: heavily stained, resin-embedded tissue).

    Attributes
    ----------
    delta_beta : float or None
        delta/beta of the homogeneous-object approximation. None (or ``auto``) takes it from
        ``delta_beta_from``.
    delta_beta_from : str
        Where an unset ``delta_beta`` comes from: ``data``, the fit of the linear CTF to every distance's
        holograms on ``delta_beta_angles`` angles before the phase pass (:mod:`xnh_stream.physics.material`;
        the composition's value when the fit finds no minimum or too wide an interval); ``composition``,
        ``formula`` and ``density`` at the scan energy (xraydb).
    delta_beta_angles : int
        Angles the fit of ``delta_beta_from: data`` reads.
    formula, density : str, float
        Mean composition (chemical formula) and density (g/cm^3), for delta/beta and the dose.
    stain_formula, stain_density : str, float
        The contrast agent (default reduced osmium, OsO2, 11.4 g/cm^3).
    delta_beta_contrast : float or None
        delta/beta of the contrast inside the sample (two-material CTF); None takes the stain's.
    name : str
        Sample the dose ledger accumulates under; empty: the scan folder's name.
    """

    delta_beta: float | None = field(default=None, metadata={"auto": True})
    delta_beta_from: str = "data"
    delta_beta_angles: int = 64
    formula: str = "C5H8O2Os0.065"
    density: float = 1.35
    stain_formula: str = "OsO2"
    stain_density: float = 11.4
    delta_beta_contrast: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        _check("sample", {"delta_beta": self.delta_beta is None or self.delta_beta > 0,
                          "delta_beta_from": self.delta_beta_from in ("data", "composition"),
                          "delta_beta_angles": self.delta_beta_angles >= 4, "density": self.density > 0,
                          "stain_density": self.stain_density > 0,
                          "delta_beta_contrast": self.delta_beta_contrast is None or self.delta_beta_contrast > 0},
               self)


@dataclass
class FlatFieldOptions:
    """Flat-field.

    Attributes
    ----------
    pca_components : int
        0 for flats interpolated between series; > 0 for the dynamic (PCA) flat-field with that many
        components (fitted on low frequencies: the sample fills the field of view in XNH).
    """

    pca_components: int = 0

    def __post_init__(self) -> None:
        _check("flatfield", {"pca_components": self.pca_components >= 0}, self)


@dataclass
class AlignmentOptions:
    """Registration of the distances against the reference.

    Attributes
    ----------
    enabled : bool
        Register (rescale + shift); False only rescales.
    angles : int
        Evenly spread angles on which the shifts are measured before the model is fitted.
    model_degree : int
        Polynomial degree of the smooth shift-versus-angle model.
    delta_beta : float
        delta/beta of the short Paganin filter that makes the distances comparable.
    paganin_pad : float
        FFT padding factor (>= 1, mirror values) of that Paganin filter, in the registration of the distances
        (final pass and stream) and in the quality monitor's comparison of the distances.
    """

    enabled: bool = True
    angles: int = 48
    model_degree: int = 2
    delta_beta: float = 0.3
    paganin_pad: float = 1.5

    def __post_init__(self) -> None:
        _check("alignment", {"angles": self.angles >= 3, "model_degree": 0 <= self.model_degree <= 6,
                             "delta_beta": self.delta_beta > 0, "paganin_pad": self.paganin_pad >= 1}, self)


#: ``ctf.alpha_low: auto`` for the two-material CTF (True) and for one material (False)
AUTO_ALPHA_LOW: dict[bool, float] = {True: 0.1, False: 2.0}


@dataclass
class PhaseOptions:
    """The phase-retrieval method.

    Attributes
    ----------
    method : str
        A name of the registry :data:`xnh_stream.chain.phase_methods.PHASE_METHODS`: ``paganin`` (single
        distance, the reference), ``ctf`` (multi-distance, one material), ``ctf-two-material`` (multi-distance,
        the sample's outline and interior where ``ctf.envelope`` finds a sample in air; one material otherwise).
        The final pass and the live final projections use it; the live previews are always Paganin.
    """

    method: str = "ctf-two-material"

    def __post_init__(self) -> None:
        from .chain.phase_methods import PHASE_METHODS  # noqa: PLC0415  (light: the registry's names)

        if self.method not in PHASE_METHODS:
            raise ConfigError(f"config key phase.method has an invalid value {self.method!r} "
                              f"(known: {', '.join(PHASE_METHODS)})")


@dataclass
class CTFOptions:
    """Multi-distance CTF phase retrieval.

    Attributes
    ----------
    alpha_low : float or str
        Regularisation at low frequencies, relative to ``2 K (beta/delta)^2``: the lowest frequencies of the
        phase come out ``1 / (1 + alpha_low)`` of what the CTF alone gives. ``auto``: 0.1 for the two-material
        CTF (its envelope carries the low frequencies), 2 for one material, whose lowest frequencies carry the
        errors the CTF amplifies most (a sample wider than the field of view, the nonlinearity of a 1 rad phase;
        docs/delta_beta.md). A number applies to both.
    alpha_high : float
        Regularisation at high frequencies (absolute).
    envelope : bool or str
        Two-material CTF in the final pass: the sample's outline against air with ``sample.delta_beta``, its
        interior with ``sample.delta_beta_contrast``. ``true``: wherever a plausible sample support is found;
        ``auto``: only where that support is a sample in air (it fills a good part of the field of view and the
        volume around it is empty), otherwise one material; ``false``: never.
    phase_pad : float
        FFT padding factor (>= 1, mirror values; :func:`~xnh_stream.physics.phase.padded_shape`) of the final
        pass's phase retrieval (``stream.phase_pad`` is the live one's).
    refine : int
        Iterations of the Fresnel refinement of every final projection (:mod:`xnh_stream.physics.refine`: the
        CTF's functional with the exact hologram instead of its first order, started from the CTF); 0 turns it
        off. One material only (a pass with the two-material envelope does not refine); the live previews never
        do. About 10 is enough; each costs ``4 K + 2`` complex FFTs of the padded frame
        (``bench/bench_refine.py``).
    """

    alpha_low: float | str = field(default="auto", metadata={"number_or_auto": True})
    alpha_high: float = 0.05
    envelope: bool | str = field(default="auto", metadata={"choices": (True, False, "auto")})
    phase_pad: float = 2.0
    refine: int = 0

    def alpha_low_for(self, two_material: bool) -> float:
        """The ``alpha_low`` the CTF uses (``auto`` resolved: :data:`AUTO_ALPHA_LOW`)."""
        return AUTO_ALPHA_LOW[bool(two_material)] if self.alpha_low == "auto" else float(self.alpha_low)

    def __post_init__(self) -> None:
        _check("ctf", {"alpha_low": self.alpha_low == "auto" or self.alpha_low >= 0, "alpha_high": self.alpha_high >= 0,
                       "envelope": isinstance(self.envelope, bool) or self.envelope == "auto",
                       "phase_pad": self.phase_pad >= 1, "refine": self.refine >= 0}, self)


@dataclass
class FBPOptions:
    """Reconstruction.

    Attributes
    ----------
    window : str
        Ramp filter window: ram-lak, shepp-logan, cosine, hamming, hann.
    padding : str
        ``edge`` (XNH projections are truncated) or ``zeros``.
    cor : float or None
        Rotation-axis column in reference-detector pixels; None estimates it.
    """

    window: str = "shepp-logan"
    padding: str = "edge"
    cor: float | None = None

    def __post_init__(self) -> None:
        _check("fbp", {"window": self.window in {"ram-lak", "shepp-logan", "cosine", "hamming", "hann"},
                       "padding": self.padding in {"edge", "zeros"}}, self)


@dataclass
class DoseOptions:
    """Dose (Howells) and its alerts.

    Attributes
    ----------
    detector_gain : float
        Detector counts per detected photon.
    detector_efficiency : float
        Detected fraction of incident photons.
    dead_time_s : float
        Beam-on time after each exposed frame while the detector does not count.
    ledger : str
        JSON file keeping the dose of every scan of each sample; empty: none.
    warning_gray, critical_gray : float
        Alert thresholds on the dose the sample received (all its scans), Gy.
    """

    detector_gain: float = 1.0
    detector_efficiency: float = 1.0
    dead_time_s: float = 0.0
    ledger: str = ""
    warning_gray: float = 1e8
    critical_gray: float = 1e9

    def __post_init__(self) -> None:
        _check("dose", {"detector_gain": self.detector_gain > 0,
                        "detector_efficiency": 0 < self.detector_efficiency <= 1,
                        "dead_time_s": self.dead_time_s >= 0, "warning_gray": self.warning_gray > 0,
                        "critical_gray": self.critical_gray >= self.warning_gray}, self)


@dataclass
class AlertOptions:
    """Alert thresholds (None: off) and where alerts go besides the log, the journal and the report.

    Attributes
    ----------
    drift_warning_px, drift_critical_px, drift_warning_nm, drift_critical_nm : float or None
        Return-projection drift.
    warp_warning_px, warp_critical_px, warp_warning_nm, warp_critical_nm : float or None
        Non-rigid warp (rms of the patch-field residual).
    scale_warning, scale_critical : float or None
        ``|scale - 1|`` between views of the same angle.
    fsc_warning_voxels : float or None
        Running FSC resolution worse than this many voxels, once ``fsc_min_fraction`` of the angles are in.
    fsc_min_fraction : float
        See ``fsc_warning_voxels``.
    webhook : str
        Alertmanager-compatible URL (``user:password@`` goes as Basic authentication, never logged).
    webhook_timeout_s : float
        Timeout of one POST (sent from a background thread).
    """

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
    webhook: str = ""
    webhook_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        _check("alerts", {
            "drift_critical_px": _ordered(self.drift_warning_px, self.drift_critical_px),
            "drift_critical_nm": _ordered(self.drift_warning_nm, self.drift_critical_nm),
            "warp_critical_px": _ordered(self.warp_warning_px, self.warp_critical_px),
            "warp_critical_nm": _ordered(self.warp_warning_nm, self.warp_critical_nm),
            "scale_critical": _ordered(self.scale_warning, self.scale_critical),
            "fsc_warning_voxels": self.fsc_warning_voxels is None or self.fsc_warning_voxels > 0,
            "fsc_min_fraction": 0 <= self.fsc_min_fraction <= 1,
            "webhook": self.webhook == "" or self.webhook.startswith(("http://", "https://")),
            "webhook_timeout_s": self.webhook_timeout_s > 0}, self)


@dataclass
class LiveOptions:
    """The live volume and the running FSC.

    Attributes
    ----------
    live_binning : int
        Binning of the live volume against the final one; 0 picks one that keeps about 512 columns.
    fsc_bin : int
        Block size of the binned whole-volume running FSC.
    fsc_region_px : int
        Side of the full-resolution central region of the running FSC.
    bp_batch : int
        Angles a live reconstruction shard gathers before back-projecting them together (1 = each at once);
        a projection waits at most ``bp_wait_s`` (checked when the next one comes) or until the volume is
        read (every live refresh).
    bp_wait_s : float
        Longest wait of a projection in a batch. The live page never shows the difference: every live refresh
        (``quality_every_s``) reads the volume, back-projecting the batch first; each batch streams the
        shard's whole slab through memory once, so at 2048^2 and 2 frames/s a wait of 5 s instead of 1 s
        takes the shards' CPU per angle from ~0.12 s to ~0.04 s.
    phase_pad : float
        FFT padding factor (>= 1, mirror values) of the live phase retrieval, CTF and Paganin previews; the
        final pass pads ``ctf.phase_pad`` (2). At 2048^2 the CTF's FFTs take a third of the CPU at 1.25
        (2560^2) that they take at 2 (4096^2), with the same result inside the field and in its edge band on a
        sample wider than the field (``bench/bench_ctf.py``, ``tests/test_phase.py``); raise it for weakly
        absorbing samples at long distances, whose Paganin kernel reaches further.
    quality_every_s : float
        How often the running FSC (the full-resolution central region) and the live images are refreshed from
        the live volume's shards, seconds.
    binned_fsc_first : int
        The binned whole-volume running FSC (a pass over every slab) is refreshed from this many angles on ...
    binned_fsc_growth : float
        ... each time the angles seen grew by this factor since its last point (log-spaced points of resolution
        against angles), and at the end of the scan.
    preview_deadline_s : float
        A Paganin preview still waiting for a phase worker this long after its frame arrived is skipped (the
        stream is behind: final CTF work goes first, the page counts the previews skipped;
        :mod:`xnh_stream.live.schedule`); 0 never skips a preview for its age (one whose angle's final is
        already queued is always skipped).
    coarse_after_s : float
        Final (CTF) work still waiting for a phase worker this long after it was queued runs on its frames binned
        twice (a quarter of the cost): the stream is behind its detector and catches up instead of falling
        further behind; the live slices show those angles blurred (the page counts them), the final pass is
        untouched. Only where the live volume is binned 2x or more (frames over ~1024 columns with
        ``live_binning`` 0); 0 never coarsens.
    max_in_flight : int
        Phase tasks in flight (backpressure); 0 = two per phase worker. More only adds latency: at 512^2 on 2
        cores, 4 and 8 in flight gave 18.7 and 17.7 frames/s with a landing-to-final p50 of 1.4 and 1.9 s
        (``bench/bench_stream.py``).
    restart_check_s : float
        How often the workers are asked whether the runtime restarted them (a round trip to each), seconds.
    progress_every_s : float
        Progress (metrics, live page) is reported after every poll that brought frames or finished work, and
        at least this often while idle, seconds.
    live_result_max_mib : int
        The live volume is gathered from the shards into the stream's result only up to this size, MiB (a
        full-resolution live volume of a real scan stays in the shards; the final pass writes the volume).
    reuse_frames : bool
        The final pass of a streamed scan takes the projections the stream flat-fielded from ``OUT/store``
        instead of reading their files again, where they are what it would compute (``chain/frames.py``;
        ~3e-6 of the volume's largest value from ``process`` on the same folder); false reads every file.
    """

    live_binning: int = 0
    fsc_bin: int = 2
    fsc_region_px: int = 64
    bp_batch: int = 8
    bp_wait_s: float = 5.0
    phase_pad: float = 1.25
    quality_every_s: float = 5.0
    binned_fsc_first: int = 16
    binned_fsc_growth: float = 2.0
    preview_deadline_s: float = 2.0
    coarse_after_s: float = 1.0
    max_in_flight: int = 0
    restart_check_s: float = 1.0
    progress_every_s: float = 0.5
    live_result_max_mib: int = 1024
    reuse_frames: bool = True

    def __post_init__(self) -> None:
        _check("stream", {"live_binning": self.live_binning >= 0, "fsc_bin": self.fsc_bin >= 1,
                          "fsc_region_px": self.fsc_region_px >= 8, "bp_batch": self.bp_batch >= 1,
                          "bp_wait_s": self.bp_wait_s >= 0, "phase_pad": self.phase_pad >= 1,
                          "quality_every_s": self.quality_every_s > 0, "binned_fsc_first": self.binned_fsc_first >= 1,
                          "binned_fsc_growth": self.binned_fsc_growth > 1, "max_in_flight": self.max_in_flight >= 0,
                          "preview_deadline_s": self.preview_deadline_s >= 0,
                          "coarse_after_s": self.coarse_after_s >= 0,
                          "restart_check_s": self.restart_check_s > 0, "progress_every_s": self.progress_every_s > 0,
                          "live_result_max_mib": self.live_result_max_mib >= 0}, self)


@dataclass
class DenoiseOptions:
    """Self-supervised denoising of the final volume from its even/odd half-volumes
    (:mod:`xnh_stream.physics.denoise`, Noise2Inverse). Off by default. When on, the final pass keeps both
    half-volumes in its work folder, trains a small network on them (no data or weights from elsewhere) and
    writes ``volume.ome.zarr/denoised`` beside the plain volume; the FSC, the alerts and every figure of
    ``report.json`` are of the plain volume, the ``denoise`` section of the report says what was done and how
    much noise it removed on rows it was not trained on.

    Attributes
    ----------
    method : str
        ``none`` or ``noise2inverse``.
    steps : int
        Training steps (Adam, 8 patches each).
    context : int
        Planes along the rotation axis the network sees at once (odd).
    width : int
        Feature maps of the network's top level.
    patch : int
        Side of the training patches (a multiple of 4).
    seed : int
        Random seed of the training.
    """

    method: str = "none"
    steps: int = 400
    context: int = 5
    width: int = 16
    patch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check("denoise", {"method": self.method in {"none", "noise2inverse"}, "steps": self.steps >= 1,
                           "context": self.context >= 1 and self.context % 2 == 1, "width": self.width >= 1,
                           "patch": self.patch >= 8 and self.patch % 4 == 0}, self)

    @property
    def enabled(self) -> bool:
        """Whether the final pass denoises."""
        return self.method != "none"


@dataclass
class ComputeOptions:
    """Where the numbers are computed.

    Attributes
    ----------
    backend : str
        Array backend: ``numpy`` or ``cupy`` (a GPU per task; refused when there is none).
    """

    backend: str = "numpy"

    def __post_init__(self) -> None:
        _check("compute", {"backend": self.backend in {"numpy", "cupy"}}, self)


#: Section name -> its dataclass.
SECTIONS: dict[str, type] = {"sample": SampleOptions, "flatfield": FlatFieldOptions, "alignment": AlignmentOptions,
                             "phase": PhaseOptions, "ctf": CTFOptions, "fbp": FBPOptions, "dose": DoseOptions,
                             "alerts": AlertOptions, "stream": LiveOptions, "denoise": DenoiseOptions, "compute": ComputeOptions}


@dataclass
class ProcessConfig:
    """Every processing option, in sections (see the module docstring; each section documents its keys)."""

    sample: SampleOptions = field(default_factory=SampleOptions)
    flatfield: FlatFieldOptions = field(default_factory=FlatFieldOptions)
    alignment: AlignmentOptions = field(default_factory=AlignmentOptions)
    phase: PhaseOptions = field(default_factory=PhaseOptions)
    ctf: CTFOptions = field(default_factory=CTFOptions)
    fbp: FBPOptions = field(default_factory=FBPOptions)
    dose: DoseOptions = field(default_factory=DoseOptions)
    alerts: AlertOptions = field(default_factory=AlertOptions)
    stream: LiveOptions = field(default_factory=LiveOptions)
    denoise: DenoiseOptions = field(default_factory=DenoiseOptions)
    compute: ComputeOptions = field(default_factory=ComputeOptions)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ProcessConfig:
        """Build from ``{section: {key: value}}`` (missing sections and keys keep their defaults).

        Dotted keys (``"ctf.alpha_low": 0.2``) are accepted at the top level too (command-line overrides).

        Raises
        ------
        ConfigError
            For an unknown section or key, or a value of the wrong type.
        """
        nested: dict[str, dict[str, Any]] = {}
        for key, value in (values or {}).items():
            if "." in key:
                section, sub = key.split(".", 1)
                nested.setdefault(section, {})[sub] = value
            elif isinstance(value, dict):
                nested.setdefault(key, {}).update(value)
            else:
                raise ConfigError(f"config key {key!r} is not a section (sections: {sorted(SECTIONS)}); "
                                  f"write it under its section, e.g. 'fbp: {{cor: 1024.5}}'")
        unknown = sorted(set(nested) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; known sections: {sorted(SECTIONS)}")
        built = {name: _section(name, SECTIONS[name], nested.get(name, {})) for name in SECTIONS}
        return cls(**built)

    @classmethod
    def from_file(cls, path: str | Path) -> ProcessConfig:
        """Load a YAML file of sections."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        try:
            return cls.from_mapping(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def layered(cls, path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> ProcessConfig:
        """Defaults, then the YAML file ``path``, then ``XNH_<SECTION>_<KEY>`` variables, then ``overrides``
        (``{"section.key": value}``, None values ignored)."""
        values: dict[str, Any] = {}
        if path:
            for name, sec in dataclasses.asdict(cls.from_file(path)).items():
                for k, v in sec.items():
                    values[f"{name}.{k}"] = v
        env = os.environ if env is None else env
        for var, raw in env.items():
            key = _env_key(var)
            if key is not None:
                values[key] = _parse_env(var, raw)
        for var in unknown_env_variables(env):
            log.warning("%s", describe_unknown_env(var))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dictionary of all options (for the report), secrets removed (a webhook's password)."""
        from .quality.alerts import redact_url  # noqa: PLC0415

        d = dataclasses.asdict(self)
        if d["alerts"]["webhook"]:
            d["alerts"]["webhook"] = redact_url(d["alerts"]["webhook"])
        return d

    def replace(self, **dotted: Any) -> ProcessConfig:
        """A copy with some keys changed: ``config.replace(**{"fbp.cor": 1024.5})``."""
        values = {f"{name}.{k}": v for name, sec in dataclasses.asdict(self).items() for k, v in sec.items()}
        values.update(dotted)
        return ProcessConfig.from_mapping(values)


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{name}.{k}' for k in unknown]}; keys of {name}: {sorted(known)}")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        default = known[key].default
        meta = known[key].metadata
        try:
            if "choices" in meta:  # a few words or booleans (``ctf.envelope``: true, false, auto)
                if isinstance(value, str) and value.strip().lower() in ("true", "false", "auto"):
                    value = {"true": True, "false": False}.get(value.strip().lower(), value.strip().lower())
                if not any(value is c or (isinstance(c, str) and value == c) for c in meta["choices"]):
                    raise TypeError(f"expected one of {', '.join(str(c).lower() for c in meta['choices'])}")
            elif meta.get("auto") and isinstance(value, str) and value.strip().lower() == "auto":
                value = None  # ``auto`` = unset: found by the chain
            elif meta.get("number_or_auto"):
                if isinstance(value, bool):
                    raise TypeError("expected a number or auto")
                value = "auto" if isinstance(value, str) and value.strip().lower() == "auto" else float(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
            elif isinstance(default, (int, float)) and value is not None:
                value = type(default)(value) if isinstance(default, float) or isinstance(value, int) else int(value)
            elif default is None and value is not None:
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise TypeError("expected a string")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key {name}.{key}: bad value {value!r} ({exc})") from exc
        clean[key] = value
    return cls(**clean)


def _env_key(var: str) -> str | None:
    """``XNH_CTF_ALPHA_LOW`` -> ``"ctf.alpha_low"``; None for variables that are not config keys."""
    if not var.startswith("XNH_"):
        return None
    rest = var[4:].lower()
    for name, cls in SECTIONS.items():
        if rest.startswith(name + "_"):
            key = rest[len(name) + 1:]
            if key in {f.name for f in fields(cls)}:
                return f"{name}.{key}"
    return None  # XNH_* variables of other components (e.g. the tests) are not ours


#: ``XNH_*`` variables that are not configuration keys: switches of the tests, the CI and fault injection, and
#: the settings of the Slurm script (``deploy/slurm/xnh-stream.sbatch``, which unsets them before it runs
#: ``xnh-stream``; known here for a shell that exports them).
OTHER_ENV_VARIABLES: dict[str, str] = {
    "XNH_ARTIFACTS": "tests: a folder the live page's and the dashboards' screenshots are copied to",
    "XNH_CRASH_AT": "fault injection: the process dies at this named point (xnh_stream/state/work.py)",
    "XNH_REQUIRE_CHROMIUM": "tests: 1 makes a missing chromium a failure instead of a skip (CI)",
    "XNH_REQUIRE_PROMETHEUS": "tests: 1 makes a missing prometheus or promtool a failure instead of a skip (CI)",
    "XNH_REQUIRE_SLURM": "tests: 1 makes a missing Slurm a failure instead of a skip (CI)",
    "XNH_SLURM_STATE": "CI: the state folder of the one-node Slurm (.ci/slurm-single-node)",
    **{f"XNH_{name}": "deploy/slurm/xnh-stream.sbatch" for name in (
        "VENV", "MODULES", "CONDA_ENV", "SIF", "BACKEND", "RAY_PORT", "RAY_NODE_IP", "RAY_TEMP_DIR", "RAY_WAIT_S",
        "PROM_SD_DIR")},
}


def env_variables() -> list[str]:
    """Every ``XNH_<SECTION>_<KEY>`` variable of the configuration, sorted."""
    return sorted(f"XNH_{name}_{f.name}".upper() for name, cls in SECTIONS.items() for f in fields(cls))


def unknown_env_variables(env: Mapping[str, str]) -> list[str]:
    """The ``XNH_*`` variables of ``env`` that are neither a configuration key nor one of
    :data:`OTHER_ENV_VARIABLES` (a typo, or a key that no longer exists), sorted."""
    return sorted(v for v in env if v.startswith("XNH_") and _env_key(v) is None and v not in OTHER_ENV_VARIABLES)


def describe_unknown_env(var: str) -> str:
    """The warning for an unknown ``XNH_*`` variable: that it is ignored, the nearest known names, and the
    known ones (those of its section when the section is right, else the sections), e.g.

    ``environment variable XNH_CTF_ALPHA_LOWW is not one of xnh-stream's: ignored. Did you mean
    XNH_CTF_ALPHA_LOW? Known: XNH_CTF_ALPHA_HIGH, XNH_CTF_ALPHA_LOW, XNH_CTF_ENVELOPE (section ctf) ...``
    """
    import difflib  # noqa: PLC0415

    known = env_variables()
    close = difflib.get_close_matches(var, known + sorted(OTHER_ENV_VARIABLES), n=3, cutoff=0.75)
    text = f"environment variable {var} is not one of xnh-stream's: ignored."
    if close:
        text += f" Did you mean {' or '.join(close)}?"
    section = next((name for name in SECTIONS if var.startswith(f"XNH_{name.upper()}_")), None)
    if section is not None:
        keys = [k for k in known if k.startswith(f"XNH_{section.upper()}_")]
        text += f" Known: {', '.join(keys)} (section {section})"
    else:
        text += (f" Known: XNH_<SECTION>_<KEY> for every configuration key, sections "
                 f"{', '.join(name.upper() for name in SECTIONS)} (e.g. XNH_CTF_ALPHA_LOW)")
    return (text + f"; not configuration: {', '.join(sorted(OTHER_ENV_VARIABLES))} (tests, CI, the Slurm script); "
            "docs/configuration.md")


def _parse_env(name: str, raw: str) -> Any:
    """Parse an environment value with YAML rules (numbers, true/false, null), naming the variable on error."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"environment variable {name}: cannot parse {raw!r} ({exc})") from exc
