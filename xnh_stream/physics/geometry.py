"""Holographic (cone-beam, Fresnel-scaled) geometry of one XNH distance and of a scan.

Conventions (SI units): ``z1`` is focus-to-sample, ``z2`` sample-to-detector,
``p`` the detector pixel. By the Fresnel scaling theorem the point-source geometry is
equivalent to a plane wave propagated over ``D = z1 z2 / (z1 + z2)`` and imaged with
magnification ``M = (z1 + z2) / z1`` onto pixels of size ``p / M`` in the sample plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: ``lambda[m] = HC_KEV_M / E[keV]``
HC_KEV_M = 1.23984198e-9


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV."""
    if not energy_kev > 0:
        raise ValueError(f"energy must be positive, got {energy_kev} keV")
    return HC_KEV_M / float(energy_kev)


@dataclass(frozen=True)
class DistanceGeometry:
    """Geometry of one focus-to-sample distance.

    Parameters
    ----------
    z1_m : float
        Focus-to-sample distance.
    z2_m : float
        Sample-to-detector distance.
    pixel_m : float
        Detector pixel size.
    energy_kev : float
        Photon energy.
    """

    z1_m: float
    z2_m: float
    pixel_m: float
    energy_kev: float

    def __post_init__(self) -> None:
        for name in ("z1_m", "z2_m", "pixel_m", "energy_kev"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")

    #: Magnification below ``1 + PLANE_WAVE_EPS`` is taken as a parallel (plane-wave) beam.
    PLANE_WAVE_EPS = 1e-9

    @classmethod
    def from_sample_plane(cls, sample_pixel_m: float, propagation_distance_m: float, energy_kev: float,
                          detector_pixel_m: float | None = None) -> DistanceGeometry:
        """The geometry of a distance stated in the sample plane (as ESRF's NXtomo files and nabu state it).

        With the detector pixel ``p``: ``M = p / p_s``, ``z2 = D M``, ``z1 = z2 / (M - 1)`` (the inverse of
        ``D = z1 z2 / (z1 + z2)`` and ``p_s = p / M``). Without it, or when ``p_s`` equals ``p`` (a parallel
        beam), the effective geometry is returned: the plane-wave limit ``M = 1 + PLANE_WAVE_EPS``, which
        keeps the effective pixel ``p_s``, the propagation distance ``D`` and the Fresnel number exact.

        Parameters
        ----------
        sample_pixel_m : float
            Pixel size in the sample plane ``p / M``.
        propagation_distance_m : float
            Effective propagation distance ``D``.
        energy_kev : float
            Photon energy.
        detector_pixel_m : float, optional
            Detector pixel ``p``.

        Returns
        -------
        DistanceGeometry

        Raises
        ------
        ValueError
            When a value is not positive, or the sample pixel is larger than the detector pixel (``M < 1``).
        """
        for name, v in (("sample_pixel_m", sample_pixel_m), ("propagation_distance_m", propagation_distance_m)):
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        mag = 1.0 + cls.PLANE_WAVE_EPS
        if detector_pixel_m is not None:
            ratio = float(detector_pixel_m) / float(sample_pixel_m)
            if ratio < 1.0 - 1e-6:
                raise ValueError(f"the sample pixel {sample_pixel_m} m is larger than the detector pixel "
                                 f"{detector_pixel_m} m: not a magnifying (cone-beam) geometry")
            mag = max(ratio, mag)
        z2 = float(propagation_distance_m) * mag
        return cls(z2 / (mag - 1.0), z2, float(sample_pixel_m) * mag, float(energy_kev))

    @property
    def wavelength_m(self) -> float:
        """Wavelength in metres."""
        return wavelength_m(self.energy_kev)

    @property
    def magnification(self) -> float:
        """Geometric magnification ``M = (z1 + z2) / z1``."""
        return (self.z1_m + self.z2_m) / self.z1_m

    @property
    def propagation_distance_m(self) -> float:
        """Effective (plane-wave) propagation distance ``D = z1 z2 / (z1 + z2)``."""
        return self.z1_m * self.z2_m / (self.z1_m + self.z2_m)

    @property
    def effective_pixel_m(self) -> float:
        """Pixel size in the sample plane, ``p / M``."""
        return self.pixel_m / self.magnification

    @property
    def fresnel_number(self) -> float:
        """Pixel Fresnel number ``F = (p/M)^2 / (lambda D)``."""
        return self.effective_pixel_m**2 / (self.wavelength_m * self.propagation_distance_m)


@dataclass(frozen=True)
class ScanGeometry:
    """The distances of one XNH scan; the reference is the most magnified one."""

    distances: tuple[DistanceGeometry, ...]

    def __post_init__(self) -> None:
        if not self.distances:
            raise ValueError("a scan needs at least one distance")
        energies = {round(d.energy_kev, 6) for d in self.distances}
        if len(energies) != 1:
            raise ValueError(f"all distances must share one energy, got {sorted(energies)} keV")

    @cached_property
    def reference(self) -> int:
        """Index of the distance with the smallest effective pixel (largest magnification)."""
        return int(np.argmin([d.effective_pixel_m for d in self.distances]))

    @property
    def voxel_m(self) -> float:
        """Reconstruction voxel size: the reference distance's effective pixel."""
        return self.distances[self.reference].effective_pixel_m

    @property
    def energy_kev(self) -> float:
        """Photon energy shared by all distances."""
        return self.distances[0].energy_kev

    def scale_to_reference(self, k: int) -> float:
        """Ratio of distance ``k``'s effective pixel to the reference pixel (>= 1)."""
        return self.distances[k].effective_pixel_m / self.voxel_m

    @property
    def propagation_distances_m(self) -> tuple[float, ...]:
        """Effective propagation distances ``D_k`` of all distances."""
        return tuple(d.propagation_distance_m for d in self.distances)
