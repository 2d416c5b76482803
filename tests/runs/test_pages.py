"""A real Chromium drives the dashboard served by a real uvicorn process, with a real Celery
worker training behind it (embedded default: SQLite + filesystem broker)."""

from __future__ import annotations

import re

import pytest

from tests.support import wait_for, wait_in_page

pytestmark = pytest.mark.browser

EPOCHS = 1000  # a digits epoch takes milliseconds: enough of them to watch the curve grow


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


def record_curve_states(page) -> None:
    """Keep, in the page, every distinct (state, val_accuracy points) it shows, read at every
    animation frame: none is missed however busy the machine, as sampling from the test every
    so often would."""
    page.evaluate("""() => {
        window.__curveStates = [];
        const record = () => {
            const trace = (document.getElementById('chart-accuracy').data || []).find(t => t.name === 'val_accuracy');
            const now = [document.getElementById('run-state').textContent, trace ? trace.x.length : 0];
            const last = window.__curveStates[window.__curveStates.length - 1];
            if (!last || last[0] !== now[0] || last[1] !== now[1]) window.__curveStates.push(now);
            requestAnimationFrame(record);
        };
        record();
    }""")


def recorded_curve_states(page) -> list[tuple[str, int]]:
    return [tuple(state) for state in page.evaluate("window.__curveStates")]


def watch_it_grow_then_end(page, run_id: int, epochs: int) -> tuple[str, int, list[tuple[str, int]]]:
    """Wait until the page has drawn the curve partly grown three times while the run trains
    (or the run has ended), then stop the run if it still trains, and wait for its stream's end:
    a 1,000-epoch digits run takes seconds on a quiet machine and many minutes on a loaded one,
    so the test waits for what it checks, not for a run length. Returns the run's final state,
    its epochs completed and the page's recorded states."""
    wait_in_page(page, f"""(() => {{
        const partial = new Set(window.__curveStates.filter(([state, n]) => state === 'running' && n > 0 && n < {epochs})
                                                       .map(([, n]) => n));
        return partial.size >= 3 || document.getElementById('run-page').dataset.streamEnded === 'true';
    }})()""", timeout=600)
    api = page.url.split("/runs/")[0] + f"/api/runs/{run_id}"
    if not page.get_attribute("#run-page", "data-stream-ended"):
        # Through the API, not the page's button: its confirm() dialog would hold the main thread.
        assert page.request.post(f"{api}/cancel").ok
    wait_in_page(page, "document.getElementById('run-page').dataset.streamEnded === 'true'", timeout=180)
    run = page.request.get(api).json()
    return run["state"], run["epochs_completed"], recorded_curve_states(page)


def test_submit_watch_the_curve_grow_then_the_confusion_matrix(page, embedded_settings, start_server, start_worker):
    # The worker starts once the run's page is up and has drawn its (empty) history: a run that
    # trains in a few seconds could otherwise end before a slow page load, with nothing to watch.
    dashboard = start_server(embedded_settings)
    fill_run_form(page, dashboard, missing_rate="0.9", epochs=EPOCHS)
    page.click("#submit-run")
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    assert page.text_content("#run-name") == "browser run"
    page.wait_for_selector("#run-page[data-history-loaded=true]")
    assert "not recorded yet" in page.text_content("#run-environment")
    record_curve_states(page)
    start_worker(embedded_settings)
    run_id = int(page.url.rsplit("/", 1)[1])
    final_state, epochs_completed, seen = watch_it_grow_then_end(page, run_id, EPOCHS)
    state, final_count = accuracy_points(page)
    assert state == final_state and state in ("succeeded", "cancelled"), page.text_content("#run-error")
    assert final_count == epochs_completed > 0  # every epoch drawn once: none lost, none twice
    counts = [count for _, count in seen]
    assert counts == sorted(counts), "points were removed from the curve"
    growing_while_running = sorted({count for state, count in seen if state == "running" and 0 < count < EPOCHS})
    # The page draws what the stream brought once per animation frame, so a fast run's curve is
    # seen partly drawn several times while it trains (recorded in the page, at every frame).
    assert len(growing_while_running) >= 3, \
        f"the curve did not visibly grow while training: {growing_while_running}; seen (state, points): {seen}"

    page.wait_for_selector("#chart-confusion[data-ready=true]", timeout=30_000)
    heatmap = page.evaluate("() => document.getElementById('chart-confusion').data[0]")
    assert heatmap["type"] == "heatmap" and len(heatmap["z"]) == 10 and len(heatmap["z"][0]) == 10
    assert sum(map(sum, heatmap["text"])) > 0  # counts
    assert " samples (" in heatmap["hovertemplate"]  # digits has no groups: a count is a test sample
    assert "%" in page.text_content("#run-test-accuracy")
    assert page.is_hidden("#cancel-run")
    # The reproducibility record arrived with the run's updates, without a reload.
    environment = page.text_content("#run-environment")
    assert "not recorded" not in environment and "Python" in environment and "Method plugin" in environment
    assert page.js_errors == []

    page.goto(dashboard)
    page.wait_for_selector("#runs-table tbody tr")
    assert page.text_content("#runs-table tbody tr td:nth-child(2)") == "browser run"
    assert page.text_content("#runs-table tbody tr .state") == state


