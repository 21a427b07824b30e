"""ESRF's nabu on our files, run as a user runs it: the configuration ``xnh-stream simulate`` writes beside
the scan, nabu's own command (``nabu CONF --slice middle``), compared with our reconstruction of the same
distance.

nabu reads the sample pixel (p/M) and z2 from our NXtomo files, but not z1 nor the propagation distance D: its
phase retrieval propagates over z2 unless its configuration gives the cone-beam geometry
(xnh_stream/io/nabu_config.py). nabu's FBP needs CUDA or OpenCL (pyopencl, an OpenCL platform and pyvkfft);
where neither is installed, its back-projection kernel (nabu/opencl/src/backproj.cl) runs here in numpy after
nabu's own ramp filter, and everything else is nabu's: reading, flat-field, CTF, rotation axis, writing.

The references are the simulation's geometry and our own reconstruction; never values nabu reads back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift
from scipy.optimize import minimize

from actors.cli import main
from xnh_stream.config import ProcessConfig
from xnh_stream.io.nabu_config import nabu_config_text, nabu_scale_factor
from xnh_stream.io.nxtomo import read_nxtomo
from xnh_stream.io.omezarr import read_volume
from xnh_stream.simulate.scan import SimulationConfig

SCAN = ["--nx", "64", "--ny", "32", "--angles", "48", "--seed", "3"]


class NumpyBackprojector:
    """nabu's FBP where nabu has no back-projector (no CUDA, no OpenCL): nabu's numpy ramp filter
    (``nabu.reconstruction.filtering.SinoFilter``) and its OpenCL kernel ``backproj.cl`` in numpy
    (``h = c + cos(t) (x - c) - sin(t) (y - c)``, linear interpolation, zero outside, the angular step and
    ``scale_factor`` as :class:`nabu.reconstruction.fbp_base.BackprojectorBase` applies them)."""

    def __init__(self, sino_shape, slice_shape=None, angles=None, rot_center=None, padding_mode="zeros",  # noqa: ANN001
                 filter_name=None, slice_roi=None, halftomo=False, extra_options=None, **_: object) -> None:
        from nabu.reconstruction.filtering import SinoFilter

        assert not halftomo and slice_shape is None, "not needed by these tests"
        options = extra_options or {}
        n_det = sino_shape[1]
        x0, x1, y0, y1 = slice_roi or (0, n_det, 0, n_det)
        self.shape = (y1 - y0, x1 - x0)
        self.n = n_det
        self.angles = np.asarray(angles, dtype=np.float64)
        self.c = (n_det - 1) / 2.0 if rot_center is None else float(rot_center)
        self.offset = (y0, x0)
        if options.get("centered_axis"):
            self.offset = (self.c - (self.shape[0] - 1) / 2.0, self.c - (self.shape[1] - 1) / 2.0)
        step = float(np.mean(np.diff(np.sort(self.angles))))
        turns = np.round(np.ptp(self.angles) / np.pi, decimals=1)
        self.scale = (step / turns if turns > 1 else step) * (options.get("scale_factor") or 1.0)
        self.filter = None
        if filter_name not in (None, "none", "None"):
            self.filter = SinoFilter(sino_shape, filter_name=filter_name, padding_mode=padding_mode,
                                     extra_options={"cutoff": options.get("filter_cutoff", 1.0),
                                                    "pixel_size_cm": options.get("pixel_size_cm")})

    def fbp(self, sino: np.ndarray, output: np.ndarray | None = None) -> np.ndarray:
        s = np.ascontiguousarray(sino, dtype=np.float32)
        if self.filter is not None:
            s = self.filter.filter_sino(s)
        y, x = np.mgrid[0:self.shape[0], 0:self.shape[1]].astype(np.float64)
        y, x = y + self.offset[0] - self.c, x + self.offset[1] - self.c
        out = np.zeros(self.shape)
        columns = np.arange(self.n)
        for p, t in enumerate(self.angles):
            out += np.interp(np.cos(t) * x - np.sin(t) * y + self.c, columns, s[p], left=0.0, right=0.0)
        out *= self.scale
        if output is not None:
            output[:] = out
            return output
        return out.astype(np.float32)


def _nabu_slice(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, int]:
    """``nabu CONF --slice middle`` (nabu's command, in this process): the slice and its row."""
    reconstruct = pytest.importorskip("nabu.app.reconstruct")
    chunked = pytest.importorskip("nabu.pipeline.fullfield.chunked")
    if chunked.ChunkedPipeline.FBPClass is None:  # numpy pipeline without OpenCL: nabu's kernel in numpy
        monkeypatch.setattr(chunked.ChunkedPipeline, "FBPClass", NumpyBackprojector)
    monkeypatch.chdir(tmp_path)  # nabu writes its log into the working folder
    monkeypatch.setattr(sys, "argv", ["nabu", str(conf), "--slice", "middle"])
    assert reconstruct.main() == 0
    out = conf.parent / "nabu" / f"{conf.stem.removeprefix('nabu_')}_rec.hdf5"
    with h5py.File(out, "r") as f:
        rec = f["entry0000/reconstruction"]
        row = int(rec["configuration/processing_options/reconstruction/start_z"][()])
        return np.asarray(rec["results/data"][0], dtype=np.float64), row


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _registered(moving: np.ndarray, ref: np.ndarray, mask: np.ndarray,
                reach: int = 3) -> tuple[float, np.ndarray]:
    """Highest correlation of ``moving`` shifted (sub-pixel) onto ``ref`` within the mask, and the shift."""
    start = max(((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)),
                key=lambda s: _correlation(nd_shift(moving, s, order=1), ref, mask))
    res = minimize(lambda s: -_correlation(nd_shift(moving, s, order=1), ref, mask), np.array(start, float),
                   method="Nelder-Mead", options={"xatol": 0.01, "fatol": 1e-6})
    return -float(res.fun), res.x


def test_nabu_reconstructs_a_distance_of_our_scan_as_we_do(tmp_path, monkeypatch, capsys):
    """The configuration simulate writes for the most magnified distance, run by nabu's own command, gives the
    slice our process gives of that distance: correlation >= 0.9 once nabu's slice is flipped top-bottom and
    registered (sub-pixel), and the same delta (slope 0.8 .. 1.25: nabu's CTF phase times -lambda / (2 pi),
    per cm). The low-frequency regularisation is set to a moderate 0.5 for both: nabu's configuration carries ours
    (lim1, lim2), but its transition from one to the other is a different low-pass filter from our erfc, and with
    the one-material default (2) that shape alone takes the correlation to 0.89."""
    pytest.importorskip("nabu")
    monkeypatch.setenv("XNH_CTF_ALPHA_LOW", "0.5")
    scan, one, ours = tmp_path / "scan", tmp_path / "one", tmp_path / "ours"
    assert main(["-q", "simulate", str(scan), *SCAN]) == 0
    conf = scan / "nabu_phantom_1_.conf"
    assert f"nabu {conf}" in capsys.readouterr().out  # the command line to run is printed
    one.mkdir()
    (one / "phantom_1_.nx").symlink_to(scan / "phantom_1_.nx")
    assert main(["-q", "process", str(one), "--out", str(ours), "--local"]) == 0
    volume = np.asarray(read_volume(ours / "volume.ome.zarr")[0], dtype=np.float64)

    nabu, row = _nabu_slice(conf, tmp_path, monkeypatch)
    ref = volume[row]
    assert nabu.shape == ref.shape
    n = ref.shape[0]
    yy, xx = np.mgrid[:n, :n]
    mask = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 < (0.4 * n) ** 2
    flipped = nabu[::-1]  # nabu's slice rows run the other way
    r, shift = _registered(flipped, ref, mask)
    assert r >= 0.9, (r, shift)
    assert np.all(np.abs(shift) < 1.5), shift  # same rotation axis and centre within a pixel
    slope = np.polyfit(nd_shift(flipped, shift, order=1)[mask], ref[mask], 1)[0]
    assert 0.8 < slope < 1.25, slope  # delta, as ours (not -phase)
    assert _registered(nabu, ref, mask)[0] < r - 0.1  # the flip is what nabu does, not a detail
    # nabu's files beside the scan do not disturb our reader
    from xnh_stream.chain.scan import ScanIndex

    index = ScanIndex.read(scan)
    assert len(index.distances) == 4 and not index.rejected_files and not index.rejected


def test_nabu_takes_z2_for_the_propagation_distance_unless_our_configuration_gives_the_geometry(tmp_path):
    """nabu's ProcessConfig on our file: as it comes, its phase retrieval propagates over z2 (the new user's
    -0.04 correlation); with our CTF configuration its GeoPars give D = z1 z2 / (z1 + z2) and the pixel p/M;
    with our Paganin configuration its distance is D and its pixel p/M."""
    processconfig = pytest.importorskip("nabu.pipeline.fullfield.processconfig")
    config_parser = pytest.importorskip("nabu.pipeline.config")
    ctf = pytest.importorskip("nabu.preproc.ctf")
    scan = tmp_path / "scan"
    assert main(["-q", "simulate", str(scan), "--nx", "32", "--ny", "16", "--angles", "8"]) == 0
    g = SimulationConfig().geometry().distances[1]  # the simulation's own geometry, not read back
    path = scan / "phantom_2_.nx"
    assert read_nxtomo(path).geometry.z1_m == pytest.approx(g.z1_m)

    def options(text: str) -> dict:
        conf = tmp_path / "t.conf"
        conf.write_text(text)
        pc = processconfig.ProcessConfig(conf_dict=config_parser.parse_nabu_config_file(str(conf)))
        return pc.processing_options

    plain = options(f"[dataset]\nlocation = {path}\n[phase]\nmethod = CTF\n[output]\nlocation = {tmp_path}\n")
    assert plain["phase"]["distance_m"] == pytest.approx(g.z2_m)  # nabu: z2, not D
    geo = ctf.GeoPars(**plain["phase"]["ctf_geo_pars"])
    assert geo.z2 / geo.maxM == pytest.approx(g.z2_m)

    written = options((scan / "nabu_phantom_2_.conf").read_text())
    phase = written["phase"]
    geo = ctf.GeoPars(**phase["ctf_geo_pars"])
    assert (phase["method"], phase["pixel_size_m"]) == ("CTF", pytest.approx(g.effective_pixel_m))
    assert geo.z2 * geo.z1_vh[0] / (geo.z1_vh[0] + geo.z2) == pytest.approx(g.propagation_distance_m)
    assert geo.pix_size_rec == pytest.approx(g.effective_pixel_m)
    assert "take_log" not in written  # CTF retrieves the phase itself
    assert written["reconstruction"]["voxel_size_cm"][0] == pytest.approx(g.effective_pixel_m * 100)
    # our regularisation, absolute as nabu takes it: alpha_low relative to 2 (beta/delta)^2 for one distance
    cfg = ProcessConfig.layered()
    assert phase["ctf_lim1"] == pytest.approx(cfg.ctf.alpha_low_for(False) * 2 / phase["delta_beta"] ** 2)
    assert phase["ctf_lim2"] == pytest.approx(cfg.ctf.alpha_high)

    paganin = options(nabu_config_text(path, g, 300.0, tmp_path, method="Paganin"))
    assert paganin["phase"]["distance_m"] == pytest.approx(g.propagation_distance_m)
    assert paganin["phase"]["pixel_size_m"] == pytest.approx(g.effective_pixel_m)
    assert "take_log" in paganin and paganin["phase"]["delta_beta"] == pytest.approx(300.0)
    k = 2 * np.pi / g.wavelength_m
    assert nabu_scale_factor(g, "CTF", 300.0) == pytest.approx(-100 / k)
    assert nabu_scale_factor(g, "Paganin", 300.0) == pytest.approx(100 * 300.0 / (2 * k))
