"""The API's conventions that scripts and generated clients rely on: problem details for every
error, a documented schema for every status, stable operation ids, a bearer scheme, one
pagination style, queries on any field, CSV exports, bulk actions, runs trained elsewhere."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from pydantic import SecretStr

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 2}
PROBLEM = "application/problem+json"


@pytest.fixture
def client(embedded_settings, client_for):
    return client_for(embedded_settings)


def test_errors_are_problem_details_keeping_detail(client, embedded_settings, client_for):
    missing = client.get("/api/runs/424242")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert missing.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                              "detail": "run 424242 not found", "instance": "/api/runs/424242"}
    invalid = client.post("/api/runs", json={**SPEC, "missing_rate": 2})
    body = invalid.json()
    assert invalid.status_code == 422 and invalid.headers["content-type"] == PROBLEM
    assert body["status"] == 422 and body["title"] == "Unprocessable Entity"
    assert body["detail"][0]["loc"] == ["body", "missing_rate"]  # as before: the field at fault
    cross_site = client.post("/api/runs", json=SPEC, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403 and cross_site.json()["detail"] == "cross-site request refused"
    small = client_for(embedded_settings.model_copy(update={"max_request_bytes": 100}))
    too_large = small.post("/api/runs", content=b" " * 1000, headers={"content-type": "application/json"})
    assert too_large.status_code == 413 and too_large.headers["content-type"] == PROBLEM  # sent outside the app
    assert too_large.json()["status"] == 413
    guarded = client_for(embedded_settings.model_copy(update={"api_token": SecretStr("t" * 32)}))
    refused = guarded.get("/api/runs")
    assert refused.status_code == 401 and refused.headers["content-type"] == PROBLEM
    assert refused.headers["www-authenticate"] == "Bearer"


def test_openapi_ids_security_and_documented_errors(client):
    schema = client.get("/openapi.json").json()
    ids = {operation["operationId"] for path in schema["paths"].values() for operation in path.values()}
    assert {"runs-list", "runs-create", "runs-get", "runs-log-external", "runs-bulk-delete", "runs-bulk-retry",
            "runs-bulk-cancel", "sweeps-list", "sweeps-table", "presets-create-sweep", "jobs-list"} <= ids
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {"bearerAuth": []} in schema["security"]
    assert schema["paths"]["/api/health"]["get"]["security"] == []
    assert "Stability" in schema["info"]["description"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"500", "503"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and not (path == "/api/health" and status == "503"):
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.mark.parametrize("backend", ["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def test_runs_list_queries_any_field_sorts_pages_and_exports_csv(backend, request, client_for, monkeypatch):
    """On SQLite and PostgreSQL, whose JSON functions differ."""
    client = client_for(request.getfixturevalue(backend))
    monkeypatch.setattr("backend.runs.export.CSV_PAGE", 4)  # the export streams several pages
    ids = [client.post("/api/runs", json={**SPEC, "lr": lr, "seed": seed}).json()["id"]
           for seed, lr in enumerate([0.01, 0.003, 0.03, 0.001, 0.02])]
    named = client.post("/api/runs", json={**SPEC, "name": "=HYPERLINK(\"http://evil\")", "encoder": "mlp"}).json()

    def listed(**params):
        response = client.get("/api/runs", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    assert [r["id"] for r in listed(where="lr>=0.01", sort="lr")["items"]] == [ids[0], ids[4], ids[2]]
    assert [r["id"] for r in listed(where=["lr<0.01", "seed>=3"])["items"]] == [ids[3]]
    assert listed(where="pretrained=false")["total"] == 6 and listed(where="external=true")["total"] == 0
    # A number typed by a person equals a stored double within 1e-9, and no further.
    assert [r["id"] for r in listed(where="lr=0.0030000005")["items"]] == [ids[1]]
    assert listed(where="lr=0.003000002")["total"] == 0
    assert ids[1] not in {r["id"] for r in listed(where="lr!=0.0030000005", limit=50)["items"]}
    assert ids[1] in {r["id"] for r in listed(where="lr!=0.003000002", limit=50)["items"]}
    external = client.post("/api/runs/external", json={
        "dataset": "digits", "method": "theirs", "missing_modality": "bottom", "missing_rate": 0.9, "spec": {"lr": 0.5},
        "metrics": [{"epoch": 1, "name": "val_loss", "value": 0.9}, {"epoch": 2, "name": "val_loss", "value": 0.2}],
        "test_accuracy": 0.9}).json()
    assert [r["id"] for r in listed(where="metrics.val_loss<0.5")["items"]] == [external["id"]]
    assert listed(where="metrics.val_loss>0.5")["total"] == 0  # the last epoch's value counts, not an earlier one
    assert listed(where="pretrained=false")["total"] == 6  # defaults apply to missmod's runs, not external ones
    assert [r["id"] for r in listed(where="lr>0.1")["items"]] == [external["id"]]
    client.post("/api/runs/bulk-delete", json={"ids": [external["id"]]})
    # sorted by a spec field, paged by cursor: every run once, in order
    seen, cursor = [], None
    while True:
        page = listed(sort="-lr", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [r["spec"]["lr"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 6
    bad = client.get("/api/runs", params={"where": "lr>fast"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "where", 0]

    exported = client.get("/api/runs", params={"format": "csv", "sort": "id"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["id"]) for r in rows] == [*ids, named["id"]] and rows[0]["lr"] == "0.01"
    assert rows[-1]["name"] == "'=HYPERLINK(\"http://evil\")"  # a formula never runs in a spreadsheet


def test_bulk_actions_external_runs_and_metrics_csv(client):
    queued = [client.post("/api/runs", json={**SPEC, "seed": s}).json()["id"] for s in range(3)]
    external = client.post("/api/runs/external", json={
        "dataset": "their_data", "method": "their_method", "missing_modality": "audio", "missing_rate": 0.5,
        "metrics": [{"epoch": 1, "name": "val_accuracy", "value": 0.6}, {"epoch": 2, "name": "val_accuracy",
                                                                          "value": 0.7},
                    {"epoch": 2, "name": "=cmd", "value": 1.0}],
        "test_accuracy": 0.65, "confusion": {"classes": ["a", "b"], "counts": [[3, 1], [0, 4]]}}).json()
    assert external["external"] and external["state"] == "succeeded" and external["epochs_completed"] == 2
    refused = client.post(f"/api/runs/{external['id']}/retry")
    assert refused.status_code == 409 and "trained elsewhere" in refused.json()["detail"]
    wrong = client.post("/api/runs/external", json={"dataset": "d", "method": "m", "missing_modality": "x",
                                                    "missing_rate": 0.5, "confusion": {"classes": ["a"],
                                                                                       "counts": [[1, 2]]}})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"][:2] == ["body", "confusion"]
    no_sweep = client.post("/api/runs/external", json={"dataset": "d", "method": "m", "missing_modality": "x",
                                                       "missing_rate": 0.5, "sweep_id": 999})
    assert no_sweep.status_code == 422 and no_sweep.json()["detail"][0]["loc"] == ["body", "sweep_id"]

    metrics = client.get(f"/api/runs/{external['id']}/metrics", params={"format": "csv"}).text.splitlines()
    assert metrics == ["epoch,val_accuracy,'=cmd", "1,0.6,", "2,0.7,1.0"]
    page = client.get(f"/api/runs/{external['id']}/metrics", params={"limit": 2}).json()
    assert len(page["points"]) == 2 and page["next_cursor"] == page["cursor"]
    rest = client.get(f"/api/runs/{external['id']}/metrics", params={"after": page["next_cursor"]}).json()
    assert len(rest["points"]) == 1 and rest["next_cursor"] is None

    cancelled = client.post("/api/runs/bulk-cancel", json={"ids": [queued[0], queued[1], external["id"], 999]}).json()
    assert cancelled["done"] == queued[:2] and cancelled["not_found"] == [999]
    assert cancelled["refused"] == [{"id": external["id"], "reason": f"run {external['id']} is already succeeded"}]
    retried = client.post("/api/runs/bulk-retry", json={"ids": [queued[0], queued[2]]}).json()
    assert retried["done"] == [queued[0]] and retried["refused"][0]["id"] == queued[2]
    deleted = client.post("/api/runs/bulk-delete", json={"ids": queued}).json()
    assert deleted["done"] == queued
    assert client.get("/api/runs").json()["total"] == 1
    assert client.post("/api/runs/bulk-delete", json={"ids": []}).status_code == 422


def test_every_list_pages_by_cursor(client):
    for seed in range(3):
        client.post("/api/sweeps", json={**SPEC, "seed": seed})
    first = client.get("/api/sweeps", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = client.get("/api/sweeps", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    assert [s["id"] for s in first["items"] + second["items"]] == [3, 2, 1]
    jobs = client.get("/api/jobs", params={"limit": 2})
    assert jobs.json() == [] and "x-next-cursor" not in jobs.headers  # a plain list, as before


def forged_cursor(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("backend", ["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def test_a_cursor_this_server_did_not_write_is_a_422_and_old_cursors_still_page(backend, request, client_for):
    """A cursor is checked before it reaches SQL (backend/pagination.py): one the server did not
    write is a 422 naming `cursor`, never a 500, on SQLite and PostgreSQL alike. The sweeps'
    old cursors, a plain id, still page."""
    client = client_for(request.getfixturevalue(backend))
    for seed in range(3):
        client.post("/api/sweeps", json={**SPEC, "seed": seed})
    forged = [("-id", "WyItaWQiLG51bGwsdHJ1ZV0"),  # base64 of ["-id",null,true]: a boolean id
              ("-id", forged_cursor(["-id", 1, 2**70])),  # an id no column can hold
              ("-test_accuracy", forged_cursor(["-test_accuracy", "high", 1])),  # text against a number
              ("name", forged_cursor(["name", "a\u0000b", 1])),  # NUL, which PostgreSQL's text refuses
              ("name", forged_cursor(["name", "\ud800", 1])),  # a lone surrogate, which no driver sends
              ("external", forged_cursor(["external", 1, 1])),  # a number against a boolean
              ("-id", forged_cursor({"-id": 1}))]
    for sort, cursor in forged:
        refused = client.get("/api/runs", params={"sort": sort, "cursor": cursor})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "cursor"], (sort, cursor)
    for path in ("/api/sweeps", "/api/jobs"):
        refused = client.get(path, params={"cursor": "WyItaWQiLG51bGwsdHJ1ZV0"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "cursor"], path
    held = client.get("/api/sweeps", params={"cursor": "3", "limit": 1}).json()  # an old cursor: the id
    assert [s["id"] for s in held["items"]] == [2] and held["next_cursor"]
    rest = client.get("/api/sweeps", params={"cursor": held["next_cursor"]}).json()
    assert [s["id"] for s in rest["items"]] == [1] and rest["next_cursor"] is None


def test_dataset_jobs_page_by_a_cursor_in_headers(client, embedded_settings):
    from backend.db import session_factory
    from backend.jobs.models import DatasetJob

    with session_factory(embedded_settings.database_url)() as session:
        session.add_all([DatasetJob(kind="preprocess", dataset=f"set{i}", params={}) for i in range(3)])
        session.commit()
    first = client.get("/api/jobs", params={"limit": 2})
    assert [job["dataset"] for job in first.json()] == ["set2", "set1"]  # the body: a plain list, as before
    cursor = first.headers["x-next-cursor"]
    assert first.headers["link"].endswith('; rel="next"') and f"cursor={cursor}" in first.headers["link"]
    second = client.get("/api/jobs", params={"limit": 2, "cursor": cursor})
    assert [job["dataset"] for job in second.json()] == ["set0"] and "x-next-cursor" not in second.headers


def test_the_clients_models_name_only_fields_the_api_returns():
    """The client keeps models of its own (it must import nothing of the server); they must not
    drift from the API's schemas."""
    from backend.runs.schemas import MetricPointOut, RunOut
    from backend.sweeps.schemas import SweepCreated
    from missmod.models import Point, Run, Sweep

    for ours, theirs in ((Run, RunOut), (Sweep, SweepCreated), (Point, MetricPointOut)):
        unknown = set(ours.model_fields) - set(theirs.model_fields)
        assert not unknown, (ours, unknown)


def test_the_console_script_is_the_cli():
    import importlib
    import tomllib

    from tests.support import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, function = project["project"]["scripts"]["missmod"].partition(":")
    assert getattr(importlib.import_module(module), function).__module__ == "missmod.cli"
    assert "missmod*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "pandas" in project["project"]["optional-dependencies"]
