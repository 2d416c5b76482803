"""Request-scoped dependencies: the settings, a database session and the run queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from ..queue import WorkQueue
from ..settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def _work_queue(request: Request) -> WorkQueue:
    return request.app.state.work_queue


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
WorkQueueDep = Annotated[WorkQueue, Depends(_work_queue)]
