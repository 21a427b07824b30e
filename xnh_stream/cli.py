"""Command line: ``xnh-stream simulate | convert | process | watch | demo | overnight | segment | ...``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from . import interrupt
from .chain.layout import plural, step_unit
from .config import ConfigError, ProcessConfig
from .nabu_cli import add_z1_arg, supplying_z1_of
from .errors import InputError, redact_text
from .io.names import JOURNAL_NAME, OVERNIGHT_SUMMARY_NAME, REPORT_NAME, VOLUME_NAME, WORK_NAME

if TYPE_CHECKING:
    from tqdm import tqdm

# Imported here: the standard library, yaml and the light modules above. NumPy, h5py, zarr, the chain's
# steps, numba's kernels, Ray, torch, dask and scikit-image are imported by the commands that use them,
# after the checks (:func:`check_before_start`), so that a bad folder, option or configuration is refused
# at once (tests/test_cli.py runs a failing command in a fresh interpreter and lists what it imported).

log = logging.getLogger("xnh_stream")

#: How the command reports progress, set by :func:`main`: bars on a terminal, plain lines otherwise,
#: nothing with ``--quiet``.
_UI = {"quiet": False}


def interactive() -> bool:
    """Progress bars are drawn: stderr is a terminal and ``--quiet`` was not given."""
    return not _UI["quiet"] and sys.stderr.isatty()


class _PlainProgress:
    """Progress as plain lines on stderr (no carriage returns, no colours) where stderr is not a terminal:
    one line per stage each time it passes another 10 % (every ``step`` units when the total is unknown)
    and at its end; nothing with ``--quiet``."""

    def __init__(self, stage: str, unit: str, step: int = 100) -> None:
        self.stage, self.unit, self.step, self.reported = stage.strip(), unit, step, -1

    def update(self, done: int, total: int | None = None) -> None:
        if _UI["quiet"] or done <= 0:
            return
        mark = (10 if done >= total else int(10 * done / total)) if total else done // self.step
        if mark > self.reported:
            self.reported = mark
            of = f"/{total}" if total else ""
            print(f"progress {self.stage}: {done}{of} {plural(self.unit, total or done)}", file=sys.stderr,
                  flush=True)


def _progress_bars(unit: str | None = None) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A ``progress(done, total, stage)`` callback (a tqdm bar per stage on a terminal, plain lines
    otherwise, nothing with ``--quiet``) and a closer.

    Parameters
    ----------
    unit : str, optional
        What every stage counts (``"angle"``, ``"distance"``); by default each stage of the final pass
        counts its own unit of work (:data:`xnh_stream.chain.layout.STEP_UNITS`: distances, angles, batches
        of angles, slabs, levels, boxes).
    """
    from tqdm import tqdm  # noqa: PLC0415

    bars: dict[str, tqdm | _PlainProgress] = {}

    def update(done: int, total: int, stage: str) -> None:
        bar = bars.get(stage)
        if bar is None:
            what = unit or step_unit(stage)
            shown = "{l_bar}{bar}| {n_fmt}/{total_fmt} " + plural(what) + " [{elapsed}<{remaining}, {rate_fmt}]"
            bar = bars[stage] = (tqdm(total=total, desc=f"{stage:>11}", unit=what, bar_format=shown, leave=True,
                                      dynamic_ncols=True, file=sys.stderr) if interactive()
                                 else _PlainProgress(stage, what))
        if isinstance(bar, _PlainProgress):
            bar.update(done, total)
            return
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            if not isinstance(bar, _PlainProgress):
                bar.close()

    return update, close


class _SimulationDefault:
    """The default of a simulation option, read from :class:`~xnh_stream.simulate.scan.SimulationConfig` only
    when the command's parser is used (:class:`_CommandParser`): that module imports the simulator (NumPy,
    SciPy, h5py, xraydb), which the other commands need not load to start or to refuse their input."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self) -> Any:
        """The value (``SimulationConfig().<name>``)."""
        return getattr(_simulation_config_defaults(), self.name)


class _SimulationDefaults:
    """``d.nx`` -> ``_SimulationDefault("nx")``: :class:`~xnh_stream.simulate.scan.SimulationConfig`'s fields
    as deferred defaults."""

    def __getattr__(self, name: str) -> _SimulationDefault:
        if name.startswith("_"):
            raise AttributeError(name)
        return _SimulationDefault(name)


@functools.lru_cache(maxsize=1)
def _simulation_config_defaults() -> Any:
    from .simulate.scan import SimulationConfig  # noqa: PLC0415

    return SimulationConfig()


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command (``xnh-stream process ...``): deferred defaults (:class:`_SimulationDefault`)
    become values when the command is parsed or its usage or help is shown, so that building every command's
    parser imports nothing heavy."""

    def _resolve_defaults(self) -> None:
        for action in self._actions:
            if isinstance(action.default, _SimulationDefault):
                action.default = action.default.resolve()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._resolve_defaults()
        return super().parse_known_args(args, namespace)

    def _parse_known_args(self, *args: Any, **kwargs: Any) -> Any:  # the subcommand's entry in some Pythons
        self._resolve_defaults()
        return super()._parse_known_args(*args, **kwargs)

    def format_usage(self) -> str:
        self._resolve_defaults()
        return super().format_usage()

    def format_help(self) -> str:
        self._resolve_defaults()
        return super().format_help()


def _add_simulation_args(p: argparse.ArgumentParser, analytic: bool | None = None) -> None:
    """Options of the simulated scan; ``analytic`` (default: only for the ``simulate`` command, whose parser's
    ``prog`` ends in ``simulate``) adds the analytic simulator's options (``--workers`` would clash with the
    stream's on ``demo``)."""
    d = _SimulationDefaults()  # read when the command is parsed (the simulator's imports take a second)
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
    if analytic is None:
        analytic = p.prog.rsplit(" ", 1)[-1] == "simulate"
    if not analytic:
        return
    g.add_argument("--range", type=float, choices=(180.0, 360.0), default=d.angular_range_deg,
                   help="angular range of each distance, degrees: 180 or 360 (default %(default)g)")
    g.add_argument("--returns", action=argparse.BooleanOptionalAction, default=True,
                   help="return projections at the end of each distance, every 90 degrees from the end of the "
                        "range back to 0 (default: on)")
    g.add_argument("--id16a", action="store_true",
                   help="the real ID16A distances (pixel Fresnel numbers ~0.004) instead of the default ones scaled "
                        "for small frames; use with frames of 1024 px and more")
    a = p.add_argument_group("analytic simulator (fast, ID16A sizes: shapes with exact projections; docs in "
                             "xnh_stream/simulate/analytic.py)")
    a.add_argument("--analytic", action="store_true",
                   help="write the scan with the analytic simulator (ellipsoids and cylinders) instead of the "
                        "voxel one: for size, memory and speed tests")
    a.add_argument("--layout", choices=("nxtomo", "chunks", "edf"), default="nxtomo",
                   help="one NXtomo file per distance, NXtomo chunk files per distance, or ID16A EDF folders "
                        "(default %(default)s; chunks and edf need --analytic)")
    a.add_argument("--workers", type=int, default=1, help="processes computing frames (default %(default)s)")
    a.add_argument("--chunk-frames", type=int, default=32, help="frames per chunk file (default %(default)s)")
    a.add_argument("--truth", action="store_true",
                   help="also write truth.h5, delta and beta on the reconstruction grid (large: 8 ny nx^2 bytes); "
                        "analytic.json always allows evaluating them on any block")
    a.add_argument("--density", type=float, default=1.0,
                   help="scales the number of shapes, and about the time per frame (default %(default)s)")


