"""Browser sessions held server-side, so signing out really ends one: the cookie carries a
random session id (signed), and the session is open only while its row exists. The table
keeps a hash of the id, never the id, so reading the database gives no cookie."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import Base, UTCDateTime, utcnow


class BrowserSession(Base):
    __tablename__ = "browser_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def open_session(session: Session, lifetime_seconds: int) -> str:
    """A new session's id (to sign into the cookie); expired sessions are cleared on the way."""
    now = utcnow()
    session.execute(delete(BrowserSession).where(BrowserSession.expires_at <= now))
    session_id = secrets.token_hex(16)
    session.add(BrowserSession(id_hash=_hash(session_id), created_at=now,
                               expires_at=now + timedelta(seconds=lifetime_seconds)))
    session.commit()
    return session_id


def session_is_open(session: Session, session_id: str) -> bool:
    expires = session.scalar(select(BrowserSession.expires_at).where(BrowserSession.id_hash == _hash(session_id)))
    return expires is not None and expires > utcnow()


def close_session(session: Session, session_id: str) -> None:
    session.execute(delete(BrowserSession).where(BrowserSession.id_hash == _hash(session_id)))
    session.commit()
