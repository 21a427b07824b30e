"""Never report success on a wrong volume: the end of the final pass under kills and damaged files.

A final pass ends by checking its volume, staging its report in ``OUT/work`` and publishing both by renames
(:mod:`xnh_stream.chain.publish`). Here it is killed at every boundary of that end (and while the work folder
is deleted), in this process (the kill is an exception raised where ``crash_point`` would SIGKILL) and, for
two boundaries, for real with ``kill -9`` through the command line; at every instant the folder must hold
either no report or a report that describes the volume beside it, and the same command run again must end
with the uninterrupted run's volume. Then work units and volume chunks are damaged (a deleted chunk, flipped
bytes, random bytes, an empty chunk, a damaged result file) and the rerun must redo them, never read them;
a damaged published volume is refused. Also the one writer per output folder (``OUT/.xnh.lock``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.executor import SerialExecutor
from xnh_stream.chain.final import ChainLayout
from xnh_stream.chain.publish import VolumeStats, check_volume, damaged_units
from xnh_stream.chain.report import ScanReport
from xnh_stream.cli import main
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import InputError
from xnh_stream.io.omezarr import read_volume
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.state.lock import OutputLock
from xnh_stream.state.work import CRASH_ENV, TRASH_PREFIX, WorkFolder

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=12, oversample=1, n_flats=3, n_darks=2)
CONFIG = {"alignment.angles": 8}
LAYOUT = ChainLayout(angle_batch=5, slab_rows=4)

#: Every instant of the end of a final pass where a kill must be harmless, in the order they happen.
END_POINTS = ["volume:checked", "publish:staged", "publish:old-report-removed", "trash:renamed",
              "publish:old-volume-removed", "publish:volume-moved", "publish:report-moved", "publish:done"]


class Killed(BaseException):
    """What a SIGKILL at a crash point becomes in this process."""


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(name)``: the next ``crash_point(name)`` raises :class:`Killed` instead of killing the process."""
    real = os.kill

    def fake(pid: int, sig: int) -> None:
        if sig == signal.SIGKILL and pid == os.getpid():
            raise Killed(os.environ.get(CRASH_ENV))
        real(pid, sig)

    monkeypatch.setattr(os, "kill", fake)
    return lambda name: monkeypatch.setenv(CRASH_ENV, name)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SIM)
    return folder


@pytest.fixture(scope="module")
def reference(scan, tmp_path_factory):
    """The uninterrupted run: its volume and report."""
    out = tmp_path_factory.mktemp("reference")
    result = process_scan(scan, out, ProcessConfig.from_mapping(CONFIG), layout=LAYOUT)
    return result.volume, ScanReport.load(out)


@pytest.fixture(scope="module")
def checked(scan, tmp_path_factory):
    """An output folder of a run killed at ``volume:checked``: every unit done and checked, nothing published
    (each test copies it; the end of a pass is what the tests here kill and damage)."""
    real = os.kill

    def fake(pid: int, sig: int) -> None:
        if sig == signal.SIGKILL and pid == os.getpid():
            raise Killed("volume:checked")
        real(pid, sig)

    out = tmp_path_factory.mktemp("checked") / "out"
    os.environ[CRASH_ENV], os.kill = "volume:checked", fake
    try:
        with pytest.raises(Killed):
            run(scan, out)
    finally:
        os.environ.pop(CRASH_ENV, None)
        os.kill = real
    (out / ".xnh.lock").unlink(missing_ok=True)
    return out


