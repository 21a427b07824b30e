"""Never report success on a wrong volume: which distances make a scan, and malformed distance files.

The distances that agree (frame shape, energy, detector pixel, a plausible geometry) by majority make the
scan, whichever came first or is the most magnified; two against two is refused, naming the files. A
distance file that cannot be used (frames of 1 x 1 px, 2-D data, no data, no frame) is set aside with the
reason, an alert and its count, and the scan goes on with the others; a scan with no usable distance ends
with ``error: FILE: problem`` (exit 2), never a traceback.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from xnh_stream.chain.batch import process_scan
from xnh_stream.chain.scan import ScanIndex
from xnh_stream.cli import main
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nxtomo import MIN_FRAME_PX, InputError
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan
from xnh_stream.state.journal import FrameJournal

SIM = SimulationConfig(nx=48, ny=16, n_angles=24, seed=12, oversample=1, n_flats=3, n_darks=2)
DATA = "entry0000/instrument/detector/data"
FAST = {"alignment.angles": 6}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    simulate_scan(folder, SIM)
    (folder / "truth.h5").unlink()
    return folder


def scan_copy(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def name(k: int) -> str:
    return f"{SIM.name}_{k}_.nx"


def rewrite_data(path: Path, fn) -> None:
    """Replace a file's frames by ``fn(frames)`` (any shape: the file's other fields are left as they are)."""
    with h5py.File(path, "r+") as f:
        data = f[DATA][()]
        del f[DATA]
        f[DATA] = fn(data)


def set_field(path: Path, field: str, fn) -> None:
    with h5py.File(path, "r+") as f:
        f[field][()] = fn(f[field][()])


def seen_first(path: Path) -> None:
    """Make ``path`` the oldest file of its folder (the reader examines files in the order they were written)."""
    t = time.time() - 3600
    os.utime(path, (t, t))


def n_frames(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f[DATA].shape[0])


# ------------------------------------------------------------------------------------ which distances


def test_the_distance_whose_frame_shape_disagrees_is_set_aside_not_the_three_others(good, tmp_path):
    """Distance 1 (the most magnified, seen first) has narrower frames: the three others make the volume,
    distance 1's frames are counted as quarantined with the reason, and a critical alert names it."""
    folder = scan_copy(good, tmp_path / "scan")
    rewrite_data(folder / name(1), lambda d: d[:, :, 4:44])
    seen_first(folder / name(1))
    out = tmp_path / "out"
    rep = process_scan(folder, out, ProcessConfig.from_mapping(FAST)).report
    assert [d["name"] for d in rep.geometry["distances"]] == [f"{SIM.name}_{k}_" for k in (2, 3, 4)]
    assert rep.scan["frame_shape"] == [SIM.ny, SIM.nx]
    odd = [q for q in rep.frames.quarantine if q.file.endswith(name(1))]
    assert len(odd) == n_frames(folder / name(1))
    assert all("frame shape (16, 40)" in q.reason and "(16, 48)" in q.reason for q in odd)
    alerts = [a for a in rep.alerts if a["name"] == "DistanceFileRejected"]
    assert len(alerts) == 1 and alerts[0]["severity"] == "critical"
    assert list(alerts[0]) == ["name", "severity", "message"]  # the report's form of the chain's own alerts
    assert f"{SIM.name}_1_" in alerts[0]["message"] and "frame shape" in alerts[0]["message"]
    assert rep.frames.processed == sum(n_frames(folder / name(k)) for k in (2, 3, 4))
    with FrameJournal(out / "journal.sqlite", readonly=True) as j:
        c = j.counts()
    assert (c["received"], c["processed"], c["quarantined"]) == (rep.frames.received, rep.frames.processed,
                                                                  rep.frames.quarantined)


def test_the_distance_with_another_energy_is_set_aside_even_when_seen_first(good, tmp_path):
    folder = scan_copy(good, tmp_path / "scan")
    set_field(folder / name(1), "entry0000/instrument/beam/incident_energy", lambda e: 20.0)
    seen_first(folder / name(1))
    index = ScanIndex.read(folder)
    assert [d.name for d in index.distances] == [f"{SIM.name}_{k}_" for k in (2, 3, 4)]
    assert index.rejected_files == []  # not three files quarantined against the first one seen
    (odd,) = index.rejected
    assert odd.name == f"{SIM.name}_1_" and "energy 20 keV" in odd.reason and "17 keV" in odd.reason
    assert len(odd.frames) == n_frames(folder / name(1))
    assert index.geometry.energy_kev == pytest.approx(17.0)


def test_a_distance_whose_z1_is_in_the_wrong_unit_is_set_aside(good, tmp_path):
    """z1 of distance 3 written in mm but labelled m: its effective pixel is hundreds of times the others'."""
    folder = scan_copy(good, tmp_path / "scan")
    set_field(folder / name(3), "entry0000/instrument/source/distance", lambda z: z * 1000)
    index = ScanIndex.read(folder)
    assert [d.name for d in index.distances] == [f"{SIM.name}_{k}_" for k in (1, 2, 4)]
    (odd,) = index.rejected
    assert odd.name == f"{SIM.name}_3_" and "implausible geometry" in odd.reason and "units of z1" in odd.reason


