"""The validation of a run spec, in one place: POST /api/runs and every combination of a sweep
go through `validate_run`, so a sweep accepts exactly the runs the run API accepts.

Errors are FastAPI's shape (`{"type", "loc": ["body", field], "msg", "input"}`) so the forms
show them next to the field, whichever endpoint produced them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.datasets import DatasetInfo, UnknownDatasetError, dataset_info
from training.spec import spec_errors_for_dataset

from ..refused import ErrorDict, Refused
from .schemas import RunCreate


class DatasetCatalog:
    """The catalogue entry of each dataset, looked up once per request (a sweep asks for the
    same dataset for every combination)."""

    def __init__(self, data_dir: Path | None, video: Any = None,
                 registered: Callable[[str], DatasetInfo | None] | None = None):
        self.data_dir = data_dir
        self.video = video  # where the raw audio-visual datasets are (Settings.video_options())
        # Datasets made by a job on any host, from the shared registry (backend/catalog/registry.py).
        self.registered = registered
        self._infos: dict[str, DatasetInfo | None] = {}

    def info(self, name: str) -> DatasetInfo | None:
        if name not in self._infos:
            try:
                self._infos[name] = dataset_info(name, self.data_dir, self.video)
            except UnknownDatasetError:
                self._infos[name] = self.registered(name) if self.registered is not None else None
        return self._infos[name]

    def modalities(self, name: str) -> tuple[str, ...] | None:
        info = self.info(name)
        return None if info is None else tuple(info.modalities)


def dataset_errors(payload: RunCreate, catalog: DatasetCatalog) -> list[ErrorDict]:
    """422 errors naming the field when the dataset is unknown or does not fit the spec.
    The one call of the training library's dataset check, for runs and sweeps alike."""
    return [
        {"type": "value_error", "loc": ("body", e.field), "msg": e.message, "input": getattr(payload, e.field)}
        for e in spec_errors_for_dataset(payload, catalog.info(payload.dataset))
    ]


def refuse_if_unfit(payload: RunCreate, catalog: DatasetCatalog) -> None:
    """Refused (422 naming the field) when the dataset is unknown, unusable, or does not fit the spec."""
    errors = dataset_errors(payload, catalog)
    if errors:
        raise Refused(errors)


def _plain(error: dict) -> ErrorDict:
    # pydantic puts exception objects in ctx; keep what JSON can carry.
    ctx = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
           for k, v in (error.get("ctx") or {}).items()}
    plain = {"type": error["type"], "loc": ("body", *error["loc"]), "msg": error["msg"], "input": error.get("input")}
    if ctx:
        plain["ctx"] = ctx
    return plain


def validate_run(data: Mapping[str, Any], catalog: DatasetCatalog) -> tuple[RunCreate | None, list[ErrorDict]]:
    """The spec, or the errors that refuse it: schema first, then the dataset check."""
    try:
        payload = RunCreate.model_validate(dict(data))
    except ValidationError as error:
        return None, [_plain(e) for e in error.errors(include_url=False)]
    errors = dataset_errors(payload, catalog)
    return (None, errors) if errors else (payload, [])