def from_checked(checked: Path, tmp_path: Path) -> Path:
    """A copy of the :func:`checked` folder: the work of a killed run, to resume."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(checked, out)
    return out


@pytest.fixture(scope="module")
def other(scan, tmp_path_factory):
    """Outputs of the same scan made with other options (what ``--overwrite`` replaces)."""
    out = tmp_path_factory.mktemp("other")
    process_scan(scan, out, ProcessConfig.from_mapping({**CONFIG, "fbp.window": "hann"}), layout=LAYOUT)
    return out


def run(scan: Path, out: Path, replace: bool = False):
    return process_scan(scan, out, ProcessConfig.from_mapping(CONFIG), layout=LAYOUT, replace=replace)


def consistent(out: Path) -> bool:
    """The folder's invariant: no report, or a report whose checksums the volume beside it matches."""
    if not (out / "report.json").exists():
        return True
    report = ScanReport.load(out)
    return report.volume is not None and not damaged_units(out / "volume.ome.zarr", report.volume, SerialExecutor())


def assert_finished(out: Path, reference) -> None:
    volume, report = reference
    np.testing.assert_array_equal(read_volume(out / "volume.ome.zarr")[0], volume)
    got = ScanReport.load(out)
    assert got.volume == report.volume and got.fsc.resolution_m == report.fsc.resolution_m
    assert not (out / "work").exists()
    assert not list(out.glob(f"{TRASH_PREFIX}*"))


def copy_outputs(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".xnh.lock"))


@pytest.mark.parametrize("point", END_POINTS)
def test_a_kill_at_any_instant_of_the_end_then_a_rerun_gives_the_volume(point, scan, reference, checked, kill_at,
                                                                        tmp_path):
    """Output folder without earlier outputs: the pass (resumed with every unit done) killed at ``point``; the
    folder is consistent at that instant, and the same call again ends with the uninterrupted volume and
    report (published or finished, never recomputed from missing parts)."""
    out = from_checked(checked, tmp_path)
    kill_at(point)
    with pytest.raises(Killed):
        run(scan, out)
    assert consistent(out)
    kill_at("")
    result = run(scan, out)
    assert_finished(out, reference)
    assert result.report.volume == reference[1].volume


@pytest.mark.parametrize("point", END_POINTS)
def test_a_kill_while_replacing_older_outputs_never_leaves_a_report_beside_another_volume(point, scan, reference,
                                                                                        other, checked, kill_at,
                                                                                        tmp_path):
    """``--overwrite`` over the outputs of other options: at every instant the report (old or new) describes
    the volume beside it, or there is no report; the rerun ends with the new outputs."""
    out = tmp_path / "out"
    copy_outputs(other, out)
    import shutil

    shutil.copytree(checked / "work", out / "work")  # this run's units, done (the old outputs beside them)
    kill_at(point)
    with pytest.raises(Killed):
        run(scan, out, replace=True)
    assert consistent(out)
    kill_at("")
    run(scan, out, replace=True)
    assert_finished(out, reference)


def test_outputs_of_other_options_are_refused_without_replace(scan, other, tmp_path):
    out = tmp_path / "out"
    copy_outputs(other, out)
    with pytest.raises(InputError, match="outputs of another run"):
        run(scan, out)
    assert consistent(out) and (out / "report.json").exists()


def test_a_finished_folder_is_checked_not_recomputed_and_a_damaged_one_is_refused(scan, reference, tmp_path):
    out = tmp_path / "out"
    copy_outputs_from = run(scan, out)
    assert not copy_outputs_from.already_complete
    again = run(scan, out)
    assert again.already_complete and again.report.volume == reference[1].volume
    chunk = sorted((out / "volume.ome.zarr" / "s0").rglob("c/*/*/*"))[1]
    flip_bytes(chunk)
    with pytest.raises(InputError, match="is damaged: 1 unit differs"):
        run(scan, out)
    run(scan, out, replace=True)  # --overwrite: processed again
    assert_finished(out, reference)


