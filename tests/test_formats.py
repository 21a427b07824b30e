"""The facility's formats both ways, with the real packages: ESRF's nxtomo, tomoscan, nxtomomill and nabu
read our NXtomo files with the right geometry; we read what they write (pint unit names, sample-plane
geometry, nxtomomill's angle conventions, tomoscan's MockEDF layout); ome-zarr reads our labels as labels;
and the command line behaves in a pipe.

The references are the simulation's own geometry (z1, z2, detector pixel, energy) and the frames written,
never values read back by the code under test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from actors.cli import main
from xnh_stream.cli import check_output
from xnh_stream.ingest import FolderWatcher
from xnh_stream.io import nxtomo as nxio
from xnh_stream.io.nxtomo import DARK, FLAT, PROJECTION, RETURN, InputError, read_nxtomo
from xnh_stream.io.sources import inspect_edf, inspect_file
from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.simulate.stream import stream_scan

CFG = SimulationConfig(nx=32, ny=16, n_angles=8, n_flats=2, n_darks=3, seed=7)
GEO = CFG.geometry()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nx_scan(tmp_path_factory):
    """A simulated four-distance scan as NXtomo files (our writer)."""
    return simulate_scan(tmp_path_factory.mktemp("nx"), CFG)


@pytest.fixture(scope="module")
def edf_scan(tmp_path_factory):
    """The same scan in the ID16A EDF layout (our EDF writer), and the frames simulate_scan wrote."""
    return stream_scan(tmp_path_factory.mktemp("edf"), CFG, frames_per_second=None, layout="edf")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    nxio._WARNED.clear()  # each test sees its own once-only warnings
    yield


def _same_geometry(g: DistanceGeometry, ref: DistanceGeometry, rtol: float = 1e-9) -> None:
    np.testing.assert_allclose([g.z1_m, g.z2_m, g.pixel_m, g.energy_kev],
                               [ref.z1_m, ref.z2_m, ref.pixel_m, ref.energy_kev], rtol=rtol)


# ---------------------------------------------------------------------------------- our NXtomo, their readers


def test_our_nxtomo_read_by_nxtomo_and_tomoscan_with_sample_plane_geometry(nx_scan):
    nxtomo = pytest.importorskip("nxtomo")
    nxtomoscan = pytest.importorskip("tomoscan.esrf.scan.nxtomoscan")
    for path, g in zip(nx_scan.files, GEO.distances):
        nx = nxtomo.NXtomo().load(str(path), "entry0000")
        assert nx.instrument.source.distance.to("m").magnitude == pytest.approx(-g.z1_m)  # NXtomo: upstream
        assert nx.sample.x_pixel_size.to("m").magnitude == pytest.approx(g.pixel_m / g.magnification)
        assert nx.sample.propagation_distance.to("m").magnitude == pytest.approx(g.z1_m * g.z2_m / (g.z1_m + g.z2_m))
        assert nx.instrument.beam.incident_energy.to("keV").magnitude == pytest.approx(g.energy_kev)
        scan = nxtomoscan.NXtomoScan(str(path), "entry0000")
        assert scan.sample_x_pixel_size == pytest.approx(g.pixel_m * g.z1_m / (g.z1_m + g.z2_m))  # the voxel p/M
        assert scan.detector_x_pixel_size == pytest.approx(g.pixel_m)
        assert scan.propagation_distance == pytest.approx(g.z1_m * g.z2_m / (g.z1_m + g.z2_m))
        assert abs(scan.source_sample_distance) == pytest.approx(g.z1_m)
        assert scan.sample_detector_distance == pytest.approx(g.z2_m)
        assert scan.energy == pytest.approx(g.energy_kev)
        assert str(scan.field_of_view).lower().endswith("full") and not scan.half_acquisition
        assert len(scan.projections) == CFG.n_angles and len(scan.alignment_projections) == len(CFG.return_angles_deg)
        assert len(scan.darks) == CFG.n_darks and len(scan.flats) == 2 * CFG.n_flats


def test_nabu_finds_the_pixel_size_and_distances_of_our_file(nx_scan, tmp_path):
    """nabu's dataset analyzer and ProcessConfig (CPU, no reconstruction) on our file: the sample pixel p/M,
    z2, the energy, a full field of view (its 'auto' half-tomography needs it), and with z1 from the file
    the CTF geometry of the effective propagation distance D = z2 / M."""
    analyzer = pytest.importorskip("nabu.resources.dataset_analyzer")
    processconfig = pytest.importorskip("nabu.pipeline.fullfield.processconfig")
    ctf = pytest.importorskip("nabu.preproc.ctf")
    nxtomoscan = pytest.importorskip("tomoscan.esrf.scan.nxtomoscan")
    path, g = nx_scan.files[0], GEO.distances[0]
    info = analyzer.analyze_dataset(str(path))
    assert info.pixel_size == pytest.approx(g.pixel_m / g.magnification * 1e6)  # microns
    assert info.distance == pytest.approx(g.z2_m) and info.energy == pytest.approx(g.energy_kev)
    assert not info.is_halftomo
    z1 = abs(nxtomoscan.NXtomoScan(str(path), "entry0000").source_sample_distance)
    det_pixel = nxtomoscan.NXtomoScan(str(path), "entry0000").detector_x_pixel_size
    conf = {"dataset": {"location": str(path)},
            "phase": {"method": "CTF", "delta_beta": "300",
                      "ctf_geometry": f"z1_v={z1}; z1_h={z1}; detec_pixel_size={det_pixel}; magnification=True"},
            "reconstruction": {"method": "FBP"}, "output": {"location": str(tmp_path)}}
    pc = processconfig.ProcessConfig(conf_dict=conf, dataset_info=info)
    phase = pc.processing_options["phase"]
    assert phase["pixel_size_m"] == pytest.approx(g.effective_pixel_m)
    geo = ctf.GeoPars(**phase["ctf_geo_pars"])
    assert geo.pix_size_rec == pytest.approx(g.effective_pixel_m)
    assert geo.z2 / geo.maxM == pytest.approx(g.propagation_distance_m)


# ------------------------------------------------------------------------------------ their NXtomo, our readers


def _nxtomo_file(path, *, source=True, sample_plane=True, unit_names=("m", "keV", "degree", "s"), g=GEO.distances[1]):
    """A small NXtomo file written by ESRF's nxtomo package (pint quantities)."""
    nxtomo = pytest.importorskip("nxtomo")
    import pint

    u = pint.get_application_registry()
    length, energy, angle, time_ = (u(n) for n in unit_names)
    nx = nxtomo.NXtomo()
    rng = np.random.default_rng(3)
    nx.instrument.detector.data = rng.integers(100, 1000, (7, 8, 10)).astype(np.uint16)
    nx.instrument.detector.image_key_control = np.array([2, 1, 0, 0, 0, 1, -1])
    nx.instrument.detector.x_pixel_size = (g.pixel_m * u.m).to(length)
    nx.instrument.detector.y_pixel_size = (g.pixel_m * u.m).to(length)
    nx.instrument.detector.distance = (g.z2_m * u.m).to(length)
    nx.instrument.detector.count_time = (np.full(7, 0.1) * u.s).to(time_)
    if source:
        nx.instrument.source.distance = (-g.z1_m * u.m).to(length)
    if sample_plane:
        nx.sample.x_pixel_size = (g.effective_pixel_m * u.m).to(length)
        nx.sample.y_pixel_size = (g.effective_pixel_m * u.m).to(length)
        nx.sample.propagation_distance = (g.propagation_distance_m * u.m).to(length)
    nx.instrument.beam.incident_energy = (g.energy_kev * u.keV).to(energy)
    nx.sample.rotation_angle = (np.array([0, 0, 0, 60, 120, 0, 180.0]) * u.deg).to(angle)
    nx.save(str(path), "entry0000", overwrite=True)
    return path


