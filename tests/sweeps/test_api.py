"""The sweep and preset API over the real app, a real SQLite database and the real filesystem
broker. Results are written with the same service functions the worker uses, so the table
and trend are checked against numbers computed here from the database rows."""

from __future__ import annotations

import csv
import io
import re

import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.runs import recording
from backend.runs.artifacts import run_artifact_dir
from backend.runs.models import MetricPoint, Run
from backend.settings import Settings
from backend.sweeps.models import Sweep
from backend.sweeps.paper import TABLE_1, TABLE_2
from backend.sweeps.presets import PRESETS, Block, Preset, plan_preset
from training.datasets.naming import backbone_of, source_dataset
from training.spec import METHODS
from tests.support import as_worker, queued_run_ids, sample_std

GRID = {"dataset": "digits", "method": ["mle", "lower_bound"], "fusion": "add", "missing_modality": "bottom",
        "missing_rate": [0.5, 0.9], "seed": [0, 1, 2], "epochs": 2}


@pytest.fixture
def settings(embedded_settings):
    return embedded_settings


@pytest.fixture
def client(client_for, settings):
    return client_for(settings)


def counts(settings) -> tuple[int, int]:
    with session_factory(settings.database_url)() as session:
        return (session.scalar(select(func.count()).select_from(Sweep)),
                session.scalar(select(func.count()).select_from(Run)))


def finish(settings, run_id: int, accuracy: float | None, state: str = "succeeded") -> None:
    """What the worker writes for a run that ends, through the worker's own service calls."""
    with session_factory(settings.database_url)() as session:
        as_worker.start_run(session, run_id, "test")
        as_worker.record_epoch(session, run_id, 1, {"test_accuracy": accuracy or 0.0, "val_accuracy": 0.5})
        if state == "failed":
            as_worker.fail_run(session, run_id, "RuntimeError: boom")
        else:
            recording.finish_run(session, run_id, cancelled=False, test_accuracy=accuracy, val_accuracy=0.5,
                                  best_epoch=1, classes=["a", "b"], confusion=[[3, 1], [0, 4]], info={})


# --- creating ---------------------------------------------------------------------------


def test_preview_counts_and_writes_nothing(client, settings):
    preview = client.post("/api/sweeps/preview", json=GRID).json()
    assert preview["combinations"] == preview["runs"] == 12 and preview["invalid"] == []
    assert preview["would_refuse"] is False
    assert preview["name"] == "digits: 2 methods × 2 missing rates × 3 seeds (12 runs)"
    assert counts(settings) == (0, 0) and queued_run_ids(settings) == []


def test_create_commits_every_run_then_sends_the_ids_seed_by_seed(client, settings):
    response = client.post("/api/sweeps", json={**GRID, "name": "grid"})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["name"] == "grid" and sweep["progress"]["queued"] == 12 and sweep["progress"]["total"] == 12
    assert sweep["grid"]["method"] == ["mle", "lower_bound"] and sweep["grid"]["fusion"] == ["add"]
    assert queued_run_ids(settings) == sweep["run_ids"]  # every id sent, in creation order
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "sort": "id", "limit": 100}).json()["items"]
    assert [r["id"] for r in runs] == sweep["run_ids"]
    assert [r["seed"] for r in runs] == [0] * 4 + [1] * 4 + [2] * 4  # seed varies slowest
    assert {(r["method"], r["missing_rate"]) for r in runs[:4]} == {(m, q) for m in GRID["method"]
                                                                    for q in GRID["missing_rate"]}
    assert all(r["sweep_id"] == sweep["id"] and r["spec"]["epochs"] == 2 for r in runs)
    assert client.get(f"/api/sweeps/{sweep['id']}").json()["progress"]["queued"] == 12


def test_every_run_is_committed_before_the_first_id_is_sent(settings):
    """What a worker receiving an id would see: the real queue, watched from a second session."""
    from backend.queue import WorkQueue
    from backend.runs.validation import DatasetCatalog
    from backend.sweeps import service as sweeps
    from backend.sweeps.grid import expand_grid, plan_sweep
    from backend.sweeps.schemas import SweepCreate

    sessions = session_factory(settings.database_url)
    visible_at_send: list[int] = []

    class WatchedQueue(WorkQueue):
        def send_run(self, run_id: int, method: str | None = None) -> None:
            with sessions() as other:  # another connection: sees only what is committed
                visible_at_send.append(other.scalar(select(func.count()).select_from(Run)))
            super().send_run(run_id, method)

    grid = SweepCreate.model_validate(GRID).grid()
    plan = plan_sweep(expand_grid(grid), DatasetCatalog(settings.data_dir))
    queue = WatchedQueue(settings)
    with sessions() as session:
        sweeps.create_sweep(session, queue, plan, name="watched", grid=grid)
    queue.close()
    assert visible_at_send == [12] * 12
    assert len(queued_run_ids(settings)) == 12


