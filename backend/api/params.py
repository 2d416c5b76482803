"""Bounds every route shares, so a request the database cannot hold is a 422 at the edge, not
an overflow or an encoding error inside the driver (the API fuzz test finds those)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, StringConstraints

# Ids are INTEGER columns; cursors and offsets are compared with 64-bit integers.
MAX_ID = 2**31 - 1
MAX_CURSOR = 2**63 - 1
# PostgreSQL cannot even compare a string holding NUL, and no control character belongs in a
# name or a filter.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


def id_in_path(what: str):
    return Annotated[int, Path(ge=1, le=MAX_ID, description=f"A {what}'s id")]


RunId = id_in_path("run")
SweepId = id_in_path("sweep")
JobId = id_in_path("job")
Offset = Annotated[int, Query(ge=0, le=MAX_CURSOR, description="Rows to skip")]
DatasetName = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS,
                                  description="A dataset's name, as in GET /api/datasets")]


def has_control_characters(text: str, allow_newlines: bool = False) -> bool:
    allowed = "\n\r\t" if allow_newlines else ""
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def _printable(text: str | None) -> str | None:
    if text is not None and has_control_characters(text):
        raise ValueError("must not contain control characters")
    return text


# A name shown on a page and stored in the database (runs, sweeps).

DisplayName = Annotated[str, StringConstraints(max_length=200), AfterValidator(_printable)]


def id_cursor(cursor: str | None) -> int | None:
    """A list's `cursor` that is the last id of the previous page, bounded to what an id can be
    (a larger one, which this server never hands out, means "from the start")."""
    return None if not cursor else min(int(cursor), MAX_ID)
