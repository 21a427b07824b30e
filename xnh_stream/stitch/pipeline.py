"""Stitch finished scan outputs into one volume: the entry point (:func:`stitch_outputs`) and its report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..io.names import STITCH_REPORT_NAME
from .blockwise import VOLUME_NAME, Stitch, StitchSpec, run_stitch

#: The stitch's report (``io/names.py``).
REPORT_NAME = STITCH_REPORT_NAME


@dataclass
class StitchResult:
    """What :func:`stitch_outputs` made.

    Attributes
    ----------
    out : Path
        Output folder.
    volume : Path
        ``OUT/volume.ome.zarr``.
    report : dict
        The content of ``OUT/stitch.json``.
    placed, isolated : list of str
        Names of the scans in the volume, and of those reported as overlapping (or registering to) nothing.
    """

    out: Path
    volume: Path
    report: dict
    placed: list[str] = field(default_factory=list)
    isolated: list[str] = field(default_factory=list)

    @property
    def voxel_m(self) -> float:
        """Output voxel."""
        return float(self.report["output"]["voxel_m"])

    @property
    def origin_m(self) -> np.ndarray:
        """Centre of the output's voxel ``[0, 0, 0]`` in the sample-stage frame."""
        return np.asarray(self.report["output"]["origin_m"])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape (level 0)."""
        return tuple(self.report["output"]["shape"])  # type: ignore[return-value]


def stitch_report(st: Stitch, timing: dict | None = None) -> dict:
    """The stitch report (``stitch.json``) of a solved stitch: scans, links and residuals, isolated scans."""
    plan, spec = st.plan, st.spec
    results = {(r.a, r.b): r for r in st.pair_results()}
    link_state = {(lk["a"], lk["b"]): lk for lk in plan.placement["links"]}
    finest = min(s.voxel_m for s in st.scans)
    partners: dict[int, list[int]] = {i: [] for i in range(len(st.scans))}
    for a, b in st.pairs:
        partners[a].append(b)
        partners[b].append(a)
    thin = {(r["a"], r["b"]): r["reason"] for r in st.refused_pairs}
    scans, isolated = [], []
    group_of = {i: g for g, members in enumerate(plan.placement["groups"]) for i in members}
    for i, scan in enumerate(st.scans):
        corr = np.asarray(plan.corrections_m[i])
        row = scan.as_dict() | {
            "placed": bool(plan.placed[i]), "group": group_of.get(i),
            "correction_m": corr.tolist(), "correction_finest_voxels": (corr / finest).round(3).tolist(),
            "origin_m": (scan.origin_m + corr).tolist(), "intensity_offset": plan.offsets[i],
            "tier": plan.tiers[i]}
        scans.append(row)
        if i in plan.placement["alone"]:
            near = [f"{st.scans[b if a == i else a].name}: {why}" for (a, b), why in thin.items() if i in (a, b)]
            if not partners[i] and near:
                why = "overlaps no other scan enough to register (" + "; ".join(near) + ")"
            elif not partners[i]:
                why = "overlaps no other scan at its nominal place (within the allowed stage error)"
            else:
                fails = [f"{st.scans[j].name}: {results[tuple(sorted((i, j)))].reason or 'link dropped'}"
                         for j in partners[i]]
                why = "no accepted registration with the scans it overlaps (" + "; ".join(fails) + ")"
            isolated.append({"name": scan.name, "out": scan.out, "reason": why, "placed": bool(plan.placed[i])})
    links = []
    for (a, b), r in sorted(results.items()):
        state = link_state.get((a, b))
        links.append({"a": st.scans[a].name, "b": st.scans[b].name, "shift_m": r.shift_m, "ncc": round(r.ncc, 4),
                      "peak_ratio": round(min(r.peak_ratio, 1e6), 3), "ambiguity": round(r.ambiguity, 3),
                      "voxels": r.voxels, "register_voxel_m": r.register_voxel_m, "coarse_voxel_m": r.coarse_voxel_m,
                      "accepted": r.ok, "used": bool(state and state["used"]),
                      "residual_m": None if state is None else state["residual_m"],
                      "reason": r.reason or (state or {}).get("reason", "")})
    for (a, b), why in sorted(thin.items()):  # near pairs never registered: reported, not links
        links.append({"a": st.scans[a].name, "b": st.scans[b].name, "shift_m": None, "ncc": None, "peak_ratio": None, "ambiguity": None, "voxels": 0,
                      "accepted": False, "used": False, "residual_m": None, "reason": why})
    return {
        "software": {"name": "xnh-stream", "version": __version__},
        "output": {"volume": str(st.out / VOLUME_NAME), "voxel_m": plan.voxel_m, "shape": plan.shape,
                   "origin_m": plan.origin_m, "levels": plan.levels, "blocks": len(st.blocks(0)),
                   "frame": "sample stage, z y x, metres; origin_m is the centre of voxel [0, 0, 0] (also the "
                            "volume's OME-NGFF translation, and that of its labels after `segment`; the "
                            "precomputed layer's voxel_offset puts it there to the nearest voxel)"},
        "scans": scans,
        "isolated": isolated,
        "groups": [[st.scans[i].name for i in g] for g in plan.placement["groups"]],
        "links": links,
        "residuals": {"max_m": plan.placement["max_residual_m"], "rms_m": plan.placement["rms_residual_m"],
                      "tolerance_m": spec.tolerance_m or finest},
        "params": {k: v for k, v in spec.__dict__.items() if k not in ("out", "inputs")} | {"blend_m": plan.blend_m},
        "timing_s": {k: round(v, 3) for k, v in (timing or {}).items()},
    }


def stitch_outputs(outputs: list[Path] | list[str], out: Path | str, voxel_m: float | None = None,
                   block_shape: tuple[int, int, int] = (128, 128, 128),
                   runner: Callable[..., Stitch] | None = None, precomputed: Path | str | None = None,
                   progress: Callable[[str, int, int], None] | None = None, **options) -> StitchResult:
    """Stitch finished scan outputs into one multiscale OME-Zarr volume (blockwise, resumable).

    Parameters
    ----------
    outputs : list of Path
        Scan output folders (``volume.ome.zarr`` + ``report.json`` each; the place comes from the volume's
        OME-NGFF translation or ``report["sample"]["position_m"]``).
    out : Path
        Output folder: ``volume.ome.zarr``, ``stitch.json`` and the work folder ``stitch.work`` (a re-run
        with the same arguments resumes where the last one stopped).
    voxel_m : float, optional
        Output voxel (default: the finest input voxel).
    block_shape : (int, int, int)
        Output block processed at once (memory per process is a few times it).
    runner : callable, optional
        ``runner(spec, progress=...) -> Stitch`` that runs the stages; default :func:`~.blockwise.run_stitch`
        (this process), or :func:`actors.stitch.run_stitch_ray` for Ray tasks.
    precomputed : Path, optional
        Also write a neuroglancer precomputed image layer here (needs tensorstore).
    progress : callable, optional
        ``progress(stage, done, total)`` after each unit.
    **options
        Any other :class:`~.blockwise.StitchSpec` field (``fov``, ``blend_m``, ``max_shift_m``,
        ``intensity``, ``include_isolated`` ...).

    Returns
    -------
    StitchResult
        Also written as ``OUT/stitch.json``.

    Raises
    ------
    InputError
        An input that is not a finished scan output (naming the file), a work folder of another stitch, or
        no two scans that overlap and register.
    """
    out = Path(out)
    t0 = time.perf_counter()
    spec = StitchSpec(str(out), [str(Path(p)) for p in outputs], voxel_m, tuple(block_shape), **options)
    st = (runner or run_stitch)(spec, progress=progress)
    timing = dict(getattr(st, "timing", {}))
    if precomputed is not None:
        import dask.array as da

        from ..io.precomputed import voxel_offsets, write_precomputed

        t = time.perf_counter()
        level0 = st._level(0)
        origin = tuple(st.plan.origin_m)  # the stitched volume's translation: the same world frame
        write_precomputed(precomputed, da.from_array(level0, chunks=tuple(spec.block_shape)), st.plan.voxel_m,
                          origin_m=origin)  # type: ignore[arg-type]
        timing["precomputed"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    report = stitch_report(st, timing)
    if precomputed is not None:
        offsets, residuals = voxel_offsets(origin, st.plan.voxel_m, 1)  # type: ignore[arg-type]
        report["output"]["precomputed"] = str(precomputed)
        report["output"]["precomputed_voxel_offset"] = offsets[0]  # x y z, whole voxels
        report["output"]["precomputed_rounding_nm"] = residuals[0]
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1))
    placed = [s["name"] for s in report["scans"] if s["placed"]]
    return StitchResult(out, out / VOLUME_NAME, report, placed, [s["name"] for s in report["isolated"]])
