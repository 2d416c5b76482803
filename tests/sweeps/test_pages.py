"""Sweeps in a real Chromium, against a real uvicorn and a real Celery worker (embedded default:
SQLite + filesystem broker). Every number the pages show is checked against numbers computed
here, straight from the database rows the worker wrote."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from sqlalchemy import select

from backend.db import session_factory
from backend.runs.models import ConfusionMatrix, MetricPoint, Run

from tests.support import sample_std, wait_for, wait_in_page

pytestmark = pytest.mark.browser


def database_cells(settings, sweep_id: int) -> dict[tuple[str, str, float], tuple[float, float | None, int]]:
    """(method, fusion, missing rate) → (mean, sample std, n) of the test accuracy of the
    sweep's succeeded runs."""
    with session_factory(settings.database_url)() as session:
        rows = session.execute(select(Run.method, Run.fusion, Run.missing_rate, Run.test_accuracy)
                               .where(Run.sweep_id == sweep_id, Run.state == "succeeded")).all()
    groups: dict[tuple[str, str, float], list[float]] = {}
    for method, fusion, rate, accuracy in rows:
        groups.setdefault((method, fusion, rate), []).append(accuracy)
    return {k: (sum(v) / len(v), sample_std(v) if len(v) > 1 else None, len(v)) for k, v in groups.items()}


# What the sweep page shows: trend points, filled table cells, progress.
PAGE_STATE = """() => {
    const traces = [...document.querySelectorAll('#trend-charts .chart')].flatMap(div => div.data || []);
    const points = traces.filter(t => t.meta === 'sweep').reduce((n, t) => n + t.x.length, 0);
    const cells = document.querySelectorAll('#sweep-table td[data-mean]').length;
    const page = document.getElementById('sweep-page');
    return {points, cells, succeeded: Number(page.dataset.succeeded || 0), ended: !!page.dataset.streamEnded,
            marker: window.__sameDocument === true};
}"""


def page_state(page) -> dict:
    return page.evaluate(PAGE_STATE)


def record_page_states(page) -> None:
    """Keep, in the page, every distinct state it shows, as it draws it (a MutationObserver): no
    state is missed however busy the machine, as sampling from the test every so often would."""
    page.evaluate("() => { const state = " + PAGE_STATE + """;
        window.__states = [];
        const record = () => {
            const now = JSON.stringify(state());
            if (window.__states[window.__states.length - 1] !== now) window.__states.push(now);
        };
        record();
        new MutationObserver(record).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                             characterData: true});
    }""")


def recorded_page_states(page) -> list[dict]:
    return [json.loads(state) for state in page.evaluate("window.__states")]


