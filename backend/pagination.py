"""The one cursor scheme of every list (runs, sweeps, dataset jobs): keyset pagination.

A cursor is the sort order, the sort key's value and the id of a page's last row, as JSON in
URL-safe base64 without padding: `["-id", 42, 42]`. The next page starts after that row in that
order, which the database finds through an index instead of counting an offset. A cursor is
checked before it reaches SQL: one that does not decode to what this server writes — another
order, a value of the wrong type, an id out of range, text the database cannot take — is refused
with a 422 naming `cursor`, never a 500.

The sweeps and jobs lists once handed out a row's plain id (`"42"`); such cursors, which scripts
may still hold, are read as `["-id", 42, 42]`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, or_

from .refused import Refused

Kind = Literal["number", "text", "bool"]

# The largest id a cursor may name: a BIGINT's.
MAX_ROW_ID = 2**63 - 1
NEWEST_FIRST = "-id"


def not_ours(cursor: str) -> Refused:
    return Refused.field("query", "cursor", cursor, "not a cursor this server handed out")


def encode(order: str, value: Any, row_id: int) -> str:
    raw = json.dumps([order, value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(value: Any, kind: Kind) -> bool:
    """Whether a decoded sort value can be compared with a column of this kind."""
    if value is None:
        return True
    if kind == "number":
        return (_is_int(value) and abs(value) <= MAX_ROW_ID) or (isinstance(value, float) and math.isfinite(value))
    if kind == "bool":
        return isinstance(value, bool)
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")  # a lone surrogate cannot be sent to the database
    except UnicodeEncodeError:
        return False
    return "\x00" not in value  # nor can NUL (PostgreSQL's text refuses it)


def decode(cursor: str, order: str, kind: Kind = "number") -> tuple[Any, int]:
    """The (sort value, row id) a cursor of this order carries; Refused (a 422 naming `cursor`)
    when it is not one this server wrote for this order (`kind`: how the sort key compares)."""
    if cursor.isascii() and cursor.isdigit() and order == NEWEST_FIRST:  # the sweeps' and jobs' old cursors
        row_id = int(cursor)
        if row_id > MAX_ROW_ID:
            raise not_ours(cursor)
        return row_id, row_id
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_order, value, row_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise not_ours(cursor) from None
    if cursor_order != order:
        raise Refused.field("query", "cursor", cursor, f"the cursor was made for sort {cursor_order!r}, not {order!r}")
    if not _is_int(row_id) or not 0 <= row_id <= MAX_ROW_ID or not _fits(value, kind):
        raise not_ours(cursor)
    return value, row_id


def one_way_to_page(cursor: str | None, offset: int) -> None:
    if cursor and offset:
        raise Refused.field("query", "offset", offset, "give either offset or cursor, not both")


def after(column, id_column, descending: bool, value: Any, row_id: int) -> ColumnElement[bool]:
    """Rows after (value, id) in the order `column` (NULLs last), then id: the keyset condition."""
    tie = id_column < row_id if descending else id_column > row_id
    if column is id_column:
        return tie
    if value is None:
        return and_(column.is_(None), tie)
    beyond = column < value if descending else column > value
    if not getattr(column, "nullable", True):
        return or_(beyond, and_(column == value, tie))
    return or_(beyond, and_(column == value, tie), column.is_(None))