def test_no_long_task_while_a_fast_run_streams(page, embedded_settings, start_server, start_worker):
    """A fast digits run (an epoch in milliseconds) streams to its page: the page's main thread
    never runs a task over 200 ms meanwhile (PerformanceObserver "longtask", from its history
    drawn, before training starts, until the stream ends): the stream's batches are drawn once
    per animation frame."""
    dashboard = start_server(embedded_settings)
    run = page.request.post(f"{dashboard}/api/runs", data={
        "dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": EPOCHS, "name": "long tasks"}).json()
    page.goto(f"{dashboard}/runs/{run['id']}")
    page.wait_for_selector("#run-page[data-history-loaded=true]")
    page.evaluate("""() => {
        window.__longTasks = [];
        new PerformanceObserver((list) => {
            for (const entry of list.getEntries()) window.__longTasks.push([entry.startTime, entry.duration]);
        }).observe({type: 'longtask'});
    }""")
    record_curve_states(page)
    start_worker(embedded_settings)
    state, epochs_completed, seen = watch_it_grow_then_end(page, run["id"], EPOCHS)
    assert tuple(accuracy_points(page)) == (state, epochs_completed), page.text_content("#run-error")
    streaming = {count for state, count in seen if state == "running" and 0 < count < EPOCHS}
    assert len(streaming) >= 3, f"the page did not see the run stream: nothing was tested; {seen}"
    long_tasks = page.evaluate("window.__longTasks")
    assert [duration for _, duration in long_tasks if duration > 200] == [], long_tasks
    assert page.js_errors == []


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


def test_the_form_offers_every_selection_rule_and_the_run_records_the_one_chosen(page, embedded_settings,
                                                                                 start_server):
    base = start_server(embedded_settings)  # no worker: the run stays queued with its spec
    fill_run_form(page, base, missing_rate="0.9", epochs=3)
    rules = page.eval_on_selector_all("#f-selection-rule option", "options => options.map(o => o.value)")
    assert rules == ["val_accuracy_earliest", "val_accuracy_latest", "val_loss", "last_epoch"]
    assert page.input_value("#f-selection-rule") == "val_accuracy_earliest"  # the default, first
    page.select_option("#f-selection-rule", "last_epoch")
    page.click("#submit-run")
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    run_id = page.url.rsplit("/", 1)[1]
    spec = page.evaluate(f"fetch('/api/runs/{run_id}').then((r) => r.json()).then((r) => r.spec)")
    assert spec["selection_rule"] == "last_epoch" and spec["missing_rate"] == 0.9
    assert page.js_errors == []


def test_the_page_picks_up_the_live_stream_after_the_api_restarts(page, embedded_settings, start_server,
                                                                  start_worker):
    """The API process dies (SIGKILL) while a run trains and the page watches; a new API comes
    up on the same address. The worker never noticed; the page reconnects from its cursor and
    ends with every epoch drawn exactly once."""
    import os
    import signal

    from .test_faults import FAST

    epochs = 60
    start_worker(embedded_settings)
    server = start_server(embedded_settings)
    run = page.request.post(f"{server}/api/runs", data={**FAST, "epochs": epochs, "name": "survives a restart"}).json()
    page.goto(f"{server}/runs/{run['id']}")
    wait_in_page(page, "(document.getElementById('chart-accuracy').data || [])"
                       ".some(t => t.name === 'val_accuracy' && t.x.length >= 3)", timeout=600)
    record_curve_states(page)
    os.killpg(server.process.popen.pid, signal.SIGKILL)
    server.process.popen.wait(10)
    drawn_while_down = accuracy_points(page)[1]
    page.wait_for_selector("#live-status", state="visible", timeout=30_000)  # the page says so
    start_server(embedded_settings, port=int(server.rsplit(":", 1)[1]))

    # However long the rest of the run takes on this machine: its stream's end.
    wait_in_page(page, "document.getElementById('run-page').dataset.streamEnded === 'true'", timeout=600)
    state, final_count = accuracy_points(page)
    assert state == "succeeded", page.text_content("#run-error")
    assert drawn_while_down < epochs, "the run ended before the API went down: nothing was tested"
    assert final_count == epochs  # no gap, no point drawn twice
    counts = [count for _, count in recorded_curve_states(page)]
    assert counts == sorted(counts)
    assert page.is_hidden("#live-status")  # and the notice went away by itself
    assert int(page.get_attribute("#run-page", "data-stream-connections")) >= 2
    x = page.evaluate("() => document.getElementById('chart-accuracy').data.find(t => t.name === 'val_accuracy').x")
    assert x == list(range(1, epochs + 1))
    assert page.js_errors == []


