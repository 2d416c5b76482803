"""Dataset jobs: preprocessing a raw audio-visual dataset, or extracting features from it
with a frozen backbone, executed by a worker under a lease like a run (backend/lifecycle),
with progress and a result."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, StoredJSON
from ..lifecycle.models import Leased


class JobKind(StrEnum):
    preprocess = "preprocess"
    extract_features = "extract_features"


class DatasetJob(Leased, Base):
    __tablename__ = "dataset_jobs"
    noun = "dataset job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    dataset: Mapped[str] = mapped_column(String(200), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(StoredJSON)
    done: Mapped[int] = mapped_column(Integer, default=0)  # clips (preprocess) or segments (features)
    total: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON)
