"""Prediction with a run's model (POST /api/runs/{id}/predict) and its bundle (GET /api/runs/{id}/model).

The API process loads no torch, so a worker predicts. The mechanism is a task on a queue of its
own (backend/queue.py: `<TASK_QUEUE>-predict`), which every worker consumes beside the runs'
queue, with a deadline (PREDICT_TIMEOUT): the broker drops it unstarted after the deadline, the
worker stops its process past it, and the API stops waiting at it (503). The inputs go to the
worker and its answer comes back through the database (PredictionRequest), as everything a worker
reports does: the broker carries only the request's id, and neither the embedded default nor a
Redis deployment needs a result backend. Why a task rather
than a model-serving process: it adds no process to run, deploy or watch, it works the same on
one machine and on many, and it reuses the artifact store, the broker and the database that
runs already need; the cost is a process start and a bundle read per request (milliseconds for
feature models), and a prediction waits for a free slot when every slot trains: a deployment
that predicts while training starts one more worker with `-Q <TASK_QUEUE>-predict`
(docs/predict.md).

Requests are checked here, before any worker is asked: the run's bundle must exist (runs trained
before bundles were written get a 409 that says "no model bundle: retrain to get one"), the
inputs must have the model's shapes, be finite as float32, and hold at most PREDICT_MAX_ROWS
samples (an .npz's rows are read from its array headers, before anything is decompressed).
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import uuid
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from sqlalchemy import delete
from sqlalchemy.orm import sessionmaker

from training.prediction_inputs import NO_BUNDLE, PredictionInputError, check_inputs, read_manifest

from ..api.params import has_control_characters, why_unstorable
from ..db import utcnow
from ..queue import WorkQueue
from ..refused import Refused
from ..settings import Settings
from ..storage import store_for
from .artifacts import bundle_key
from .models import PredictionRequest, Run, RunState

NPZ_TYPES = ("application/x-npz", "application/octet-stream", "application/zip")
# Replies nobody waits for any more (their request timed out just as the worker answered).
FORGET_REPLIES_AFTER = timedelta(hours=1)


class NoModelBundle(Exception):
    """409: the run has no bundle of its selected epoch (args: the message)."""


class ModelBundleNotFound(LookupError):
    """404 (GET /api/runs/{id}/model): args: the message."""


class PredictionTimedOut(Exception):
    """503: no worker answered within the deadline (args: the message)."""


class PredictionFailed(Exception):
    """The worker answered with an error: args (status, detail, field or None)."""


@dataclass
class Bundle:
    run: Run
    manifest: dict[str, Any]


def bundle_of(settings: Settings, run: Run) -> Bundle:
    """The run's bundle as the API sees it (its manifest), or NoModelBundle saying why not."""
    store = store_for(settings)
    try:
        with store.open(bundle_key(run.id)) as file:
            manifest = read_manifest(file)
    except FileNotFoundError:
        raise NoModelBundle(f"run {run.id} has {NO_BUNDLE}") from None
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise NoModelBundle(f"run {run.id}'s model bundle cannot be read ({error}): retrain to get one") from None
    # A finished run's bundle must be of the epoch it reports (a retried run that stopped before
    # its first epoch would otherwise serve the previous attempt's model).
    finished = run.state in (RunState.succeeded, RunState.cancelled, RunState.failed)
    if finished and run.best_epoch is not None and manifest.get("epoch") != run.best_epoch:
        raise NoModelBundle(f"run {run.id}'s model bundle is of epoch {manifest.get('epoch')}, not of its selected "
                            f"epoch {run.best_epoch}: retrain to get one")
    if finished and run.best_epoch is None:
        raise NoModelBundle(f"run {run.id} selected no epoch (stopped before its first): {NO_BUNDLE}")
    return Bundle(run, manifest)


# --- reading a request ---------------------------------------------------------------------


def _refuse(field: str, message: str, given: Any = None) -> Refused:
    return Refused.field("body", field, given, message)