def _simulation_config(a: argparse.Namespace):  # noqa: ANN202
    from .simulate.scan import SimulationConfig

    return SimulationConfig(nx=a.nx, ny=a.ny, n_angles=a.angles, photons=a.photons, energy_kev=a.energy,
                            offset_px=a.offset_px, drift_px=a.drift_px, cor_offset_px=a.cor_offset_px,
                            warp_scale=a.warp_scale, warp_px=a.warp_px, seed=a.seed, oversample=a.oversample)


def _process_config(a: argparse.Namespace) -> ProcessConfig:
    """Defaults < config file < XNH_<SECTION>_<KEY> environment < command-line flags (built once per command:
    :func:`check_before_start` builds it, the command takes it)."""
    built = vars(a).get("_process_config")
    if built is not None:
        return built
    flags = {section_key: getattr(a, flag, None) for flag, section_key in (
        ("delta_beta", "sample.delta_beta"), ("cor", "fbp.cor"), ("backend", "compute.backend"),
        ("fbp_window", "fbp.window"), ("live_binning", "stream.live_binning"), ("pca", "flatfield.pca_components"))}
    if getattr(a, "no_align", False):
        flags["alignment.enabled"] = False
    if getattr(a, "no_envelope", False):
        flags["ctf.envelope"] = False
    if getattr(a, "denoise", False):
        flags["denoise.method"] = "noise2inverse"
    a._process_config = ProcessConfig.layered(a.config, overrides=flags)
    return a._process_config


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
    g.add_argument("--denoise", action="store_true",
                   help="also write a self-supervised (Noise2Inverse) denoised copy of the final volume to "
                        "volume.ome.zarr/denoised (denoise.method; docs/denoising.md)")
    g.add_argument("--live-binning", type=int,
                   help="binning of the live volume (watch/demo; 0 = auto, about 512 columns)")
    g.add_argument("--backend", choices=["numpy", "cupy"], help="array backend (default numpy)")


