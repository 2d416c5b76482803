"""A run's metric points as GET /api/runs/{id}/metrics answers them, one function per shape:

- `points_page`: the points after a cursor, as objects, a page at a time (the default);
- `display_points`: every series thinned to about `max_points`, as objects (format=json);
- `columns_after`: the points after a cursor as columns per metric (format=columns, `after`);
- `columns`: every series as columns, thinned, read through the caches (format=columns);
- `as_csv`: one row per epoch, one column per per-epoch metric (format=csv).

`MetricsCaches` holds what the API process keeps between requests (series.py's caches): a
finished run's bodies by their ETag, each recently read run's series, and a running run's thinned
columns until its next point lands. The API keeps one (app.state.metrics_caches)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.orm import Session

from ..csv_export import csv_text
from . import series, service
from .models import Run


@dataclass
class MetricsCaches:
    finished: series.BodyCache = field(default_factory=series.BodyCache)  # a finished run's bodies, by ETag
    recent_series: series.SeriesCache = field(default_factory=series.SeriesCache)  # recently read runs' series
    running: series.BodyCache = field(default_factory=series.BodyCache)  # a running run's, by its newest point

    @classmethod
    def bounded(cls, body_bytes: int, series_points: int) -> "MetricsCaches":
        """Caches of at most `body_bytes` each (bodies) and `series_points` (series)."""
        return cls(finished=series.BodyCache(body_bytes), recent_series=series.SeriesCache(series_points),
                   running=series.BodyCache(body_bytes))

    def sizes(self) -> dict[str, series.CacheSize]:
        """What each cache holds now, and its bound."""
        return {"metrics_finished": self.finished.size(), "metrics_running": self.running.size(),
                "metrics_series": self.recent_series.size()}


def etag(run: Run, query: Iterable[tuple[str, str]]) -> str | None:
    """A finished run's points no longer change (a retry starts a new attempt, whose finish
    changes this tag), so its metrics can be revalidated (304) and cached; a running run's can
    not. `query`: the request's parameters, which shape the body."""
    if not run.is_terminal or run.finished_at is None:
        return None
    digest = hashlib.blake2b("&".join(sorted(f"{k}={v}" for k, v in query)).encode(), digest_size=6).hexdigest()
    return f'"m{run.id}-{run.attempts}-{run.finished_at.timestamp():.6f}-{run.state}-{digest}"'


def _json(payload: dict[str, Any], points) -> bytes:
    # A long run's page holds tens of thousands of points: they are written straight to JSON by
    # orjson (values are finite or null: non-finite ones are stored as NULL) instead of through a
    # pydantic object per point and the json module, which were most of the request's time
    # (bench/api_views.py). The shape is MetricsPage.
    payload["points"] = [{"epoch": epoch, "step": step, "name": name, "value": value}
                         for _, epoch, name, value, step in points]
    return orjson.dumps(payload)


def points_page(session: Session, run: Run, after: int, limit: int) -> bytes:
    points = service.metrics_after(session, run.id, after, limit)
    cursor = points[-1].id if points else after
    return _json({"state": run.state, "cursor": cursor, "downsampled": False,
                  "next_cursor": cursor if len(points) == limit else None}, points)


def display_points(session: Session, run: Run, max_points: int) -> bytes:
    points, cursor, total = service.metrics_for_display(session, run.id, max_points)
    return _json({"state": run.state, "cursor": cursor, "downsampled": len(points) < total}, points)


def _columns(state: str, read, cursor: int, total: int, max_points: int | None,
             downsample: series.Downsampling) -> bytes:
    thinned, downsampled = series.columnar(read, max_points, downsample)
    return orjson.dumps({"state": state, "cursor": cursor, "series": thinned, "downsampled": downsampled,
                         "total": total})


def columns_after(session: Session, run: Run, after: int, max_points: int | None,
                  downsample: series.Downsampling) -> bytes:
    read, cursor, total = series.read_series(session.connection(), run.id, after)
    return _columns(run.state, read, cursor, total, max_points, downsample)


def columns(session: Session, run: Run, caches: MetricsCaches, max_points: int | None,
            downsample: series.Downsampling, *, finished: bool, query: str) -> bytes:
    """Every series, read through the series cache. A running run's body is shared by the
    requests that come before its next point (`query`: the request's, which shapes it); a
    finished run's is cached by its ETag by the caller."""
    key = (run.id, run.attempts, run.started_at)  # both change when a retry deletes the points
    read, cursor, total = caches.recent_series.read(session.connection(), run.id, key)

    def make() -> bytes:
        return _columns(run.state, read, cursor, total, max_points, downsample)

    return make() if finished else caches.running.get_or_make(f"{key}|{cursor}|{run.state}|{query}", make)


def as_csv(session: Session, run_id: int) -> str:
    """One row per epoch: the per-epoch metrics (per-step ones, named step/..., have many values
    an epoch; format=columns gives them)."""
    points = [p for p in service.metrics_after(session, run_id, 0, 10_000_000) if not p.name.startswith("step/")]
    names = list(dict.fromkeys(p.name for p in points))
    by_epoch: dict[int, dict[str, float | None]] = {}
    for _, epoch, name, value, _ in points:
        by_epoch.setdefault(epoch, {})[name] = value
    return csv_text([["epoch", *names], *([epoch, *(by_epoch[epoch].get(name) for name in names)]
                                          for epoch in sorted(by_epoch))])


def cached_if_finished(caches: MetricsCaches, tag: str | None, make: Callable[[], bytes]) -> bytes:
    return caches.finished.get_or_make(tag, make) if tag else make()
