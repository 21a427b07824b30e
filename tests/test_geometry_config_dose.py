"""Geometry formulas, configuration validation and the Howells dose, against hand calculations."""

from __future__ import annotations

import math

import pytest

from xnh_stream.config import ConfigError, CTFOptions, ProcessConfig
from xnh_stream.physics.dose import dose_gray, fluence_per_frame, mass_attenuation_m2_per_kg
from xnh_stream.physics.geometry import DistanceGeometry, ScanGeometry, wavelength_m


def test_fresnel_scaled_geometry():
    d = DistanceGeometry(z1_m=0.04, z2_m=1.168, pixel_m=3e-6, energy_kev=17.0)
    assert wavelength_m(17.0) == pytest.approx(7.2932e-11, rel=1e-4)
    assert d.magnification == pytest.approx(1.208 / 0.04)
    assert d.propagation_distance_m == pytest.approx(0.04 * 1.168 / 1.208)
    assert d.effective_pixel_m == pytest.approx(3e-6 * 0.04 / 1.208)
    assert d.fresnel_number == pytest.approx(d.effective_pixel_m**2 / (7.2932e-11 * d.propagation_distance_m),
                                             rel=1e-4)
    far = DistanceGeometry(0.05, 1.158, 3e-6, 17.0)
    scan = ScanGeometry((far, d))
    assert scan.reference == 1 and scan.voxel_m == d.effective_pixel_m
    assert scan.scale_to_reference(0) == pytest.approx(0.05 / 0.04)
    with pytest.raises(ValueError, match="one energy"):
        ScanGeometry((d, DistanceGeometry(0.05, 1.158, 3e-6, 18.0)))
    with pytest.raises(ValueError, match="z1_m"):
        DistanceGeometry(-1, 1, 1e-6, 17)


def test_config_names_bad_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*'ctf.alpha'"):
        ProcessConfig.from_mapping({"ctf": {"alpha": 1}})
    with pytest.raises(ConfigError, match="unknown config section.*'retrieval'"):
        ProcessConfig.from_mapping({"retrieval": {"alpha_low": 1}})
    with pytest.raises(ConfigError, match="unknown config key.*'phase.alpha_low'"):
        ProcessConfig.from_mapping({"phase": {"alpha_low": 1}})
    with pytest.raises(ConfigError, match="phase.method .*'tie' .known: paganin, ctf, ctf-two-material"):
        ProcessConfig.from_mapping({"phase": {"method": "tie"}})
    with pytest.raises(ConfigError, match="'fbp_window' is not a section"):
        ProcessConfig.from_mapping({"fbp_window": "hann"})  # the flat keys of earlier versions are named
    with pytest.raises(ConfigError, match="fbp.window"):
        ProcessConfig.from_mapping({"fbp": {"window": "boxcar"}})
    with pytest.raises(ConfigError, match="stream.phase_pad"):
        ProcessConfig.from_mapping({"stream": {"phase_pad": 0.5}})  # padding cannot crop
    with pytest.raises(ConfigError, match="alignment.enabled"):
        ProcessConfig.from_mapping({"alignment": {"enabled": "yes"}})
    f = tmp_path / "c.yaml"
    f.write_text("sample:\n  delta_beta: 250\nfbp:\n  window: hann\nalignment:\n  angles: 12\n")
    c = ProcessConfig.from_file(f)
    assert (c.sample.delta_beta, c.fbp.window, c.alignment.angles) == (250.0, "hann", 12)
    assert c.ctf.alpha_low == CTFOptions().alpha_low == "auto"  # untouched sections keep their defaults
    f.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        ProcessConfig.from_file(f)