def _npz_arrays(body: bytes, manifest: dict[str, Any], max_rows: int) -> dict[str, np.ndarray]:
    """The arrays of an .npz body, after checking from their headers alone that none holds
    objects, more rows than allowed, or more bytes than it declares."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            for entry in archive.infolist():
                key = entry.filename.removesuffix(".npy")
                with archive.open(entry) as member:
                    version = npy_format.read_magic(member)
                    read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                                   else npy_format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    header_length = member.tell()
                if dtype.hasobject:
                    raise _refuse(key, f"array {key!r} holds Python objects (read only with pickle): send numbers")
                if shape and shape[0] > max_rows:
                    raise _refuse(key, f"{shape[0]:,} rows; at most {max_rows:,} per request "
                                       "(PREDICT_MAX_ROWS): split them into several requests")
                if entry.file_size - header_length != math.prod(shape) * dtype.itemsize:
                    raise _refuse(key, f"array {key!r} declares shape {shape} but holds another number of bytes")
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
    except Refused:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise _refuse("body", f"not a readable .npz file: {error}") from None


def _json_arrays(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise _refuse("body", f"not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise _refuse("body", 'send an object: {"x": [[…], …], "y": [[…], …]} (either may be left out)')
    # What every other body gets from CleanInput: no key or value that cannot be stored or echoed
    # back (a lone surrogate, a NUL, NaN), named before anything repeats it in an answer.
    for key, value in payload.items():
        if why_unstorable(key) or has_control_characters(key):
            raise _refuse("body", "a key of the body holds a character that cannot be stored (a lone surrogate, "
                                  "a NUL or a control character)")
        reason = why_unstorable(value)
        if reason:
            raise _refuse(key, f"{key} {reason}")
    return payload


def read_inputs(body: bytes, content_type: str, manifest: dict[str, Any],
                max_rows: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """x and y (float32, the model's shapes) and which are given, or Refused naming the field."""
    kind = content_type.split(";")[0].strip().lower()
    arrays = _npz_arrays(body, manifest, max_rows) if kind in NPZ_TYPES else _json_arrays(body)
    names = {"x": "x", "y": "y", manifest["x_modality"]: "x", manifest["y_modality"]: "y"}
    unknown = [key for key in arrays if key not in names]
    if unknown:
        raise _refuse(unknown[0], f"unknown input {unknown[0]!r}: send x ({manifest['x_modality']}) and/or "
                                  f"y ({manifest['y_modality']})")
    given: dict[str, Any] = {}
    for key, value in arrays.items():
        if value is None:
            continue
        if names[key] in given:
            raise _refuse(key, f"{names[key]} is given twice (as x/y and as its modality's name)")
        if isinstance(value, list) and len(value) > max_rows:  # before numpy reads them all
            raise _refuse(key, f"{len(value):,} rows; at most {max_rows:,} per request (PREDICT_MAX_ROWS): "
                               "split them into several requests")
        given[names[key]] = value
    try:
        return check_inputs(manifest, given.get("x"), given.get("y"), max_rows=max_rows)
    except PredictionInputError as error:
        raise _refuse(error.field, error.message) from None


# --- asking a worker ---------------------------------------------------------------------------


def _encode(values: np.ndarray | None) -> dict[str, Any] | None:
    if values is None:
        return None
    values = np.ascontiguousarray(values, dtype="<f4")
    return {"data": base64.b64encode(values.tobytes()).decode(), "shape": list(values.shape)}


def _answer(sessions: sessionmaker, request_id: str) -> PredictionRequest | None:
    """The request once a worker answered it (then deleted), else None."""
    with sessions() as session:
        request = session.get(PredictionRequest, request_id)
        if request is None or request.status is None:
            return None
        session.delete(request)
        session.commit()
        return request


def _give_up(sessions: sessionmaker, request_id: str) -> None:
    """Past the deadline: the request goes (a worker that takes it later finds nothing to do), and
    so do answers nobody waits for any more."""
    with sessions() as session:
        session.execute(delete(PredictionRequest).where(
            (PredictionRequest.id == request_id) | (PredictionRequest.created_at < utcnow() - FORGET_REPLIES_AFTER)))
        session.commit()


def predict(settings: Settings, sessions: sessionmaker, queue: WorkQueue, bundle: Bundle,
            x: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any]:
    """Send the prediction to a worker and wait for its answer, at most PREDICT_TIMEOUT."""
    deadline = settings.predict_timeout
    request_id = f"predict-{uuid.uuid4().hex}"
    started = time.monotonic()
    with sessions() as session:
        session.add(PredictionRequest(id=request_id, run_id=bundle.run.id,
                                      inputs=json.dumps({"x": _encode(x), "y": _encode(y)})))
        session.commit()
    queue.send_prediction(request_id, bundle.run.id, deadline)
    interval = 0.005
    while (reply := _answer(sessions, request_id)) is None:
        if time.monotonic() - started > deadline:
            _give_up(sessions, request_id)
            raise PredictionTimedOut(
                f"no worker answered within {deadline:g} s (PREDICT_TIMEOUT): every worker slot may be training, "
                "or no worker is running; a worker started with -Q "
                f"{settings.task_queue}-predict serves predictions alone (docs/predict.md)")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.05)
    body = json.loads(reply.body)
    if reply.status != 200:
        raise PredictionFailed(reply.status, body.get("detail"), body.get("field"))
    encoded = body.pop("probabilities")
    probabilities = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f8").reshape(encoded["shape"])
    classes = body["classes"]
    return {
        "run_id": bundle.run.id, **body,
        "predicted_class": [classes[i] for i in body["predicted"]],
        "probabilities": probabilities.tolist(),
        "seconds": round(time.monotonic() - started, 6),
    }
