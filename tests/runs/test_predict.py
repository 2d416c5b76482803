"""Prediction with a run's model, end to end with real processes (API server, Celery worker,
the client and the CLI): the model bundle written at the selected epoch reproduces the run's
reported test accuracies exactly through POST /api/runs/{id}/predict (x and y: test_accuracy; x
alone: test_missing_accuracy), the downloaded bundle gives the endpoint's probabilities offline,
and bad requests get clear 4xx answers while the worker and the API stay up."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from missmod.client import Client, Conflict, InvalidInput, NotFound

from tests.support import ROOT, wait_for

BASE = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.7, "epochs": 3, "seed": 0,
        "evaluate_missing": True}
METHODS = {"mle": "add", "zero_padding": "concat", "ae1": "add", "hgr": "add"}


def test_split(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and labels of the run's test set, as the dataset holds them (the split is seeded)."""
    from training.datasets import load_dataset
    from training.prepare import split_and_missing
    from training.spec import TrainSpec

    data = load_dataset("digits")
    split, _ = split_and_missing(data, TrainSpec.model_validate(spec))
    return data.views["top"][split.test], data.views["bottom"][split.test], data.labels[split.test]


test_split.__test__ = False  # a helper, not a test


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def cli(base: str, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSMOD_")}
    env.update(MISSMOD_URL=base, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "missmod", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_predicting_the_test_set_gives_the_reported_accuracies(embedded_settings, start_server, start_worker,
                                                                 tmp_path):
    from training.bundle import load_model

    base = start_server(embedded_settings)
    start_worker(embedded_settings)
    client = Client(base, timeout=180)  # the API answers slowly on a loaded host
    runs = {method: client.submit(**BASE, method=method, fusion=fusion) for method, fusion in METHODS.items()}
    x, y, labels = test_split({**BASE, "method": "mle"})
    # All trained first: the worker has one slot, and a prediction waits for a free one.
    runs = {method: client.wait(run, progress=False, timeout=600) for method, run in runs.items()}
    for method, run in runs.items():
        assert run.state == "succeeded", run
        reported_missing = run.info["test_missing_accuracy"]

        both = client.predict(run, x=x, y=y)
        alone = client.predict(run, x=x)
        assert both.attrs["epoch"] == alone.attrs["epoch"] == run.best_epoch
        assert both.attrs["inputs"] == "x_and_y" and alone.attrs["inputs"] == "x_only"
        # Exactly the reported numbers: the same model, statistics and bank as the evaluation's.
        assert (both["predicted_index"].to_numpy() == labels).mean() == run.test_accuracy, method
        assert (alone["predicted_index"].to_numpy() == labels).mean() == reported_missing, method
        probabilities = both[[f"p_{c}" for c in both.attrs["classes"]]].to_numpy()
        assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
        assert (probabilities.argmax(1) == both["predicted_index"].to_numpy()).all()

        # The bundle downloaded and loaded offline: the endpoint's probabilities.
        path = client.download_model(run, tmp_path / f"{method}.zip")
        model = load_model(path)
        assert model.epoch == run.best_epoch and model.classes == [str(k) for k in range(10)]
        assert model.manifest["selected"]["test_accuracy"] == run.test_accuracy
        assert model.manifest["reproducibility"]["torch"] and model.manifest["reproducibility"]["missmod_version"]
        offline_alone = model.predict(x=x).probabilities
        alone_probabilities = alone[[f"p_{c}" for c in alone.attrs["classes"]]].to_numpy()
        assert np.abs(offline_alone - alone_probabilities).max() <= 1e-6
        assert np.abs(model.predict(x=x, y=y).probabilities - probabilities).max() <= 1e-6

    # One sample at a time, through JSON, as a script without numpy might send it.
    run = runs["mle"]
    one = httpx.post(f"{base}/api/runs/{run.id}/predict", json={"top": x[0].tolist()}, timeout=30).json()
    assert one["inputs"] == "x_only" and len(one["probabilities"]) == 1 and one["rule"].startswith("eq. 5")

    # The CLI: predict from an .npz file, and download the bundle.
    file = tmp_path / "test.npz"
    np.savez(file, x=x[:20], y=y[:20])
    done = cli(base, "runs", "predict", str(run.id), str(file))
    assert done.returncode == 0, done.stderr
    rows = done.stdout.strip().splitlines()
    assert rows[0].startswith("index,predicted,predicted_index,p_0") and len(rows) == 21
    expected = client.predict(run, x=x[:20], y=y[:20])["predicted"].tolist()
    assert [row.split(",")[1] for row in rows[1:]] == expected
    done = cli(base, "runs", "download", str(run.id), "-o", str(tmp_path / "cli.zip"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.zip").read_bytes() == (tmp_path / "mle.zip").read_bytes()


def test_bad_requests_get_clear_answers_and_everything_stays_up(embedded_settings, start_server, start_worker):
    base = start_server(embedded_settings)
    worker = start_worker(embedded_settings)
    client = Client(base, timeout=180)  # the API answers slowly on a loaded host
    run = client.wait(client.submit(**{**BASE, "epochs": 1}, method="hgr", fusion="add"), progress=False, timeout=300)
    x, y, _ = test_split({**BASE, "method": "hgr"})
    url = f"{base}/api/runs/{run.id}/predict"

    def refused(response: httpx.Response, field: str, words: str) -> None:
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert error["loc"][-1] == field and words in error["msg"], error

    refused(httpx.post(url, json={"x": x[:3, :10].tolist()}), "x", "must have shape (n, 32)")
    refused(httpx.post(url, json={"x": x[:3].tolist(), "y": y[:2].tolist()}), "y", "x has 3 rows but y has 2")
    with_nan = x[:3].copy()
    with_nan[1, 4] = np.nan
    refused(httpx.post(url, content=npz_bytes(x=with_nan), headers={"Content-Type": "application/x-npz"}), "x",
            "NaN or infinite values (first in row 1)")
    refused(httpx.post(url, content=json.dumps({"x": [[1e300] * 32]}), headers={"Content-Type": "application/json"}),
            "x", "NaN or infinite")
    refused(httpx.post(url, json={"audio": x[:2].tolist()}), "audio", "unknown input")
    refused(httpx.post(url, json={}), "x", "give x (top), y (bottom), or both")
    refused(httpx.post(url, json={"y": y[:2].tolist()}), "x", "cannot predict without x")
    # 10^6 rows: an .npz is refused from its header (nothing decompressed); JSON by its size.
    million = npz_bytes(x=np.zeros((1_000_000, 32), dtype=np.float32))
    refused(httpx.post(url, content=million, headers={"Content-Type": "application/x-npz"}), "x",
            "1,000,000 rows; at most 10,000 per request")
    too_big = httpx.post(url, content=b'{"x": [' + b"[0]," * 1_000_000 + b"[0]]}",
                         headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413
    refused(httpx.post(url, content=b"not a zip", headers={"Content-Type": "application/x-npz"}), "body",
            "not a readable .npz")
    with pytest.raises(InvalidInput) as error:
        client.predict(run, x=np.ones((2, 31)))
    assert error.value.field == "x"

    # A run without a bundle (trained before bundles were written): a clear answer, no error.
    (embedded_settings.artifact_dir / "runs" / str(run.id) / "model.zip").rename(
        embedded_settings.artifact_dir / "aside.zip")
    with pytest.raises(Conflict, match="no model bundle: retrain to get one"):
        client.predict(run, x=x[:1])
    with pytest.raises(NotFound, match="no model bundle: retrain to get one"):
        client.download_model(run)
    (embedded_settings.artifact_dir / "aside.zip").rename(embedded_settings.artifact_dir / "runs" / str(run.id) /
                                                           "model.zip")

    # Still up, both of them: the worker answers the next prediction.
    assert worker.popen.poll() is None
    assert httpx.get(f"{base}/api/health").json()["status"] == "ok"
    assert len(client.predict(run, x=x[:5])) == 5


def test_a_prediction_never_holds_a_slot_past_its_deadline(embedded_settings, start_server, start_worker):
    """A prediction that hangs on the worker: the API answers 503 at the deadline, the worker stops
    the prediction's process, and its only slot then trains a run."""
    import time

    settings = embedded_settings.model_copy(update={"predict_timeout": 8.0})
    base = start_server(settings)
    healthy = start_worker(settings)  # trains a run, leaving its bundle, and is stopped
    client = Client(base, timeout=180)  # the API answers slowly on a loaded host
    run = client.wait(client.submit(**{**BASE, "epochs": 1}, method="mle", fusion="add"), progress=False, timeout=300)
    healthy.kill()
    x, _, _ = test_split({**BASE, "method": "mle"})

    worker = start_worker(settings, app="tests.support.hanging_prediction_worker")  # one slot
    started = time.monotonic()
    answer = httpx.post(f"{base}/api/runs/{run.id}/predict", json={"x": x[:2].tolist()}, timeout=60)
    waited = time.monotonic() - started
    assert answer.status_code == 503 and "no worker answered within 8 s" in answer.json()["detail"], answer.text
    assert answer.headers["Retry-After"] and 8.0 <= waited < 15, waited
    wait_for(lambda: "missmod.predict" in worker.log(), 60, what="the worker to take the prediction")
    # The hung prediction held the worker's only slot: stopped at its time limit, the slot trains.
    second = client.wait(client.submit(**{**BASE, "epochs": 1, "seed": 1}, method="mle", fusion="add"), progress=False,
                         timeout=300)
    assert second.state == "succeeded"
    log = worker.log()
    assert "stopped at its deadline" in log and worker.popen.poll() is None, log[-3000:]


@pytest.mark.services
def test_predictions_through_redis_and_postgresql(service_settings, start_server, start_worker):
    base = start_server(service_settings)
    start_worker(service_settings)
    client = Client(base, timeout=180)
    run = client.wait(client.submit(**{**BASE, "epochs": 2}, method="mle", fusion="add"), progress=False, timeout=300)
    x, y, labels = test_split({**BASE, "method": "mle"})
    alone = client.predict(run, x=x)
    assert (alone["predicted_index"].to_numpy() == labels).mean() == run.info["test_missing_accuracy"]
    assert (client.predict(run, x=x, y=y)["predicted_index"].to_numpy() == labels).mean() == run.test_accuracy