def test_invalid_combination_is_refused_with_the_reason_and_nothing_is_written(client, settings):
    body = {**GRID, "method": ["mle", "zero_padding"], "fusion": ["add", "outer"]}
    response = client.post("/api/sweeps", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "fusion"] and error["input"] == "outer"
    assert "not available for method 'zero_padding'" in error["msg"] and "6 of 24 combinations" in error["msg"]
    assert error["ctx"]["example"]["method"] == "zero_padding"
    assert counts(settings) == (0, 0) and queued_run_ids(settings) == []
    # the preview says the same, with the count
    preview = client.post("/api/sweeps/preview", json=body).json()
    assert preview["runs"] == 18 and preview["would_refuse"] and preview["invalid"][0]["combinations"] == 6
    # leaving them out creates the valid rest and says what was left out
    created = client.post("/api/sweeps", json={**body, "skip_invalid": True}).json()
    assert len(created["run_ids"]) == 18 and created["left_out"][0]["combinations"] == 6
    assert counts(settings) == (1, 18)


def test_dataset_and_modality_are_checked_per_combination_like_a_run(client, settings):
    response = client.post("/api/sweeps", json={**GRID, "missing_modality": ["bottom", "audio"]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "missing_modality"] and "has no modality 'audio'" in error["msg"]
    # exactly what POST /api/runs says for the same spec
    single = client.post("/api/runs", json={**GRID, "method": "mle", "missing_rate": 0.5, "seed": 0,
                                            "missing_modality": "audio"}).json()["detail"][0]
    assert error["ctx"]["reason"] == single["msg"]
    unknown = client.post("/api/sweeps", json={**GRID, "dataset": ["digits", "imagenet"]}).json()["detail"]
    assert [e["loc"] for e in unknown] == [["body", "dataset"]] and "unknown dataset 'imagenet'" in unknown[0]["msg"]
    assert counts(settings) == (0, 0)


SHAPE_ERRORS = [
    ("empty list", {"seed": []}, "seed", "empty list"),
    ("value listed twice", {"missing_rate": [0.5, 0.5]}, "missing_rate", "listed twice"),
    ("nested list", {"seed": [[0, 1]]}, "seed", "flat list"),
    ("too many combinations", {"seed": list(range(1000)), "missing_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
     None, "12,000 combinations; at most 5,000"),
    ("unknown field", {"learning_rate": [0.1]}, "learning_rate", "Extra inputs"),
    ("value out of range", {"missing_rate": [0.5, 1.5]}, "missing_rate", "less than 1"),
    ("value of the wrong type", {"epochs": ["many"]}, "epochs", "valid integer"),
]


@pytest.mark.parametrize("case,change,field,message", SHAPE_ERRORS, ids=[c[0] for c in SHAPE_ERRORS])
def test_bad_grid_is_422_naming_the_field(client, settings, case, change, field, message):
    response = client.post("/api/sweeps", json={**GRID, **change})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any((field is None or e["loc"][-1] == field) and message in e["msg"] for e in errors), errors
    assert counts(settings) == (0, 0) and queued_run_ids(settings) == []


def test_required_field_absent_is_named_once(client, settings):
    body = {k: v for k, v in GRID.items() if k != "missing_rate"}
    errors = client.post("/api/sweeps", json=body).json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "missing_rate"]] and "6 of 6 combinations" in errors[0]["msg"]


def test_broker_down_leaves_a_whole_sweep_queued_awaiting_the_broker_none_failed(client_for, tmp_path):
    """The rows are committed before any id is sent; when the broker is unreachable the runs stay
    queued, marked awaiting the broker (the reconcile step sends them once it is back: tested with
    a real Redis in tests/runs/test_hosts.py), none failed, and the API answers 202 with that state."""
    from backend.migrate import upgrade

    settings = Settings(var_dir=tmp_path / "down", database_url="", broker_url="redis://127.0.0.1:9/0")
    settings.make_dirs()
    upgrade(settings.database_url)
    client = client_for(settings)
    response = client.post("/api/sweeps", json={**GRID, "seed": 0})
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["run_ids"]) == 4 and body["awaiting_broker"] == body["run_ids"]
    with session_factory(settings.database_url)() as session:
        rows = session.execute(select(Run.state, Run.error, Run.broker_error, Run.awaiting_broker_since)).all()
    assert [r.state for r in rows] == ["queued"] * 4 and all(r.error is None for r in rows)
    assert all("broker" in r.broker_error and r.awaiting_broker_since for r in rows)
    runs = client.get("/api/runs", params={"sweep": body["id"]}).json()["items"]
    assert all(r["awaiting_broker"] and r["state"] == "queued" for r in runs)
    from backend.sweeps.stream import _runs

    with session_factory(settings.database_url)() as session:  # what the sweep page's stream lists
        assert [r.awaiting_broker for r in _runs(session, body["id"])] == [True] * 4
    assert client.get(f"/api/sweeps/{body['id']}").json()["progress"] == {
        "queued": 4, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "total": 4, "done": False, "external": 0}