@pytest.mark.parametrize("units", [("m", "keV", "degree", "s"),
                                   ("micrometer", "kiloelectron_volt", "radian", "millisecond"),
                                   ("millimeter", "electron_volt", "degree", "second")])
def test_nxtomo_package_files_in_any_unit_read_with_their_geometry(tmp_path, units):
    g = GEO.distances[1]
    p = _nxtomo_file(tmp_path / "ext.nx", unit_names=units)
    for scan in (read_nxtomo(p), inspect_file(p)):
        _same_geometry(scan.geometry, g)
    s = read_nxtomo(p)
    assert s.projection_indices.tolist() == [2, 3, 4] and s.return_indices.tolist() == [6]
    np.testing.assert_allclose(s.rotation_angle_deg, [0, 0, 0, 60, 120, 0, 180])
    np.testing.assert_allclose(s.count_time_s, 0.1)


def test_sample_plane_geometry_without_source_distance(tmp_path):
    """Without z1: M = p / p_s, z2 = D M, z1 = z2 / (M - 1), from the sample pixel and propagation distance."""
    g = GEO.distances[2]
    p = _nxtomo_file(tmp_path / "noz1.nx", source=False, g=g)
    for scan in (read_nxtomo(p), inspect_file(p)):
        _same_geometry(scan.geometry, g, rtol=1e-6)
    with h5py.File(p, "a") as f:  # neither z1 nor the sample plane: the error says what to give
        del f["entry0000/sample/propagation_distance"]
    with pytest.raises(InputError, match=r"source/distance\].*missing.*propagation_distance.*xnh-stream convert"):
        read_nxtomo(p)
    # a parallel beam (sample pixel = detector pixel): the effective geometry keeps p_s, D and F
    d = DistanceGeometry.from_sample_plane(1e-7, 0.01, 17.0, detector_pixel_m=1e-7)
    assert d.effective_pixel_m == pytest.approx(1e-7) and d.propagation_distance_m == pytest.approx(0.01)
    with pytest.raises(ValueError, match="larger than the detector pixel"):
        DistanceGeometry.from_sample_plane(2e-7, 0.01, 17.0, detector_pixel_m=1e-7)


