"""Pairwise registration of overlapping scans at a common voxel size.

For each pair whose nominal places overlap, both scans are resampled onto one grid over the overlap, at the
coarser of their two voxel sizes (the finer scan read from the pyramid level nearest below and low-pass
filtered, so both see the same band). Two steps:

1. **Coarse, whole voxels.** Masked normalised cross-correlation (Padfield 2012, scikit-image's
   ``cross_correlate_masked``) on a grid of at most ``coarse_side`` voxels per axis, so only each scan's field
   of view counts and the overlap may be any shape (two cylinders side by side overlap in a lens). The
   peak is searched only within the allowed stage error (``max_shift_m``), then refined by a parabola.
2. **Fine, sub-voxel.** Both scans resampled again at the registration voxel on the overlap left by the
   coarse shift (at most ``fine_side`` voxels per axis), tapered to zero at the edge of the common field of
   view, and registered by phase correlation with an upsampled DFT (scikit-image
   ``phase_cross_correlation``, ``upsample_factor``); repeated with the new shift until a step moves less
   than ``1 / upsample``. The taper is common to both images, so its own correlation pulls the peak towards
   the current shift: a residual ``r`` is measured as about ``0.7 r`` on a 22-voxel overlap, and every step
   under-corrects. Stopped after three steps at a 1/20-voxel peak (the quantum swallows the last, shrunken
   steps), scans overlapping by a third of 64 slices were left up to 0.64 voxel off (rms 0.16 over 16 pairs);
   run to convergence at 1/40, 0.087 (rms 0.04; ``tests/test_stitch.py``). Finer peaks cost memory: the
   upsampled DFT is ``(1.5 upsample)^3`` complex values (54 MB at 1/100).

The coarse grid covers the nominal overlap grown by ``max_shift_m`` (the content the two share lies there
whatever the stage error). The result of a pair is the shift ``s`` that moves scan ``b`` onto scan ``a``: with nominal-to-true errors
``e``, ``s = e_b - e_a``; its quality is the normalised cross-correlation of the two on their common field
of view at that shift. The same overlap gives the mean of each scan there (for the intensity matching).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from skimage.registration import phase_cross_correlation
from skimage.registration._masked_phase_cross_correlation import cross_correlate_masked

from .scans import Scan, blend_weight, fov_distance, sample_scan


@dataclass
class RegisterParams:
    """Parameters of the pairwise registration.

    Attributes
    ----------
    max_shift_m : float
        Largest correction of a scan's nominal place along each axis (the stage's error); larger peaks are
        not searched.
    register_voxel_m : float or None
        Registration voxel (default: the coarser voxel of the pair).
    coarse_side, fine_side : int
        Largest grid edge of the coarse and fine steps (voxels; memory and time grow with the cube).
    trim_voxels : float
        Edge of each field of view left out (voxels of the scan): reconstruction edges are unreliable.
    fov : str
        ``cylinder`` or ``box`` (see :func:`~.scans.fov_distance`).
    min_overlap_voxels : int
        Thinnest overlap (registration voxels along every axis) worth registering.
    min_ncc : float
        Lowest normalised cross-correlation of an accepted pair (two reconstructions of one region correlate
        0.9 and more; chance matches of the simulated tissue reached 0.2-0.43).
    upsample : int
        Sub-voxel precision of the fine step is ``1 / upsample``.
    iterations : int
        Most fine steps (they stop once a step moves less than ``1 / upsample``).
    """

    max_shift_m: float = 4e-6
    register_voxel_m: float | None = None
    coarse_side: int = 32
    fine_side: int = 64
    trim_voxels: float = 2.0
    fov: str = "cylinder"
    min_overlap_voxels: int = 8
    min_ncc: float = 0.5
    upsample: int = 40
    iterations: int = 12


@dataclass
class PairResult:
    """The registration of one overlapping pair (JSON-able via :meth:`as_dict`).

    Attributes
    ----------
    a, b : int
        Scan indices.
    shift_m : list of float
        ``e_b - e_a``: what moves scan ``b`` onto scan ``a`` (``z y x`` metres).
    ncc : float
        Normalised cross-correlation at that shift over the common field of view.
    voxels : int
        Voxels of the common field of view in the fine step.
    register_voxel_m, coarse_voxel_m : float
        Voxels of the fine and coarse steps.
    mean_a, mean_b : float
        Mean of each scan over the common field of view (for the intensity matching).
    peak_ratio : float
        Coarse correlation peak over the next local maximum: how unique the match is (reported, not a gate:
        chance matches of scans that do not overlap gave 1.02-1.23, true ones 1.6-2.6, but a true match of two
        side-by-side cylinders at two voxel sizes gave 1.09).
    ok : bool
        Accepted (within ``max_shift_m``, ``ncc`` above ``min_ncc``).
    reason : str
        Why not, if not.
    """

    a: int
    b: int
    shift_m: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    ncc: float = 0.0
    voxels: int = 0
    register_voxel_m: float = 0.0
    coarse_voxel_m: float = 0.0
    mean_a: float = 0.0
    mean_b: float = 0.0
    peak_ratio: float = 0.0
    ok: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def overlap_bounds(a: Scan, b: Scan, shift_b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Intersection ``(lo, hi)`` of the two scans' boxes (``b`` moved by ``shift_b``); empty if ``hi <= lo``."""
    lo_a, hi_a = a.bounds_m()
    lo_b, hi_b = b.bounds_m(shift_b)
    return np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)


