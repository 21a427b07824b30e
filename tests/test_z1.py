"""``--z1``: the focus-to-sample distance of files that do not record it (nxtomomill's conversions of EDF
scans, EDF folders without xnh.yaml), given on the command line of process, watch, convert and nabu-config.

The references are the simulation's own geometry, never values read back by the code under test.
"""

from __future__ import annotations

import logging
import shutil

import h5py
import numpy as np
import pytest

from actors.cli import main
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.io import nxtomo as nxio
from xnh_stream.io.nxtomo import InputError, read_nxtomo
from xnh_stream.io.sources import edf_geometry
from xnh_stream.io.z1 import parse_z1, supplying_z1, token
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.simulate.stream import stream_scan

CFG = SimulationConfig(nx=32, ny=16, n_angles=8, n_flats=2, n_darks=2, seed=5)
GEO = CFG.geometry()


@pytest.fixture(scope="module")
def raw_scan(tmp_path_factory):
    """A four-distance scan whose files lack z1 and the sample plane, as nxtomomill's edf2nx writes them."""
    sim = simulate_scan(tmp_path_factory.mktemp("raw"), CFG)
    for f in sim.files:
        with h5py.File(f, "a") as h:
            e = h["entry0000"]
            for name in ("instrument/source/distance", "sample/x_pixel_size", "sample/y_pixel_size",
                         "sample/propagation_distance"):
                del e[name]
    return sim


@pytest.fixture(autouse=True)
def _fresh_warnings():
    nxio._WARNED.clear()
    yield


def _z1_flags(names, distances=GEO.distances) -> list[str]:
    return [a for n, g in zip(names, distances) for a in ("--z1", f"{n}={g.z1_m!r}")]


def test_parse_z1_values_and_their_refusals():
    t = parse_z1(["scan_1_=0.0125", " scan_2_ = 1.3e-2 ", "-0.02"])
    assert t.by_name == {"scan_1_": 0.0125, "scan_2_": 0.013} and t.default_m == 0.02  # NXtomo's sign ignored
    assert t.describe() == "--z1 scan_1_=0.0125 --z1 scan_2_=0.013 --z1 0.02"
    for bad, match in ((["a=12mm"], "not a number of metres"), (["=0.01"], "name before '=' is empty"),
                       (["a=0"], "not a focus-to-sample distance"), (["a=1e3"], "not a focus-to-sample"),
                       (["a=0.01", "a=0.02"], "given twice"), (["0.01", "0.02"], "only one value"),
                       (["a=nan"], "not a focus-to-sample")):
        with pytest.raises(ValueError, match=match):
            parse_z1(bad)
    assert not parse_z1(None) and token() == ()


def test_readers_take_the_supplied_z1_only_where_a_file_lacks_it(raw_scan, tmp_path, caplog):
    f1, f2 = raw_scan.files[:2]
    with pytest.raises(InputError, match=r"source/distance\].*--z1 phantom_1_=METRES"):
        read_nxtomo(f1)
    with supplying_z1(parse_z1([f"phantom_1_={GEO.distances[0].z1_m}"])):
        g = read_nxtomo(f1).geometry
        assert token() != ()
        with pytest.raises(InputError, match="required field is missing"):  # not named: still refused
            read_nxtomo(f2)
    np.testing.assert_allclose([g.z1_m, g.z2_m, g.pixel_m, g.energy_kev],
                               [GEO.distances[0].z1_m, GEO.distances[0].z2_m, CFG.pixel_m, CFG.energy_kev])
    with pytest.raises(InputError):  # the table is gone after the block
        read_nxtomo(f1)
    # a bare value serves one distance; a second distance lacking z1 is refused, naming both
    with supplying_z1(parse_z1(["0.0025"])):
        assert read_nxtomo(f1).geometry.z1_m == pytest.approx(0.0025)
        assert read_nxtomo(f1).geometry.z1_m == pytest.approx(0.0025)  # the same distance again: fine
        with pytest.raises(InputError, match=r"'phantom_1_' and 'phantom_2_' both lack z1.*--z1 phantom_1_="):
            read_nxtomo(f2)
    # a file's own z1 wins over a supplied value, with a warning when they disagree
    own = tmp_path / "own.nx"
    shutil.copy(f1, own)
    with h5py.File(own, "a") as h:
        h["entry0000/instrument/source/distance"] = -0.003
        h["entry0000/instrument/source/distance"].attrs["units"] = "m"
    with caplog.at_level(logging.WARNING, logger="xnh_stream.io.nxtomo"):
        with supplying_z1(parse_z1(["own=0.004"])):
            assert read_nxtomo(own).geometry.z1_m == pytest.approx(0.003)
    assert any("--z1 own=0.004 disagrees with the file's z1 0.003" in r.getMessage() for r in caplog.records)


