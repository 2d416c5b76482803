"""REST routes of hyperparameter studies (docs/studies.md). Thin: the planning in plan.py and
presets.py, the life of a study in service.py, its answer in table.py; a study not found, a refusal
and a study already ended are answered by backend/api/errors.py."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response, status

from training.search_space import default_search_space
from training.spec import METHODS

from ..api import idempotency
from ..api.deps import WorkQueueDep, SessionDep, SettingsDep
from ..api.params import NO_CONTROL_CHARACTERS, StudyId
from ..catalog import registry
from ..refused import Refused
from ..runs.validation import DatasetCatalog
from ..sweeps.selection_rules import SelectionRulesOut
from . import service
from .plan import StudyPlan, plan_study
from .presets import STUDY_PRESETS, get_study_preset, preset_study
from .schemas import (HyperparametersOut, StudyCreate, StudyCreated, StudyOut, StudyPage, StudyPresetOut,
                      StudyPresetRequest, StudyRowOut, StudyTableOut, TrialOut)
from .table import study_csv, study_latex, study_sensitivity, study_table

router = APIRouter(prefix="/api/studies", tags=["studies"])

NOT_FOUND = {404: {"description": "No study with this id"}}
AWAITING_BROKER = {202: {"description": "Saved, but the broker could not be reached: the first trials' runs wait for "
                                        "it (`awaiting_broker`) and are sent when it is back"}}


def _catalog(settings, session) -> DatasetCatalog:
    return DatasetCatalog(settings.data_dir, settings.video_options(), registry.lookup(session))


def _study_out(session, study) -> StudyOut:
    return StudyOut.model_validate(service.study_outline(session, study))


def _created(session, queue, response: Response, plan: StudyPlan, key: str | None, request_body: dict,
             preset: str | None = None, preset_options: dict | None = None) -> StudyCreated:
    """201 when the first trials' ids reached the broker; 202 when some wait for it; 200 when an
    earlier request with the same Idempotency-Key created the study."""
    options = {**(preset_options or {}), "request": request_body}
    study, created = idempotency.create_once(
        session, key, lambda k: service.study_by_idempotency_key(session, k),
        lambda: service.create_study(session, queue, plan, preset=preset, preset_options=options,
                                     idempotency_key=key))
    if not created:
        if (study.preset_options or {}).get("request") != request_body or study.preset != preset:
            raise idempotency.reused_for_another_request(key)
        response.status_code = status.HTTP_200_OK
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    run_ids, awaiting = service.trial_runs(session, study)
    if created and awaiting:
        response.status_code = status.HTTP_202_ACCEPTED
    return StudyCreated(**_study_out(session, study).model_dump(), run_ids=run_ids, awaiting_broker=awaiting)


@router.get("/spaces", response_model=dict[str, dict[str, dict]])
def default_study_spaces() -> dict[str, dict[str, dict]]:
    """Each method's default search space: field → distribution (a study's `space` replaces fields of it)."""
    return {method: {name: d.model_dump() for name, d in default_search_space(method).items()} for method in METHODS}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyCreated,
             responses={**AWAITING_BROKER, **idempotency.REPLAYED,
                        422: {"description": "A field, a candidate or a range of a space is invalid; nothing written"}})
def create_study(payload: StudyCreate, response: Response, session: SessionDep, queue: WorkQueueDep,
                 settings: SettingsDep, idempotency_key: idempotency.KeyHeader = None) -> StudyCreated:
    """Create a study: each candidate (a method with its fusion) at each setting (missing modality
    × rate) is searched with the same number of trials (TPE or random, with the pruner asked for),
    trials run as ordinary runs on the workers, and once every arm spent its budget its best
    configuration (on validation accuracy) trains over the final seeds."""
    key = idempotency.checked_key(idempotency_key)
    plan = plan_study(payload, _catalog(settings, session))
    return _created(session, queue, response, plan, key, payload.model_dump(mode="json"))


@router.get("", response_model=StudyPage)
def list_studies(session: SessionDep, limit: int = Query(50, ge=1, le=500),
                 cursor: str | None = Query(None, max_length=500, pattern=NO_CONTROL_CHARACTERS,
                                            description="`next_cursor` of the previous page")) -> StudyPage:
    """Studies, newest first."""
    studies, total, next_cursor = service.list_studies(session, limit, cursor)
    return StudyPage(items=[_study_out(session, s) for s in studies], total=total, limit=limit,
                     next_cursor=next_cursor)


@router.get("/presets", response_model=list[StudyPresetOut])
def list_study_presets() -> list[StudyPresetOut]:
    """The tuned presets: a paper comparison with every candidate tuned with the same budget."""
    return [StudyPresetOut(name=p.name, title=p.title, description=p.description, candidates=p.labels(),
                           roles=p.roles(), rates=p.rates()) for p in STUDY_PRESETS.values()]


@router.post("/presets/{name}", status_code=status.HTTP_201_CREATED, response_model=StudyCreated,
             responses={**AWAITING_BROKER, **idempotency.REPLAYED, 404: {"description": "No such preset"},
                        422: {"description": "A field is invalid; nothing written"}})
def create_preset_study(name: str, request: StudyPresetRequest, response: Response, session: SessionDep,
                        queue: WorkQueueDep, settings: SettingsDep,
                        idempotency_key: idempotency.KeyHeader = None) -> StudyCreated:
    """Create the study of a tuned preset on the dataset given, in one call."""
    key = idempotency.checked_key(idempotency_key)
    preset = get_study_preset(name)
    catalog = _catalog(settings, session)
    payload, roles = preset_study(preset, request, catalog)
    plan = plan_study(payload, catalog)
    return _created(session, queue, response, plan, key, request.model_dump(mode="json"), preset=preset.name,
                    preset_options={"roles": roles})


@router.get("/{study_id}", response_model=StudyOut, responses=NOT_FOUND)
def get_study(study_id: StudyId, session: SessionDep) -> StudyOut:
    """The study: its state, each arm's budget spent and best trial so far (validation accuracy),
    the trials per state, and its own overhead."""
    return _study_out(session, service.get_study(session, study_id))


@router.get("/{study_id}/trials", response_model=list[TrialOut], responses=NOT_FOUND)
def list_study_trials(study_id: StudyId, session: SessionDep,
                arm: int | None = Query(None, ge=0, le=10_000, description="Only this arm's trials")) -> list[TrialOut]:
    """The trials, with their validation accuracy per epoch; their test accuracy is hidden (null)
    until the study is finished."""
    study = service.get_study(session, study_id)
    return [TrialOut.model_validate(row) for row in service.trial_rows(session, study, arm)]


@router.get("/{study_id}/plots", responses=NOT_FOUND)
def get_study_plots(study_id: StudyId, session: SessionDep,
                    arm: int = Query(0, ge=0, le=10_000, description="Which arm (candidate × setting)")) -> dict:
    """optuna.visualization's figures of one arm as Plotly JSON (`data`, `layout`): optimisation
    history, per-epoch validation accuracy of each trial (pruned ones stop early), parallel
    coordinates and parameter importances; a figure that cannot be drawn yet is a sentence."""
    study = service.get_study(session, study_id)
    if arm >= study.arms:
        raise Refused([{"type": "value_error", "loc": ("query", "arm"), "input": arm,
                        "msg": f"the study has {study.arms} arms (0 to {study.arms - 1})"}])
    from .optimiser import figures  # optuna and its figures: loaded on the first request that draws

    records = [service.record_of(t) for t in service.trials_of(session, study_id, arm)]
    return {"arm": arm, "label": service.arm_label(study, arm),
            "figures": figures(service.optuna_arm(study, arm), records)}


ReferenceParam = Query(None, max_length=200, description=(
    "The reference of the paired comparisons: a row label or a method; default: the best baseline of each column"))


@router.get("/{study_id}/table", response_model=StudyTableOut, responses={
    **NOT_FOUND, 200: {"content": {"application/json": {}, "text/csv": {}, "application/x-latex": {}}}})
def get_study_table(study_id: StudyId, session: SessionDep, format: Literal["json", "csv", "latex"] = Query("json"),
                    reference: str | None = ReferenceParam,
                    test: Literal["seeds", "samples"] = Query("seeds")) -> StudyTableOut | Response:
    """The final runs as a comparison table (rows: candidates; columns: settings; cells: mean ±
    std over the final seeds, compared seed by seed with the column's reference) with the
    hyperparameters each cell's runs were trained with (its best trial on validation accuracy)."""
    study = service.get_study(session, study_id)
    result = study_table(session, study, reference=reference, test=test)  # UnknownReference: a 422
    if format == "csv":
        body, media_type, suffix = study_csv(result), "text/csv; charset=utf-8", "csv"
    elif format == "latex":
        body, media_type, suffix = study_latex(result, study), "application/x-latex; charset=utf-8", "tex"
    else:
        rows = [StudyRowOut(label=row.label, method=row.method, fusion=row.fusion, extras=row.extras,
                            cells=row.cells, hyperparameters=[HyperparametersOut(**h) for h in hyper])
                for row, hyper in zip(result.table.rows, result.hyperparameters)]
        return StudyTableOut(study_id=study.id, final_sweep_id=study.final_sweep_id,
                             selection_rule=service.selection_rule(study), columns=result.table.columns, rows=rows,
                             comparison=result.comparison)
    return Response(body, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="study-{study_id}-table.{suffix}"'})


@router.get("/{study_id}/selection-rules", response_model=SelectionRulesOut, responses=NOT_FOUND)
def get_study_selection_rules(study_id: StudyId, session: SessionDep,
                              reference: str | None = ReferenceParam) -> SelectionRulesOut:
    """The final table under every selection rule, from the epochs the final runs recorded (no
    retraining), with where the ranking of a column changes."""
    study = service.get_study(session, study_id)
    return study_sensitivity(session, study, reference)


@router.post("/{study_id}/cancel", response_model=StudyOut, responses={
    **NOT_FOUND, 409: {"description": "The study already ended"}})
def cancel_study(study_id: StudyId, session: SessionDep) -> StudyOut:
    """Ask no more trials, and cancel the trials and final runs not ended (they keep their points)."""
    return _study_out(session, service.cancel_study(session, study_id))


@router.delete("/{study_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_study(study_id: StudyId, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the study with its trials' runs and its final runs (and their files); runs still
    training stop."""
    service.delete_study(session, study_id, settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
