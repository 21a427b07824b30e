"""The command line as a user runs it: simulate, process, and clear errors with exit code 2."""

from __future__ import annotations

import json

from actors.cli import main


def test_simulate_then_process(tmp_path, capsys):
    scan, out = tmp_path / "scan", tmp_path / "out"
    assert main(["simulate", str(scan), "--nx", "64", "--ny", "24", "--angles", "24"]) == 0
    assert main(["process", str(scan), "--out", str(out), "--fbp-window", "hann", "--local"]) == 0
    text = capsys.readouterr().out
    assert "FSC resolution" in text and str(out / "report.json") in text
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["fbp"]["window"] == "hann"
    assert report["frames"]["received"] == report["frames"]["processed"] > 0
    assert report["phase"]["method"] == "ctf-multi-distance-two-material" and report["phase"]["envelope"]
    assert main(["process", str(scan), "--out", str(tmp_path / "single"), "--no-envelope", "--local"]) == 0
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    assert single["config"]["ctf"]["envelope"] is False and single["phase"]["method"] == "ctf-multi-distance"
    assert single["phase"]["envelope"] is None


def test_bad_input_exits_2_with_file_named(tmp_path, capsys):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "x_1_.nx").write_text("not hdf5")
    assert main(["process", str(tmp_path / "scan"), "--out", str(tmp_path / "out"), "--local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "x_1_.nx" in err and "cannot be opened as HDF5" in err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ctf_alpha_lo: 1\n")
    assert main(["process", str(tmp_path / "scan"), "--out", str(tmp_path / "o"), "--config", str(cfg), "--local"]) == 2
    assert "ctf_alpha_lo" in capsys.readouterr().err


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "something").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "old")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_demo_into_a_new_folder_starts(tmp_path, monkeypatch):
    """A new --out (the README's way): the output lock's file in it does not make it 'not empty' (it did:
    every demo with --out was refused)."""
    from xnh_stream import cli
    from xnh_stream.simulate import stream

    seen = {}
    monkeypatch.setattr(stream, "stream_scan", lambda folder, cfg, **kw: seen.setdefault("scan", folder))
    monkeypatch.setattr(cli, "_executor", lambda a, config: None)
    monkeypatch.setattr(cli, "_watch", lambda folder, out, config, a: seen.setdefault("out", out) and 0)
    assert main(["demo", "--out", str(tmp_path / "new")]) == 0
    assert seen == {"scan": tmp_path / "new" / "scan", "out": tmp_path / "new" / "out"}



# --- checks before anything starts, and what a failed command leaves --------------------------------------
HEAVY = ("ray", "torch", "dask", "skimage", "numba", "h5py", "zarr", "scipy", "xraydb")