def test_two_distances_against_two_are_refused_naming_the_files(good, tmp_path, capsys):
    folder = scan_copy(good, tmp_path / "scan")
    for k in (1, 2):
        rewrite_data(folder / name(k), lambda d: d[:, :, 4:44])
    with pytest.raises(InputError, match="no group of them is a majority") as err:
        ScanIndex.read(folder)
    assert all(name(k) in str(err.value) for k in (1, 2, 3, 4))
    assert main(["process", str(folder), "--out", str(tmp_path / "out"), "--local"]) == 2
    printed = capsys.readouterr().err
    assert "error:" in printed and "majority" in printed and "Traceback" not in printed


# ------------------------------------------------------------------------------------ malformed files


def _empty_but_finished(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        shape = f[DATA].shape
        for field in (DATA, "entry0000/instrument/detector/image_key",
                      "entry0000/instrument/detector/image_key_control", "entry0000/sample/rotation_angle",
                      "entry0000/instrument/detector/count_time"):
            dtype = f[field].dtype
            del f[field]
            f.create_dataset(field, shape=(0, *shape[1:]) if field == DATA else (0,), dtype=dtype)


def _no_data(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f[DATA]
        del f["entry0000/data"]


MALFORMED = {
    "1x1 frames": (lambda p: rewrite_data(p, lambda d: d[:, :1, :1]), "frames of 1 x 1 px"),
    "one row": (lambda p: rewrite_data(p, lambda d: d[:, :1, :]), "frames of 1 x 48 px"),
    "4x6 frames": (lambda p: rewrite_data(p, lambda d: d[:, :4, :6]), f"fewer than {MIN_FRAME_PX} px"),
    "2-D data": (lambda p: rewrite_data(p, lambda d: d[:, 0, :]), "must be 3-D"),
    "no frame, finished": (_empty_but_finished, "holds no frame"),
    "no data": (_no_data, "required field is missing"),
}


@pytest.mark.parametrize("fault", sorted(MALFORMED))
def test_a_malformed_distance_file_is_set_aside_with_the_reason(good, tmp_path, fault):
    folder = scan_copy(good, tmp_path / "scan")
    damage, words = MALFORMED[fault]
    damage(folder / name(2))
    index = ScanIndex.read(folder)
    assert [d.name for d in index.distances] == [f"{SIM.name}_{k}_" for k in (1, 3, 4)]
    (q,) = index.rejected_files
    assert q.file_id == name(2) and words in q.reason
    assert index.counters.quarantined_files == 1


@pytest.mark.parametrize("fault", ["1x1 frames", "no data"])
def test_the_pass_goes_on_without_the_malformed_reference_file_and_says_so(good, tmp_path, fault):
    """The campaign's cases on distance 1 (the reference): it is set aside as one counted entry with an
    alert; the volume is made of the three others."""
    folder = scan_copy(good, tmp_path / "scan")
    damage, words = MALFORMED[fault]
    damage(folder / name(1))
    rep = process_scan(folder, tmp_path / "out", ProcessConfig.from_mapping(FAST)).report
    assert len(rep.geometry["distances"]) == 3 and rep.geometry["reference_distance"] == 1
    assert rep.geometry["distances"][0]["name"] == f"{SIM.name}_2_"
    (entry,) = [q for q in rep.frames.quarantine if name(1) in q.file]
    assert entry.file == f"{name(1)}#file" and entry.index is None and words in entry.reason
    assert any(a["name"] == "DistanceFileRejected" and a["severity"] == "critical" and name(1) in a["message"]
               and words in a["message"] for a in rep.alerts)
    assert rep.frames.received == rep.frames.processed + rep.frames.quarantined


def test_a_scan_of_unusable_files_is_a_clean_error(good, tmp_path, capsys):
    folder = scan_copy(good, tmp_path / "scan")
    for k in (1, 2, 3, 4):
        rewrite_data(folder / name(k), lambda d: d[:, :1, :1])
    assert main(["process", str(folder), "--out", str(tmp_path / "out"), "--local"]) == 2
    printed = capsys.readouterr().err
    assert "error:" in printed and "contains no usable frame" in printed and "frames of 1 x 1 px" in printed
    assert "Traceback" not in printed


def test_edf_frames_too_small_are_refused(tmp_path):
    from fabio.edfimage import EdfImage

    from xnh_stream.io.sources import inspect_edf

    folder = tmp_path / "s_1_"
    folder.mkdir()
    (folder / "s_1_.info").write_text("TOMO_N= 2\nScanRange= 180\nDim_1= 6\nDim_2= 4\nPixelSize= 3.0\n"
                                      "Distance= 1200.0\nEnergy= 17.0\n")
    (folder / "xnh.yaml").write_text("z1_m: 0.04\n")
    EdfImage(data=np.full((4, 6), 100, np.uint16)).write(str(folder / "s_1_0000.edf"))
    with pytest.raises(InputError, match=f"frames of 4 x 6 px: fewer than {MIN_FRAME_PX}"):
        inspect_edf(folder / "s_1_0000.edf")


def test_frames_of_the_smallest_size_accepted_are_reconstructed(good, tmp_path):
    """Frames of MIN_FRAME_PX rows pass the reader: the whole pass must make a volume of them (the edge fit
    of the resolution cross-check needed 10)."""
    folder = scan_copy(good, tmp_path / "scan")
    for k in (1, 2, 3, 4):
        rewrite_data(folder / name(k), lambda d: d[:, 4:4 + MIN_FRAME_PX, :])
    result = process_scan(folder, tmp_path / "out", ProcessConfig.from_mapping(FAST))
    assert result.report.scan["frame_shape"] == [MIN_FRAME_PX, SIM.nx]
    assert np.isfinite(result.volume).all() and result.volume.shape == (MIN_FRAME_PX, SIM.nx, SIM.nx)