# ---------------------------------------------------------------------------------------------- damage
def flip_bytes(path: Path, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    for i in rng.choice(len(data), size=min(n, len(data)), replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(4).bytes(max(64, path.stat().st_size)))


def empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [delete, flip_bytes, garbage, empty])
def test_a_damaged_chunk_of_a_finished_slab_is_redone_not_read(damage, scan, reference, checked, monkeypatch,
                                                              tmp_path):
    """Killed with every unit done (nothing published); a finished chunk of the work volume is then deleted,
    flipped, replaced by random bytes or emptied: the rerun redoes that slab, and only it, and ends with the
    right volume."""
    from xnh_stream.chain import final

    out = from_checked(checked, tmp_path)
    chunks = sorted((out / "work" / "volume.ome.zarr" / "s0").rglob("c/*/*/*"))
    assert len(chunks) == 4  # 16 rows in slabs of 4
    damage(chunks[2])
    redone = []
    real = final.slab_task
    monkeypatch.setattr(final, "slab_task", lambda job, store: redone.append(job.r0) or real(job, store))
    run(scan, out)
    assert redone == [8]  # the third slab of 4 rows
    assert_finished(out, reference)


def test_damaged_projections_halves_and_results_are_redone(scan, reference, checked, tmp_path):
    """A slab to redo reads the projections again: a deleted projection chunk and a flipped one are found by
    their checksums and their phase units redone; a damaged FSC-halves chunk redoes its slab; a damaged
    saved result (the rotation axis) is computed again."""
    out = from_checked(checked, tmp_path)
    work = out / "work"
    projections = sorted((work / "projections.zarr").rglob("c/*/*/*"))
    delete(projections[3])
    flip_bytes(projections[40])
    delete(sorted((work / "volume.ome.zarr" / "s0").rglob("c/*/*/*"))[0])  # so that a slab reads them again
    flip_bytes(sorted((work / "fsc_halves.zarr").rglob("c/*/*/*/*"))[0])
    flip_bytes(work / "results" / "rotation_axis.pkl")
    run(scan, out)
    assert_finished(out, reference)


def test_a_damaged_staged_volume_is_repaired_before_it_is_published(scan, reference, checked, kill_at, tmp_path):
    out = from_checked(checked, tmp_path)
    kill_at("publish:volume-moved")  # the new volume is in OUT, its report still in the work folder
    with pytest.raises(Killed):
        run(scan, out)
    flip_bytes(sorted((out / "volume.ome.zarr" / "s0").rglob("c/*/*/*"))[1])
    kill_at("")
    run(scan, out)
    assert_finished(out, reference)


def test_a_work_folder_without_its_spec_is_not_trusted(scan, reference, checked, tmp_path):
    """What the old deletion left when killed: markers without spec.json. They are not believed (the volume
    they describe may be half deleted): the pass starts afresh and gets the right volume."""
    out = from_checked(checked, tmp_path)
    (out / "work" / "spec.json").unlink()
    for chunk in sorted((out / "work" / "volume.ome.zarr" / "s0").rglob("c/*/*/*"))[:2]:
        chunk.unlink()
    run(scan, out)
    assert_finished(out, reference)


def test_the_pyramid_levels_are_checked_too(kill_at, tmp_path):
    """A volume with a second level (64^3): a damaged level-1 chunk of the work is made again on resume; a
    damaged level-1 chunk of the published volume is named in the refusal."""
    folder = tmp_path / "scan"
    simulate_scan(folder, SimulationConfig(nx=64, ny=64, n_angles=16, seed=5, oversample=1, n_flats=2, n_darks=1))
    config = ProcessConfig.from_mapping({**CONFIG, "fbp.cor": 31.5})
    layout = ChainLayout(angle_batch=8, slab_rows=32)
    clean = process_scan(folder, tmp_path / "clean", config, layout=layout)
    assert set(clean.report.volume.units) == {"s0", "s1"}
    out = tmp_path / "out"
    kill_at("volume:checked")
    with pytest.raises(Killed):
        process_scan(folder, out, config, layout=layout)
    flip_bytes(sorted((out / "work" / "volume.ome.zarr" / "s1").rglob("c/*/*/*"))[0])
    kill_at("")
    process_scan(folder, out, config, layout=layout)
    for level in (0, 1):
        np.testing.assert_array_equal(read_volume(out / "volume.ome.zarr", level)[0],
                                      read_volume(tmp_path / "clean" / "volume.ome.zarr", level)[0])
    flip_bytes(sorted((out / "volume.ome.zarr" / "s1").rglob("c/*/*/*"))[0])
    with pytest.raises(InputError, match="s1 rows 0-"):
        process_scan(folder, out, config, layout=layout)


