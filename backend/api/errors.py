"""Domain errors → HTTP responses, in one place: the services raise what went wrong in their
own terms (a run that does not exist, a broker that cannot be reached, a request refused
field by field) and the routes let it through; the handlers registered here answer for all.
Extend `register` for new kinds of errors rather than catching them in routes."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..jobs.service import JobNotFound
from ..runs.service import BrokerUnavailable, RunNotFound
from ..runs.validation import Refused
from ..sweeps.presets import PresetNotFound
from ..sweeps.service import SweepNotFound

# What a 404 says, by the thing not found (its id is the exception's argument).
NOT_FOUND: dict[type[LookupError], Callable[[LookupError], str]] = {
    RunNotFound: lambda error: f"run {error.args[0]} not found",
    SweepNotFound: lambda error: f"sweep {error.args[0]} not found",
    JobNotFound: lambda error: f"job {error.args[0]} not found",
    PresetNotFound: str,
}


def _not_found(request: Request, error: LookupError) -> JSONResponse:
    message = next(say(error) for kind, say in NOT_FOUND.items() if isinstance(error, kind))
    return JSONResponse({"detail": message}, status_code=status.HTTP_404_NOT_FOUND)


def _broker_unavailable(request: Request, error: BrokerUnavailable) -> JSONResponse:
    # The broker's own message can carry its address: the server log has it, the client gets
    # what was saved and what to do (the exception's public message).
    return JSONResponse({"detail": error.public_message}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _refused(request: Request, error: Refused):
    # Answered exactly as FastAPI's own validation errors are (whichever handler the app has for
    # them), so a form shows a refusal from the logic next to its field like a schema error.
    handler = request.app.exception_handlers.get(RequestValidationError, request_validation_exception_handler)
    return await handler(request, RequestValidationError(error.errors))


def register(app: FastAPI) -> None:
    for kind in NOT_FOUND:
        app.add_exception_handler(kind, _not_found)
    app.add_exception_handler(BrokerUnavailable, _broker_unavailable)
    app.add_exception_handler(Refused, _refused)
