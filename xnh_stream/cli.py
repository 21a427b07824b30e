"""Command line: ``xnh-stream simulate | process | watch | demo | overnight``."""

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
    g.add_argument("--oversample", type=int, default=d.oversample,
                   help="propagate on a grid this many times finer than the voxels (default %(default)s)")


def _simulation_config(a: argparse.Namespace):  # noqa: ANN202
    from .simulate.scan import SimulationConfig

    return SimulationConfig(nx=a.nx, ny=a.ny, n_angles=a.angles, photons=a.photons, energy_kev=a.energy,
                            offset_px=a.offset_px, drift_px=a.drift_px, cor_offset_px=a.cor_offset_px,
                            warp_scale=a.warp_scale, warp_px=a.warp_px, seed=a.seed, oversample=a.oversample)


def _process_config(a: argparse.Namespace) -> ProcessConfig:
    """Defaults < config file < XNH_* environment < command-line flags."""
    flags = {key: getattr(a, key, None) for key in ("delta_beta", "cor", "backend", "fbp_window", "live_binning")}
    flags["flat_pca_components"] = getattr(a, "pca", None)
    if getattr(a, "no_align", False):
        flags["align"] = False
    if getattr(a, "no_envelope", False):
        flags["ctf_envelope"] = False
    return ProcessConfig.layered(a.config, overrides=flags)


def _add_process_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processing (override the config file)")
    g.add_argument("--config", type=Path, help="YAML file of processing options (see docs/configuration.md)")
    g.add_argument("--delta-beta", type=float, help="delta/beta ratio (default: from the sample material)")
    g.add_argument("--cor", type=float, help="rotation axis column, px (default: estimated)")
    g.add_argument("--fbp-window", help="ramp filter window: ram-lak, shepp-logan, cosine, hamming, hann")
    g.add_argument("--pca", type=int, help="dynamic (PCA) flat-field with this many components")
    g.add_argument("--no-align", action="store_true", help="do not register distances (rescale only)")
    g.add_argument("--no-envelope", action="store_true",
                   help="single-material CTF (no sample-envelope pass; see docs/configuration.md)")
    g.add_argument("--live-binning", type=int,
                   help="binning of the live volume (watch/demo; 0 = auto, about 512 columns)")
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
    from .chain.batch import REPORT_NAME, VOLUME_NAME, process_scan

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


def _stream_progress() -> tuple[Callable[[dict], None], Callable[[], None]]:
    """Progress bars per distance (frames received) and for the CTF angles, fed by the stream."""
    bars: dict[str, tqdm] = {}

    def update(state: dict) -> None:
        for n, d in enumerate(state.get("distances", [])):
            name = f"distance {n + 1}"
            if name not in bars:
                bars[name] = tqdm(desc=f"{name:>11}", unit="frame", file=sys.stderr, dynamic_ncols=True)
            bar = bars[name]
            bar.update(d["frames"] - bar.n)
        if "ctf" not in bars:
            bars["ctf"] = tqdm(desc="  CTF final", unit="angle", file=sys.stderr, dynamic_ncols=True)
        bar = bars["ctf"]
        bar.update(state.get("angles_final", 0) - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _start_ray(address: str | None) -> None:
    import ray  # noqa: PLC0415

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        import os  # noqa: PLC0415

        ray.init(num_cpus=min(os.cpu_count() or 2, 8), include_dashboard=False, log_to_driver=False)


def _watch(folder: Path, out: Path, config: ProcessConfig, a: argparse.Namespace) -> int:
    from actors.stream import WatcherSource, run_stream  # noqa: PLC0415

    from .ingest.watch import FolderWatcher  # noqa: PLC0415

    update, close = _stream_progress()
    metrics = _start_metrics(a)  # metrics: the exporter consumes the same progress dictionaries
    consumers = [update] + ([metrics.update] if metrics else [])
    live_page = _start_live(a, folder)  # live page: fed by the stream
    with FolderWatcher(folder, poll_interval_s=a.poll_s, use_inotify=not a.no_inotify) as watcher:
        source = WatcherSource(watcher, n_distances=a.distances, quiet_s=a.quiet_s)
        try:
            result = run_stream(source, folder, out, config, n_distances=a.distances, n_workers=a.workers,
                                n_shards=a.shards, on_progress=lambda state: [f(state) for f in consumers],
                                subscribers=((metrics.scan_complete,) if metrics else ()) + _segment_subscribers(a),
                                poll_interval_s=a.poll_s, timeout_s=a.timeout_s, live_page=live_page)
        finally:
            close()
            if live_page:
                print(f"live page (stopped now): {live_page.url}", file=sys.stderr)
                live_page.close()
            if metrics:
                metrics.close()
        counts = watcher.counters.as_dict()
    c = result.counts
    print(f"journal: {c['received']} frames received, {c['processed']} processed, {c['quarantined']} quarantined, "
          f"{c['duplicates']} duplicate arrivals; files: {counts['complete_files']} complete, "
          f"{counts['quarantined_files']} quarantined, {counts['ignored_files']} ignored, {counts['vanished']} vanished")
    if result.final is None:
        print("scan did not complete: no final volume written (the journal keeps what arrived)")
        return 1
    _summarise(result.final.report)
    print(f"volume:  {out / 'volume.ome.zarr'}\nreport:  {out / 'report.json'}\njournal: {out / 'journal.sqlite'}")
    return 0


def cmd_watch(a: argparse.Namespace) -> int:
    """Watch a beamline folder and process the scan as it is written."""
    config = _process_config(a)
    _start_ray(a.address)
    return _watch(a.folder, a.out, config, a)


def cmd_demo(a: argparse.Namespace) -> int:
    """Write a simulated scan progressively into a folder and stream it through the pipeline on Ray."""
    import threading  # noqa: PLC0415

    from .simulate.stream import stream_scan  # noqa: PLC0415

    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="xnh-demo-"))
    if base.exists() and any(base.iterdir()):
        # a new simulated scan on top of an old one (and its journal) would mix two scans
        from .io.nxtomo import InputError  # noqa: PLC0415

        raise InputError(base, "the demo folder is not empty; give a new --out (or remove this one)")
    scan_dir, out_dir = base / "scan", base / "out"
    scan_dir.mkdir(parents=True, exist_ok=True)
    cfg = _simulation_config(a)
    print(f"simulating a {cfg.nx}x{cfg.ny}-px, {cfg.n_angles}-angle four-distance scan into {scan_dir} "
          f"at {a.fps} frames/s; processing it live into {out_dir}", file=sys.stderr)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            stream_scan(scan_dir, cfg, frames_per_second=a.fps, layout="nxtomo-chunks")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writer = threading.Thread(target=write, name="simulated-detector", daemon=True)
    writer.start()
    config = _process_config(a)
    _start_ray(a.address)
    code = _watch(scan_dir, out_dir, config, a)
    writer.join()
    if errors:
        raise errors[0]
    print(f"scan:    {scan_dir}")
    return code