def test_a_missing_scan_folder_is_refused_before_ray_or_a_server_in_a_fresh_interpreter(tmp_path):
    """As a user runs it (a fresh ``xnh-stream``): process and watch on a missing folder answer with exit 2,
    create no output folder, start no Ray and import none of the heavy libraries (the time a user waits is
    in bench/bench_cli_start.py, not here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import json, sys\n"
        "from actors.cli import main\n"
        f"codes = [main(['process', {str(tmp_path / 'nothing')!r}, '--out', {str(tmp_path / 'a' / 'out')!r}]),\n"
        f"         main(['watch', {str(tmp_path / 'nothing')!r}, '--out', {str(tmp_path / 'b')!r},\n"
        "               '--live-port', '1', '--metrics-port', '1'])]\n"
        f"print(json.dumps({{'codes': codes, 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"codes": [2, 2], "heavy": []}, (out, res.stderr)
    assert res.stderr.count(f"error: {tmp_path / 'nothing'}: does not exist") == 2
    assert "live page" not in res.stderr and "metrics" not in res.stderr  # no server started (port 1 refused)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither OUT nor its parent created


class _NoRuntime:
    """A runtime that fails the test when a command reaches it (Ray would start); main() closes it at the end."""

    def close(self):
        pass

    def __getattr__(self, name):
        raise AssertionError(f"the runtime was asked for {name} before the checks refused the command")


def test_inputs_options_and_configuration_are_refused_before_the_runtime(tmp_path, capsys, monkeypatch):
    from xnh_stream import cli

    empty, scan, out = tmp_path / "empty", tmp_path / "scan", tmp_path / "out"
    empty.mkdir()
    (scan / "d1").mkdir(parents=True)
    (scan / "d1" / "s_1_.nx").write_text("any content: the reader judges it later")
    (scan / "notes.txt").write_text("x")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("fbp: {window: boxcar}\n")
    cases = [
        (["process", str(empty), "--out", str(out)], f"{empty}: holds no scan file"),
        (["process", str(scan / "notes.txt"), "--out", str(out)], "notes.txt: is not a folder"),
        (["process", str(scan), "--out", str(out), "--angle-batch", "0"], "--angle-batch 0: must be at least 1"),
        (["process", str(scan), "--out", str(out), "--config", str(bad_yaml)], "fbp.window"),
        (["process", str(scan), "--out", str(out), "--config", str(tmp_path / "none.yaml")], "none.yaml"),
        (["watch", str(tmp_path / "none"), "--out", str(out)], "does not exist"),
        (["watch", str(empty), "--out", str(out), "--live-port", "70000"], "--live-port 70000: must be a port"),
        (["watch", str(empty), "--out", str(out), "--workers", "0"], "--workers 0: must be at least 1"),
        (["overnight", str(scan / "notes.txt"), "--out", str(out)], "is not a folder"),
        (["demo", "--out", str(out), "--nx", "1"], "simulation parameters"),
        (["stitch", str(tmp_path / "none"), "--out", str(out)], "none: does not exist"),
    ]
    for argv, expected in cases:
        assert cli.main(argv, runtime=_NoRuntime()) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, (argv, err)
        assert not out.exists(), argv
    monkeypatch.setenv("XNH_FBP_WINDOW", "boxcar")
    assert cli.main(["process", str(scan), "--out", str(out)], runtime=_NoRuntime()) == 2
    assert "fbp.window" in capsys.readouterr().err and not out.exists()
    # what passes: a folder with a scan file in a sub-folder; a watched folder that is still empty
    cli.check_input(scan, "scan")
    cli.check_input(empty, "watched")


def test_the_checked_suffixes_are_the_readers():
    from xnh_stream.cli import SCAN_SUFFIXES
    from xnh_stream.io.sources import EDF_SUFFIX, HDF5_SUFFIXES

    assert SCAN_SUFFIXES == HDF5_SUFFIXES | {EDF_SUFFIX}


def test_a_failed_command_removes_the_output_folder_it_created_and_nothing_else(tmp_path, capsys, monkeypatch):
    from xnh_stream import cli
    from xnh_stream.errors import InputError

    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "s_1_.nx").write_text("x")
    written: dict[str, str] = {}

    def fails(a):
        """Creates what it is told (empty sub-folders, a file), then fails like a bad input found late."""
        for sub in written.get("dirs", "").split():
            (a.out / sub).mkdir(parents=True)
        if "file" in written:
            (a.out / written["file"]).write_text("a journal")
        raise InputError(a.scan, "found bad late")

    monkeypatch.setattr(cli, "cmd_process", fails)
    run = lambda out: cli.main(["process", str(scan), "--out", str(out), "--local"])
    # created, left with nothing but empty sub-folders and the lock file: removed with its new parents
    written["dirs"] = "store work/done"
    assert run(tmp_path / "new" / "deeper" / "out") == 2
    assert "found bad late" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # created, and something written into it: kept whole
    written["file"] = "journal.sqlite"
    assert run(tmp_path / "kept") == 2
    assert (tmp_path / "kept" / "journal.sqlite").exists() and (tmp_path / "kept" / "store").is_dir()
    # existed before (empty): kept, whatever the failed command left in it
    written.clear()
    (tmp_path / "existing").mkdir()
    assert run(tmp_path / "existing") == 2
    assert (tmp_path / "existing").is_dir()
    # a command without an output lock (convert): its new folder goes too
    monkeypatch.setattr(cli, "cmd_convert", lambda a: (a.out.mkdir(parents=True), 1)[1])
    assert cli.main(["convert", str(scan), "--out", str(tmp_path / "nx" / "out")]) == 1
    assert not (tmp_path / "nx").exists()
    capsys.readouterr()


def test_progress_counts_the_unit_of_each_step(capsys):
    """The final pass's progress(done, total, step) is shown in the step's own unit, in plain lines (stderr
    not a terminal) as in the bars; every step the chain reports has a unit."""
    import re
    from pathlib import Path

    from xnh_stream import cli
    from xnh_stream.chain import final
    from xnh_stream.chain.layout import STEP_UNITS

    update, close = cli._progress_bars()
    for done, total, step in [(4, 4, "calibrate"), (8, 8, "align"), (3, 3, "phase"), (1, 1, "backproject"),
                              (2, 2, "pyramid"), (5, 5, "fsc"), (3, 3, "check survey")]:
        update(done, total, step)
    close()
    err = capsys.readouterr().err
    for line in ("progress calibrate: 4/4 distances", "progress align: 8/8 angles", "progress phase: 3/3 batches",
                 "progress backproject: 1/1 slab", "progress pyramid: 2/2 levels", "progress fsc: 5/5 boxes",
                 "progress check survey: 3/3 batches"):
        assert line in err, err
    source = Path(final.__file__).read_text()
    steps = set(re.findall(r'_map\(\s*"([^"]+)"', source)) | set(re.findall(r'\.progress\([^\n]*"([^"]+)"\)', source))
    assert steps >= {"calibrate", "phase", "backproject", "pyramid", "fsc"}
    assert steps <= set(STEP_UNITS), steps - set(STEP_UNITS)


def test_a_small_scan_runs_here_unless_ray_is_asked_for(tmp_path, capsys, monkeypatch):
    """``process`` without --address: a scan under SMALL_SCAN_BYTES of files runs in this process (the runtime
    is never asked: an embedded Ray costs more than it gives there); --ray, or a larger scan, asks for it;
    --local with --ray is refused."""
    from xnh_stream import cli

    scan, out = tmp_path / "scan", tmp_path / "out"
    assert main(["-q", "simulate", str(scan), "--nx", "48", "--ny", "16", "--angles", "16"]) == 0
    size = cli.scan_bytes(scan)
    assert 0 < size < cli.SMALL_SCAN_BYTES
    assert cli.main(["process", str(scan), "--out", str(out), "--cor", "23.5"], runtime=_NoRuntime()) == 0
    text = capsys.readouterr().out
    assert "a small scan: its tasks run in this process" in text and (out / "report.json").exists()

    class Asked(Exception):
        pass

    class Recording:
        def close(self):
            pass

        def executor(self, *args, **kwargs):
            raise Asked

    for argv, threshold in ((["--ray"], cli.SMALL_SCAN_BYTES), ([], size)):  # asked for, or not small
        monkeypatch.setattr(cli, "SMALL_SCAN_BYTES", threshold)
        try:
            cli.main(["process", str(scan), "--out", str(tmp_path / f"o{len(argv)}"), "--cor", "23.5", *argv],
                     runtime=Recording())
        except Asked:
            pass
        else:
            raise AssertionError(f"{argv}: the runtime was not asked for an executor")
    assert cli.main(["process", str(scan), "--out", str(tmp_path / "x"), "--local", "--ray"],
                    runtime=_NoRuntime()) == 2
    assert "--local runs here" in capsys.readouterr().err