def test_unitless_fields_warn_once_and_follow_the_magnitude_rule(tmp_path, caplog):
    g = GEO.distances[0]
    p = _nxtomo_file(tmp_path / "bare.nx", g=g)
    with h5py.File(p, "a") as f:
        e = f["entry0000"]
        for name, value in (("instrument/detector/x_pixel_size", g.pixel_m * 1e6),  # 48.32: um
                            ("instrument/detector/distance", g.z2_m * 1e3),  # 1205.5: mm
                            ("instrument/source/distance", -g.z1_m),  # 0.0025: m
                            ("instrument/beam/incident_energy", g.energy_kev * 1e3)):  # 17000: eV
            del e[name]
            e[name] = value
        del e["sample/x_pixel_size"].attrs["units"]  # 1e-7: m
    with caplog.at_level(logging.WARNING, logger="xnh_stream.io.nxtomo"):
        _same_geometry(read_nxtomo(p).geometry, g, rtol=1e-9)
        read_nxtomo(p)
    text = [r.getMessage() for r in caplog.records if "no units attribute" in r.getMessage()]
    assert len(text) == 5  # once per field, not again on the second read
    for field, unit in (("detector/x_pixel_size", "taken as um"), ("detector/distance", "taken as mm"),
                        ("source/distance", "taken as m "), ("incident_energy", "taken as eV"),
                        ("sample/x_pixel_size", "taken as m ")):
        assert any(field in t and unit in t for t in text), (field, text)


# ------------------------------------------------------------------------------------------- EDF both ways


def test_our_edf_files_read_with_fabio_as_spec_writes_them(edf_scan, nx_scan):
    """Each EDF file is one frame; darkend0000.edf holds the sum of DARK_N darks (spec's accumulation)."""
    fabio = pytest.importorskip("fabio")
    folder = edf_scan.distance_paths[0]
    with h5py.File(nx_scan.files[0]) as f:
        det = f["entry0000/instrument/detector"]
        frames, keys = det["data"][()], det["image_key"][()]
    dark = fabio.open(str(folder / "darkend0000.edf"))
    assert dark.nframes == 1
    np.testing.assert_array_equal(dark.data.astype(np.int64), frames[keys == DARK].astype(np.int64).sum(axis=0))
    proj = fabio.open(str(folder / f"{folder.name}0003.edf"))
    assert proj.nframes == 1
    np.testing.assert_array_equal(proj.data, frames[keys == PROJECTION][3])
    assert float(proj.header["motor_pos"]) == pytest.approx(3 * CFG.angular_range_deg / CFG.n_angles)
    view = inspect_edf(folder / "darkend0000.edf")
    np.testing.assert_allclose(view.record(0).read(), frames[keys == DARK].mean(axis=0), rtol=1e-6)