def test_the_same_idempotency_key_creates_one_sweep(client, settings):
    headers = {"Idempotency-Key": "sweep-7f3a"}
    first = client.post("/api/sweeps", json=GRID, headers=headers)
    again = client.post("/api/sweeps", json=GRID, headers=headers)
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["run_ids"] == first.json()["run_ids"]
    assert counts(settings)[1] == len(first.json()["run_ids"])
    assert sorted(queued_run_ids(settings)) == sorted(first.json()["run_ids"])  # each id sent once
    other = client.post("/api/sweeps", json={**GRID, "seed": 0}, headers=headers)
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # The name is part of the request too: the same key and grid named A, then B, is another request.
    named = {"Idempotency-Key": "sweep-named"}
    assert client.post("/api/sweeps", json={**GRID, "name": "A"}, headers=named).status_code == 201
    renamed = client.post("/api/sweeps", json={**GRID, "name": "B"}, headers=named)
    assert renamed.status_code == 422 and renamed.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.post("/api/sweeps", json={**GRID, "name": "A"}, headers=named).status_code == 200


def test_a_deleted_sweeps_id_is_never_given_to_another_sweep(client):
    first = client.post("/api/sweeps", json=GRID).json()["id"]
    newest = client.post("/api/sweeps", json=GRID).json()["id"]
    assert client.delete(f"/api/sweeps/{newest}").status_code == 204
    following = client.post("/api/sweeps", json=GRID).json()["id"]
    assert following > newest > first  # a link or script holding `newest` never sees another sweep


# --- reading ----------------------------------------------------------------------------


def test_list_and_progress(client, settings):
    first = client.post("/api/sweeps", json=GRID).json()
    second = client.post("/api/sweeps", json={**GRID, "seed": 0}).json()
    finish(settings, first["run_ids"][0], 0.9)
    finish(settings, first["run_ids"][1], None, state="failed")
    page = client.get("/api/sweeps").json()
    assert page["total"] == 2 and [s["id"] for s in page["items"]] == [second["id"], first["id"]]
    progress = page["items"][1]["progress"]
    assert (progress["succeeded"], progress["failed"], progress["queued"], progress["done"]) == (1, 1, 10, False)
    assert client.get("/api/sweeps/999").status_code == 404
    for path in ["/api/sweeps/999/table", "/api/sweeps/999/trend", "/api/sweeps/999/stream"]:
        assert client.get(path).status_code == 404
    assert client.get(f"/api/sweeps/{first['id']}/table", params={"format": "xml"}).status_code == 422


def expected_cells(settings, sweep_id: int) -> dict[tuple[str, float], tuple[float, float | None, int]]:
    """(method, rate) → (mean, sample std, n) of the succeeded runs, straight from the rows."""
    with session_factory(settings.database_url)() as session:
        rows = session.execute(select(Run.method, Run.missing_rate, Run.test_accuracy)
                               .where(Run.sweep_id == sweep_id, Run.state == "succeeded")).all()
    groups: dict[tuple[str, float], list[float]] = {}
    for method, rate, accuracy in rows:
        groups.setdefault((method, rate), []).append(accuracy)
    return {key: (sum(v) / len(v), sample_std(v) if len(v) > 1 else None, len(v)) for key, v in groups.items()}


def test_the_expected_std_is_right_on_numbers_worked_by_hand():
    # deviations −0.013, 0, +0.013: Σ = 2 · 0.013², over n − 1 = 2: std = 0.013
    assert sample_std([0.80, 0.813, 0.826]) == pytest.approx(0.013, abs=1e-15)
    # deviations −1.5, −0.5, 0.5, 1.5: Σ = 5, over 3: std = sqrt(5/3)
    assert sample_std([1, 2, 3, 4]) == pytest.approx((5 / 3) ** 0.5, abs=1e-15)


@pytest.fixture
def finished_sweep(client, settings):
    """The grid with results: three seeds per cell, one mle run at 0.9 failed."""
    sweep = client.post("/api/sweeps", json=GRID).json()
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "sort": "id", "limit": 100}).json()["items"]
    for i, run in enumerate(runs):
        if run["method"] == "mle" and run["missing_rate"] == 0.9 and run["seed"] == 2:
            finish(settings, run["id"], None, state="failed")
        else:
            base = {"mle": 0.80, "lower_bound": 0.70}[run["method"]] - (0.1 if run["missing_rate"] == 0.9 else 0)
            finish(settings, run["id"], round(base + 0.013 * run["seed"] + 0.001 * i, 6))
    return sweep