# --- live page (xnh_stream.live) --------------------------------------------------------------------------
def _add_live_args(p: argparse.ArgumentParser) -> None:
    from .live import DEFAULT_PORT  # noqa: PLC0415

    g = p.add_argument_group("live page (docs/quality.md)")
    g.add_argument("--live-port", type=int, default=DEFAULT_PORT,
                   help="serve the read-only live page on this port; 0 turns it off (default %(default)s)")
    g.add_argument("--live-address", default="127.0.0.1",
                   help="interface of the live page; 0.0.0.0 to show it to other hosts (default %(default)s)")


def _start_live(a: argparse.Namespace, folder: Path):  # noqa: ANN202
    """The live page on ``--live-port`` (None when 0 or when the port is taken)."""
    from .live import LivePage  # noqa: PLC0415

    if not getattr(a, "live_port", 0):
        return None
    if not 0 < a.live_port < 65536:
        raise ConfigError(f"--live-port {a.live_port}: not a port number (1-65535, or 0 for off)")
    try:
        page = LivePage(a.live_address, a.live_port, title=str(folder))
    except OSError as exc:
        log.error("%s; going on without the live page", exc)
        return None
    print(f"live page: {page.url}", file=sys.stderr)
    return page


# --- metrics and the overnight queue ---------------------------------------------------------------------
LIVE_METRICS_PORT = 9108
OVERNIGHT_METRICS_PORT = 9109


def _add_metrics_args(p: argparse.ArgumentParser, port: int) -> None:
    g = p.add_argument_group("Prometheus metrics (docs/metrics.md)")
    g.add_argument("--metrics-port", type=int, default=port,
                   help="serve /metrics on this port; 0 turns it off (default %(default)s)")
    g.add_argument("--metrics-address", default="127.0.0.1",
                   help="interface to listen on; 0.0.0.0 for a Prometheus on another host (default %(default)s)")


def _start_metrics(a: argparse.Namespace):  # noqa: ANN202
    """The pipeline's exporter served on ``--metrics-port`` (None when 0 or when the port is taken)."""
    from .metrics import PipelineMetrics  # noqa: PLC0415

    if not getattr(a, "metrics_port", 0):
        return None
    if not 0 < a.metrics_port < 65536:
        raise ConfigError(f"--metrics-port {a.metrics_port}: not a port number (1-65535, or 0 for off)")
    metrics = PipelineMetrics()
    try:
        port = metrics.serve(a.metrics_port, a.metrics_address)
    except OSError as exc:
        log.error("%s; going on without a metrics endpoint", exc)
        return None
    print(f"metrics: http://{a.metrics_address}:{port}/metrics", file=sys.stderr)
    return metrics


