"""Errors as RFC 9457 problem details (`application/problem+json`), in one place.

Every error the API answers has the members `type`, `title` and `status` of RFC 9457 beside
`detail`, which keeps the shape scripts already read: a sentence for most errors, and for a 422
FastAPI's list of `{"type", "loc", "msg", "input"}`, one per field at fault (the forms show them
next to their field, the Python client raises them with the field's name). Extension members
may follow (`reference` of a 500). Only the media type is new; a script that parsed the JSON
body of an error still does.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("missmod")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A validation problem says which field is at fault; every other problem is the plain HTTP
# meaning of its status ("about:blank", RFC 9457 §4.2.1).
VALIDATION_PROBLEM = "urn:missmod:problem:validation"
DATABASE_UNAVAILABLE = "the database is unreachable (or not migrated); try again shortly"


class FieldIssue(BaseModel):
    """One invalid input of a 422, as FastAPI words it."""

    model_config = ConfigDict(extra="allow")

    type: str
    loc: list[str | int] = Field(description='Where: ["body", "missing_rate"], ["query", "limit"], …')
    msg: str
    input: Any = None


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field("about:blank", description="A URI naming the kind of problem; about:blank: the status says it")
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(description="The HTTP status code")
    detail: str | list[FieldIssue] = Field(
        description="What went wrong this time: a sentence, or (422) one entry per invalid field")
    instance: str | None = Field(None, description="The request path")


def problem_response(status: int, detail: Any, *, request: Request | None = None, type: str = "about:blank",
                     headers: dict[str, str] | None = None, **extensions: Any) -> JSONResponse:
    body = {"type": type, "title": HTTPStatus(status).phrase, "status": status, "detail": jsonable_encoder(detail)}
    if request is not None:
        body["instance"] = request.url.path
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return problem_response(error.status_code, error.detail, request=request, headers=getattr(error, "headers", None))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return problem_response(422, error.errors(), request=request, type=VALIDATION_PROBLEM)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    log.error("database error on %s %s: %s", request.method, request.url.path, getattr(error, "orig", error))
    return problem_response(503, DATABASE_UNAVAILABLE, request=request, headers={"Retry-After": "5"})


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the server log only, under a reference the user can quote.
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s on %s %s", reference, request.method, request.url.path, exc_info=error)
    return problem_response(500, f"internal error (reference {reference} in the server log)", request=request,
                            reference=reference)


class PlainErrorsAsProblems:
    """An error answered in plain text by a layer outside the app's exception handlers (the body
    size limit's 413, sent before the request reaches the app) leaves as problem details too."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        text = b""

        async def send_problem(message: Message) -> None:
            nonlocal held, text
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and content_type.startswith("text/plain"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                text += message.get("body", b"")
                if message.get("more_body"):
                    return
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in
                           (b"content-type", b"content-length")]
                response = problem_response(held["status"], text.decode("utf-8", "replace"))
                body = response.body
                await send({**held, "headers": [*headers, (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                                (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_problem)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error the app raises leaves as problem details."""
    build_middleware_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: PlainErrorsAsProblems(build_middleware_stack())
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for database_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(database_error, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)