def test_table_is_mean_and_std_over_seeds_in_the_papers_layout(client, settings, finished_sweep):
    table = client.get(f"/api/sweeps/{finished_sweep['id']}/table").json()
    assert [(c["missing_modality"], c["missing_rate"]) for c in table["columns"]] == [("bottom", 0.5), ("bottom", 0.9)]
    assert [r["label"] for r in table["rows"]] == ["mle (add)", "lower_bound (add)"]
    expected = expected_cells(settings, finished_sweep["id"])
    for row in table["rows"]:
        for column, cell in zip(table["columns"], row["cells"]):
            mean, std, n = expected[(row["method"], column["missing_rate"])]
            assert cell["n"] == n and cell["mean"] == pytest.approx(mean, abs=1e-12)
            assert (cell["std"] is None) == (std is None) and (std is None or cell["std"] == pytest.approx(std))
            assert cell["paper"] is None and cell["pending"] == 0
    assert table["rows"][0]["cells"][1]["n"] == 2  # the failed seed is not averaged in
    assert [r["cells"][0]["best"] for r in table["rows"]] == [True, False]
    assert table["paper"] is None

    trend = client.get(f"/api/sweeps/{finished_sweep['id']}/trend").json()["series"]
    assert [(s["label"], s["missing_modality"], s["source"]) for s in trend] == [
        ("mle (add)", "bottom", "sweep"), ("lower_bound (add)", "bottom", "sweep")]
    for series in trend:
        assert series["rates"] == [0.5, 0.9]
        for rate, mean, std, n in zip(series["rates"], series["means"], series["stds"], series["counts"]):
            assert (mean, n) == (pytest.approx(expected[(series["method"], rate)][0]), expected[(series["method"], rate)][2])
            assert std == pytest.approx(expected[(series["method"], rate)][1])


def test_csv_and_latex_exports_hold_the_same_numbers(client, settings, finished_sweep):
    response = client.get(f"/api/sweeps/{finished_sweep['id']}/table", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = expected_cells(settings, finished_sweep["id"])
    assert [(r["method"], r["fusion"]) for r in rows] == [("mle", "add"), ("lower_bound", "add")]
    for row in rows:
        for rate, label in [(0.5, "bottom 50%"), (0.9, "bottom 90%")]:
            mean, std, n = expected[(row["method"], rate)]
            assert float(row[f"{label} mean"]) == pytest.approx(100 * mean, abs=5e-5)
            assert float(row[f"{label} std"]) == pytest.approx(100 * std, abs=5e-5)
            assert int(row[f"{label} n"]) == n

    latex = client.get(f"/api/sweeps/{finished_sweep['id']}/table", params={"format": "latex"}).text
    assert r"\begin{tabular}{l cc}" in latex and r"\multicolumn{2}{c}{Bottom missing}" in latex
    lines = {line.split(" & ")[0]: line for line in latex.splitlines() if " & " in line}
    for label, method in [("mle (add)", "mle"), (r"lower\_bound (add)", "lower_bound")]:
        cells = lines[label].removesuffix(r" \\").split(" & ")[1:]
        for cell, rate in zip(cells, [0.5, 0.9]):
            mean, std, _ = expected[(method, rate)]
            text = f"{100 * mean:.2f} $\\pm$ {100 * std:.2f}"
            cell = re.sub(r"\$\^\{\\\w+\}\$$", "", cell)  # a paired comparison's mark (test_paired.py)
            assert cell in (text, rf"\textbf{{{text}}}"), (cell, text)
    assert lines["mle (add)"].split(" & ")[1].startswith(r"\textbf{")  # the best of its column


def test_a_varied_training_setting_splits_rows_instead_of_being_averaged(client, settings):
    sweep = client.post("/api/sweeps", json={**GRID, "method": "mle", "lr": [0.001, 0.01], "seed": 0}).json()
    for run_id in sweep["run_ids"]:
        finish(settings, run_id, 0.5)
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    assert [r["label"] for r in table["rows"]] == ["mle (add), lr=0.001", "mle (add), lr=0.01"]
    assert table["rows"][0]["extras"] == {"lr": 0.001}


# --- changing ---------------------------------------------------------------------------


def test_delete_sweep_deletes_its_runs_and_their_points(client, settings):
    sweep = client.post("/api/sweeps", json=GRID).json()
    finish(settings, sweep["run_ids"][0], 0.9)
    folder = run_artifact_dir(settings.artifact_dir, sweep["run_ids"][0])
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"...")
    other = client.post("/api/runs", json={**GRID, "method": "mle", "missing_rate": 0.5, "seed": 0}).json()
    assert client.delete(f"/api/sweeps/{sweep['id']}").status_code == 204
    assert client.get(f"/api/sweeps/{sweep['id']}").status_code == 404
    assert client.get(f"/api/runs/{sweep['run_ids'][0]}").status_code == 404
    with session_factory(settings.database_url)() as session:
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == 0
    assert client.get(f"/api/runs/{other['id']}").status_code == 200
    assert not folder.exists()
    assert client.delete(f"/api/sweeps/{sweep['id']}").status_code == 404