def shown_table(page) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('#sweep-table tbody tr')].map(tr => ({
        label: tr.querySelector('th').textContent,
        cells: [...tr.querySelectorAll('td')].map(td => ({
            column: td.dataset.column, mean: td.dataset.mean === undefined ? null : Number(td.dataset.mean),
            n: Number(td.dataset.n), text: td.querySelector('.value').textContent, best: td.classList.contains('best'),
            paper: td.querySelector('.paper') ? td.querySelector('.paper').textContent : null}))}))""")


def shown_trend(page, modality: str) -> list[dict]:
    return page.evaluate("""(modality) => {
        const div = document.querySelector(`#trend-charts [data-modality="${modality}"]`);
        return div.data.map(t => ({name: t.name, source: t.meta, x: t.x, y: t.y, counts: t.customdata,
                                   std: t.error_y ? t.error_y.array : null, type: t.type}));
    }""", modality)


def download(page, selector: str) -> str:
    with page.expect_download() as info:
        page.click(selector)
    return open(info.value.path(), encoding="utf-8").read()


def test_sweep_from_the_form_fills_in_live_and_its_exports_match_the_database(
        page, embedded_settings, start_server, start_worker):
    base = start_server(embedded_settings)
    page.goto(f"{base}/sweeps/new")
    page.wait_for_selector("#new-sweep[data-ready=true]")
    page.select_option("#s-dataset", "digits")
    page.check('#s-methods input[value="lower_bound"]')
    page.fill("#s-missing-rates", "0.5, 0.9")
    page.fill("#s-seeds", "0-1")
    page.fill("#s-epochs", "3")
    page.fill("#s-name", "browser sweep")
    count = page.locator("#sweep-count")
    wait_in_page(page, "document.getElementById('sweep-count').textContent === '8 runs will be created.'")
    assert page.text_content("#submit-sweep") == "Create 8 runs"

    # an invalid combination is named, with how many, before anything is created
    page.check('#s-methods input[value="zero_padding"]')
    page.check('#s-fusions input[value="outer"]')
    wait_in_page(page, "document.getElementById('sweep-count').textContent.startsWith('24 combinations')")
    assert "20 valid, 4 invalid" in count.text_content()  # zero_padding × outer × 2 rates × 2 seeds
    assert "not available for method 'zero_padding'" in page.text_content("#sweep-invalid")
    assert page.is_disabled("#submit-sweep")
    page.uncheck('#s-methods input[value="zero_padding"]')
    page.uncheck('#s-fusions input[value="outer"]')
    wait_in_page(page, "document.getElementById('sweep-count').textContent === '8 runs will be created.'")

    page.click("#submit-sweep")
    page.wait_for_url(re.compile(r".*/sweeps/\d+$"))
    sweep_id = int(page.url.rsplit("/", 1)[1])
    page.wait_for_selector("#sweep-page[data-drawn=true]")
    assert page.text_content("#sweep-name") == "browser sweep"
    start = page_state(page)
    assert (start["points"], start["cells"], start["succeeded"]) == (0, 0, 0)
    assert page.locator("#sweep-runs tbody tr").count() == 8
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    record_page_states(page)

    # the worker starts only now, so every result arrives while the page watches
    start_worker(embedded_settings)
    wait_in_page(page, "!!document.getElementById('sweep-page').dataset.streamEnded", timeout=240)
    seen = recorded_page_states(page)
    final = page_state(page)
    assert final["ended"] and final["succeeded"] == 8, final
    assert final["points"] == 4 and final["cells"] == 4  # 2 methods × 2 rates
    assert all(s["marker"] for s in seen + [final]), "the page reloaded"
    for key in ("points", "cells", "succeeded"):
        values = [s[key] for s in seen]
        assert values == sorted(values), f"{key} went backwards: {values}"
    # Every state the page drew was recorded; the runs end one at a time, seconds apart, on the one
    # worker, and the stream reads them every 0.1 s: the cells and points come in over several steps.
    assert len({s["points"] for s in seen}) >= 3, f"the trend did not gain points while runs finished: {seen}"
    assert len({s["cells"] for s in seen}) >= 3, f"the table did not gain cells while runs finished: {seen}"

    # the table and the trend are the database's numbers
    expected = database_cells(embedded_settings, sweep_id)
    table = shown_table(page)
    assert [row["label"] for row in table] == ["mle (add)", "lower_bound (add)"]
    for row in table:
        method = row["label"].split(" ")[0]
        for cell, rate in zip(row["cells"], [0.5, 0.9]):
            mean, std, n = expected[(method, "add", rate)]
            assert cell["column"] == f"bottom {rate * 100:g}%"
            assert cell["n"] == n == 2 and cell["mean"] == pytest.approx(mean, abs=1e-12)
            assert cell["text"] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    for i in range(2):
        best = max(expected[(m, "add", [0.5, 0.9][i])][0] for m in ("mle", "lower_bound"))
        assert [row["cells"][i]["best"] for row in table] == [
            expected[(m, "add", [0.5, 0.9][i])][0] == best for m in ("mle", "lower_bound")]
    trend = shown_trend(page, "bottom")
    assert [(t["name"], t["type"]) for t in trend] == [("mle (add)", "scatter"), ("lower_bound (add)", "scatter")]
    for trace in trend:
        method = trace["name"].split(" ")[0]
        assert trace["x"] == [0.5, 0.9] and trace["counts"] == [2, 2]
        assert trace["y"] == pytest.approx([expected[(method, "add", r)][0] for r in (0.5, 0.9)], abs=1e-12)
        assert trace["std"] == pytest.approx([expected[(method, "add", r)][1] for r in (0.5, 0.9)], abs=1e-12)

    # the exports hold the same numbers
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(download(page, "#export-csv")))}
    assert set(rows) == {"mle", "lower_bound"}
    for (method, _, rate), (mean, std, n) in expected.items():
        label = f"bottom {rate * 100:g}%"
        assert float(rows[method][f"{label} mean"]) == pytest.approx(100 * mean, abs=5e-5)
        assert float(rows[method][f"{label} std"]) == pytest.approx(100 * std, abs=5e-5)
        assert int(rows[method][f"{label} n"]) == n
    latex = download(page, "#export-latex")
    assert r"\begin{tabular}" in latex and r"\multicolumn{2}{c}{Bottom missing}" in latex
    for method, label in [("mle", "mle (add)"), ("lower_bound", r"lower\_bound (add)")]:
        [line] = [line for line in latex.splitlines() if line.startswith(label + " & ")]
        for cell, rate in zip(line.removesuffix(r" \\").split(" & ")[1:], [0.5, 0.9]):
            mean, std, _ = expected[(method, "add", rate)]
            cell = re.sub(r"\$\^\{\\\w+\}\$$", "", cell)  # a paired comparison's mark (see test_paired_table_...)
            assert re.sub(r"\\textbf\{(.*)\}", r"\1", cell) == f"{100 * mean:.2f} $\\pm$ {100 * std:.2f}"
    # SVG traces only: WebGL ones (scattergl) draw on gl-canvas elements, about 16 allowed per page
    assert page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(d => d.data)
                                  .filter(t => (t.type || 'scatter').endsWith('gl')).length""") == 0
    assert page.evaluate("document.querySelectorAll('canvas.gl-canvas').length") == 0
    assert page.js_errors == []


