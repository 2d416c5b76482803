"""One prediction (POST /api/runs/{id}/predict, backend/runs/serving.py): load the run's model
bundle from the artifact store, check the inputs as the API did, predict on the CPU with the
method's own rule (training/bundle.py), and leave the answer in the database for the API process
that waits for it. The task carries its inputs (bounded by PREDICT_MAX_ROWS and MAX_REQUEST_BYTES);
the broker drops it unstarted after its deadline and Celery stops its process past it, so a
prediction never holds a worker's slot longer than that."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from backend.db import session_factory
from backend.runs.artifacts import bundle_key
from backend.runs.models import PredictionRequest
from backend.settings import Settings
from backend.storage import store_for

from training.bundle import NO_BUNDLE, PredictionInputError, load_model

log = logging.getLogger("missmod.worker")


def decode_array(encoded: dict[str, Any] | None) -> np.ndarray | None:
    """An array as the API sends it: little-endian float32 bytes in base64, and its shape."""
    if encoded is None:
        return None
    return np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f4").reshape(encoded["shape"])


def answer(settings: Settings, request_id: str, run_id: int, inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one prediction."""
    started = time.perf_counter()
    try:
        data = store_for(settings).read_bytes(bundle_key(run_id))
    except FileNotFoundError:
        return 409, {"detail": f"run {run_id} has {NO_BUNDLE}"}
    model = load_model(data)
    try:
        prediction = model.predict(x=decode_array(inputs.get("x")), y=decode_array(inputs.get("y")))
    except PredictionInputError as error:
        return 422, {"field": error.field, "detail": error.message}
    probabilities = np.ascontiguousarray(prediction.probabilities, dtype="<f8")
    return 200, {
        "epoch": model.epoch, "method": model.method_name, "inputs": prediction.inputs, "rule": prediction.rule,
        "classes": prediction.classes, "predicted": prediction.predicted.tolist(),
        "probabilities": {"data": base64.b64encode(probabilities.tobytes()).decode(),
                          "shape": list(probabilities.shape)},
        "worker_seconds": round(time.perf_counter() - started, 6),
    }


def execute_prediction(request_id: str, run_id: int, settings: Settings) -> None:
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        request = session.get(PredictionRequest, request_id)
        if request is None:  # the API stopped waiting for it (its deadline passed)
            log.info("prediction %s of run %s: nobody waits for it any more", request_id, run_id)
            return
        inputs = json.loads(request.inputs)
    try:
        status, body = answer(settings, request_id, int(run_id), inputs)
    except SoftTimeLimitExceeded:  # past its deadline: the API has answered 503 already
        log.warning("prediction %s of run %s stopped at its deadline", request_id, run_id)
        return
    except Exception as error:  # the API answers 500 with the reason rather than waiting out its deadline
        log.exception("prediction %s of run %s failed", request_id, run_id)
        status, body = 500, {"detail": f"the prediction failed on the worker: {type(error).__name__}: {error}"}
    with sessions() as session:
        request = session.get(PredictionRequest, request_id)
        if request is not None:  # else the API gave up meanwhile
            request.status, request.body, request.inputs = status, json.dumps(body), ""
            session.commit()