def test_delete_sweep_can_keep_its_runs(client, settings):
    sweep = client.post("/api/sweeps", json=GRID).json()
    assert client.delete(f"/api/sweeps/{sweep['id']}", params={"keep_runs": True}).status_code == 204
    run = client.get(f"/api/runs/{sweep['run_ids'][0]}").json()
    assert run["sweep_id"] is None and run["state"] == "queued"


def test_retry_sweep_requeues_failed_runs(client, settings):
    sweep = client.post("/api/sweeps", json={**GRID, "seed": 0}).json()
    finish(settings, sweep["run_ids"][0], None, state="failed")
    finish(settings, sweep["run_ids"][1], 0.8)
    retried = client.post(f"/api/sweeps/{sweep['id']}/retry").json()
    assert retried == {"run_ids": [sweep["run_ids"][0]]}
    assert client.get(f"/api/runs/{sweep['run_ids'][0]}").json()["state"] == "queued"
    assert queued_run_ids(settings).count(sweep["run_ids"][0]) == 2


# --- presets ----------------------------------------------------------------------------


def test_paper_tables_are_transcribed_whole():
    assert len(TABLE_1.values) == 11 * 6 and len(TABLE_2.values) == 9 * 6
    assert TABLE_1.lookup("mle", "outer", None, "audio", 0.95) == 80.31
    assert TABLE_1.lookup("hgr", "concat", None, "visual", 0.8) == 63.51
    assert TABLE_1.lookup("zero_padding", "outer", None, "visual", 0.8) is None
    assert TABLE_2.lookup("ae2", "add", "resnet50", "visual", 0.5) == 69.13  # fusion not stated: any
    assert TABLE_2.lookup("mle", "add", "resnet34", "audio", 0.5) == 92.14
    assert TABLE_2.lookup("mle", "add", None, "audio", 0.5) is None


def test_table1_preset_is_the_papers_grid():
    preset = PRESETS["table1"]
    assert preset.runs_per_seed == 66  # LB 3, HGR 3, ZP 2, MLE 3 fusions × 2 modalities × 3 rates
    assert preset.methods == ["lower_bound", "hgr", "zero_padding", "mle"]
    assert PRESETS["table2"].runs_per_seed == 54 and PRESETS["fig4"].runs_per_seed == 20


def available(preset_name: str) -> list[tuple[str, str]]:
    """(method, fusion) rows of a preset that the training library can run today."""
    return [(b.method, f) for b in PRESETS[preset_name].blocks if b.method in METHODS for f in b.fusions]


def test_presets_say_what_the_training_library_lacks(client):
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert set(presets) == {"table1", "table2", "fig4", "fig5", "fig6", "mle_vs_zero_padding"}
    for name, preset in presets.items():
        assert preset["missing_methods"] == [m for m in PRESETS[name].methods if m not in METHODS]
    assert presets["table1"]["reported"] == "Table 1" and presets["fig4"]["features"] == []
    # Table 2's extractors are features datasets of the picked video dataset (the preview says which exist)
    assert presets["table2"]["features"] == ["vgg16", "resnet34", "resnet50"]


@pytest.fixture
def future_preset(monkeypatch):
    """A preset naming a method no training library has (test data, not a stand-in)."""
    preset = Preset(name="future", figure="Fig. 9", title="t", description="d", paper_dataset="p",
                    paper_dataset_names=frozenset(), reported=None, focus="table",
                    blocks=(Block("mle", ("add", "concat"), ("visual", "audio"), (0.5, 0.9)),
                            Block("telepathy", ("add",), ("visual",), (0.5,))))
    monkeypatch.setitem(PRESETS, "future", preset)
    return preset


def test_preset_needing_a_missing_method_is_refused_naming_it(client, settings, future_preset):
    response = client.post("/api/presets/future/sweeps", json={"dataset": "digits", "seeds": 2, "epochs": 1})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert "method telepathy" in error["msg"] and "create the 16 runs that can run now" in error["msg"]
    assert error["ctx"] == {"missing_methods": ["telepathy"], "missing_features": [], "available_runs": 16}
    assert counts(settings) == (0, 0)
    preview = client.post("/api/presets/future/preview", json={"dataset": "digits", "seeds": 2, "epochs": 1}).json()
    assert preview["would_refuse"] and preview["runs"] == 16 and "telepathy" in preview["message"]
    created = client.post("/api/presets/future/sweeps",
                          json={"dataset": "digits", "seeds": 2, "epochs": 1, "only_available": True}).json()
    assert len(created["run_ids"]) == 16
    assert created["preset_options"]["left_out"] == ["methods not available yet: telepathy"]


