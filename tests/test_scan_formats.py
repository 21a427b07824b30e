"""The input formats behind one protocol (xnh_stream/io/formats.py): discover, read a frame, completion evidence."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xnh_stream.io.formats import FORMATS, SUBFOLDER_FORMATS, format_for, format_of
from xnh_stream.io.sources import iter_records
from xnh_stream.simulate.scan import SimulationConfig, simulate_scan


def test_the_registry_holds_the_three_formats_and_finds_them_by_layout_and_suffix():
    assert list(FORMATS) == ["nxtomo", "nxtomo-chunks", "edf"]
    assert [f.name for f in SUBFOLDER_FORMATS] == ["edf", "nxtomo-chunks"]
    assert format_of("nxtomo").name == "nxtomo" and format_of("edf").name == "edf"
    assert format_for(Path("d1.h5")).layout == "nxtomo" and format_for(Path("a_0001.EDF")).layout == "edf"
    assert format_for(Path("notes.txt")) is None
    for f in FORMATS.values():
        assert {"name", "layout", "suffixes", "energy_field", "views_cacheable", "folder_evidence"} <= set(dir(f))


def test_a_scan_folder_of_nxtomo_files_is_discovered_read_and_finished(tmp_path):
    simulate_scan(tmp_path, SimulationConfig(nx=32, ny=16, n_angles=8))
    nx = FORMATS["nxtomo"]
    files = [p for p in nx.files(tmp_path) if p.name != "truth.h5"]
    assert files and all(p.suffix in nx.suffixes for p in files)
    z1s, why = nx.evidence(tmp_path, 60.0, time.time() + 3600)
    assert len(z1s) >= 2 and why == ""
    rec = next(r for r in iter_records(files[0], tmp_path) if r.is_projection)
    frame, field = nx.read(Path(rec.path), rec.entry, rec.index)
    np.testing.assert_array_equal(rec.read(), frame * np.float32(rec.scale))
    assert field.endswith("data")
    assert FORMATS["edf"].evidence(tmp_path, 60.0, time.time()) is None  # no EDF here
