"""The overnight queue: every finished scan folder under a root, through the final pass, resumable.

``xnh-stream overnight ROOT --out OUTROOT`` finds the scan folders under ``ROOT`` (NXtomo, one file or one
folder of chunk files per distance; ID16A EDF, one folder per distance), keeps those whose files are
finished, and processes each with :func:`xnh_stream.chain.batch.process_scan` into ``OUTROOT/<scan>``
(``<scan>`` is the folder's path relative to ``ROOT``), ``concurrent`` scans at a time on the Ray cluster,
each scan's tasks limited to its share of the cluster (``max_in_flight``). Rules:

- **resumable**: a scan whose ``OUTROOT/<scan>/report.json`` exists is skipped (the batch chain writes the
  report last, so its presence means the scan was completed); after a crash, the same command goes on
  where it stopped and a half-written output is replaced;
- **a failing scan does not stop the queue**: its error is written to ``OUTROOT/<scan>/error.json`` (the
  exception, the file named by the error, a traceback) and logged; it is tried again on the next run
  (no report.json);
- **finished**: every NXtomo file of the scan is complete (``end_time`` or its stated frame count), or has
  every allocated frame written and has not changed for ``settle_s``; files that cannot be read yet must
  have stopped changing for ``settle_s`` too (the batch chain then reports them). Unfinished scans are
  listed as waiting and left for a later pass;
- a scan folder holds NXtomo files of at least two distances (z1), directly or in distance sub-folders
  (a chunk-file series or an EDF folder: one z1 per sub-folder; an EDF folder is finished when its
  acquisition wrote its ``.xml``, or its files have not changed for ``settle_s``). HDF5 files that are not
  NXtomo (``truth.h5``, master files) are ignored; ``OUTROOT`` is never searched when it lies inside
  ``ROOT``;
- **every scan attempt is accounted**: a folder that holds scan-like files (``.nx``, ``.nxs``, ``.h5``,
  ``.hdf5``, ``.edf``) that make fewer than two distances because some are unreadable or broken, or two or
  more sub-folders of such files, is processed like a scan once its files have settled: the batch chain
  makes what it can of it or fails with the reason in ``error.json``. One good distance and nothing broken
  waits for the others; a folder whose scan-like files are all HDF5 files without an NXtomo entry is
  skipped with that reason; one whose stray scan files lie beside scan folders is failed without processing
  (``error.json`` names the files). Every scan ends the pass as
  **done**, **flagged** (processed, but the final pass found that its distances do not show one sample:
  the critical ``ImplausibleProjections`` alert of :mod:`xnh_stream.quality.plausibility`; or that no
  rotation-axis estimate is reliable and they lie apart: the critical ``RotationAxisUnreliable``; its report
  says why), **failed**, **skipped** (its report exists, or it makes no scan) or **waiting** (not finished), each
  with its reason in ``OUTROOT/overnight.json``;
- **a killed pass resumes inside a scan too**: the final pass keeps its finished units in
  ``OUTROOT/<scan>/work`` and does not redo them;
- **scans of one sample are stitched** (``stitch=True``): after the pass, the finished outputs whose reports
  name the same sample (NXtomo ``sample/name``) and carry a stage position are stitched into
  ``OUTROOT/<sample>.stitched/`` (:func:`xnh_stream.stitch.stitch_outputs`), again whenever one of them is
  newer than the stitched volume; a failure is recorded in that folder's ``error.json`` and listed with the
  failed (``<sample>.stitched``) in ``overnight.json`` and the printed summary (exit status 1);
- **stitched samples are segmented** (``segment=True``): each stitched volume newer than its segmentation is
  segmented blockwise (``segment STITCHED --block-shape ... --swc STITCHED/swc``: labels, SWC skeletons and
  ``segmentation.json`` in the stitched volume's frame); a killed segmentation resumes from its work folder,
  one left from an older stitched volume is discarded; a failure goes into ``error.json`` like the stitch's.

``OUTROOT/overnight.json`` holds the account of the last pass (rewritten atomically after each scan).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ProcessConfig
from .io.formats import SUBFOLDER_FORMATS, Evidence, nxtomo_evidence
from .io.sources import HDF5_SUFFIXES, NotAFrameFile, inspect_nxtomo, is_candidate
from .io.nxtomo import InputError
from .metrics import PipelineMetrics
from .chain.batch import process_scan
from .chain.final import ChainResult
from .chain.layout import plural, step_unit
from .chain.report import REPORT_NAME
from .io.names import (OVERNIGHT_ERROR_NAME, OVERNIGHT_SUMMARY_NAME, SEGMENTATION_SUMMARY_NAME, SEGMENTATION_WORK_NAME,
                       STITCH_REPORT_NAME, VOLUME_NAME)

log = logging.getLogger(__name__)

ERROR_NAME = OVERNIGHT_ERROR_NAME
SUMMARY_NAME = OVERNIGHT_SUMMARY_NAME
_SUFFIXES = HDF5_SUFFIXES
#: The alerts of the final pass that make a processed scan ``flagged`` instead of ``done``, with the severities
#: that do: the distances do not show one sample; no reliable rotation axis and the estimators far apart.
FLAG_ALERTS: dict[str, frozenset[str]] = {"ImplausibleProjections": frozenset({"critical", "warning"}),
                                          "RotationAxisUnreliable": frozenset({"critical"})}


def flagging(alerts: list[Any]) -> list[dict[str, Any]]:
    """The alert entries of a report that flag its scan (:data:`FLAG_ALERTS`)."""
    return [a for a in alerts if isinstance(a, dict) and a.get("severity") in FLAG_ALERTS.get(a.get("name"), ())]


@dataclass
class ScanFolder:
    """A scan (or scan attempt) found under the root.

    Attributes
    ----------
    folder : Path
        The folder.
    name : str
        Its path relative to the root.
    finished : bool
        Its files are finished (it may be processed now).
    why_not : str
        Why it is not finished.
    skip : str
        Why it is not processed although it looks like a scan ('' : processed when finished).
    problem : str
        Why it cannot be a scan, found without processing it (it fails with this reason).
    """

    folder: Path
    name: str
    finished: bool
    why_not: str = ""
    skip: str = ""
    problem: str = ""


@dataclass
class OvernightResult:
    """One pass of the queue: scan names per outcome, with the reasons.

    ``failed`` and ``flagged`` hold ``{"scan": name, "error" | "reason": why}`` (a stitch or segmentation of a
    sample that failed is listed as ``<sample>.stitched``); ``why`` holds the reason of each skipped and waiting
    scan.
    """

    done: list[str] = field(default_factory=list)
    flagged: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    stitched: dict[str, list[str]] = field(default_factory=dict)  # sample -> scans stitched this pass
    segmented: list[str] = field(default_factory=list)  # stitched samples segmented this pass


@dataclass
class QueueView:
    """What the queue is doing now: its stage (``processing``, ``stitching``, ``segmenting``, ``finished``),
    the step of every scan being processed, how many of this pass's scans are finished. ``overnight.json``
    holds it (``stage``, ``progress``) and :meth:`line` is the printed progress view."""

    total: int
    stage: str = "processing"
    steps: dict[str, str] = field(default_factory=dict)
    finished: int = 0

    def step(self, name: str, done: int, total: int, step: str) -> None:
        """Scan ``name`` is at ``done`` of ``total`` units of final-pass step ``step``."""
        self.steps[name] = f"{step} {done}/{total} {plural(step_unit(step), total)}"

    def line(self, queued: int) -> str:
        """One line: ``overnight [4/12 scans finished, processing] scan_05: phase 12/40 batches; 6 queued``."""
        running = "; ".join(f"{name}: {step}" for name, step in sorted(self.steps.items()))
        return (f"overnight [{self.finished}/{self.total} scans finished, {self.stage}] {running or '-'}"
                + (f"; {queued} queued" if queued else ""))


def _frame_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
    except OSError:
        return []


def _scan_like(folder: Path) -> list[Path]:
    """The files of ``folder`` a scan is made of, by name (HDF5 and EDF), hidden and temporary ones aside."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_candidate(p))
    except OSError:
        return []


