"""Segmentation across the seams of a stitched volume: does an object that runs from one scan into the next
keep one id, and is its skeleton one tree?

A stitched volume (:mod:`xnh_stream.stitch`) is segmented like any other (``segment STITCHED --block-shape``):
the blockwise segmentation agglomerates the fragments of all blocks on one graph, so neither its blocks nor the
scans' seams cut an object by construction. What can still split one is the image at a seam (a blur, contrast
or resolution step between two scans, a misplacement). This module measures it against known objects:

* :func:`scan_boxes` reads where each placed scan lies in the stitched grid (``stitch.json``);
* :func:`crossings` takes two overlapping boxes and, for every true object with enough voxels on both sides
  near their overlap (each side: one box less the other, within ``margin`` voxels of the overlap), the
  segment holding most of it on each side;
* :func:`seam_continuity` does that for every pair of scans whose link the stitch used: an object keeps its id
  across a seam when the two segments are the same (and not background);
* :func:`skeleton_trees` says whether a skeleton is one connected tree (one component, no cycle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Crossing:
    """One true object across one seam.

    Attributes
    ----------
    seam : str
        ``"a|b"``: the two scans (or regions).
    truth : int
        The true object's id.
    segment_a, segment_b : int
        The segment holding most of the object's voxels on each side (0: background).
    share_a, share_b : float
        The share of the object's voxels on that side that this segment holds.
    voxels_a, voxels_b : int
        The object's voxels on each side.
    """

    seam: str
    truth: int
    segment_a: int
    segment_b: int
    share_a: float
    share_b: float
    voxels_a: int
    voxels_b: int

    @property
    def kept(self) -> bool:
        """One segment (not background) on both sides."""
        return self.segment_a == self.segment_b != 0


@dataclass
class SeamContinuity:
    """:func:`seam_continuity`'s answer: every crossing and the share that kept its id."""

    crossings: list[Crossing]

    @property
    def kept(self) -> float:
        """Share of crossings that kept one id (1.0 when there is none)."""
        return float(np.mean([c.kept for c in self.crossings])) if self.crossings else 1.0

    def of(self, truth: int) -> list[Crossing]:
        """The crossings of one true object."""
        return [c for c in self.crossings if c.truth == truth]

    def as_dict(self) -> dict:
        """JSON-able summary."""
        return {"crossings": len(self.crossings), "kept": self.kept,
                "split": [asdict(c) for c in self.crossings if not c.kept]}


def scan_boxes(report: dict) -> dict[str, Box]:
    """Where each placed scan lies in the stitched volume's level-0 grid.

    Parameters
    ----------
    report : dict
        The stitch report (``stitch.json``): ``output.origin_m``, ``output.voxel_m``, ``output.shape`` and,
        per scan, its placed ``origin_m`` (centre of its voxel ``[0, 0, 0]``), ``voxel_m`` and ``shape``.

    Returns
    -------
    dict
        ``{scan name: (z, y, x) slices}`` of the stitched voxels whose centres lie inside the scan's box (its
        voxels' outer faces), clipped to the volume; scans not placed are left out.
    """
    out = report["output"]
    origin, voxel, shape = np.asarray(out["origin_m"]), float(out["voxel_m"]), out["shape"]
    boxes = {}
    for scan in report["scans"]:
        if not scan.get("placed", True):
            continue
        o, v = np.asarray(scan["origin_m"]), float(scan["voxel_m"])
        lo = (o - v / 2 - origin) / voxel
        hi = (o + (np.asarray(scan["shape"]) - 0.5) * v - origin) / voxel
        boxes[scan["name"]] = tuple(slice(int(max(np.ceil(a - 1e-6), 0)), int(min(np.floor(b + 1e-6) + 1, n)))
                                    for a, b, n in zip(lo, hi, shape))
    return boxes  # type: ignore[return-value]


def _intersect(a: Box, b: Box) -> Box | None:
    box = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b))
    return box if all(s.stop > s.start for s in box) else None  # type: ignore[return-value]