def test_the_sweep_page_reconnects_after_the_api_restarts(page, embedded_settings, start_server, start_worker):
    """The API process dies (SIGKILL) while the sweep page watches; the page says
    "reconnecting…", a new API comes up on the same address, the notice goes away by itself and
    the page follows the sweep to its end, every run's result shown, without reloading."""
    import os
    import signal

    server = start_server(embedded_settings)
    sweep = page.request.post(f"{server}/api/sweeps", data={
        "dataset": "digits", "method": ["mle", "lower_bound"], "fusion": "add", "missing_modality": "bottom",
        "missing_rate": 0.5, "seed": [0, 1], "epochs": 2, "name": "survives a restart"}).json()
    page.goto(f"{server}/sweeps/{sweep['id']}")
    page.wait_for_selector("#sweep-page[data-drawn=true]")
    assert page.locator("#sweep-runs tbody tr").count() == 4 and page_state(page)["succeeded"] == 0
    assert page.is_hidden("#live-status")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    os.killpg(server.process.popen.pid, signal.SIGKILL)
    server.process.popen.wait(10)
    page.wait_for_selector("#live-status", state="visible", timeout=30_000)
    assert page.text_content("#live-status") == "reconnecting…"
    assert page.get_attribute("body", "data-live") == "reconnecting"
    # The runs train while the API is away: the page learns of them only from the new API.
    start_worker(embedded_settings)
    start_server(embedded_settings, port=int(server.rsplit(":", 1)[1]))

    page.wait_for_selector("#live-status", state="hidden", timeout=60_000)
    wait_in_page(page, "!!document.getElementById('sweep-page').dataset.streamEnded", timeout=240)
    final = page_state(page)
    assert final["ended"] and final["succeeded"] == 4 and final["cells"] == 2, final
    assert final["marker"], "the page reloaded"
    assert page.get_attribute("body", "data-live") == "live"
    assert int(page.get_attribute("#sweep-page", "data-stream-connections")) >= 2
    assert page.js_errors == []