def _status(path: Path) -> str:
    """``"none"``: a readable HDF5 file without an NXtomo entry (truth, master or analysis file: no part of a
    scan); ``"broken"``: an HDF5 file that cannot be read as a distance file; ``"ok"``: a distance file (or an
    EDF file: its folder's metadata decide)."""
    if path.suffix.lower() not in _SUFFIXES:
        return "ok"
    try:
        inspect_nxtomo(path, signature=False)
    except NotAFrameFile:
        return "none"
    except Exception:  # noqa: BLE001 - unreadable or broken: part of a (broken) scan attempt
        return "broken"
    return "ok"


def _settled(files: list[Path], settle_s: float, now: float) -> str:
    """'' when none of ``files`` changed within ``settle_s``, else why not."""
    for p in files:
        try:
            if now - p.stat().st_mtime < settle_s:
                return f"{p.name} changed less than {settle_s:g} s ago"
        except OSError:
            continue
    return ""


def _distance_folder(folder: Path, settle_s: float, now: float) -> Evidence | None:
    """The evidence of a distance sub-folder in the first input format that has some (EDF, a chunk series)."""
    return next((e for f in SUBFOLDER_FORMATS if (e := f.evidence(folder, settle_s, now)) is not None), None)


def find_scans(root: str | Path, settle_s: float = 60.0, exclude: str | Path | None = None) -> list[ScanFolder]:
    """Scan folders and scan attempts under ``root`` (rules in the module docstring), in path order.

    Raises
    ------
    InputError
        If ``root`` is not a folder.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise InputError(root, "is not a folder (the root of the day's scan folders)")
    skip = Path(exclude).absolute() if exclude is not None else None
    now = time.time()

    def name_of(here: Path) -> str:
        return here.relative_to(root).as_posix() if here != root else root.name

    found: list[ScanFolder] = []
    # folders that are no scan themselves: their scan-like files, and their sub-folders holding such files
    others: dict[Path, tuple[list[Path], list[Path]]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and (skip is None or here / d != skip))
        z1s, why = nxtomo_evidence(_frame_files(here), settle_s, now)
        subs = []
        for d in dirnames:
            if _scan_like(here / d):
                subs.append(here / d)
            evidence = _distance_folder(here / d, settle_s, now)  # an EDF folder, or chunk files of one z1
            if evidence is not None:
                z1s |= evidence[0]
                why = why or evidence[1]
        if len(z1s) >= 2:
            found.append(ScanFolder(here, name_of(here), not why, why))
            dirnames[:] = []  # its sub-folders are its distances
        else:
            others[here] = (_scan_like(here), subs, z1s)
    scans = {s.folder for s in found}
    attempts: list[ScanFolder] = []
    taken: list[Path] = []
    for here in sorted(others):
        if any(t in here.parents for t in taken):
            continue  # a distance sub-folder of an attempt found above
        files, subs, z1s = others[here]
        nested = sorted(s for s in scans if here in s.parents)
        distance_like = [d for d in subs if d not in scans and not any(d in s.parents for s in scans)]
        if not files and (nested or not (len(distance_like) >= 2 or (distance_like and z1s))):
            continue  # a folder of folders: they are judged on their own
        members = files + [p for d in distance_like for p in _scan_like(d)]
        name = name_of(here)
        if nested:
            stray = [p for p in files if _status(p) != "none"]
            if stray:
                attempts.append(ScanFolder(here, name, True, problem=(
                    f"{len(stray)} scan file(s) ({', '.join(p.name for p in stray[:4])}) lie beside the "
                    f"scan folders below it ({', '.join(name_of(s) for s in nested[:4])}) and make no scan: "
                    "move them into a scan folder of their own")))
            continue
        taken.append(here)
        status = [_status(p) for p in members]
        if all(st == "none" for st in status):
            attempts.append(ScanFolder(here, name, True, skip=(
                f"no NXtomo entry in its HDF5 files ({', '.join(p.name for p in members[:4])}): not a scan")))
            continue
        why = _settled(members, settle_s, now)
        if not why and z1s and "broken" not in status:  # one good distance, nothing broken: the others may come
            why = (f"one distance only (z1 = {min(z1s):.6g} m): a scan needs two or more; waiting for the "
                   "others")
        attempts.append(ScanFolder(here, name, not why, why))
    return sorted(found + attempts, key=lambda s: s.name)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_overnight(root: str | Path, out_root: str | Path, config: ProcessConfig | None = None,
                  metrics: PipelineMetrics | None = None, settle_s: float = 60.0,
                  process: Callable[..., ChainResult] = process_scan,
                  on_scan: Callable[[str, str, float | None], None] | None = None,
                  concurrent: int = 1, executor_for_scan: Callable[[], Any] | None = None,
                  stitch: bool = False, stitch_runner: Callable[..., Any] | None = None,
                  segment: bool = False, segment_block_shape: tuple[int, int, int] = (64, 128, 128),
                  segment_scales: tuple[int, ...] | None = None,
                  on_progress: Callable[[str], None] | None = None, progress_every_s: float = 5.0
                  ) -> OvernightResult:
    """One pass of the overnight queue over ``root`` into ``out_root``.

    Parameters
    ----------
    root, out_root : str or Path
        Where the scan folders are; where their outputs go (``out_root/<scan>``).
    config : ProcessConfig, optional
        Options of the final pass for every scan.
    metrics : PipelineMetrics, optional
        Exporter to account the queue in (queued, running, waiting, done/flagged/failed/skipped, durations,
        each report).
    settle_s : float
        Quiet time after which a file without ``end_time`` counts as finished.
    process : callable
        The final pass (``process(folder, out, config, executor=...)``); replaceable for tests.
    on_scan : callable, optional
        ``on_scan(name, status, duration_s)`` after each scan (``done``, ``flagged``, ``failed`` or
        ``skipped``).
    concurrent : int
        Scans processed at once (each from its own driver thread).
    executor_for_scan : callable, optional
        Makes the executor of one scan (e.g. a Ray executor limited to its share of the cluster); None runs
        each scan's tasks in its thread.
    stitch : bool
        Stitch the finished scans of each sample (module docstring).
    stitch_runner : callable, optional
        How the stitch runs (:func:`actors.stitch.run_stitch_ray` on Ray; default here).
    segment : bool
        Segment every stitched sample that is newer than its segmentation (:func:`segment_samples`).
    segment_block_shape : (int, int, int)
        Its blocks.
    segment_scales : tuple of int, optional
        The network's scales (``segment --scales``; None: the model's).
    on_progress : callable, optional
        ``on_progress(line)`` with the progress view (:meth:`QueueView.line`) at most every
        ``progress_every_s`` while scans are processed, and at each change of stage; ``overnight.json`` is
        rewritten as often.

    Returns
    -------
    OvernightResult
    """
    out_root = Path(out_root).absolute()
    config = config or ProcessConfig()
    result = OvernightResult()
    scans = find_scans(root, settle_s, exclude=out_root)
    for s in scans:
        if not s.finished:
            result.waiting.append(s.name)
            result.why[s.name] = s.why_not
            log.info("overnight: %s is not finished (%s); left for a later pass", s.name, s.why_not)
    todo = []
    for s in (s for s in scans if s.finished):
        report = out_root / s.name / REPORT_NAME
        why = s.skip or (f"{REPORT_NAME} exists{_flag_note(report)}" if report.exists() else "")
        if why:
            result.skipped.append(s.name)
            result.why[s.name] = why
            if metrics:
                metrics.overnight_scan("skipped")
            if on_scan:
                on_scan(s.name, "skipped", None)
        else:
            todo.append(s)
    if metrics:
        metrics.overnight_waiting.set(len(result.waiting))
    summary_path = out_root / SUMMARY_NAME
    started = time.time()
    lock = threading.Lock()
    running: set[str] = set()
    queued = [s.name for s in todo]
    view = QueueView(len(todo))
    shown = [0.0]  # when the view was last written and shown

    def account() -> None:
        with lock:
            shown[0] = time.monotonic()
            _write_json(summary_path, {"root": str(Path(root).absolute()), "started": started,
                                       "updated": time.time(), **asdict(result), "running": sorted(running),
                                       "queued": list(queued), "stage": view.stage, "progress": dict(view.steps)})
            if metrics:
                metrics.overnight_queue_length(len(queued))
                metrics.overnight_running.set(len(running))
            line = view.line(len(queued))
        if on_progress:
            on_progress(line)

    def stepped(name: str) -> Callable[[int, int, str], None]:
        def progress(done: int, total: int, step: str) -> None:
            with lock:
                view.step(name, done, total, step)
            if time.monotonic() - shown[0] >= progress_every_s:
                account()
        return progress

    def one(s: ScanFolder) -> None:
        with lock:
            queued.remove(s.name)
            running.add(s.name)
        account()
        out = out_root / s.name
        t0 = time.perf_counter()
        status = "done"
        try:
            if s.problem:
                raise InputError(s.folder, s.problem)
            kwargs = {"executor": executor_for_scan()} if executor_for_scan is not None else {}
            chain = process(s.folder, out, config, progress=stepped(s.name), **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded, and the queue goes on
            status = "failed"
            dt = time.perf_counter() - t0
            error = {"scan": str(s.folder), "error": str(exc), "type": type(exc).__name__,
                     "file": getattr(exc, "path", None), "duration_s": round(dt, 3), "time": time.time(),
                     "traceback": traceback.format_exc(limit=8)}
            _write_json(out / ERROR_NAME, error)
            with lock:
                result.failed.append({"scan": s.name, "error": f"{type(exc).__name__}: {exc}"})
            log.error("overnight: %s failed after %.1f s: %s: %s (recorded in %s)", s.name, dt,
                      type(exc).__name__, exc, out / ERROR_NAME)
        else:
            dt = time.perf_counter() - t0
            (out / ERROR_NAME).unlink(missing_ok=True)  # a previous failure of this scan is resolved
            report = chain.report.to_dict()
            flags = flagging(report.get("alerts", []))
            reason = "; ".join(f"{a['name']}: {a.get('message', '')}" for a in flags)
            with lock:
                if flags:
                    status = "flagged"
                    result.flagged.append({"scan": s.name, "reason": reason})
                else:
                    result.done.append(s.name)
            if flags:
                log.error("overnight: %s processed but flagged: %s", s.name, reason)
            if metrics:
                metrics.observe_report(report)
        with lock:
            result.durations_s[s.name] = round(dt, 3)
            running.discard(s.name)
            view.steps.pop(s.name, None)
            view.finished += 1
        if metrics:
            metrics.overnight_scan(status, dt)
        if on_scan:
            on_scan(s.name, status, dt)
        account()

    account()
    if concurrent <= 1:
        for s in todo:
            one(s)
    else:
        with ThreadPoolExecutor(max_workers=int(concurrent), thread_name_prefix="xnh-overnight") as pool:
            list(pool.map(one, todo))
    if stitch:
        view.stage = "stitching"
        account()
        result.stitched = stitch_samples(out_root, [s.name for s in scans if s.finished], stitch_runner,
                                         failed=result.failed)
    if stitch and segment:
        view.stage = "segmenting"
        account()
        result.segmented = segment_samples(out_root, segment_block_shape, failed=result.failed,
                                           scales=segment_scales)
    view.stage = "finished"
    account()
    return result


def _flag_note(report: Path) -> str:
    """``" (flagged: ...)"`` when a scan's existing report carries a flagging alert, else ''."""
    try:
        alerts = json.loads(report.read_text()).get("alerts", [])
    except (OSError, ValueError, AttributeError):
        return ""
    names = sorted({a["name"] for a in flagging(alerts)})
    return f" (flagged: {', '.join(names)})" if names else ""


