"""Command-line subcommand ``stitch`` (registered into ``xnh-stream`` by :func:`add_parsers`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..io.names import STITCH_REPORT_NAME


def _progress(stage: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"stitch: {stage} {done}/{total}", file=sys.stderr, flush=True)


def cmd_stitch(a: argparse.Namespace) -> int:
    """Stitch finished scan outputs into OUT/volume.ome.zarr and OUT/stitch.json."""
    from .pipeline import stitch_outputs

    runner = None
    if a.ray:
        from ..runtime import runtime_of

        runner = runtime_of(a, "stitch --ray").stitch_runner(a.address)
    if a.precomputed:
        try:
            import tensorstore  # noqa: F401
        except ImportError as exc:  # tensorstore is an optional dependency
            raise InputError(str(a.precomputed), f"neuroglancer export needs tensorstore "
                                                 f"(pip install 'xnh-stream[neuroglancer]'): {exc}") from exc
    um = 1e-6
    res = stitch_outputs(a.outputs, a.out, voxel_m=a.voxel * 1e-9 if a.voxel else None,
                         block_shape=tuple(a.block_shape), runner=runner, precomputed=a.precomputed,
                         progress=_progress, fov=a.fov, blend_m=a.blend_um * um if a.blend_um else None,
                         max_shift_m=a.max_shift_um * um, intensity=a.intensity, include_isolated=a.include_isolated,
                         min_ncc=a.min_ncc)
    rep = res.report
    print(f"stitched: {res.volume} ({' x '.join(map(str, res.shape))} voxels of {res.voxel_m * 1e9:.1f} nm, "
          f"{len(res.placed)} scans; residuals max {rep['residuals']['max_m'] * 1e9:.1f} nm, "
          f"rms {rep['residuals']['rms_m'] * 1e9:.1f} nm; report {res.out / STITCH_REPORT_NAME})")
    for iso in rep["isolated"]:
        print(f"not stitched: {iso['name']}: {iso['reason']}", file=sys.stderr)
    if a.precomputed:
        print(f"neuroglancer precomputed layer: {a.precomputed} (serve it over HTTP and add precomputed://...)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Register ``stitch``."""
    s = sub.add_parser("stitch", help="stitch overlapping finished scans (OUT folders) into one volume; "
                                      "blockwise, resumable (docs/stitching.md)")
    s.add_argument("outputs", type=Path, nargs="+", help="scan output folders (volume.ome.zarr + report.json)")
    s.add_argument("--out", type=Path, required=True,
                   help="output folder: volume.ome.zarr, stitch.json, work folder stitch.work (a re-run resumes)")
    s.add_argument("--voxel", type=float, help="output voxel in nm (default: the finest input voxel)")
    s.add_argument("--block-shape", type=int, nargs=3, default=(128, 128, 128), metavar=("Z", "Y", "X"),
                   help="output block processed at once, multiples of 64 (default %(default)s)")
    s.add_argument("--fov", choices=("cylinder", "box"), default="cylinder",
                   help="each scan's field of view: the cylinder tomography reconstructs, or the whole box")
    s.add_argument("--blend-um", type=float,
                   help="width of the blending ramp from a field of view's edge, um (default: a quarter of the "
                        "smallest scan)")
    s.add_argument("--max-shift-um", type=float, default=4.0,
                   help="largest stage-position error searched, um (default %(default)s)")
    s.add_argument("--min-ncc", type=float, default=0.5,
                   help="lowest correlation of an accepted pair (default %(default)s)")
    s.add_argument("--intensity", choices=("offset", "none"), default="offset",
                   help="match the scans' mean values on their overlaps (default), or not")
    s.add_argument("--include-isolated", action="store_true",
                   help="also place scans that register to no other at their nominal place (reported either way)")
    s.add_argument("--ray", action="store_true", help="run the pairs and blocks as Ray tasks")
    s.add_argument("--address", help="with --ray: join this Ray cluster")
    s.add_argument("--precomputed", type=Path, help="also write a neuroglancer precomputed image layer here "
                                                     "(needs tensorstore)")
    s.set_defaults(func=cmd_stitch)
