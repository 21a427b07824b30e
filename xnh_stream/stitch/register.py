"""Pairwise registration of overlapping scans at a common voxel size.

For each pair whose nominal places overlap, both scans are resampled onto one grid over the overlap, at the
coarser of their two voxel sizes (the finer scan read from the pyramid level nearest below and low-pass
filtered, so both see the same band). Two steps:

1. **Coarse, whole voxels.** Masked normalised cross-correlation (Padfield 2012, scikit-image's
   ``cross_correlate_masked``) of the high-passed scans (each less its Gaussian mean over its own field of
   view, sigma one coarse voxel) on a grid of at most ``coarse_side^3`` voxels, so only each scan's field of
   view counts and the overlap may be any shape (two cylinders side by side overlap in a lens). Peaks are
   searched only within the allowed stage error (``max_shift_m``). A pin in air correlates with itself along
   its axis whatever the shift (its outline is one surface): the correlation is a ridge whose highest point
   wanders with the overlap's size, so the best ``candidates`` places, at least 2 coarse voxels apart, are
   followed down a pyramid (halving the voxel, each time the best offset within +-2 voxels on the high-passed
   scans, ``keep`` of them kept) to the registration voxel, where the tissue's texture decides. The best
   place there goes on; the best rival 5+ voxels away, as a share of it, is the pair's ``ambiguity``.
2. **Fine, sub-voxel.** Both scans resampled again at the registration voxel on the overlap left by the
   whole-voxel shift (at most ``fine_side`` voxels per axis), tapered to zero at the edge of the common field of
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

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
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
    candidates, keep : int
        Peaks of the coarse correlation followed down the pyramid, and how many of them each finer level keeps
        (the best at the registration voxel wins).
    max_ambiguity : float
        A match is refused when another place, at least 5 voxels away, correlates more than this share of the
        best (high-passed, at the registration voxel). Default 1: reported, not a gate. Measured on 11-12-row
        overlaps of a pin in air, right matches (within 0.7 voxel) gave 0.79-0.87 and wrong ones (9-22 voxels
        off) 0.84-0.99, so no threshold separates them there; 26-row overlaps gave 0-0.13.
    search_side : int
        Largest grid edge of each level's local search (voxels).
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
    candidates: int = 8
    keep: int = 3
    max_ambiguity: float = 1.0
    search_side: int = 48


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
    ambiguity : float
        The best rival's correlation over the match's (high-passed, at the registration voxel; a rival is a place
        followed down the pyramid that ends at least 5 voxels away; 0 when none): a confidence, 0-0.13 for the
        26-row overlaps of the bent leg, 0.8-0.99 where an overlap of a pin in air is too thin to tell places
        along the pin apart (see ``RegisterParams.max_ambiguity``).
    ok : bool
        Accepted (within ``max_shift_m``, ``ncc`` above ``min_ncc``, ``ambiguity`` at most ``max_ambiguity``).
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
    ambiguity: float = 0.0
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


def _peak_ratio(c: np.ndarray, idx: tuple[int, ...]) -> float:
    """The peak ``c[idx]`` over the next local maximum of ``c`` (``inf`` when there is none, 0 when the peak
    is not positive): a broad peak's own shoulder is not a rival, another peak is."""
    peak = float(c[idx])
    if not peak > 0:
        return 0.0
    finite = np.where(np.isfinite(c), c, -np.inf)
    maxima = (finite == ndimage.maximum_filter(finite, size=3, mode="constant", cval=-np.inf)) & np.isfinite(c)
    maxima[idx] = False
    second = float(np.max(np.where(maxima, finite, -np.inf)))
    return float("inf") if not second > 0 else peak / second