# ---------------------------------------------------------------------------------------------- plausibility
def test_check_volume_names_what_is_wrong():
    rng = np.random.default_rng(0)
    good = VolumeStats.of(rng.normal(size=(4, 8, 8)).astype(np.float32))
    assert check_volume(good, projection_absmax=10.0) == []
    with_nan = rng.normal(size=(4, 8, 8)).astype(np.float32)
    with_nan[1, 2, 3] = np.nan
    assert check_volume(VolumeStats.of(with_nan), 10.0) == ["1 of 256 voxels are NaN or infinite"]
    assert "constant" in check_volume(VolumeStats.of(np.zeros((4, 8, 8), np.float32)), 10.0)[0]
    wild = rng.normal(size=(4, 8, 8)).astype(np.float32)
    wild[0, 0, 0] = 3.4e38
    assert "beyond" in check_volume(VolumeStats.of(wild), 10.0)[0]
    # combined over slabs as over the whole
    a, b = with_nan[:2], with_nan[2:]
    assert (VolumeStats.of(a) + VolumeStats.of(b)).nonfinite == 1
    both = VolumeStats.of(a[np.isfinite(a)]) + VolumeStats.of(b)
    assert both.mean == pytest.approx(float(np.nanmean(with_nan)), rel=1e-6)


def test_the_range_bound_holds_for_the_worst_projections():
    """FBP of projections bounded by P stays within RANGE_FACTOR * P (the bound is not a tuned number:
    sign-alternating and constant projections, every window and padding, stay below half of it)."""
    from xnh_stream.chain.publish import RANGE_FACTOR
    from xnh_stream.physics.fbp import WINDOWS, FBPAccumulator

    rng = np.random.default_rng(1)
    n, angles = 48, 60
    worst = 0.0
    for window in WINDOWS:
        for padding in ("zeros", "edge"):
            for p in (rng.choice([-1.0, 1.0], size=(angles, 2, n)), np.ones((angles, 2, n)),
                      np.tile((-1.0) ** np.arange(n), (angles, 2, 1))):
                acc = FBPAccumulator(2, n, cor=(n - 1) / 2, window=window, padding=padding)
                acc.add_many(p.astype(np.float32), np.linspace(0, np.pi, angles, endpoint=False))
                worst = max(worst, float(np.abs(acc.volume()).max()))
    assert worst < RANGE_FACTOR / 2


def test_an_implausible_volume_is_not_published(scan, monkeypatch, tmp_path):
    """A NaN in the reconstruction (a bug, a bad kernel): the pass refuses and nothing lands in OUT."""
    from xnh_stream.physics import fbp

    real = fbp.FBPAccumulator.volume

    def poisoned(self, region=None):
        v = np.array(real(self, region))
        v[0, 0, 0] = np.nan
        return v

    monkeypatch.setattr(fbp.FBPAccumulator, "volume", poisoned)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not plausible: 4 of .* voxels are NaN"):
        run(scan, out)
    assert not (out / "report.json").exists() and not (out / "volume.ome.zarr").exists()


# ---------------------------------------------------------------------------------------------- kill -9
@pytest.mark.slow
@pytest.mark.parametrize("point", ["publish:volume-moved", "trash:renamed"])
def test_kill_9_of_the_command_at_the_end_then_the_same_command(point, scan, reference, tmp_path):
    """The issue's failing row: ``kill -9`` as the volume lands in OUT, and while OUT/work is deleted; then
    the same command: exit 0 and the uninterrupted volume (it was an empty volume, exit 0)."""
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text("alignment:\n  angles: 8\n")
    cmd = [sys.executable, "-m", "actors.cli", "process", str(scan), "--out", str(out), "--local", "--config",
           str(config), "--slab-rows", "4", "--angle-batch", "5"]
    killed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, CRASH_ENV: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert consistent(out)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != CRASH_ENV})
    assert again.returncode == 0, again.stderr[-2000:]
    assert_finished(out, reference)
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "already complete" in third.stdout