def cmd_simulate(a: argparse.Namespace) -> int:
    """Write a simulated four-distance scan (the voxel simulator, or the analytic one with ``--analytic``)."""
    from dataclasses import replace  # noqa: PLC0415

    from .simulate.scan import SimulationConfig, simulate_scan  # noqa: PLC0415

    cfg = _simulation_config(a)
    span = float(getattr(a, "range", cfg.angular_range_deg))
    returns = tuple(span - 90.0 * i for i in range(int(span // 90) + 1)) if getattr(a, "returns", True) else ()
    cfg = replace(cfg, angular_range_deg=span, return_angles_deg=returns)
    if getattr(a, "id16a", False):
        ref = SimulationConfig.id16a()
        cfg = replace(cfg, z1_m=ref.z1_m, pixel_m=ref.pixel_m, focus_detector_m=ref.focus_detector_m)
    analytic = getattr(a, "analytic", False)
    if not analytic:
        unused = [flag for flag, used in (("--layout", getattr(a, "layout", "nxtomo") != "nxtomo"),
                                          ("--workers", getattr(a, "workers", 1) != 1),
                                          ("--truth", getattr(a, "truth", False)),
                                          ("--density", getattr(a, "density", 1.0) != 1.0)) if used]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: only with --analytic (the voxel simulator writes one NXtomo "
                              "file per distance, in one process, always with truth.h5)")
    elif cfg.warp_scale or cfg.warp_px or cfg.oversample != 1:
        raise ConfigError("--warp-scale, --warp-px and --oversample: the analytic simulator models none of them")
    elif a.workers < 1 or a.chunk_frames < 1 or not a.density >= 0:
        raise ConfigError("--workers and --chunk-frames must be >= 1 and --density >= 0")
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"simulation parameters: {exc}") from exc
    update, close = _progress_bars("frame" if analytic else "angle")  # the analytic writer counts frames
    try:
        if not analytic:
            sim = simulate_scan(a.out, cfg, progress=lambda d, t: update(d, t, "simulate"))
            print(f"scan written to {sim.folder}: {', '.join(p.name for p in sim.files)} + {sim.truth_file.name}")
            _nabu_configs(sim.files)
            return 0
        from .simulate.analytic import make_analytic_phantom, write_analytic_scan  # noqa: PLC0415

        phantom = make_analytic_phantom(cfg, density=a.density)
        scan = write_analytic_scan(a.out, cfg, phantom=phantom, layout=a.layout, workers=a.workers,
                                   chunk_frames=a.chunk_frames, truth=a.truth,
                                   progress=lambda d, t: update(d, t, "frames"))
    finally:
        close()
    extras = [scan.model_file.name] + ([scan.truth_file.name] if scan.truth_file else [])
    print(f"analytic scan ({a.layout}) written to {scan.folder}: {scan.frames_written} frames of "
          f"{cfg.ny} x {cfg.nx} in {scan.elapsed_s:.1f} s ({scan.frames_per_second:.1f} frames/s, "
          f"{a.workers} worker{'s' * (a.workers > 1)}); {', '.join(p.name for p in scan.distance_paths)} + "
          f"{', '.join(extras)}")
    if a.layout == "nxtomo":
        _nabu_configs(scan.distance_paths)
    return 0


def _nabu_configs(files: Sequence[Path]) -> None:
    """nabu configurations beside the distance files of ``simulate`` and ``convert`` (nabu_cli.py)."""
    from .nabu_cli import announce, write_configs  # noqa: PLC0415

    announce(write_configs(files))


#: ``process`` without ``--address`` runs a scan with fewer bytes of files than this in its own process: an
#: embedded Ray costs more than it gives there (default simulated scan, 15 MB: 6.6 s here, 11.8 s on Ray; 256 x
#: 128 x 360 x 4, 103 MB: 26.0 s and 27.4 s; 2 cores).
SMALL_SCAN_BYTES = 64 << 20


def scan_bytes(folder: Path) -> int:
    """Bytes of the files under a scan folder (what ``process`` would read), symbolic links followed."""
    total = 0
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def runs_here(a: argparse.Namespace) -> bool:
    """Whether ``process`` runs its tasks in this process: ``--local``, or a small scan (below
    :data:`SMALL_SCAN_BYTES`) without ``--address`` or ``--ray``."""
    if a.local:
        return True
    if a.address or a.ray:
        return False
    size = scan_bytes(a.scan)
    if size >= SMALL_SCAN_BYTES:
        return False
    if not _UI["quiet"]:
        print(f"{a.scan}: {size / 2**20:.1f} MiB of files, a small scan: its tasks run in this process "
              f"(--ray for an embedded Ray, --address for a cluster)")
    return True


def cmd_process(a: argparse.Namespace) -> int:
    """Process a finished scan folder (the final pass, on an embedded Ray or a cluster; ``--local`` or a small
    scan: here)."""
    from .chain.batch import process_scan

    config = _process_config(a)
    if a.local and (a.ray or a.address):
        raise ConfigError("--local runs here: it excludes --ray and --address")
    executor = None if runs_here(a) else _executor(a, config)
    update, close = _progress_bars()
    try:
        result = process_scan(a.scan, a.out, config, progress=update, executor=executor, layout=_layout(a),
                              replace=a.overwrite)
    finally:
        close()
    if result.already_complete:
        print(f"{a.out}: already complete (the volume checks against its report); nothing recomputed")
    _summarise(result.report)
    print(f"volume: {Path(a.out) / VOLUME_NAME}\nreport: {Path(a.out) / REPORT_NAME}")
    return 0


def _add_layout_args(p: argparse.ArgumentParser) -> None:
    from .chain.layout import ChainLayout  # noqa: PLC0415

    d = ChainLayout()
    g = p.add_argument_group("final pass (how the work is cut; the result changes only by float32 rounding)")
    g.add_argument("--angle-batch", type=int, default=d.angle_batch,
                   help="angles per phase-retrieval task (default %(default)s)")
    g.add_argument("--slab-rows", type=int, default=d.slab_rows,
                   help="rows per back-projection task and volume chunk; 0 = as many as fit --task-memory-mib "
                        "(default %(default)s)")
    g.add_argument("--task-memory-mib", type=int, default=d.task_memory_bytes >> 20,
                   help="memory one task may use for its arrays, MiB (default %(default)s)")
    g.add_argument("--keep-work", action="store_true",
                   help="keep OUT/work (projections, markers) after the outputs are written")


def _layout(a: argparse.Namespace):  # noqa: ANN202
    from .chain.layout import ChainLayout  # noqa: PLC0415

    return ChainLayout(angle_batch=a.angle_batch, slab_rows=a.slab_rows, task_memory_bytes=a.task_memory_mib << 20,
                       keep_work=a.keep_work)


def _executor(a: argparse.Namespace, config: ProcessConfig):  # noqa: ANN202
    """The chain's executor on the runtime (an embedded Ray, or the cluster at ``--address``)."""
    from .runtime import runtime_of  # noqa: PLC0415

    return runtime_of(a, f"{a.command} without --local" if hasattr(a, "local") else a.command).executor(
        a.address, config)


def _summarise(report) -> None:  # noqa: ANN001
    fr = report.frames
    print(f"frames: {fr.received} received, {fr.processed} processed, {fr.quarantined} quarantined")
    res = report.fsc.resolution_m
    print(f"FSC resolution (half-bit): {res * 1e9:.0f} nm; " if res else "FSC resolution: not measured; ", end="")
    print(f"dose: {report.dose.gray:.3g} Gy; centre of rotation {report.cor.px:.2f} px ({report.cor.method})")
    if report.completion is not None:
        print(f"scan complete: {report.completion.reason}")
    for alert in report.alerts:
        print(f"ALERT [{alert['severity']}] {alert['name']}: {alert['message']}")


def _stream_progress() -> tuple[Callable[[object], None], Callable[[], None]]:
    """Progress per distance (frames received) and for the CTF angles, fed by the stream (a StreamProgress):
    tqdm bars on a terminal, plain lines otherwise, nothing with ``--quiet``."""
    from tqdm import tqdm  # noqa: PLC0415

    bars: dict[str, tqdm | _PlainProgress] = {}

    def bar_for(name: str, unit: str) -> tqdm | _PlainProgress:
        if name not in bars:
            bars[name] = (tqdm(desc=f"{name:>11}", unit=unit, file=sys.stderr, dynamic_ncols=True)
                          if interactive() else _PlainProgress(name, unit))
        return bars[name]

    def advance(bar: tqdm | _PlainProgress, value: int, total: int | None = None) -> None:
        if isinstance(bar, _PlainProgress):
            bar.update(value, total)
        else:
            bar.update(value - bar.n)

    def update(p) -> None:  # noqa: ANN001 - a StreamProgress
        for n, d in enumerate(p.distances):
            advance(bar_for(f"distance {n + 1}", "frame"), d.frames)
        bar = bar_for("  CTF final", "angle")
        advance(bar, p.angles_final)
        if p.final_step and not isinstance(bar, _PlainProgress):
            bar.set_postfix_str(f"final pass: {p.final_step}", refresh=False)

    def close() -> None:
        for bar in bars.values():
            if not isinstance(bar, _PlainProgress):
                bar.close()

    return update, close


def _watch(folder: Path, out: Path, config: ProcessConfig, a: argparse.Namespace) -> int:
    """The live stream of ``folder`` (:class:`~xnh_stream.live.driver.LiveDriver`), its workers on the
    runtime's cluster, or in this process with ``--local``."""
    from .ingest.watch import FolderWatcher  # noqa: PLC0415
    from .live.driver import LiveDriver, StreamOptions  # noqa: PLC0415
    from .live.runtime import InProcessRuntime  # noqa: PLC0415
    from .live.sources import WatcherSource  # noqa: PLC0415
    from .runtime import runtime_of  # noqa: PLC0415

    update, close = _stream_progress()
    metrics = _start_metrics(a)  # metrics: the exporter consumes the same progress reports
    consumers = [update] + ([metrics.update] if metrics else [])
    live_page = _start_live(a, folder)  # live page: fed by the stream
    options = StreamOptions(n_distances=a.distances, n_workers=a.workers, n_shards=a.shards,
                            poll_interval_s=a.poll_s, timeout_s=a.timeout_s, layout=_layout(a))
    workers = InProcessRuntime() if a.local else runtime_of(a, a.command).live()
    with FolderWatcher(folder, poll_interval_s=a.poll_s, use_inotify=not a.no_inotify, stall_s=a.stall_s) as watcher:
        try:
            result = LiveDriver(
                WatcherSource(watcher, n_distances=options.n_distances, quiet_s=a.quiet_s), folder, out, config,
                options, on_progress=lambda p: [f(p) for f in consumers],
                subscribers=((metrics.scan_complete,) if metrics else ()) + _segment_subscribers(a),
                live_page=live_page, runtime=workers).run()
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
          f"{counts['quarantined_files']} quarantined, {counts['duplicate_files']} copies, "
          f"{counts['ignored_files']} ignored, {counts['vanished']} vanished")
    if result.final is None:
        print("scan did not complete: no final volume written (the journal keeps what arrived)")
        return 1
    _summarise(result.final.report)
    print(f"volume:  {out / VOLUME_NAME}\nreport:  {out / REPORT_NAME}\njournal: {out / JOURNAL_NAME}")
    return 0


def cmd_watch(a: argparse.Namespace) -> int:
    """Watch a beamline folder and process the scan as it is written."""
    config = _process_config(a)
    _stream_runtime(a, config)
    return _watch(a.folder, a.out, config, a)


def _stream_runtime(a: argparse.Namespace, config: ProcessConfig) -> None:
    """Start (or join) the runtime the live stream's workers and its final pass run on; none with ``--local``."""
    if a.local and a.address:
        raise ConfigError("--local runs here: it excludes --address")
    if not a.local:
        _executor(a, config)


def cmd_demo(a: argparse.Namespace) -> int:
    """Write a simulated scan progressively into a folder and stream it through the pipeline on Ray."""
    import threading  # noqa: PLC0415

    from .simulate.stream import stream_scan  # noqa: PLC0415

    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="xnh-demo-"))
    if base.exists() and _entries(base):  # hidden files aside: the output lock's own file is there already
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
    _stream_runtime(a, config)
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
    """Process every finished scan folder under ROOT with the final pass, resumably; print every scan
    attempt's outcome (done, flagged, failed, skipped, waiting) with its reason; exit 1 when a scan failed or
    was flagged."""
    import functools  # noqa: PLC0415
    import time  # noqa: PLC0415

    from .chain.batch import process_scan  # noqa: PLC0415
    from .overnight import SUMMARY_NAME, run_overnight  # noqa: PLC0415

    config = _process_config(a)
    factory = stitch_runner = None
    if not a.local:
        from .runtime import runtime_of  # noqa: PLC0415

        runtime = runtime_of(a, "overnight without --local")
        factory = runtime.shares(runtime.executor(a.address, config), a.concurrent)  # one scan's share each
        stitch_runner = runtime.stitch_runner(a.address)
    metrics = _start_metrics(a)

    def report(name: str, status: str, duration_s: float | None) -> None:
        took = f" in {duration_s:.1f} s" if duration_s is not None else ""
        print(f"{status:>7}  {name}{took}", file=sys.stderr)

    failed = 0
    try:
        while True:
            result = run_overnight(a.root, a.out, config, metrics=metrics, settle_s=a.settle_s, on_scan=report,
                                   on_progress=lambda line: print(line, file=sys.stderr),
                                   concurrent=a.concurrent, executor_for_scan=factory,
                                   process=functools.partial(process_scan, layout=_layout(a)),
                                   stitch=not a.no_stitch, stitch_runner=stitch_runner, segment=a.segment,
                                   segment_scales=a.segment_scales)
            failed = len(result.failed) + len(result.flagged)
            print(f"overnight: {len(result.done)} done, {len(result.flagged)} flagged, {len(result.failed)} "
                  f"failed, {len(result.skipped)} skipped, {len(result.waiting)} not finished; account in "
                  f"{Path(a.out) / SUMMARY_NAME}")
            for f in result.flagged:
                print(f"FLAGGED {f['scan']}: {f['reason']}")
            for f in result.failed:
                print(f"FAILED {f['scan']}: {f['error']}")
            for word, names in (("skipped", result.skipped), ("waiting", result.waiting)):
                for name in names:
                    print(f"{word} {name}: {result.why.get(name, '')}")
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
    g.add_argument("--local", action="store_true",
                   help="run the live workers and the final pass in this process, without Ray")
    g.add_argument("--distances", type=int, default=4, help="distances in the scan (default %(default)s)")
    g.add_argument("--workers", type=int, default=2, help="phase-retrieval workers (default %(default)s)")
    g.add_argument("--shards", type=int, default=2, help="reconstruction shards (default %(default)s)")
    g.add_argument("--poll-s", type=float, default=0.5, help="folder polling interval, s (default %(default)s)")
    g.add_argument("--no-inotify", action="store_true",
                   help="poll only (network filesystems: inotify misses writes from other hosts)")
    g.add_argument("--quiet-s", type=float, default=60.0,
                   help="the scan also counts as complete after this long without a new frame and with no file "
                        "still being written, even if distances are missing (an alert names them; default "
                        "%(default)s)")
    g.add_argument("--stall-s", type=float, default=600.0,
                   help="a file still incomplete after this long unchanged is set aside (a writer that died); "
                        "its written frames are kept (default %(default)s)")
    g.add_argument("--timeout-s", type=float, help="give up after this long without completion")


