"""`Idempotency-Key` on the POSTs that create (runs, sweeps): a script that retries a POST whose
answer it never got (a timeout, a dropped connection, a 503) sends the same key, and the server
creates nothing twice — it answers 200 with what the first request created and
`Idempotent-Replayed: true`. The key is stored on the created row under a unique constraint, so
two requests racing with one key also make one row. A key is refused (422) when it is reused
for a different request."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Header
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

T = TypeVar("T")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_LENGTH = 255
# Printable ASCII without spaces: what clients generate (UUIDs, hashes, job names).
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")

KeyHeader = Annotated[str | None, Header(
    alias=HEADER, max_length=MAX_LENGTH,
    description="Any unique string (a UUID): a repeated request with the same key creates nothing twice and "
                "answers 200 with what the first one created")]

REPLAYED = {200: {"description": "Replayed: an earlier request with this Idempotency-Key created it"}}


def checked_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not KEY_PATTERN.match(key):
        raise RequestValidationError([{"type": "value_error", "loc": ("header", HEADER), "input": key,
                                       "msg": "1 to 255 printable ASCII characters without spaces (e.g. a UUID)"}])
    return key


def reused_for_another_request(key: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("header", HEADER), "input": key,
                                    "msg": "this Idempotency-Key was already used for a different request; use a "
                                           "new key for a new request"}])


def create_once(session: Session, key: str | None, find: Callable[[str], T | None],
                create: Callable[[], T]) -> tuple[T, bool]:
    """(the row, whether this call created it). `create` commits a row carrying `key`; if another
    request committed the same key first, the unique constraint refuses ours and theirs is returned."""
    if key is not None:
        existing = find(key)
        if existing is not None:
            return existing, False
    try:
        return create(), True
    except IntegrityError:
        session.rollback()
        existing = find(key) if key is not None else None
        if existing is None:
            raise
        return existing, False
