"""REST routes of dataset jobs: preprocess a raw audio-visual dataset, extract features from
it with a frozen backbone, follow and cancel them. Thin: logic in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse

from ..api.deps import SessionDep, SettingsDep, WorkQueueDep
from ..api.params import NO_CONTROL_CHARACTERS, DatasetName, JobId
from ..live import open_stream, token_from
from . import service
from .models import JobKind
from .schemas import FeatureExtractionCreate, JobOut
from .stream import JobTopic

router = APIRouter(tags=["dataset jobs"])

NOT_A_VIDEO_DATASET = {404: {"description": "No such dataset"},
                       409: {"description": "Not a raw video dataset, or one that cannot be used"}}


def _start(session, queue, response: Response, kind: str, dataset: str, params: dict) -> JobOut:
    existing = service.active_job(session, kind, dataset, params)
    if existing is not None:
        response.status_code = status.HTTP_200_OK
        return JobOut.model_validate(existing)
    # With the broker down the job is saved and waits for it (`awaiting_broker`), as a run does.
    return JobOut.model_validate(service.create_job(session, kind, dataset, params, queue))


@router.post("/api/datasets/{name}/preprocess", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut,
             responses={**NOT_A_VIDEO_DATASET, 200: {"description": "The same job was already queued or running"}})
def preprocess_dataset(name: DatasetName, response: Response, session: SessionDep, queue: WorkQueueDep,
                       settings: SettingsDep) -> JobOut:
    """Decode every clip of a raw video dataset into the cache (resumes; nothing to do when it is done)."""
    service.check_video_dataset(name, settings.data_dir, settings.video_options())
    return _start(session, queue, response, JobKind.preprocess, name, {})


@router.post("/api/datasets/{name}/features", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut,
             responses={**NOT_A_VIDEO_DATASET, 200: {"description": "The same job was already queued or running"}})
def extract_features(name: DatasetName, payload: FeatureExtractionCreate, response: Response, session: SessionDep,
                     queue: WorkQueueDep, settings: SettingsDep) -> JobOut:
    """Encode every segment with a frozen backbone into DATA_DIR/features/<name>.npz (a new dataset)."""
    service.check_video_dataset(name, settings.data_dir, settings.video_options())
    return _start(session, queue, response, JobKind.extract_features, name, payload.model_dump())


NEXT_PAGE_HEADERS = {
    "X-Next-Cursor": {"description": "Pass as `cursor` for the next page; absent on the last page",
                      "schema": {"type": "string"}},
    "Link": {"description": 'The next page as `<url>; rel="next"` (RFC 8288); absent on the last page',
             "schema": {"type": "string"}},
}


@router.get("/api/jobs", response_model=list[JobOut],
            responses={200: {"description": "A page of jobs", "headers": NEXT_PAGE_HEADERS}})
def list_jobs(request: Request, response: Response,
              session: SessionDep, dataset: str | None = Query(None, max_length=200, pattern=NO_CONTROL_CHARACTERS),
              limit: int = Query(50, ge=1, le=500),
              cursor: str | None = Query(None, max_length=500, pattern=NO_CONTROL_CHARACTERS,
                                         description="The X-Next-Cursor header of the previous page")) -> list[JobOut]:
    """Dataset jobs, newest first. The body stays a plain list (scripts read it so); the next
    page's cursor comes in the X-Next-Cursor and Link headers."""
    jobs, next_cursor = service.list_jobs(session, dataset, limit, cursor=cursor)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
        response.headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    return [JobOut.model_validate(job) for job in jobs]


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "No such job"}})
def get_job(job_id: JobId, session: SessionDep) -> JobOut:
    return JobOut.model_validate(service.get_job(session, job_id))


@router.post("/api/jobs/{job_id}/cancel", response_model=JobOut,
             responses={404: {"description": "No such job"}, 409: {"description": "Already finished"}})
def cancel_job(job_id: JobId, session: SessionDep) -> JobOut:
    """At once if queued; after the current clip if running (finished clips are kept)."""
    return JobOut.model_validate(service.request_cancel(session, job_id))


def _job_exists(sessions, job_id: int) -> None:
    with sessions() as session:
        service.get_job(session, job_id)


@router.get("/api/jobs/{job_id}/stream",
            responses={404: {"description": "No such job"}, 503: {"description": "Too many live streams; see Retry-After"}},
            response_description="Server-Sent Events: `job` (the job whenever it changes; the event id is its digest), "
                                 "`end` (finished, nothing more to send), `gone` (deleted)")
async def stream_job(job_id: JobId, request: Request,
                     last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """Live progress of a dataset job. A reconnecting EventSource is sent nothing until the job changes."""
    return await open_stream(request, JobTopic.kind, job_id, token_from(last_event_id), exists=_job_exists)