def test_nxtomomill_converts_our_edf_scan_and_we_read_its_file(edf_scan, tmp_path):
    """nxtomomill edf2nx (its defaults: computed angles, return projections at 0 degrees, no z1) on our EDF
    distance folder: no crash; our reader labels the returns, gives them their angles, and asks for z1."""
    converter = pytest.importorskip("nxtomomill.converter")
    edf2nx = pytest.importorskip("nxtomomill.models.edf2nx")
    folder, g = edf_scan.distance_paths[0], GEO.distances[0]
    config = edf2nx.EDF2nxModel()
    config.input_folder, config.output_file = str(folder), str(tmp_path / "d1.nx")
    converter.from_edf_to_nx(config, progress=None)
    with h5py.File(tmp_path / "d1.nx") as f:
        ang = f["entry/sample/rotation_angle"][()]
        ctrl = f["entry/instrument/detector/image_key_control"][()]
        assert np.all(ang[ctrl == RETURN] == 0) and "source/distance" not in f["entry/instrument"]
    with pytest.raises(InputError, match=r"source/distance\].*missing"):
        read_nxtomo(tmp_path / "d1.nx")
    with h5py.File(tmp_path / "d1.nx", "a") as f:  # what `convert` adds: z1 from xnh.yaml
        f["entry/instrument/source/distance"] = -g.z1_m
        f["entry/instrument/source/distance"].attrs["units"] = "meter"
    s = read_nxtomo(tmp_path / "d1.nx")
    _same_geometry(s.geometry, g)
    np.testing.assert_allclose(s.rotation_angle_deg[s.return_indices], CFG.return_angles_deg)  # srot of the headers
    assert s.indices(DARK).size == 1 and s.projection_indices.size == CFG.n_angles
    returns = [r for r in inspect_file(tmp_path / "d1.nx").records() if r.is_return]  # the live path alike
    np.testing.assert_allclose([r.rotation_angle_deg for r in returns], CFG.return_angles_deg)
    _same_geometry(returns[0].geometry, g)
    with h5py.File(tmp_path / "d1.nx", "a") as f:  # without the headers: the ID16A convention R - 90 j
        del f["entry/instrument/positioners"]
        del f["entry/instrument/detector/image_key_control"]  # and without labels: placed by position
    s = read_nxtomo(tmp_path / "d1.nx")
    assert s.return_indices.size == len(CFG.return_angles_deg)
    np.testing.assert_allclose(s.rotation_angle_deg[s.return_indices], CFG.return_angles_deg)


def test_convert_command_writes_nxtomo_that_we_nabu_and_tomoscan_read(edf_scan, nx_scan, tmp_path, capsys):
    nxtomoscan = pytest.importorskip("tomoscan.esrf.scan.nxtomoscan")
    out = tmp_path / "nx"
    assert main(["convert", str(edf_scan.folder), "--out", str(out)]) == 0
    assert "nxtomomill" in capsys.readouterr().out
    distances = sorted((read_nxtomo(f) for f in out.iterdir() if f.suffix in (".nx", ".h5")),
                       key=lambda d: d.geometry.z1_m)
    assert len(distances) == len(GEO.distances)
    for d, g in zip(distances, GEO.distances):
        _same_geometry(d.geometry, g)
        np.testing.assert_allclose(d.rotation_angle_deg[d.return_indices], CFG.return_angles_deg)
        ts = nxtomoscan.NXtomoScan(str(d.path), d.entry)
        assert ts.sample_x_pixel_size == pytest.approx(g.effective_pixel_m)
        assert ts.propagation_distance == pytest.approx(g.propagation_distance_m)
    ref = read_nxtomo(nx_scan.files[0])  # frames equal those simulate_scan wrote (darks: their mean, rounded)
    conv = distances[0]
    np.testing.assert_array_equal(conv.read_frames(conv.projection_indices), ref.read_frames(ref.projection_indices))
    np.testing.assert_allclose(conv.read_frames(conv.indices(DARK))[0], ref.read_frames(ref.indices(DARK)).mean(0),
                               atol=1.0)
    builtin = tmp_path / "builtin"
    assert main(["convert", str(edf_scan.folder), "--out", str(builtin), "--engine", "builtin"]) == 0
    b = read_nxtomo(builtin / conv.path.name)
    np.testing.assert_array_equal(b.read_frames(b.projection_indices), conv.read_frames(conv.projection_indices))
    assert main(["convert", str(edf_scan.folder), "--out", str(builtin)]) == 2  # not empty, no --overwrite
    assert "not empty" in capsys.readouterr().err


