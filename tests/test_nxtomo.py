"""NXtomo input contract: round trip, interoperability with ESRF's nxtomo package, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xnh_stream.physics.geometry import DistanceGeometry
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.io.nxtomo import (DARK, FLAT, PROJECTION, RETURN, InputError, NXtomoWriter, frame_problem,
                                  read_nxtomo)

GEO = DistanceGeometry(z1_m=0.04, z2_m=1.168, pixel_m=3e-6, energy_kev=17.0)


def write_small(path, n_proj=6, shape=(8, 10), geometry=GEO):
    rng = np.random.default_rng(1)
    with NXtomoWriter(path, shape, geometry) as w:
        w.append(np.full((2, *shape), 100), DARK, 0.0, 0.1)
        w.append(rng.integers(900, 1100, (3, *shape)), FLAT, 0.0, 0.1)
        w.append(rng.integers(400, 600, (n_proj, *shape)), PROJECTION, np.linspace(0, 150, n_proj), 0.1)
        w.append(rng.integers(400, 600, (2, *shape)), PROJECTION, [180.0, 0.0], 0.1, image_key_control=RETURN)
    return path


def test_round_trip_geometry_keys_and_frames(tmp_path):
    p = write_small(tmp_path / "s_1_.nx")
    s = read_nxtomo(p)
    assert s.geometry == GEO
    assert s.frame_shape == (8, 10) and s.n_frames == 13
    assert s.indices(DARK).tolist() == [0, 1]
    assert s.indices(FLAT).tolist() == [2, 3, 4]
    assert s.projection_indices.tolist() == list(range(5, 11))
    assert s.return_indices.tolist() == [11, 12]
    np.testing.assert_allclose(s.rotation_angle_deg[s.return_indices], [180, 0])
    assert s.end_time is not None
    frames = s.read_frames([7, 5, 6])
    with h5py.File(p) as f:
        raw = f["entry0000/instrument/detector/data"][5:8].astype(np.float32)
    np.testing.assert_array_equal(frames, raw[[2, 0, 1]])
    assert np.all(s.read_frames(s.indices(DARK)) == 100)


def test_our_files_load_in_the_nxtomo_package(tmp_path):
    nxtomo = pytest.importorskip("nxtomo")
    p = write_small(tmp_path / "s_1_.nx")
    nx = nxtomo.NXtomo().load(str(p), "entry0000")
    (url,) = nx.instrument.detector.data  # nxtomo loads frames lazily, as a URL to our dataset
    assert url.file_path() == str(p) and url.data_path().endswith("instrument/detector/data")
    # NXtomo (McStas) puts the source upstream: negative, as the nxtomo package and nxtomomill write it
    assert float(nx.instrument.source.distance.to("m").magnitude) == pytest.approx(-GEO.z1_m)
    assert float(nx.sample.x_pixel_size.to("m").magnitude) == pytest.approx(GEO.effective_pixel_m)
    assert float(nx.sample.propagation_distance.to("m").magnitude) == pytest.approx(GEO.propagation_distance_m)
    assert float(nx.instrument.detector.distance.to("m").magnitude) == pytest.approx(GEO.z2_m)
    assert float(nx.instrument.beam.incident_energy.to("keV").magnitude) == pytest.approx(17.0)
    ctrl = np.asarray(nx.instrument.detector.image_key_control)
    assert [int(getattr(c, "value", c)) for c in ctrl[-2:]] == [RETURN, RETURN]


def test_files_written_by_the_nxtomo_package_are_read(tmp_path):
    nxtomo = pytest.importorskip("nxtomo")
    import pint

    u = pint.get_application_registry()
    nx = nxtomo.NXtomo()
    nx.instrument.detector.data = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    nx.instrument.detector.image_key_control = np.array([2, 1, 0, 0, -1])
    nx.instrument.detector.x_pixel_size = 3.0 * u.um  # a unit other than metres
    nx.instrument.detector.y_pixel_size = 3.0 * u.um
    nx.instrument.detector.distance = 1.1 * u.m
    nx.instrument.detector.count_time = np.full(5, 0.1) * u.s
    nx.instrument.source.distance = 0.05 * u.m
    nx.instrument.beam.incident_energy = 17.5 * u.keV
    nx.sample.rotation_angle = np.array([0, 0, 0, 90, 180.0]) * u.deg
    nx.save(str(tmp_path / "ext.nx"), "entry0000", overwrite=True)
    s = read_nxtomo(tmp_path / "ext.nx")
    assert s.geometry.pixel_m == pytest.approx(3e-6)
    assert s.geometry.z1_m == pytest.approx(0.05) and s.geometry.energy_kev == pytest.approx(17.5)
    assert s.projection_indices.tolist() == [2, 3] and s.return_indices.tolist() == [4]


@pytest.mark.parametrize("field", ["instrument/source/distance", "instrument/beam/incident_energy",
                                   "sample/rotation_angle", "instrument/detector/image_key",
                                   "instrument/detector/x_pixel_size"])
def test_missing_field_names_file_and_field(tmp_path, field):
    p = write_small(tmp_path / "s_1_.nx")
    with h5py.File(p, "a") as f:
        del f["entry0000"][field]
        if field == "instrument/source/distance":  # without z1 the sample-plane fields would stand in
            del f["entry0000/sample/propagation_distance"]
    with pytest.raises(InputError) as err:
        read_nxtomo(p)
    assert str(p) in str(err.value) and field in str(err.value) and "missing" in str(err.value)


def test_wrong_lengths_shapes_units_and_values(tmp_path):
    p = write_small(tmp_path / "a.nx")
    with h5py.File(p, "a") as f:
        del f["entry0000/sample/rotation_angle"]
        f["entry0000/sample/rotation_angle"] = np.zeros(4)
    with pytest.raises(InputError, match=r"rotation_angle\].*4 values for 13 frames"):
        read_nxtomo(p)

    p = write_small(tmp_path / "b.nx")
    with h5py.File(p, "a") as f:
        f["entry0000/instrument/detector/x_pixel_size"].attrs["units"] = "bogus_unit"
    with pytest.raises(InputError, match="unknown unit 'bogus_unit'"):
        read_nxtomo(p)
    with h5py.File(p, "a") as f:  # a unit pint knows, of the wrong dimension
        f["entry0000/instrument/detector/x_pixel_size"].attrs["units"] = "keV"
    with pytest.raises(InputError, match=r"x_pixel_size\].*unknown unit 'keV' for a length"):
        read_nxtomo(p)

    p = write_small(tmp_path / "c.nx")
    with h5py.File(p, "a") as f:
        f["entry0000/instrument/beam/incident_energy"][()] = np.nan
    with pytest.raises(InputError, match=r"incident_energy\].*NaN"):
        read_nxtomo(p)

    p = tmp_path / "d.nx"
    with h5py.File(p, "w") as f:
        f["entry0000/instrument/detector/data"] = np.zeros((4, 5))
    with pytest.raises(InputError, match=r"must be 3-D"):
        read_nxtomo(p)


def test_truncated_and_non_hdf5_files(tmp_path):
    p = write_small(tmp_path / "s_1_.nx")
    blob = p.read_bytes()
    t = tmp_path / "trunc.nx"
    t.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(InputError, match="cannot be opened as HDF5"):
        read_nxtomo(t)
    junk = tmp_path / "junk.nx"
    junk.write_text("not hdf5")
    with pytest.raises(InputError, match=str(junk)):
        read_nxtomo(junk)


def test_scan_sorted_by_z1_and_inconsistent_distances_rejected(tmp_path):
    write_small(tmp_path / "s_2_.nx", geometry=DistanceGeometry(0.045, 1.163, 3e-6, 17.0))
    write_small(tmp_path / "s_1_.nx")
    scan = ScanIndex.read(tmp_path)
    assert [d.geometry.z1_m for d in scan.distances] == [0.04, 0.045]
    assert scan.geometry.reference == 0
    assert scan.rejected == []
    write_small(tmp_path / "s_3_.nx", shape=(8, 12), geometry=DistanceGeometry(0.05, 1.158, 3e-6, 17.0))
    scan = ScanIndex.read(tmp_path)
    assert len(scan.distances) == 2
    assert len(scan.rejected) == 1 and "frame shape (8, 12)" in scan.rejected[0].reason
    with pytest.raises(InputError, match="is not a folder"):
        ScanIndex.read(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="contains no usable frame"):
        ScanIndex.read(tmp_path / "empty")


def test_frame_problem():
    good = np.ones((4, 5), np.float32)
    assert frame_problem(good, (4, 5)) is None
    assert "shape" in frame_problem(good, (5, 4))
    bad = good.copy()
    bad[1, 2] = np.nan
    assert "non-finite" in frame_problem(bad, (4, 5))
    assert "all pixels are zero" in frame_problem(np.zeros((4, 5)), (4, 5))