def test_compare_three_runs_chosen_in_the_runs_table(page, embedded_settings, client_for, start_server,
                                                     start_worker):
    start_worker(embedded_settings)
    base = start_server(embedded_settings)
    api = client_for(embedded_settings)
    specs = [{"method": "mle", "fusion": "add", "missing_rate": 0.9}, {"method": "lower_bound", "fusion": "add",
             "missing_rate": 0.9}, {"method": "zero_padding", "fusion": "concat", "missing_rate": 0.5}]
    ids = [api.post("/api/runs", json={"dataset": "digits", "missing_modality": "bottom", "epochs": 4, "seed": 3,
                                       **spec}).json()["id"] for spec in specs]
    api.post("/api/runs", json={"dataset": "digits", "method": "mle", "missing_modality": "top", "missing_rate": 0.5,
                                "epochs": 1, "name": "not chosen"})
    wait_for(lambda: all(api.get(f"/api/runs/{i}").json()["state"] == "succeeded" for i in ids), 180, 0.3,
             "the three runs to succeed")

    page.goto(base)
    page.wait_for_selector("#runs-table tbody tr")
    for run_id in ids:
        page.check(f'#runs-table tr[data-run-id="{run_id}"] input.select')
    assert page.text_content("#selection-info") == "3 selected"
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r".*/compare\?runs=[\d,]+$"))
    page.wait_for_selector("#compare-page[data-ready=true]")
    wait_in_page(page, "document.querySelectorAll('#confusion-grid .chart[data-ready=true]').length === 3")

    with session_factory(embedded_settings.database_url)() as session:
        runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)))}
        points = session.execute(select(MetricPoint.run_id, MetricPoint.name, MetricPoint.epoch, MetricPoint.value)
                                 .where(MetricPoint.run_id.in_(ids))).all()
        matrices = {m.run_id: m.counts for m in session.scalars(select(ConfusionMatrix))}
    # overlaid curves: one trace per run in each metric's chart, the database's points
    for metric in ("test_accuracy", "val_accuracy", "train_loss", "val_loss"):
        traces = page.evaluate(f"document.getElementById('chart-{metric}').data.map(t => [t.name, t.x, t.y])")
        assert len(traces) == 3
        for run_id in ids:
            [(_, x, y)] = [t for t in traces if t[0].startswith(f"#{run_id} ")]
            stored = sorted((p.epoch, p.value) for p in points if p.run_id == run_id and p.name == metric)
            assert list(zip(x, y)) == [tuple(p) for p in stored] and x == [1, 2, 3, 4]
    # only the fields that differ
    fields = page.eval_on_selector_all("#spec-diff tbody tr", "rows => rows.map(r => r.dataset.field)")
    assert sorted(fields) == ["fusion", "method", "missing_rate"]
    shown = page.eval_on_selector_all('#results-table tr[data-field="test accuracy"] td',
                                      "cells => cells.map(c => c.textContent)")
    assert shown == [f"{100 * runs[i].test_accuracy:.2f}%" for i in ids]
    # confusion matrices side by side: rows normalised, counts kept for the hover
    for run_id in ids:
        heatmap = page.evaluate(f"document.querySelector('#confusion-grid [data-run-id=\"{run_id}\"]').data[0]")
        assert heatmap["customdata"] == matrices[run_id]
        for row, counts in zip(heatmap["z"], matrices[run_id]):
            assert sum(row) == pytest.approx(1.0 if sum(counts) else 0.0)
    assert page.js_errors == []


def test_paper_preset_in_one_click_shows_the_papers_numbers_beside_ours(page, embedded_settings, start_server,
                                                                        start_worker):
    """Fig. 5 on digits. Its methods the training library lacks (if any) are named, and the
    available part created; what is expected follows the method catalogue of the day."""
    from backend.sweeps.paper import TABLE_1
    from backend.sweeps.presets import PRESETS
    from training.spec import METHODS

    methods = [m for m in PRESETS["fig5"].methods if m in METHODS]
    lacking = [m for m in PRESETS["fig5"].methods if m not in METHODS]
    start_worker(embedded_settings)
    base = start_server(embedded_settings)
    page.goto(f"{base}/sweeps/new")
    page.wait_for_selector("#preset-form[data-ready=true]")
    page.select_option("#p-preset", "fig5")
    page.select_option("#p-dataset", "digits")
    page.fill("#p-seeds", "1")
    page.fill("#p-epochs", "2")
    if lacking:
        wait_in_page(page, f"document.getElementById('preset-count').textContent.includes('{lacking[0]}')")
        assert page.is_disabled("#submit-preset")
        page.check("#p-only-available")
    count = f"{len(methods)} runs will be created."
    wait_in_page(page, f"document.getElementById('preset-count').textContent === '{count}'")
    assert all(m in page.text_content("#preset-notes") for m in lacking)
    page.click("#submit-preset")
    page.wait_for_url(re.compile(r".*/sweeps/\d+$"))
    page.wait_for_selector("#sweep-page[data-stream-ended=true]", timeout=180_000)
    wait_in_page(page, f"document.querySelectorAll('#confusion-grid .chart[data-ready=true]').length "
                           f"=== {len(methods)}")

    # Fig. 5 leads with its confusion matrices; the table carries the paper's Table 1 numbers
    tops = page.evaluate("['section-confusion', 'section-table'].map(id => "
                         "document.getElementById(id).getBoundingClientRect().top)")
    assert tops[0] < tops[1]
    reported = {m: TABLE_1.lookup(m, "add", None, "visual", 0.95) for m in methods}
    table = {row["label"]: row["cells"][0] for row in shown_table(page)}
    assert {label: cell["paper"] for label, cell in table.items()} == {
        f"{m} (add)": f"paper {reported[m]:.2f}" for m in methods}
    assert all(cell["column"] == "top (visual) 95%" and cell["n"] == 1 for cell in table.values())
    assert "compare the trends, not the values" in page.text_content("#paper-note")
    assert all(m in page.text_content("#paper-note") for m in lacking)  # what was left out is said
    paper_lines = [t for t in shown_trend(page, "top") if t["source"] == "paper"]
    assert [t["y"] for t in paper_lines] == [[pytest.approx(reported[m] / 100)] for m in methods]
    assert page.js_errors == []


