"""Array-module plumbing: one place that decides between NumPy and CuPy.

The numerical core never imports CuPy at module import time and never falls back
silently. Functions take an ``xp`` argument (the array module) or infer it from
their inputs with :func:`array_module_of`.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def get_array_module(name: str = "numpy") -> ModuleType:
    """Return the array module called ``name``.

    Parameters
    ----------
    name : {"numpy", "cupy"}
        Which backend to use. ``"cupy"`` requires a working CuPy install and a GPU.

    Returns
    -------
    module
        ``numpy`` or ``cupy``.

    Raises
    ------
    RuntimeError
        If ``"cupy"`` is requested but cannot be imported or sees no device.
    ValueError
        For an unknown backend name.
    """
    if name == "numpy":
        return np
    if name == "cupy":
        try:
            import cupy  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "backend 'cupy' was requested but CuPy is not installed; "
                "install xnh-stream[gpu] or choose backend 'numpy'"
            ) from exc
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(f"backend 'cupy' was requested but no CUDA device is usable: {exc}") from exc
        return cupy
    raise ValueError(f"unknown array backend {name!r}; expected 'numpy' or 'cupy'")


def array_module_of(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    CuPy is only consulted when it is already imported, so this never triggers a
    GPU initialisation on CPU-only machines.
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def fft_module(xp: ModuleType) -> ModuleType:
    """Return the SciPy-compatible FFT module for ``xp`` (``scipy.fft`` or ``cupyx.scipy.fft``)."""
    if xp is np:
        import scipy.fft  # noqa: PLC0415

        return scipy.fft
    import cupyx.scipy.fft  # noqa: PLC0415  # pragma: no cover

    return cupyx.scipy.fft  # pragma: no cover


def ndimage_module(xp: ModuleType) -> ModuleType:
    """Return the SciPy-compatible ``ndimage`` module for ``xp``."""
    if xp is np:
        import scipy.ndimage  # noqa: PLC0415

        return scipy.ndimage
    import cupyx.scipy.ndimage  # noqa: PLC0415  # pragma: no cover

    return cupyx.scipy.ndimage  # pragma: no cover


def fft_workers(xp: ModuleType) -> dict[str, int]:
    """Keyword arguments that parallelise FFTs on the CPU (``workers=-1``); empty on the GPU."""
    return {"workers": -1} if xp is np else {}


def to_numpy(a: Any) -> np.ndarray:
    """Copy ``a`` to host memory as a NumPy array (no-op for NumPy input)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return np.asarray(get() if get is not None else a)


def check_finite(a: Any, name: str, xp: ModuleType = np) -> None:
    """Raise ValueError naming ``name`` when ``a`` holds NaN or infinite values."""
    if not bool(xp.isfinite(a).all()):
        n_nan = int(xp.isnan(a).sum())
        n_inf = int(xp.isinf(a).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")


def bin_2d(a: Any, b: int) -> Any:
    """Mean over ``b x b`` blocks of an image (any array module); rows and columns beyond a multiple of
    ``b`` are dropped.

    Parameters
    ----------
    a : array [ny, nx]
        Image.
    b : int
        Binning factor (1 returns ``a`` itself).

    Returns
    -------
    array [ny // b, nx // b]
    """
    b = int(b)
    if b < 1:
        raise ValueError(f"binning must be >= 1, got {b}")
    if b == 1:
        return a
    ny, nx = a.shape[0] // b, a.shape[1] // b
    if ny == 0 or nx == 0:
        raise ValueError(f"image of shape {a.shape} is smaller than the binning {b}")
    # sums of strided rows, then of strided columns: ~8x faster than a mean over two axes of a 4-D view
    rows = a[: ny * b, : nx * b].reshape(ny, b, nx * b)
    acc = rows[:, 0, :].copy() if rows.dtype.kind == "f" else rows[:, 0, :] * 1.0  # integers: float64, as mean
    for i in range(1, b):
        acc += rows[:, i, :]
    cols = acc.reshape(ny, nx, b)
    out = cols[:, :, 0].copy()
    for j in range(1, b):
        out += cols[:, :, j]
    out *= 1.0 / (b * b)
    return out


def bin_volume(v: Any, b: int, xp: ModuleType = np) -> Any:
    """Block-average a 3-D volume by ``b`` along every axis (trailing voxels that do not fill a block are cut)."""
    v = xp.asarray(v, dtype=xp.float32)
    if v.ndim != 3:
        raise ValueError(f"bin_volume takes a 3-D volume, got shape {v.shape}")
    if b <= 1:
        return v
    n = [(s // b) * b for s in v.shape]
    if min(n) == 0:
        raise ValueError(f"bin factor {b} larger than the volume {v.shape}")
    # Strided adds, one axis at a time (each pass shrinks what the next reads): ~7x faster than a
    # reshape + mean over three axes, which NumPy runs as a slow strided reduction.
    for axis in range(3):
        take = [slice(None)] * 3
        parts = []
        for k in range(b):
            take[axis] = slice(k, n[axis], b)
            parts.append(v[tuple(take)])
        total = parts[0] + parts[1]
        for part in parts[2:]:
            total += part
        v = total
    v *= xp.float32(1.0 / b**3)
    return v


def binning_for(frame_shape: tuple[int, int], target: int) -> int:
    """The binning that reduces frames to about ``target`` columns, keeping at least 4 rows.

    Parameters
    ----------
    frame_shape : (int, int)
        ``(ny, nx)`` of the frames.
    target : int
        Columns wanted after binning.

    Returns
    -------
    int
        At least 1.
    """
    ny, nx = frame_shape
    return int(max(1, min(round(nx / target), ny // 4)))



class PicklableXp:
    """Mixin: pickles an object that holds its array module as ``self.xp`` by the module's name.

    Objects of the chain travel between processes (Ray tasks, the work folder); a module cannot be pickled,
    so it is stored as ``"numpy"`` or ``"cupy"`` and looked up again on arrival (:func:`get_array_module`).
    Device arrays are not converted: objects meant to travel keep host (NumPy) arrays.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        xp = state.get("xp")
        if isinstance(xp, ModuleType):
            state["xp"] = xp.__name__.split(".")[0]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("xp"), str):
            state["xp"] = get_array_module(state["xp"])
        self.__dict__.update(state)
