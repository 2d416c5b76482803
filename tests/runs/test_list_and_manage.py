"""The runs table's API: listing (filters, sort, name search, offset and keyset pages), tags
and notes, retry, delete, and display-thinned metrics. Real app, real SQLite, real filesystem
broker. One run at a time (create, cancel, metrics, stream): test_api.py."""

from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.lifecycle.lease import LeaseLost
from backend.runs import recording
from backend.runs.artifacts import run_artifact_dir
from backend.runs.downsample import downsample_min_max
from backend.runs.models import ConfusionMatrix, MetricPoint, Run, RunTag
from backend.runs.system import SystemMetricPoint
from tests.support import as_worker

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 2, "seed": 0}


@pytest.fixture
def settings(embedded_settings):
    return embedded_settings


@pytest.fixture
def client(client_for, settings):
    return client_for(settings)


def sessions(settings):
    return session_factory(settings.database_url)


def finish(settings, run_id: int, accuracy: float | None, state: str = "succeeded") -> None:
    with sessions(settings)() as session:
        as_worker.start_run(session, run_id, "test")
        as_worker.record_epoch(session, run_id, 1, {"val_accuracy": 0.5, "test_accuracy": accuracy or 0.0})
        if state == "failed":
            as_worker.fail_run(session, run_id, "RuntimeError: boom", "Traceback …")
        else:
            recording.finish_run(session, run_id, cancelled=state == "cancelled", test_accuracy=accuracy,
                             val_accuracy=0.5, best_epoch=1, classes=["a", "b"], confusion=[[1, 0], [0, 1]], info={})


@pytest.fixture
def many(client, settings):
    """24 runs over methods × rates × seeds, some finished with distinct accuracies, some tied."""
    ids = []
    for method, rate, seed in itertools.product(["mle", "lower_bound", "zero_padding"], [0.5, 0.9], range(4)):
        run = client.post("/api/runs", json={**SPEC, "method": method, "missing_rate": rate, "seed": seed,
                                              "name": f"{method} r{rate} s{seed}"}).json()
        ids.append(run["id"])
    for i, run_id in enumerate(ids):
        if i % 3 == 0:
            finish(settings, run_id, round(0.5 + (i % 7) / 20, 4))  # ties on purpose
        elif i % 3 == 1 and i < 12:
            finish(settings, run_id, None, state="failed")
    return ids