#: Width (registration voxels) of the taper the fine step applies inside the common field of view.
FINE_TAPER_VOXELS = 4


def link_overlap_m(a: Scan, b: Scan, p: RegisterParams) -> float:
    """The nominal overlap (along every axis) a pair needs to be registered as a link: ``min_overlap_voxels``
    left once both sides' trimmed edges and the fine step's taper are taken off."""
    voxel = max(a.voxel_m, b.voxel_m, p.register_voxel_m or 0.0)
    return (p.min_overlap_voxels + 2 * (p.trim_voxels + FINE_TAPER_VOXELS)) * voxel


def nominal_overlap_m(a: Scan, b: Scan) -> float:
    """The smallest overlap of two scans' nominal boxes over the axes (negative: the gap between them)."""
    lo, hi = overlap_bounds(a, b)
    return float(np.min(hi - lo))


def find_pairs(scans: list[Scan], params: RegisterParams | None = None
               ) -> tuple[list[tuple[int, int]], list[dict]]:
    """The pairs ``(i, j)``, ``i < j``, to register, and the near pairs that are not, with why.

    A pair is registered when its nominal boxes could overlap by :func:`link_overlap_m` along every axis
    within the stage error ``max_shift_m``. Boxes nearer than the stage error that cannot are reported
    (``{"a", "b", "overlap_m", "reason"}``) but not registered. Whether a registered pair becomes a link is
    then up to its registration (:func:`register_pair`: correlation and a unique peak).
    """
    p = params or RegisterParams()
    pairs, refused = [], []
    for i in range(len(scans)):
        for j in range(i + 1, len(scans)):
            lo, hi = overlap_bounds(scans[i], scans[j])
            over = hi - lo
            if np.any(over <= -p.max_shift_m):
                continue  # far apart whatever the stage error
            need = link_overlap_m(scans[i], scans[j], p)
            if np.all(over >= need - p.max_shift_m):
                pairs.append((i, j))
            else:
                shown = ", ".join(f"{v * 1e6:.3f}" for v in over)
                refused.append({"a": i, "b": j, "overlap_m": over.tolist(), "reason": (
                    f"nominal overlap [{shown}] um (z y x): even {p.max_shift_m * 1e6:.3f} um of stage error "
                    f"cannot make the {need * 1e6:.3f} um a link needs ({p.min_overlap_voxels} voxels beyond the "
                    f"trimmed and tapered edges): not registered")})
    return pairs, refused


def _grid(lo: np.ndarray, hi: np.ndarray, voxel: float, side: int | None = None) -> tuple[np.ndarray, tuple]:
    """A grid of ``voxel`` centred in ``[lo, hi]``, at most ``side`` voxels per axis: (origin, shape)."""
    n = np.maximum(np.floor((hi - lo) / voxel).astype(int), 1)
    if side is not None:
        n = np.minimum(n, side)
    origin = (lo + hi) / 2 - (n - 1) / 2 * voxel
    return origin, tuple(int(v) for v in n)


