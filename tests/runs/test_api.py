"""The runs REST API, one run at a time — create (validated at the edge), read, cancel, its
metrics, its live stream and confusion matrix — plus the catalogue, health and pages, over the
real app, a real SQLite database and the real filesystem broker. Lists, tags, retry and delete:
test_list_and_manage.py; the life cycle a worker drives: tests/lifecycle/."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.runs import recording
from backend.runs.models import MetricPoint, Run
from backend.runs.schemas import MetricsPage
from tests.support import as_worker, queued_run_ids, read_events

VALID = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
         "missing_rate": 0.9, "epochs": 3, "seed": 0}


@pytest.fixture
def settings(embedded_settings):
    return embedded_settings


@pytest.fixture
def client(client_for, settings):
    return client_for(settings)


def run_count(settings) -> int:
    with session_factory(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(Run))


INVALID = [
    ("unknown method", {"method": "magic"}, "method"),
    ("rate of one", {"missing_rate": 1.0}, "missing_rate"),
    ("negative rate", {"missing_rate": -0.1}, "missing_rate"),
    ("rate not a number", {"missing_rate": "lots"}, "missing_rate"),
    ("fusion not valid for the method", {"method": "zero_padding", "fusion": "outer"}, "fusion"),
    ("unknown fusion", {"fusion": "multiply"}, "fusion"),
    ("modality the dataset does not have", {"missing_modality": "audio"}, "missing_modality"),
    ("unknown dataset", {"dataset": "imagenet"}, "dataset"),
    ("zero epochs", {"epochs": 0}, "epochs"),
    ("negative seed", {"seed": -1}, "seed"),
    ("non-positive learning rate", {"lr": 0}, "lr"),
    ("batch of one", {"batch_size": 1}, "batch_size"),
    ("unknown field", {"learning_rate": 0.1}, "learning_rate"),
    ("name too long", {"name": "x" * 201}, "name"),
]


@pytest.mark.parametrize("case,change,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_422_naming_the_field_and_writes_nothing(client, settings, case, change, field):
    response = client.post("/api/runs", json={**VALID, **change})
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert ["body", field] in locations, locations
    assert run_count(settings) == 0
    assert queued_run_ids(settings) == []


@pytest.mark.parametrize("missing", ["dataset", "method", "missing_modality", "missing_rate"])
def test_required_fields_are_named_when_absent(client, settings, missing):
    body = {k: v for k, v in VALID.items() if k != missing}
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422
    assert ["body", missing] in [e["loc"] for e in response.json()["detail"]]
    assert run_count(settings) == 0


def test_malformed_json_is_422_not_500(client, settings):
    response = client.post("/api/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert run_count(settings) == 0


def test_create_commits_the_run_and_sends_its_id(client, settings):
    response = client.post("/api/runs", json={**VALID, "name": "first"})
    assert response.status_code == 201
    run = response.json()
    assert run["state"] == "queued" and run["name"] == "first"
    assert run["spec"]["missing_rate"] == 0.9 and run["spec"]["lr"] == 0.001  # defaults filled in
    assert queued_run_ids(settings) == [run["id"]]  # the task id is the run id
    assert client.get(f"/api/runs/{run['id']}").json()["state"] == "queued"


def test_default_name_describes_the_spec(client):
    run = client.post("/api/runs", json=VALID).json()
    assert run["name"] == "mle-add digits bottom@0.9 s0"


def test_unknown_run_is_404(client):
    for path in ["/api/runs/999", "/api/runs/999/metrics", "/api/runs/999/confusion", "/api/runs/999/stream"]:
        assert client.get(path).status_code == 404, path
    assert client.post("/api/runs/999/cancel").status_code == 404


def test_cancel_queued_run_is_immediate_and_final(client, settings):
    run = client.post("/api/runs", json=VALID).json()
    cancelled = client.post(f"/api/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.post(f"/api/runs/{run['id']}/cancel").status_code == 409
    # a worker that still receives the id does not run it
    with session_factory(settings.database_url)() as session:
        assert as_worker.start_run(session, run["id"], "test") is None


def test_metrics_cursor_returns_only_new_points_and_no_duplicates(client, settings):
    run = client.post("/api/runs", json=VALID).json()
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        as_worker.start_run(session, run["id"], "test")
        as_worker.record_epoch(session, run["id"], 1, {"train_loss": 1.5, "val_accuracy": 0.5})
    page = client.get(f"/api/runs/{run['id']}/metrics").json()
    assert MetricsPage.model_validate(page).state == "running"  # the documented shape
    assert [(p["epoch"], p["name"]) for p in page["points"]] == [(1, "train_loss"), (1, "val_accuracy")]
    with sessions() as session:
        as_worker.record_epoch(session, run["id"], 1, {"train_loss": 9.9})  # a replayed epoch: ignored
        as_worker.record_epoch(session, run["id"], 2, {"train_loss": 1.0, "val_accuracy": float("nan")})
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == 4
    newer = client.get(f"/api/runs/{run['id']}/metrics", params={"after": page["cursor"]}).json()
    assert [(p["epoch"], p["name"], p["value"]) for p in newer["points"]] == [
        (2, "train_loss", 1.0), (2, "val_accuracy", None)]  # NaN is sent as null, never a 500
    assert client.get(f"/api/runs/{run['id']}").json()["epochs_completed"] == 2


def test_stream_sends_points_then_state_then_end(client, settings):
    run = client.post("/api/runs", json=VALID).json()
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        as_worker.start_run(session, run["id"], "test")
        as_worker.record_epoch(session, run["id"], 1, {"val_accuracy": 0.5})
        as_worker.record_epoch(session, run["id"], 2, {"val_accuracy": 0.7})
        recording.finish_run(session, run["id"], cancelled=False, test_accuracy=0.66, val_accuracy=0.7, best_epoch=2,
                         classes=["a", "b"], confusion=[[1, 0], [1, 1]], info={})
    with client.stream("GET", f"/api/runs/{run['id']}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    names = [name for name, _ in events]
    assert names == ["metrics", "run", "end"]
    assert [p["value"] for p in events[0][1]["points"]] == [0.5, 0.7]
    assert events[1][1]["state"] == "succeeded" and events[1][1]["test_accuracy"] == 0.66
    # a reconnecting client sends its last cursor and receives nothing twice
    cursor = events[0][1]["cursor"]
    with client.stream("GET", f"/api/runs/{run['id']}/stream", headers={"Last-Event-ID": str(cursor)}) as response:
        assert [n for n, _ in read_events(response)] == ["run", "end"]
    confusion = client.get(f"/api/runs/{run['id']}/confusion").json()
    assert confusion == {"epoch": 2, "classes": ["a", "b"], "counts": [[1, 0], [1, 1]], "counted": "samples"}


def test_catalog_lists_datasets_and_methods(client):
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert datasets["digits"]["modalities"] == ["top", "bottom"]
    assert datasets["digits"]["n_samples"] == 1797 and len(datasets["digits"]["classes"]) == 10
    assert datasets["synthetic"]["modalities"] == ["x", "y"]
    methods = {m["name"]: m for m in client.get("/api/methods").json()}
    assert methods["mle"]["fusions"] == ["add", "concat", "outer"]
    assert methods["zero_padding"]["fusions"] == ["add", "concat"]


def test_health_reports_database_and_broker(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["broker"] == "ok"
    assert body["database_backend"] == "sqlite" and body["broker_transport"] == "filesystem"


def test_openapi_documents_the_run_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/metrics", "/api/runs/{run_id}/cancel",
                 "/api/runs/{run_id}/stream", "/api/datasets", "/api/health"]:
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_pages_render(client):
    run = client.post("/api/runs", json={**VALID, "name": "<b>bold</b>"}).json()
    for path in ["/", "/runs/new", f"/runs/{run['id']}"]:
        response = client.get(path)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = client.get(f"/runs/{run['id']}").text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert client.get("/runs/12345").status_code == 404
    plotly = client.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000


# --- submitting while the broker is down, and retried POSTs -----------------------------


def test_the_same_idempotency_key_creates_one_run(client, settings):
    headers = {"Idempotency-Key": "5f0e8a52-9d3c-4b7e-8c1a-2f6d9e0b1c3d"}
    first = client.post("/api/runs", json=VALID, headers=headers)
    replays = [client.post("/api/runs", json=VALID, headers=headers) for _ in range(3)]
    assert first.status_code == 201, first.text
    assert [r.status_code for r in replays] == [200] * 3
    assert all(r.json()["id"] == first.json()["id"] and r.headers["idempotent-replayed"] == "true" for r in replays)
    assert run_count(settings) == 1 and queued_run_ids(settings) == [first.json()["id"]]
    # another key, or none, is another run
    assert client.post("/api/runs", json=VALID, headers={"Idempotency-Key": "other"}).status_code == 201
    assert client.post("/api/runs", json=VALID).status_code == 201
    assert run_count(settings) == 3


def test_an_idempotency_key_reused_for_another_request_or_malformed_is_refused(client, settings):
    client.post("/api/runs", json=VALID, headers={"Idempotency-Key": "k1"})
    reused = client.post("/api/runs", json={**VALID, "seed": 1}, headers={"Idempotency-Key": "k1"})
    assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    for bad in [b"has space", b"x" * 256, "é".encode()]:
        response = client.post("/api/runs", json=VALID, headers={"Idempotency-Key": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"][0]["loc"][:2] == ["header", "Idempotency-Key"]
    assert run_count(settings) == 1


def test_broker_down_at_submit_saves_the_run_awaiting_the_broker(client_for, tmp_path):
    """202 with the run queued and awaiting the broker: nothing failed, nothing for the script to retry."""
    from backend.migrate import upgrade
    from backend.settings import Settings

    settings = Settings(var_dir=tmp_path / "down", database_url="", broker_url="redis://127.0.0.1:9/0")
    settings.make_dirs()
    upgrade(settings.database_url)
    client = client_for(settings)
    response = client.post("/api/runs", json=VALID, headers={"Idempotency-Key": "during-outage"})
    assert response.status_code == 202, response.text
    run = response.json()
    assert (run["state"], run["awaiting_broker"], run["error"]) == ("queued", True, None)
    assert "broker" in run["broker_error"] and "127.0.0.1" not in run["broker_error"]  # no address leaked
    retried = client.post("/api/runs", json=VALID, headers={"Idempotency-Key": "during-outage"})
    assert retried.status_code == 200 and retried.json()["id"] == run["id"]
    assert run_count(settings) == 1


def test_every_shape_of_the_metrics_answer_is_the_documented_schema(client, settings):
    """format=json answers a MetricsPage and format=columns a MetricsColumns; the OpenAPI schema
    documents both (it named MetricsPage alone, and the fuzz test found a columns answer
    without `points`)."""
    import jsonschema

    run = client.post("/api/runs", json=VALID).json()
    with session_factory(settings.database_url)() as session:
        as_worker.start_run(session, run["id"], "test")
        as_worker.record_epoch(session, run["id"], 1, {"train_loss": 1.5, "val_accuracy": 0.5})
    openapi = client.get("/openapi.json").json()
    documented = openapi["paths"]["/api/runs/{run_id}/metrics"]["get"]["responses"]["200"]["content"]
    validator = jsonschema.Draft202012Validator({**documented["application/json"]["schema"],
                                                 "components": openapi["components"]})
    for params in ({}, {"max_points": 10}, {"format": "columns"}, {"format": "columns", "after": 1},
                   {"format": "columns", "max_points": 10, "downsample": "lttb"}):
        answer = client.get(f"/api/runs/{run['id']}/metrics", params=params)
        assert answer.status_code == 200
        errors = [error.message for error in validator.iter_errors(answer.json())]
        assert not errors, (params, errors)
    assert "text/csv" in documented