def test_tomoscan_mock_edf_scan_is_read_and_unplaced_files_warned(tmp_path, caplog):
    mock = pytest.importorskip("tomoscan.esrf.scan.mock")
    folder = tmp_path / "scan_1_"
    m = mock.MockEDF(str(folder), n_radio=6, n_ini_radio=6, n_extra_radio=1, scan_range=180, dim=12, dark_n=1,
                     flat_n=1, pixel_size=0.5, distance=1200.0, energy=17.0)
    m.end_acquisition()
    (tmp_path / "xnh.yaml").write_text(yaml.safe_dump({"z1_m": 0.02}))
    (folder / "notes_0001.edf").write_bytes((folder / "darkend0000.edf").read_bytes())  # an EDF it cannot place
    with caplog.at_level(logging.WARNING, logger="xnh_stream.io.sources"):
        with FolderWatcher(tmp_path, use_inotify=False, settle_s=0.0) as w:
            recs = w.poll()
            w.poll()
    names = sorted(p.name for p in folder.glob("scan_1__*.edf"))
    assert len(names) == 7
    by = {Path(r.path).name: r for r in recs}
    for i in range(6):
        r = by[f"scan_1__{i:04d}.edf"]
        assert (r.image_key, r.image_key_control) == (PROJECTION, PROJECTION)
        assert r.rotation_angle_deg == pytest.approx(30.0 * i)  # srot of MockEDF's header
    assert by["scan_1__0006.edf"].image_key_control == RETURN
    assert by["darkend0000.edf"].image_key == DARK and by["refHST0000.edf"].image_key == FLAT
    g = recs[0].geometry
    np.testing.assert_allclose([g.z1_m, g.z2_m, g.pixel_m, g.energy_kev], [0.02, 1.2, 0.5e-6, 17.0])
    warned = [r.getMessage() for r in caplog.records if "notes_0001.edf" in r.getMessage()]
    assert len(warned) == 1 and "skipped" in warned[0]


# ----------------------------------------------------------------------------------------- labels, SWC


def test_segmentation_labels_read_by_ome_zarr_as_labels_of_the_volume(tmp_path):
    reader = pytest.importorskip("ome_zarr.reader")
    io = pytest.importorskip("ome_zarr.io")
    from xnh_stream.io.omezarr import read_volume, write_volume
    from xnh_stream.segment.pipeline import find_segmentation, write_segmentation

    rng = np.random.default_rng(1)
    vol = rng.random((64, 64, 64), dtype=np.float32)
    labels = (np.arange(64)[:, None, None] // 16 + 4 * (np.arange(64)[None, :, None] // 32)
              + np.zeros((1, 1, 64), int)).astype(np.uint64) + 1
    write_volume(tmp_path / "volume.ome.zarr", vol, 1e-7)
    dst, _ = write_segmentation(tmp_path, labels, 1e-7, int(labels.max()))
    dst, _ = write_segmentation(tmp_path, labels, 1e-7, int(labels.max()))  # replaced, listed once
    assert dst == tmp_path / "volume.ome.zarr" / "labels" / "segmentation" == find_segmentation(tmp_path)
    nodes = list(reader.Reader(io.parse_url(str(tmp_path / "volume.ome.zarr")))())
    kinds = {str(n.zarr.path if hasattr(n.zarr, "path") else n.zarr).rstrip("/").split("/")[-1]:
             [type(s).__name__ for s in n.specs] for n in nodes}
    assert "Label" in kinds["segmentation"] and kinds["labels"] == ["Labels"]
    label_node = next(n for n in nodes if "Label" in [type(s).__name__ for s in n.specs])
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)
    assert label_node.metadata.get("name") == "segmentation" or "segmentation" in str(label_node.zarr)
    import zarr

    listing = zarr.open_group(str(tmp_path / "volume.ome.zarr" / "labels"), mode="r").attrs.asdict()
    assert (listing.get("ome") or listing)["labels"] == ["segmentation"]
    seg, voxel = read_volume(dst)
    assert voxel == 1e-7 and seg.dtype == np.uint32


