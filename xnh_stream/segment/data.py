"""Labelled volumes for training and evaluation: reading image + labels files, affinities from labels, and
simulated XNH neural tissue imaged through the full physics chain.

A labelled volume file is a zarr group/OME-Zarr or an HDF5 file holding an image dataset (default ``raw``)
and a label dataset (default ``labels``) of the same shape ``[z, y, x]``; label 0 is background (unlabelled,
ignored by training losses and by the CREMI evaluation). An optional ``mask`` dataset marks the voxels that
training may use.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import zarr

#: Nearest-neighbour affinity offsets, in the waterz convention: channel c links voxel x with x + offset[c].
NEAREST_OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


class LabelledVolumeError(ValueError):
    """A labelled-volume file that cannot be used: ``FILE [FIELD]: problem``."""

    def __init__(self, path: str | Path, problem: str, field: str | None = None) -> None:
        self.path, self.problem, self.field = str(path), problem, field
        super().__init__(f"{path} [{field}]: {problem}" if field else f"{path}: {problem}")


@dataclass
class LabelledVolume:
    """An image ``raw`` (float32, ``[z, y, x]``) with integer ``labels`` (0 = background) and a training ``mask``."""

    raw: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    voxel_m: float = 100e-9
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.raw.ndim != 3:
            raise LabelledVolumeError(self.source, f"image must be 3-D [z, y, x], got shape {self.raw.shape}")
        for name in ("labels", "mask"):
            a = getattr(self, name)
            if a.shape != self.raw.shape:
                raise LabelledVolumeError(self.source, f"{name} shape {a.shape} differs from image shape "
                                                       f"{self.raw.shape}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise LabelledVolumeError(self.source, f"labels must be integers, got {self.labels.dtype}")


def affinities_from_labels(labels: np.ndarray,
                           offsets: tuple[tuple[int, int, int], ...] = NEAREST_OFFSETS) -> np.ndarray:
    """Affinities ``[C, z, y, x]`` (float32): 1 where voxel and its neighbour at ``offset`` share a non-zero label.

    Voxels whose neighbour lies outside the volume get 0.
    """
    out = np.zeros((len(offsets),) + labels.shape, np.float32)
    for c, off in enumerate(offsets):
        dst = tuple(slice(max(-o, 0), labels.shape[i] - max(o, 0)) for i, o in enumerate(off))
        src = tuple(slice(max(o, 0), labels.shape[i] + min(o, 0)) for i, o in enumerate(off))
        a, b = labels[dst], labels[src]
        out[(c,) + dst] = (a == b) & (a != 0)
    return out


def _open(path: Path):
    if not path.exists():
        raise LabelledVolumeError(path, "no such file or folder")
    if path.is_dir():
        try:
            return zarr.open_group(str(path), mode="r"), "zarr"
        except Exception as exc:  # noqa: BLE001 - any zarr failure is reported with the file name
            raise LabelledVolumeError(path, f"not a zarr group ({exc})") from exc
    try:
        return h5py.File(path, "r"), "hdf5"
    except OSError as exc:
        raise LabelledVolumeError(path, f"not an HDF5 file ({exc})") from exc


def _dataset(group, key: str, path: Path) -> np.ndarray:
    if key not in group:
        raise LabelledVolumeError(path, f"dataset missing (has: {', '.join(sorted(group.keys()))})", key)
    node = group[key]
    if isinstance(node, (zarr.Group, h5py.Group)):  # an OME-Zarr image: take level 0
        keys = sorted(node.keys())
        if not keys:
            raise LabelledVolumeError(path, "empty group", key)
        node = node["s0" if "s0" in node else "0" if "0" in node else keys[0]]
    return np.asarray(node[...])


def load_labelled(path: str | Path, raw_key: str = "raw", labels_key: str = "labels",
                  mask_key: str | None = "mask") -> LabelledVolume:
    """Read a labelled volume from a zarr group or an HDF5 file (see module docstring)."""
    path = Path(path)
    group, kind = _open(path)
    try:
        raw = _dataset(group, raw_key, path).astype(np.float32, copy=False)
        labels = _dataset(group, labels_key, path)
        mask = (_dataset(group, mask_key, path).astype(bool) if mask_key and mask_key in group
                else np.ones(raw.shape, bool))
        voxel = float(group.attrs.get("voxel_m", 100e-9))
        meta = json.loads(group.attrs["meta"]) if "meta" in group.attrs else {}
    finally:
        if kind == "hdf5":
            group.close()
    if not np.isfinite(raw).all():
        raise LabelledVolumeError(path, "image holds NaN or infinite values", raw_key)
    return LabelledVolume(raw, labels, mask, voxel, str(path), meta)


def save_labelled(path: str | Path, vol: LabelledVolume) -> Path:
    """Write a labelled volume as HDF5 (``raw``, ``labels``, ``mask``, attributes ``voxel_m`` and ``meta``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=vol.raw, compression="gzip")
        f.create_dataset("labels", data=vol.labels, compression="gzip")
        f.create_dataset("mask", data=vol.mask, compression="gzip")
        f.attrs["voxel_m"] = vol.voxel_m
        f.attrs["meta"] = json.dumps(vol.meta)
    return path