# ---------------------------------------------------------------------------------------------- the lock
HOLDER = textwrap.dedent("""
    import sys, time
    from xnh_stream.state.lock import OutputLock
    lock = OutputLock(sys.argv[1], "xnh-stream watch (test holder)")
    lock.acquire()
    print("held", flush=True)
    time.sleep(300)
""")


def test_a_second_command_on_the_same_output_is_refused_until_the_first_dies(scan, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError) as err:
            OutputLock(out, "test").acquire()
        message = str(err.value)
        assert f"PID {holder.pid} on {socket.gethostname()}" in message and "watch (test holder)" in message
        code = main(["process", str(scan), "--out", str(out), "--local"])
        assert code == 2 and "is in use by" in capsys.readouterr().err
        assert not (out / "work").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with OutputLock(out, "test") as lock:  # the kernel released the dead holder's lock: nothing stale
        with OutputLock(out, "nested"):  # re-entrant in one process (a stream's final pass in `watch`)
            pass
        assert json.loads((out / ".xnh.lock").read_text())["pid"] == os.getpid()
    assert lock.folder == out


def test_without_flock_a_dead_holder_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "xnh-stream process", "since": 0}
    (out / ".xnh.lock").write_text(json.dumps(record))
    with OutputLock(out, "test"):
        pass  # stale: taken over
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".xnh.lock").write_text(json.dumps({**record, "pid": live.pid}))
        with pytest.raises(InputError, match=f"PID {live.pid}"):
            OutputLock(out, "test").acquire()
    finally:
        live.kill()
        live.wait()


def test_a_work_folder_of_other_options_is_renamed_away_before_it_is_deleted(tmp_path, kill_at):
    """Killed while a foreign work folder is deleted: what is left is the trash, which the next run removes;
    the new work folder starts empty."""
    work = tmp_path / "work"
    old = WorkFolder(work, {"a": 1})
    old.mark("slab_r4", "0", {"crc": 1})
    kill_at("trash:renamed")
    with pytest.raises(Killed):
        WorkFolder(work, {"a": 2})
    assert not work.exists() and len(list(tmp_path.glob(f"{TRASH_PREFIX}*"))) == 1
    kill_at("")
    new = WorkFolder(work, {"a": 2})
    assert new.done("slab_r4") == {} and not new.resumed
    assert not list(tmp_path.glob(f"{TRASH_PREFIX}*"))


@pytest.mark.slow
def test_a_stream_killed_while_its_work_folder_is_deleted_keeps_its_volume(ray_local, scan, kill_at, tmp_path):
    """The issue's ``watch`` row: killed just after report.json appeared, while OUT/work was being deleted;
    the restarted stream finds the outputs complete (checked against the report) instead of making an empty
    volume from the markers of a half-deleted work folder."""
    from .test_stream import ListSource, stream

    out = tmp_path / "out"
    config = ProcessConfig.from_mapping({**CONFIG, "fbp.cor": (SIM.nx - 1) / 2})
    kill_at("trash:renamed")
    with pytest.raises(Killed):
        stream(ListSource(scan), scan, out, config, poll_interval_s=0.0, layout=LAYOUT)
    published = read_volume(out / "volume.ome.zarr")[0]
    assert consistent(out) and np.count_nonzero(published) == published.size
    kill_at("")
    result = stream(ListSource(scan), scan, out, config, poll_interval_s=0.0, layout=LAYOUT)
    assert result.final is not None and result.final.already_complete
    np.testing.assert_array_equal(read_volume(out / "volume.ome.zarr")[0], published)
    assert not (out / "work").exists() and not list(out.glob(f"{TRASH_PREFIX}*"))