def test_scan_index_with_and_without_z1_in_one_process(raw_scan):
    """The reader's cache of finished files (ingest.watch.VIEWS) serves no view read with other --z1."""
    names = [f.stem for f in raw_scan.files]
    index = None
    with pytest.raises(InputError, match="no usable frame"):
        ScanIndex.read(raw_scan.folder)
    with supplying_z1(parse_z1([f"{n}={g.z1_m!r}" for n, g in zip(names, GEO.distances)])):
        index = ScanIndex.read(raw_scan.folder)
    assert [d.geometry.z1_m for d in index.distances] == pytest.approx([g.z1_m for g in GEO.distances])
    shifted = [f"{n}={g.z1_m * 1.01!r}" for n, g in zip(names, GEO.distances)]
    with supplying_z1(parse_z1(shifted)):
        again = ScanIndex.read(raw_scan.folder)
    assert [d.geometry.z1_m for d in again.distances] == pytest.approx([g.z1_m * 1.01 for g in GEO.distances])


def test_edf_folder_without_xnh_yaml_takes_z1_from_the_command_line(tmp_path):
    scan = stream_scan(tmp_path / "edf", CFG, frames_per_second=None, layout="edf")
    folder = scan.distance_paths[1]
    (folder / "xnh.yaml").unlink()
    with pytest.raises(InputError, match=f"z1.*--z1 {folder.name}=METRES"):
        edf_geometry(folder)
    with supplying_z1(parse_z1([f"{folder.name}={GEO.distances[1].z1_m!r}"])):
        g = edf_geometry(folder).geometry
    assert (g.z1_m, g.z2_m) == pytest.approx((GEO.distances[1].z1_m, GEO.distances[1].z2_m))
    out = tmp_path / "nx"  # convert: the file states z1 (tomoscan reads it), nabu's configuration beside it
    z1 = f"{folder.name}={GEO.distances[1].z1_m!r}"
    assert main(["-q", "convert", str(folder), "--out", str(out), "--z1", z1]) == 0
    assert read_nxtomo(out / f"{folder.name}.nx").geometry.z1_m == pytest.approx(GEO.distances[1].z1_m)
    assert f"z1_v={GEO.distances[1].z1_m!r}" in (out / f"nabu_{folder.name}.conf").read_text()


def test_commands_take_z1(raw_scan, tmp_path, capsys):
    """nabu-config and process with --z1 on files that lack it; without it they refuse, naming the flag."""
    names = [f.stem for f in raw_scan.files]
    assert main(["nabu-config", str(raw_scan.folder), "--out", str(tmp_path / "conf")]) == 2
    assert "--z1 phantom_1_=METRES" in capsys.readouterr().err
    conf = tmp_path / "conf"
    assert main(["nabu-config", str(raw_scan.folder), "--out", str(conf), *_z1_flags(names)]) == 0
    for name, g in zip(names, GEO.distances):
        text = (tmp_path / "conf" / f"nabu_{name}.conf").read_text()
        assert f"z1_v={g.z1_m!r}; z1_h={g.z1_m!r}; detec_pixel_size={CFG.pixel_m!r}" in text
    assert (tmp_path / "conf" / "nabu").is_dir()
    assert main(["nabu-config", str(raw_scan.folder), "--z1", "0.01", "--z1", "0.02"]) == 2
    assert "only one value" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a value that is no distance
        main(["process", str(raw_scan.folder), "--out", str(tmp_path / "x"), "--z1", "phantom_1_=2.5mm"])
    assert "not a number of metres" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["-q", "process", str(raw_scan.folder), "--out", str(out), "--local", *_z1_flags(names)]) == 0
    assert (out / "report.json").is_file()
