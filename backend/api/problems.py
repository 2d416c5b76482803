"""The format of every error: RFC 9457 problem details (`application/problem+json`). Which
error answers what is decided in backend/api/errors.py.

Every error the API answers has the members `type`, `title` and `status` of RFC 9457 beside
`detail`, which keeps the shape scripts already read: a sentence for most errors, and for a 422
FastAPI's list of `{"type", "loc", "msg", "input"}`, one per field at fault (the forms show them
next to their field, the Python client raises them with the field's name). Extension members
may follow (`reference` of a 500). Only the media type is new; a script that parsed the JSON
body of an error still does.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A validation problem says which field is at fault; every other problem is the plain HTTP
# meaning of its status ("about:blank", RFC 9457 §4.2.1).
VALIDATION_PROBLEM = "urn:missmod:problem:validation"


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
