"""Fewer points for display, keeping the extremes.

A chart a few hundred pixels wide cannot show 10,000 epochs; sending them all makes the page
slow. Each series is cut into buckets of consecutive epochs and each bucket keeps its lowest
and highest value (min/max decimation, the M4 idea without the redundant first/last), so a
spike or a dip never disappears from the drawn line. The first and last points are always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

P = TypeVar("P")


def downsample_min_max(points: Sequence[P], max_points: int, value: Callable[[P], float | None]) -> list[P]:
    """At most about `max_points` of `points` (one series, in x order): per bucket the min and
    the max, and the first non-finite (None) value if any, since a gap marks a diverged loss."""
    n = len(points)
    if n <= max_points:
        return list(points)
    n_buckets = max(1, (max_points - 2) // 2)
    keep = {0, n - 1}
    for b in range(n_buckets):
        start, stop = 1 + b * (n - 2) // n_buckets, 1 + (b + 1) * (n - 2) // n_buckets
        finite = [i for i in range(start, stop) if value(points[i]) is not None]
        if finite:
            keep.add(min(finite, key=lambda i: value(points[i])))
            keep.add(max(finite, key=lambda i: value(points[i])))
        gap = next((i for i in range(start, stop) if value(points[i]) is None), None)
        if gap is not None:
            keep.add(gap)
    return [points[i] for i in sorted(keep)]
