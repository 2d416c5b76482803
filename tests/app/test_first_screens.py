"""The first screens a newcomer sees, in a real Chromium against a real server (and, once the
empty pages are seen, a real worker): a fresh install's runs, sweeps and workers pages say how
to start and what they will show, a run started from a script appears by itself, and the run
page's learning-rate chart has a scale of its own (linear around a constant rate, logarithmic
where the rate spans decades) with samples/s on its own axis."""

from __future__ import annotations

import math

import pytest

from tests.support import wait_in_page

pytestmark = pytest.mark.browser

AXES = """() => {
    const layout = document.getElementById('chart-rate')._fullLayout;
    const traces = document.getElementById('chart-rate').data || [];
    return {lr: {type: layout.yaxis.type, range: layout.yaxis.range},
            speed: {side: layout.yaxis2 && layout.yaxis2.side, overlaying: layout.yaxis2 && layout.yaxis2.overlaying},
            traces: Object.fromEntries(traces.map(t => [t.name, {yaxis: t.yaxis || 'y', n: t.y.length}]))};
}"""


def visible_text(page, selector: str) -> str:
    page.wait_for_selector(selector, state="visible")
    return " ".join(page.text_content(selector).split())


def test_a_fresh_install_says_how_to_start_then_the_rate_chart_spans_the_learning_rate(
        page, embedded_settings, start_server, start_worker):
    server = start_server(embedded_settings)

    # Runs: no empty table and pager, but the two ways to start, one line each.
    page.goto(server)
    start = visible_text(page, "#runs-start")
    assert "New run" in start and "Reproduce the paper" in start
    assert page.get_attribute("#runs-start a.primary", "href") == "/runs/new"
    assert page.get_attribute("#runs-start a:not(.primary)", "href") == "/sweeps/new#preset-form"
    assert page.is_hidden("#runs-list") and page.is_hidden("#runs-table")
    runs_page = page

    # Sweeps and workers: what they will show, and how to fill them.
    other = page.context.new_page()
    other_errors: list[str] = []
    other.on("pageerror", lambda error: other_errors.append(str(error)))
    other.goto(f"{server}/sweeps")
    sweeps = visible_text(other, "#sweeps-empty")
    assert "grid of runs" in sweeps and "New sweep" in sweeps and other.is_hidden("#sweeps-table")
    other.goto(f"{server}/workers")
    workers = visible_text(other, "#workers-empty")
    assert "slots" in workers and "make worker" in workers and other.is_hidden("#workers-table")
    # A filter that matches nothing is not a fresh install: it says so, with the table's headings.
    other.goto(f"{server}/?state=failed")
    page_text = visible_text(other, "#runs-empty")
    assert page_text.startswith("No runs match") and other.is_hidden("#runs-start")

    # A run from a script: the open runs page shows it by itself; its page is up before the
    # worker starts, so it draws the rate chart live.
    created = page.request.post(f"{server}/api/runs", data={
        "dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.9, "epochs": 3,
        "lr": 0.001, "log_every_steps": 2})
    assert created.status == 201, created.text()
    run_id = created.json()["id"]
    runs_page.wait_for_selector(f"#runs-table tbody tr[data-run-id='{run_id}']", state="visible")
    assert runs_page.is_hidden("#runs-start")

    other.goto(f"{server}/runs/{run_id}")
    other.wait_for_selector("#run-page[data-history-loaded=true]")
    start_worker(embedded_settings)
    wait_in_page(other, "document.getElementById('run-page').dataset.streamEnded === 'true'", timeout=180)
    axes = other.evaluate(AXES)
    assert axes["traces"]["step/lr"]["yaxis"] == "y" and axes["traces"]["step/lr"]["n"] > 0
    low, high = axes["lr"]["range"]
    assert axes["lr"]["type"] == "linear" and 0 <= low < 0.001 < high < 0.01, axes  # not −1…1 with a line at 0
    assert axes["traces"]["step/samples_per_second"]["yaxis"] == "y2"
    assert axes["speed"] == {"side": "right", "overlaying": "y"}

    # A rate that decays over decades (a run logged from another loop): a logarithmic axis.
    decaying = page.request.post(f"{server}/api/runs/external", data={
        "dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.9,
        "metrics": [{"epoch": epoch, "name": "step/lr", "value": 10.0 ** -epoch} for epoch in range(1, 5)]})
    assert decaying.status == 201, decaying.text()
    other.goto(f"{server}/runs/{decaying.json()['id']}")
    other.wait_for_selector("#run-page[data-history-loaded=true]")
    wait_in_page(other, "(document.getElementById('chart-rate').data || []).length > 0")
    axes = other.evaluate(AXES)
    low, high = axes["lr"]["range"]
    assert axes["lr"]["type"] == "log" and low <= math.log10(1e-4) and high >= math.log10(0.1), axes
    assert page.js_errors == [] and other_errors == []