def test_preset_available_part_on_digits_shows_the_papers_numbers_beside_ours(client, settings):
    rows = available("table1")
    response = client.post("/api/presets/table1/sweeps",
                           json={"dataset": "digits", "seeds": 2, "epochs": 1, "only_available": True})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert len(sweep["run_ids"]) == len(rows) * 6 * 2 and sweep["preset"] == "table1"
    assert sweep["preset_options"]["roles"] == {"visual": "top", "audio": "bottom"}
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 500, "sort": "id"}).json()["items"]
    assert {(r["method"], r["fusion"]) for r in runs} == set(rows)
    assert {r["fusion"] for r in runs if r["method"] == "zero_padding"} == {"add", "concat"}
    assert all(r["spec"]["epochs"] == 1 for r in runs) and {r["seed"] for r in runs} == {0, 1}
    for run in runs[:3]:
        finish(settings, run["id"], 0.9)
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    assert [c["label"] for c in table["columns"]][:4] == ["top (visual) 80%", "top (visual) 90%",
                                                          "top (visual) 95%", "bottom (audio) 80%"]
    assert [r["label"] for r in table["rows"]] == [f"{m} ({f})" for m, f in rows]  # the paper's row order
    [mle_add] = [r for r in table["rows"] if r["label"] == "mle (add)"]
    assert [c["paper"] for c in mle_add["cells"]] == pytest.approx([0.7237, 0.7165, 0.6629, 0.8124, 0.8031, 0.7938])
    assert all(c["paper"] is not None for r in table["rows"] for c in r["cells"])
    assert table["paper"]["table"] == "Table 1" and table["paper"]["same_dataset"] is False
    assert "compare the trends" in table["paper"]["note"]
    trend = client.get(f"/api/sweeps/{sweep['id']}/trend").json()["series"]
    paper_lines = [s for s in trend if s["source"] == "paper"]
    assert len(paper_lines) == 2 * len(rows) and paper_lines[0]["label"] == "paper: lower_bound (add)"


def test_preset_roles_map_onto_the_chosen_modalities(client):
    preview = client.post("/api/presets/fig4/preview",
                          json={"dataset": "digits", "visual": "bottom", "audio": "top", "seeds": 1, "epochs": 1}).json()
    assert preview["roles"] == {"visual": "bottom", "audio": "top"} and preview["runs"] == 20
    sweep = client.post("/api/presets/fig4/sweeps",
                        json={"dataset": "digits", "visual": "bottom", "audio": "top", "seeds": 1, "epochs": 1}).json()
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    assert {r["missing_modality"] for r in runs} == {"top"}  # Fig. 4: audio missing
    assert sorted({r["missing_rate"] for r in runs}) == [0.5, 0.8, 0.9, 0.95]


def test_preset_on_a_dataset_without_extractors_uses_its_own_inputs_and_no_paper_numbers(client):
    sweep = client.post("/api/presets/table2/sweeps", json={"dataset": "digits", "seeds": 1, "epochs": 1})
    assert sweep.status_code == 201, sweep.text
    sweep = sweep.json()
    assert len(sweep["run_ids"]) == 3 * 2 * 3  # ae1, ae2, mle × 2 modalities × 3 rates: the backbone axis collapses
    assert any("not a raw video dataset" in note for note in sweep["preset_options"]["left_out"])
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    assert {r["dataset"] for r in runs} == {"digits"}
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    assert all(cell["paper"] is None for row in table["rows"] for cell in row["cells"])


def test_preset_on_a_video_dataset_trains_on_its_extracted_features():
    """Each backbone maps to the features dataset extracted from the picked dataset; one not
    extracted yet is missing (refused, or left out on request)."""
    extracted = {"resnet50": "ravdess-resnet50-imagenet", "vgg16": "ravdess-vgg16-random"}
    roles = {"visual": "visual", "audio": "audio"}
    plan = plan_preset(PRESETS["table2"], dataset="ravdess", roles=roles, seeds=1, epochs=2, only_available=True,
                       is_video=True, features=extracted.get)
    assert plan.missing_features == ["resnet34"] and not plan.complete
    assert {c["dataset"] for c in plan.combinations} == set(extracted.values())
    assert len(plan.combinations) == 3 * 2 * 3 * 2  # methods × roles × rates × extracted backbones
    assert plan.left_out == ["features not extracted yet: resnet34"]
    assert "POST /api/datasets/ravdess/features" in plan.missing_message(36, "ravdess")
    assert backbone_of("ravdess-vgg16-random") == "vgg16" and backbone_of("digits") is None
    assert source_dataset("ravdess-resnet50-imagenet") == "ravdess" and source_dataset("digits") == "digits"
    assert TABLE_2.lookup("mle", "add", backbone_of("ravdess-resnet50-imagenet"), "visual", 0.5) == 84.05


