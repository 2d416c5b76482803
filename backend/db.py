"""Engine and sessions. SQLite (the embedded default) and PostgreSQL take the same code."""

from __future__ import annotations

import functools
from datetime import datetime, timezone

from typing import Any

from sqlalchemy import JSON, DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def _unencodable(value: Any) -> bool:
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unencodable(key) or _unencodable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(map(_unencodable, value))
    return False


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(key): _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def readable(value: Any) -> Any:
    """A JSON value as any response can carry it: a lone surrogate (which a JSON document can
    escape, and which an older server stored from a client's input) escaped as text. The value
    itself when it holds none, which is nearly always."""
    return _escaped(value) if _unencodable(value) else value


class StoredJSON(TypeDecorator):
    """JSON that clients wrote (a spec, an external run's settings and source, a sweep's grid):
    read back always as something a response can carry, so one row stored by an older server
    with a lone surrogate can never make a list or a page fail (it shows the escape instead)."""

    impl = JSON
    cache_ok = True

    def process_result_value(self, value: Any, dialect) -> Any:
        return readable(value)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _tune_sqlite(dbapi_connection, _record) -> None:
    # WAL lets the API read while a worker writes; the timeout waits out a writer's lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, statement_timeout: float = 0) -> Engine:
    """`statement_timeout`: PostgreSQL stops any statement of this engine's connections that runs
    longer, in seconds (0: never). SQLite has no such limit."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if statement_timeout > 0:
        # Set at connection time: the server enforces it even after the client has gone away.
        connect_args["options"] = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


@functools.cache
def engine_for(url: str, statement_timeout: float = 0) -> Engine:
    """One engine (and pool) per URL (and statement timeout) per process."""
    return make_engine(url, statement_timeout)


def session_factory(url: str, statement_timeout: float = 0) -> sessionmaker:
    """Sessions on the process's engine for `url`; the API's pass its STATEMENT_TIMEOUT."""
    return sessionmaker(engine_for(url, statement_timeout), expire_on_commit=False)
