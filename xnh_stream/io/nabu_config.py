"""nabu configuration files for our NXtomo distance files: ESRF's nabu reconstructs one distance as we do.

What nabu (2026.1) reads from an NXtomo file, through tomoscan's ``NXtomoScan``:

- the pixel: ``sample/x_pixel_size`` (tomoscan's ``pixel_size`` = ``sample_x_pixel_size``; the detector
  pixel when absent) -- our files state ``p / M``, the voxel, so nabu's FBP and its Paganin use the right pixel;
- the propagation distance of its phase retrieval: ``instrument/detector/distance`` (tomoscan's
  ``sample_detector_distance``), i.e. z2, the sample-to-detector distance (1.2 m at ID16A). nabu reads neither
  ``instrument/source/distance`` (z1) nor ``sample/propagation_distance`` (D): run as it comes, its Paganin
  and its CTF take D = z2 instead of ``z1 z2 / (z1 + z2)`` (a few mm), hundreds of times too long;
- the energy ``instrument/beam/incident_energy``, the frames, keys and angles, ``field_of_view``.

The cone-beam (magnified) geometry reaches nabu's phase retrieval only through its configuration file:

- CTF: ``[phase] ctf_geometry = z1_v=z1; z1_h=z1; detec_pixel_size=p; magnification=True``. nabu then takes
  ``M = (z1 + z2) / z1``, the pixel ``p / M`` and ``D = z1 z2 / (z1 + z2)`` (``nabu.preproc.ctf.GeoPars``;
  ``detec_pixel_size`` must be the *detector* pixel: left out, nabu divides the sample pixel by M again);
- Paganin has no geometry option: ``[dataset] overwrite_metadata = distance = D m`` gives it the effective
  (Fresnel-scaled) distance, with the sample pixel ``p / M`` it already reads.

Sign and scale: nabu's CTF returns the phase ``phi = -k int(delta dz)`` (negative for matter) and its Paganin
``-ln`` of the filtered intensity, ``(2k / (delta/beta)) int(delta dz)``; its FBP divides by the pixel in cm.
``overwrite_metadata = scale_factor = ... dimensionless`` (``-100 / k`` for CTF, ``100 (delta/beta) / (2k)``
for Paganin) makes the slice ``delta``, as our volume. nabu's slice is ours mirrored top-bottom (its image
row axis runs the other way).

nabu's FBP runs on a GPU (CUDA), or on CPU through OpenCL (pyopencl, an OpenCL platform such as pocl, and
pyvkfft); its flat-field, phase retrieval and rotation-axis estimation run on CPU with numpy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..physics.geometry import DistanceGeometry

__all__ = ["METHODS", "NabuConfig", "describe", "nabu_config_text", "nabu_scale_factor", "write_nabu_config"]

#: Phase retrieval methods a configuration can ask nabu for (nabu's spelling).
METHODS = ("CTF", "Paganin")
#: The folder, beside the configuration files, that nabu writes its reconstructions into.
OUTPUT_FOLDER = "nabu"
#: Our ramp windows and paddings in nabu's spelling (``nabu.pipeline.params``).
_FILTERS = {"ram-lak": "ramlak", "shepp-logan": "shepp-logan", "cosine": "cosine", "hamming": "hamming",
            "hann": "hann"}
_PADDINGS = {"edge": "edges", "zeros": "zeros"}


@dataclass(frozen=True)
class NabuConfig:
    """One nabu configuration file written for one distance file.

    Attributes
    ----------
    path : Path
        The configuration file (``nabu_<distance>.conf``).
    scan_file : Path
        The NXtomo file it reconstructs.
    output : Path
        The folder nabu writes into (``<stem>_rec.hdf5``).
    method : str
        ``CTF`` or ``Paganin``.
    geometry : DistanceGeometry
        The distance's geometry, as our reader reads it.
    """

    path: Path
    scan_file: Path
    output: Path
    method: str
    geometry: DistanceGeometry

    @property
    def command(self) -> str:
        """The command line that runs nabu on it (the whole volume; ``--slice middle`` for one slice)."""
        return f"nabu {_quote(self.path)}"


def _quote(path: Path) -> str:
    text = str(path)
    return f"'{text}'" if any(c in text for c in " \t'\"$&;|<>()*?[]") else text


def nabu_scale_factor(geometry: DistanceGeometry, method: str, delta_beta: float) -> float:
    """The factor that turns nabu's slice into ``delta`` (module docstring): ``-100 / k`` for CTF,
    ``100 (delta/beta) / (2 k)`` for Paganin, ``k = 2 pi / lambda`` in 1/m (nabu's slice is per cm)."""
    k = 2.0 * math.pi / geometry.wavelength_m
    if method == "CTF":
        return -100.0 / k
    if method == "Paganin":
        return 100.0 * delta_beta / (2.0 * k)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def nabu_config_text(scan_file: str | Path, geometry: DistanceGeometry, delta_beta: float, output: str | Path,
                     method: str = "CTF", entry: str | None = None, cor_px: float | None = None,
                     fbp_window: str = "shepp-logan", fbp_padding: str = "edge",
                     alpha_low: float = 1e-5, alpha_high: float = 0.2) -> str:
    """The text of a nabu configuration file that reconstructs one distance file with its true geometry.

    Parameters
    ----------
    scan_file : str or Path
        The NXtomo file (written as an absolute path).
    geometry : DistanceGeometry
        Its geometry (z1, z2, detector pixel, energy), as :func:`~xnh_stream.io.nxtomo.read_nxtomo` reads it.
    delta_beta : float
        delta/beta of the single-material phase retrieval.
    output : str or Path
        The folder nabu writes into (must exist when nabu starts).
    method : {"CTF", "Paganin"}
        nabu's phase retrieval.
    entry : str, optional
        The NXtomo entry (nabu's default: the first).
    cor_px : float, optional
        Rotation-axis column in this file's detector pixels; None lets nabu estimate it (``sliding-window``).
    fbp_window, fbp_padding : str
        Our ramp window and padding (:class:`~xnh_stream.config.FBPOptions`), in nabu's spelling.
    alpha_low, alpha_high : float
        The CTF's absolute regularisation below and above its first maximum (nabu's ``lim1`` and ``lim2``, added
        to ``2 A^2`` as ours, :func:`~xnh_stream.physics.phase.ctf_filter`); nabu's own defaults unless given.

    Returns
    -------
    str
        The configuration (nabu's INI format, ``#`` comments).

    Raises
    ------
    ValueError
        For an unknown method, window or padding, or a delta/beta that is not positive.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (delta_beta > 0 and math.isfinite(delta_beta)):
        raise ValueError(f"delta/beta must be positive, got {delta_beta}")
    if not (alpha_low > 0 and alpha_high > 0):
        raise ValueError(f"the CTF regularisation must be positive, got {alpha_low} / {alpha_high}")
    if fbp_window not in _FILTERS or fbp_padding not in _PADDINGS:
        raise ValueError(f"window {fbp_window!r} / padding {fbp_padding!r}: expected one of {sorted(_FILTERS)} / "
                         f"{sorted(_PADDINGS)}")
    g = geometry
    scan_file, output = Path(os.path.abspath(scan_file)), Path(os.path.abspath(output))
    scale = nabu_scale_factor(g, method, delta_beta)
    overwrite = f"scale_factor = {scale!r} dimensionless"
    if method == "Paganin":
        overwrite = f"distance = {g.propagation_distance_m!r} m; {overwrite}"
    lines = [
        f"# nabu configuration for {scan_file.name}, written by xnh-stream (xnh-stream nabu-config).",
        "# Run: nabu THIS_FILE  (one slice: nabu THIS_FILE --slice middle). nabu's FBP needs a GPU, or",
        "# pyopencl with an OpenCL platform and pyvkfft on CPU.",
        "#",
        f"# Geometry: z1 {g.z1_m:.6g} m (focus to sample), z2 {g.z2_m:.6g} m (sample to detector), detector pixel",
        f"# {g.pixel_m:.6g} m, magnification M {g.magnification:.6g}, sample pixel p/M {g.effective_pixel_m:.6g} m,",
        f"# propagation distance D = z1 z2 / (z1 + z2) {g.propagation_distance_m:.6g} m, {g.energy_kev:g} keV.",
        "# nabu reads the sample pixel p/M and z2 from the file, but not z1 nor D: without the lines below its",
        "# phase retrieval would propagate over z2. The slice holds delta (scale_factor), as xnh-stream's volume;",
        "# mirrored top-bottom with respect to it.",
        "",
        "[dataset]",
        f"location = {scan_file}",
    ]
    if entry:
        lines.append(f"hdf5_entry = {entry}")
    lines += [
        "# scale_factor turns the slice into delta" + ("; distance replaces the z2 nabu's Paganin would use"
                                                       if method == "Paganin" else ""),
        f"overwrite_metadata = {overwrite}",
        "",
        "[preproc]",
        "flatfield = 1",
        # CTF returns the phase itself; Paganin the filtered intensity, whose -log is taken
        f"take_logarithm = {0 if method == 'CTF' else 1}",
        "",
        "[phase]",
        f"method = {method}",
        f"delta_beta = {delta_beta!r}",
    ]
    if method == "CTF":
        lines += [
            "# the cone-beam geometry: z1 (both focus distances), the DETECTOR pixel p, magnification on",
            f"ctf_geometry = z1_v={g.z1_m!r}; z1_h={g.z1_m!r}; detec_pixel_size={g.pixel_m!r}; magnification=True",
            "# the regularisation below / above the first CTF maximum, as xnh-stream's (ctf.alpha_low, alpha_high)",
            f"ctf_advanced_params = length_scale=1e-5; lim1={alpha_low!r}; lim2={alpha_high!r}; normalize_by_mean=True",
        ]
    lines += [
        "",
        "[reconstruction]",
        "method = FBP",
        f"rotation_axis_position = {'sliding-window' if cor_px is None else repr(float(cor_px))}",
        f"fbp_filter_type = {_FILTERS[fbp_window]}",
        f"padding_type = {_PADDINGS[fbp_padding]}",
        "",
        "[output]",
        f"location = {output}",
        "file_format = hdf5",
        "",
    ]
    return "\n".join(lines)


def write_nabu_config(scan_file: str | Path, geometry: DistanceGeometry, delta_beta: float,
                      folder: str | Path | None = None, method: str = "CTF", entry: str | None = None,
                      cor_px: float | None = None, fbp_window: str = "shepp-logan",
                      fbp_padding: str = "edge", alpha_low: float = 1e-5, alpha_high: float = 0.2) -> NabuConfig:
    """Write ``folder/nabu_<stem>.conf`` for one distance file (:func:`nabu_config_text`) and create the folder
    nabu writes into, ``folder/nabu/``.

    Parameters
    ----------
    scan_file : str or Path
        The NXtomo file.
    geometry : DistanceGeometry
        Its geometry.
    delta_beta : float
        delta/beta.
    folder : str or Path, optional
        Where the configuration goes (default: beside the file).
    method, entry, cor_px, fbp_window, fbp_padding, alpha_low, alpha_high :
        See :func:`nabu_config_text`.

    Returns
    -------
    NabuConfig
    """
    scan_file = Path(scan_file)
    folder = Path(folder) if folder is not None else scan_file.parent
    output = folder / OUTPUT_FOLDER
    text = nabu_config_text(scan_file, geometry, delta_beta, output, method=method, entry=entry, cor_px=cor_px,
                            fbp_window=fbp_window, fbp_padding=fbp_padding, alpha_low=alpha_low,
                            alpha_high=alpha_high)
    output.mkdir(parents=True, exist_ok=True)
    path = folder / f"nabu_{scan_file.stem}.conf"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return NabuConfig(path=Path(os.path.abspath(path)), scan_file=Path(os.path.abspath(scan_file)),
                      output=Path(os.path.abspath(output)), method=method, geometry=geometry)


def describe(configs: Iterable[NabuConfig]) -> list[str]:
    """One line per configuration: the file, the method, the geometry and the command that runs nabu on it."""
    return [f"{c.path} ({c.method}, D {c.geometry.propagation_distance_m * 1e3:.4g} mm, pixel "
            f"{c.geometry.effective_pixel_m * 1e9:.4g} nm; output in {c.output}/): {c.command}" for c in configs]
