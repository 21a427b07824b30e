"""The third tissue family (simulate/shells.py): membranes that close in 3-D with a thickness in range, stain
physics, no geometry code shared with the other two generators, and the family reaching simulate_labelled."""

from __future__ import annotations

import ast
import functools
import inspect

import numpy as np
import pytest
from scipy import ndimage

from xnh_stream.segment.data import DATA_FAMILIES, simulate_labelled
from xnh_stream.simulate import shells
from xnh_stream.simulate.materials import material_indices
from xnh_stream.simulate.shells import make_shell_tissue

SHAPE = (40, 72, 72)


@pytest.fixture(scope="module")
def phantom():
    return make_shell_tissue(SHAPE, seed=3, cell_spacing_px=12.0, membrane_px=(2.0, 3.5))


def test_cells_are_closed_by_membranes_of_the_given_thickness(phantom):
    lab = phantom.labels
    ids = np.unique(lab)[1:]
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    for ax in range(3):  # no two cells face to face
        a, b = np.take(lab, range(lab.shape[ax] - 1), ax), np.take(lab, range(1, lab.shape[ax]), ax)
        assert not ((a != b) & (a > 0) & (b > 0)).any()
    # two cells are at least membrane_px[0] - 1 voxels apart: grow every cell by one voxel less than half
    # that and no two still touch (a one-voxel membrane would fail this)
    grown = ndimage.grey_dilation(lab, footprint=ndimage.generate_binary_structure(3, 1))
    for ax in range(3):
        a, b = np.take(grown, range(lab.shape[ax] - 1), ax), np.take(lab, range(1, lab.shape[ax]), ax)
        clash = (a != b) & (a > 0) & (b > 0)
        assert clash.mean() < 1e-3, clash.mean()  # measured 0 to a few voxels where the band is thinnest
    assert not lab[~phantom.sample].any()
    assert 20 < len(ids) < 400, len(ids)
    assert phantom.nucleus.any() and lab[phantom.nucleus].min() > 0  # nuclei keep their cell's label


def test_stain_and_cytoplasm_and_a_threshold_separates_the_cells_in_the_phantom(phantom):
    idx = material_indices(17.0)
    cyto, stain = idx["cytoplasm"][0], idx["membrane"][0]
    inner = phantom.membrane & ndimage.binary_erosion(phantom.sample[0], iterations=3)[None]
    d = phantom.delta
    assert (d[inner] > cyto + 0.69 * (stain - cyto)).all() and (d[inner] <= stain * 1.0001).all()
    plain = (phantom.labels > 0) & ~phantom.nucleus & ~phantom.mito
    assert np.allclose(d[plain], cyto)
    # what the foreign phantom showed: cytoplasm below a threshold, each cell one component
    below = ndimage.label((d < cyto + 0.3 * (stain - cyto)) & (phantom.labels > 0))[0]
    inside = below > 0  # (nuclear envelopes are stained: above the threshold inside their cell)
    pairs = np.unique(np.stack([phantom.labels[inside], below[inside]]), axis=1)
    assert len(np.unique(pairs[1])) == pairs.shape[1]  # no component holds two cells


def test_same_seed_same_tissue_bad_arguments_and_no_code_shared():
    a = make_shell_tissue((24, 40, 40), seed=5, cell_spacing_px=10.0)
    b = make_shell_tissue((24, 40, 40), seed=5, cell_spacing_px=10.0)
    c = make_shell_tissue((24, 40, 40), seed=6, cell_spacing_px=10.0)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.delta, b.delta)
    assert not np.array_equal(a.labels, c.labels)
    for bad, match in (({"membrane_px": (3.0, 1.0)}, "membrane_px"), ({"sample_radius_px": 30}, "sample_radius"),
                       ({"cell_spacing_px": 2}, "cell_spacing")):
        with pytest.raises(ValueError, match=match):
            make_shell_tissue((24, 40, 40), **bad)
    tree = ast.parse(inspect.getsource(shells))
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("phantom", "Phantom") in imported and not {m for m, _ in imported} & {"tissue", "simulate.tissue"}
    assert [name for m, name in imported if m == "phantom"] == ["Phantom"]


def test_the_shells_families_reach_their_generator(monkeypatch):
    import xnh_stream.simulate.scan as scan_module

    seen = {}

    class Stop(Exception):
        pass

    def fake_shells(shape, **kw):
        seen["tissue"] = kw
        return "phantom"

    def fake_scan(folder, cfg, phantom=None):
        seen["cfg"], seen["phantom"] = cfg, phantom
        raise Stop

    monkeypatch.setattr(shells, "make_shell_tissue", fake_shells)
    monkeypatch.setattr(scan_module, "simulate_scan", fake_scan)
    with pytest.raises(Stop):
        simulate_labelled(7, family="shells-organelles")
    fam = DATA_FAMILIES["shells-organelles"]
    assert {k: seen["tissue"][k] for k in fam.tissue} == fam.tissue and seen["tissue"]["seed"] == 7
    assert seen["cfg"].photons == fam.imaging["photons"] and seen["phantom"] == "phantom"


def test_a_varied_family_draws_its_tissue_and_imaging_per_seed(monkeypatch):
    """``-varied``: each seed its own membrane thickness, stain, cell size, photons and blur, the same for the same
    seed; generator keywords go to the generator, the rest to the scan's configuration."""
    import xnh_stream.simulate.scan as scan_module
    from xnh_stream.simulate import tissue

    fam = DATA_FAMILIES["voronoi-varied"]
    drawn = [fam.drawn(s) for s in range(1, 13)]
    assert fam.drawn(5) == drawn[4]
    for t, i in drawn:
        assert set(t) == {"membrane_px", "stain", "cell_spacing_px"} and set(i) == {"photons", "detector_blur_px"}
        assert t["membrane_px"] in fam.vary["membrane_px"] and i["photons"] in fam.vary["photons"]
    assert len({t["membrane_px"] for t, _ in drawn}) >= 3 and len({i["photons"] for _, i in drawn}) >= 3
    t, i = DATA_FAMILIES["neural-varied"].drawn(3)
    assert set(t) == {"membrane_px", "calibre_px"} and set(i) == {"photons", "detector_blur_px"}

    seen = {}

    class Stop(Exception):
        pass

    @functools.wraps(tissue.make_voronoi_tissue)  # the generator's signature: its keywords are known
    def fake_tissue(shape, **kw):
        seen["tissue"] = kw
        return "phantom"

    def fake_scan(folder, cfg, phantom=None):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(tissue, "make_voronoi_tissue", fake_tissue)
    monkeypatch.setattr(scan_module, "simulate_scan", fake_scan)
    with pytest.raises(Stop):
        simulate_labelled(5, family="voronoi-varied")
    t, i = drawn[4]
    assert {k: seen["tissue"][k] for k in t} == t and seen["cfg"].photons == i["photons"]
    assert seen["cfg"].detector_blur_px == i["detector_blur_px"]
