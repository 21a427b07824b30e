"""Global placement of all scans from their pairwise shifts: least squares with outlier rejection.

Each accepted pair ``(a, b)`` measured ``s_ab = e_b - e_a`` (the correction of ``b``'s nominal place minus
``a``'s). Within each connected group of scans the corrections ``e`` minimise
``sum_ab w_ab |e_b - e_a - s_ab|^2`` (weights: the pair's correlation times its common voxels), with the gauge ``sum e = 0`` (the
group keeps its mean nominal place: nominal errors are random, so this is their best common reference).
As in BigStitcher's global optimisation, the link with the largest residual is dropped while it exceeds
``tolerance_m`` (absolute) or ``relative`` times the median residual (above a floor), and the fit is
repeated; a link whose removal leaves its scans apart has a zero residual and
is never the worst, so only links inconsistent with a loop of others are dropped.

Before that, a link between scans whose nominal places do not overlap (``nominal_overlap_m`` < 0: they can
only meet through the stage error) is set aside: in a chain of scans along a pin in air, scans two apart
(nominally 8-16 rows apart) registered at shifts 18-37 voxels wrong with correlations of 0.95 (the pin looks
the same at every height) and outweighed the right neighbour links; kept only where it was its scans' one
connection, such a link still placed half a chain 22 voxels wrong. Scans joined only through one are
reported apart (``alone``, or another group) rather than placed wrongly.

The intensity of each scan is matched the same way: offsets ``c`` (added to a scan's values) with
``c_a - c_b = mean_b - mean_a`` over each used pair's common field of view, ``sum c = 0`` per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Link:
    """One pairwise measurement: ``shift_m = e_b - e_a`` with weight ``weight``; filled in by the solve."""

    a: int
    b: int
    shift_m: np.ndarray
    weight: float = 1.0
    used: bool = True
    residual_m: float = 0.0
    reason: str = ""
    nominal_overlap_m: float = float("inf")  # the smallest overlap of the nominal boxes over the axes


@dataclass
class Placement:
    """Result of :func:`solve_placement`.

    Attributes
    ----------
    corrections_m : ndarray [n, 3]
        ``e``: add to each scan's nominal origin (zeros for scans in no group).
    groups : list of list of int
        Connected groups of two or more scans (largest first).
    alone : list of int
        Scans with no used link.
    links : list of Link
        Every link, ``used`` or dropped, with its residual.
    """

    corrections_m: np.ndarray
    groups: list[list[int]]
    alone: list[int]
    links: list[Link] = field(default_factory=list)

    @property
    def max_residual_m(self) -> float:
        """Largest residual of a used link."""
        return max((lk.residual_m for lk in self.links if lk.used), default=0.0)

    @property
    def rms_residual_m(self) -> float:
        """Root mean square residual of the used links."""
        r = [lk.residual_m for lk in self.links if lk.used]
        return float(np.sqrt(np.mean(np.square(r)))) if r else 0.0


def connected_groups(n: int, links: list[Link]) -> list[list[int]]:
    """Connected components of ``n`` scans under the used links (largest first, then by first index)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for lk in links:
        if lk.used:
            parent[find(lk.a)] = find(lk.b)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values(), key=lambda c: (-len(c), c[0]))


def _least_squares(members: list[int], links: list[Link], values: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Minimise ``sum w |x_b - x_a - v|^2`` over a group with ``sum x = 0``; returns ``{scan: x}``."""
    pos = {s: k for k, s in enumerate(members)}
    m = len(members)
    rows, rhs = [], []
    for lk, v in zip(links, values):
        row = np.zeros(m)
        row[pos[lk.b]], row[pos[lk.a]] = 1.0, -1.0
        w = np.sqrt(max(lk.weight, 1e-6))
        rows.append(row * w)
        rhs.append(np.atleast_1d(v) * w)
    rows.append(np.ones(m))
    rhs.append(np.zeros_like(rhs[0]) if rhs else np.zeros(1))
    sol = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)[0]
    return {s: sol[pos[s]] for s in members}


def solve_placement(n: int, links: list[Link], tolerance_m: float, relative: float = 3.0,
                    floor_m: float | None = None) -> Placement:
    """Place ``n`` scans from their pairwise links (see module docstring).

    Parameters
    ----------
    n : int
        Number of scans.
    links : list of Link
        Accepted pairwise measurements (modified in place: ``used``, ``residual_m``, ``reason``).
    tolerance_m : float
        Largest residual kept (e.g. one finest voxel).
    relative : float
        Also drop the worst link while its residual exceeds ``relative`` times the median residual of the used
        links (and ``floor_m``): a link much worse than the others is wrong even below ``tolerance_m``.
    floor_m : float, optional
        Residual below which no link is dropped for the relative test (default ``tolerance_m / 2``).

    Returns
    -------
    Placement
    """
    for lk in links:
        if lk.used and lk.nominal_overlap_m < 0:
            lk.used = False
            lk.reason = (f"nominal places {-lk.nominal_overlap_m * 1e9:.0f} nm apart: they overlap only through the "
                         "stage error, and such matches were found wrong (a pin looks alike at every height)")
    while True:
        corr = np.zeros((n, 3))
        groups = [g for g in connected_groups(n, links) if len(g) > 1]
        for g in groups:
            inside = [lk for lk in links if lk.used and lk.a in g]
            for s, x in _least_squares(g, inside, [lk.shift_m for lk in inside]).items():
                corr[s] = x
        for lk in links:
            lk.residual_m = float(np.linalg.norm(corr[lk.b] - corr[lk.a] - lk.shift_m))
        used = [lk for lk in links if lk.used]
        worst = max(used, key=lambda lk: lk.residual_m, default=None)
        if worst is None:
            break
        median = float(np.median([lk.residual_m for lk in used]))
        floor = tolerance_m / 2 if floor_m is None else floor_m
        if worst.residual_m > tolerance_m:
            why = f"above {tolerance_m * 1e9:.0f} nm"
        elif worst.residual_m > max(relative * median, floor):
            why = f"above {relative:g} times the median residual {median * 1e9:.1f} nm"
        else:
            break
        worst.used = False
        worst.reason = f"residual {worst.residual_m * 1e9:.0f} nm {why}: inconsistent with the other links"
    alone = [i for i in range(n) if not any(i in g for g in groups)]
    return Placement(corr, groups, alone, links)


def solve_offsets(n: int, links: list[Link], means: list[tuple[float, float]], groups: list[list[int]]) -> np.ndarray:
    """Per-scan intensity offsets ``c`` (added to the values) that make the used overlaps agree in mean.

    Parameters
    ----------
    n : int
        Number of scans.
    links : list of Link
        The links (only ``used`` ones count).
    means : list of (float, float)
        For each link, the means ``(mean_a, mean_b)`` of its two scans over their common field of view.
    groups : list of list of int
        Connected groups (each gets ``sum c = 0``).

    Returns
    -------
    ndarray [n]
    """
    out = np.zeros(n)
    for g in groups:
        inside = [(lk, m) for lk, m in zip(links, means) if lk.used and lk.a in g]
        # c_b - c_a = mean_a - mean_b makes mean_a + c_a = mean_b + c_b
        sol = _least_squares(g, [lk for lk, _ in inside], [np.array([m[0] - m[1]]) for _, m in inside])
        for s, x in sol.items():
            out[s] = float(np.ravel(x)[0])
    return out
