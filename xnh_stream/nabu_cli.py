"""The command line's part for ESRF's nabu and for files without z1: ``xnh-stream nabu-config``, the
configurations that ``simulate`` and ``convert`` write beside their files, and ``--z1``.

``xnh-stream nabu-config SCAN`` writes ``nabu_<distance>.conf`` for every NXtomo distance file of SCAN (a scan
folder or one file; :mod:`xnh_stream.io.nabu_config` says what nabu reads and what the file adds) and prints
the command that runs nabu on each. ``--z1`` (:mod:`xnh_stream.io.z1`) supplies the focus-to-sample distance of
files that do not record it (nxtomomill's conversions of EDF scans), on ``process``, ``watch``, ``convert`` and
``nabu-config``.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .config import ConfigError, ProcessConfig

log = logging.getLogger(__name__)

#: File suffixes of NXtomo distance files (as the scan reader's).
NXTOMO_SUFFIXES = (".nx", ".nxs", ".h5", ".hdf5")


# --------------------------------------------------------------------------------------------------- --z1
def _z1_value(text: str) -> str:
    """argparse type of ``--z1``: one ``NAME=METRES`` or ``METRES`` (checked here, kept as given)."""
    from .io.z1 import parse_z1  # noqa: PLC0415

    try:
        parse_z1([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_z1_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--z1`` to a command that reads scan files."""
    p.add_argument("--z1", action="append", type=_z1_value, metavar="NAME=METRES",
                   help="focus-to-sample distance z1 in metres of a distance whose files do not record it "
                        "(nxtomomill's conversions of EDF scans; EDF folders without xnh.yaml); NAME: the file's "
                        "name without suffix, or the distance folder's name. Repeat it, one per distance; "
                        "METRES alone for a one-distance scan. A file's own z1 always wins")


def supplying_z1_of(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with its ``--z1`` values installed for every reader (:func:`xnh_stream.io.z1.supplying_z1`).

    Raises
    ------
    ConfigError
        For ``--z1`` values that contradict each other (a name twice, two bare values).
    """

    @functools.wraps(func)
    def run(a: argparse.Namespace) -> int:
        from .io.z1 import parse_z1, supplying_z1  # noqa: PLC0415

        try:
            table = parse_z1(getattr(a, "z1", None))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        with supplying_z1(table):
            return func(a)

    return run


# ------------------------------------------------------------------------------------------- nabu configs
def sample_delta_beta(config: ProcessConfig, energy_kev: float) -> float:
    """delta/beta as ``process`` takes it: ``sample.delta_beta``, else the sample material's at the energy."""
    if config.sample.delta_beta:
        return float(config.sample.delta_beta)
    from .chain.final import delta_beta_of  # noqa: PLC0415 - xraydb's tables, only here

    return delta_beta_of(config.sample.formula, config.sample.density, energy_kev)


def write_configs(files: Iterable[Path], folder: Path | None = None, config: ProcessConfig | None = None,
                  method: str = "CTF") -> list:
    """Write a nabu configuration for each NXtomo distance file
    (:func:`~xnh_stream.io.nabu_config.write_nabu_config`), with the geometry our reader reads and the processing
    options of ``config`` (delta/beta, CTF regularisation, ramp window, padding).

    Parameters
    ----------
    files : iterable of Path
        NXtomo distance files.
    folder : Path, optional
        Where the configurations go (default: beside each file).
    config : ProcessConfig, optional
        Default: the defaults with the ``XNH_*`` variables.
    method : {"CTF", "Paganin"}
        nabu's phase retrieval.

    Returns
    -------
    list of NabuConfig

    Raises
    ------
    InputError
        For a file our reader refuses (e.g. without z1: give ``--z1``).
    """
    from .io.nabu_config import write_nabu_config  # noqa: PLC0415
    from .io.nxtomo import read_nxtomo  # noqa: PLC0415

    config = config or ProcessConfig.layered()
    out = []
    for f in files:
        scan = read_nxtomo(f)
        delta_beta = sample_delta_beta(config, scan.geometry.energy_kev)
        # one distance, one material: our CTF's alpha_low is relative to 2 K (beta/delta)^2 (steps.py), K = 1
        out.append(write_nabu_config(f, scan.geometry, delta_beta, folder, method=method, entry=scan.entry,
                                     fbp_window=config.fbp.window, fbp_padding=config.fbp.padding,
                                     alpha_low=config.ctf.alpha_low_for(False) * 2 / delta_beta**2,
                                     alpha_high=config.ctf.alpha_high))
    return out


def announce(configs: Sequence) -> None:
    """Print where the configurations are and how to run nabu (one line each)."""
    from .io.nabu_config import describe  # noqa: PLC0415

    for line in describe(configs):
        print(f"nabu configuration {line}")


def distance_files(scan: Path) -> list[Path]:
    """The NXtomo distance files of a scan folder (or the one file given); files without an NXtomo entry
    (``truth.h5``, nabu's own outputs) are left out, sub-folders (chunk series, EDF folders) named in a warning.

    Raises
    ------
    InputError
        When ``scan`` holds no NXtomo distance file, or one cannot be read.
    """
    from .io.nxtomo import NOT_NXTOMO, InputError, read_nxtomo  # noqa: PLC0415 - h5py, only here

    scan = Path(scan)
    if scan.is_file():
        return [scan]
    if not scan.is_dir():
        raise InputError(scan, "does not exist (expected a scan folder of NXtomo files, or one NXtomo file)")
    files = []
    for f in sorted(scan.iterdir()):
        if f.is_dir():
            if not f.name.startswith(".") and f.name != "nabu":
                log.warning("%s: skipped: nabu reads one NXtomo file per distance (convert an EDF folder with "
                            "'xnh-stream convert'; a folder of chunk files is read by process and watch only)", f)
            continue
        if f.suffix.lower() not in NXTOMO_SUFFIXES or f.name.startswith("."):
            continue
        try:
            read_nxtomo(f)
        except InputError as exc:
            if exc.problem.startswith(NOT_NXTOMO):
                continue
            raise
        files.append(f)
    if not files:
        raise InputError(scan, "holds no NXtomo distance file (.nx, .nxs, .h5, .hdf5)")
    return files


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``nabu-config``."""
    s = sub.add_parser("nabu-config", help="write a nabu configuration per distance file (the cone-beam geometry "
                                           "nabu does not read from NXtomo: z1, magnification, D) and print "
                                           "the nabu command")
    s.add_argument("scan", type=Path, help="scan folder of NXtomo files (one per distance), or one NXtomo file")
    s.add_argument("--out", type=Path, help="folder for nabu_<distance>.conf (default: beside the files); nabu "
                                            "writes into OUT/nabu/")
    s.add_argument("--method", choices=("ctf", "paganin"), default="ctf",
                   help="nabu's single-distance phase retrieval (default %(default)s)")
    s.add_argument("--config", type=Path, help="YAML file of processing options (delta/beta or the sample "
                                               "material, the ramp window)")
    s.add_argument("--delta-beta", type=float, help="delta/beta (default: from the sample material)")
    add_z1_arg(s)
    s.set_defaults(func=supplying_z1_of(cmd_nabu_config))


def cmd_nabu_config(a: argparse.Namespace) -> int:
    """Write the nabu configurations of a scan and print how to run nabu."""
    config = ProcessConfig.layered(a.config, overrides={"sample.delta_beta": a.delta_beta})
    method = {"ctf": "CTF", "paganin": "Paganin"}[a.method]
    configs = write_configs(distance_files(a.scan), a.out, config, method=method)
    announce(configs)
    return 0
