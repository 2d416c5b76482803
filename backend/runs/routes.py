"""REST routes of runs. Thin: validation at the edge, logic in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse

from worker.training.datasets import UnknownDatasetError, dataset_info
from worker.training.spec import spec_errors_for_dataset

from ..api.deps import RunQueueDep, SessionDep, SettingsDep
from . import artifacts, service
from .models import RunState
from .schemas import ArtifactOut, ConfusionOut, MetricPointOut, MetricsPage, RunCreate, RunOut, RunPage
from .stream import run_events

router = APIRouter(prefix="/api/runs", tags=["runs"])

# Ids and cursors within the database's integer columns: a larger number is a 422, not an
# overflow inside the driver (found by the fuzz test).
MAX_RUN_ID = 2**31 - 1
MAX_CURSOR = 2**63 - 1
RunId = Annotated[int, Path(ge=1, le=MAX_RUN_ID, description="A run's id")]
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"  # PostgreSQL cannot even compare a string holding NUL

NOT_FOUND = {404: {"description": "No run with this id"}}


def _check_against_dataset(payload: RunCreate, settings) -> None:
    """422 naming the field when the dataset is unknown, unusable, or does not fit the spec."""
    try:
        info = dataset_info(payload.dataset, settings.data_dir)
    except UnknownDatasetError:
        info = None
    errors = spec_errors_for_dataset(payload, info)
    if errors:
        raise RequestValidationError([
            {"type": "value_error", "loc": ("body", e.field), "msg": e.message, "input": getattr(payload, e.field)}
            for e in errors
        ])


def _get_or_404(session, run_id: int):
    try:
        return service.get_run(session, run_id)
    except service.RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found") from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunOut,
             responses={503: {"description": "The broker could not be reached; the run is marked failed"}})
def create_run(payload: RunCreate, session: SessionDep, queue: RunQueueDep, settings: SettingsDep) -> RunOut:
    """Create a run and queue it for a worker."""
    _check_against_dataset(payload, settings)
    try:
        run = service.create_run(session, payload, queue)
    except service.BrokerUnavailable:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the broker is unreachable: the run was saved as failed; try again shortly") from None
    return RunOut.model_validate(run)


@router.get("", response_model=RunPage)
def list_runs(
    session: SessionDep,
    state: RunState | None = None,
    method: str | None = Query(None, max_length=50, pattern=NO_CONTROL_CHARACTERS),
    dataset: str | None = Query(None, max_length=200, pattern=NO_CONTROL_CHARACTERS),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_CURSOR),
) -> RunPage:
    """Runs, newest first."""
    runs, total = service.list_runs(session, state=state, method=method, dataset=dataset, limit=limit, offset=offset)
    return RunPage(items=[RunOut.model_validate(r) for r in runs], total=total, limit=limit, offset=offset)


@router.get("/{run_id}", response_model=RunOut, responses=NOT_FOUND)
def get_run(run_id: RunId, session: SessionDep) -> RunOut:
    return RunOut.model_validate(_get_or_404(session, run_id))


@router.get("/{run_id}/metrics", response_model=MetricsPage, responses=NOT_FOUND)
def get_metrics(
    run_id: RunId,
    session: SessionDep,
    after: int = Query(0, ge=0, le=MAX_CURSOR, description="Cursor from a previous page; 0 for all points"),
    limit: int = Query(10_000, ge=1, le=100_000),
) -> MetricsPage:
    """Metric points `{epoch, name, value}` in the order they were recorded."""
    run = _get_or_404(session, run_id)
    points = service.metrics_after(session, run_id, after, limit)
    cursor = points[-1].id if points else after
    return MetricsPage(points=[MetricPointOut.model_validate(p) for p in points], cursor=cursor, state=run.state)


@router.get("/{run_id}/confusion", response_model=ConfusionOut,
            responses={404: {"description": "No such run, or it has no confusion matrix yet"}})
def get_confusion(run_id: RunId, session: SessionDep) -> ConfusionOut:
    _get_or_404(session, run_id)
    matrix = service.confusion_of(session, run_id)
    if matrix is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no confusion matrix yet")
    return ConfusionOut.model_validate(matrix)


@router.post("/{run_id}/cancel", response_model=RunOut,
             responses={**NOT_FOUND, 409: {"description": "The run has already finished"}})
def cancel_run(run_id: RunId, session: SessionDep) -> RunOut:
    """Cancel: at once if queued, at the end of the current epoch if running."""
    try:
        return RunOut.model_validate(service.request_cancel(session, run_id))
    except service.RunNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found") from None
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
    _get_or_404(session, run_id)
    if last_event_id and last_event_id.isdigit() and int(last_event_id) <= MAX_CURSOR:
        after = max(after, int(last_event_id))
    return EventSourceResponse(
        run_events(request.app.state.sessions, run_id, after, settings.stream_poll_interval, request),
        ping=15,
    )


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=NOT_FOUND)
def list_artifacts(run_id: RunId, session: SessionDep, settings: SettingsDep) -> list[ArtifactOut]:
    """The run's files (its checkpoint, …), with paths to download them by."""
    _get_or_404(session, run_id)
    return [ArtifactOut(path=a.path, size=a.size) for a in artifacts.list_artifacts(settings, run_id)]


@router.get("/{run_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={**NOT_FOUND, 400: {"description": "The path leaves the run's directory"}})
def download_artifact(run_id: RunId, session: SessionDep, settings: SettingsDep,
                      path: str = Path(max_length=1000, description="As listed by GET /api/runs/{run_id}/artifacts")
                      ) -> FileResponse:
    _get_or_404(session, run_id)
    try:
        file = artifacts.artifact_file(settings, run_id, path)
    except artifacts.PathOutsideRoot:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the path must stay inside the run's directory") from None
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no file {path!r}") from None
    return FileResponse(file, media_type="application/octet-stream", filename=file.name)