def cmd_convert(a: argparse.Namespace) -> int:
    """Convert an ID16A EDF scan into NXtomo files, one per distance."""
    from .io.convert import convert_scan  # noqa: PLC0415

    update, close = _progress_bars("distance")
    try:
        done = convert_scan(a.scan, a.out, engine=a.engine, progress=update)
    finally:
        close()
    for c in done:
        g = c.scan.geometry
        print(f"{c.file}: {c.scan.n_frames} frames from {c.folder} ({c.engine}); z1 {g.z1_m:.6g} m, "
              f"z2 {g.z2_m:.6g} m, pixel {g.pixel_m:.6g} m (sample plane {g.effective_pixel_m:.6g} m), "
              f"D {g.propagation_distance_m:.6g} m, {g.energy_kev:g} keV")
    _nabu_configs([c.file for c in done])
    print(f"scan folder for process / nabu: {a.out}")
    return 0


# --- output checks, before any work ------------------------------------------------------------------------


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, hidden files aside."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def journal_belongs_to(journal: Path, scan: Path, sample: int = 20, overwrite: bool = False) -> bool:
    """Whether the journal in an output folder is that of the scan in ``scan`` (a resume): it holds no frame
    yet, or the files of its first frames are found in ``scan`` (frame ids are paths relative to it).

    A journal whose ``-wal`` file was lost or cut is judged on what its main file holds (the writer
    checkpoints it as it goes, :mod:`xnh_stream.state.journal`); one without any table yet holds no frame.

    Parameters
    ----------
    journal : Path
        The ``journal.sqlite`` file.
    scan : Path
        The scan folder.
    sample : int
        How many of the first frames are looked for in ``scan``.
    overwrite : bool
        ``--overwrite`` was given: a damaged journal is not this scan's (the caller replaces it) instead of
        an error.

    Raises
    ------
    InputError
        When the journal is damaged or unreadable (and not ``overwrite``): naming the file, what is lost and
        what to do.
    """
    import sqlite3  # noqa: PLC0415

    from .io.ids import split_frame_id  # noqa: PLC0415
    from .state.journal import FrameJournal, JournalDamaged, JournalEmpty  # noqa: PLC0415

    try:
        with FrameJournal(journal, readonly=True) as j:
            j.check()
            ids = []
            for rec in j.iter_records():
                ids.append(split_frame_id(rec.frame_id)[0])
                if len(ids) >= sample:
                    break
    except JournalEmpty:
        log.info("%s holds no frame yet: resumed as an empty journal", journal)
        return True
    except (ValueError, sqlite3.Error, OSError) as exc:  # damaged, unreadable, or of another schema version
        if overwrite:
            log.warning("%s cannot be read (%s): replaced (--overwrite)", journal, exc)
            return False
        detail = f"SQLite: {exc.detail}" if isinstance(exc, JournalDamaged) else str(exc)
        raise InputError(journal, f"is damaged or unreadable ({detail}): the frame account of the earlier run in "
                         f"{journal.parent} (which frames were received, processed or set aside) is lost. Move "
                         f"it aside with its -wal and -shm files (e.g. to {journal.name}.damaged) to start a new "
                         "journal there, in which every frame of the scan is processed again, or give "
                         "--overwrite to replace it") from exc
    if not ids:
        return True
    return any((scan / f).exists() or Path(f).is_absolute() and Path(f).exists() for f in ids)