def all_pages(client, params: dict, limit: int) -> list[int]:
    seen, cursor = [], None
    while True:
        page = client.get("/api/runs", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def test_list_filters_and_paginates(client):
    for method in ["mle", "lower_bound", "mle"]:
        assert client.post("/api/runs", json={**SPEC, "method": method}).status_code == 201
    page = client.get("/api/runs", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["id"] > page["items"][1]["id"]  # newest first
    second = client.get("/api/runs", params={"limit": 2, "offset": 2}).json()
    assert len(second["items"]) == 1
    only_mle = client.get("/api/runs", params={"method": "mle"}).json()
    assert only_mle["total"] == 2 and {r["method"] for r in only_mle["items"]} == {"mle"}
    assert client.get("/api/runs", params={"state": "running"}).json()["total"] == 0
    assert client.get("/api/runs", params={"dataset": "synthetic"}).json()["total"] == 0
    assert client.get("/api/runs", params={"state": "bogus"}).status_code == 422
    assert client.get("/api/runs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize("sort", ["-id", "id", "-test_accuracy", "test_accuracy", "name", "-missing_rate", "state"])
def test_keyset_pages_visit_every_run_once_in_the_sorted_order(client, many, sort):
    whole = client.get("/api/runs", params={"sort": sort, "limit": 500}).json()
    assert whole["total"] == 24 and whole["next_cursor"] is None
    order = [r["id"] for r in whole["items"]]
    assert all_pages(client, {"sort": sort}, limit=5) == order
    by_offset = [r["id"] for offset in range(0, 24, 5)
                 for r in client.get("/api/runs", params={"sort": sort, "limit": 5, "offset": offset}).json()["items"]]
    assert by_offset == order
    if sort.endswith("test_accuracy"):
        values = [r["test_accuracy"] for r in whole["items"]]
        finished = [v for v in values if v is not None]
        assert values[: len(finished)] == finished  # unfinished runs last, either direction
        assert finished == sorted(finished, reverse=sort.startswith("-"))


def test_filters_combine_and_match_what_is_stored(client, settings, many):
    def ids(**params):
        return {r["id"] for r in client.get("/api/runs", params={**params, "limit": 500}).json()["items"]}

    runs = client.get("/api/runs", params={"limit": 500}).json()["items"]
    expect = lambda pred: {r["id"] for r in runs if pred(r)}  # noqa: E731
    assert ids(method="lower_bound", missing_rate=0.9) == expect(lambda r: r["method"] == "lower_bound"
                                                                 and r["missing_rate"] == 0.9)
    assert ids(state="failed") == expect(lambda r: r["state"] == "failed") != set()
    both = client.get("/api/runs", params=[("state", "failed"), ("state", "succeeded"), ("limit", 500)]).json()
    assert {r["id"] for r in both["items"]} == expect(lambda r: r["state"] in ("failed", "succeeded"))
    assert ids(fusion="concat") == set() and ids(missing_modality="bottom") == expect(lambda r: True)
    assert ids(q="ZERO_padding r0.5") == expect(lambda r: r["name"].startswith("zero_padding r0.5"))
    assert ids(q="%") == set() and ids(q="_") == expect(lambda r: "_" in r["name"])  # wildcards are literal
    assert ids(sweep=1) == set()


def test_bad_list_parameters_are_422_naming_them(client, many):
    for params, field in [({"sort": "spec"}, "sort"), ({"cursor": "garbage!"}, "cursor"),
                          ({"missing_rate": 1.5}, "missing_rate"), ({"state": "lost"}, "state"),
                          ({"limit": 501}, "limit")]:
        response = client.get("/api/runs", params=params)
        assert response.status_code == 422, params
        assert ["query", field] in [e["loc"][:2] for e in response.json()["detail"]]
    cursor = client.get("/api/runs", params={"limit": 2, "sort": "name"}).json()["next_cursor"]
    wrong_sort = client.get("/api/runs", params={"cursor": cursor, "sort": "-id"})
    assert wrong_sort.status_code == 422 and "made for sort 'name'" in wrong_sort.json()["detail"][0]["msg"]
    both = client.get("/api/runs", params={"cursor": cursor, "sort": "name", "offset": 5})
    assert both.status_code == 422


def test_tags_and_note(client, settings):
    run = client.post("/api/runs", json=SPEC).json()
    assert run["tags"] == [] and run["note"] is None
    updated = client.patch(f"/api/runs/{run['id']}", json={"tags": [" baseline ", "to-check", "baseline"],
                                                          "note": "<script>alert(1)</script> odd dip"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["tags"] == ["baseline", "to-check"] and updated.json()["note"].startswith("<script>")
    other = client.post("/api/runs", json={**SPEC, "seed": 1}).json()
    client.patch(f"/api/runs/{other['id']}", json={"tags": ["to-check"]})
    tagged = client.get("/api/runs", params={"tag": "baseline"}).json()
    assert [r["id"] for r in tagged["items"]] == [run["id"]]
    assert client.get("/api/runs", params={"tag": "to-check"}).json()["total"] == 2
    # replacing the set; the name and note stay when not sent
    again = client.patch(f"/api/runs/{run['id']}", json={"tags": ["final"]}).json()
    assert again["tags"] == ["final"] and again["note"].endswith("odd dip")
    assert client.patch(f"/api/runs/{run['id']}", json={"name": "renamed", "note": ""}).json()["note"] is None
    with sessions(settings)() as session:
        assert sorted(session.scalars(select(RunTag.tag))) == ["final", "to-check"]
    # the page shows user text as text
    page = client.get(f"/runs/{run['id']}").text
    assert "<script>alert(1)</script>" not in page


@pytest.mark.parametrize("body,field", [
    ({"tags": ["a,b"]}, "tags"), ({"tags": [""]}, "tags"), ({"tags": ["x" * 51]}, "tags"),
    ({"tags": [f"t{i}" for i in range(51)]}, "tags"), ({"note": "x" * 10_001}, "note"), ({"name": "  "}, "name"),
    ({"state": "succeeded"}, "state"),
])
def test_bad_update_is_422_naming_the_field(client, body, field):
    run = client.post("/api/runs", json=SPEC).json()
    response = client.patch(f"/api/runs/{run['id']}", json=body)
    assert response.status_code == 422
    assert field in [e["loc"][1] for e in response.json()["detail"]]
    assert client.get(f"/api/runs/{run['id']}").json()["tags"] == []
    assert client.patch("/api/runs/999", json={"note": "x"}).status_code == 404


def test_retry_clears_the_old_attempt_and_queues_the_same_run(client, settings):
    run = client.post("/api/runs", json=SPEC).json()
    assert client.post(f"/api/runs/{run['id']}/retry").status_code == 409  # queued: nothing to retry
    finish(settings, run["id"], None, state="failed")
    retried = client.post(f"/api/runs/{run['id']}/retry")
    assert retried.status_code == 200
    body = retried.json()
    assert body["id"] == run["id"] and body["state"] == "queued" and body["error"] is None
    assert body["epochs_completed"] == 0 and body["attempts"] == 1
    with sessions(settings)() as session:
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == 0
    messages = [json.loads(p.read_text())["headers"]["id"] for p in (settings.broker_dir / "queue").iterdir()]
    assert messages.count(str(run["id"])) == 2
    # a fresh attempt records epoch 1 again (the old point would have shadowed it)
    finish(settings, run["id"], 0.8)
    assert client.get(f"/api/runs/{run['id']}/metrics").json()["points"][1]["value"] == 0.8
    assert client.post(f"/api/runs/{run['id']}/retry").status_code == 409  # succeeded
    assert client.post("/api/runs/999/retry").status_code == 404


def test_retry_and_delete_remove_the_runs_files(client, settings):
    """A worker resumes a run from the checkpoint in its folder: a retry must start over."""
    runs = [client.post("/api/runs", json={**SPEC, "seed": s}).json()["id"] for s in (0, 1)]
    folders = [run_artifact_dir(settings.artifact_dir, run_id) for run_id in runs]
    for run_id, folder in zip(runs, folders):
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"epoch 7")
        finish(settings, run_id, None, state="failed")
    assert client.post(f"/api/runs/{runs[0]}/retry").status_code == 200
    assert not folders[0].exists() and folders[1].exists()
    assert client.delete(f"/api/runs/{runs[1]}").status_code == 204
    assert not folders[1].exists()


def test_delete_removes_the_run_with_its_points_matrix_and_tags(client, settings):
    run = client.post("/api/runs", json=SPEC).json()
    finish(settings, run["id"], 0.7)
    client.patch(f"/api/runs/{run['id']}", json={"tags": ["x"]})
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
    with sessions(settings)() as session:
        for model in (MetricPoint, ConfusionMatrix, RunTag):
            assert session.scalar(select(func.count()).select_from(model)) == 0
    assert client.delete(f"/api/runs/{run['id']}").status_code == 404


def test_a_worker_finishing_a_deleted_run_leaves_it_deleted(client, settings):
    """A worker that has not yet noticed the delete writes an epoch, then finishes (or fails):
    nothing of the run comes back, no row anywhere."""
    run = client.post("/api/runs", json=SPEC).json()
    with sessions(settings)() as session:
        as_worker.start_run(session, run["id"], "test")
        as_worker.record_epoch(session, run["id"], 1, {"val_accuracy": 0.5}, "test", step=10)
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204
    late_writes = [
        lambda session: as_worker.record_epoch(session, run["id"], 2, {"val_accuracy": 0.6}, "test", step=20),
        lambda session: recording.finish_run(session, run["id"], cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                                         best_epoch=1, classes=["a"], confusion=[[1]], info={}, worker="test"),
        lambda session: recording.finish_run(session, run["id"], cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                                         best_epoch=1, classes=["a"], confusion=[[1]], info={}),
        lambda session: as_worker.fail_run(session, run["id"], "late"),
    ]
    for write in late_writes:
        with sessions(settings)() as session:
            try:
                write(session)
            except LeaseLost:
                pass  # the worker's own writes are refused: it then stops
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
    with sessions(settings)() as session:
        for model in (Run, MetricPoint, ConfusionMatrix, RunTag, SystemMetricPoint):
            assert session.scalar(select(func.count()).select_from(model)) == 0, model.__name__


def test_downsampling_keeps_the_extremes_and_the_ends():
    values = [float(i % 10) for i in range(10_000)]
    values[4321] = 99.0  # a spike
    values[7777] = -5.0  # a dip
    values[5000] = None  # a diverged point
    points = list(enumerate(values))
    kept = downsample_min_max(points, 200, lambda p: p[1])
    assert len(kept) <= 210
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert (4321, 99.0) in kept and (7777, -5.0) in kept and (5000, None) in kept
    assert [i for i, _ in kept] == sorted(i for i, _ in kept)
    assert downsample_min_max(points[:50], 200, lambda p: p[1]) == points[:50]


def test_metrics_for_display_are_thinned_per_series_with_the_live_cursor(client, settings):
    run = client.post("/api/runs", json=SPEC).json()
    with sessions(settings)() as session:
        as_worker.start_run(session, run["id"], "test")
        for epoch in range(1, 301):
            as_worker.record_epoch(session, run["id"], epoch, {"val_accuracy": 0.5 + (epoch == 150) * 0.4,
                                                           "train_loss": 1 / epoch})
    full = client.get(f"/api/runs/{run['id']}/metrics").json()
    thin = client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 50}).json()
    assert thin["downsampled"] and thin["cursor"] == full["cursor"]
    for name in ("val_accuracy", "train_loss"):
        series = [p for p in thin["points"] if p["name"] == name]
        assert 10 < len(series) <= 50 and series[0]["epoch"] == 1 and series[-1]["epoch"] == 300
    assert {"epoch": 150, "step": 0, "name": "val_accuracy", "value": 0.9} in thin["points"]  # step: 0, none given
    short = client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 1000}).json()
    assert not short["downsampled"] and len(short["points"]) == 600
    assert client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 2}).status_code == 422


