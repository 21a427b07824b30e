"""Materials (X-ray optical constants) and the neural-tissue phantom."""

from __future__ import annotations

import time

import numpy as np
import pytest
import xraydb
from scipy import ndimage

from xnh_stream.simulate.materials import MATERIAL_ORDER, MATERIALS, material_indices
from xnh_stream.simulate.phantom import make_neural_phantom

# ----------------------------------------------------------------------------- materials

R_E = 2.8179403262e-15  # classical electron radius, m
N_A = 6.02214076e23


def _delta_from_electron_density(formula: str, density_g_cm3: float, energy_kev: float) -> float:
    """delta = r_e lambda^2 n_e / (2 pi), n_e from the composition (f1 ~ Z far from edges)."""
    atoms = xraydb.chemparse(formula)
    mass = sum(n * xraydb.atomic_mass(el) for el, n in atoms.items())
    electrons = sum(n * xraydb.atomic_number(el) for el, n in atoms.items())
    n_e = density_g_cm3 * 1e6 / mass * electrons * N_A  # per m^3
    lam = 1.23984198e-9 / energy_kev
    return R_E * lam**2 * n_e / (2 * np.pi)


def test_resin_and_tissue_delta_match_their_electron_density():
    idx = material_indices(17.0)
    for name in ("resin", "cytoplasm", "nucleoplasm"):
        m = MATERIALS[name]
        expect = _delta_from_electron_density(m.formula, m.density, 17.0)
        assert idx[name][0] == pytest.approx(expect, rel=0.02)
    delta, beta = idx["resin"]
    assert 8e-7 < delta < 1.1e-6  # organic matter at 1.2 g/cm^3, 17 keV
    assert 1e-10 < beta < 1e-9
    assert delta / beta > 1000


def test_delta_scales_as_inverse_square_energy_between_osmium_edges():
    lo, hi = material_indices(20.0), material_indices(40.0)  # between Os L1 (13 keV) and K (74 keV)
    for name in MATERIAL_ORDER[1:]:
        ratio = lo[name][0] / hi[name][0]
        assert ratio == pytest.approx(4.0, rel=0.03), name
    assert material_indices(40.0)["air"] == (0.0, 0.0)


def test_staining_ranks_the_classes():
    idx = material_indices(17.0)
    d = {k: v[0] for k, v in idx.items()}
    b = {k: v[1] for k, v in idx.items()}
    assert d["membrane"] > d["cytoplasm"] and b["membrane"] > 3 * b["cytoplasm"]
    assert d["mitochondrion"] > d["cytoplasm"] and b["mitochondrion"] > b["cytoplasm"]
    assert d["chromatin"] > d["nucleoplasm"] and b["chromatin"] > b["nucleoplasm"]
    assert b["membrane"] > b["mitochondrion"] > b["cytoplasm"] > b["resin"]
    for name in ("cytoplasm", "membrane", "mitochondrion", "nucleoplasm", "chromatin"):
        assert d[name] > d["resin"]
        assert 1.1 < MATERIALS[name].density < 1.7  # heavily stained membranes reach ~1.6 g/cm^3


def test_stain_is_osmium_its_l3_edge_shows():
    below, above = material_indices(10.80), material_indices(10.95)  # Os L3 edge 10.87 keV
    assert above["membrane"][1] > 1.5 * below["membrane"][1]
    assert above["resin"][1] < 1.02 * below["resin"][1]
    assert "Os" not in xraydb.chemparse(MATERIALS["resin"].formula)


def test_material_energy_is_validated():
    for bad in (0.0, -3.0, float("nan"), 1e4):
        with pytest.raises(ValueError, match="energy"):
            material_indices(bad)


# ----------------------------------------------------------------------------- phantom

SHAPE = (80, 88, 88)


@pytest.fixture(scope="module")
def ph():
    return make_neural_phantom(SHAPE, voxel_m=100e-9, energy_kev=17.0, seed=7)