def _report_of(out: Path, scan: Path) -> bool:
    """Whether ``out/report.json`` is the report of the scan in ``scan``."""
    import json  # noqa: PLC0415

    try:
        folder = json.loads((out / REPORT_NAME).read_text())["scan"]["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return Path(folder).resolve() == scan.resolve()


def check_output(out: Path, rule: str, overwrite: bool = False, scan: Path | None = None) -> None:
    """Refuse, before any work, an output that would fail at the end or overwrite results silently.

    Parameters
    ----------
    out : Path
        The output folder (or path) a command was given.
    rule : {"folder", "resume", "final", "overnight", "labels", "path"}
        ``folder``: a folder the command fills; an existing one must be empty unless ``overwrite``.
        ``resume`` (``watch``): as ``folder``, but a folder whose ``journal.sqlite`` is that of ``scan`` is
        resumed; with ``overwrite`` a journal of another scan is removed (the new scan starts its own).
        ``overnight``: as ``folder``, but a folder holding ``overnight.json`` is resumed.
        ``final`` (``process``): as ``folder``, but a folder holding the unfinished work of a final pass
        (``work/``, no ``report.json``) of ``scan`` is resumed; with ``overwrite`` its journal and work go.
        ``labels`` (``segment``): the folder may hold the volume; its segmentation must not exist yet
        unless ``overwrite``. ``path``: a file or folder written whole; must not exist unless ``overwrite``.
    overwrite : bool
        ``--overwrite`` was given: write into it, replacing files of the same names.
    scan : Path, optional
        The scan folder (``resume``).

    Raises
    ------
    InputError
        Naming the output and what to do.
    """
    out = Path(out)
    if rule == "path":
        if out.exists() and not overwrite:
            raise InputError(out, "exists already; give another output or --overwrite to replace it")
        if out.parent.exists() and not out.parent.is_dir():
            raise InputError(out.parent, "is a file, not a folder")
        return
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; --out names the output folder (give a folder path)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(parent, f"is a file, so {out} cannot be created")
            if not os.access(parent, os.W_OK | os.X_OK) and not out.exists():
                raise InputError(parent, f"is not writable: {out} cannot be created")
            break
    if not out.exists():
        return
    if rule == "labels":
        from .segment.pipeline import SEGMENTATION_NAME, STANDALONE_NAME  # noqa: PLC0415

        for name in (SEGMENTATION_NAME, STANDALONE_NAME):
            if (out / name).exists() and not overwrite:
                raise InputError(out / name, "a segmentation exists already; give --overwrite to replace it")
        return
    if not _entries(out):
        return
    if rule == "overnight" and (out / OVERNIGHT_SUMMARY_NAME).exists():
        return  # resuming the queue: done scans are skipped
    if rule == "final" and (out / WORK_NAME / "spec.json").exists() and not (out / REPORT_NAME).exists():
        journal = out / JOURNAL_NAME
        if not journal.exists() or scan is None or journal_belongs_to(journal, Path(scan), overwrite=overwrite):
            log.info("%s: resuming the unfinished final pass found there", out)
            return  # the final pass checks that its work folder is this scan's, else starts afresh
    if rule == "final" and not overwrite and scan is not None and _report_of(out, Path(scan)):
        # this scan's outputs: the final pass checks them against their report (done, or a clear refusal),
        # finishes a publication a kill interrupted, or refuses outputs made with other options
        return
    if rule == "final" and overwrite:
        from .state.work import trash  # noqa: PLC0415

        for suffix in ("", "-wal", "-shm"):  # the frame account of whatever was there before
            (out / (JOURNAL_NAME + suffix)).unlink(missing_ok=True)
        trash(out / WORK_NAME)
        return  # the old volume and report stay until the new ones replace them
    if rule == "resume" and (out / JOURNAL_NAME).exists():
        if scan is not None and journal_belongs_to(out / JOURNAL_NAME, Path(scan), overwrite=overwrite):
            log.info("%s: resuming the journal of %s", out, scan)
            return
        if overwrite:
            for suffix in ("", "-wal", "-shm"):
                (out / (JOURNAL_NAME + suffix)).unlink(missing_ok=True)
            log.warning("%s: removed the journal of another scan (--overwrite)", out)
            return
        raise InputError(out, f"holds the {JOURNAL_NAME} of another scan; give a new --out, or --overwrite to "
                         "start this scan's journal there")
    if not overwrite:
        shown = ", ".join(sorted(p.name for p in _entries(out))[:5])
        raise InputError(out, f"is not empty ({shown}{', ...' if len(_entries(out)) > 5 else ''}); give a new "
                         "output folder, or --overwrite to write into it (files of the same names are replaced)")


#: Which argument of each command is its output, and the rule it is checked by (:func:`check_output`).
OUTPUT_RULES = {"simulate": ("out", "folder", None), "convert": ("out", "folder", None),
                "process": ("out", "final", "scan"), "watch": ("out", "resume", "folder"),
                "overnight": ("out", "overnight", None), "segment": ("out", "labels", None),
                "classify": ("out", "path", None)}


def check_outputs(a: argparse.Namespace) -> None:
    """:func:`check_output` for the command in ``a`` (no-op for commands without a checked output)."""
    rule = OUTPUT_RULES.get(getattr(a, "command", ""))
    if rule is None or getattr(a, rule[0], None) is None:
        return
    arg, kind, scan_arg = rule
    check_output(Path(getattr(a, arg)), kind, getattr(a, "overwrite", False),
                 Path(getattr(a, scan_arg)) if scan_arg else None)


def output_lock(a: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """The lock of the output folder of the command in ``a`` (:class:`~xnh_stream.state.lock.OutputLock`;
    a no-op for commands that write no folder)."""
    from .state.lock import OutputLock  # noqa: PLC0415

    arg = LOCKED_OUTPUTS.get(getattr(a, "command", ""))
    folder = getattr(a, arg, None) if arg else None
    if folder is None:
        return contextlib.nullcontext()
    return OutputLock(Path(folder), f"xnh-stream {a.command}")


#: The output folder of each command that writes one, held under its lock while the command runs.
LOCKED_OUTPUTS = {"process": "out", "watch": "out", "demo": "out", "overnight": "out", "segment": "out",
                  "stitch": "out"}


# --- input, option and configuration checks: before Ray, a server or an output folder -----------------------
#: Suffixes of the files the scan reader takes (:data:`xnh_stream.io.sources.HDF5_SUFFIXES` and
#: :data:`~xnh_stream.io.sources.EDF_SUFFIX`, repeated here so that the check imports no reader).
SCAN_SUFFIXES = frozenset({".nx", ".nxs", ".h5", ".hdf5", ".edf"})
SCAN_LIKE = ("a scan folder: NXtomo files (.nx, .nxs, .h5, .hdf5) or ID16A EDF frames (.edf), in it or in one "
             "sub-folder per distance")

#: Which argument of each command is an input (one path or a list) and what it must be (:func:`check_input`).
INPUT_RULES = {"process": ("scan", "scan"), "watch": ("folder", "watched"), "overnight": ("root", "root"),
               "convert": ("scan", "folder"), "stitch": ("outputs", "exists")}


def _scan_files(folder: Path) -> Iterator[Path]:
    """The files of ``folder`` the scan reader would look at (by suffix; hidden sub-folders skipped, as
    :class:`~xnh_stream.ingest.watch.FolderWatcher` does), lazily."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in SCAN_SUFFIXES:
                yield Path(dirpath) / name


def check_input(path: Path, rule: str) -> None:
    """Refuse, before anything starts, an input that cannot be what the command reads.

    Parameters
    ----------
    path : Path
        The input a command was given.
    rule : {"scan", "watched", "root", "folder", "exists"}
        ``scan`` (``process``): a readable folder holding at least one readable scan file
        (:data:`SCAN_SUFFIXES`, in it or in a sub-folder); ``watched`` (``watch``): a readable folder, which
        may still be empty (the scan is about to be written); ``root`` (``overnight``): a readable folder;
        ``folder``: a folder; ``exists``: a file or folder that exists.

    Raises
    ------
    InputError
        Naming the input and what is wrong with it.
    """
    path = Path(path)
    what = {"scan": f"expected {SCAN_LIKE}", "watched": "expected the folder the scan is written into",
            "root": "expected the root of the day's scan folders"}.get(rule, "")
    if not path.exists():
        raise InputError(path, f"does not exist{f' ({what})' if what else ''}")
    if rule == "exists":
        return
    if not path.is_dir():
        raise InputError(path, f"is not a folder{f' ({what})' if what else ''}")
    if rule == "folder":
        return
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(path, "cannot be read (permission denied)")
    if rule != "scan":
        return
    unreadable = None
    for file in _scan_files(path):
        if os.access(file, os.R_OK):
            return
        unreadable = unreadable or file
    if unreadable is not None:
        raise InputError(unreadable, "cannot be read (permission denied), and no other scan file of "
                         f"{path} can: nothing to process")
    raise InputError(path, f"holds no scan file (expected {SCAN_LIKE})")


def check_inputs(a: argparse.Namespace) -> None:
    """:func:`check_input` for the command in ``a`` (no-op for commands without a checked input)."""
    arg, rule = INPUT_RULES.get(getattr(a, "command", ""), (None, None))
    value = getattr(a, arg, None) if arg else None
    for path in value if isinstance(value, list) else [] if value is None else [value]:
        check_input(Path(path), rule)


#: Options whose values are checked before anything starts: destination, test, what the value must be.
OPTION_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("angle_batch", lambda v: v >= 1, "at least 1"),
    ("slab_rows", lambda v: v >= 0, "0 (as many as fit --task-memory-mib) or more"),
    ("task_memory_mib", lambda v: v >= 1, "at least 1"),
    ("distances", lambda v: v >= 1, "at least 1"),
    ("workers", lambda v: v >= 1, "at least 1"),
    ("shards", lambda v: v >= 1, "at least 1"),
    ("concurrent", lambda v: v >= 1, "at least 1"),
    ("poll_s", lambda v: v > 0, "more than 0 s"),
    ("quiet_s", lambda v: v >= 0, "0 s or more"),
    ("stall_s", lambda v: v > 0, "more than 0 s"),
    ("settle_s", lambda v: v >= 0, "0 s or more"),
    ("timeout_s", lambda v: v > 0, "more than 0 s"),
    ("fps", lambda v: v > 0, "more than 0 frames/s"),
    ("metrics_port", lambda v: 0 <= v < 65536, "a port number (1-65535), or 0 for off"),
    ("live_port", lambda v: 0 <= v < 65536, "a port number (1-65535), or 0 for off"),
)

#: Commands whose options :data:`OPTION_RULES` checks (``simulate`` checks its own, with the simulator's).
CHECKED_OPTIONS = frozenset({"process", "watch", "demo", "overnight"})


def check_options(a: argparse.Namespace) -> None:
    """Refuse option values that could only fail later (:data:`OPTION_RULES`), naming the flag.

    Raises
    ------
    ConfigError
        ``--angle-batch 0: must be at least 1``.
    """
    if getattr(a, "command", "") not in CHECKED_OPTIONS:
        return
    for dest, ok, must in OPTION_RULES:
        value = getattr(a, dest, None)
        if value is not None and not ok(value):
            raise ConfigError(f"--{dest.replace('_', '-')} {value}: must be {must}")


def check_before_start(a: argparse.Namespace) -> None:
    """Every check a command can make before it starts anything (Ray, a server, its output folder): option
    values (:func:`check_options`), the configuration (``--config`` file, ``XNH_*`` variables, flags:
    :func:`_process_config`, whose unknown ``XNH_*`` variables are warned about here), the simulated scan
    of ``demo``, and the inputs (:func:`check_inputs`). The outputs are checked next, under their lock
    (:func:`check_outputs`).

    Raises
    ------
    InputError, ConfigError
        The first problem found.
    """
    check_options(a)
    if hasattr(a, "config"):  # the commands that take processing options
        _process_config(a)
    if getattr(a, "command", "") == "demo":
        try:
            _simulation_config(a).validate()
        except ValueError as exc:
            raise ConfigError(f"simulation parameters: {exc}") from exc
    check_inputs(a)


class _CreatedOutput:
    """The output folder of a command, as it stood before the command (:data:`OUTPUT_RULES`,
    :data:`LOCKED_OUTPUTS`); a context manager, entered under the output's lock, that removes what a failed
    command created and nothing that existed.

    A command fails when it raises (a signal's stop included) or sets :attr:`failed` (a non-zero exit code).
    A folder it created is then removed when it holds no file but the lock's ``.xnh.lock`` (empty sub-folders
    go with it), with the parents created for it; the lock file is removed while the lock is still held, so
    no other command can take the folder in between. A folder that holds any other file (a journal, work,
    results) is kept whole; a folder that existed is never touched.
    """

    def __init__(self, a: argparse.Namespace) -> None:
        command = getattr(a, "command", "")
        arg = LOCKED_OUTPUTS.get(command) or (OUTPUT_RULES.get(command) or (None,))[0]
        value = getattr(a, arg, None) if arg else None
        self.folder = Path(os.path.abspath(value)) if value is not None else None
        #: the folders the command would create, deepest first (none when the output exists)
        self.new = [p for p in (self.folder, *self.folder.parents) if not p.exists()] if self.folder else []
        self.failed = False

    def __enter__(self) -> _CreatedOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None or self.failed:
            self.undo()

    def undo(self) -> None:
        """Remove what the failed command created (see the class docstring); never raises."""
        if not self.new or not self.folder.is_dir():
            return
        from .state.lock import LOCK_NAME  # noqa: PLC0415

        tree = list(os.walk(self.folder, topdown=False))  # deepest first
        for dirpath, dirnames, filenames in tree:
            if any(not (f == LOCK_NAME and dirpath == str(self.folder)) for f in filenames) or any(
                    (Path(dirpath) / d).is_symlink() for d in dirnames):
                return  # something was written: kept whole
        try:
            for dirpath, dirnames, _ in tree:
                for d in dirnames:
                    (Path(dirpath) / d).rmdir()
            (self.folder / LOCK_NAME).unlink(missing_ok=True)  # the lock still holds its open file
            for path in self.new:
                path.rmdir()
        except OSError as exc:  # what could not be removed stays
            log.debug("%s: not removed (%s)", self.folder, exc)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xnh-stream``."""
    p = argparse.ArgumentParser(prog="xnh-stream", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="errors and results only: no progress, no warnings (progress bars are drawn only on a "
                        "terminal; piped or redirected output gets plain lines)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    s = sub.add_parser("simulate", help="write a simulated four-distance XNH scan (NXtomo) and its ground truth")
    s.add_argument("out", type=Path, help="output folder")
    _add_simulation_args(s)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("convert", help="convert an ID16A EDF scan (one folder per distance) into NXtomo files, "
                                       "one per distance (nxtomomill edf2nx, completed with z1 from xnh.yaml "
                                       "or --z1), with a nabu configuration beside each")
    s.add_argument("scan", type=Path, help="EDF scan folder: distance folders of .edf files, or one of them")
    s.add_argument("--out", type=Path, required=True, help="output folder: one NXtomo file per distance")
    s.add_argument("--engine", choices=["auto", "nxtomomill", "builtin"], default="auto",
                   help="auto: nxtomomill where it works, else the builtin writer (default %(default)s)")
    add_z1_arg(s)
    s.set_defaults(func=supplying_z1_of(cmd_convert))

    s = sub.add_parser("process", help="process a finished scan folder into volume.ome.zarr and report.json")
    s.add_argument("scan", type=Path, help="scan folder: one NXtomo file, NXtomo chunk folder or ID16A EDF folder "
                                            "per distance")
    s.add_argument("--out", type=Path, required=True, help="output folder (a killed run resumes in it)")
    g = s.add_argument_group("where it runs")
    g.add_argument("--address", help="join this Ray cluster (auto, host:port); default: an embedded local Ray, "
                                      "or this process for a scan under 64 MiB of files")
    g.add_argument("--local", action="store_true", help="run every task in this process, without Ray")
    g.add_argument("--ray", action="store_true", help="an embedded local Ray even for a small scan")
    _add_layout_args(s)
    _add_process_args(s)
    add_z1_arg(s)
    s.set_defaults(func=supplying_z1_of(cmd_process))

    s = sub.add_parser("watch", help="process a scan live as its frames are written into a folder (Ray)")
    s.add_argument("folder", type=Path, help="scan folder (NXtomo files or chunk files, or ID16A EDF folders)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    _add_stream_args(s)
    _add_layout_args(s)
    _add_process_args(s)
    _add_metrics_args(s, LIVE_METRICS_PORT)
    _add_live_args(s)
    add_z1_arg(s)
    s.set_defaults(func=supplying_z1_of(cmd_watch))

    s = sub.add_parser("demo", help="simulate a scan being written and stream it through the pipeline (Ray)")
    s.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    s.add_argument("--fps", type=float, default=200.0, help="simulated detector frame rate (default %(default)s)")
    _add_simulation_args(s)
    _add_stream_args(s)
    _add_layout_args(s)
    _add_process_args(s)
    _add_metrics_args(s, LIVE_METRICS_PORT)
    _add_live_args(s)
    s.set_defaults(func=cmd_demo, quiet_s=3.0)

    s = sub.add_parser("overnight", help="process every finished scan folder under ROOT with the batch chain; "
                                         "resumable (skips scans whose OUT/<scan>/report.json exists)")
    s.add_argument("root", type=Path, help="folder holding the day's scan folders (searched recursively)")
    s.add_argument("--out", type=Path, required=True, help="output root: OUT/<scan>/ per scan, OUT/overnight.json")
    s.add_argument("--settle-s", type=float, default=60.0,
                   help="a file without end_time counts as finished after this long unchanged (default %(default)s)")
    s.add_argument("--follow", action="store_true", help="keep going: look for newly finished scans every --poll-s")
    s.add_argument("--poll-s", type=float, default=300.0, help="seconds between passes with --follow (default %(default)s)")
    g = s.add_argument_group("where it runs")
    g.add_argument("--address", help="join this Ray cluster (auto, host:port); default: an embedded local Ray")
    g.add_argument("--local", action="store_true", help="run every task in this process, without Ray")
    g.add_argument("--concurrent", type=int, default=1,
                   help="scans processed at once, each limited to its share of the cluster's CPUs (default %(default)s)")
    g.add_argument("--no-stitch", action="store_true",
                   help="do not stitch the scans of one sample (NXtomo sample/name, with stage positions) into "
                        "OUT/<sample>.stitched")
    g.add_argument("--segment", action="store_true",
                   help="segment each stitched sample blockwise (labels, SWC in OUT/<sample>.stitched/swc)")
    g.add_argument("--segment-scales", type=int, nargs="+", choices=(1, 2), metavar="K",
                   help="with --segment: the network's scales (segment --scales; default: the model's, 1 2; "
                        "1 alone is eight times faster)")
    _add_layout_args(s)
    _add_process_args(s)
    _add_metrics_args(s, OVERNIGHT_METRICS_PORT)
    s.set_defaults(func=cmd_overnight)

    # --- segmentation (xnh_stream/segment) ---
    from .segment.commands import add_parsers as _add_segment_parsers  # noqa: PLC0415

    _add_segment_parsers(sub)
    from .stitch.commands import add_parsers as _add_stitch_parsers  # noqa: PLC0415

    _add_stitch_parsers(sub)
    from .nabu_cli import add_parser as _add_nabu_parser  # noqa: PLC0415

    _add_nabu_parser(sub)
    for name in ("watch", "demo"):
        _add_segment_args(sub.choices[name])
    for name, (_, rule, _) in OUTPUT_RULES.items():
        what = {"resume": "an output folder that is not empty (a folder holding this scan's journal is resumed "
                          "without it; a journal of another scan is removed)",
                "overnight": "an output root that is not empty and holds no overnight.json",
                "labels": "an existing segmentation", "path": "an existing output"}.get(
                    rule, "an output folder that is not empty (files of the same names are replaced)")
        sub.choices[name].add_argument("--overwrite", action="store_true", help=f"write into {what}")
    return p


# --- segmentation when a watched scan completes (xnh_stream/segment) -------------------------------------
def _add_segment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation (docs/segmentation.md)")
    g.add_argument("--no-segment", action="store_true",
                   help="do not segment OUT/volume.ome.zarr into its labels (OUT/volume.ome.zarr/labels/segmentation) "
                        "when the scan completes")
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


#: Log line formats: on a terminal, and where stderr is a file or a pipe (a timestamp, nothing else).
TERMINAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- how a command ends: a signal, a storage problem, a runtime to shut down -------------------------------
#: errno values of a problem of the storage (full, read-only, not ours, over quota): the command ends with
#: ``error: FILE: problem`` and exit code 2 instead of a traceback, wherever it was raised.
STORAGE_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS,
                                       getattr(errno, "EDQUOT", None)) if e is not None)


def storage_error(exc: BaseException) -> OSError | None:
    """The storage problem behind ``exc`` (:data:`STORAGE_ERRNOS`), or None.

    Parameters
    ----------
    exc : BaseException
        What a command raised: the :class:`OSError` itself, an error raised ``from`` it, or the wrapper of
        an error raised in a remote task (which carries the original as ``cause``, e.g. Ray's).

    Returns
    -------
    OSError or None
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        e = pending.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        pending += [getattr(e, "cause", None), e.__cause__]
    return None


def describe_storage_error(exc: OSError) -> str:
    """``FILE: no space left on device`` (the file, then the system's words for the errno)."""
    problem = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    problem = problem[:1].lower() + problem[1:]
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return redact_text(f"{' -> '.join(files)}: {problem}" if files else problem)


def _stopped(a: argparse.Namespace, signum: int) -> int:
    """Say that the command stopped on ``signum`` and how to resume; the exit code for that signal."""
    print(f"{a.command}: stopped by {interrupt.signal_name(signum)}; what was done is kept: run the same command "
          "again to resume", file=sys.stderr, flush=True)
    return interrupt.EXIT_CODES.get(signum, 128 + signum)


def _close_runtime(runtime: Any) -> None:
    """Shut the runtime down where it has a ``close`` (Ray started by the command: its processes stop now,
    not in an exit handler); a failure there is logged, the command's result stands."""
    close = getattr(runtime, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - the command's outcome is already decided
        log.warning("runtime shutdown: %s", redact_text(str(exc)))


class _RedactingFilter(logging.Filter):
    """Log lines with the ``user:password@`` of any URL in them replaced by ``***@``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _redact_log_lines() -> None:
    """Every handler of the root logger redacts credentials from the lines it writes (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


def main(argv: Sequence[str] | None = None, runtime: Any = None) -> int:
    """The commands; ``runtime`` (:class:`xnh_stream.runtime.Runtime`) is where distributed work runs
    (the ``xnh-stream`` console script, :func:`actors.cli.main`, passes Ray's).

    Options, configuration and inputs are checked before anything starts (:func:`check_before_start`), the
    output under its lock (:func:`check_outputs`); a command that fails removes the output folder it created
    if it wrote nothing into it (:class:`_CreatedOutput`).

    SIGTERM and SIGINT stop the command (:mod:`xnh_stream.interrupt`): one line says so and that running it
    again resumes. Bad input or configuration, and a storage problem anywhere (:data:`STORAGE_ERRNOS`, also
    in a remote task), end with one line ``error: ...`` (a URL's password never shown). The runtime is shut
    down (its ``close``, where it has one) however the command ends.

    Returns
    -------
    int
        The exit code: the command's (0 done, 1 a watched scan that did not complete, an overnight queue
        with failures), 2 bad input, configuration or storage, 0 stopped by SIGTERM, 130 stopped by SIGINT.
    """
    args = build_parser().parse_args(argv)
    args.runtime = runtime
    _UI["quiet"] = bool(args.quiet)
    level = logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format=TERMINAL_FORMAT if sys.stderr.isatty() else PLAIN_FORMAT,
                        datefmt="%Y-%m-%dT%H:%M:%S")
    logging.getLogger().setLevel(level)  # basicConfig configures once per process; the level follows each call
    logging.captureWarnings(True)  # library warnings as log lines, in the same format
    _redact_log_lines()
    with interrupt.stop_on_signals():  # SIGTERM / SIGINT: Interrupted, here or in the runtime's calls
        try:
            try:
                check_before_start(args)  # options, configuration, inputs: before Ray, a server or OUT
                created = _CreatedOutput(args)  # the output folder as it is before the lock creates it
                # one writer per output folder, from the checks to the end; a failed command's empty output
                # folder removed under the lock
                with output_lock(args), created:
                    check_outputs(args)
                    code = int(args.func(args) or 0)
                    created.failed = code != 0
                signum = interrupt.received()  # a command that stopped on the signal itself (overnight)
                return code if signum is None else interrupt.EXIT_CODES.get(signum, code)
            except (InputError, ConfigError) as exc:
                print(f"error: {redact_text(str(exc))}", file=sys.stderr)
                return 2
            except Exception as exc:
                if interrupt.received() is not None:
                    # the signal's exception, wrapped where it crossed native code: numba's dispatcher
                    # (SystemError "returned a result with an exception set"), a library's own error
                    interrupt.hold()
                    return _stopped(args, interrupt.received())
                problem = storage_error(exc)
                if problem is None:
                    raise
                print(f"error: {describe_storage_error(problem)}", file=sys.stderr)
                return 2
        except KeyboardInterrupt as exc:  # Interrupted, or the bare one Ray raises in its place
            interrupt.hold()
            return _stopped(args, interrupt.signal_of(exc))
        finally:
            interrupt.hold()  # a signal while the runtime shuts down does not cut the shutdown short
            _close_runtime(runtime)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