def test_a_deleted_runs_id_is_never_given_to_another_run(client):
    first = client.post("/api/runs", json=SPEC).json()["id"]
    newest = client.post("/api/runs", json=SPEC).json()["id"]
    assert client.delete(f"/api/runs/{newest}").status_code == 204
    following = client.post("/api/runs", json=SPEC).json()["id"]
    assert following > newest > first  # a link or script holding `newest` never sees another run


@pytest.mark.timeout(300)
def test_deleting_a_running_run_stops_its_worker_mid_epoch(client, settings, start_worker):
    """An epoch of this run is tens of thousands of tiny steps; the worker must stop within a
    heartbeat or two of the deletion, not at the end of the epoch. Judged against the epoch's own
    time left (its ETA when the run is deleted), measured in the same run, not a fixed duration."""
    import time

    import numpy as np

    from tests.support import wait_for

    rng = np.random.default_rng(0)
    n = 200_000
    labels = rng.integers(0, 2, n)
    features = settings.data_dir / "features"
    features.mkdir(parents=True, exist_ok=True)
    np.savez(features / "long_epochs.npz", label=labels,
             left=(rng.normal(size=(n, 8)) + labels[:, None]).astype(np.float32),
             right=rng.normal(size=(n, 8)).astype(np.float32))
    run = client.post("/api/runs", json={"dataset": "long_epochs", "method": "mle", "missing_modality": "right",
                                         "missing_rate": 0.5, "epochs": 2, "batch_size": 2,
                                         "log_every_steps": 100}).json()
    worker = start_worker(settings)

    def progressed():  # far enough into the epoch that its ETA is the steady pace, not the first steps'
        progress = client.get(f"/api/runs/{run['id']}").json()["progress"] or {}
        return progress if progress.get("step", 0) >= 500 else None

    progress = wait_for(progressed, 120, interval=0.05, what="training to be well into its first epoch")
    assert progress["epoch"] == 1 and progress["steps"] == 70_000
    deleted_at = time.monotonic()
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204
    # The task is over (Celery logs its return) well before the epoch could have ended.
    wait_for(lambda: "succeeded in" in worker.log(), 120, what="the worker's task to end")
    stopped_after = time.monotonic() - deleted_at
    print(f"stopped {stopped_after:.1f} s after the delete; the epoch had {progress['eta_seconds']:.0f} s left")
    assert stopped_after < progress["eta_seconds"] / 3, (stopped_after, progress)
    assert "stopped mid-epoch" in worker.log()
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
