"""Bounds every route shares, so a request the database cannot hold is a 422 at the edge, not
an overflow or an encoding error inside the driver (the API fuzz test finds those)."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, StringConstraints, field_validator

from ..refused import Refused

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
StudyId = id_in_path("study")
Offset = Annotated[int, Query(ge=0, le=MAX_CURSOR, description="Rows to skip")]
DatasetName = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS,
                                  description="A dataset's name, as in GET /api/datasets")]


def has_control_characters(text: str, allow_newlines: bool = False) -> bool:
    allowed = "\n\r\t" if allow_newlines else ""
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def _no_control_characters(text: str) -> str:
    if has_control_characters(text):
        raise ValueError("must not contain control characters")
    return text


def _no_control_characters_but_line_breaks(text: str) -> str:
    if has_control_characters(text, allow_newlines=True):
        raise ValueError("must not contain control characters other than line breaks and tabs")
    return text


def printable_text(max_length: int, *, min_length: int = 0, line_breaks: bool = False, strip: bool = False) -> Any:
    """The one type of text a client sends that is stored and shown on a page (names, notes,
    labels, settings): at most `max_length` characters and no control character (PostgreSQL
    cannot store NUL, and a tab or a newline breaks a name in a table), line breaks and tabs
    allowed where `line_breaks` (a note); surrounding spaces removed first where `strip`."""
    check = _no_control_characters_but_line_breaks if line_breaks else _no_control_characters
    constraints = StringConstraints(min_length=min_length, max_length=max_length, strip_whitespace=strip)
    return Annotated[str, constraints, AfterValidator(check)]


# A name shown on a page and stored in the database (runs, sweeps).
DisplayName = printable_text(200)


# --- JSON input that can neither be stored nor sent back ---------------------------------
# Python's JSON parser accepts NaN, Infinity, "\udcff" (a lone surrogate) and "\u0000"; none of
# them is JSON a client can read back or a database can query: no column takes the surrogate,
# PostgreSQL cannot turn a NUL inside a JSON document into text (so one stored NUL breaks every
# query on a spec field of any run), and a NaN learning rate trains nothing. They are refused at
# the edge with a 422 naming the field (CleanInput), anywhere in a body: free-form settings
# (an external run's `spec`), keys as well as values, at any depth. The 422 itself echoes the
# input made printable (serialisable), never a 500.

MAX_JSON_DEPTH = 20  # objects and lists inside one another: a spec is two or three deep


def why_unstorable(value: Any, depth: int = 0) -> str | None:
    """Why `value` (anything JSON parsed into) cannot be stored and read back: a non-finite
    number, a lone surrogate or a NUL in a string, a control character in a key, too deep a
    nesting. None when it is clean."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value!r} is not a number JSON allows (finite numbers only)"
    if isinstance(value, str):
        if "\x00" in value:
            return "holds a NUL character (\\u0000), which cannot be stored"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "holds an invalid Unicode character (a lone surrogate)"
        return None
    if depth >= MAX_JSON_DEPTH and isinstance(value, (dict, list, tuple)):
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = key if isinstance(key, str) else str(key)
            reason = why_unstorable(key_text) or (
                "holds a control character" if has_control_characters(key_text) else None)
            if reason:
                return f"a key {reason}"
            reason = why_unstorable(item, depth + 1)
            if reason:
                return f"{printable(key_text)!r}: {reason}"
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            reason = why_unstorable(item, depth + 1)
            if reason:
                return f"item {index}: {reason}"
    return None


def printable(value: Any) -> Any:
    """`value` with non-finite numbers as strings and lone surrogates escaped: what an error
    response can echo back as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(item) for item in value]
    return value


ECHO_CHARACTERS = 1_000  # of one invalid input, echoed back in a 422


def abridged(value: Any, budget: int = ECHO_CHARACTERS) -> Any:
    """`value` (printable JSON) cut to about `budget` characters of JSON, for a 422 to echo: the
    start of a long text, the first items of a long list or members of a large object, followed
    by a note of what was left out. A 100,000-id bulk request was echoed whole (589 KB)."""
    if len(json.dumps(value, ensure_ascii=False)) <= budget:
        return value
    if isinstance(value, str):
        return f"{value[:budget]}… ({len(value):,} characters)"
    if isinstance(value, list):
        kept, used = [], 2
        for item in value:
            item = abridged(item, max(budget - used, 20))
            used += len(json.dumps(item, ensure_ascii=False)) + 2
            if used > budget:
                break
            kept.append(item)
        return [*kept, f"… ({len(value) - len(kept):,} more items)"]
    if isinstance(value, dict):
        kept_members, used = {}, 2
        for key, item in value.items():
            key, item = abridged(key, 100), abridged(item, max(budget - used, 20))
            used += len(json.dumps([key, item], ensure_ascii=False))
            if used > budget:
                break
            kept_members[key] = item
        return {**kept_members, "…": f"{len(value) - len(kept_members):,} more members"}
    return value


class CleanInput(BaseModel):
    """Base of every request body: a field holding NaN, an infinity, a lone surrogate or a NUL
    (in a value or a key, at any depth) is a 422 naming it, whatever else the field accepts."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        reason = why_unstorable(value)
        if reason:
            raise ValueError(reason)
        return value


def id_list(text: str, parameter: str, *, most: int, noun: str) -> list[int]:
    """Comma-separated ids (a query parameter), each once, in order; Refused (a 422 naming the
    parameter) when one is not an id or there are more than `most`."""
    ids = []
    for part in text.split(","):
        if not re.fullmatch(r"[0-9]{1,10}", part.strip()) or not 1 <= int(part) <= MAX_ID:
            raise Refused.field("query", parameter, text, f"{part.strip()!r} is not a {noun} id")
        ids.append(int(part))
    ids = list(dict.fromkeys(ids))
    if len(ids) > most:
        raise Refused.field("query", parameter, text, f"{len(ids)} {noun}s; at most {most}")
    return ids
