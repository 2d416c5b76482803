"""Errors → HTTP responses, in one place: the services raise what went wrong in their own terms
(a run that does not exist, a request refused field by field)
and the routes let it through; the handlers registered here answer for all, every one as RFC 9457
problem details (backend/api/problems.py says the format). Extend `register` for new kinds of
errors rather than catching them in routes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from ..catalog.registry import NotRegistered
from ..jobs.service import DatasetNotFound, JobNotFound, NotAVideoDataset
from ..lifecycle.api import AlreadyFinished
from ..refused import Refused
from ..runs.artifacts import ArtifactNotFound, PathOutsideRoot
from ..runs.live_runs import LiveRunGone
from ..runs.predictions import NoStoredPredictions
from ..runs.service import NoConfusionMatrix, RunNotFound, RunNotRetryable
from ..runs.serving import ModelBundleNotFound, NoModelBundle, PredictionFailed, PredictionTimedOut
from ..studies.presets import StudyPresetNotFound
from ..studies.service import StudyFinished, StudyNotFound
from ..sweeps.presets import PresetNotFound
from ..sweeps.service import SweepNotFound
from .params import abridged, printable
from .problems import VALIDATION_PROBLEM, PlainErrorsAsProblems, problem_response

log = logging.getLogger("missmod")

DATABASE_UNAVAILABLE = "the database is unreachable (or not migrated); try again shortly"

# What a 404 says, by the thing not found (its id is the exception's argument).
NOT_FOUND: dict[type[LookupError], Callable[[LookupError], str]] = {
    RunNotFound: lambda error: f"run {error.args[0]} not found",
    SweepNotFound: lambda error: f"sweep {error.args[0]} not found",
    JobNotFound: lambda error: f"job {error.args[0]} not found",
    PresetNotFound: str,
    NoConfusionMatrix: lambda error: f"run {error.args[0]} has no confusion matrix yet",
    ArtifactNotFound: lambda error: f"run {error.args[0]} has no file {error.args[1]!r}",
    DatasetNotFound: lambda error: f"unknown dataset {error.args[0]!r}",
    NotRegistered: lambda error: f"no dataset {error.args[0]!r} is registered (made by a job)",
    StudyNotFound: lambda error: f"study {error.args[0]} not found",
    StudyPresetNotFound: str,
    ModelBundleNotFound: str,
    NoStoredPredictions: lambda error: (f"run {error.args[0]} has no stored test predictions (not finished, finished "
                                        "before they were kept, or logged from elsewhere without them)"),
}
# What a 409 is: the request does not fit the state the thing is in (its message says why).
CONFLICT: tuple[type[Exception], ...] = (AlreadyFinished, RunNotRetryable, NotAVideoDataset, StudyFinished,
                                         LiveRunGone, NoModelBundle)


def _not_found(request: Request, error: LookupError) -> JSONResponse:
    message = next(say(error) for kind, say in NOT_FOUND.items() if isinstance(error, kind))
    return problem_response(status.HTTP_404_NOT_FOUND, message, request=request)


def _conflict(request: Request, error: Exception) -> JSONResponse:
    return problem_response(status.HTTP_409_CONFLICT, str(error), request=request)


def _outside_the_run(request: Request, error: PathOutsideRoot) -> JSONResponse:
    return problem_response(status.HTTP_400_BAD_REQUEST, "the path must stay inside the run's directory",
                            request=request)


MAX_FIELD_ISSUES = 50  # a 422 names at most this many invalid inputs (then says how many more)


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # `detail` keeps FastAPI's list of {"type", "loc", "msg", "input"}: forms and scripts read it.
    # The echoed input is made serialisable (a NaN or a lone surrogate sent by the client would
    # otherwise turn the 422 into a 500) and short: a huge body is not sent back whole.
    issues = list(error.errors())
    detail = [{**issue, "input": abridged(printable(jsonable_encoder(issue.get("input"))))}
              if "input" in issue else issue for issue in issues[:MAX_FIELD_ISSUES]]
    if len(issues) > MAX_FIELD_ISSUES:
        detail.append({"type": "too_many_errors", "loc": ["body"], "input": None,
                       "msg": f"and {len(issues) - MAX_FIELD_ISSUES:,} more invalid inputs, not listed"})
    return problem_response(422, printable(jsonable_encoder(detail)), request=request, type=VALIDATION_PROBLEM)


def _refused(request: Request, error: Refused) -> JSONResponse:
    # Answered exactly as a schema error, so a form shows a refusal from the logic next to its field.
    return _validation_error(request, RequestValidationError(error.errors))


def _prediction_timed_out(request: Request, error: PredictionTimedOut) -> JSONResponse:
    return problem_response(503, str(error), request=request, headers={"Retry-After": "5"})


def _prediction_failed(request: Request, error: PredictionFailed) -> JSONResponse:
    status_code, detail, field = error.args
    if status_code == 422:  # the worker's own check of the inputs: answered as the API's are
        return _refused(request, Refused.field("body", field or "body", None, detail))
    return problem_response(status_code, detail, request=request)


def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return problem_response(error.status_code, error.detail, request=request, headers=getattr(error, "headers", None))


# PostgreSQL's SQLSTATE for a statement it cancelled: here, always STATEMENT_TIMEOUT.
QUERY_CANCELED = "57014"


def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    cause = getattr(error, "orig", error)
    if getattr(cause, "sqlstate", None) == QUERY_CANCELED:
        timeout = request.app.state.settings.statement_timeout
        log.warning("query stopped after STATEMENT_TIMEOUT (%g s) on %s %s", timeout, request.method,
                    request.url.path)
        return problem_response(503, f"the database stopped this request's query after {timeout:g} s "
                                     "(STATEMENT_TIMEOUT): the database is busy, or the request asks for too much "
                                     "at once (narrow its filters or its page); try again shortly",
                                request=request, headers={"Retry-After": "5"})
    log.error("database error on %s %s: %s", request.method, request.url.path, cause)
    return problem_response(503, DATABASE_UNAVAILABLE, request=request, headers={"Retry-After": "5"})


def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the server log only, under a reference the user can quote.
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s on %s %s", reference, request.method, request.url.path, exc_info=error)
    return problem_response(500, f"internal error (reference {reference} in the server log)", request=request,
                            reference=reference)


def register(app: FastAPI) -> None:
    for kind in NOT_FOUND:
        app.add_exception_handler(kind, _not_found)
    for kind in CONFLICT:
        app.add_exception_handler(kind, _conflict)
    app.add_exception_handler(PathOutsideRoot, _outside_the_run)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(PredictionTimedOut, _prediction_timed_out)
    app.add_exception_handler(PredictionFailed, _prediction_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for database_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(database_error, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)
    # Errors answered in plain text outside the app's handlers (the body limit's 413) too.
    build_middleware_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: PlainErrorsAsProblems(build_middleware_stack())