def test_tag_note_retry_and_delete_from_the_pages(page, embedded_settings, client_for, start_server):
    """No worker: runs stay queued, and a failed one is written as the worker would fail it."""
    from tests.support import as_worker

    base = start_server(embedded_settings)
    api = client_for(embedded_settings)
    spec = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.9, "epochs": 1}
    kept, doomed, broken = (api.post("/api/runs", json={**spec, "seed": s, "name": n}).json()["id"]
                            for s, n in [(0, "kept"), (1, "doomed"), (2, "broken")])
    with session_factory(embedded_settings.database_url)() as session:
        as_worker.start_run(session, broken, "test")
        as_worker.fail_run(session, broken, "RuntimeError: out of memory", "Traceback …")

    # tags and a note on the run page; user text stays text
    page.goto(f"{base}/runs/{kept}")
    page.fill("#run-tags", "baseline, <b>bold</b>")
    page.fill("#run-note", "<img src=x onerror=alert(1)> check the dip")
    page.click("#save-annotations")
    wait_in_page(page, "document.getElementById('annotations-status').textContent === 'Saved.'")
    assert api.get(f"/api/runs/{kept}").json()["tags"] == ["<b>bold</b>", "baseline"]  # sorted
    page.fill("#run-tags", "a,,b, " + "x" * 60)
    page.click("#save-annotations")
    page.locator('[data-error-for="tags"]').wait_for(state="visible")
    assert "at most 50 characters" in page.text_content('[data-error-for="tags"]')
    page.goto(f"{base}/?tag=%3Cb%3Ebold%3C%2Fb%3E")
    page.wait_for_selector(f'#runs-table tr[data-run-id="{kept}"]')
    assert page.locator("#runs-table tbody tr").count() == 1
    assert page.text_content(f'#runs-table tr[data-run-id="{kept}"] .tag:nth-child(1)') == "<b>bold</b>"
    assert page.locator("#runs-table b").count() == 0

    # retry the failed run from its page
    page.goto(f"{base}/runs/{broken}")
    page.wait_for_selector("#retry-run:not([hidden])")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():  # the page reloads once the retry is accepted
        page.click("#retry-run")
    wait_in_page(page, "document.getElementById('run-state').textContent === 'queued'")
    assert api.get(f"/api/runs/{broken}").json()["error"] is None

    # delete from the runs table: a dismissed confirmation deletes nothing
    page.goto(base)
    page.wait_for_selector(f'#runs-table tr[data-run-id="{doomed}"]')
    page.check(f'#runs-table tr[data-run-id="{doomed}"] input.select')
    messages = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
    page.click("#delete-selected")
    assert messages and "Delete 1 run" in messages[0] and "still queued or running will be stopped" in messages[0]
    assert api.get(f"/api/runs/{doomed}").status_code == 200
    changes = []  # the selection is deleted in one request, not one per run
    page.on("request", lambda request: changes.append((request.method, request.url.split(base)[1]))
            if request.method != "GET" else None)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-selected")
    page.wait_for_selector(f'#runs-table tr[data-run-id="{doomed}"]', state="detached")
    assert changes == [("POST", "/api/runs/bulk-delete")]
    assert api.get(f"/api/runs/{doomed}").status_code == 404
    assert api.get(f"/api/runs/{kept}").status_code == 200
    assert page.js_errors == []