#: Folder suffix of a sample's stitched volume under the output root.
STITCHED_SUFFIX = ".stitched"


def stitch_samples(out_root: Path, names: list[str], runner: Callable[..., Any] | None = None,
                   failed: list[dict[str, str]] | None = None) -> dict[str, list[str]]:
    """Stitch the finished outputs of each sample (two or more, with a stage position) into
    ``out_root/<sample>.stitched``; returns the scans stitched per sample (this call). A sample whose stitch
    fails is recorded in its folder's ``error.json`` and appended to ``failed`` as ``{"scan":
    "<sample>.stitched", "error": why}``."""
    from .stitch import stitch_outputs  # noqa: PLC0415

    groups: dict[str, list[Path]] = {}
    for name in names:
        out = out_root / name
        if not (out / REPORT_NAME).exists():
            continue
        try:  # only the sample's name and place are needed: read them, not the whole report's schema
            report = json.loads((out / REPORT_NAME).read_text())
            sample = (report.get("sample") if isinstance(report, dict) else None) or {}
            if not isinstance(sample, dict):
                raise ValueError(f"'sample' is {type(sample).__name__}, not an object")
        except (OSError, ValueError) as exc:
            log.warning("overnight: %s has an unreadable report (%s): not stitched", name, exc)
            continue
        if sample.get("name") and sample.get("position_m"):
            groups.setdefault(str(sample["name"]), []).append(out)
    done: dict[str, list[str]] = {}
    for sample, outs in sorted(groups.items()):
        if len(outs) < 2:
            continue
        dest = out_root / f"{_safe(sample)}{STITCHED_SUFFIX}"
        newest = max((o / REPORT_NAME).stat().st_mtime for o in outs)
        stitched, report = dest / VOLUME_NAME / "zarr.json", dest / STITCH_REPORT_NAME
        if report.exists() and stitched.exists() and report.stat().st_mtime >= newest:
            continue  # up to date
        try:
            stitch_outputs(outs, dest, runner=runner)
        except Exception as exc:  # noqa: BLE001 - recorded; the other samples go on
            _write_json(dest / ERROR_NAME, {"sample": sample, "scans": [str(o) for o in outs], "error": str(exc),
                                            "type": type(exc).__name__, "traceback": traceback.format_exc(limit=8)})
            log.error("overnight: stitching sample %s failed: %s (recorded in %s)", sample, exc, dest / ERROR_NAME)
            if failed is not None:
                failed.append({"scan": dest.name, "error": f"stitching failed: {exc} (recorded in {dest / ERROR_NAME})"})
            continue
        (dest / ERROR_NAME).unlink(missing_ok=True)
        done[sample] = [o.name for o in outs]
        log.info("overnight: %d scans of sample %s stitched into %s", len(outs), sample, dest)
    return done