def weighted_ncc(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Pearson correlation of ``x`` and ``y`` with voxel weights ``w`` (a mask as 0/1 gives the correlation
    inside it); 0 where there is no weight or no variation."""
    sw = float(w.sum())
    if sw <= 0:
        return 0.0
    mx, my = float((w * x).sum() / sw), float((w * y).sum() / sw)
    dx, dy = x - mx, y - my
    den = float(np.sqrt((w * dx * dx).sum() * (w * dy * dy).sum()))
    return float((w * dx * dy).sum() / den) if den > 0 else 0.0


def _highpass(img: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``img`` less its Gaussian mean over ``mask`` (normalised convolution: what lies outside the field of view
    does not leak in), 0 outside ``mask``. A pin's outline against air is one surface along the pin: its
    correlation is a ridge along the pin axis whose highest point wanders with the overlap's size; the
    tissue's texture inside is what pins the match down."""
    m = mask.astype(np.float32)
    low = ndimage.gaussian_filter(np.where(mask, img, 0).astype(np.float32), sigma)
    weight = ndimage.gaussian_filter(m, sigma)
    return np.where(mask, img - low / np.maximum(weight, 1e-6), 0).astype(np.float32)


def _local_search(a: Scan, b: Scan, shift: np.ndarray, voxel: float, radius: int, thinnest_m: float,
                  p: RegisterParams) -> tuple[np.ndarray, float] | None:
    """The whole-voxel offset within ``radius`` voxels of ``shift`` (a grid of ``voxel`` over the overlap at
    ``shift``, grown by the radius) where the high-passed scans correlate best: (shift, correlation), or None
    where the overlap at ``shift`` is thinner than ``thinnest_m`` or too small to tell."""
    lo, hi = overlap_bounds(a, b, shift)
    if np.any(hi - lo < thinnest_m):
        return None
    origin, shape = _grid(lo - radius * voxel, hi + radius * voxel, voxel, p.search_side + 2 * radius)
    (fa, fb), (da, db) = _pair_images(a, b, shift, origin, voxel, shape, p)
    ma, mb = da > 0, db > 0
    ha, hb = _highpass(fa, ma), _highpass(fb, mb)
    core = tuple(slice(radius, n - radius) for n in shape)
    best, best_o = -np.inf, None
    for o in itertools.product(range(-radius, radius + 1), repeat=3):
        # b sampled at shift + o is b sampled at shift, moved by o: b_{s+o}[i] = b_s[i - o]
        moved = tuple(slice(radius - k, n - radius - k) for k, n in zip(o, shape))
        w = ma[core] & mb[moved]
        if w.sum() < 512:
            continue
        c = weighted_ncc(ha[core], hb[moved], w.astype(np.float32))
        if c > best:
            best, best_o = c, o
    if best_o is None:
        return None
    return shift + np.asarray(best_o, float) * voxel, float(best)


def _candidates(masked: np.ndarray, n: int, spacing: int = 2) -> list[tuple[int, ...]]:
    """Up to ``n`` peaks of ``masked`` (a correlation, ``-inf`` where not allowed), highest first, each at least
    ``spacing`` voxels (along some axis) from every higher one: a ridge of high correlation (a pin's outline
    along its axis) is sampled along its length, not only at its top."""
    flat = masked.ravel()
    order = np.argsort(-flat, kind="stable")
    found: list[np.ndarray] = []
    for k in order:
        if not np.isfinite(flat[k]) or len(found) == n:
            break
        at = np.array(np.unravel_index(int(k), masked.shape))
        if all(np.abs(at - f).max() >= spacing for f in found):
            found.append(at)
    return [tuple(int(v) for v in f) for f in found]


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
    # the coarsest step is as fine as a grid of coarse_side^3 voxels allows (a thin overlap along one axis may
    # be longer than coarse_side along the others: at 8 voxels a 26-row overlap is 3 voxels deep)
    k = max(0, int(np.ceil(np.log2(max(float(np.prod((hi - lo) / voxel)) / p.coarse_side**3, 1.0)) / 3)))
    coarse = voxel * 2**k
    res.coarse_voxel_m = coarse
    origin, shape = _grid(lo, hi, coarse)
    (ia_img, ib_img), (da, db) = _pair_images(a, b, np.zeros(3), origin, coarse, shape, p)
    ma, mb = da > 0, db > 0
    if ma.sum() < 64 or mb.sum() < 64:
        res.reason = "the fields of view do not overlap"
        return res
    xc = cross_correlate_masked(_highpass(ib_img, mb), _highpass(ia_img, ma), mb, ma, mode="full",
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
    peaks = _candidates(masked, max(p.candidates, 1))
    if not peaks:
        res.reason = "no correlation peak within the allowed stage error"
        return res
    res.peak_ratio = _peak_ratio(masked, peaks[0])
    # --- pyramid: each coarse peak followed down to the registration voxel by local searches (+-2 voxels of
    # each level); the one that correlates best there goes on to the fine step
    found = [(np.array([(n - 1) - v for n, v in zip(shape, pk)], float) * coarse, -np.inf) for pk in peaks]
    levels = [coarse / 2**j for j in range(1, k + 1)] or [voxel]  # ends at the registration voxel
    for level in levels:
        found = [f for f in (_local_search(a, b, f[0], level, 2, p.min_overlap_voxels * voxel, p) for f in found)
                 if f is not None]
        found = sorted(found, key=lambda f: -f[1])[: p.keep]
    if not found:
        res.reason = "overlap at the coarse peaks too thin"
        return res
    shift, best = found[0]
    # a rival: a place 5+ voxels away followed down to here (a peak or, along a ridge, the edge of its search
    # cube); nearer ones are the match's own broad peak or a bump on it (2 voxels off, 0.8 of it, in tissue)
    others = [c for sh, c in found[1:] if np.abs(sh - shift).max() >= 4.999 * voxel]
    res.ambiguity = float(max(max(others, default=0.0), 0.0) / best) if best > 0 else 1.0
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
        if np.any(np.abs(ds) > 2.0):  # the fine step only refines; a jump means no reliable peak
            res.reason = f"fine step moved {ds.tolist()} voxels: no stable peak"
            return res
        shift = shift + ds * voxel
        if np.all(np.abs(ds) < 1.0 / p.upsample):
            break
    (fa, fb), (da, db) = _pair_images(a, b, shift, origin_f, voxel, shape_f, p)
    w = ((da > 0) & (db > 0)).astype(np.float32)
    ncc = weighted_ncc(fa, fb, w)
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
    elif res.ambiguity > p.max_ambiguity:
        res.reason = (f"ambiguous: another place correlates {res.ambiguity:.2f} of the best (above "
                      f"{p.max_ambiguity}); the overlap cannot tell them apart")
    else:
        res.ok = True
    return res
