"""From affinities to a segmentation: fragments by seeded watershed, agglomeration along fragment contacts
(waterz, mean affinity), and the merge tree cut at a threshold.

Affinity convention (waterz): channel c of ``affs[c, z, y, x]`` links a voxel with its neighbour at
``NEAREST_OFFSETS[c]`` (the previous voxel along z, y, x); 1 = same object.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence the C++ progress lines waterz prints on file descriptor 1."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdout (e.g. captured): nothing to silence
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def voxel_affinity(affs: np.ndarray) -> np.ndarray:
    """Per voxel, the lowest affinity of its six links (its own three channels and its +1 neighbours')."""
    low = affs.min(axis=0)
    for c in range(affs.shape[0]):
        nxt = np.ones_like(low)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[c], dst[c] = slice(1, None), slice(None, -1)
        nxt[tuple(dst)] = affs[c][tuple(src)]
        np.minimum(low, nxt, out=low)
    return low


def fragments_watershed(affs: np.ndarray, threshold: float = 0.5, seed_distance: int = 2,
                        id_offset: int = 0, method: str = "affinity", high: float = 0.9,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Over-segment into fragments by a seeded watershed on the affinities.

    ``method="affinity"`` (default): watershed on the affinity graph itself (waterz's zwatershed): seeds are
    the regions connected by affinities above ``high``, grown along decreasing affinities; each voxel goes
    with the neighbour it is most strongly linked to, so a fragment never takes voxels across a boundary
    that its affinities resolve. ``method="distance"``: seeds at the maxima of the distance transform of the
    voxels whose six links all exceed ``threshold`` (maxima closer than ``seed_distance`` merged), flooded
    on ``1 - voxel_affinity`` (assigns boundary voxels to either side at random: use with blurry affinities).

    ``mask`` (bool, the voxels' shape; :mod:`~.mask`): voxels outside it get fragment 0 and no fragment grows
    across them (links touching them count as 0), so every later stage (agglomeration, contacts, relabelling)
    leaves them 0. This is where the whole-volume and the blockwise paths both apply the sample mask.

    Returns
    -------
    ndarray of uint64
        Fragment ids ``id_offset + 1, ...``; 0 outside ``mask`` and, affinity method, where every link of a voxel
        is below 1e-4.
    """
    if mask is not None:
        if mask.shape != affs.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from the affinities' {affs.shape[1:]}")
        mask = mask.astype(bool, copy=False)
        affs = _mask_links(affs, mask)
    if method == "affinity":
        import waterz

        with _quiet_stdout():
            (frag,) = waterz.agglomerate(np.ascontiguousarray(affs, np.float32), [0.0],
                                         aff_threshold_low=1e-4, aff_threshold_high=high)
        frag = frag.astype(np.uint64)
        if mask is not None:
            frag[~mask] = 0
    elif method == "distance":
        low = voxel_affinity(affs)
        inside = low > threshold
        if mask is not None:
            inside &= mask
        dist = ndimage.distance_transform_edt(inside)
        maxima = inside & (dist == ndimage.maximum_filter(dist, size=2 * seed_distance + 1))
        seeds, n = ndimage.label(maxima)
        if n == 0:  # no interior anywhere: a single fragment (inside the mask)
            out = np.full(low.shape, id_offset + 1, np.uint64)
            if mask is not None:
                out[~mask] = 0
            return out
        frag = watershed(1.0 - low, seeds, mask=mask).astype(np.uint64)
    else:
        raise ValueError(f"unknown fragment method {method!r} (affinity or distance)")
    ids, inv = np.unique(frag, return_inverse=True)  # consecutive ids, 0 kept for background
    inv = inv.reshape(frag.shape).astype(np.uint64) + np.uint64(0 if ids[0] == 0 else 1)
    inv[inv > 0] += np.uint64(id_offset)
    return inv


def _mask_links(affs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``affs`` with every link that touches a voxel outside ``mask`` set to 0."""
    out = affs * mask[None]
    for c in range(affs.shape[0]):  # link c of voxel x joins x and x - e_c
        src = tuple(slice(1, None) if k == c else slice(None) for k in range(3))
        prev = tuple(slice(None, -1) if k == c else slice(None) for k in range(3))
        out[c][src] *= mask[prev]
    return out.astype(affs.dtype, copy=False)


def merge_tree(affs: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    """Agglomerate ``fragments`` completely with waterz (mean affinity along contacts) and return the merges.

    Returns
    -------
    ndarray, shape (n, 3), float64
        Rows ``(a, b, score)``: the regions represented by fragments ``a`` and ``b`` merged at
        ``score = 1 - mean contact affinity``, in merge order (scores never decrease).
    """
    import waterz

    frag = np.ascontiguousarray(fragments, dtype=np.uint64).copy()
    with _quiet_stdout():
        (_, history), = waterz.agglomerate(np.ascontiguousarray(affs, np.float32), [1.0 + 1e-6],
                                           fragments=frag, return_merge_history=True)
    if not history:
        return np.zeros((0, 3))
    return np.array([(h["a"], h["b"], h["score"]) for h in history], dtype=np.float64)


def agglomerate(affs: np.ndarray, fragments: np.ndarray, thresholds: Sequence[float]) -> list[np.ndarray]:
    """Segmentations (uint64) at each threshold: waterz merges fragments while ``1 - mean affinity < t``."""
    import waterz

    frag = np.ascontiguousarray(fragments, dtype=np.uint64).copy()
    with _quiet_stdout():
        return [s.copy() for s in waterz.agglomerate(np.ascontiguousarray(affs, np.float32),
                                                     sorted(thresholds), fragments=frag)]


def segment_lut(edges: np.ndarray, fragment_ids: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Fragment-to-segment lookup table: connected components of the merge edges scoring below ``threshold``.

    Parameters
    ----------
    edges : ndarray (n, 3)
        ``(a, b, score)`` merges (from :func:`merge_tree`, possibly gathered from many blocks).
    fragment_ids : ndarray
        Every fragment id present (sorted, unique).
    threshold : float
        Merges with ``score < threshold`` are applied.

    Returns
    -------
    ids, segments : ndarray
        Sorted fragment ids and the segment id (1..N, numbered by smallest fragment) of each.
    """
    ids = np.unique(fragment_ids).astype(np.uint64)
    keep = edges[:, 2] < threshold if len(edges) else np.zeros(0, bool)
    a = np.asarray(edges[keep, 0], dtype=np.uint64) if len(edges) else np.zeros(0, np.uint64)
    b = np.asarray(edges[keep, 1], dtype=np.uint64) if len(edges) else np.zeros(0, np.uint64)
    ia, ib = np.searchsorted(ids, a), np.searchsorted(ids, b)
    ok = (ia < len(ids)) & (ib < len(ids))
    ok &= (ids[np.minimum(ia, len(ids) - 1)] == a) & (ids[np.minimum(ib, len(ids) - 1)] == b)
    if not ok.all():
        raise ValueError(f"{int((~ok).sum())} merge edges name fragments that do not exist")
    g = coo_matrix((np.ones(len(ia)), (ia, ib)), shape=(len(ids), len(ids)))
    _, comp = connected_components(g, directed=False)
    return ids, _number_by_first(comp, ids)


def _number_by_first(comp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Segment ids 1..N for the fragments ``ids`` (sorted) in components ``comp``, numbered by each
    component's smallest fragment id, so that labels do not depend on graph internals; fragment 0
    (background, a component of its own) stays 0."""
    _, first, inv = np.unique(comp, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    segs = (rank[inv.ravel()] + 1).astype(np.uint64)
    return segs - np.uint64(1) if len(ids) and ids[0] == 0 else segs


def segments_of_fragments(frag: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table of a segmentation made of whole fragments: sorted fragment ids and each one's label."""
    ids, first = np.unique(frag, return_index=True)
    return ids, labels.ravel()[first]


def face_area(frag: np.ndarray, faces: Sequence[tuple[bool, bool]] = ((True, True),) * 3) -> np.ndarray:
    """Area (voxel faces) of each fragment on the volume's surface.

    ``faces[axis] = (low, high)`` says which sides of ``frag`` lie on the volume's surface (all six for a
    whole volume; those on the volume's edge for a block). Returns rows ``(fragment, area)`` (float64),
    fragment 0 left out.
    """
    parts = [np.take(frag, side, axis=ax).ravel()
             for ax in range(3) for side, on in zip((0, -1), faces[ax]) if on]
    v = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    ids, counts = np.unique(v[v > 0], return_counts=True)
    return np.column_stack([ids, counts]).astype(np.float64).reshape(-1, 2)


def merge_enclosed(contacts: np.ndarray, ids: np.ndarray, segments: np.ndarray, fraction: float,
                   border: np.ndarray | None = None, rounds: int = 10) -> np.ndarray:
    """Merge every segment that is (nearly) enclosed by one other segment into it.

    In neural tissue no cell lies inside another: a segment whose contact surface with other segments is
    mostly (``>= fraction``) with one neighbour, itself of larger surface, is an organelle split off its
    cell (a nucleus behind its envelope, a mitochondrion). Where a segment meets the volume's surface its
    neighbour is unknown: that area (``border``) counts towards its surface but for no neighbour, so two
    large objects cut by the volume's faces are not taken for enclosed. Repeated until nothing changes (at
    most ``rounds`` times), since a merge can enclose another segment.

    Parameters
    ----------
    contacts : ndarray (n, 4)
        ``(a, b, sum, count)`` per fragment pair (:func:`contact_statistics`); the count is the contact area.
    ids, segments : ndarray
        Fragment-to-segment lookup table (:func:`segment_lut`).
    fraction : float
        Share of a segment's surface held by one neighbour for it to be merged; 0 or less: no merging.
    border : ndarray (k, 2), optional
        ``(fragment, area)`` on the volume's surface (:func:`face_area`; rows of one fragment are summed).

    Returns
    -------
    ndarray
        New segment of each fragment, numbered like :func:`segment_lut`.
    """
    if fraction <= 0 or not len(contacts):
        return segments
    segs = np.asarray(segments, np.int64)
    ia, ib = np.searchsorted(ids, contacts[:, 0]), np.searchsorted(ids, contacts[:, 1])
    area = contacts[:, 3]
    frag_border = np.zeros(len(ids))
    if border is not None and len(border):
        np.add.at(frag_border, np.searchsorted(ids, border[:, 0]), border[:, 1])
    for _ in range(rounds):
        sa, sb = segs[ia], segs[ib]
        keep = (sa != sb) & (sa > 0) & (sb > 0)
        src = np.concatenate([sa[keep], sb[keep]])
        dst = np.concatenate([sb[keep], sa[keep]])
        if not len(src):
            break
        n = int(segs.max()) + 1
        keys, inv = np.unique(src * n + dst, return_inverse=True)
        s, t, a = keys // n, keys % n, np.bincount(inv.ravel(), np.concatenate([area[keep]] * 2), len(keys))
        total = np.bincount(s, a, n) + np.bincount(segs, frag_border, n)
        order = np.lexsort((-a, s))  # per segment, its largest contact first
        s, t, a = s[order], t[order], a[order]
        first = np.r_[True, s[1:] != s[:-1]]
        s, t, a = s[first], t[first], a[first]
        move = (a >= fraction * total[s]) & (total[s] < total[t])
        if not move.any():
            break
        lut = np.arange(n)
        lut[s[move]] = t[move]
        while True:  # follow chains (a segment enclosed by one that is itself enclosed); surfaces grow: no cycles
            nxt = lut[lut]
            if (nxt == lut).all():
                break
            lut = nxt
        segs = lut[segs]
    return _number_by_first(segs, ids)


def apply_lut(fragments: np.ndarray, ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Relabel fragments through a lookup table from :func:`segment_lut`."""
    idx = np.searchsorted(ids, fragments.ravel())
    if (idx >= len(ids)).any() or (ids[np.minimum(idx, len(ids) - 1)] != fragments.ravel()).any():
        raise ValueError("fragments missing from the lookup table")
    return segments[idx].reshape(fragments.shape)


def segment_affinities(affs: np.ndarray, threshold: float = 0.5, fragment_threshold: float = 0.5,
                       seed_distance: int = 2, method: str = "affinity") -> np.ndarray:
    """Whole-volume segmentation: watershed fragments, then waterz agglomeration up to ``threshold``.

    Returns uint64 labels numbered like :func:`segment_lut` (1..N by smallest fragment).
    """
    frag = fragments_watershed(affs, fragment_threshold, seed_distance, method=method)
    ids, segs = segments_of_fragments(frag, agglomerate(affs, frag, [threshold])[0])
    return apply_lut(frag, ids, _number_by_first(segs, ids))


def contact_statistics(affs: np.ndarray, frag: np.ndarray, valid: Sequence[bool] = (True, True, True)
                       ) -> np.ndarray:
    """Sum and count of the affinities on every contact between two fragments.

    Channel ``c`` of ``affs[c, z, y, x]`` links a voxel with its neighbour at -1 along axis ``c``; ``frag`` is
    the fragment volume of the same voxels grown by one voxel at the low side of each axis where ``valid[c]``
    (so every link of the block is seen exactly once across blocks).

    Returns
    -------
    ndarray, shape (n, 4), float64
        Rows ``(a, b, sum, count)`` with ``a < b``; links touching fragment 0 are left out.
    """
    shape = affs.shape[1:]
    lo = [1 if v else 0 for v in valid]
    core = frag[tuple(slice(o, o + s) for o, s in zip(lo, shape))]
    rows = []
    for c in range(affs.shape[0]):
        if lo[c]:  # the neighbours of the block's first plane are in the grown plane
            prev = frag[tuple(slice(o - (k == c), o - (k == c) + n) for k, (o, n) in enumerate(zip(lo, shape)))]
            a, b, w = core, prev, affs[c]
        else:  # the block starts at the volume's edge: its first plane has no neighbour
            hi = tuple(slice(1, None) if k == c else slice(None) for k in range(3))
            below = tuple(slice(None, -1) if k == c else slice(None) for k in range(3))
            a, b, w = core[hi], core[below], affs[c][hi]
        a, b, w = a.ravel(), b.ravel(), w.ravel()
        keep = (a != b) & (a > 0) & (b > 0)
        rows.append(np.column_stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep]),
                                     w[keep].astype(np.float64)]))
    return sum_contacts(np.concatenate(rows) if rows else np.zeros((0, 3)), with_counts=False)


def sum_contacts(rows: np.ndarray, with_counts: bool = True) -> np.ndarray:
    """Merge rows of the same fragment pair: ``(a, b, sum, count)`` rows (or ``(a, b, value)`` rows, each a
    count of one) summed into one ``(a, b, sum, count)`` row per pair, sorted by pair."""
    if not len(rows):
        return np.zeros((0, 4))
    counts = rows[:, 3] if with_counts else np.ones(len(rows))
    pairs, inv = np.unique(rows[:, :2], axis=0, return_inverse=True)
    inv = inv.ravel()
    return np.column_stack([pairs, np.bincount(inv, rows[:, 2], len(pairs)), np.bincount(inv, counts, len(pairs))])


def agglomerate_contacts(contacts: np.ndarray, threshold: float) -> np.ndarray:
    """Hierarchical agglomeration by mean affinity on a fragment graph (waterz's ``1 - mean affinity``).

    The pair with the lowest score ``1 - sum / count`` merges first while it is below ``threshold``; the
    contacts of merged regions are summed, so a region's score is the mean affinity over its whole contact,
    as when waterz agglomerates the whole volume at once.

    Parameters
    ----------
    contacts : ndarray (n, 4)
        ``(a, b, sum, count)`` per fragment pair (from :func:`contact_statistics`, summed over blocks).
    threshold : float
        Merge while the lowest score is below this.

    Returns
    -------
    ndarray (m, 3)
        Merges ``(a, b, score)`` in order, fragment ids as in ``contacts`` (for :func:`segment_lut`).
    """
    import heapq

    adj: dict[int, dict[int, list[float]]] = {}
    for a, b, s, n in contacts:
        a, b = int(a), int(b)
        adj.setdefault(a, {})[b] = [s, n]
        adj.setdefault(b, {})[a] = adj[a][b]
    heap = [(1.0 - s / n, int(a), int(b)) for a, b, s, n in contacts]
    heapq.heapify(heap)
    merges = []
    while heap and heap[0][0] < threshold:
        score, a, b = heapq.heappop(heap)
        if a not in adj or b not in adj[a]:
            continue  # one side was merged away
        s, n = adj[a][b]
        if 1.0 - s / n != score:
            continue  # an outdated entry: the contact grew since
        merges.append((a, b, score))
        if len(adj[a]) < len(adj[b]):
            a, b = b, a  # keep the region with more neighbours, fold the other into it
        del adj[a][b]
        for c, stat in adj.pop(b).items():
            if c == a:
                continue
            del adj[c][b]
            if c in adj[a]:  # adj[a][c] is adj[c][a]: one list per contact
                adj[a][c][0] += stat[0]
                adj[a][c][1] += stat[1]
            else:
                adj[a][c] = adj[c][a] = stat
            heapq.heappush(heap, (1.0 - adj[a][c][0] / adj[a][c][1], min(a, c), max(a, c)))
    return np.array(merges, dtype=np.float64).reshape(-1, 3)
