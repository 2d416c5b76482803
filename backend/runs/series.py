"""A run's metrics as columns, one series per metric, thinned for display.

GET /api/runs/{id}/metrics?format=columns answers one array of epochs, one of steps and one of
values per metric instead of one object per point: a 100,000-point run is a few hundred KB of
numbers rather than megabytes of repeated keys, and the page hands the arrays to Plotly as
they are. Series are read and thinned with numpy (no Python object per point).

Thinning (`max_points`) is shape-preserving: min/max per bucket of consecutive points (the
extremes of every stretch survive, so a spike never disappears) or LTTB (largest triangle three
buckets: one point per bucket, the one that best keeps the line's visual shape). A point whose
value is null (a non-finite loss) is kept as the gap it marks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from typing import Literal

import numpy as np
from sqlalchemy import Connection, select

from .models import MetricPoint

Downsampling = Literal["minmax", "lttb"]


@dataclass
class Series:
    epoch: np.ndarray  # int64
    step: np.ndarray  # int64
    value: np.ndarray  # float64, NaN where the stored value is NULL

    def __len__(self) -> int:
        return len(self.value)

    def take(self, index: np.ndarray) -> "Series":
        return Series(self.epoch[index], self.step[index], self.value[index])

    def columns(self) -> dict[str, list]:
        # NaN → null in JSON: orjson writes a non-finite float as null.
        return {"epoch": self.epoch.tolist(), "step": self.step.tolist(), "value": self.value.tolist()}


def _series(epochs, steps, values) -> Series:
    epoch = np.asarray(epochs, dtype=np.int64)
    step = np.asarray(steps, dtype=np.int64)
    value = np.array([np.nan if v is None else v for v in values], dtype=np.float64) if None in values \
        else np.asarray(values, dtype=np.float64)
    order = np.lexsort((step, epoch))  # x order: by epoch, then step
    return Series(epoch[order], step[order], value[order])


def read_series(connection: Connection, run_id: int, after: int = 0) -> tuple[dict[str, Series], int, int]:
    """Every series of the run (points after the cursor `after`), sorted by name; the cursor of
    the newest point, and how many points were read."""
    if connection.dialect.name == "postgresql":
        # Grouped and packed into arrays by the server: psycopg parses an array in C, several
        # times faster than building a row object per point.
        rows = connection.exec_driver_sql(
            "SELECT name, max(id), array_agg(epoch), array_agg(step), array_agg(value) FROM metric_points "
            "WHERE run_id = %(run_id)s AND id > %(after)s GROUP BY name ORDER BY name",
            {"run_id": run_id, "after": after}).all()
        series = {name: _series(epochs, steps, values) for name, _, epochs, steps, values in rows}
        cursor = max((row[1] for row in rows), default=after)
    else:
        rows = connection.execute(
            select(MetricPoint.id, MetricPoint.name, MetricPoint.epoch, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.run_id == run_id, MetricPoint.id > after).order_by(MetricPoint.id)).all()
        grouped: dict[str, tuple[list, list, list]] = {}
        for _, name, epoch, step, value in rows:
            columns = grouped.get(name)
            if columns is None:
                columns = grouped[name] = ([], [], [])
            columns[0].append(epoch)
            columns[1].append(step)
            columns[2].append(value)
        series = {name: _series(*grouped[name]) for name in sorted(grouped)}
        cursor = rows[-1][0] if rows else after
    return series, cursor, sum(map(len, series.values()))


def _bucket_edges(n: int, buckets: int) -> np.ndarray:
    """Edges of `buckets` runs of consecutive points between the first and the last point."""
    return 1 + (np.arange(buckets + 1) * (n - 2)) // buckets


def min_max_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices kept by min/max decimation: first and last, and per bucket its lowest and highest
    finite value and its first NaN (a gap marks a diverged loss)."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, (max_points - 2) // 2)
    edges = _bucket_edges(n, buckets)
    inner = np.arange(1, n - 1)
    bucket = np.searchsorted(edges, inner, side="right") - 1
    inner_values = values[1:-1]
    finite = ~np.isnan(inner_values)
    keep = [np.array([0, n - 1])]
    if finite.any():
        idx, b, v = inner[finite], bucket[finite], inner_values[finite]
        order = np.lexsort((v, b))  # by bucket, then value: each bucket's min first, max last
        b_sorted = b[order]
        first = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
        last = np.r_[first[1:] - 1, len(order) - 1]
        keep += [idx[order[first]], idx[order[last]]]
    if not finite.all():
        idx, b = inner[~finite], bucket[~finite]
        _, first_gap = np.unique(b, return_index=True)
        keep.append(idx[first_gap])
    return np.unique(np.concatenate(keep))


def lttb_indices(x: np.ndarray, values: np.ndarray, max_points: int) -> np.ndarray:
    """Largest-triangle-three-buckets (Steinarsson 2013): the first and last point, and per
    bucket the point making the largest triangle with the previous kept point and the next
    bucket's mean. NaNs (gaps) are kept as they are, the rest thinned around them."""
    n = len(values)
    if n <= max_points or max_points < 3:
        return np.arange(n)
    gaps = np.flatnonzero(np.isnan(values))
    if len(gaps):
        finite = np.flatnonzero(~np.isnan(values))
        kept = finite[lttb_indices(x[finite], values[finite], max(3, max_points - len(gaps)))]
        return np.union1d(kept, gaps)
    x = x.astype(np.float64)
    buckets = max_points - 2
    edges = _bucket_edges(n, buckets)
    kept = np.empty(buckets + 2, dtype=np.int64)
    kept[0], kept[-1] = 0, n - 1
    previous = 0
    for b in range(buckets):
        start, stop = edges[b], edges[b + 1]
        if b + 1 < buckets:
            next_start, next_stop = edges[b + 1], edges[b + 2]
            mean_x, mean_y = x[next_start:next_stop].mean(), values[next_start:next_stop].mean()
        else:
            mean_x, mean_y = x[-1], values[-1]
        px, py = x[previous], values[previous]
        area = np.abs((px - mean_x) * (values[start:stop] - py) - (px - x[start:stop]) * (mean_y - py))
        previous = start + int(np.argmax(area)) if stop > start else previous
        kept[b + 1] = previous
    return np.unique(kept)


