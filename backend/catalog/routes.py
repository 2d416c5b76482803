"""What can be trained: the datasets (with their modalities and classes) and the methods
(with the fusions each allows). The new-run form is built from these."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from training.datasets import dataset_infos
from training.spec import METHODS

from ..api.deps import SessionDep, SettingsDep
from . import registry

router = APIRouter(tags=["catalog"])


class DatasetOut(BaseModel):
    name: str
    title: str
    description: str
    source: str = Field(description="builtin, features (an .npz in DATA_DIR/features), or video (raw clips: "
                                    "ravdess, enterface05)")
    error: str | None = Field(description="Why the dataset cannot be used; null when it can")
    preprocessed: bool | None = Field(None, description="video datasets: whether the preprocessing cache is ready "
                                                        "(a run on one that is not preprocesses it first)")
    has_subjects: bool
    modalities: list[str]
    classes: list[str]
    n_samples: int
    n_groups: int
    shapes: dict[str, list[int]]
    class_counts: list[int]
    shared: bool = Field(False, description="Made by a job and kept in the artifact store: usable from every host")


class MethodOut(BaseModel):
    name: str
    title: str
    fusions: list[str]
    description: str


@router.get("/api/datasets", response_model=list[DatasetOut])
def list_datasets(settings: SettingsDep, session: SessionDep) -> list[DatasetOut]:
    """This host's datasets (built-in, its DATA_DIR, its raw video folders) and those made by a job
    on any host (registered in the shared catalogue)."""
    infos = dataset_infos(settings.data_dir, settings.video_options())
    shared = registry.registered_infos(session)
    out = [DatasetOut.model_validate(info, from_attributes=True).model_copy(update={"shared": info.name in shared})
           for info in infos]
    local = {info.name for info in infos}
    out += [DatasetOut.model_validate(info, from_attributes=True).model_copy(update={"shared": True})
            for name, info in sorted(shared.items()) if name not in local]
    return out


@router.get("/api/methods", response_model=list[MethodOut])
def list_methods() -> list[MethodOut]:
    return [MethodOut.model_validate(m, from_attributes=True) for m in METHODS.values()]
