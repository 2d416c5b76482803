"""What the API holds in memory (issue 20, item 9): GET /api/health/memory reports each cache's
bytes beside the process's resident size, the caches stay within the bounds the settings give
(METRICS_CACHE_BYTES, SERIES_CACHE_POINTS), and the series cache bounds its entries too (a run
read before it had a point cost no point, so such entries were never evicted)."""

from __future__ import annotations

import httpx2 as httpx
from sqlalchemy import create_engine

from backend.runs.series import SeriesCache

POINTS = 300


def external(name: str) -> dict:
    return {"dataset": "digits", "method": "theirs", "missing_modality": "bottom", "missing_rate": 0.5, "name": name,
            "metrics": [{"epoch": e, "name": n, "value": e / POINTS} for e in range(POINTS)
                        for n in ("train_loss", "val_accuracy")]}


def test_the_api_reports_its_caches_and_keeps_them_within_their_bounds(embedded_settings, start_server):
    bounded = embedded_settings.model_copy(update={"metrics_cache_bytes": 40_000, "series_cache_points": 2_000})
    base = start_server(bounded)
    with httpx.Client(base_url=base, timeout=60) as client:
        empty = client.get("/api/health/memory").json()
        assert empty["cached_bytes"] == 0 and empty["rss_bytes"] > 50 * 2**20 and empty["streams_held"] == 0
        ids = [client.post("/api/runs/external", json=external(f"run {i}")).json()["id"] for i in range(8)]
        for run_id in ids:
            for params in ({"max_points": 500}, {"format": "columns"}):
                assert client.get(f"/api/runs/{run_id}/metrics", params=params).status_code == 200
        memory = client.get("/api/health/memory").json()
    caches = memory["caches"]
    assert set(caches) == {"metrics_finished", "metrics_running", "metrics_series", "features"}
    finished, series = caches["metrics_finished"], caches["metrics_series"]
    # Filled, to their bounds and no further: 16 answers of 5 to 30 KB each do not fit in 40 KB.
    assert 0 < finished["bytes"] <= 40_000 and finished["bound"] == 40_000 and 0 < finished["entries"] < 16
    assert series["bound"] == 2_000 and series["bound_unit"] == "points"
    assert 0 < series["bytes"] <= 2_000 * 24 and series["entries"] == 2_000 // (2 * POINTS)
    assert memory["cached_bytes"] == sum(cache["bytes"] for cache in caches.values())


def test_the_series_cache_bounds_its_entries(embedded_settings):
    cache = SeriesCache(max_points=1_000)
    cache.MAX_ENTRIES = 3
    with create_engine(embedded_settings.database_url).connect() as connection:
        for run_id in range(1, 8):  # runs without points yet: each an entry of no point
            cache.read(connection, run_id, key=(run_id, 0))
    assert cache.size().entries == 3
