"""A real Chromium drives the dashboard served by a real uvicorn process, with a real Celery
worker training behind it (embedded default: SQLite + filesystem broker)."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.browser

EPOCHS = 150


@pytest.fixture
def dashboard(embedded_settings, start_server, start_worker):
    start_worker(embedded_settings)
    return start_server(embedded_settings)


def fill_run_form(page, base_url: str, *, missing_rate: str, epochs: int) -> None:
    page.goto(f"{base_url}/runs/new")
    page.wait_for_selector("#new-run[data-ready=true]")
    page.select_option("#f-dataset", "digits")
    page.select_option("#f-method", "mle")
    page.select_option("#f-fusion", "add")
    page.select_option("#f-missing-modality", "bottom")
    page.fill("#f-missing-rate", missing_rate)
    page.fill("#f-epochs", str(epochs))
    page.fill("#f-name", "browser run")


def accuracy_points(page) -> tuple[str, int]:
    return page.evaluate("""() => {
        const trace = (document.getElementById('chart-accuracy').data || []).find(t => t.name === 'val_accuracy');
        return [document.getElementById('run-state').textContent, trace ? trace.x.length : 0];
    }""")


def test_submit_watch_the_curve_grow_then_the_confusion_matrix(page, dashboard):
    fill_run_form(page, dashboard, missing_rate="0.9", epochs=EPOCHS)
    page.click("#submit-run")
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    assert page.text_content("#run-name") == "browser run"

    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen.append(accuracy_points(page))
        if seen[-1][0] in ("succeeded", "failed", "cancelled") and page.get_attribute("#run-page", "data-stream-ended"):
            break
        time.sleep(0.05)
    state, final_count = seen[-1]
    assert state == "succeeded", page.text_content("#run-error")
    assert final_count == EPOCHS
    counts = [count for _, count in seen]
    assert counts == sorted(counts), "points were removed from the curve"
    growing_while_running = sorted({count for state, count in seen if state == "running" and 0 < count < EPOCHS})
    assert len(growing_while_running) >= 3, f"the curve did not visibly grow while training: {growing_while_running}"

    page.wait_for_selector("#chart-confusion[data-ready=true]", timeout=30_000)
    heatmap = page.evaluate("() => document.getElementById('chart-confusion').data[0]")
    assert heatmap["type"] == "heatmap" and len(heatmap["z"]) == 10 and len(heatmap["z"][0]) == 10
    assert sum(map(sum, heatmap["text"])) > 0  # counts
    assert "%" in page.text_content("#run-test-accuracy")
    assert page.is_hidden("#cancel-run")
    assert page.js_errors == []

    page.goto(dashboard)
    page.wait_for_selector("#runs-table tbody tr")
    assert page.text_content("#runs-table tbody tr td:nth-child(2)") == "browser run"
    assert page.text_content("#runs-table tbody tr .state") == "succeeded"


def test_form_shows_the_server_error_next_to_the_field(page, dashboard):
    fill_run_form(page, dashboard, missing_rate="1.5", epochs=3)
    page.click("#submit-run")
    error = page.locator('[data-error-for="missing_rate"]')
    error.wait_for(state="visible")
    assert "less than 1" in error.text_content()
    assert page.get_attribute("#f-missing-rate", "aria-invalid") == "true"
    assert page.url.endswith("/runs/new")
    # correcting the field clears the error and submits
    page.fill("#f-missing-rate", "0.5")
    page.click("#submit-run")
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    assert page.js_errors == []


def test_fusions_follow_the_method(page, dashboard):
    page.goto(f"{dashboard}/runs/new")
    page.wait_for_selector("#new-run[data-ready=true]")
    page.select_option("#f-method", "zero_padding")
    fusions = page.eval_on_selector_all("#f-fusion option", "options => options.map(o => o.value)")
    assert fusions == ["add", "concat"]
    page.select_option("#f-dataset", "synthetic")
    modalities = page.eval_on_selector_all("#f-missing-modality option", "options => options.map(o => o.value)")
    assert modalities == ["x", "y"]
