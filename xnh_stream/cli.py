"""Command line: ``xnh-stream simulate | process | demo``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from .config import ConfigError, ProcessConfig
from .io.nxtomo import InputError

log = logging.getLogger("xnh_stream")


def _progress_bars() -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A ``progress(done, total, stage)`` callback drawing one tqdm bar per stage, and a closer."""
    bars: dict[str, tqdm] = {}

    def update(done: int, total: int, stage: str) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:>11}", unit="angle", leave=True,
                                     dynamic_ncols=True, file=sys.stderr)
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _add_simulation_args(p: argparse.ArgumentParser) -> None:
    from .simulate.scan import SimulationConfig

    d = SimulationConfig()
    g = p.add_argument_group("simulated scan")
    g.add_argument("--nx", type=int, default=d.nx, help="detector columns (default %(default)s)")
    g.add_argument("--ny", type=int, default=d.ny, help="detector rows (default %(default)s)")
    g.add_argument("--angles", type=int, default=d.n_angles, help="projections per distance (default %(default)s)")
    g.add_argument("--photons", type=float, default=d.photons,
                   help="photons per pixel in a flat frame; sets the noise (default %(default)s)")
    g.add_argument("--energy", type=float, default=d.energy_kev, help="photon energy in keV (default %(default)s)")
    g.add_argument("--offset-px", type=float, default=d.offset_px,
                   help="max lateral offset between distances, px (default %(default)s)")
    g.add_argument("--drift-px", type=float, default=d.drift_px, help="slow drift amplitude, px (default %(default)s)")
    g.add_argument("--cor-offset-px", type=float, default=d.cor_offset_px,
                   help="rotation axis offset from the detector centre, px (default %(default)s)")
    g.add_argument("--warp-scale", type=float, default=d.warp_scale,
                   help="fractional sample shrinkage reached at the end (default %(default)s)")
    g.add_argument("--warp-px", type=float, default=d.warp_px, help="non-rigid warp amplitude, px (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")


def _simulation_config(a: argparse.Namespace):  # noqa: ANN202
    from .simulate.scan import SimulationConfig

    return SimulationConfig(nx=a.nx, ny=a.ny, n_angles=a.angles, photons=a.photons, energy_kev=a.energy,
                            offset_px=a.offset_px, drift_px=a.drift_px, cor_offset_px=a.cor_offset_px,
                            warp_scale=a.warp_scale, warp_px=a.warp_px, seed=a.seed)


def _process_config(a: argparse.Namespace) -> ProcessConfig:
    """Defaults < config file < XNH_* environment < command-line flags."""
    flags = {key: getattr(a, key, None) for key in ("delta_beta", "cor", "backend", "fbp_window")}
    flags["flat_pca_components"] = getattr(a, "pca", None)
    if getattr(a, "no_align", False):
        flags["align"] = False
    return ProcessConfig.layered(a.config, overrides=flags)


def _add_process_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processing (override the config file)")
    g.add_argument("--config", type=Path, help="YAML file of processing options (see docs/configuration.md)")
    g.add_argument("--delta-beta", type=float, help="delta/beta ratio (default: from the sample material)")
    g.add_argument("--cor", type=float, help="rotation axis column, px (default: estimated)")
    g.add_argument("--fbp-window", help="ramp filter window: ram-lak, shepp-logan, cosine, hamming, hann")
    g.add_argument("--pca", type=int, help="dynamic (PCA) flat-field with this many components")
    g.add_argument("--no-align", action="store_true", help="do not register distances (rescale only)")
    g.add_argument("--backend", choices=["numpy", "cupy"], help="array backend (default numpy)")


def cmd_simulate(a: argparse.Namespace) -> int:
    """Write a simulated four-distance scan."""
    from .simulate.scan import simulate_scan

    cfg = _simulation_config(a)
    update, close = _progress_bars()
    try:
        sim = simulate_scan(a.out, cfg, progress=lambda d, t: update(d, t, "simulate"))
    finally:
        close()
    print(f"scan written to {sim.folder}: {', '.join(p.name for p in sim.files)} + {sim.truth_file.name}")
    return 0


def cmd_process(a: argparse.Namespace) -> int:
    """Process a finished scan folder."""
    from .pipeline import REPORT_NAME, VOLUME_NAME, process_scan

    config = _process_config(a)
    update, close = _progress_bars()
    try:
        result = process_scan(a.scan, a.out, config, progress=update)
    finally:
        close()
    _summarise(result.report)
    print(f"volume: {Path(a.out) / VOLUME_NAME}\nreport: {Path(a.out) / REPORT_NAME}")
    return 0


def _summarise(report: dict) -> None:
    fr = report["frames"]
    print(f"frames: {fr['received']} received, {fr['processed']} processed, {fr['quarantined']} quarantined")
    print(f"FSC resolution (half-bit): {report['fsc']['resolution_m'] * 1e9:.0f} nm; "
          f"dose: {report['dose']['gray']:.3g} Gy; centre of rotation {report['cor']['px']:.2f} px "
          f"({report['cor']['method']})")
    for alert in report["alerts"]:
        print(f"ALERT [{alert['severity']}] {alert['name']}: {alert['message']}")


def cmd_demo(a: argparse.Namespace) -> int:
    """Simulate a small scan into a folder and process it."""
    from .pipeline import process_scan
    from .simulate.scan import simulate_scan

    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="xnh-demo-"))
    scan_dir, out_dir = base / "scan", base / "out"
    cfg = _simulation_config(a)
    update, close = _progress_bars()
    try:
        sim = simulate_scan(scan_dir, cfg, progress=lambda d, t: update(d, t, "simulate"))
        result = process_scan(sim.folder, out_dir, _process_config(a), progress=update)
    finally:
        close()
    _summarise(result.report)
    print(f"scan:   {scan_dir}\nvolume: {out_dir / 'volume.ome.zarr'}\nreport: {out_dir / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xnh-stream``."""
    p = argparse.ArgumentParser(prog="xnh-stream", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a simulated four-distance XNH scan (NXtomo) and its ground truth")
    s.add_argument("out", type=Path, help="output folder")
    _add_simulation_args(s)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("process", help="process a finished scan folder into volume.ome.zarr and report.json")
    s.add_argument("scan", type=Path, help="scan folder: one NXtomo file per distance")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    _add_process_args(s)
    s.set_defaults(func=cmd_process)

    s = sub.add_parser("demo", help="simulate a small scan and run the whole chain on it")
    s.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    _add_simulation_args(s)
    _add_process_args(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xnh-stream`` console script."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (InputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