def _pair_images(a: Scan, b: Scan, shift_b: np.ndarray, origin: np.ndarray, voxel: float, shape: tuple,
                 p: RegisterParams):
    """Both scans on one grid, with each one's distance to its field-of-view edge (less the trim)."""
    imgs, dists = [], []
    for scan, shift in ((a, np.zeros(3)), (b, shift_b)):
        img = sample_scan(scan, scan.level_for(voxel), shift, origin, voxel, shape)
        d = fov_distance(scan, shift, origin, voxel, shape, p.fov) - np.float32(p.trim_voxels * scan.voxel_m)
        imgs.append(img)
        dists.append(d)
    return imgs, dists


def _parabola(c: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """Sub-voxel peak position by a 3-point parabola along each axis."""
    out = np.asarray(idx, dtype=float)
    for ax in range(c.ndim):
        if 0 < idx[ax] < c.shape[ax] - 1:
            lo = list(idx)
            hi = list(idx)
            lo[ax] -= 1
            hi[ax] += 1
            y0, y1, y2 = c[tuple(lo)], c[idx], c[tuple(hi)]
            den = y0 - 2 * y1 + y2
            if den < 0:
                out[ax] += float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    return out


def _peak_ratio(c: np.ndarray, idx: tuple[int, ...]) -> float:
    """The peak ``c[idx]`` over the next local maximum of ``c`` (``inf`` when there is none, 0 when the peak
    is not positive): a broad peak's own shoulder is not a rival, another peak is."""
    from scipy import ndimage  # noqa: PLC0415

    peak = float(c[idx])
    if not peak > 0:
        return 0.0
    finite = np.where(np.isfinite(c), c, -np.inf)
    maxima = (finite == ndimage.maximum_filter(finite, size=3, mode="constant", cval=-np.inf)) & np.isfinite(c)
    maxima[idx] = False
    second = float(np.max(np.where(maxima, finite, -np.inf)))
    return float("inf") if not second > 0 else peak / second


def _weighted_ncc(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    sw = float(w.sum())
    if sw <= 0:
        return 0.0
    mx, my = float((w * x).sum() / sw), float((w * y).sum() / sw)
    dx, dy = x - mx, y - my
    den = float(np.sqrt((w * dx * dx).sum() * (w * dy * dy).sum()))
    return float((w * dx * dy).sum() / den) if den > 0 else 0.0


def register_pair(a: Scan, b: Scan, ia: int, ib: int, params: RegisterParams | None = None) -> PairResult:
    """Register scan ``b`` against scan ``a`` on their nominal overlap (see module docstring).

    Parameters
    ----------
    a, b : Scan
        The two scans.
    ia, ib : int
        Their indices (recorded in the result).
    params : RegisterParams, optional

    Returns
    -------
    PairResult
        ``ok`` False with a ``reason`` when the overlap is too thin or empty, the peak lies at the edge of the
        allowed shift, or the correlation is too low.
    """
    p = params or RegisterParams()
    res = PairResult(ia, ib)
    voxel = max(a.voxel_m, b.voxel_m, p.register_voxel_m or 0.0)
    res.register_voxel_m = voxel
    lo, hi = overlap_bounds(a, b)
    # the content both scans share lies within the nominal overlap grown by the stage error (within both boxes'
    # union); what either scan does not cover there is masked out
    lo_u = np.minimum(a.bounds_m()[0], b.bounds_m()[0])
    hi_u = np.maximum(a.bounds_m()[1], b.bounds_m()[1])
    lo, hi = np.maximum(lo - p.max_shift_m, lo_u), np.minimum(hi + p.max_shift_m, hi_u)
    if np.any(hi - lo < p.min_overlap_voxels * voxel):
        res.reason = (f"overlap {np.round((hi - lo) * 1e6, 3).tolist()} um thinner than {p.min_overlap_voxels} "
                      f"registration voxels")
        return res
    # --- coarse: masked NCC over the whole overlap, whole voxels, within the allowed stage error
    k = max(0, int(np.ceil(np.log2(max(float(np.max((hi - lo) / voxel)) / p.coarse_side, 1.0)))))
    coarse = voxel * 2**k
    res.coarse_voxel_m = coarse
    origin, shape = _grid(lo, hi, coarse)
    (ia_img, ib_img), (da, db) = _pair_images(a, b, np.zeros(3), origin, coarse, shape, p)
    ma, mb = da > 0, db > 0
    if ma.sum() < 64 or mb.sum() < 64:
        res.reason = "the fields of view do not overlap"
        return res
    xc = cross_correlate_masked(ib_img - ib_img[mb].mean(), ia_img - ia_img[ma].mean(), mb, ma, mode="full",
                                axes=(0, 1, 2), overlap_ratio=0.1)
    xc = np.nan_to_num(np.asarray(xc.real, dtype=np.float64), nan=-1.0)
    # full-mode index i along an axis of n voxels is the shift (n - 1) - i (in coarse voxels)
    lim = [min(p.max_shift_m / coarse, n - 2) for n in shape]
    s_axes = [(n - 1) - np.arange(2 * n - 1) for n in shape]
    allowed = np.ones(xc.shape, bool)
    for ax, (s, m) in enumerate(zip(s_axes, lim)):
        sl = [None, None, None]
        sl[ax] = slice(None)
        allowed &= (np.abs(s) <= m)[tuple(sl)]
    masked = np.where(allowed, xc, -np.inf)
    peak = np.unravel_index(int(np.argmax(masked)), xc.shape)
    res.peak_ratio = _peak_ratio(masked, peak)
    sub = _parabola(xc, peak)
    shift = np.array([(n - 1) - v for n, v in zip(shape, sub)]) * coarse
    # --- fine: tapered phase correlation, upsampled, on the overlap left by the current shift
    ncc, n_vox = 0.0, 0
    for it in range(max(p.iterations, 1)):
        lo_f, hi_f = overlap_bounds(a, b, shift)
        if np.any(hi_f - lo_f < p.min_overlap_voxels * voxel):
            res.reason = "overlap at the coarse shift too thin"
            return res
        origin_f, shape_f = _grid(lo_f, hi_f, voxel, p.fine_side)
        (fa, fb), (da, db) = _pair_images(a, b, shift, origin_f, voxel, shape_f, p)
        d_grid = np.full(shape_f, np.inf, np.float32)
        for ax, n in enumerate(shape_f):
            e = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)).astype(np.float32) * np.float32(voxel)
            sl = [None, None, None]
            sl[ax] = slice(None)
            d_grid = np.minimum(d_grid, e[tuple(sl)])
        w = blend_weight(np.minimum(np.minimum(da, db), d_grid), FINE_TAPER_VOXELS * voxel)
        n_vox = int((w > 0).sum())
        if n_vox < 512:
            res.reason = "common field of view too small"
            return res
        sw = float(w.sum())
        ra = (fa - float((w * fa).sum() / sw)) * w
        rb = (fb - float((w * fb).sum() / sw)) * w
        ds, _, _ = phase_cross_correlation(ra, rb, upsample_factor=p.upsample, normalization=None)
        ds = np.asarray(ds, float)
        allowed_move = max(2.0, 1.5 * coarse / voxel) if it == 0 else 2.0
        if np.any(np.abs(ds) > allowed_move):  # the fine step only refines; a jump means no reliable peak
            res.reason = f"fine step moved {ds.tolist()} voxels: no stable peak"
            return res
        shift = shift + ds * voxel
        if np.all(np.abs(ds) < 1.0 / p.upsample):
            break
    (fa, fb), (da, db) = _pair_images(a, b, shift, origin_f, voxel, shape_f, p)
    w = ((da > 0) & (db > 0)).astype(np.float32)
    ncc = _weighted_ncc(fa, fb, w)
    sw = float(w.sum())
    res.shift_m = shift.tolist()
    res.ncc = ncc
    res.voxels = int(sw)
    res.mean_a = float((w * fa).sum() / max(sw, 1))
    res.mean_b = float((w * fb).sum() / max(sw, 1))
    if np.any(np.abs(shift) > p.max_shift_m + voxel):
        res.reason = f"shift {np.round(shift * 1e6, 3).tolist()} um beyond the allowed stage error"
    elif ncc < p.min_ncc:
        res.reason = f"correlation {ncc:.3f} below {p.min_ncc}"
    else:
        res.ok = True
    return res
