"""Inside an epoch, in a real Chromium: a small-CNN run on generated video clips (a real worker
process preprocesses and trains them) shows its per-step loss moving and its progress (step k of
n, samples/s, ETA of the epoch and of the run) before its first epoch ends."""

from __future__ import annotations

import time

import pytest

from tests.support.videos import ravdess_tree

pytestmark = pytest.mark.browser

PAGE_STATE = """() => {
    const loss = (document.getElementById('chart-loss').data || []).find(t => t.name === 'step/train_loss');
    const box = document.getElementById('run-step-progress');
    return {
        loss: loss ? Array.from(loss.y) : [],
        x: loss ? Array.from(loss.x) : [],
        progressShown: !box.hidden,
        step: document.getElementById('run-step').textContent,
        speed: document.getElementById('run-speed').textContent,
        etaEpoch: document.getElementById('run-eta-epoch').textContent,
        etaRun: document.getElementById('run-eta-run').textContent,
        state: document.getElementById('run-state').textContent,
        stepsPerEpoch: Number(document.getElementById('run-page').dataset.stepsPerEpoch) || null,
    };
}"""


def test_a_small_cnn_run_shows_its_loss_moving_within_its_first_epoch(page, embedded_settings, start_server,
                                                                      start_worker, monkeypatch):
    embedded_settings.video_frame_size = 32
    embedded_settings.preprocess_workers = 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the worker: one torch thread for tiny convolutions
    ravdess_tree(embedded_settings.ravdess_dir, actors=range(1, 7))  # 36 clips, 1,080 segments
    server = start_server(embedded_settings)
    spec = {"dataset": "ravdess", "method": "mle", "fusion": "add", "missing_modality": "visual", "missing_rate": 0.5,
            "epochs": 2, "seed": 0, "encoder": "small_cnn", "batch_size": 4, "lr": 0.003, "log_every_steps": 2}
    # Batches of 4: ~180 steps an epoch, seconds even on a fast machine, so several batches of
    # points land within the first epoch.
    created = page.request.post(f"{server}/api/runs", data=spec)
    assert created.status == 201, created.text()
    run_id = created.json()["id"]
    page.goto(f"{server}/runs/{run_id}")
    # The page is ready (history drawn, stream open) before the worker starts: it watches from the start.
    page.wait_for_function("() => document.getElementById('run-page').dataset.historyLoaded === 'true'")
    start_worker(embedded_settings)

    within_first_epoch, seen, run, trace = None, None, None, []
    deadline = time.monotonic() + 600  # preprocessing the clips comes first
    while within_first_epoch is None:
        assert time.monotonic() < deadline, f"the loss never moved on the page during the first epoch: {seen}, {run}"
        assert page.js_errors == []
        seen = page.evaluate(PAGE_STATE)
        run = page.request.get(f"{server}/api/runs/{run_id}").json()  # read after the page: still epoch 1 then
        trace.append((run["state"], run["epochs_completed"], len(seen["loss"]), seen["progressShown"], seen["x"][:3]))
        assert run["state"] in ("queued", "running"), trace[-25:]
        # The page places the step points on the epoch axis once it knows the steps per epoch
        # (from the run event that follows the first points): that is the moment to look.
        if (run["epochs_completed"] == 0 and len(set(seen["loss"])) >= 2 and seen["progressShown"]
                and seen["stepsPerEpoch"]):
            within_first_epoch = (seen, run)
        time.sleep(0.1)

    seen, run = within_first_epoch
    steps = run["info"]["steps_per_epoch"]
    assert steps >= 20 and run["progress"]["steps"] == steps and 1 <= run["progress"]["step"] <= steps
    assert run["progress"]["eta_seconds"] >= 0 and run["progress"]["run_eta_seconds"] >= run["progress"]["eta_seconds"]
    assert seen["step"].startswith("step ") and f" of {steps} (epoch 1 of 2)" in seen["step"]
    assert seen["speed"].endswith("samples/s") and seen["etaEpoch"] != "–" and seen["etaRun"] != "–"
    # On the epoch axis, inside the first epoch: each step point at step / steps, for the steps
    # logged (every 2nd, and the epoch's last), from the first on.
    assert seen["stepsPerEpoch"] == steps
    logged = [round(x * steps) for x in seen["x"]]
    assert seen["x"] == pytest.approx([k / steps for k in logged], abs=1e-12), seen["x"]
    assert logged[0] == 2 and logged == sorted(logged) and all(k % 2 == 0 or k == steps for k in logged), logged
    assert all(0 < x <= 1 for x in seen["x"]), seen["x"]

    # The step axis: the same curve against the optimiser step.
    page.check("#axis-step")
    page.wait_for_function("() => document.getElementById('run-page').dataset.axis === 'step'")
    x = page.evaluate("() => Array.from(document.getElementById('chart-loss').data"
                      ".find(t => t.name === 'step/train_loss').x)")
    stored_now = [(p["epoch"], p["step"]) for p in page.request.get(f"{server}/api/runs/{run_id}/metrics").json()["points"]
                  if p["name"] == "step/train_loss"]
    assert x[:2] == [2, 4] and x == sorted(x), (x, stored_now)

    deadline = time.monotonic() + 300
    while page.text_content("#run-state") not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.2)
    assert page.text_content("#run-state") == "succeeded", page.text_content("#run-error")
    page.wait_for_function("() => document.getElementById('run-page').dataset.streamEnded === 'true'")
    assert page.is_hidden("#run-step-progress")  # progress is shown only while the run runs
    drawn = page.evaluate("() => Array.from(document.getElementById('chart-loss').data"
                          ".find(t => t.name === 'step/train_loss').x)")
    stored = [p["step"] for p in page.request.get(f"{server}/api/runs/{run_id}/metrics").json()["points"]
              if p["name"] == "step/train_loss"]
    assert drawn == sorted(stored) and len(stored) == len(set(stored))  # every point once, on page and in the database
    assert page.js_errors == []