@dataclass(frozen=True)
class DataFamily:
    """A named family of simulated labelled volumes: a tissue generator, its parameters and the imaging.

    Attributes
    ----------
    generator : str
        ``neural`` (:func:`~xnh_stream.simulate.phantom.make_neural_phantom`, its parameters are fields of
        :class:`~xnh_stream.simulate.scan.SimulationConfig`), ``voronoi``
        (:func:`~xnh_stream.simulate.tissue.make_voronoi_tissue`) or ``shells``
        (:func:`~xnh_stream.simulate.shells.make_shell_tissue`; keyword arguments for these two).
    tissue : dict
        The generator's parameters that differ from its defaults.
    imaging : dict
        :class:`~xnh_stream.simulate.scan.SimulationConfig` fields that differ from the defaults.
    vary : dict
        Parameters (tissue or imaging keys) drawn per seed from a list of choices (domain randomisation of the
        geometry and the imaging: each seed a different tissue); over ``tissue`` and ``imaging``.
    """

    generator: str
    tissue: dict = field(default_factory=dict)
    imaging: dict = field(default_factory=dict)
    vary: dict = field(default_factory=dict)

    def drawn(self, seed: int) -> tuple[dict, dict]:
        """The tissue and imaging parameters of ``seed``: ``vary``'s choices drawn from the seed, over the fixed ones.

        Returns
        -------
        tissue, imaging : dict
        """
        import inspect

        rng = np.random.default_rng([seed, 19])
        tissue, imaging = dict(self.tissue), dict(self.imaging)
        generator_keys = set(inspect.signature(self.make()).parameters)
        for key in sorted(self.vary):
            choices = self.vary[key]
            (tissue if key in generator_keys else imaging)[key] = choices[int(rng.integers(len(choices)))]
        return tissue, imaging

    def make(self):
        """The generator function (``neural``: its parameters are also fields of ``SimulationConfig``)."""
        if self.generator == "neural":
            from ..simulate.phantom import make_neural_phantom

            return make_neural_phantom
        if self.generator == "voronoi":
            from ..simulate.tissue import make_voronoi_tissue

            return make_voronoi_tissue
        from ..simulate.shells import make_shell_tissue

        return make_shell_tissue


#: Imaging drawn per seed by the ``-varied`` families: photons per pixel and detector blur.
_VARIED_IMAGING = {"photons": (5000.0, 10000.0, 20000.0, 40000.0), "detector_blur_px": (0.25, 0.5, 0.8, 1.0)}