def _radius_map(shape, r):
    ny, nx = shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    return np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2), r


def test_types_and_shapes(ph):
    assert ph.delta.shape == ph.beta.shape == ph.labels.shape == SHAPE
    assert ph.delta.dtype == ph.beta.dtype == np.float32
    assert ph.labels.dtype == np.int32
    for m in (ph.membrane, ph.mito, ph.nucleus, ph.sample):
        assert m.dtype == bool and m.shape == SHAPE
    assert ph.voxel_m == 100e-9
    assert np.all(np.isfinite(ph.delta)) and np.all(ph.delta >= 0) and np.all(ph.beta >= 0)


def test_many_neurites_with_a_spread_of_calibres(ph):
    lab = ph.labels
    n = int(lab.max())
    assert n >= 40
    assert set(np.unique(lab)) == set(range(n + 1))  # numbered 1..N
    # calibre of each object = radius of its largest inscribed ball
    boundary = np.zeros(lab.shape, bool)
    for ax in range(3):
        d = np.diff(lab, axis=ax) != 0
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        boundary[tuple(a)] |= d
        boundary[tuple(b)] |= d
    edt = ndimage.distance_transform_edt((lab > 0) & ~boundary)
    radius = np.asarray(ndimage.maximum(edt, lab, np.arange(1, n + 1)))
    big = radius[radius >= 1.5]
    assert len(big) >= 30
    assert np.percentile(big, 90) / np.percentile(big, 10) > 2.5
    assert big.max() >= 8  # thick dendrites / cell bodies next to thin axons


def test_different_labels_meet_only_through_membrane(ph):
    lab, mem = ph.labels, ph.membrane
    assert not np.any(mem & (lab == 0))
    for ax in range(3):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        la, lb = lab[tuple(a)], lab[tuple(b)]
        ma, mb = mem[tuple(a)], mem[tuple(b)]
        differ = la != lb
        assert np.all(ma[differ & (la > 0)]) and np.all(mb[differ & (lb > 0)])


def test_every_label_is_one_connected_piece(ph):
    for i, sl in enumerate(ndimage.find_objects(ph.labels), start=1):
        assert sl is not None
        _, n = ndimage.label(ph.labels[sl] == i)  # face connectivity
        assert n == 1, f"label {i} has {n} pieces"


def test_air_outside_the_cylinder_tissue_inside(ph):
    rho, _ = _radius_map(SHAPE, None)
    r = 0.4 * min(SHAPE[1:])
    outside = rho > r + 0.5
    assert np.all(ph.delta[:, outside] == 0) and np.all(ph.beta[:, outside] == 0)
    assert np.all(ph.labels[:, outside] == 0) and not ph.sample[:, outside].any()
    assert ph.sample[:, rho < r - 0.5].all()
    assert np.all(ph.delta[:, rho < r - 0.5] > 0)
    assert (ph.labels > 0)[:, rho < r].mean() > 0.7  # densely packed


def test_optical_constants_follow_the_material_table(ph):
    idx = material_indices(17.0)
    rho, _ = _radius_map(SHAPE, None)
    interior = np.broadcast_to(rho < 0.4 * min(SHAPE[1:]) - 0.5, SHAPE)
    nucleus_interior = ph.nucleus & ~ph.membrane
    classes = {
        "membrane": ph.membrane,
        "mitochondrion": ph.mito,
        "cytoplasm": (ph.labels > 0) & ~ph.membrane & ~ph.mito & ~ph.nucleus,
        "resin": (ph.labels == 0) & interior,
    }
    for name, mask in classes.items():
        assert mask.any(), name
        np.testing.assert_array_equal(ph.delta[mask], np.float32(idx[name][0]))
        np.testing.assert_array_equal(ph.beta[mask], np.float32(idx[name][1]))
    nuc_d = np.unique(ph.delta[nucleus_interior])
    assert set(nuc_d) <= {np.float32(idx["nucleoplasm"][0]), np.float32(idx["chromatin"][0])}
    assert len(nuc_d) == 2  # chromatin texture in nucleoplasm
    names = np.asarray(ph.material_names)
    assert set(names[ph.material[ph.membrane]]) == {"membrane"}


