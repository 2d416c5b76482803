"""What can be trained: the datasets (with their modalities and classes), the methods (with
the fusions each allows) and every other choice a spec offers (training/spec.py). The new-run
and new-sweep forms are built from these, so they list nothing of their own."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from training import method_registry, spec
from training.datasets import dataset_infos
from training.selection import SELECTION_RULES
from training.spec import METHODS

from ..api.deps import SessionDep, SettingsDep
from ..api.params import DatasetName
from ..storage import store_for
from ..workers import service as workers
from . import registry

router = APIRouter(tags=["catalog"])
log = logging.getLogger("missmod.catalog")


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
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "The JSON schema of the method's own options (a run's `method_options`): each property is a form field, a "
        "sweep-grid field and a CLI `options.NAME=value`. The built-in methods have none"))
    default_options: dict[str, Any] = Field(default_factory=dict)
    distribution: str | None = Field(None, description="The Python package that registered it (`missmod` for the "
                                                       "six built-in methods) and its version")
    version: str | None = None
    workers: int | None = Field(None, description="How many live workers can train it (null: not asked)")


class UnavailableMethodOut(BaseModel):
    """A method plugin installed here that cannot be offered, and why (it failed to import, lacks a
    dependency, breaks the protocol), or one that live workers train but this API lacks."""

    name: str
    reason: str
    distribution: str | None = None
    version: str | None = None


class ChoicesOut(BaseModel):
    """The values each choice of a training spec takes, from the spec module's one list of each."""

    methods: list[str]
    unavailable_methods: list[UnavailableMethodOut] = Field(
        default_factory=list, description="Method plugins that cannot be used, each with the reason (docs/methods.md)")
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
def list_choices(session: SessionDep, settings: SettingsDep) -> ChoicesOut:
    return ChoicesOut(methods=list(METHODS), unavailable_methods=unavailable_methods(session, settings),
                      fusions=spec.FUSIONS, encoders=spec.ENCODERS,
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


def method_out(description) -> MethodOut:
    has_options = bool(description.options.model_fields)
    return MethodOut(name=description.name, title=description.title, fusions=list(description.fusions),
                     description=description.description,
                     options=description.options_schema() if has_options else {},
                     default_options=description.default_options(), distribution=description.distribution,
                     version=description.version)


def unavailable_methods(session, settings) -> list[UnavailableMethodOut]:
    """Plugins installed here that cannot be used, and methods live workers train that this API
    lacks (installed on a worker only: runs of it cannot be submitted here)."""
    out = [UnavailableMethodOut(name=u.name, reason=u.reason, distribution=u.distribution, version=u.version)
           for u in method_registry.unavailable()]
    listed = {u.name for u in out}
    try:
        live = workers.live_workers(session, settings.heartbeat_timeout)
    except SQLAlchemyError as error:  # the choices are this process's own: they do not wait on the database
        log.warning("the workers' methods could not be read: %s", error)
        session.rollback()
        live = []
    for worker in live:
        for name, package in (worker.methods or {}).items():
            if name in METHODS or name in listed:
                continue
            listed.add(name)
            package = package if isinstance(package, dict) else {}
            out.append(UnavailableMethodOut(
                name=name, distribution=package.get("distribution"), version=package.get("version"),
                reason=f"live worker {worker.name} can train it, but it is not installed beside this API: install "
                       f"{package.get('distribution')} {package.get('version')} here too and restart the API"))
    return out


@router.get("/api/methods", response_model=list[MethodOut])
def list_methods(session: SessionDep, settings: SettingsDep) -> list[MethodOut]:
    """Every method this API offers: the six built-in ones and the installed plugins (docs/methods.md),
    each with how many live workers can train it."""
    try:
        availability = workers.method_availability(session, settings.heartbeat_timeout)
    except SQLAlchemyError as error:  # the methods are this process's own: they do not wait on the database
        log.warning("the workers' methods could not be read: %s", error)
        session.rollback()
        return [method_out(m) for m in METHODS.values()]
    return [method_out(m).model_copy(update={"workers": availability.count(m.name, m.builtin)})
            for m in METHODS.values()]