#: The families of :func:`simulate_labelled` (docs/segmentation.md, "Tissue families"): three generators that
#: share no geometry code, at the default imaging; variants ``-lowdose`` (5000 photons per pixel, 1 px detector
#: blur) and ``-fine`` (thinner membranes and neurites or smaller cells with thinner, fainter membranes; 8000
#: photons, 0.8 px blur); ``shells-organelles`` (dense bodies, 1-3 voxel membranes); and ``-varied`` training
#: families whose membrane thickness, cell size, stain, photons and blur are drawn per seed.
DATA_FAMILIES: dict[str, DataFamily] = {
    "neural": DataFamily("neural"),
    "voronoi": DataFamily("voronoi"),
    "neural-lowdose": DataFamily("neural", imaging={"photons": 5000.0, "detector_blur_px": 1.0}),
    "voronoi-lowdose": DataFamily("voronoi", imaging={"photons": 5000.0, "detector_blur_px": 1.0}),
    "neural-fine": DataFamily("neural", {"membrane_px": 1.0, "calibre_px": 4.0},
                              {"photons": 8000.0, "detector_blur_px": 0.8}),
    "voronoi-fine": DataFamily("voronoi", {"cell_spacing_px": 14.0, "membrane_px": (0.5, 1.5), "stain": (0.4, 0.8)},
                               {"photons": 8000.0, "detector_blur_px": 0.8}),
    "shells": DataFamily("shells"),
    "shells-organelles": DataFamily("shells", {"organelles": 1.5, "membrane_px": (1.0, 3.0)},
                                    {"photons": 8000.0}),
    "neural-varied": DataFamily("neural", vary={**_VARIED_IMAGING, "membrane_px": (1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
                                                "calibre_px": (4.0, 5.0, 6.0, 7.0)}),
    "voronoi-varied": DataFamily("voronoi", vary={**_VARIED_IMAGING,
                                                  "membrane_px": ((0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 3.0)),
                                                  "stain": ((0.4, 0.8), (0.5, 1.0), (0.8, 1.0)),
                                                  "cell_spacing_px": (14.0, 17.0, 20.0, 24.0)}),
}
FAMILIES = tuple(DATA_FAMILIES)


def simulate_labelled(seed: int, workdir: str | Path | None = None, family: str = "neural",
                      **sim_overrides: object) -> LabelledVolume:
    """Simulate a scan of neural tissue, reconstruct it with the batch chain and pair it with its true labels.

    The image is the reconstructed delta volume (``process_scan``), the labels the phantom's neurite/cell ids
    on the same grid (``truth.h5``), the mask the voxels seen at every angle.

    Parameters
    ----------
    seed : int
        Simulation seed (phantom, offsets, noise).
    workdir : str or Path, optional
        Folder for the scan files (a temporary folder, removed afterwards, if omitted).
    family : str
        A family of :data:`DATA_FAMILIES`, whose generator is ``neural`` (default,
        :func:`~xnh_stream.simulate.phantom.make_neural_phantom`) or ``voronoi``
        (:func:`~xnh_stream.simulate.tissue.make_voronoi_tissue`: power-diagram cells, swept neurites and
        myelinated axons; its labels are made 6-connected components of the reconstructed grid, a cell the
        grid's edge cuts in two being two objects there).
    **sim_overrides
        Fields of :class:`~xnh_stream.simulate.scan.SimulationConfig` (over the family's).
    """
    from ..chain.batch import process_scan
    from ..simulate.scan import SimulationConfig, read_truth, simulate_scan, simulation_grid

    if family not in DATA_FAMILIES:
        raise ValueError(f"unknown tissue family {family!r} (one of {', '.join(FAMILIES)})")
    fam = DATA_FAMILIES[family]
    neural = fam.generator == "neural"
    tissue, imaging = fam.drawn(seed)
    cfg = SimulationConfig(seed=seed, **{**imaging, **(tissue if neural else {}), **sim_overrides})  # type: ignore[arg-type]
    phantom = None
    if not neural:
        make = fam.make()
        nz, n, _ = simulation_grid(cfg)
        radius = cfg.sample_radius_px if cfg.sample_radius_px is not None else 0.44 * cfg.nx
        phantom = make((nz, n, n), voxel_m=cfg.geometry().voxel_m, energy_kev=cfg.energy_kev, seed=seed,
                       sample_radius_px=min(radius, n / 2), **tissue)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        simulate_scan(folder / "scan", cfg, phantom)
        result = process_scan(folder / "scan")
        truth, record = read_truth(folder / "scan")
    raw = np.asarray(result.volume, np.float32)
    if raw.shape != truth["labels"].shape:
        raise LabelledVolumeError(folder, f"reconstruction {raw.shape} and truth {truth['labels'].shape} differ")
    labels = truth["labels"].astype(np.uint32)
    if not neural:
        from skimage.measure import label as connected

        labels = connected(labels, background=0, connectivity=1).astype(np.uint32)
    meta = {"seed": seed, "family": family, "tissue": dict(tissue), "simulation": dict(record["config"])}
    name = f"simulated seed {seed}" if family == "neural" else f"simulated {family} seed {seed}"
    return LabelledVolume(raw, labels, truth["field_of_view"].astype(bool), float(record["voxel_m"]), name, meta)
