"""Names in charts are text (issue 20): Plotly renders a subset of HTML in trace names, titles,
tick labels and hover text — `<a href>` links among it — and run, metric and class names come
from users and data files. In a real Chromium against a real API: the compare page (curves per
run, confusion matrices with their classes) and the run page (a trace per metric)."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from tests.support import wait_in_page

pytestmark = pytest.mark.browser

LINK = '<a href="https://evil.example/">click</a>'
RUN_NAME = f'{LINK} <b>bold</b> 100%{{y}} & more'
METRIC = '<a href="https://evil.example/">m</a><br>'
CLASSES = ['<a href="https://evil.example/">cat</a>', "<b>dog</b>"]

# Everything Plotly drew on the page: links it made, bold or italic it rendered, and its texts.
DRAWN = """() => {
    const plots = [...document.querySelectorAll('.js-plotly-plot')];
    const texts = plots.flatMap(p => [...p.querySelectorAll('text')].map(t => t.textContent));
    return {plots: plots.length,
            links: plots.reduce((n, p) => n + p.querySelectorAll('a').length, 0),
            styled: plots.reduce((n, p) => n + p.querySelectorAll('tspan[style*="bold"], tspan[style*="italic"]').length, 0),
            texts};
}"""


def external(name: str, accuracy: float) -> dict:
    return {"dataset": "digits", "method": "theirs", "missing_modality": "bottom", "missing_rate": 0.5, "name": name,
            "test_accuracy": accuracy,
            "metrics": [{"epoch": e, "name": n, "value": v} for e in (1, 2)
                        for n, v in (("test_accuracy", accuracy), ("train_loss", 1.0 / e), (METRIC, 0.5 * e))],
            "confusion": {"classes": CLASSES, "counts": [[3, 1], [0, 4]]}}


def test_names_reach_the_charts_as_text(page, embedded_settings, start_server):
    base = start_server(embedded_settings)
    with httpx.Client(base_url=base, timeout=60) as client:
        ids = [client.post("/api/runs/external", json=external(RUN_NAME, a)).json()["id"] for a in (0.6, 0.8)]

    page.goto(f"{base}/compare?runs={','.join(map(str, ids))}")
    page.wait_for_selector("#compare-page[data-ready=true]")
    wait_in_page(page, "document.querySelectorAll('#confusion-grid .chart[data-ready=true]').length === 2")
    page.evaluate("() => missmodCharts.load()")
    wait_in_page(page, "document.querySelectorAll('#charts .chart[data-ready=true], .chart[data-ready=true]').length >= 6")
    drawn = page.evaluate(DRAWN)
    assert drawn["plots"] >= 4 and drawn["links"] == 0 and drawn["styled"] == 0, drawn
    assert f"#{ids[0]} {RUN_NAME}" in drawn["texts"]  # the legend shows the name as it is
    assert set(CLASSES) <= set(drawn["texts"])  # so do the confusion matrices' tick labels
    assert any(RUN_NAME in text for text in drawn["texts"] if text.startswith(f"#{ids[0]}")), drawn["texts"]

    page.goto(f"{base}/runs/{ids[0]}")
    wait_in_page(page, "document.getElementById('run-page').dataset.historyLoaded === 'true'")
    wait_in_page(page, "[...document.querySelectorAll('.js-plotly-plot')].some(p => p.querySelector('.legendtext'))")
    drawn = page.evaluate(DRAWN)
    assert drawn["links"] == 0 and drawn["styled"] == 0, drawn
    assert METRIC in drawn["texts"], drawn["texts"]
    assert page.js_errors == []
