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

