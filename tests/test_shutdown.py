"""SIGTERM and SIGINT stop a command cleanly: one line saying how to resume, exit 0 or 130, and the same
command resumes.

Before: SIGTERM made the embedded Ray print a C stack (``*** SIGTERM received ...``) and exit with 1 or abort,
SIGINT gave a KeyboardInterrupt traceback. The commands run here as a user runs them, the ``xnh-stream``
console script in a process of its own (its own session, so that a SIGINT to its process group is what a
Ctrl-C in a terminal sends), on a tiny simulated scan; each is stopped once it is working.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.state.journal import FrameJournal

from .test_network import SS, is_loopback, listeners_of

ROOT = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=12, oversample=1, n_flats=3, n_darks=2)
_SCRIPT = Path(sys.executable).with_name("xnh-stream")
XNH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "actors.cli"]
RESUME_HINT = "run the same command again to resume"
#: What a Python traceback or Ray's C++ failure handler (absl) writes.
CRASH_MARKS = ("Traceback", "*** SIGTERM", "*** SIGINT", "Stack trace", "Aborted", "PC: @", "logging.cc")
#: Only a guard against a command that never gets going (the test then fails with its output); not timed.
STARTUP_GUARD_S = 300.0


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    simulate_scan(folder, SIM)
    return folder


class Command:
    """A command in a process of its own, its stderr collected line by line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([*XNH, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_until(self, working: Callable[[], bool], what: str) -> None:
        """Return once ``working()`` holds; fail if the command ended (or never got there) first."""
        deadline = time.monotonic() + STARTUP_GUARD_S
        while not working():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the command ended (rc {self.proc.poll()}) before {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.02)

    def stop(self, signum: int, group: bool = False) -> tuple[int, str, str]:
        """Send ``signum`` (to the whole process group with ``group``, as a terminal's Ctrl-C does) and wait."""
        (signal_group if group else signal_process)(self.proc.pid, signum)
        return self.finish()

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end: the exit code, stdout and stderr."""
        out = self.proc.stdout.read()  # (not communicate(): the reader thread owns stderr)
        self.proc.wait()
        self._reader.join()
        return self.proc.returncode, out, self.stderr


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def signal_group(pid: int, signum: int) -> None:
    import os

    os.killpg(pid, signum)


def signal_process(pid: int, signum: int) -> None:
    import os

    os.kill(pid, signum)


def assert_stopped_cleanly(code: int, err: str, signum: int, expected: int) -> None:
    assert code == expected, err[-3000:]
    assert not [m for m in CRASH_MARKS if m in err], err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and RESUME_HINT in err, err[-3000:]


def test_process_stops_on_sigterm_and_sigint_and_resumes(scan, tmp_path):
    """SIGTERM to the command while its final pass runs on Ray: exit 0; run again, Ctrl-C (SIGINT to the
    process group, Ray's processes included): exit 130; run again: the volume."""
    out = tmp_path / "out"
    args = ["process", str(scan), "--out", str(out), "--ray"]  # a small scan: on Ray only when asked
    first = Command(args)
    first.wait_until(lambda: (out / "work" / "spec.json").exists(), "its final pass started")
    code, _, err = first.stop(signal.SIGTERM)
    assert_stopped_cleanly(code, err, signal.SIGTERM, 0)
    assert not (out / "report.json").exists()  # stopped, not finished

    second = Command(args)
    second.wait_until(lambda: any(line.startswith("progress ") for line in second.lines), "it made progress")
    code, _, err = second.stop(signal.SIGINT, group=True)
    assert_stopped_cleanly(code, err, signal.SIGINT, 130)
    assert not (out / "report.json").exists()

    code, stdout, err = Command(args).finish()
    assert code == 0, err[-3000:]
    assert (out / "volume.ome.zarr").is_dir() and (out / "report.json").is_file()
    assert "Traceback" not in err and "volume:" in stdout


def test_watch_stops_on_sigterm_with_its_journal_closed(scan, tmp_path):
    """A watched scan of which two distances have been written: SIGTERM while the stream waits for the rest.
    Exit 0, the journal closed (no WAL left beside it) with every frame that arrived, the output folder free
    for the same command again (a stream resumed from its journal: tests/test_stream.py, after kill -9)."""
    folder, out = tmp_path / "scan", tmp_path / "out"
    folder.mkdir()
    for n in (1, 2):
        shutil.copy(scan / f"{SIM.name}_{n}_.nx", folder)
    args = ["watch", str(folder), "--out", str(out), "--quiet-s", "600", "--metrics-port", str(free_port()),
            "--live-port", str(free_port()), "--no-segment", "--workers", "1", "--shards", "1"]
    watch = Command(args)
    watch.wait_until(lambda: any("progress distance 2" in line for line in watch.lines),
                     "the second distance arrived")
    if SS is not None:  # during the stream: Ray's services, the metrics endpoint and the live page
        owned = listeners_of(watch.proc.pid)
        assert len(owned) >= 4, owned  # not vacuous: GCS, raylet, metrics, live page at least
        outside = [(local, who) for local, who in owned if not is_loopback(local)]
        assert not outside, f"listening outside the loopback interface during a stream: {outside}"
    code, _, err = watch.stop(signal.SIGTERM)
    assert_stopped_cleanly(code, err, signal.SIGTERM, 0)
    assert (out / "journal.sqlite").exists() and not (out / "journal.sqlite-wal").exists()
    with FrameJournal(out / "journal.sqlite", readonly=True) as journal:
        received = journal.counts()["received"]
    assert received > 0
    from xnh_stream.cli import check_output
    from xnh_stream.state.lock import OutputLock

    with OutputLock(out, "the same command again"):  # released by the stopped command
        check_output(out, "resume", scan=folder)  # its journal is this scan's: resumed, not refused


def test_a_signal_wrapped_by_native_code_is_still_a_clean_stop(monkeypatch, capsys, tmp_path):
    """A signal that lands inside a compiled function comes out as that function's error (numba's
    dispatcher: ``SystemError ... returned a result with an exception set``, seen with SIGTERM during the
    live FSC): the command still stops cleanly with the signal's code, not a traceback."""
    import os

    from xnh_stream import cli

    def native(a):  # what numba's dispatcher does with the handler's exception
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(<function apodise_separable>) returned a result with an exception "
                              "set") from exc

    monkeypatch.setattr(cli, "cmd_simulate", native)
    code = cli.main(["simulate", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0 and "stopped by SIGTERM" in err and RESUME_HINT in err