def downsample(series: Series, max_points: int, method: Downsampling = "minmax") -> Series:
    if len(series) <= max_points:
        return series
    if method == "lttb":
        return series.take(lttb_indices(series.step if series.step.any() else series.epoch, series.value, max_points))
    return series.take(min_max_indices(series.value, max_points))


def columnar(series: dict[str, Series], max_points: int | None = None,
             method: Downsampling = "minmax") -> tuple[dict[str, dict[str, list]], bool]:
    """{name: {epoch: [...], step: [...], value: [...]}}, each series thinned to about
    `max_points` when given; and whether any series was thinned."""
    out, thinned = {}, False
    for name, one in series.items():
        kept = downsample(one, max_points, method) if max_points is not None else one
        thinned |= len(kept) < len(one)
        out[name] = kept.columns()
    return out, thinned


def _merged(old: Series, new: Series) -> Series:
    merged = Series(np.concatenate([old.epoch, new.epoch]), np.concatenate([old.step, new.step]),
                    np.concatenate([old.value, new.value]))
    if len(old) and len(new) and (new.epoch[0], new.step[0]) < (old.epoch[-1], old.step[-1]):
        merged = merged.take(np.lexsort((merged.step, merged.epoch)))
    return merged


@dataclass
class _Cached:
    series: dict[str, Series]
    cursor: int
    total: int

    @property
    def nbytes(self) -> int:
        return sum(one.epoch.nbytes + one.step.nbytes + one.value.nbytes for one in self.series.values())


@dataclass(frozen=True)
class CacheSize:
    """What a cache of the API holds (GET /api/health/memory)."""

    bytes: int  # of the cached data itself (bodies, arrays), not Python's bookkeeping around it
    entries: int
    bound: int
    bound_unit: Literal["bytes", "points", "entries"]


class SeriesCache:
    """Each recently read run's series, kept in memory by this server process and grown by
    reading only the points after its cursor: a running run's 100,000 points are read once, then
    a few new ones per request. Safe because one run's points are written by one worker at a
    time, batch after batch, so they commit in id order (the live stream's cursor relies on the
    same). The key must change whenever the run's points can change other than by appending: a
    retry deletes them (the run's attempt and start time change)."""

    # Runs read before they had a point cost no points but an entry each: bounded apart.
    MAX_ENTRIES = 1_000

    def __init__(self, max_points: int = 2_000_000):
        self.max_points = max_points
        self._entries: OrderedDict[object, _Cached] = OrderedDict()
        self._points = 0
        self._lock = Lock()

    def size(self) -> CacheSize:
        with self._lock:
            return CacheSize(sum(entry.nbytes for entry in self._entries.values()), len(self._entries),
                             self.max_points, "points")

    def read(self, connection: Connection, run_id: int, key: object) -> tuple[dict[str, Series], int, int]:
        with self._lock:
            cached = self._entries.get(key)
        if cached is None:
            series, cursor, total = read_series(connection, run_id)
            cached = _Cached(series, cursor, total)
        else:
            new, cursor, count = read_series(connection, run_id, after=cached.cursor)
            if count:
                series = dict(cached.series)
                for name, one in new.items():
                    series[name] = _merged(series[name], one) if name in series else one
                cached = _Cached(dict(sorted(series.items())), cursor, cached.total + count)
        with self._lock:
            previous = self._entries.pop(key, None)
            self._points -= previous.total if previous else 0
            if cached.total <= self.max_points:
                self._entries[key] = cached
                self._points += cached.total
            while self._points > self.max_points or len(self._entries) > self.MAX_ENTRIES:
                _, dropped = self._entries.popitem(last=False)
                self._points -= dropped.total
        return cached.series, cached.cursor, cached.total


class BodyCache:
    """Response bodies by a key that changes whenever they would (least recently used first out,
    bounded in bytes): a finished run's by its ETag (its points never change; a retry changes
    the tag), a running run's by its newest point too, so the clients of one run share one
    thinning per batch the worker writes instead of one per request."""

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = Lock()
        self._making: dict[str, Lock] = {}

    def size(self) -> CacheSize:
        with self._lock:
            return CacheSize(self._size, len(self._bodies), self.max_bytes, "bytes")

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def get_or_make(self, key: str, make: Callable[[], bytes]) -> bytes:
        """The cached body, or `make()`'s; concurrent requests for a missing key wait for the
        one making it instead of all making it."""
        body = self.get(key)
        if body is not None:
            return body
        with self._lock:
            making = self._making.setdefault(key, Lock())
        with making:
            body = self.get(key)
            if body is None:
                body = make()
                self.put(key, body)
        with self._lock:
            self._making.pop(key, None)
        return body

    def put(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            if key in self._bodies:
                return
            self._bodies[key] = body
            self._size += len(body)
            while self._size > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self._size -= len(dropped)