#: The stitched folder's segmentation summary (``segment``'s ``segmentation.json``) and work folder.
SEGMENT_SUMMARY, SEGMENT_WORK = SEGMENTATION_SUMMARY_NAME, SEGMENTATION_WORK_NAME


def segment_samples(out_root: Path, block_shape: tuple[int, int, int] = (64, 128, 128),
                    failed: list[dict[str, str]] | None = None, scales: tuple[int, ...] | None = None) -> list[str]:
    """Segment every stitched sample under ``out_root`` whose ``stitch.json`` is newer than its
    ``segmentation.json``, blockwise, with SWC skeletons in ``<sample>.stitched/swc`` (the ``segment`` command's
    own run: labels in the stitched volume, summary, skeletons, all in its frame). A work folder older than
    the stitch (of a previous stitched volume) is removed first; a younger one is resumed. Returns the samples
    segmented; a failure is logged, recorded in the folder's ``error.json`` and appended to ``failed`` (as
    :func:`stitch_samples` does). ``scales``: the network's (``segment --scales``; None: the model's)."""
    import argparse  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from .segment.commands import add_parsers  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="overnight")
    add_parsers(parser.add_subparsers())
    done = []
    for dest in sorted(Path(out_root).glob(f"*{STITCHED_SUFFIX}")):
        stitch = dest / STITCH_REPORT_NAME
        if not stitch.exists() or not (dest / VOLUME_NAME).exists():
            continue
        summary, work = dest / SEGMENT_SUMMARY, dest / SEGMENT_WORK
        if summary.exists() and summary.stat().st_mtime >= stitch.stat().st_mtime:
            continue  # up to date
        if work.exists() and (not (work / "spec.json").exists()
                              or (work / "spec.json").stat().st_mtime < stitch.stat().st_mtime):
            shutil.rmtree(work)  # made for an older stitched volume
        shutil.rmtree(dest / "swc", ignore_errors=True)
        a = parser.parse_args(["segment", str(dest), "--out", str(dest), "--block-shape", *map(str, block_shape),
                               "--swc", str(dest / "swc")] + (["--scales", *map(str, scales)] if scales else []))
        try:
            a.func(a)
        except Exception as exc:  # noqa: BLE001 - recorded; the other samples go on
            _write_json(dest / ERROR_NAME, {"segment": str(dest), "error": str(exc), "type": type(exc).__name__,
                                            "traceback": traceback.format_exc(limit=8)})
            log.error("overnight: segmenting %s failed: %s (recorded in %s)", dest, exc, dest / ERROR_NAME)
            if failed is not None:
                failed.append({"scan": dest.name, "error": f"segmentation failed: {exc} (recorded in {dest / ERROR_NAME})"})
            continue
        done.append(dest.name[: -len(STITCHED_SUFFIX)])
        log.info("overnight: %s segmented (labels, SWC in %s)", dest, dest / "swc")
    return done


def _safe(name: str) -> str:
    """A sample name usable as a folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "sample"
