"""REST routes of runs. Thin: validation at the edge, logic in service.py; a run not found or
a broker that cannot be reached is answered by the handlers of backend/api/errors.py."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse

from ..api.deps import RunQueueDep, SessionDep, SettingsDep
from ..api.params import MAX_CURSOR, MAX_ID, NO_CONTROL_CHARACTERS, Offset, RunId
from . import artifacts, series, service
from .models import RunState
from .schemas import ArtifactOut, ConfusionOut, MetricsPage, RunCreate, RunOut, RunPage, RunUpdate
from .stream import run_events
from .validation import DatasetCatalog, check_against_dataset

router = APIRouter(prefix="/api/runs", tags=["runs"])


NOT_FOUND = {404: {"description": "No run with this id"}}
BROKER_DOWN = {503: {"description": "The broker could not be reached; the run is marked failed"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut, responses=BROKER_DOWN)
def create_run(payload: RunCreate, session: SessionDep, queue: RunQueueDep, settings: SettingsDep) -> RunOut:
    """Create a run and queue it for a worker."""
    check_against_dataset(payload, DatasetCatalog(settings.data_dir, settings.video_options()))
    return RunOut.model_validate(service.create_run(session, payload, queue))


@router.get("", response_model=RunPage)
def list_runs(
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
) -> RunPage:
    """Runs matching every filter given, newest first unless `sort` says otherwise."""
    if sort.lstrip("-") not in service.SORT_COLUMNS:
        raise RequestValidationError([{"type": "enum", "loc": ("query", "sort"), "input": sort,
                                       "msg": f"sort by one of: {', '.join(service.SORT_COLUMNS)} (prefix - to reverse)"}])
    if cursor and offset:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "offset"), "input": offset,
                                       "msg": "give either offset or cursor, not both"}])
    filters = service.RunFilters(states=state or (), dataset=dataset, method=method, fusion=fusion,
                                 missing_modality=missing_modality, missing_rate=missing_rate, sweep_id=sweep,
                                 tag=tag, search=q)
    try:
        runs, total, next_cursor = service.list_runs(session, filters, sort=sort, limit=limit, offset=offset,
                                                     cursor=cursor)
    except service.InvalidCursor as error:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "cursor"), "input": cursor,
                                       "msg": str(error)}]) from None
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
    if not service.delete_runs(session, [run_id], settings.artifact_dir):
        raise service.RunNotFound(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{run_id}/retry", response_model=RunOut,
             responses={**NOT_FOUND, **BROKER_DOWN, 409: {"description": "The run is not failed or cancelled"}})
def retry_run(run_id: RunId, session: SessionDep, queue: RunQueueDep, settings: SettingsDep) -> RunOut:
    """Queue a failed or cancelled run again from scratch, same id and spec; its old metrics
    and checkpoint are cleared."""
    try:
        return RunOut.model_validate(service.retry_run(session, run_id, queue, settings.artifact_dir))
    except service.RunNotRetryable as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


# Bodies of finished runs' metrics, by ETag: served without reading the database again; every
# recently read run's series, grown by its new points (a running run is read once); and a
# running run's thinned columns until its next point lands.
_finished_metrics = series.BodyCache()
_series_cache = series.SeriesCache()
_metrics_bodies = series.BodyCache()  # a running run's, by its newest point


def _metrics_etag(run, request: Request) -> str | None:
    """A finished run's points no longer change (a retry starts a new attempt, whose finish
    changes this tag), so its metrics can be revalidated (304) and cached; a running run's can
    not."""
    if not run.is_terminal or run.finished_at is None:
        return None
    query = "&".join(sorted(f"{k}={v}" for k, v in request.query_params.multi_items()))
    digest = hashlib.blake2b(query.encode(), digest_size=6).hexdigest()
    return f'"m{run.id}-{run.attempts}-{run.finished_at.timestamp():.6f}-{run.state}-{digest}"'


@router.get("/{run_id}/metrics", response_model=MetricsPage, responses={
    **NOT_FOUND, 304: {"description": "A finished run's metrics, unchanged since the ETag sent in If-None-Match"}})
def get_metrics(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    after: int = Query(0, ge=0, le=MAX_CURSOR, description="Cursor from a previous page; 0 for all points"),
    limit: int = Query(10_000, ge=1, le=100_000, description="At most this many points (format=points only)"),
    max_points: int | None = Query(
        None, ge=10, le=100_000,
        description="For display: thin each series to about this many points, keeping its shape (see "
                    "`downsample`); with format=points it ignores `after` and `limit`. Stream from the returned "
                    "cursor for new points"),
    format: Literal["points", "columns"] = Query(
        "points", description="`points`: a list of {epoch, step, name, value} (the default); `columns`: per metric "
                              "one array of epochs, one of steps and one of values (`series`), much smaller"),
    downsample: series.Downsampling = Query(
        "minmax", description="How `max_points` thins a series (format=columns): `minmax` keeps each stretch's "
                              "minimum and maximum, `lttb` the points that best keep the line's shape"),
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Metric points in the order they were recorded (`points`), or as columns per metric
    (`columns`). Per-epoch points carry the step the epoch ended at; per-step points are
    named `step/...`. A finished run's answer has an ETag: send it back in If-None-Match to get
    304 when nothing changed."""
    run = service.get_run(session, run_id)
    etag = _metrics_etag(run, request)
    headers = {"ETag": etag, "Cache-Control": "no-cache"} if etag else {"Cache-Control": "no-store"}
    if etag and if_none_match and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)

    def body() -> bytes:
        payload: dict = {"state": run.state}
        if format == "columns":
            if after:
                read, payload["cursor"], total = series.read_series(session.connection(), run_id, after)
                payload["series"], payload["downsampled"] = series.columnar(read, max_points, downsample)
                payload["total"] = total
                return orjson.dumps(payload)
            key = (run_id, run.attempts, run.started_at)  # both change when a retry deletes the points
            read, payload["cursor"], total = _series_cache.read(session.connection(), run_id, key)

            def thinned() -> bytes:
                payload["series"], payload["downsampled"] = series.columnar(read, max_points, downsample)
                payload["total"] = total
                return orjson.dumps(payload)

            if etag:
                return thinned()
            return _metrics_bodies.get_or_make(f"{key}|{payload['cursor']}|{run.state}|{request.url.query}", thinned)
        if max_points is not None:
            points, payload["cursor"], total = service.metrics_for_display(session, run_id, max_points)
            payload["downsampled"] = len(points) < total
        else:
            points = service.metrics_after(session, run_id, after, limit)
            payload["cursor"], payload["downsampled"] = (points[-1].id if points else after), False
        # A long run's page holds tens of thousands of points: they are written straight to JSON by
        # orjson (values are finite or null: non-finite ones are stored as NULL) instead of through a
        # pydantic object per point and the json module, which were most of the request's time
        # (bench/api_views.py). The shape is MetricsPage.
        payload["points"] = [{"epoch": epoch, "step": step, "name": name, "value": value}
                             for _, epoch, name, value, step in points]
        return orjson.dumps(payload)

    content = _finished_metrics.get_or_make(etag, body) if etag else body()
    return Response(content, media_type="application/json", headers=headers)