@pytest.mark.parametrize("body,field,message", [
    ({"dataset": "imagenet"}, "dataset", "unknown dataset"),
    ({"dataset": "digits", "visual": "left"}, "visual", "no modality 'left'"),
    ({"dataset": "digits", "visual": "top", "audio": "top"}, "audio", "two different modalities"),
    ({"dataset": "digits", "seeds": 0}, "seeds", "greater than or equal to 1"),
    ({"dataset": "digits", "epochs": 0}, "epochs", "greater than or equal to 1"),
])
def test_bad_preset_request_is_422_naming_the_field(client, settings, body, field, message):
    errors = client.post("/api/presets/fig5/sweeps", json={**body, "only_available": True}).json()["detail"]
    assert any(e["loc"] == ["body", field] and message in e["msg"] for e in errors), errors
    assert counts(settings) == (0, 0)


def test_unknown_preset_is_404(client):
    assert client.post("/api/presets/table9/sweeps", json={"dataset": "digits"}).status_code == 404


def test_stream_sends_runs_progress_summary_then_end(client, settings):
    from tests.support import read_events

    sweep = client.post("/api/sweeps", json={**GRID, "seed": 0}).json()
    for run_id in sweep["run_ids"]:
        finish(settings, run_id, 0.75)
    with client.stream("GET", f"/api/sweeps/{sweep['id']}/stream") as response:
        events = read_events(response)
    assert [name for name, _ in events] == ["runs", "progress", "summary", "end"]
    assert events[0][1]["full"] and len(events[0][1]["runs"]) == 4 and events[0][1]["runs"][0]["epochs"] == 2
    assert events[1][1]["succeeded"] == 4 and events[1][1]["done"]
    assert events[2][1]["table"]["rows"][0]["cells"][0]["mean"] == 0.75
    assert [s["label"] for s in events[2][1]["trend"]["series"]] == ["mle (add)", "lower_bound (add)"]


def test_openapi_documents_the_sweep_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/sweeps", "/api/sweeps/preview", "/api/sweeps/{sweep_id}", "/api/sweeps/{sweep_id}/table",
                 "/api/sweeps/{sweep_id}/trend", "/api/sweeps/{sweep_id}/stream", "/api/presets",
                 "/api/presets/{name}/sweeps", "/api/presets/{name}/preview"]:
        assert path in paths, path
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SweepCreate"]["properties"]["missing_rate"]
    assert schema["anyOf"][1]["type"] == "array"


@pytest.mark.services
def test_sweeps_on_postgresql_and_redis(service_settings, client_for):
    """The production shape: the same sweep path on PostgreSQL (JSON paths, cascades, keyset
    with NULLs) with ids sent over Redis."""
    from tests.support import read_events

    client = client_for(service_settings)
    sweep = client.post("/api/sweeps", json=GRID).json()
    assert len(sweep["run_ids"]) == 12
    for i, run_id in enumerate(sweep["run_ids"][:8]):
        finish(service_settings, run_id, 0.6 + i / 100)
    client.patch(f"/api/runs/{sweep['run_ids'][0]}", json={"tags": ["pg"]})
    expected = expected_cells(service_settings, sweep["id"])
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    for row in table["rows"]:
        for column, cell in zip(table["columns"], row["cells"]):
            mean, _, n = expected[(row["method"], column["missing_rate"])]
            assert cell["n"] == n and cell["mean"] == pytest.approx(mean) and cell["pending"] == 3 - n
    with client.stream("GET", f"/api/sweeps/{sweep['id']}/stream") as response:
        first = []
        for line in response.iter_lines():
            if line.startswith("event:"):
                first.append(line.split(":", 1)[1].strip())
            if first[-3:] == ["runs", "progress", "summary"]:
                break
    assert first == ["runs", "progress", "summary"]
    order = [r["id"] for r in client.get("/api/runs", params={"sort": "-test_accuracy", "limit": 100}).json()["items"]]
    assert all_pages_by_cursor(client, {"sort": "-test_accuracy"}, 5) == order
    assert [r["id"] for r in client.get("/api/runs", params={"tag": "pg"}).json()["items"]] == [sweep["run_ids"][0]]
    assert client.get("/api/runs", params={"sweep": sweep["id"], "state": "succeeded"}).json()["total"] == 8
    assert client.delete(f"/api/sweeps/{sweep['id']}").status_code == 204
    assert client.get("/api/runs").json()["total"] == 0
    done = client.post("/api/sweeps", json={**GRID, "seed": 0}).json()
    for run_id in done["run_ids"]:
        finish(service_settings, run_id, 0.5)
    with client.stream("GET", f"/api/sweeps/{done['id']}/stream") as response:
        assert [name for name, _ in read_events(response)] == ["runs", "progress", "summary", "end"]


