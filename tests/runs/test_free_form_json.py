"""Free-form JSON a client stores (an external run's settings, source, name, metric names and
classes) is checked at the edge, keys and values at any depth, and a row stored before it was
never takes a list or a page down. A real API process on SQLite and on PostgreSQL (where one NUL
inside a run's settings broke every spec-field query of the runs list)."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from backend.db import session_factory, utcnow
from backend.runs.models import ConfusionMatrix, MetricPoint, Run, RunState
from backend.sweeps.models import Sweep

EXTERNAL = ('{"dataset": "digits", "method": "their_method", "missing_modality": "bottom", "missing_rate": 0.5, '
            '"test_accuracy": 0.8')
# (the field at fault, the rest of the body as JSON text: escapes as a client sends them)
HOSTILE = [
    ("spec", '"spec": {"note": "\\udcff"}'),
    ("spec", '"spec": {"note": "a\\u0000b"}'),
    ("spec", '"spec": {"\\ud800": 1}'),
    ("spec", '"spec": {"a\\u0000": 1}'),
    ("spec", '"spec": {"optimiser": {"betas": [0.9, {"k\\u0000": "v"}]}}'),
    ("spec", '"spec": {"optimiser": {"name": ["\\udfff"]}}'),
    ("spec", '"spec": {"optimiser": {"nested": {"\\udcff": true}}}'),
    ("spec", '"spec": {"lr": NaN}'),
    ("source", '"source": "\\udcff"'),
    ("source", '"source": "a\\u0000b"'),
    ("name", '"name": "\\ud800 run"'),
    ("metrics", '"metrics": [{"epoch": 1, "name": "\\udcff", "value": 0.5}]'),
    ("confusion", '"confusion": {"classes": ["\\udcff", "b"], "counts": [[1, 0], [0, 1]]}'),
    # Settings missmod knows have their type (item 4 of the probe): "abc" sorted as a number
    # failed the whole list on PostgreSQL.
    ("spec", '"spec": {"lr": "abc"}'),
    ("spec", '"spec": {"epochs": "a\\u0000b"}'),
    ("spec", '"spec": {"pretrained": "yes"}'),
    ("spec", '"spec": {"encoder": 5}'),
    ("spec", '"spec": {"lr": true}'),
]
SPEC_QUERIES = [{"sort": "lr"}, {"sort": "-encoder"}, {"sort": "pretrained", "limit": 1}, {"where": "lr>0"},
                {"where": "encoder=mlp"}, {"where": "pretrained=true"}, {"where": "epochs<=3"}]


@pytest.fixture(params=["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def settings(request):
    return request.getfixturevalue(request.param)


def test_free_form_json_is_checked_at_the_edge_and_lists_stay_up(settings, start_server):
    base = start_server(settings)
    with httpx.Client(base_url=base, timeout=60) as client:
        sweep = client.post("/api/sweeps", json={"dataset": "digits", "method": "mle", "missing_modality": "bottom",
                                                 "missing_rate": 0.5, "epochs": 1}).json()
        good = client.post("/api/runs/external", content=(
            EXTERNAL + f', "sweep_id": {sweep["id"]}, "spec": {{"lr": 0.01, "encoder": "transformer", "epochs": 3, '
            '"note": "tabs\\tand\\nline breaks are fine", "optimiser": {"name": "adamw", "betas": [0.9, 0.99]}}, '
            '"source": "https://example.org/\\u00e9t\\u00e9 \\ud83d\\ude00"}').encode(),
            headers={"content-type": "application/json"})
        assert good.status_code == 201, good.text
        assert good.json()["spec"]["optimiser"] == {"name": "adamw", "betas": [0.9, 0.99]}

        for field, body in HOSTILE:
            response = client.post("/api/runs/external", content=f"{EXTERNAL}, {body}}}".encode(),
                                   headers={"content-type": "application/json"})
            assert response.status_code == 422, (body, response.status_code, response.text)
            assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]], (body, response.text)

        for path, params in [("/api/runs", {}), ("/api/runs", {"sweep": sweep["id"]}), ("/api/runs", {"format": "csv"}),
                             (f"/api/runs/{good.json()['id']}", {}), (f"/runs/{good.json()['id']}", {}),
                             (f"/api/sweeps/{sweep['id']}/table", {}), *(("/api/runs", q) for q in SPEC_QUERIES)]:
            response = client.get(path, params=params)
            assert response.status_code == 200, (path, params, response.status_code, response.text)
        assert client.get("/api/runs", params={"external": "true"}).json()["total"] == 1  # nothing half-written
        assert [r["id"] for r in client.get("/api/runs", params={"where": "lr>0.001"}).json()["items"]] == \
            [good.json()["id"]]


def _store_external(sessions, sweep_id: int, name: str, spec: dict, info: dict | None = None,
                    classes: list[str] | None = None) -> int:
    """A row as a server before the edge checks stored it, written past the API."""
    now = utcnow()
    with sessions() as session:
        run = Run(name=name, spec={**spec, "dataset": "digits", "method": "theirs", "fusion": "add",
                                   "missing_modality": "bottom", "missing_rate": 0.5, "seed": 0},
                  dataset="digits", method="theirs", fusion="add", missing_modality="bottom", missing_rate=0.5, seed=0,
                  state=RunState.succeeded, created_at=now, started_at=now, finished_at=now, epochs_completed=1,
                  test_accuracy=0.7, best_epoch=1, info=info, sweep_id=sweep_id, external=True)
        session.add(run)
        session.flush()
        session.add(MetricPoint(run_id=run.id, epoch=1, name="val_loss", value=0.5, recorded_at=now))
        if classes:
            session.add(ConfusionMatrix(run_id=run.id, epoch=1, classes=classes, counts=[[1, 0], [0, 1]]))
        session.commit()
        return run.id


def test_a_row_stored_before_the_checks_never_takes_a_list_or_a_page_down(settings, start_server):
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        sweep = Sweep(name="stored before", created_at=utcnow(), grid={"dataset": ["digits"]})
        session.add(sweep)
        session.commit()
        sweep_id = sweep.id
    # Settings of the wrong type: every database filters and sorts past them.
    mixed = _store_external(sessions, sweep_id, "mixed types", {"lr": "abc", "encoder": 5, "pretrained": "yes",
                                                                  "epochs": [1, 2]})
    typed = _store_external(sessions, sweep_id, "typed", {"lr": 0.1, "encoder": "mlp", "pretrained": True, "epochs": 2})
    base = start_server(settings)
    with httpx.Client(base_url=base, timeout=60) as client:
        for params in SPEC_QUERIES:
            response = client.get("/api/runs", params=params)
            assert response.status_code == 200, (params, response.status_code, response.text)
        assert [r["id"] for r in client.get("/api/runs", params={"sort": "-lr"}).json()["items"]] == [typed, mixed]
        assert [r["id"] for r in client.get("/api/runs", params={"where": "lr>0"}).json()["items"]] == [typed]
        first = client.get("/api/runs", params={"sort": "lr", "limit": 1}).json()  # a cursor from a typed value
        second = client.get("/api/runs", params={"sort": "lr", "limit": 1, "cursor": first["next_cursor"]}).json()
        assert [first["items"][0]["id"], second["items"][0]["id"]] == [typed, mixed]

        # Text no response can carry (a lone surrogate, which JSON escapes and both databases kept):
        # shown escaped; every list and page of it answers.
        bad = _store_external(sessions, sweep_id, "unencodable", {"note\udcff": "x\udcff"},
                              info={"external": True, "source": "\udcff"}, classes=["\udcff", "b"])
        for path, params in [("/api/runs", {}), ("/api/runs", {"sweep": sweep_id}), ("/api/runs", {"format": "csv"}),
                             (f"/api/runs/{bad}", {}), (f"/api/runs/{bad}/confusion", {}), (f"/runs/{bad}", {}),
                             (f"/sweeps/{sweep_id}", {}), (f"/api/sweeps/{sweep_id}/summary", {}),
                             ("/api/runs", {"q": "unencodable"})]:
            response = client.get(path, params=params)
            assert response.status_code == 200, (path, params, response.status_code, response.text)
        run = client.get(f"/api/runs/{bad}").json()
        assert run["spec"]["note\\udcff"] == "x\\udcff" and run["info"]["source"] == "\\udcff"
        with client.stream("GET", f"/api/runs/{bad}/stream") as stream:  # a finished run: its snapshot, then end
            assert stream.status_code == 200 and "x\\\\udcff" in stream.read().decode()


def test_a_mapping_setting_is_free_form_and_neither_sorted_nor_filtered_by(settings, start_server):
    """`method_options` (a plugin's options: a mapping, its default made by a factory) is no
    field to order or compare by: asking to gets a 422 that names the fields one can use, on
    both databases (PostgreSQL was handed pydantic's "no default" marker: a 500, found by the
    fuzz test), and an external run may log its options as a mapping."""
    base = start_server(settings)
    with httpx.Client(base_url=base, timeout=60) as client:
        logged = client.post("/api/runs/external", content=(
            EXTERNAL + ', "spec": {"method_options": {"temperature": 0.5, "variant": "b"}}}').encode(),
            headers={"content-type": "application/json"})
        assert logged.status_code == 201, logged.text
        for params in ({"sort": "method_options"}, {"sort": "-method_options", "format": "csv"},
                       {"where": "method_options=abc"}):
            answer = client.get("/api/runs", params=params)
            assert answer.status_code == 422, (params, answer.status_code, answer.text[:300])
            assert "lr" in answer.text  # names what one can sort or filter by
        assert client.get("/api/runs", params={"sort": "lr"}).status_code == 200