def test_howells_dose_by_hand():
    """D = (mu/rho) * Phi * E, checked with numbers; fluence scales with M^2 for the same flat counts."""
    mu_rho = mass_attenuation_m2_per_kg("H2O", 1.0, 17.0)
    assert 0.05 < mu_rho < 0.15  # water photo-absorption at 17 keV is ~0.1 m^2/kg (~1 cm^2/g)
    phi = fluence_per_frame(10100.0, 100.0, gain=2.0, efficiency=0.5, effective_pixel_m=100e-9)
    assert phi == pytest.approx(10000.0 / 1.0 / (100e-9) ** 2)
    assert dose_gray(mu_rho, phi, 17.0) == pytest.approx(mu_rho * phi * 17.0 * 1.602176634e-16)
    assert fluence_per_frame(10100, 100, 1, 1, 50e-9) == pytest.approx(4 * fluence_per_frame(10100, 100, 1, 1, 100e-9))
    with pytest.raises(ValueError):
        fluence_per_frame(1, 0, gain=1, efficiency=1.5, effective_pixel_m=1e-7)
    assert math.isfinite(dose_gray(mu_rho, 0.0, 17.0))


def test_config_layers_file_env_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sample:\n  delta_beta: 250\nfbp:\n  window: hann\nalignment:\n  angles: 12\n")
    env = {"XNH_SAMPLE_DELTA_BETA": "300", "XNH_ALIGNMENT_ENABLED": "false", "XNH_SOMETHING_ELSE": "x",
           "XNH_REQUIRE_CHROMIUM": "1", "PATH": "/bin"}
    c = ProcessConfig.layered(f, env=env, overrides={"fbp.window": "cosine", "fbp.cor": None})
    assert (c.sample.delta_beta, c.alignment.enabled, c.fbp.window, c.alignment.angles) == (300.0, False, "cosine", 12)
    with pytest.raises(ConfigError, match="alignment.enabled"):
        ProcessConfig.layered(env={"XNH_ALIGNMENT_ENABLED": "maybe"})
    assert c.replace(**{"fbp.cor": 12.5}).fbp.cor == 12.5 and c.fbp.cor is None


def test_unknown_xnh_variables_are_warned_about_with_the_known_ones(caplog):
    """A typo in an XNH_* variable was ignored silently; it is named with the nearest known names, those of
    its section (or the sections) and the test switches; config keys and the test switches are not warned."""
    from xnh_stream.config import OTHER_ENV_VARIABLES, env_variables, unknown_env_variables

    env = {"XNH_CTF_ALPHA_LOWW": "0.2", "XNH_SOMETHING_ELSE": "x", "XNH_CTF_ALPHA_LOW": "0.2",
           "XNH_REQUIRE_CHROMIUM": "1", "XNH_CRASH_AT": "", "XNH_ARTIFACTS": "/tmp", "XNH_REQUIRE_PROMETHEUS": "1",
           "PATH": "/bin"}
    with caplog.at_level("WARNING", logger="xnh_stream.config"):
        c = ProcessConfig.layered(env=env)
    assert c.ctf.alpha_low == 0.2
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    typo, other = sorted(warned)
    assert "XNH_CTF_ALPHA_LOWW" in typo and "ignored" in typo and "Did you mean XNH_CTF_ALPHA_LOW" in typo
    assert "XNH_CTF_ALPHA_HIGH, XNH_CTF_ALPHA_LOW, XNH_CTF_ENVELOPE" in typo and "XNH_CRASH_AT" in typo
    assert "XNH_SOMETHING_ELSE" in other and "SAMPLE, FLATFIELD" in other and "XNH_REQUIRE_PROMETHEUS" in other
    assert unknown_env_variables(env) == ["XNH_CTF_ALPHA_LOWW", "XNH_SOMETHING_ELSE"]
    assert "XNH_SAMPLE_DELTA_BETA" in env_variables() and not set(OTHER_ENV_VARIABLES) & set(env_variables())


def test_every_option_is_documented_with_its_default():
    """docs/configuration.md's YAML block lists every key of every section with the default the code has
    (the paddings and the live cadence included), and nothing else."""
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    documented = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    defaults = ProcessConfig().to_dict()
    assert set(documented) == set(defaults)
    for section, values in defaults.items():
        assert set(documented[section]) == set(values), section
        for key, value in values.items():
            doc = documented[section][key]
            if isinstance(value, float) and isinstance(doc, str):
                doc = float(doc)  # YAML 1.1 reads 1.0e8 as a string
            assert doc == value, f"{section}.{key}: documented {doc!r}, default {value!r}"