def all_pages_by_cursor(client, params: dict, limit: int) -> list[int]:
    seen, cursor = [], None
    while True:
        body = client.get("/api/runs", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})}).json()
        seen += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(client, settings):
    """Modality names come from data files: a name a spreadsheet reads as a formula is quoted
    (OWASP's rule for =, +, -, @, tab, carriage return), numbers stay numbers."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    hostile = {"=HYPERLINK(\"http://evil.example\",\"x\")": rng.normal(size=(60, 4)) + labels[:, None],
               "@SUM(1+1)*cmd|' /C calc'!A0": rng.normal(size=(60, 4))}
    features = settings.data_dir / "features"
    features.mkdir(parents=True)
    np.savez(features / "hostile.npz", label=labels, **hostile)
    for modality in hostile:
        response = client.post("/api/sweeps", json={"dataset": "hostile", "method": "mle",
                                                    "missing_modality": modality, "missing_rate": [0.5, 0.7]})
        assert response.status_code == 201, response.text
        sweep_id = response.json()["id"]
        for run_id in queued_run_ids(settings)[-2:]:
            finish(settings, run_id, 0.5)
        rows = list(csv.reader(io.StringIO(client.get(f"/api/sweeps/{sweep_id}/table?format=csv").text)))
        cells = [cell for row in rows for cell in row]
        assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in cells), rows[0]
        assert not any(cell.startswith("-") and not cell.lstrip("-").replace(".", "").isdigit() for cell in cells)
        assert rows[0][2] == "'" + f"{modality} 50% mean" and rows[1][2] == "50.0000"


def test_csv_neutralising_rule():
    from backend.csv_export import neutralise

    for dangerous in ["=1+1", "+1+cmd", "-1+2-cmd|x", "@SUM(A1)", "\tx", "\r=x"]:
        assert neutralise(dangerous) == "'" + dangerous
    for harmless in ["mle", "-1.5", "+2", "12", "", "a=b", 3, None]:
        assert neutralise(harmless) == harmless


def test_why_preset_runs_the_ablations_of_mle_beside_zero_padding_and_compares_with_it(client, settings):
    sweep = client.post("/api/presets/mle_vs_zero_padding/sweeps",
                        json={"dataset": "digits", "seeds": 2, "epochs": 2}).json()
    assert len(sweep["run_ids"]) == 2 * 5 * 3
    for i, run_id in enumerate(sweep["run_ids"]):
        finish(settings, run_id, 0.80 + 0.01 * (i % 7))
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    assert [row["label"] for row in table["rows"]] == [
        "zero_padding (add)", "mle (add)", "mle (add), mle_stop_reference_gradient=True",
        "mle (add), mle_freeze_class_offset=True", "mle (add), label_prior=uniform"]
    assert [c["label"] for c in table["columns"]] == ["bottom (audio) 80%", "bottom (audio) 90%", "bottom (audio) 95%"]
    assert table["comparison"]["references"] == ["zero_padding (add)"] * 3
    assert all(cell["is_reference"] for cell in table["rows"][0]["cells"])
    for row in table["rows"][1:]:
        for cell in row["cells"]:
            assert cell["paired"]["reference"] == "zero_padding (add)" and cell["paired"]["n"] == 2
    assert "With 2 seeds, no seed-level test can reach significance" in table["comparison"]["note"]
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    assert sum(r["spec"]["mle_freeze_class_offset"] for r in runs) == 6


def test_paired_reference_and_test_are_validated_at_the_edge(client, settings, finished_sweep):
    url = f"/api/sweeps/{finished_sweep['id']}/table"
    response = client.get(url, params={"reference": "hgr"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "reference"]
    assert client.get(url, params={"test": "bootstrap"}).status_code == 422
    table = client.get(url, params={"reference": "mle (add)", "test": "samples"}).json()
    assert table["comparison"]["references"] == ["mle (add)", "mle (add)"]
    assert table["comparison"]["test"] == "samples"
    summary = client.get(f"/api/sweeps/{finished_sweep['id']}/summary", params={"reference": "mle"}).json()
    assert summary["table"]["comparison"]["references"] == ["mle (add)", "mle (add)"]
    assert summary["table"]["comparison"]["test"] == "seeds"
    mle_series = next(s for s in summary["trend"]["series"] if s["method"] == "mle")
    assert mle_series["marks"] == ["reference", "reference"]
    lower = next(s for s in summary["trend"]["series"] if s["method"] == "lower_bound")
    assert lower["diffs"][0] == pytest.approx(summary["table"]["rows"][1]["cells"][0]["paired"]["diff"])