@router.get("/{run_id}/confusion", response_model=ConfusionOut,
            responses={404: {"description": "No such run, or it has no confusion matrix yet"}})
def get_confusion(run_id: RunId, session: SessionDep) -> ConfusionOut:
    run = service.get_run(session, run_id)
    matrix = service.confusion_of(session, run_id)
    if matrix is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no confusion matrix yet")
    grouped = (run.info or {}).get("accuracy_level") == "group"
    return ConfusionOut(epoch=matrix.epoch, classes=matrix.classes, counts=matrix.counts,
                        counted="groups" if grouped else "samples")


@router.post("/{run_id}/cancel", response_model=RunOut,
             responses={**NOT_FOUND, 409: {"description": "The run has already finished"}})
def cancel_run(run_id: RunId, session: SessionDep) -> RunOut:
    """Cancel: at once if queued, at the end of the current epoch if running."""
    try:
        return RunOut.model_validate(service.request_cancel(session, run_id))
    except service.RunFinished as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


@router.get("/{run_id}/stream", responses=NOT_FOUND,
            response_description="Server-Sent Events: `metrics` (new points; the event id is the cursor), "
                                 "`run` (the run whenever it changes), `end` (finished, nothing more to send)")
def stream_run(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    after: int = Query(0, ge=0, le=MAX_CURSOR, description="Send only points after this cursor"),
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Live updates of one run. A reconnecting EventSource resumes after its Last-Event-ID."""
    service.get_run(session, run_id)
    if last_event_id and last_event_id.isdigit() and int(last_event_id) <= MAX_CURSOR:
        after = max(after, int(last_event_id))
    return EventSourceResponse(
        run_events(request.app.state.sessions, run_id, after, settings.stream_poll_interval, request),
        ping=15,
    )


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=NOT_FOUND)
def list_artifacts(run_id: RunId, session: SessionDep, settings: SettingsDep) -> list[ArtifactOut]:
    """The run's files (its checkpoint, …), with paths to download them by."""
    service.get_run(session, run_id)
    return [ArtifactOut.model_validate(a) for a in artifacts.list_artifacts(settings, run_id)]


@router.get("/{run_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={**NOT_FOUND, 400: {"description": "The path leaves the run's directory"}})
def download_artifact(run_id: RunId, session: SessionDep, settings: SettingsDep,
                      path: str = Path(max_length=1000, description="As listed by GET /api/runs/{run_id}/artifacts")
                      ) -> FileResponse:
    service.get_run(session, run_id)
    try:
        file = artifacts.artifact_file(settings, run_id, path)
    except artifacts.PathOutsideRoot:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the path must stay inside the run's directory") from None
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no file {path!r}") from None
    return FileResponse(file, media_type="application/octet-stream", filename=file.name)