def test_the_paddings_and_the_live_cadence_are_options():
    """The final pass's CTF padding, the registration's Paganin padding and the live refresh cadence are
    configuration keys (YAML, XNH_* variables), with the values the code had as constants, and checked."""
    c = ProcessConfig()
    assert (c.ctf.phase_pad, c.alignment.paganin_pad, c.stream.phase_pad) == (2.0, 1.5, 1.25)
    assert (c.stream.quality_every_s, c.stream.binned_fsc_first, c.stream.binned_fsc_growth) == (5.0, 16, 2.0)
    env = {"XNH_CTF_PHASE_PAD": "1.5", "XNH_ALIGNMENT_PAGANIN_PAD": "2", "XNH_STREAM_QUALITY_EVERY_S": "0.5",
           "XNH_STREAM_BINNED_FSC_FIRST": "32", "XNH_STREAM_BINNED_FSC_GROWTH": "1.5"}
    c = ProcessConfig.layered(env=env)
    assert (c.ctf.phase_pad, c.alignment.paganin_pad, c.stream.quality_every_s) == (1.5, 2.0, 0.5)
    assert (c.stream.binned_fsc_first, c.stream.binned_fsc_growth) == (32, 1.5)
    for key, bad in (("ctf.phase_pad", 0.5), ("alignment.paganin_pad", 0.9), ("stream.quality_every_s", 0.0),
                     ("stream.binned_fsc_first", 0), ("stream.binned_fsc_growth", 1.0)):
        with pytest.raises(ConfigError, match=key):
            ProcessConfig.from_mapping({key: bad})


def test_the_processor_pads_as_the_configuration_says():
    """AngleProcessor pads ctf.phase_pad unless told otherwise (the stream gives stream.phase_pad)."""
    from xnh_stream.chain.steps import AngleProcessor

    geo = ScanGeometry((DistanceGeometry(z1_m=0.0125, z2_m=1.2, pixel_m=3e-6, energy_kev=17.0),))
    assert AngleProcessor(geo, (16, 16), 100.0, ProcessConfig()).pad == 2.0
    cfg = ProcessConfig.from_mapping({"ctf.phase_pad": 1.5})
    assert AngleProcessor(geo, (16, 16), 100.0, cfg).pad == 1.5
    assert AngleProcessor(geo, (16, 16), 100.0, cfg, pad=1.25).pad == 1.25


def test_the_streams_pacing_is_a_configuration_key():
    """The live driver's pacing (StreamOptions) has one home, the stream section: a field left None takes its key;
    the layout stays the command's flags."""
    from xnh_stream.live.driver import StreamOptions

    c = ProcessConfig.layered(env={"XNH_STREAM_MAX_IN_FLIGHT": "6", "XNH_STREAM_PROGRESS_EVERY_S": "2",
                                   "XNH_STREAM_LIVE_RESULT_MAX_MIB": "16"})
    opt = StreamOptions(n_workers=3, restart_check_s=0.25).resolved(c.stream)
    assert (opt.max_in_flight, opt.progress_every_s, opt.restart_check_s) == (6, 2.0, 0.25)
    assert (opt.quality_every_s, opt.live_result_max_bytes) == (5.0, 16 << 20)
    defaults = StreamOptions(n_workers=3).resolved(ProcessConfig().stream)
    assert (defaults.max_in_flight, defaults.restart_check_s, defaults.live_result_max_bytes) == (6, 1.0, 1 << 30)
    assert StreamOptions(max_in_flight=1).resolved(ProcessConfig().stream).max_in_flight == 1
    with pytest.raises(ConfigError, match="stream.restart_check_s"):
        ProcessConfig.from_mapping({"stream.restart_check_s": 0})