def cmd_overnight(a: argparse.Namespace) -> int:
    """Process every finished scan folder under ROOT with the batch chain, resumably."""
    import time  # noqa: PLC0415

    from .overnight import SUMMARY_NAME, run_overnight  # noqa: PLC0415

    config = _process_config(a)
    metrics = _start_metrics(a)

    def report(name: str, status: str, duration_s: float | None) -> None:
        took = f" in {duration_s:.1f} s" if duration_s is not None else ""
        print(f"{status:>7}  {name}{took}", file=sys.stderr)

    failed = 0
    try:
        while True:
            result = run_overnight(a.root, a.out, config, metrics=metrics, settle_s=a.settle_s, on_scan=report)
            failed = len(result.failed)
            print(f"overnight: {len(result.done)} done, {failed} failed, {len(result.skipped)} skipped "
                  f"(report.json exists), {len(result.waiting)} not finished; account in "
                  f"{Path(a.out) / SUMMARY_NAME}")
            for f in result.failed:
                print(f"FAILED {f['scan']}: {f['error']}")
            if not a.follow:
                break
            time.sleep(a.poll_s)
    except KeyboardInterrupt:
        print("overnight: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if metrics:
            metrics.close()
    return 1 if failed else 0


def _add_stream_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("streaming")
    g.add_argument("--address", help="join this Ray cluster (e.g. auto, host:6379); default: embedded local Ray")
    g.add_argument("--distances", type=int, default=4, help="distances in the scan (default %(default)s)")
    g.add_argument("--workers", type=int, default=2, help="phase-retrieval workers (default %(default)s)")
    g.add_argument("--shards", type=int, default=2, help="reconstruction shards (default %(default)s)")
    g.add_argument("--poll-s", type=float, default=0.5, help="folder polling interval, s (default %(default)s)")
    g.add_argument("--no-inotify", action="store_true",
                   help="poll only (network filesystems: inotify misses writes from other hosts)")
    g.add_argument("--quiet-s", type=float, default=3.0,
                   help="idle time after the last frame before the scan counts as complete (default %(default)s)")
    g.add_argument("--timeout-s", type=float, help="give up after this long without completion")


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

    s = sub.add_parser("watch", help="process a scan live as its frames are written into a folder (Ray)")
    s.add_argument("folder", type=Path, help="scan folder (NXtomo files or chunk files, or ID16A EDF folders)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    _add_stream_args(s)
    _add_process_args(s)
    _add_metrics_args(s, LIVE_METRICS_PORT)
    _add_live_args(s)
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("demo", help="simulate a scan being written and stream it through the pipeline (Ray)")
    s.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    s.add_argument("--fps", type=float, default=200.0, help="simulated detector frame rate (default %(default)s)")
    _add_simulation_args(s)
    _add_stream_args(s)
    _add_process_args(s)
    _add_metrics_args(s, LIVE_METRICS_PORT)
    _add_live_args(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("overnight", help="process every finished scan folder under ROOT with the batch chain; "
                                         "resumable (skips scans whose OUT/<scan>/report.json exists)")
    s.add_argument("root", type=Path, help="folder holding the day's scan folders (searched recursively)")
    s.add_argument("--out", type=Path, required=True, help="output root: OUT/<scan>/ per scan, OUT/overnight.json")
    s.add_argument("--settle-s", type=float, default=60.0,
                   help="a file without end_time counts as finished after this long unchanged (default %(default)s)")
    s.add_argument("--follow", action="store_true", help="keep going: look for newly finished scans every --poll-s")
    s.add_argument("--poll-s", type=float, default=300.0, help="seconds between passes with --follow (default %(default)s)")
    _add_process_args(s)
    _add_metrics_args(s, OVERNIGHT_METRICS_PORT)
    s.set_defaults(func=cmd_overnight)

    # --- segmentation (xnh_stream/segment) ---
    from .segment.commands import add_parsers as _add_segment_parsers  # noqa: PLC0415

    _add_segment_parsers(sub)
    from .stitch.commands import add_parsers as _add_stitch_parsers; _add_stitch_parsers(sub)  # noqa: E702, PLC0415
    for name in ("watch", "demo"):
        _add_segment_args(sub.choices[name])
    return p


# --- segmentation when a watched scan completes (xnh_stream/segment) -------------------------------------
def _add_segment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation (docs/segmentation.md)")
    g.add_argument("--no-segment", action="store_true",
                   help="do not segment OUT/volume.ome.zarr into OUT/segmentation.ome.zarr when the scan completes")
    g.add_argument("--segment-model", type=Path, help="affinity model file (default: the shipped model)")
    g.add_argument("--segment-device", default="auto", help="auto (CUDA when present), cpu or cuda")


def _segment_subscribers(a: argparse.Namespace) -> tuple:
    """A scan_complete subscriber that segments the final volume (none with --no-segment)."""
    if getattr(a, "no_segment", True):
        return ()

    def segment(event: dict) -> None:
        from .segment.pipeline import segment_output  # noqa: PLC0415

        try:
            dst = segment_output(event["out"], a.segment_model, a.segment_device)
            print(f"segmentation: {dst}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - the scan's outputs stand; the failure is reported
            logging.getLogger(__name__).error("segmentation of %s failed: %s", event["out"], exc)
            print(f"segmentation failed: {exc}", file=sys.stderr)

    return (segment,)


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