def crossings(labels: np.ndarray, truth: np.ndarray, box_a: Box, box_b: Box, margin: int = 8,
              min_voxels: int = 50, seam: str = "a|b") -> list[Crossing]:
    """The true objects that cross from ``box_a`` into ``box_b``, and the segment they are in on each side.

    Parameters
    ----------
    labels : ndarray
        The segmentation (0: background), on the same grid as ``truth``.
    truth : ndarray
        True object ids (0: none).
    box_a, box_b : tuple of slice
        Two overlapping regions of the grid (e.g. two scans' boxes from :func:`scan_boxes`).
    margin : int
        Each side is its box less the other box, within ``margin`` voxels of the overlap.
    min_voxels : int
        An object crosses when it has at least this many voxels on each side.
    seam : str
        Name of the seam, copied into each :class:`Crossing`.

    Returns
    -------
    list of Crossing
        Empty when the boxes do not overlap.
    """
    box_a, box_b = (tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, labels.shape))  # type: ignore[misc]
                    for box in (box_a, box_b))
    both = _intersect(box_a, box_b)
    if both is None:
        return []
    near = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(both, labels.shape))
    lab, tru = np.asarray(labels[near]), np.asarray(truth[near])

    def inside(box: Box) -> np.ndarray:
        m = np.zeros(lab.shape, bool)
        m[tuple(slice(max(s.start - w.start, 0), max(s.stop - w.start, 0)) for s, w in zip(box, near))] = True
        return m

    in_a, in_b = inside(box_a), inside(box_b)
    sides = (in_a & ~in_b, in_b & ~in_a)
    out = []
    for t in np.unique(tru[sides[0] | sides[1]]):
        if t == 0:
            continue
        found = []
        for side in sides:
            segs = lab[side & (tru == t)]
            if segs.size < min_voxels:
                break
            ids, counts = np.unique(segs, return_counts=True)
            found.append((int(ids[np.argmax(counts)]), float(counts.max() / segs.size), int(segs.size)))
        if len(found) == 2:
            (sa, ra, na), (sb, rb, nb) = found
            out.append(Crossing(seam, int(t), sa, sb, ra, rb, na, nb))
    return out


def seam_continuity(labels: np.ndarray, truth: np.ndarray, report: dict, margin: int = 8, min_voxels: int = 50,
                    objects: tuple[int, ...] | None = None) -> SeamContinuity:
    """Whether the true objects keep one segment id across every seam of a stitched volume.

    Parameters
    ----------
    labels : ndarray
        The stitched volume's segmentation (level 0).
    truth : ndarray
        True object ids on the same grid.
    report : dict
        The stitch report (``stitch.json``): the seams are the links the global solve used.
    margin, min_voxels : int
        See :func:`crossings`.
    objects : tuple of int, optional
        Only these true objects (e.g. the long neurites); default every one that crosses.

    Returns
    -------
    SeamContinuity
    """
    boxes = scan_boxes(report)
    found: list[Crossing] = []
    for link in report["links"]:
        if link.get("used") and link["a"] in boxes and link["b"] in boxes:
            found += crossings(labels, truth, boxes[link["a"]], boxes[link["b"]], margin, min_voxels,
                               f"{link['a']}|{link['b']}")
    if objects is not None:
        found = [c for c in found if c.truth in set(objects)]
    return SeamContinuity(found)


def skeleton_trees(skeleton) -> tuple[int, int]:
    """Connected components and independent cycles of a skeleton's graph (one tree: ``(1, 0)``).

    Parameters
    ----------
    skeleton : osteoid.Skeleton
        With ``vertices`` ``[n, 3]`` and ``edges`` ``[m, 2]`` (kimimaro's, or read from SWC by
        ``osteoid.Skeleton.from_swc``).

    Returns
    -------
    components, cycles : int
        ``cycles = edges - vertices + components`` (the graph's cycle rank; duplicate edges count).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(skeleton.vertices)
    edges = np.asarray(skeleton.edges, dtype=np.int64).reshape(-1, 2)
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    components = int(connected_components(graph, directed=False)[0]) if n else 0
    return components, int(len(edges) - n + components)
