"""REST routes of runs. Thin: validation at the edge, logic in service.py; what goes wrong is
answered by the handlers of backend/api/errors.py."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from training.protocol import ProtocolKey

from .. import pagination
from ..api import idempotency
from ..api.deps import SessionDep, SettingsDep, WorkQueueDep
from ..api.params import MAX_CURSOR, MAX_ID, NO_CONTROL_CHARACTERS, Offset, RunId, id_list
from ..catalog import registry
from ..csv_export import csv_text
from ..live import open_stream
from ..paired_statistics import compare_runs
from . import artifacts, export, live_runs, metrics, outcomes, query, series, service, serving
from .models import RunState
from .predictions import load_predictions, stored_predictions
from .schemas import (ArtifactOut, BulkResult, ConfusionOut, ExternalRunCreate, LiveFail, LiveFinish, LiveLease,
                      LivePoints, LiveRunCreate, LiveRunOut, LiveWritten, MetricsColumns, MetricsPage, PredictionOut,
                      PredictionsOut, ProtocolOut, RefusedRun, RunCreate, RunIds, RunOut, RunPage, RunPairOut,
                      RunUpdate)
from .stream import RunTopic, cursor_from
from .validation import DatasetCatalog, refuse_if_unfit

router = APIRouter(prefix="/api/runs", tags=["runs"])


NOT_FOUND = {404: {"description": "No run with this id"}}
CSV = {200: {"content": {"application/json": {}, "text/csv": {}}}}
AWAITING_BROKER = {202: {"description": "Saved and queued, but the broker could not be reached: the run waits for "
                                         "it (`awaiting_broker`) and is sent as soon as it is back; nothing to retry"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut,
             responses={**AWAITING_BROKER, **idempotency.REPLAYED})
def create_run(payload: RunCreate, response: Response, session: SessionDep, queue: WorkQueueDep,
               settings: SettingsDep, idempotency_key: idempotency.KeyHeader = None) -> RunOut:
    """Create a run and queue it for a worker. 201 when its id reached the broker; 202 when the
    broker is down and the run waits for it (it is saved, nothing to retry)."""
    key = idempotency.checked_key(idempotency_key)
    # Datasets made by a job on any host count too (the shared registry, backend/catalog/registry.py).
    refuse_if_unfit(payload, DatasetCatalog(settings.data_dir, settings.video_options(),
                                                  registry.lookup(session)))
    run, created = idempotency.create_once(session, key, lambda k: service.run_by_idempotency_key(session, k),
                                           lambda: service.create_run(session, payload, queue, key))
    if not created:
        if run.spec != payload.training_spec() or (payload.name and payload.name != run.name):
            raise idempotency.reused_for_another_request(key)
        response.status_code = status.HTTP_200_OK
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    elif run.awaiting_broker:
        response.status_code = status.HTTP_202_ACCEPTED
    return RunOut.model_validate(run)


@router.post("/external", status_code=status.HTTP_201_CREATED, response_model=RunOut)
def log_external_run(payload: ExternalRunCreate, session: SessionDep, settings: SettingsDep) -> RunOut:
    """Record a run trained elsewhere (another codebase, a paper's numbers): its setting, metrics
    per epoch or step, test accuracy and confusion matrix. It is marked `external` and shown with a
    mark in comparison tables and trends, in its own row, never averaged with missmod's runs."""
    return RunOut.model_validate(service.log_external_run(session, payload, settings))


# --- live runs: a script's own loop logs a run while it trains (backend/runs/live_runs.py) ------

LIVE_GONE = {409: {"description": "The run is no longer this lease's: lost (no heartbeat for LIVE_RUN_TIMEOUT), "
                                  "ended, or deleted"}}


@router.post("/live", status_code=status.HTTP_201_CREATED, response_model=LiveRunOut)
def start_live_run(payload: LiveRunCreate, session: SessionDep, settings: SettingsDep) -> LiveRunOut:
    """Start a run that a script trains in its own loop and logs while it trains: it is `running`
    under the returned `lease`; points, heartbeats and its end go to /api/runs/{id}/live/…"""
    run = live_runs.start(session, payload)
    return LiveRunOut.model_validate({**RunOut.model_validate(run).model_dump(), "lease": run.worker,
                                      "heartbeat_interval": settings.live_run_timeout / 4,
                                      "lease_timeout": settings.live_run_timeout})


@router.post("/{run_id}/live/points", response_model=LiveWritten, responses={**NOT_FOUND, **LIVE_GONE})
def log_live_points(run_id: RunId, payload: LivePoints, session: SessionDep) -> LiveWritten:
    """A batch of points (as columns), written exactly once through the workers' ingestion, with a
    heartbeat. Answers whether a cancel was asked."""
    service.get_run(session, run_id)
    cancel = live_runs.write_points(session, run_id, payload)
    return LiveWritten(points=len(payload.epoch), cancel_requested=cancel)


@router.post("/{run_id}/live/heartbeat", response_model=LiveWritten, responses={**NOT_FOUND, **LIVE_GONE})
def live_heartbeat(run_id: RunId, payload: LiveLease, session: SessionDep) -> LiveWritten:
    """The script is alive (the client sends one whenever it has logged nothing for a while)."""
    service.get_run(session, run_id)
    return LiveWritten(points=0, cancel_requested=live_runs.heartbeat(session, run_id, payload.lease))


@router.post("/{run_id}/live/finish", response_model=RunOut, responses={**NOT_FOUND, **LIVE_GONE})
def finish_live_run(run_id: RunId, payload: LiveFinish, session: SessionDep, settings: SettingsDep) -> RunOut:
    """End the run with its result: succeeded (cancelled, if a cancel was asked meanwhile). With
    `test_predictions` on missmod's split it is paired with missmod's runs (McNemar)."""
    service.get_run(session, run_id)
    run = live_runs.finish(session, settings, run_id, payload)
    outcomes.announce_ended(session, settings, [run_id])
    return RunOut.model_validate(run)


@router.post("/{run_id}/live/fail", response_model=RunOut, responses={**NOT_FOUND, **LIVE_GONE})
def fail_live_run(run_id: RunId, payload: LiveFail, session: SessionDep, settings: SettingsDep) -> RunOut:
    """The script's loop raised: the run ends failed with the error, its points kept."""
    service.get_run(session, run_id)
    run = live_runs.fail(session, run_id, payload)
    outcomes.announce_ended(session, settings, [run_id])
    return RunOut.model_validate(run)


protocol_router = APIRouter(prefix="/api/protocol", tags=["runs"])


@protocol_router.get("", response_model=ProtocolOut)
def get_protocol(settings: SettingsDep,
                 dataset: str = Query(..., max_length=200, pattern=NO_CONTROL_CHARACTERS),
                 seed: int = Query(0, ge=0, le=2**31 - 1),
                 missing_rate: float = Query(0.0, ge=0, lt=1),
                 other_missing_rate: float = Query(0.0, ge=0, lt=1),
                 split_by: Literal["group", "subject"] = Query("group")) -> ProtocolOut:
    """The samples missmod's workers use for this setting: train/val/test rows of the dataset,
    which training rows lose a modality, and the order test predictions are listed in. Train your
    own method on them, upload its test predictions, and its run pairs with missmod's."""
    key = ProtocolKey(dataset=dataset, seed=seed, missing_rate=missing_rate, other_missing_rate=other_missing_rate,
                      split_by=split_by)
    found = live_runs.protocol(settings, key)
    return ProtocolOut(dataset=dataset, seed=seed, missing_rate=missing_rate, other_missing_rate=other_missing_rate,
                       split_by=split_by, **found.as_dict())


def _bulk_result(outcome: service.BulkOutcome) -> BulkResult:
    return BulkResult(done=outcome.done, not_found=outcome.not_found,
                      refused=[RefusedRun(id=run_id, reason=reason) for run_id, reason in outcome.refused])


@router.post("/bulk-delete", response_model=BulkResult)
def bulk_delete_runs(payload: RunIds, session: SessionDep, settings: SettingsDep) -> BulkResult:
    """Delete many runs in one request (runs still training are stopped)."""
    return _bulk_result(service.bulk_delete(session, payload.ids, settings))


@router.post("/bulk-cancel", response_model=BulkResult)
def bulk_cancel_runs(payload: RunIds, session: SessionDep, settings: SettingsDep) -> BulkResult:
    """Cancel many runs in one request; finished ones are listed as refused."""
    outcome = service.bulk_cancel(session, payload.ids)
    outcomes.announce_ended(session, settings, outcome.done)
    return _bulk_result(outcome)


@router.post("/bulk-retry", response_model=BulkResult)
def bulk_retry_runs(payload: RunIds, session: SessionDep, queue: WorkQueueDep, settings: SettingsDep) -> BulkResult:
    """Queue many failed or cancelled runs again; the others are listed as refused."""
    return _bulk_result(service.bulk_retry(session, payload.ids, queue, settings))


@router.get("", response_model=RunPage, responses=CSV)
def list_runs(
    request: Request,
    session: SessionDep,
    state: list[RunState] | None = Query(None, description="Repeat for several: `?state=failed&state=cancelled`"),
    dataset: str | None = Query(None, max_length=200, pattern=NO_CONTROL_CHARACTERS),
    method: str | None = Query(None, max_length=50, pattern=NO_CONTROL_CHARACTERS),
    fusion: str | None = Query(None, max_length=20, pattern=NO_CONTROL_CHARACTERS),
    missing_modality: str | None = Query(None, max_length=100, pattern=NO_CONTROL_CHARACTERS),
    missing_rate: float | None = Query(None, ge=0, lt=1),
    sweep: int | None = Query(None, ge=1, le=MAX_ID, description="Only the runs of this sweep"),
    tag: str | None = Query(None, max_length=50, pattern=NO_CONTROL_CHARACTERS),
    q: str | None = Query(None, max_length=200, pattern=NO_CONTROL_CHARACTERS, description="Text the run name contains (case-insensitive)"),
    sort: str = Query("-id", description="A column, `-` first for descending; `id` is creation order",
                      json_schema_extra={"enum": service.SORT_CHOICES}),
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
    cursor: str | None = Query(None, max_length=500, pattern=NO_CONTROL_CHARACTERS,
                               description="`next_cursor` of the previous page: fast deep pages (instead of offset)"),
    where: list[str] | None = Query(
        None, max_length=20,
        description="`FIELD OP VALUE` on any spec field, result or final metric; repeat for several (all hold). "
                    "OP: = != > >= < <=. E.g. `accuracy>0.8`, `encoder=resnet50`, `metrics.val_loss<0.5`, "
                    "`external=false`"),
    external: bool | None = Query(None, description="Only runs trained elsewhere (true) or by missmod (false)"),
    format: Literal["json", "csv"] = Query("json", description="csv: every matching run (no paging), one row each, "
                                                               "with its spec fields"),
) -> RunPage:
    """Runs matching every filter given, newest first unless `sort` says otherwise."""
    query.check_sort(sort)
    pagination.one_way_to_page(cursor, offset)
    filters = service.RunFilters(states=state or (), dataset=dataset, method=method, fusion=fusion,
                                 missing_modality=missing_modality, missing_rate=missing_rate, sweep_id=sweep,
                                 tag=tag, search=q, where=query.parse_conditions(where or []), external=external)
    if format == "csv":
        return StreamingResponse(export.runs_csv(request.app.state.sessions, filters, sort),
                                 media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="runs.csv"'})
    runs, total, next_cursor = service.list_runs(session, filters, sort=sort, limit=limit, offset=offset, cursor=cursor)
    return RunPage(items=[RunOut.model_validate(r) for r in runs], total=total, limit=limit, offset=offset,
                   next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunOut, responses=NOT_FOUND)
def get_run(run_id: RunId, session: SessionDep) -> RunOut:
    return RunOut.model_validate(service.get_run(session, run_id))


@router.patch("/{run_id}", response_model=RunOut, responses=NOT_FOUND)
def update_run(run_id: RunId, payload: RunUpdate, session: SessionDep) -> RunOut:
    """Rename a run, set its note, or replace its tags."""
    return RunOut.model_validate(service.update_run(session, run_id, payload.model_dump(exclude_unset=True)))


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_run(run_id: RunId, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a run with its metrics, confusion matrix and files. A run still training is stopped."""
    if not service.delete_runs(session, [run_id], settings):
        raise service.RunNotFound(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{run_id}/retry", response_model=RunOut,
             responses={**NOT_FOUND, 409: {"description": "The run is not failed or cancelled"}})
def retry_run(run_id: RunId, session: SessionDep, queue: WorkQueueDep, settings: SettingsDep) -> RunOut:
    """Queue a failed or cancelled run again from scratch, same id and spec; its old metrics
    and checkpoint are cleared. With the broker down it waits for it (`awaiting_broker`)."""
    return RunOut.model_validate(service.retry_run(session, run_id, queue, settings))


@router.get("/{run_id}/metrics", response_model=MetricsPage | MetricsColumns, responses={
    **NOT_FOUND, **CSV, 304: {"description": "A finished run's metrics, unchanged since the ETag sent in If-None-Match"}})
def get_metrics(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    after: int = Query(0, ge=0, le=MAX_CURSOR, description="Cursor from a previous page; 0 for all points"),
    limit: int = Query(10_000, ge=1, le=100_000, description="At most this many points (format=json only)"),
    max_points: int | None = Query(
        None, ge=10, le=100_000,
        description="For display: thin each series to about this many points, keeping its shape (see "
                    "`downsample`); with format=json it ignores `after` and `limit`. Stream from the returned "
                    "cursor for new points"),
    format: Literal["json", "columns", "csv"] = Query(
        "json", description="`json`: a list of {epoch, step, name, value} (the default); `columns`: per metric one "
                            "array of epochs, one of steps and one of values (`series`), much smaller; `csv`: every "
                            "point, one row per epoch and one column per metric (ignores the other parameters)"),
    downsample: series.Downsampling = Query(
        "minmax", description="How `max_points` thins a series (format=columns): `minmax` keeps each stretch's "
                              "minimum and maximum, `lttb` the points that best keep the line's shape"),
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Metric points in the order they were recorded (`points`: a MetricsPage), or as columns per
    metric (`format=columns`: a MetricsColumns). Per-epoch points carry the step the epoch ended at; per-step points are
    named `step/...`. A finished run's answer has an ETag: send it back in If-None-Match to get
    304 when nothing changed."""
    run = service.get_run(session, run_id)
    if format == "csv":
        return Response(metrics.as_csv(session, run_id), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'})
    etag = metrics.etag(run, request.query_params.multi_items())
    headers = {"ETag": etag, "Cache-Control": "no-cache"} if etag else {"Cache-Control": "no-store"}
    if etag and if_none_match and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    caches: metrics.MetricsCaches = request.app.state.metrics_caches

    def body() -> bytes:
        if format == "columns" and after:
            return metrics.columns_after(session, run, after, max_points, downsample)
        if format == "columns":
            return metrics.columns(session, run, caches, max_points, downsample, finished=etag is not None,
                                   query=request.url.query)
        if max_points is not None:
            return metrics.display_points(session, run, max_points)
        return metrics.points_page(session, run, after, limit)

    return Response(metrics.cached_if_finished(caches, etag, body), media_type="application/json", headers=headers)


@router.get("/{run_id}/confusion", response_model=ConfusionOut,
            responses={404: {"description": "No such run, or it has no confusion matrix yet"}})
def get_confusion(run_id: RunId, session: SessionDep) -> ConfusionOut:
    run = service.get_run(session, run_id)
    matrix = service.confusion_of(session, run_id)
    grouped = (run.info or {}).get("accuracy_level") == "group"
    return ConfusionOut(epoch=matrix.epoch, classes=matrix.classes, counts=matrix.counts,
                        counted="groups" if grouped else "samples")


@router.get("/{run_id}/predictions", response_model=PredictionsOut, responses={
    **CSV, 404: {"description": "No such run, or it has no stored test predictions"}})
def get_predictions(run_id: RunId, session: SessionDep,
                    format: Literal["json", "csv"] = Query("json", description="csv: one row per test sample: "
                                                                               "index, label, predicted, correct")
                    ) -> PredictionsOut | Response:
    """The predicted and the true class of every test sample (or group) at the selected epoch,
    as stored for the sample-level tests: check a McNemar comparison yourself by pairing two runs'
    lists (same dataset, seed and split: same samples, same order)."""
    service.get_run(session, run_id)
    stored = stored_predictions(session, run_id)
    labels, predicted = stored.predictions.labels.tolist(), stored.predictions.predicted.tolist()
    if format == "json":
        return PredictionsOut(run_id=run_id, epoch=stored.epoch, classes=stored.classes, counted=stored.counted,
                              labels=labels, predicted=predicted)
    body = csv_text([["index", "label", "predicted", "label_name", "predicted_name", "correct"],
                     *([index, label, guess, stored.classes[label], stored.classes[guess], int(label == guess)]
                       for index, (label, guess) in enumerate(zip(labels, predicted)))])
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="run-{run_id}-predictions.csv"'})


@router.get("/{run_id}/paired", response_model=list[RunPairOut],
            responses={**NOT_FOUND, 422: {"description": "`against` is not a list of run ids"}})
def get_paired(run_id: RunId, session: SessionDep,
               against: str = Query(..., max_length=2000, description="Comma-separated ids of the runs to compare "
                                                                     "with this one (at most 50)")) -> list[RunPairOut]:
    """Each run of `against` compared with this one test sample by test sample (McNemar's exact
    test on the stored test predictions, Holm's correction over the runs; see docs/statistics.md).
    Runs are comparable when they saw the same test set: same dataset, seed and split."""
    ids = id_list(against, "against", most=50, noun="run")
    service.get_run(session, run_id)  # 404 when there is no such run
    kept = load_predictions(session, [run_id, *ids])
    pairs = compare_runs(kept.get(run_id), {other: kept.get(other) for other in ids})
    return [RunPairOut.model_validate({**asdict(pair), "reference": run_id}) for pair in pairs]


@router.post("/{run_id}/cancel", response_model=RunOut,
             responses={**NOT_FOUND, 409: {"description": "The run has already finished"}})
def cancel_run(run_id: RunId, session: SessionDep, settings: SettingsDep) -> RunOut:
    """Cancel: at once if queued, at the end of the current epoch if running."""
    run = service.request_cancel(session, run_id)
    outcomes.announce_ended(session, settings, [run_id])  # a queued run ends at once: its sweep may be done
    return RunOut.model_validate(run)


def _run_exists(sessions, run_id: int) -> None:
    with sessions() as session:
        service.get_run(session, run_id)


@router.get("/{run_id}/stream", responses={**NOT_FOUND, 503: {"description": "Too many live streams; see Retry-After"}},
            response_description="Server-Sent Events: `metrics` (new points; the event id is the cursor), "
                                 "`run` (the run whenever it changes), `end` (finished, nothing more to send)")
async def stream_run(
    run_id: RunId,
    request: Request,
    after: int = Query(0, ge=0, le=MAX_CURSOR, description="Send only points after this cursor"),
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Live updates of one run. A reconnecting EventSource resumes after its Last-Event-ID."""
    return await open_stream(request, RunTopic.kind, run_id, cursor_from(after, last_event_id, MAX_CURSOR),
                             exists=_run_exists)


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=NOT_FOUND)
def list_artifacts(run_id: RunId, session: SessionDep, settings: SettingsDep) -> list[ArtifactOut]:
    """The run's files (its checkpoint, …), with paths to download them by."""
    service.get_run(session, run_id)
    return [ArtifactOut.model_validate(a) for a in artifacts.list_artifacts(settings, run_id)]


@router.get("/{run_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={**NOT_FOUND, 400: {"description": "The path leaves the run's directory"}})
def download_artifact(run_id: RunId, session: SessionDep, settings: SettingsDep,
                      path: str = Path(max_length=1000, description="As listed by GET /api/runs/{run_id}/artifacts")
                      ) -> Response:
    """From the artifact store, whichever host wrote it."""
    service.get_run(session, run_id)
    found = artifacts.find_artifact(settings, run_id, path)
    filename = path.rpartition("/")[2].replace('"', "")
    if found.local is not None:
        return FileResponse(found.local, media_type="application/octet-stream", filename=filename)
    return StreamingResponse(found.store.iter_chunks(found.key), media_type="application/octet-stream",
                             headers={"Content-Length": str(found.size),
                                      "Content-Disposition": f'attachment; filename="{filename}"'})


PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "x": {"type": "array", "description": "Samples of x (the modality always present), shape (n, …) as in the "
                                              "dataset (not standardised), or one sample; may be left out"},
        "y": {"type": "array", "description": "Samples of y (the one that may be missing), the same rows; may be "
                                              "left out"}},
        "description": "Also accepted under the modalities' own names (e.g. `top`, `bottom`)"}},
    "application/x-npz": {"schema": {"type": "string", "format": "binary",
                                     "description": "An .npz with arrays `x` and/or `y` (or the modalities' names)"}},
}}}


