"""What can be trained: the datasets (with their modalities and classes), the methods (with
the fusions each allows) and every other choice a spec offers (training/spec.py). The new-run
and new-sweep forms are built from these, so they list nothing of their own."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from training.datasets import dataset_infos
from training import spec
from training.selection import SELECTION_RULES
from training.spec import METHODS

from ..api.deps import SessionDep, SettingsDep
from ..api.params import DatasetName
from ..storage import store_for
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


class ChoicesOut(BaseModel):
    """The values each choice of a training spec takes, from the spec module's one list of each."""

    methods: list[str]
    fusions: list[str]
    encoders: list[str] = Field(description="Encoders f and g: `mlp` for feature vectors, the others for images")
    image_encoders: list[str] = Field(description="The encoders that take images (channels, height, width)")
    pretrainable_encoders: list[str] = Field(description="The encoders that can start from ImageNet weights")
    backbones: list[str] = Field(description="Frozen feature extractors (POST /api/datasets/{name}/features)")
    reference_sets: list[str]
    split_by: list[str]
    devices: list[str]
    precisions: list[str] = Field(description="`precision` of a run: auto (mixed precision for CNN encoders on a "
                                              "GPU), fp32, bf16, fp16")
    paper_modalities: list[str] = Field(description="The paper's names of its two modalities, which a preset "
                                                    "maps onto a dataset's (`visual`, `audio`)")
    selection_rules: list[str] = Field(description="`selection_rule` of a run: which epoch it reports; the first "
                                                   "is the default (docs/studies.md, \"The selection rule\")")


@router.get("/api/choices", response_model=ChoicesOut)
def list_choices() -> ChoicesOut:
    return ChoicesOut(methods=list(METHODS), fusions=spec.FUSIONS, encoders=spec.ENCODERS,
                      image_encoders=spec.IMAGE_ENCODERS, pretrainable_encoders=spec.PRETRAINABLE_ENCODERS,
                      backbones=spec.BACKBONES, reference_sets=spec.REFERENCE_SETS, split_by=spec.SPLITS,
                      devices=spec.DEVICES, precisions=spec.PRECISIONS, paper_modalities=spec.PAPER_MODALITIES,
                      selection_rules=list(SELECTION_RULES))


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


@router.delete("/api/datasets/{name}", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"description": "No dataset of this name is registered (made by a job)"}})
def delete_dataset(name: DatasetName, settings: SettingsDep, session: SessionDep) -> Response:
    """Delete a dataset made by a job (extracted features, `shared` in GET /api/datasets): its entry
    in the shared catalogue and its file in the artifact store (and this host's fetched copy).
    Runs trained on it keep their results. Built-in datasets and a host's own files are not
    registered and cannot be deleted here."""
    registry.delete_registered(session, store_for(settings), name, settings.data_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/methods", response_model=list[MethodOut])
def list_methods() -> list[MethodOut]:
    return [MethodOut.model_validate(m, from_attributes=True) for m in METHODS.values()]