def finish_with_predictions(settings, run_id: int, seed: int, wrong: int, samples: int = 100) -> None:
    """A run that ends with `wrong` of `samples` test samples misclassified (the first ones),
    written through the worker's own service calls, test predictions included. Each seed has a
    test set of its own (another split), as in training."""
    from backend.runs import recording
    from tests.support import as_worker

    labels = [(i * (seed + 1)) % 10 for i in range(samples)]
    predicted = [(label + 1) % 10 if i < wrong else label for i, label in enumerate(labels)]
    confusion = [[0] * 10 for _ in range(10)]
    for label, guess in zip(labels, predicted):
        confusion[label][guess] += 1
    accuracy = 1 - wrong / samples
    with session_factory(settings.database_url)() as session:
        as_worker.start_run(session, run_id, "test")
        as_worker.record_epoch(session, run_id, 1, {"test_accuracy": accuracy, "val_accuracy": 0.5})
        recording.finish_run(session, run_id, cancelled=False, test_accuracy=accuracy, val_accuracy=0.5, best_epoch=1,
                         classes=[str(c) for c in range(10)], confusion=confusion, info={},
                         test_predictions=predicted, test_labels=labels)


def shown_paired(page) -> dict[tuple[str, str], dict]:
    """(row label, column) → what the sweep page shows of the cell's paired comparison."""
    cells = page.evaluate("""() => [...document.querySelectorAll('#sweep-table tbody tr')].flatMap(tr =>
        [...tr.querySelectorAll('td')].map(td => ({
            row: tr.querySelector('th').textContent, column: td.dataset.column,
            diff: td.dataset.diff === undefined ? null : Number(td.dataset.diff),
            wins: td.dataset.wins === undefined ? null : Number(td.dataset.wins),
            ties: td.dataset.ties === undefined ? null : Number(td.dataset.ties),
            losses: td.dataset.losses === undefined ? null : Number(td.dataset.losses),
            mark: td.dataset.mark || null,
            text: td.querySelector('.paired') ? td.querySelector('.paired').textContent : null})))""")
    return {(c["row"], c["column"]): c for c in cells}


def api_paired(table: dict) -> dict[tuple[str, str], dict]:
    out = {}
    for row in table["rows"]:
        for column, cell in zip(table["columns"], row["cells"]):
            p = cell["paired"]
            out[(row["label"], column["label"])] = {
                "diff": p["diff"] if p else None, "wins": p["wins"] if p else None, "ties": p["ties"] if p else None,
                "losses": p["losses"] if p else None,
                "mark": "reference" if cell["is_reference"] else (p["mark"] if p else None)}
    return out


