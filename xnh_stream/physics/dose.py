"""Radiation dose from flat-field counts (Howells et al. 2009).

``D[Gy] = (mu/rho)[m^2/kg] * Phi[photons/m^2] * E[J]``: the fluence at the sample is the photon count of
a flat frame (dark subtracted, divided by detector gain [counts/photon] and efficiency) per detector pixel,
concentrated onto the pixel's footprint in the sample plane, ``(p / M)^2``, i.e. scaled by ``M^2``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

KEV_TO_J = 1.602176634e-16


@lru_cache(maxsize=64)
def mass_attenuation_m2_per_kg(formula: str, density_g_cm3: float, energy_kev: float) -> float:
    """Photo-absorption mass attenuation coefficient ``mu/rho`` of a material, in m^2/kg (xraydb)."""
    import xraydb  # noqa: PLC0415 - its tables take 0.6 s to load: only where a material is looked up

    mu_per_cm = xraydb.material_mu(formula, energy_kev * 1e3, density=density_g_cm3, kind="photo")
    return float(mu_per_cm / density_g_cm3) * 0.1  # cm^2/g -> m^2/kg


def fluence_per_frame(flat_counts: float, dark_counts: float, gain: float, efficiency: float,
                      effective_pixel_m: float) -> float:
    """Photons per m^2 at the sample plane delivered by one frame.

    Parameters
    ----------
    flat_counts, dark_counts : float
        Mean counts per detector pixel of a flat frame and of a dark frame.
    gain : float
        Detector counts per detected photon.
    efficiency : float
        Fraction of incident photons that are detected (0 < efficiency <= 1).
    effective_pixel_m : float
        Pixel size in the sample plane, ``p / M``.
    """
    if gain <= 0 or not 0 < efficiency <= 1:
        raise ValueError(f"gain must be > 0 and efficiency in (0, 1], got {gain}, {efficiency}")
    photons = max(flat_counts - dark_counts, 0.0) / (gain * efficiency)
    return photons / effective_pixel_m**2


def dose_gray(mu_rho_m2_per_kg: float, fluence_per_m2: float, energy_kev: float) -> float:
    """Absorbed dose in gray for a fluence of photons of one energy."""
    return float(mu_rho_m2_per_kg * fluence_per_m2 * energy_kev * KEV_TO_J)


def central_mean(image: np.ndarray, fraction: float = 0.5) -> float:
    """Mean of the central ``fraction`` of an image (where the sample sits)."""
    ny, nx = image.shape[-2:]
    dy, dx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return float(np.mean(image[..., dy : ny - dy, dx : nx - dx]))