@router.post("/{run_id}/predict", response_model=PredictionOut, openapi_extra=PREDICT_BODY, responses={
    **NOT_FOUND, 409: {"description": "The run has no model bundle (trained before bundles were written: retrain)"},
    422: {"description": "Inputs of the wrong shape, not finite, too many rows, or a missing modality the method "
                         "cannot predict without"},
    503: {"description": "No worker answered within PREDICT_TIMEOUT"}})
async def predict(run_id: RunId, request: Request) -> PredictionOut:
    """Class probabilities and the predicted class of one or many samples, from the run's model
    at its selected epoch: with x and y (eq. 4), x alone (each method's own rule: eq. 5 for
    `mle`, g = 0 for `zero_padding`, imputation for `ae1`/`ae2`, the x–z rule for `hgr`), or y
    alone where the method trained without x. A worker predicts (the API loads no torch), within
    PREDICT_TIMEOUT; at most PREDICT_MAX_ROWS samples per request (docs/predict.md)."""
    body = await request.body()
    content_type = request.headers.get("content-type", "application/json")
    state = request.app.state
    return await run_in_threadpool(_predict, state.settings, state.sessions, state.work_queue, run_id, body,
                                   content_type)


def _predict(settings, sessions, queue, run_id: int, body: bytes, content_type: str) -> PredictionOut:
    with sessions() as session:
        bundle = serving.bundle_of(settings, service.get_run(session, run_id))
    x, y, _ = serving.read_inputs(body, content_type, bundle.manifest, settings.predict_max_rows)
    return PredictionOut.model_validate(serving.predict(settings, sessions, queue, bundle, x, y))


@router.get("/{run_id}/model", response_class=FileResponse, responses={
    404: {"description": "No such run, or it has no model bundle (trained before bundles were written: retrain)"}})
def download_model(run_id: RunId, session: SessionDep, settings: SettingsDep) -> Response:
    """The run's model bundle (`model.zip`): the model at its selected epoch with its preprocessing,
    label prior, class names, eq. 5 reference bank, spec and versions; `training.bundle.load_model`
    predicts with it offline, with the endpoint's numbers (docs/predict.md)."""
    run = service.get_run(session, run_id)
    try:
        serving.bundle_of(settings, run)
    except serving.NoModelBundle as error:
        raise serving.ModelBundleNotFound(str(error)) from None
    return download_artifact(run_id, session, settings, path=artifacts.MODEL_BUNDLE)