def test_paired_table_shows_differences_wins_and_marks_that_match_the_api(page, embedded_settings, client_for,
                                                                          start_server):
    """3 methods × 2 rates × 5 seeds. Per seed, mle misses 3 test samples fewer than zero_padding
    (5 wins of 5), lower_bound 0–2 more (0 wins, 2 ties, 3 losses). Five seeds cannot make the
    exact seed-level test significant (p ≥ 1/16); McNemar over the 5 × 100 test samples makes
    mle's win significant after Holm's correction over the 4 comparisons."""
    base = start_server(embedded_settings)
    api = client_for(embedded_settings)
    sweep = api.post("/api/sweeps", json={
        "dataset": "digits", "method": ["mle", "zero_padding", "lower_bound"], "fusion": "add",
        "missing_modality": "bottom", "missing_rate": [0.9, 0.95], "seed": [0, 1, 2, 3, 4], "epochs": 2}).json()
    runs = api.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    extra = [0, 2, 0, 2, 1]  # lower_bound's misses beyond zero_padding's, per seed
    for run in runs:
        zero_padding = 10 + run["seed"]
        wrong = {"mle": zero_padding - 3, "zero_padding": zero_padding,
                 "lower_bound": zero_padding + extra[run["seed"]]}[run["method"]]
        finish_with_predictions(embedded_settings, run["id"], run["seed"], wrong)

    page.goto(f"{base}/sweeps/{sweep['id']}")
    page.wait_for_selector("#sweep-page[data-drawn=true]")
    table = api.get(f"/api/sweeps/{sweep['id']}/table").json()
    assert table["comparison"]["references"] == ["zero_padding (add)"] * 2
    shown = shown_paired(page)
    expected = api_paired(table)
    assert {k: {f: v[f] for f in ("diff", "wins", "ties", "losses", "mark")} for k, v in shown.items()} == expected
    mle = shown[("mle (add)", "bottom 90%")]
    assert mle["diff"] == pytest.approx(0.03) and (mle["wins"], mle["ties"], mle["losses"]) == (5, 0, 0)
    assert mle["text"].startswith("Δ +3.00 [+3.0, +3.0] 5/0/0") and mle["mark"] is None
    lower = shown[("lower_bound (add)", "bottom 95%")]
    assert (lower["wins"], lower["ties"], lower["losses"]) == (0, 2, 3) and lower["diff"] == pytest.approx(-0.01)
    assert shown[("zero_padding (add)", "bottom 90%")]["text"] == "reference"
    note = page.text_content("#paired-note")
    assert "With 5 seeds, no seed-level test can reach significance" in note
    assert "at least 0.0625" in note and "needs 6 seeds or more" in note
    assert note == table["comparison"]["note"]

    # significance from the test samples: mle's wins are marked, lower_bound's losses are not
    page.select_option("#paired-test", "samples")
    wait_in_page(page, "document.querySelectorAll('#sweep-table td[data-mark=win]').length === 2")
    by_samples = api.get(f"/api/sweeps/{sweep['id']}/table", params={"test": "samples"}).json()
    shown = shown_paired(page)
    assert {k: {f: v[f] for f in ("diff", "wins", "ties", "losses", "mark")} for k, v in shown.items()} == \
        api_paired(by_samples)
    marks = {key: cell["mark"] for key, cell in shown.items()}
    assert marks[("mle (add)", "bottom 90%")] == marks[("mle (add)", "bottom 95%")] == "win"
    assert marks[("lower_bound (add)", "bottom 90%")] is None
    mle_cell = by_samples["rows"][0]["cells"][0]["paired"]
    assert mle_cell["discordant"] == [0, 15] and mle_cell["p_value"] == pytest.approx(2 * 0.5**15)
    assert mle_cell["p_adjusted"] == pytest.approx(4 * 2 * 0.5**15) and mle_cell["significant"]
    assert "▲" in shown[("mle (add)", "bottom 90%")]["text"]
    # the trend marks the same points
    wait_in_page(page, "(document.querySelector('#trend-charts .chart').data || []).some(t => "
                       "Array.isArray(t.marker.symbol) && t.marker.symbol.includes('triangle-up'))")
    symbols = page.evaluate("Object.fromEntries(document.querySelector('#trend-charts .chart').data"
                            ".map(t => [t.name, t.marker.symbol]))")
    assert symbols == {"mle (add)": ["triangle-up", "triangle-up"], "zero_padding (add)": ["circle-open"] * 2,
                       "lower_bound (add)": ["circle", "circle"]}

    # the LaTeX export carries the marks of what the page shows
    latex = download(page, "#export-latex")
    lines = {line.split(" & ")[0]: line for line in latex.splitlines() if " & " in line}
    assert lines["mle (add)"].count(r"$^{\uparrow}$") == 2
    assert lines[r"zero\_padding (add)"].count(r"$^{\dagger}$") == 2
    assert r"\uparrow" not in lines[r"lower\_bound (add)"] and r"\downarrow" not in lines[r"lower\_bound (add)"]
    assert "McNemar" in latex and "Holm-adjusted" in latex
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(download(page, "#export-csv")))}
    assert rows["mle"]["bottom 90% significant"] == "win" and rows["mle"]["bottom 90% test"] == "samples"

    # another reference: mle; now zero_padding and lower_bound lose to it, significantly
    page.select_option("#paired-reference", "mle (add)")
    wait_in_page(page, "document.querySelectorAll('#sweep-table td[data-mark=loss]').length === 4")
    assert page.get_attribute('#sweep-table tr:first-child td[data-column="bottom 90%"]', "data-mark") == "reference"

    # the compare page: two runs of seed 0 side by side, one of another seed not comparable
    by_key = {(r["method"], r["missing_rate"], r["seed"]): r["id"] for r in runs}
    ids = [by_key[("zero_padding", 0.9, 0)], by_key[("mle", 0.9, 0)], by_key[("lower_bound", 0.9, 1)]]
    page.goto(f"{base}/compare?runs={','.join(map(str, ids))}")
    page.wait_for_selector("#compare-page[data-ready=true]")
    paired = page.eval_on_selector_all('#results-table tr[data-field="vs the first run, paired"] td',
                                       "cells => cells.map(c => c.textContent)")
    assert paired[0] == "reference"
    assert paired[1].startswith("+3.00 points on 100 samples (discordant 0 vs 3), McNemar p 0.25")
    assert paired[2].startswith("not comparable: not the same test set")
    assert page.js_errors == []