def test_swc_node_types_from_radius(tmp_path):
    pytest.importorskip("kimimaro")
    from xnh_stream.segment.skeleton import SWC_DENDRITE, SWC_SOMA, node_types, skeletonize, write_swc

    zz, yy, xx = np.mgrid[:48, :40, :40]
    lab = np.zeros(zz.shape, np.uint32)
    lab[(yy - 20) ** 2 + (xx - 20) ** 2 < 9] = 1  # a neurite along z, 3 voxels (300 nm) in radius
    lab[(zz - 24) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 144] = 1  # a cell body of 12 voxels (1.2 um)
    (path,) = write_swc(skeletonize(lab, 100e-9, min_voxels=10), tmp_path, soma_radius_nm=800)
    rows = np.array([[float(v) for v in ln.split()] for ln in path.read_text().splitlines()
                     if ln and not ln.startswith("#")])
    soma = rows[rows[:, 1] == SWC_SOMA]
    assert len(soma) and np.all(rows[rows[:, 1] != SWC_SOMA, 5] < 800)
    assert np.all(np.abs(soma[:, 4] / 100 - 24) < 12)  # soma nodes lie in the cell body (z, voxels)
    np.testing.assert_array_equal(node_types([100, 500, 900], 800, axon_radius_nm=300), [2, SWC_DENDRITE, SWC_SOMA])


# -------------------------------------------------------------------------------------------------- CLI


def test_output_checks_before_any_work(tmp_path, capsys):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "s_1_.nx").touch()  # a scan-like folder: the input checks pass
    afile = tmp_path / "out.txt"
    afile.write_text("x")
    assert main(["process", str(tmp_path / "scan"), "--out", str(afile)]) == 2
    assert "out.txt: is a file" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "report.json").write_text("{}")
    assert main(["process", str(tmp_path / "scan"), "--out", str(full)]) == 2
    assert "is not empty (report.json)" in capsys.readouterr().err
    check_output(full, "folder", overwrite=True)  # --overwrite lets it through
    with pytest.raises(InputError, match="is a file, so"):
        check_output(afile / "sub", "folder")


def test_watch_resumes_its_own_journal_and_refuses_another(tmp_path):
    from xnh_stream.state.journal import FrameJournal

    scan, other, out = tmp_path / "scan", tmp_path / "other", tmp_path / "out"
    for d in (scan, other, out):
        d.mkdir()
    (scan / "s_1_.nx").write_bytes(b"")
    with FrameJournal(out / "journal.sqlite") as j:
        j.receive("s_1_.nx#0", 0, 0, 0.0)
    (out / "report.json").write_text("{}")
    check_output(out, "resume", scan=scan)  # this scan's journal: a resume
    with pytest.raises(InputError, match="journal.sqlite of another scan"):
        check_output(out, "resume", scan=other)
    check_output(out, "resume", overwrite=True, scan=other)
    assert not (out / "journal.sqlite").exists()


@pytest.mark.slow
def test_piped_cli_has_plain_lines_only(tmp_path):
    """stderr a pipe: no carriage return, no ANSI escape; progress as plain lines; --version; --quiet."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=tmp_path, env=env,  # noqa: E731
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    version = run("--version")
    assert version.returncode == 0 and version.stdout.decode().startswith("xnh-stream ")
    sim = run("simulate", "scan", "--nx", "24", "--ny", "12", "--angles", "4")
    err = sim.stderr.decode()
    assert sim.returncode == 0, err
    assert "\r" not in err and "\x1b" not in err
    assert "progress simulate:" in err
    conv = run("-v", "convert", "scan", "--out", "scan")  # not empty (and an NXtomo scan): refused at once
    assert conv.returncode == 2 and "\r" not in conv.stderr.decode() and "\x1b" not in conv.stderr.decode()
    quiet = run("--quiet", "simulate", "scan2", "--nx", "24", "--ny", "12", "--angles", "4")
    assert quiet.returncode == 0 and quiet.stderr.decode() == ""
