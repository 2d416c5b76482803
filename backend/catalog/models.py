"""Datasets made by a job (extracted features), registered in the database with the file's place
in the artifact store and its catalogue entry, so every host's API lists them and every host's
worker can fetch them — whichever host made them. Raw video folders are not here: they stay
per host, with their caches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, StoredJSON, UTCDateTime, utcnow


class RegisteredDataset(Base):
    __tablename__ = "registered_datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    source: Mapped[str] = mapped_column(String(20))  # "features"
    key: Mapped[str] = mapped_column(String(500))  # in the artifact store
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # training.two_view.DatasetInfo as JSON: what the API lists and validates runs against
    # without reading the file.
    info: Mapped[dict[str, Any]] = mapped_column(StoredJSON)
    job_id: Mapped[int | None] = mapped_column(Integer)  # the job that made it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