def test_nuclei_and_mitochondria_sit_inside_their_cells(ph):
    assert len(ph.cell_ids) >= 1
    cells = np.asarray(ph.cell_ids)
    assert np.all(np.isin(ph.labels[ph.nucleus], cells))
    for c in cells:
        assert ph.nucleus[ph.labels == c].sum() > 200  # every cell body has a nucleus
    # nuclear envelope: the nucleus boundary inside the cell is membrane
    shell = ph.nucleus & ~ndimage.binary_erosion(ph.nucleus)
    assert ph.membrane[shell].mean() > 0.95
    assert not np.any(ph.mito & ((ph.labels == 0) | ph.membrane | ph.nucleus))
    frac = ph.mito.sum() / (ph.labels > 0).sum()
    assert 0.02 < frac < 0.12
    # a mitochondrion is elongated: its largest pieces are longer than they are wide
    lab, n = ndimage.label(ph.mito)
    sizes = np.bincount(lab.ravel())[1:]
    elong = []
    for i in np.argsort(sizes)[::-1][:10] + 1:
        pts = np.argwhere(lab == i).astype(float)
        ev = np.linalg.eigvalsh(np.cov(pts.T))
        elong.append(np.sqrt(ev[-1] / ev[0]))
    assert np.median(elong) > 1.6


def test_neurites_run_oblique_to_the_rotation_axis(ph):
    tilts = []
    sizes = np.bincount(ph.labels.ravel())
    for i, sl in enumerate(ndimage.find_objects(ph.labels), start=1):
        if sizes[i] < 400 or i in ph.cell_ids:
            continue
        pts = np.argwhere(ph.labels[sl] == i).astype(float)
        ev, vec = np.linalg.eigh(np.cov(pts.T))
        if ev[-1] < 6 * ev[-2]:
            continue  # not clearly elongated
        tilts.append(np.degrees(np.arccos(abs(vec[0, -1]))))  # angle between axis and z
    tilts = np.asarray(tilts)
    assert len(tilts) >= 15
    assert np.median(tilts) > 15
    assert np.mean(tilts < 10) < 0.3  # not all parallel to the rotation axis


def test_deterministic_with_a_seed():
    a = make_neural_phantom((32, 40, 40), seed=11, calibre_px=2.5)
    b = make_neural_phantom((32, 40, 40), seed=11, calibre_px=2.5)
    c = make_neural_phantom((32, 40, 40), seed=12, calibre_px=2.5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.delta, b.delta)
    np.testing.assert_array_equal(a.mito, b.mito)
    assert not np.array_equal(a.labels, c.labels)


def test_options_without_cells_or_mitochondria():
    p = make_neural_phantom((32, 48, 48), seed=2, n_cells=0, n_bundles=1, mito_fraction=0.0, calibre_px=2.0)
    assert p.cell_ids == () and not p.nucleus.any() and not p.mito.any()
    assert p.labels.max() >= 10


def test_96_cube_is_fast():
    t0 = time.perf_counter()
    make_neural_phantom((96, 96, 96), seed=0)
    assert time.perf_counter() - t0 < 5.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        make_neural_phantom((64, 64))
    with pytest.raises(ValueError, match="sample_radius_px"):
        make_neural_phantom((32, 32, 32), sample_radius_px=40)
    with pytest.raises(ValueError, match="calibre_px"):
        make_neural_phantom((32, 32, 32), calibre_px=0.0)
    with pytest.raises(ValueError, match="voxel_m"):
        make_neural_phantom((32, 32, 32), voxel_m=float("nan"))
    with pytest.raises(ValueError, match="energy"):
        make_neural_phantom((32, 32, 32), energy_kev=-1.0)