def test_user_text_is_shown_as_text_never_run(page, embedded_settings, start_server):
    """A run named like a script (or markup that runs one) is shown verbatim in the runs list,
    on the run page and in its title; nothing runs, no element is injected."""
    name = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    server = start_server(embedded_settings)
    run = page.request.post(f"{server}/api/runs", data={"dataset": "digits", "method": "mle", "missing_modality": "bottom",
                                                   "missing_rate": 0.5, "epochs": 1, "name": name}).json()
    dialogs, violations = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda message: "Content-Security-Policy" in message.text and violations.append(message.text))

    page.goto(server)
    page.wait_for_selector("#runs-table tbody tr")
    assert page.text_content("#runs-table tbody tr td:nth-child(2)") == name
    page.goto(f"{server}/runs/{run['id']}")
    page.wait_for_selector("#run-state")
    assert page.text_content("#run-name") == name
    assert page.title().startswith(name)
    # Everything the page shows of the run is drawn once its history is and its live stream is
    # open (the stream's first run event included): text made into markup would be elements by then.
    wait_in_page(page, "document.getElementById('run-page').dataset.historyLoaded === 'true' && "
                       "Number(document.getElementById('run-page').dataset.streamConnections) >= 1")
    wait_in_page(page, "document.getElementById('run-progress').textContent === 'epoch 0 of 1'")
    assert dialogs == []
    assert page.evaluate("() => document.querySelectorAll('main script, main img[src=x]').length") == 0
    assert page.js_errors == [] and violations == []


def test_a_run_submitted_while_the_broker_is_down_shows_waiting_for_the_broker(page, tmp_path, start_server):
    """The form's POST answers 202; the run page and the runs table say it waits for the broker."""
    from backend.migrate import upgrade
    from backend.settings import Settings

    settings = Settings(var_dir=tmp_path / "down", broker_url="redis://127.0.0.1:9/0", stream_poll_interval=0.1)
    settings.make_dirs()
    upgrade(settings.database_url)
    base_url = start_server(settings)
    fill_run_form(page, base_url, missing_rate="0.5", epochs=2)
    page.click("#submit-run")
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    page.wait_for_selector("#run-state[data-state=awaiting-broker]")
    assert page.text_content("#run-state") == "waiting for the broker"
    wait_for(lambda: "waiting for the broker" in page.text_content("#run-progress"), 30,
             what="the live run to say it waits for the broker")
    page.goto(f"{base_url}/")
    page.wait_for_selector("td .state[data-state=awaiting-broker]")
    assert page.js_errors == []


def test_a_step_series_that_grows_past_8000_points_is_redrawn_with_webgl(page, embedded_settings, start_server):
    """The README: charts are SVG; on the run page a series longer than 8,000 points switches to
    WebGL (scattergl). Points written as a worker writes them, while the page watches."""
    from backend.db import session_factory
    from backend.runs import recording
    from backend.runs.ingest import Point
    from tests.support import as_worker

    server = start_server(embedded_settings)
    run_id = page.request.post(f"{server}/api/runs", data={
        "dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}).json()["id"]
    sessions = session_factory(embedded_settings.database_url)

    def write(steps: range) -> None:
        points = [Point(1, step, name, 1.0 / step) for step in steps for name in ("step/train_loss", "step/lr")
                  if name == "step/train_loss" or step <= 100]
        with sessions() as session:
            recording.record_batch(session, run_id, points, "test")

    with sessions() as session:
        assert as_worker.start_run(session, run_id, "test") is not None  # running, as on a worker
    write(range(1, 101))
    page.goto(f"{server}/runs/{run_id}")
    page.wait_for_selector("#run-page[data-history-loaded=true]")
    traces = """(name) => {
        const div = [...document.querySelectorAll('.js-plotly-plot')].find(d => (d.data || []).some(t => t.name === name));
        const trace = div.data.find(t => t.name === name);
        return [trace.type || 'scatter', trace.x.length];
    }"""
    assert page.evaluate(traces, "step/train_loss") == ["scatter", 100]
    for start in range(101, 8101, 2000):  # 8,000 more, in batches, as a worker flushes them
        write(range(start, start + 2000))
    wait_in_page(page, "(() => { const t = document.getElementById('chart-loss').data"
                       ".find(t => t.name === 'step/train_loss'); return t.x.length === 8100; })()", timeout=60)
    assert page.evaluate(traces, "step/train_loss") == ["scattergl", 8100]
    assert page.evaluate(traces, "step/lr") == ["scatter", 100]  # the short series stays SVG
    assert page.js_errors == []
