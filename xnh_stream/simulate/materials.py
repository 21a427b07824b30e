"""X-ray optical constants of resin-embedded, osmium-stained neural tissue.

The complex refractive index is ``n = 1 - delta + i beta`` (``beta > 0`` absorbs); both are
taken from the Chantler tables through ``xraydb.xray_delta_beta`` for a chemical formula and
a mass density.

Composition model (assumptions, stated so they can be changed in one place)
---------------------------------------------------------------------------
After fixation, heavy-metal staining, dehydration and embedding, the water of the tissue is
replaced by epoxy resin. Each phantom material is therefore a mass-fraction mixture of five
ingredients:

* **epoxy**: cured Epon-812-type block, taken as glycerol triglycidyl ether ``C12H20O6`` (the
  main constituent of Epon 812 and its substitutes) with the anhydride hardeners DDSA
  ``C16H26O3`` and NMA ``C10H10O3`` in the proportions of Luft's (1961) medium-hard mixture,
  about 48 : 30 : 22 by mass; cured blocks have ~1.2 g/cm^3.
* **protein**: the textbook average elemental mass composition of proteins
  (C 53 %, H 7 %, N 16 %, O 23 %, S 1 %); density 1.35 g/cm^3 (partial specific volume
  ~0.74 cm^3/g).
* **lipid**: a phospholipid, POPC ``C42H82NO8P``, ~1.01 g/cm^3.
* **dna**: the average DNA nucleotide ``C9.75H12.25N3.75O6P`` (free acid), ~1.7 g/cm^3.
* **stain**: osmium, bound mostly as reduced osmium dioxide ``OsO2`` (11.4 g/cm^3). OsO4
  reacts with unsaturated lipid chains, so membranes take up most of it; mitochondria
  (cristae) and heterochromatin are next; plain cytoplasm and nucleoplasm are light.

Densities follow from volume additivity, ``1 / rho = sum_i w_i / rho_i``.

The stain fractions are order-of-magnitude choices, not measurements: the phantom's
"membrane" is an *effective* voxel material (a 1-2 voxel, i.e. 30-240 nm, shell that stands
for two ~8 nm osmium-rich bilayers plus the cytoplasm around them), tuned for heavy en-bloc
staining (EM protocols of the rOTO kind, as used for the XNH data of Kuan et al. 2020): membranes
absorb ~15 times more than cytoplasm and their delta is ~20 % higher, so that single membranes
seen edge-on stand out in phase as they do in those data. With light staining (a few percent
of osmium in membranes) the phase contrast of tissue is ~2 % and drowns in photon noise at the
doses XNH uses. Change :data:`_RECIPES` to model another protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xraydb

__all__ = ["MATERIALS", "MATERIAL_ORDER", "Material", "material_indices"]


@dataclass(frozen=True)
class Material:
    """One phantom material.

    Attributes
    ----------
    name : str
        Key in :data:`MATERIALS`.
    formula : str
        Chemical formula (fractional stoichiometry, moles per 100 g) understood by xraydb;
        empty for vacuum.
    density : float
        Mass density in g/cm^3 (0 for vacuum).
    description : str
        What the material stands for.
    """

    name: str
    formula: str
    density: float
    description: str = ""


# ingredient -> ({element: mass fraction}, density g/cm^3)
def _mass_fractions(formula: str) -> dict[str, float]:
    atoms = xraydb.chemparse(formula)
    masses = {el: n * xraydb.atomic_mass(el) for el, n in atoms.items()}
    total = sum(masses.values())
    return {el: m / total for el, m in masses.items()}


def _blend(parts: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for formula, w in parts.items():
        for el, f in _mass_fractions(formula).items():
            out[el] = out.get(el, 0.0) + w * f
    return out


_INGREDIENTS: dict[str, tuple[dict[str, float], float]] = {
    "epoxy": (_blend({"C12H20O6": 0.48, "C16H26O3": 0.30, "C10H10O3": 0.22}), 1.20),
    "protein": ({"C": 0.53, "H": 0.07, "N": 0.16, "O": 0.23, "S": 0.01}, 1.35),
    "lipid": (_mass_fractions("C42H82NO8P"), 1.01),
    "dna": (_mass_fractions("C9.75H12.25N3.75O6P"), 1.70),
    "stain": (_mass_fractions("OsO2"), 11.4),
}

# material -> (ingredient mass fractions, description)
_RECIPES: dict[str, tuple[dict[str, float], str]] = {
    "resin": ({"epoxy": 1.0}, "extracellular space and sample rim: cured Epon-812-type epoxy"),
    "cytoplasm": (
        {"epoxy": 0.75, "protein": 0.20, "lipid": 0.03, "stain": 0.02},
        "neuropil / axoplasm / cytoplasm, lightly stained",
    ),
    "membrane": (
        {"epoxy": 0.20, "protein": 0.22, "lipid": 0.28, "stain": 0.30},
        "plasma membrane and nuclear envelope (effective voxel material), strongly stained",
    ),
    "mitochondrion": (
        {"epoxy": 0.40, "protein": 0.35, "lipid": 0.10, "stain": 0.15},
        "mitochondria: dense matrix and cristae, stained",
    ),
    "nucleoplasm": (
        {"epoxy": 0.79, "protein": 0.15, "dna": 0.04, "stain": 0.02},
        "nucleoplasm / euchromatin, lightly stained",
    ),
    "chromatin": (
        {"epoxy": 0.52, "protein": 0.23, "dna": 0.15, "stain": 0.10},
        "heterochromatin clumps and nucleolus, moderately stained",
    ),
}


def _make_material(name: str, parts: dict[str, float], description: str) -> Material:
    if abs(sum(parts.values()) - 1.0) > 1e-9:
        raise ValueError(f"mass fractions of {name!r} do not sum to 1")
    elements: dict[str, float] = {}
    inv_rho = 0.0
    for ingredient, w in parts.items():
        fractions, rho = _INGREDIENTS[ingredient]
        inv_rho += w / rho
        for el, f in fractions.items():
            elements[el] = elements.get(el, 0.0) + w * f
    # moles of each element in 100 g, as an xraydb formula
    formula = "".join(
        f"{el}{100.0 * f / xraydb.atomic_mass(el):.6f}" for el, f in sorted(elements.items()) if f > 0
    )
    return Material(name, formula, round(1.0 / inv_rho, 4), description)


#: Phantom materials; ``air`` is treated as vacuum (``delta = beta = 0``).
MATERIALS: dict[str, Material] = {
    "air": Material("air", "", 0.0, "air around the sample, treated as vacuum"),
    **{name: _make_material(name, parts, desc) for name, (parts, desc) in _RECIPES.items()},
}

#: Material index order used by the phantom's ``material`` volume (index 0 = air).
MATERIAL_ORDER: tuple[str, ...] = (
    "air",
    "resin",
    "cytoplasm",
    "membrane",
    "mitochondrion",
    "nucleoplasm",
    "chromatin",
)


@lru_cache(maxsize=32)
def _indices(energy_kev: float) -> tuple[tuple[str, float, float], ...]:
    out = []
    for name, m in MATERIALS.items():
        if m.density == 0.0:
            out.append((name, 0.0, 0.0))
        else:
            delta, beta, _ = xraydb.xray_delta_beta(m.formula, m.density, energy_kev * 1e3)
            out.append((name, float(delta), float(beta)))
    return tuple(out)


def material_indices(energy_kev: float) -> dict[str, tuple[float, float]]:
    """Refractive index decrement and absorption index of every material.

    Parameters
    ----------
    energy_kev : float
        Photon energy in keV (1 to 400).

    Returns
    -------
    dict
        ``{name: (delta, beta)}`` with ``n = 1 - delta + i beta``; ``air`` is ``(0, 0)``.
    """
    e = float(energy_kev)
    if not (np.isfinite(e) and 1.0 <= e <= 400.0):
        raise ValueError(f"energy_kev must be a finite value in [1, 400] keV, got {energy_kev!r}")
    return {name: (d, b) for name, d, b in _indices(e)}
